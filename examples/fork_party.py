"""Counterfactuals on town25: fork a run at Thursday 12:00, move the party to the pub in one fork and
have the host tell three more residents in another, run all three on, and compare the diffusion.

    python examples/fork_party.py runs/fernwick-…           # fork an existing town25 run (engine backend)
    python examples/fork_party.py --hours 6                  # make the parent run first (slow on a CPU)

Each fork re-executes the parent's steps up to the fork from its recorded calls (no model), applies the
interventions and continues on the parent's model. The same from the shell: `simulacra fork RUN --at
"2025-04-10 12:00" --interventions examples/fork_party.yaml`, then `simulacra compare RUN FORK`.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from simulacra import Run, compare
from simulacra.compare import plot
from simulacra.scenario import resolve_scenario_path

AT = "2025-04-10 12:00"  # Thursday noon; the party is on Friday evening
MOVE = [{"move_event": {"id": "party", "place": "Lantern Pub"}}]
FACT = "Juno Castell is hosting a lantern party at the Copper Kettle Café on Friday from 6 to 8 pm."
TELL = [
    {
        "tell": {
            "to": ["Mara Lindqvist", "Ines Okafor", "Tobias Brandt"],
            "memory": FACT,
            "fact": "party",
            "by": "Juno Castell",
        }
    }
]


async def main(parent: Path | None, hours: float) -> None:
    if parent is None:
        run = Run.create(resolve_scenario_path("town25"), hours=hours)
        await run.arun()
        await run.aclose()
        parent = run.dir
    runs = [parent]
    for name, interventions in (("pub", MOVE), ("told", TELL)):
        fork = await Run.afork(parent, AT, interventions, parent.with_name(f"{parent.name}-{name}"))
        await fork.arun()  # on to the parent's end
        await fork.aclose()
        runs.append(fork.dir)
    comparison = compare(runs)
    print(comparison.table.filter(like="known.party").iloc[::6].to_string())
    print("events first differ at:", comparison.first_difference)
    print("plot:", plot(comparison, parent.with_name(f"{parent.name}-forks.png")))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parent", nargs="?", type=Path, help="a town25 run that reached Thursday 12:00")
    parser.add_argument("--hours", type=float, default=6.0, help="hours of the parent run when one is made")
    args = parser.parse_args()
    asyncio.run(main(args.parent, args.hours))
