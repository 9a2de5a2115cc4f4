"""The shipped scenarios load, the generator makes valid towns of any size, and the CLI works."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulacra.cli import app
from simulacra.scenario import (
    dump_scenario,
    generate_scenario,
    load_scenario,
    packaged_scenarios,
    parse_scenario,
    resolve_scenario_path,
)


def test_town25_is_the_promised_town() -> None:
    s = load_scenario(packaged_scenarios()["town25"])
    d = s.definition
    assert len(d.residents) == 25
    assert [f.id for f in d.information] == ["candidacy", "party"]
    assert [e.id for e in d.events] == ["party"]
    party = d.events[0]
    clock = s.clock
    assert 0 < clock.step_of(party.start) < clock.step_of(party.end) <= s.max_steps  # within the two days
    assert s.town_map.place(party.place).kind == "venue"
    assert {iv.fact for iv in d.measurement.interviews} == {"candidacy", "party"}
    assert 0.1 < s.summary()["density"] < 0.25  # the paper's town started at 0.167
    names = s.town_map.place_names(rooms=False)
    assert "Copper Kettle Café" in names and "Willow Green" in names


def test_town3_and_packaged_lookup() -> None:
    assert {"town3", "town25"} <= set(packaged_scenarios())
    assert resolve_scenario_path("town3").name == "town3.yaml"
    s = load_scenario(resolve_scenario_path("town3"))
    assert len(s.definition.residents) == 3


@pytest.mark.parametrize("n", [1, 7, 100, 1000])
def test_generated_towns_are_valid_through_yaml(tmp_path: Path, n: int) -> None:
    path = tmp_path / f"town_{n}.yaml"
    dump_scenario(generate_scenario(n, seed=2), path)
    s = load_scenario(path)
    d = s.definition
    assert len(d.residents) == n
    homes = {p.name for p in d.map.places if p.kind == "home"}
    assert {r.home for r in d.residents} == homes  # one home per household, every home lived in
    if n >= 100:
        kinds = s.summary()["places"]
        assert kinds["venue"] >= 5 and kinds["work"] >= 3 and kinds["outdoor"] >= 1
        ties = {rel.note for r in d.residents for rel in r.relationships}
        assert {"partner", "coworker", "neighbour", "friend"} <= ties
        town = s.build_town()
        for _ in range(20):
            town.step()


def test_generator_is_deterministic_and_scales() -> None:
    assert generate_scenario(300, seed=9) == generate_scenario(300, seed=9)
    assert generate_scenario(300, seed=9) != generate_scenario(300, seed=10)
    big = parse_scenario(generate_scenario(10_000, seed=1), source="town_10000")
    summary = big.summary()
    assert summary["residents"] == 10_000
    assert summary["places"]["home"] > 3000 and summary["places"]["work"] > 300
    assert 5 < summary["relationships"] / 10_000 < 30  # a sparse graph, as real towns are


def test_cli_generate_and_check(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "town_100.yaml"
    result = runner.invoke(app, ["scenario", "generate", "--residents", "100", "--seed", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and "residents" in result.output
    result = runner.invoke(app, ["scenario", "check", str(out)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "100" in result.output
    result = runner.invoke(app, ["scenario", "check", "town25"])
    assert result.exit_code == 0 and "Fernwick" in result.output


def test_cli_check_reports_the_problem_with_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = Path(packaged_scenarios()["town3"]).read_text().replace("home: Birch House", "home: Birch Hose")
    bad.write_text(text)
    result = CliRunner().invoke(app, ["scenario", "check", str(bad)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {bad}, line ")
    assert "[red]" not in result.output  # printed as the other commands print errors, not as literal markup
    assert "residents[2].home: unknown place 'Birch Hose' (did you mean 'Birch House'?" in result.output.replace(
        "\n", ""
    )
