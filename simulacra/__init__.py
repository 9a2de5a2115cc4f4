"""Simulacra: generative-agent town simulations on one shared local inference engine.

The research API, for scripts and notebooks::

    from simulacra import Simulation, load_scenario, generate_town, sweep

    sim = Simulation(load_scenario("scenarios/town3.yaml"), seed=1)
    sim.run(hours=1)
    sim.metrics()

    fork = await Run.afork("runs/town3-…", at=30, interventions=[{"cancel_event": "party"}])
    compare(["runs/town3-…", fork.dir]).table   # the runs' measurements side by side (pandas)

Names are imported on first use (module ``__getattr__``), so ``import simulacra`` stays light and the
command line starts without loading torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from simulacra.compare import compare
    from simulacra.run import Run, replay
    from simulacra.scenario import Scenario, load_scenario
    from simulacra.simulation import Simulation
    from simulacra.sweeps import sweep

_LAZY = {
    "Simulation": "simulacra.simulation",
    "load_scenario": "simulacra.scenario",
    "Scenario": "simulacra.scenario",
    "sweep": "simulacra.sweeps",
    "Run": "simulacra.run",
    "replay": "simulacra.run",
    "compare": "simulacra.compare",
}

__all__ = [
    "Run",
    "Scenario",
    "Simulation",
    "__version__",
    "compare",
    "generate_town",
    "load_scenario",
    "replay",
    "sweep",
]


def generate_town(residents: int, seed: int = 0) -> Scenario:
    """A validated scenario for a generated town of ``residents`` people (``simulacra.scenario.generate_scenario``).

    Write it out with ``simulacra.scenario.dump_scenario(scenario.definition.model_dump(mode="json"))``
    when a run directory needs it as a file.
    """
    from simulacra.scenario import generate_scenario, parse_scenario

    return parse_scenario(generate_scenario(residents, seed), source=f"<generated town of {residents}, seed {seed}>")


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'simulacra' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
