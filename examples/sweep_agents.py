"""A scaling sweep: generated towns of 25 and 100 residents, half a simulated hour each, on the local engine.

    python examples/sweep_agents.py
    python examples/sweep_agents.py --residents 10 25 --seeds 0 1 --hours 0.25 --out runs/my-sweep

Each (residents, seed) point is an ordinary run directory under --out (resume, replay, view or export
it like any other run); the table printed at the end has one row per point: cost (calls, tokens,
engine batch size, prefix-cache hit rate) and what spread (network density, facts known).
"""

from __future__ import annotations

import argparse

import pandas as pd

from simulacra import sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--residents", type=int, nargs="+", default=[25, 100], help="town sizes (default: 25 100)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds (default: 0)")
    parser.add_argument("--hours", type=float, default=0.5, help="simulated hours per run (default: 0.5)")
    parser.add_argument("--out", default="runs/sweep", help="folder for the run directories (default: runs/sweep)")
    args = parser.parse_args()

    df = sweep(residents=args.residents, seeds=args.seeds, hours=args.hours, out=args.out)
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(df.drop(columns=["run_dir"]).to_string(index=False))
    print(f"\nrun directories: {', '.join(df['run_dir'])}")


if __name__ == "__main__":
    main()
