"""`simulacra scenario generate | check`: generate towns of any size and check scenario files.

``scenario_app`` is the group; ``simulacra.cli`` adds it to the main app as ``scenario``.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from simulacra.commands import console, fail
from simulacra.scenario import (
    ScenarioError,
    dump_scenario,
    generate_scenario,
    load_scenario,
    parse_scenario,
    resolve_scenario_path,
)

scenario_app = typer.Typer(help="Generate and check scenario files.", no_args_is_help=True, add_completion=False)


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
        fail(str(exc))
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
        fail(str(exc))
    took = time.perf_counter() - t0
    console.print(_summary_table(scenario.summary(), f"{path}: valid ({took:.1f}s)"))
