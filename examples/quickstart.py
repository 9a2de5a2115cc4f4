"""Quickstart: run the three-resident town on the local engine, then measure it and ask a resident.

    python examples/quickstart.py              # one simulated hour
    python examples/quickstart.py --hours 0.5  # shorter, for a first look

The first call loads the packaged model; on a CPU each simulated hour of town3 takes minutes, not seconds.
For a durable run (resumable, replayable, viewable) use `simulacra run` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from simulacra import Simulation, load_scenario
from simulacra.scenario import resolve_scenario_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="town3", help="a scenario file or packaged name (default: town3)")
    parser.add_argument("--hours", type=float, default=1.0, help="simulated hours to run (default: 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--question", default="What have you been up to this morning?")
    args = parser.parse_args()

    sim = Simulation(load_scenario(resolve_scenario_path(args.scenario)), seed=args.seed)  # the local engine
    print(f"{len(sim.residents)} residents: {', '.join(r.name for r in sim.residents)}")
    sim.run(hours=args.hours)
    print(f"after {args.hours:g} simulated hours ({sim.town.steps} steps, now {sim.town.now:%a %H:%M}):")
    print(json.dumps(sim.metrics(), indent=2))

    name = sim.residents[0].name
    answer = asyncio.run(sim.interview(name, args.question))
    print(f"\n{name}, asked {args.question!r}:\n  {answer}")
    asyncio.run(sim.llm.aclose())


if __name__ == "__main__":
    main()
