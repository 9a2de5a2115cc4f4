"""`simulacra sweep FILE`: resident counts × seeds from a YAML file, in this process or as Ray tasks.

A sweep file (``simulacra.sweeps.SweepSpec``; relative paths are relative to the file)::

    scenario: town3            # a file or packaged name; leave it out to generate towns
    residents: [3, 10, 30]
    seeds: [0, 1]
    hours: 2
    backend: {kind: http, urls: ["http://gpu1:8000"]}   # or {kind: engine, model: ...}, {kind: replay, source: DIR}
    executor: ray              # in-process (default) or ray; --executor overrides
    cpus_per_point: 1

The command prints a line per point as its state changes (and as its steps pass each tenth), then the
result table, and writes it to OUT/sweep.csv and OUT/sweep.parquet. Run it again after a failure or
Ctrl-C: finished points are skipped, the others resume. Exit code 1 when a point failed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from simulacra.commands import console, error, fail

if TYPE_CHECKING:
    import pandas as pd

    from simulacra.sweeps import PointProgress


def sweep(
    file: Path = typer.Argument(..., help="sweep YAML: scenario, residents, seeds, hours, backend, executor"),
    executor: str = typer.Option(None, "--executor", help="in-process or ray (default: the file's, else in-process)"),
    address: str = typer.Option(
        None, "--address", help="with --executor ray: the Ray cluster (ray://HOST:10001); default: a local Ray"
    ),
    out: Path = typer.Option(
        None, "--out", help="folder of the points' run directories (default: the file's out, else runs/FILE-NAME)"
    ),
    cpus_per_point: float = typer.Option(None, "--cpus-per-point", min=0.01, help="CPUs each Ray task declares"),
) -> None:
    """Run a sweep of towns (resident counts × seeds); re-running it skips finished points and resumes the rest."""
    from simulacra.scenario import ScenarioError
    from simulacra.storage import RunError
    from simulacra.sweeps import EXECUTORS, load_sweep_file
    from simulacra.sweeps import sweep as run_sweep

    try:
        spec = load_sweep_file(file)
    except ScenarioError as exc:
        fail(str(exc))
    executor = executor or spec.executor
    if executor not in EXECUTORS:
        fail(f"--executor {executor}: use one of {', '.join(EXECUTORS)}")
    address = address or spec.address
    if address and executor != "ray":
        fail(f"--address {address} names a Ray cluster; add --executor ray (or executor: ray in {file})")
    folder = out or (Path(spec.out) if spec.out else Path("runs") / file.stem)
    console.print(f"sweep {file} → {folder} ({executor})", highlight=False)
    try:
        df = run_sweep(
            spec.scenario,
            residents=spec.residents,
            seeds=spec.seeds,
            hours=spec.hours,
            out=folder,
            backend=spec.backend.to_backend() if spec.backend else None,
            town_seed=spec.town_seed,
            executor=executor,
            address=address or None,
            cpus_per_point=cpus_per_point or spec.cpus_per_point,
            gpus_per_point=spec.gpus_per_point,
            on_progress=_Printer(),
        )
    except (ScenarioError, FileNotFoundError, ValueError, ImportError, RunError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/yellow]: every point's last whole step is saved; run `simulacra sweep {file}` "
            "again to resume"
        )
        raise typer.Exit(code=130) from None
    console.print(_table(df, folder))
    summary = [folder / "sweep.csv", folder / "sweep.parquet"]
    df.to_csv(summary[0], index=False)
    df.to_parquet(summary[1], index=False)
    console.print(f"summary: {summary[0]}, {summary[1]}", highlight=False)
    failed = int((df["status"] == "failed").sum())
    if failed:
        error(
            f"{failed} of {len(df)} points failed (their errors are in the table); fix the cause and run "
            f"`simulacra sweep {file}` again: finished points are skipped, the others resume"
        )
        raise typer.Exit(code=1)


class _Printer:
    """``on_progress``: a line per state change, and one each time a point's steps pass a tenth of its target."""

    def __init__(self) -> None:
        self.tenth: dict[str, int] = {}

    def __call__(self, p: PointProgress) -> None:
        name = p.point.name
        if p.state == "running":
            tenth = 10 * p.step // p.steps_target if p.steps_target else 10
            if name not in self.tenth:
                self._say(name, f"running from step {p.step}/{p.steps_target}")
            elif tenth > self.tenth[name]:
                self._say(name, f"step {p.step}/{p.steps_target}")
            self.tenth[name] = tenth
        elif p.state == "failed":
            self._say(name, f"[red]failed[/red]: {escape(p.error)}")
        elif p.state == "skipped":
            self._say(name, f"skipped: finished earlier ({p.step}/{p.steps_target} steps)")
        elif p.state == "queued":
            self._say(name, "queued")
        else:
            self._say(name, f"[green]{p.state}[/green] ({p.step}/{p.steps_target} steps)")

    @staticmethod
    def _say(name: str, text: str) -> None:
        console.print(f"{escape(name)}: {text}", highlight=False, soft_wrap=True)


def _table(df: pd.DataFrame, folder: Path) -> Table:
    table = Table(title=f"sweep in {folder}")
    for c in ("residents", "seed", "status", "steps", "computed", "wall s", "calls", "density", "error"):
        table.add_column(c)
    for r in df.itertuples():
        status = f"[red]{r.status}[/red]" if r.status == "failed" else r.status
        table.add_row(
            str(r.residents),
            str(r.seed),
            status,
            _n(r.steps) + ("" if _missing(r.steps_target) else f"/{r.steps_target}"),
            _n(r.steps_computed),
            "" if _missing(r.wall_s) else f"{r.wall_s:.1f}",
            _n(r.calls),
            "" if _missing(r.density_end) else f"{r.density_end:.3f}",
            escape(r.error),
        )
    return table


def _missing(value: object) -> bool:
    import pandas as pd

    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _n(value: object) -> str:
    return "" if _missing(value) else str(value)
