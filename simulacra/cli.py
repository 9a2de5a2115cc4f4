"""The `simulacra` command line: the one Typer ``app`` (``pyproject.toml``: ``simulacra = "simulacra.cli:app"``).

The commands live in ``simulacra.commands`` by what they work on (``runs``, ``models``,
``scenario``); this module only puts them on the app, in the order ``--help`` lists them.
"""

from __future__ import annotations

import typer

from simulacra.commands import experiments, models, runs, sweeps
from simulacra.commands.scenario import scenario_app

app = typer.Typer(
    help="Generative-agent town simulations on one shared local inference engine.",
    no_args_is_help=True,
    add_completion=False,
)
for command in (
    runs.run,
    runs.resume,
    runs.replay,
    runs.measure,
    runs.interview,
    runs.export,
    runs.view,
    runs.runs,
    experiments.fork,
    experiments.compare,
    experiments.plot,
    sweeps.sweep,
    models.models,
    models.generate,
    models.serve,
    models.moefy,
):
    app.command()(command)
app.add_typer(scenario_app, name="scenario")


if __name__ == "__main__":
    app()
