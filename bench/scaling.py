"""The scaling study (issue 17, point 5): generated towns of several sizes, several seeds, on the
packaged model; how wall time, calls, tokens, batch width, cache hits and diffusion grow with the
number of residents.

    python bench/scaling.py                         # 25/50/100/200 residents, seeds 0-2, 2 sim hours
    python bench/scaling.py --residents 1000 --seeds 0 --hours 1
    python bench/scaling.py --report                # table + plot from what has finished

Points run seed by seed through `simulacra.sweep` into `--out` (one run directory per point), so an
interrupted study resumes where it stopped: a finished point is skipped, an unfinished one resumes
from its last committed step (its wall time counts only committed steps). Every finished point's
row is kept in OUT/rows.csv; `--report` writes OUT/scaling.md and OUT/scaling.png from it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def run(residents: list[int], seeds: list[int], hours: float, out: Path) -> None:
    from simulacra import sweep

    rows_csv = out / "rows.csv"
    for seed in seeds:
        df = sweep(residents=residents, seeds=[seed], hours=hours, out=out, on_progress=print)
        done = df[df["status"] == "done"].drop(columns=["datacollector"], errors="ignore")
        old = pd.read_csv(rows_csv) if rows_csv.is_file() else done.iloc[:0]
        keys = set(zip(done["residents"], done["seed"], done["hours"], strict=True))
        old = old[[k not in keys for k in zip(old["residents"], old["seed"], old["hours"], strict=True)]]
        pd.concat([old, done]).sort_values(["hours", "residents", "seed"]).to_csv(rows_csv, index=False)
        print(df.drop(columns=["run_dir", "datacollector"], errors="ignore").to_string(index=False), flush=True)


def per_point(rows: pd.DataFrame) -> pd.DataFrame:
    """The study's measures of each finished point."""
    sim_h = rows["steps"] * rows["hours"] / rows["steps_target"]
    tokens = rows["prompt_tokens"] + rows["completion_tokens"]
    out = pd.DataFrame(
        {
            "residents": rows["residents"],
            "seed": rows["seed"],
            "hours": rows["hours"],
            "wall_s_per_sim_h": rows["wall_s"] / sim_h,
            "wall_s_per_resident_h": rows["wall_s"] / (sim_h * rows["residents"]),
            "calls_per_resident_h": rows["calls_per_resident_hour"],
            "tokens_per_resident_h": tokens / (sim_h * rows["residents"]),
            "mean_batch": rows["mean_batch_seqs"],
            "cache_hit": rows["cache_hit_rate"],
        }
    )
    for col in rows.columns:
        if col.startswith("known_") and col.endswith("_end"):
            fact = col.removeprefix("known_").removesuffix("_end")
            out[f"knew_{fact}"] = (
                rows[f"known_{fact}_start"].astype("Int64").astype(str) + "→" + rows[col].astype("Int64").astype(str)
            )
    return out


def report(out: Path) -> str:
    points = per_point(pd.read_csv(out / "rows.csv"))
    numeric = [
        "wall_s_per_sim_h",
        "wall_s_per_resident_h",
        "calls_per_resident_h",
        "tokens_per_resident_h",
        "mean_batch",
        "cache_hit",
    ]
    lines = [
        "| residents | sim h | seeds | wall s / sim h | wall s / resident-h | calls / resident-h | tokens / resident-h "
        "| mean batch | cache hit | facts known, start → end (per seed) |",
        "|---:|---:|---|---|---|---|---|---|---|---|",
    ]
    fmt = {"cache_hit": "{:.0%}", "tokens_per_resident_h": "{:,.0f}", "wall_s_per_sim_h": "{:,.0f}"}
    for (n, h), g in points.groupby(["residents", "hours"]):
        cells = []
        for c in numeric:
            f = fmt.get(c, "{:.1f}")
            lo, hi, mid = g[c].min(), g[c].max(), g[c].mean()
            cells.append(f.format(mid) if len(g) == 1 else f"{f.format(mid)} ({f.format(lo)}–{f.format(hi)})")
        facts = "; ".join(
            f"{c.removeprefix('knew_')} " + ", ".join(g[c]) for c in points.columns if c.startswith("knew_")
        )
        seeds = ", ".join(str(s) for s in sorted(g["seed"]))
        lines.append(f"| {n} | {h:g} | {seeds} | " + " | ".join(cells) + f" | {facts} |")
    table = "\n".join(lines) + "\n"
    (out / "scaling.md").write_text(table)
    plot(points, out / "scaling.png")
    return table


def plot(points: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, col, label in zip(
        axes,
        ["wall_s_per_sim_h", "wall_s_per_resident_h", "mean_batch"],
        ["wall s per simulated hour", "wall s per resident-hour", "mean engine batch (sequences)"],
        strict=True,
    ):
        ax.scatter(points["residents"], points[col], s=14, alpha=0.7)
        means = points.groupby("residents")[col].mean()
        ax.plot(means.index, means.values, marker="o")
        ax.set_xscale("log")
        ax.set_xticks(list(means.index), [str(n) for n in means.index])
        ax.set_xlabel("residents")
        ax.set_title(label, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--residents", type=int, nargs="+", default=[25, 50, 100, 200])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "scaling")
    ap.add_argument("--report", action="store_true", help="only write the table and plot of finished points")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not args.report:
        run(args.residents, args.seeds, args.hours, args.out)
    print(report(args.out))


if __name__ == "__main__":
    main()
