"""`simulacra fork | compare | plot`: counterfactual experiments (docs/EXPERIMENTS.md).

``fork`` makes a new run from any step of another, changed by interventions (a YAML file, inline YAML
with ``-i``, or the shortcuts ``--tell``, ``--cancel-event``, ``--remove-resident``, ``--set``,
``--model``); ``compare`` prints runs' measurements side by side and where their events first differ,
and writes the plot; ``plot`` draws one run's curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from simulacra.commands import console, fail
from simulacra.commands.runs import _drive, _go

if TYPE_CHECKING:
    from simulacra.compare import Comparison
    from simulacra.interventions import Intervention


def fork(
    run_dir: Path = typer.Argument(..., help="the run to fork (it is only read)"),
    at: str = typer.Option(..., "--at", help="the step to fork at, or a simulated time such as '2025-04-10 12:00'"),
    out: Path = typer.Option(None, help="the new run directory (default: RUN-fork-STEP)"),
    interventions: Path = typer.Option(None, "--interventions", help="a YAML file of interventions"),
    intervene: list[str] = typer.Option(
        [], "--intervene", "-i", help='an intervention as inline YAML, e.g. "move_event: {id: party, place: Pub}"'
    ),
    tell: list[str] = typer.Option([], help="'NAME: TEXT': the resident remembers TEXT"),
    cancel_event: list[str] = typer.Option([], help="cancel the event with this id"),
    remove_resident: list[str] = typer.Option([], help="this resident leaves the town"),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE: temperature, top_p or a mind setting from now on"),
    model: str = typer.Option(None, help="continue with this model (GGUF file or HF folder)"),
    hours: float = typer.Option(None, min=0.01, help="run the fork this many simulated hours right away"),
) -> None:
    """A counterfactual: a new run whose steps up to --at are RUN's, changed by interventions, ready to resume."""
    from simulacra.scenario import ScenarioError

    try:
        parsed = _interventions(interventions, intervene, tell, cancel_event, remove_resident, set_, model)
    except ScenarioError as exc:
        fail(str(exc))
    _go(_fork(run_dir, at, parsed, out, hours))


async def _fork(run_dir: Path, at: str, parsed: list[Intervention], out: Path | None, hours: float | None) -> None:
    from simulacra.run import Run
    from simulacra.scenario import ScenarioError

    try:
        run_ = await Run.afork(run_dir, at, parsed, out)
    except ScenarioError as exc:
        fail(str(exc))
    step = run_.sim.town.steps
    console.print(
        f"forked {run_dir} at step {step} ({run_.sim.town.now:%a %Y-%m-%d %H:%M}) with {len(parsed)} "
        f"intervention(s) into {run_.dir}",
        soft_wrap=True,
    )
    if hours is None:
        await run_.aclose()
        console.print(
            f"continue it with `simulacra resume {run_.dir}`; compare: `simulacra compare {run_dir} {run_.dir}`"
        )
        return
    await _drive(run_, False, False, run_.sim.town.clock.steps_in(hours))


def _interventions(
    path: Path | None,
    inline: list[str],
    tell: list[str],
    cancel: list[str],
    remove: list[str],
    settings: list[str],
    model: str | None,
) -> list[Intervention]:
    """Every intervention of the command line, each located by its file line or its option and number."""
    from simulacra.interventions import InterventionError, load_interventions, parse_one, parse_option
    from simulacra.scenario import Issue, ScenarioError

    out: list[Intervention] = []
    errors: list[ScenarioError] = []

    def add(make) -> None:  # noqa: ANN001 - a thunk
        try:
            out.extend(make())
        except ScenarioError as exc:
            errors.append(exc)

    if path is not None:
        add(lambda: load_interventions(path))
    for n, text in enumerate(inline, 1):
        add(lambda text=text, n=n: parse_option(text, "--intervene", n))
    for n, text in enumerate(tell, 1):
        name, sep, memory = text.partition(":")
        if not sep:
            errors.append(ScenarioError(f"--tell #{n}", [Issue(None, "", f"{text!r}: write NAME: TEXT")]))
            continue
        add(lambda n=n, d={"tell": {"to": name.strip(), "memory": memory.strip()}}: [parse_one(d, f"--tell #{n}")])
    for option, kind, values in (
        ("--cancel-event", "cancel_event", cancel),
        ("--remove-resident", "remove_resident", remove),
    ):
        for n, value in enumerate(values, 1):
            add(lambda o=option, n=n, d={kind: value}: [parse_one(d, f"{o} #{n}")])
    for n, text in enumerate(settings, 1):
        key, sep, value = text.partition("=")
        if not sep:
            errors.append(
                ScenarioError(f"--set #{n}", [Issue(None, "", f"{text!r}: write KEY=VALUE, e.g. temperature=0.3")])
            )
            continue
        add(lambda n=n, key=key, value=value: parse_option(f"set: {{{key.strip()}: {value.strip()}}}", "--set", n))
    if model:
        add(lambda: [parse_one({"set": {"model": model}}, "--model")])
    if errors:
        raise errors[0] if len(errors) == 1 else InterventionError(errors)
    return out


def compare(
    run_dirs: list[Path] = typer.Argument(..., help="two or more run directories (the first is the reference)"),
    plot_path: Path = typer.Option(Path("compare.png"), "--plot", help="where to write the plot (PNG)"),
    rows: int = typer.Option(12, min=2, help="steps shown per table"),
) -> None:
    """Runs' measurements side by side over time, the first step their events differ, and a plot."""
    if len(run_dirs) < 2:
        fail("give two or more runs to compare (one run: `simulacra plot RUN`)")
    comparison = _load(run_dirs)
    _print(comparison, rows)
    ref = comparison.runs[0].label
    for label, step in comparison.first_difference.items():
        if step is None:
            console.print(f"{label}: the same events as {ref}", soft_wrap=True)
        else:
            console.print(
                f"{label}: events first differ from {ref}'s at step {step} ({_time(comparison, step)})", soft_wrap=True
            )
    _plot(comparison, plot_path)


def plot(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    out: Path = typer.Option(None, help="where to write the plot (default: RUN/metrics.png)"),
    rows: int = typer.Option(12, min=2, help="steps shown per table"),
) -> None:
    """One run's measurements over time, as tables and a plot."""
    comparison = _load([run_dir])
    _print(comparison, rows)
    _plot(comparison, out or run_dir / "metrics.png")


def _load(run_dirs: list[Path]) -> Comparison:
    from simulacra.compare import compare as compare_runs
    from simulacra.scenario import ScenarioError
    from simulacra.storage import RunError

    try:
        return compare_runs(run_dirs)
    except (RunError, ScenarioError) as exc:
        fail(str(exc))


def _time(comparison: Comparison, step: int) -> str:
    t = comparison.table[("time", "")].get(step)
    return f"{t:%a %H:%M}" if t is not None else "?"


def _print(comparison: Comparison, rows: int) -> None:
    """One table per measure: sampled steps down, runs across."""
    from simulacra.compare import title

    table = comparison.table
    every = max(1, -(-len(table) // rows))
    shown = table.iloc[::every]
    if table.index[-1] not in shown.index:
        shown = table.loc[[*shown.index, table.index[-1]]]
    labels = [r.label for r in comparison.runs]
    for measure in comparison.measures():
        t = Table(title=title(measure), title_justify="left")
        t.add_column("step", justify="right")
        t.add_column("time")
        for label in labels:
            t.add_column(label, justify="right", overflow="fold")
        for step, row in shown.iterrows():
            cells = [_cell(row.get((measure, label))) for label in labels]
            t.add_row(str(step), f"{row[('time', '')]:%a %H:%M}", *cells)
        console.print(t)


def _cell(value: object) -> str:
    if value is None or value != value:  # missing, or NaN: the run has no such measure at that step
        return "–"
    return f"{value:.3f}" if isinstance(value, float) and not float(value).is_integer() else f"{value:.0f}"


def _plot(comparison: Comparison, path: Path) -> None:
    from simulacra.compare import plot as plot_runs

    try:
        written = plot_runs(comparison, path)
    except OSError as exc:
        fail(f"could not write the plot to {path}: {exc.strerror}; choose another path")
    console.print(f"plot: {written}")
