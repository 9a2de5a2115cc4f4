"""sweep: generated towns of several sizes and seeds, each run durably with the fake LLM."""

from pathlib import Path

import mesa
import pandas as pd
import pytest

from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.scenario import load_scenario
from simulacra.simulation import Simulation
from simulacra.storage import RunStore
from simulacra.sweeps import sweep

from ..agents.fakes import WordEmbedder, by_kind


def fake() -> ScriptedLLM:
    return ScriptedLLM(by_kind())


def collector(sim: Simulation) -> mesa.DataCollector:
    return mesa.DataCollector(model_reporters={"density": lambda town: town.social.density()})


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    out = tmp_path_factory.mktemp("sweep")
    df = sweep(
        residents=[3, 6],
        seeds=[0, 1],
        hours=0.5,
        out=out,
        llm_factory=fake,
        embedder=WordEmbedder(),
        datacollector=collector,
    )
    return df, out


def test_one_row_and_one_run_directory_per_point(swept: tuple[pd.DataFrame, Path]) -> None:
    df, out = swept
    assert len(df) == 4
    assert sorted(zip(df["residents"], df["seed"], strict=True)) == [(3, 0), (3, 1), (6, 0), (6, 1)]
    assert len({*df["run_dir"]}) == 4
    for row in df.itertuples():
        run_dir = Path(row.run_dir)
        assert run_dir.parent == out and (run_dir / "run.db").is_file()
        store = RunStore(run_dir)
        info = store.info()
        store.close()
        assert info.status == "finished" and info.seed == row.seed and info.steps_done == row.steps
        assert len(load_scenario(run_dir / "scenario.yaml").definition.residents) == row.residents


def test_rows_carry_cost_and_diffusion_figures(swept: tuple[pd.DataFrame, Path]) -> None:
    df, _ = swept
    assert (df["calls"] > 0).all() and (df["prompt_tokens"] > 0).all() and (df["completion_tokens"] > 0).all()
    assert (df["hours"] == 0.5).all() and (df["steps"] > 0).all()
    assert df["calls_per_resident_hour"].gt(0).all()
    assert df["cache_hit_rate"].between(0, 1).all()
    assert df["mean_batch_seqs"].isna().all()  # the fake backend does not report engine batches
    assert df["density_start"].between(0, 1).all() and df["density_end"].between(0, 1).all()
    known = [c for c in df.columns if c.startswith("known_")]
    assert known and all(c.endswith(("_start", "_end")) for c in known)
    for c in known:
        assert (df[c] >= 1).all() and (df[c] <= df["residents"]).all()  # each fact's holder knows it at least


def test_a_datacollector_collects_one_row_per_step(swept: tuple[pd.DataFrame, Path]) -> None:
    df, _ = swept
    for row in df.itertuples():
        collected = row.datacollector
        assert isinstance(collected, pd.DataFrame)
        assert len(collected) == row.steps
        assert collected["density"].iloc[-1] == pytest.approx(row.density_end)


def test_a_matching_scenario_is_run_as_given_and_a_rerun_skips_it(tmp_path: Path) -> None:
    df = sweep("scenarios/town3.yaml", hours=0.2, out=tmp_path, llm_factory=fake, embedder=WordEmbedder())
    (run_dir,) = df["run_dir"]
    assert df["residents"].tolist() == [3] and df["status"].tolist() == ["done"]
    assert Path(run_dir, "scenario.yaml").read_text() == Path("scenarios/town3.yaml").read_text()
    assert not Path(run_dir, "generated-scenario.yaml").exists()
    again = sweep("scenarios/town3.yaml", hours=0.2, out=tmp_path, llm_factory=fake, embedder=WordEmbedder())
    assert again["status"].tolist() == ["skipped"] and again["steps_computed"].tolist() == [0]
    same = ["steps", "calls", "prompt_tokens", "density_end", "wall_s"]
    assert again[same].equals(df[same])  # the row is rebuilt from run.db


def test_bad_arguments_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="packaged name"):
        sweep("no-such-town.yaml", out=tmp_path, llm_factory=fake, embedder=WordEmbedder())
    with pytest.raises(ValueError, match="at least 1"):
        sweep(residents=[0], out=tmp_path, llm_factory=fake, embedder=WordEmbedder())


def test_a_loaded_scenario_is_written_into_the_run_directory(tmp_path: Path) -> None:
    town3 = load_scenario("scenarios/town3.yaml")
    df = sweep(town3, residents=[3, 4], hours=0.2, out=tmp_path, llm_factory=fake, embedder=WordEmbedder())
    same, bigger = (Path(d) for d in df["run_dir"])
    assert load_scenario(same / "scenario.yaml").definition == town3.definition
    assert len(load_scenario(bigger / "scenario.yaml").definition.residents) == 4  # a generated town of 4
