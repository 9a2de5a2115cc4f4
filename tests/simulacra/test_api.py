"""The research API: `from simulacra import ...` is light, and a Simulation runs, measures and answers."""

import asyncio
import subprocess
import sys

import pytest

import simulacra.run
import simulacra.simulation
from simulacra import Scenario, Simulation, generate_town, load_scenario, sweep
from simulacra.inference.backends.fake import ScriptedLLM

from ..agents.fakes import WordEmbedder, by_kind

TOWN3 = "scenarios/town3.yaml"


def test_importing_the_package_loads_nothing_heavy() -> None:
    code = (
        "import sys, simulacra; "
        "heavy = [m for m in ('torch', 'pandas', 'numpy', 'sqlmodel', 'simulacra.simulation') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_names_are_the_real_objects() -> None:
    import simulacra
    from simulacra.simulation import Simulation as RealSimulation
    from simulacra.sweeps import sweep as real_sweep

    assert Simulation is RealSimulation
    assert sweep is real_sweep and simulacra.sweep is real_sweep
    assert simulacra.Run is simulacra.run.Run and simulacra.replay is simulacra.run.replay
    assert simulacra.__version__
    with pytest.raises(AttributeError, match="no attribute 'Simulations'"):
        simulacra.Simulations  # noqa: B018


def test_a_simulation_runs_by_hours_and_reports_metrics() -> None:
    sim = Simulation(load_scenario(TOWN3), llm=ScriptedLLM(by_kind()), embedder=WordEmbedder(), seed=1)
    assert [r.name for r in sim.residents] == [r.name for r in load_scenario(TOWN3).definition.residents]
    sim.run(hours=0.5)
    assert sim.town.steps == 30 // sim.town.clock.minutes_per_step
    sim.run(2)  # steps, as before
    assert sim.town.steps == 30 // sim.town.clock.minutes_per_step + 2
    m = sim.metrics()
    assert m["llm.calls"] > 0 and 0 <= m["density"] <= 1
    assert m["known.party"] >= 1  # the host knows of the party from the start
    assert set(m["coordination"]) == set(sim.scenario.definition.measurement.attendance)
    assert {"invited", "attended", "present_uninvited"} <= set(m["coordination"]["party"])
    answer = asyncio.run(sim.interview(sim.residents[0].name, "What are you doing today?"))
    assert isinstance(answer, str) and answer
    with pytest.raises(ValueError, match="either steps or hours"):
        sim.run()
    with pytest.raises(ValueError, match="either steps or hours"):
        sim.run(1, hours=1)


def test_without_an_llm_the_scenarios_engine_is_started(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []

    def make_llm(backend: simulacra.run.Backend) -> ScriptedLLM:
        asked.append(backend)
        return ScriptedLLM(by_kind())

    monkeypatch.setattr(simulacra.simulation, "make_llm", make_llm)
    scenario = load_scenario(TOWN3)
    sim = Simulation(scenario, seed=1, embedder=WordEmbedder())
    assert [(b.kind, b.model) for b in asked] == [("engine", scenario.definition.model.path or "")]
    sim.run(1)
    assert sim.metrics()["llm.calls"] > 0


def test_generate_town_is_a_scenario_of_that_size() -> None:
    town = generate_town(7, seed=2)
    assert isinstance(town, Scenario) and len(town.definition.residents) == 7
    sim = Simulation(town, llm=ScriptedLLM(by_kind()), embedder=WordEmbedder())
    sim.run(1)
    assert len(sim.residents) == 7
