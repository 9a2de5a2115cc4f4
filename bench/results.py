"""The paper's measurements of one finished run, as the Markdown that goes into docs/RESULTS.md.

    python bench/results.py RUN [--every 4]

Reads only the run directory: ``run.db`` (per-step metrics, step wall times, events) and
``interviews.json`` (written by ``simulacra run --interview`` or ``simulacra measure RUN``). Prints
the run's identity (scenario, seed, span, model and its hash, engine dtype), the diffusion and
density time series every ``--every`` simulated hours, coordination by ground truth and by
interview, and the cost (calls, tokens, wall time per simulated hour), beside Park et al.'s figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from simulacra.run import Run
from simulacra.storage import RunStore

PAPER = {
    "candidacy": "1 → 8 of 25 (4% → 32%)",
    "party": "1 → 13 of 25 (4% → 52%)",
    "density": "0.167 → 0.74",
    "attended": "5 of 12 invited attended",
    "absent": "of 7 absent: 3 named a conflict, 4 had not planned to go",
}


def series(store: RunStore, names: list[str], every_steps: int) -> list[dict]:
    metrics = store.metrics()
    steps = sorted({s for n in names for s, _ in metrics.get(n, [])})
    keep = [s for s in steps if s % every_steps == 0] + ([steps[-1]] if steps and steps[-1] % every_steps else [])
    table = {n: dict(metrics.get(n, [])) for n in names}
    return [{"step": s, **{n: table[n].get(s) for n in names}} for s in keep]


def cost_table(store: RunStore, sim, every_hours: float) -> list[str]:  # noqa: ANN001 - a Simulation
    """Wall time, calls and tokens per block of simulated hours, with the running total of wall time."""
    from sqlmodel import Session, select

    from simulacra.storage import CallRow, StepRow

    mps = sim.town.clock.minutes_per_step
    per = max(1, round(every_hours * 60 / mps))
    with Session(store.engine) as s:
        walls = {r.step: r.wall_s for r in s.exec(select(StepRow)).all()}
        cols = (CallRow.step, CallRow.prompt_tokens, CallRow.cached_tokens, CallRow.completion_tokens)
        calls = s.exec(select(*cols)).all()
    blocks: dict[int, list[float]] = {}
    for step, wall in walls.items():
        if step:
            blocks.setdefault((step - 1) // per, [0.0, 0, 0, 0, 0])[0] += wall
    for step, prompt, cached, completion in calls:
        b = blocks.setdefault((max(step, 1) - 1) // per, [0.0, 0, 0, 0, 0])
        b[1] += 1
        b[2] += prompt
        b[3] += cached
        b[4] += completion
    lines = [
        "| sim hours | wall s | wall total (min) | LLM calls | prompt tokens | cached | completion tokens |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    total = 0.0
    for b in sorted(blocks):
        wall, n, prompt, cached, completion = blocks[b]
        total += wall
        lo = sim.town.clock.at(b * per)
        hi = sim.town.clock.at(min((b + 1) * per, sim.town.steps))
        lines.append(
            f"| {lo:%a %H:%M}–{hi:%H:%M} | {wall:,.0f} | {total / 60:.1f} | {n:,} | {prompt:,} | "
            f"{cached / max(prompt, 1):.0%} | {completion:,} |"
        )
    return lines


def main(run_dir: Path, every_hours: float) -> str:
    store = RunStore(run_dir)
    info, meta = store.info(), json.loads((run_dir / "meta.json").read_text())
    interviews_path = run_dir / "interviews.json"
    interviews = json.loads(interviews_path.read_text()) if interviews_path.exists() else None
    run = Run.open(run_dir, llm=_NoLLM())
    sim = run.sim
    from simulacra.metrics import coordination, summary

    n = len(sim.residents)
    mps = sim.town.clock.minutes_per_step
    hours = sim.town.steps * mps / 60
    facts = sorted(sim.society.facts.counts())
    lines = [
        f"Run `{run_dir.name}`: scenario {info.scenario}, seed {info.seed}, {sim.town.steps} steps of {mps} min "
        f"({hours:.1f} simulated hours, {sim.town.clock.at(0):%a %H:%M} → {sim.town.now:%a %H:%M}), status "
        f"{info.status}; model `{Path(info.model).name}` (sha256 {info.model_sha256[:12]}…), engine dtype "
        f"{meta.get('engine', {}).get('dtype', '?')}; wall time {run.wall_s / 60:.1f} min.",
        "",
        "| sim time | " + " | ".join(f"knows {f}" for f in facts) + " | density | conversations |",
        "|---|" + "---:|" * (len(facts) + 2),
    ]
    names = [f"known.{f}" for f in facts] + ["density", "conversations"]
    for row in series(store, names, max(1, round(every_hours * 60 / mps))):
        cells = [f"{int(row[f'known.{f}'] or 0)} of {n}" for f in facts]
        lines.append(
            f"| {sim.town.clock.at(row['step']):%a %H:%M} | " + " | ".join(cells)
            + f" | {row['density']:.3f} | {int(row['conversations'] or 0)} |"
        )
    lines += ["", *cost_table(store, sim, every_hours)]
    lines += ["", "| measure | Park et al. (25 agents, 2 days) | this run |", "|---|---|---|"]
    table = summary(sim, run.first_metrics, run.wall_s, interviews, store)
    for f in facts:
        truth = table[f"knows {f} (ground truth)"]
        lines.append(f"| knows {f} (ground truth: provenance) | {PAPER.get(f, '')} | {truth} |")
        if f"knows {f} (interview)" in table:
            lines.append(f"| knows {f} (interview) | {PAPER.get(f, '')} | {table[f'knows {f} (interview)']} |")
    lines.append(f"| network density (ground truth: social graph) | {PAPER['density']} | {table['network density']} |")
    if "density (interview)" in table:
        lines.append(f"| network density (interview) | {PAPER['density']} | {table['density (interview)']} |")
    for ev, c in coordination(sim, store).items():
        lines.append(
            f"| {ev}: invited → attended (ground truth) | {PAPER['attended']} | "
            f"{len(c['attended'])} of {len(c['invited'])} invited attended |"
        )
        if "absent" in c:
            planned = sum(a["planned"] for a in c["absent"].values())
            lines.append(
                f"| {ev}: absent invitees (ground truth: plans) | {PAPER['absent']} | of {len(c['absent'])} absent: "
                f"{planned} had planned to go, {len(c['absent']) - planned} had not |"
            )
        key = f"{ev}: absent invitees naming a conflict (interview)"
        if key in table:
            lines.append(f"| {ev}: absent invitees naming a conflict (interview) | {PAPER['absent']} | {table[key]} |")
    for k in ("LLM calls per resident-hour", "tokens per resident-hour", "wall seconds per sim hour"):
        if k in table:
            lines.append(f"| {k} | — | {table[k]} |")
    return "\n".join(lines)


class _NoLLM:
    """Opening a run to read it needs no model."""

    async def generate(self, *a, **kw):  # noqa: ANN002, ANN003, ANN201
        raise RuntimeError("bench/results.py reads a run; it does not call a model")

    async def aclose(self) -> None:
        pass


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--every", type=float, default=4.0, help="simulated hours between rows of the time series")
    args = ap.parse_args()
    print(main(args.run, args.every))
