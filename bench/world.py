"""World benchmark (`make bench-world`): movement and perception, no language model.

For generated towns of 25, 1,000 and 10,000 residents, runs the scripted routine (work hours,
evening outings, home at night) through one simulated day at 10 minutes per step (144 steps from
07:00, so the morning and evening rushes are in it) and times each step:

  perception   every resident's view (vision radius, same area, attention bandwidth) for all at once
  decisions    the routine for everyone, and go_to for those who change destination (pathfinding)
  walking      every walker advances along its path
  looking ahead  paths of the trips residents will probably make next, found in steps with search
               budget left (so a rush finds its commutes cached)
  total        the whole Town.step()

Prints a table and writes bench/out/world.json. Target: at most 50 ms per step at 10,000 residents.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/world.py [--sizes 25 1000 10000] [--steps 144]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from machine import describe  # noqa: E402

from simulacra.scenario import generate_scenario, parse_scenario  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def bench_size(n: int, steps: int, seed: int) -> dict:
    t0 = time.perf_counter()
    scenario = parse_scenario(generate_scenario(n, seed), source=f"generated-{n}")
    t1 = time.perf_counter()
    town = scenario.build_town()
    t2 = time.perf_counter()
    warm = scenario.build_town()  # compile / load the numba kernels outside the timed run
    for _ in range(3):
        warm.step()
    rows = {"perception": [], "decisions": [], "walking": [], "looking ahead": [], "total": []}
    moving = []
    for _ in range(steps):
        s0 = time.perf_counter()
        town.step()
        total = time.perf_counter() - s0
        for k in ("perception", "decisions", "walking", "looking ahead"):
            rows[k].append(town.timings[k] * 1e3)
        rows["total"].append(total * 1e3)
        moving.append(int(np.count_nonzero(town.cursor < town.path_len - 1)))
    stats = {
        k: {
            "mean_ms": float(np.mean(v)),
            "p50_ms": float(np.percentile(v, 50)),
            "p95_ms": float(np.percentile(v, 95)),
            "max_ms": float(np.max(v)),
        }
        for k, v in rows.items()
    }
    return {
        "residents": n,
        "map": f"{town.map.width}x{town.map.height}",
        "steps": steps,
        "generate_and_validate_s": t1 - t0,
        "build_town_s": t2 - t1,
        "steps_per_s": 1e3 / stats["total"]["mean_ms"],
        "max_walking_at_once": max(moving),
        "paths": dict(town.pathfinder.stats),
        **stats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 1000, 10_000])
    ap.add_argument("--steps", type=int, default=144)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "world.json")
    args = ap.parse_args()
    results = [bench_size(n, args.steps, args.seed) for n in args.sizes]
    header = (
        f"{'residents':>9} {'map':>9} {'build s':>8} {'steps/s':>8} {'perception':>11} {'decisions':>10} "
        f"{'walking':>8} {'ahead':>6} {'total':>8} {'p95':>7} {'max':>7}"
    )
    print(describe())
    print(f"world step, one simulated day ({args.steps} x 10 min), ms per step (mean unless noted)")
    print(header)
    for r in results:
        print(
            f"{r['residents']:>9,} {r['map']:>9} {r['build_town_s']:>8.2f} {r['steps_per_s']:>8.0f} "
            f"{r['perception']['mean_ms']:>11.2f} {r['decisions']['mean_ms']:>10.2f} {r['walking']['mean_ms']:>8.2f} "
            f"{r['looking ahead']['mean_ms']:>6.2f} {r['total']['mean_ms']:>8.2f} "
            f"{r['total']['p95_ms']:>7.2f} {r['total']['max_ms']:>7.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": describe(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
