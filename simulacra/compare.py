"""Runs side by side: their per-step measurements as tables, the first step their events differ, and plots.

``metrics_table(run)`` is one run's ``metric`` table (``RunStore.metrics``) as a DataFrame, one row per
step with its simulated time; ``compare(runs)`` puts several together (columns ``(measure, run)``) and
finds, for each run, the first step whose events differ from the first run's; ``plot`` draws the curves
(the diffusion of each fact, as in Park et al.'s Figure, density, conversations, attendance, cost), one
line per run, with each fork step marked. Runs are read through temporary copies (``storage.read_only``),
so a run being written can be compared, and no run's files are touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from simulacra.scenario import load_scenario
from simulacra.storage import read_only

MEASURES = ("known.", "density", "conversations", "present.", "llm.calls", "llm.completion_tokens")
TITLES = {
    "known.": "knows fact '{}'",
    "present.": "present at '{}'",
    "density": "density of who knows whom",
    "conversations": "conversations so far",
    "llm.calls": "LLM calls so far",
    "llm.completion_tokens": "tokens generated so far",
}


@dataclass
class RunData:
    """One run as a comparison needs it."""

    label: str
    path: Path
    metrics: pd.DataFrame
    events: list[dict]
    forks: list[dict] = field(default_factory=list)


@dataclass
class Comparison:
    """Runs' measurements side by side (columns ``(measure, run)``, index ``step``, plus ``time``)."""

    runs: list[RunData]
    table: pd.DataFrame
    first_difference: dict[str, int | None]  # run label -> first step whose events differ from the first run's

    def measures(self) -> list[str]:
        return [m for m in self.table.columns.get_level_values(0).unique() if m != "time"]


def load_run(path: str | Path, label: str | None = None) -> RunData:
    """A run's metrics (DataFrame: index ``step``, a ``time`` column, one column per measure), events, forks."""
    path = Path(path)
    with read_only(path) as store:
        series = store.metrics()
        events = store.events()
        settings = json.loads(store.info().settings)
    clock = load_scenario(path / "scenario.yaml").clock
    frame = pd.DataFrame({name: dict(points) for name, points in series.items()})
    frame = frame.sort_index().rename_axis("step")
    frame = frame[[c for c in frame.columns if c.startswith(MEASURES)]]
    frame.insert(0, "time", [clock.at(int(s)) for s in frame.index])
    forks = (settings.get("lineage") or {}).get("forks", [])
    return RunData(label or path.name, path, frame, events, forks)


def metrics_table(path: str | Path) -> pd.DataFrame:
    """One run's measurements over time (see ``load_run``)."""
    return load_run(path).metrics


def first_event_difference(a: list[dict], b: list[dict]) -> int | None:
    """The first step at which two event logs differ (None when they are the same)."""
    steps = sorted({e["step"] for e in a} | {e["step"] for e in b})
    by_a, by_b = _by_step(a), _by_step(b)
    return next((s for s in steps if by_a.get(s) != by_b.get(s)), None)


def _by_step(events: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for e in events:
        out.setdefault(e["step"], []).append(e)
    return out


def _labels(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def compare(paths: list[str | Path]) -> Comparison:
    """Several runs side by side, and where each one's events first differ from the first run's."""
    ps = [Path(p) for p in paths]
    runs = [load_run(p, label) for p, label in zip(ps, _labels(ps), strict=True)]
    parts = {r.label: r.metrics.drop(columns="time") for r in runs}
    table = pd.concat(parts, axis=1).swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False)
    longest = max(runs, key=lambda r: len(r.metrics))
    table.insert(0, ("time", ""), longest.metrics["time"].reindex(table.index))
    first = {r.label: first_event_difference(runs[0].events, r.events) for r in runs[1:]}
    return Comparison(runs, table, first)


def title(measure: str) -> str:
    for prefix, text in TITLES.items():
        if measure.startswith(prefix):
            return text.format(measure[len(prefix) :]) if "{}" in text else text
    return measure


def plot(comparison: Comparison, path: str | Path) -> Path:
    """A PNG of every measure over simulated time, one line per run, fork steps dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = comparison.measures()
    cols = 2 if len(measures) > 1 else 1
    rows = -(-len(measures) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 2.8 * rows), squeeze=False, sharex=True)
    for ax, measure in zip(axes.flat, measures, strict=False):
        for i, run in enumerate(comparison.runs):  # one colour per run in every panel
            if measure in run.metrics:
                m = run.metrics
                ax.plot(m["time"], m[measure], label=run.label, color=f"C{i}", drawstyle="steps-post")
            for f in run.forks:
                if f["step"] in run.metrics.index:
                    ax.axvline(run.metrics["time"][f["step"]], color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(title(measure), fontsize=10)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(measures) :]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=f"C{i}", label=r.label) for i, r in enumerate(comparison.runs)]
    axes.flat[0].legend(handles=handles, fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


__all__ = ["Comparison", "RunData", "compare", "first_event_difference", "load_run", "metrics_table", "plot", "title"]
