"""`simulacra scenario ...`: generate towns of any size and check scenario files.

``register(app)`` adds the ``scenario`` command group to the main CLI (``simulacra.cli``), as
``simulacra.run_cli.register`` adds the run commands; ``scenario_app`` is the group itself (tests
invoke it directly).
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from simulacra.scenario.errors import ScenarioError
from simulacra.scenario.generator import dump_scenario, generate_scenario
from simulacra.scenario.loader import load_scenario, parse_scenario, resolve_scenario_path

scenario_app = typer.Typer(help="Generate and check scenario files.", no_args_is_help=True, add_completion=False)
console = Console()


def register(app: typer.Typer) -> None:
    """Add ``simulacra scenario generate`` / ``check`` to ``app``."""
    app.add_typer(scenario_app, name="scenario")


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}", soft_wrap=True, markup=False, highlight=False)
    raise typer.Exit(code=2)


def _summary_table(summary: dict, title: str) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{v} {k}" for k, v in value.items())
        elif isinstance(value, list):
            value = "\n".join(value) or "none"
        elif isinstance(value, float):
            value = f"{value:.3f}"
        table.add_row(key, str(value))
    return table


@scenario_app.command()
def generate(
    residents: int = typer.Option(..., "--residents", "-n", min=1, help="how many people live in the town"),
    seed: int = typer.Option(0, "--seed", "-s", help="same seed, same town"),
    output: Path = typer.Option(..., "--output", "-o", help="YAML file to write"),
    check: bool = typer.Option(True, help="validate the generated file (slow for 10,000 residents)"),
) -> None:
    """Write a valid town of any size: housing, workplaces, venues and a social graph scaled to it."""
    t0 = time.perf_counter()
    data = generate_scenario(residents, seed)
    try:
        scenario = parse_scenario(data, source=str(output)) if check else None
    except ScenarioError as exc:  # a generator bug, but say so plainly
        _fail(exc)
    dump_scenario(data, output)
    took = time.perf_counter() - t0
    if scenario is not None:
        console.print(_summary_table(scenario.summary(), f"{output} ({took:.1f}s)"))
    else:
        console.print(f"wrote {output} ({took:.1f}s)")


@scenario_app.command("check")
def check_file(path: str = typer.Argument(..., help="scenario YAML file (or the name of a packaged one)")) -> None:
    """Validate a scenario file and summarise it; exit code 2 with the problems when it is invalid."""
    t0 = time.perf_counter()
    try:
        scenario = load_scenario(resolve_scenario_path(path))
    except ScenarioError as exc:
        _fail(exc)
    took = time.perf_counter() - t0
    console.print(_summary_table(scenario.summary(), f"{path}: valid ({took:.1f}s)"))
