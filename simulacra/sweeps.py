"""Parameter sweeps: the same question asked of towns of several sizes and seeds, one run directory each.

Scaling studies (how diffusion, density and cost change with population) need many comparable runs.
``sweep`` runs every (resident count, seed) point as an ordinary durable run under ``out`` (each can
be resumed, replayed, viewed or exported like any other) and returns one summary row per point as a
pandas DataFrame. Where a point's population differs from the given scenario's (or none is given),
the town generator draws a town of that size; the generated YAML is kept in the point's folder.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from simulacra.agents.society import TextEmbedder
from simulacra.inference.port import LLM
from simulacra.run import Run
from simulacra.scenario import Scenario, dump_scenario, generate_scenario, load_scenario, resolve_scenario_path
from simulacra.simulation import Simulation
from simulacra.storage import DB_NAME, RunError

if TYPE_CHECKING:
    import mesa

DEFAULT_RESIDENTS = 25
GENERATED_NAME = "generated-scenario.yaml"


def point_dir(out: str | Path, residents: int, seed: int) -> Path:
    """The run directory of one sweep point."""
    return Path(out) / f"n{residents}-s{seed}"


def sweep(
    scenario: str | Path | Scenario | None = None,
    *,
    residents: Sequence[int] | None = None,
    seeds: Sequence[int] = (0,),
    hours: float = 1.0,
    out: str | Path = "runs/sweep",
    llm_factory: Callable[[], LLM] | None = None,
    embedder: TextEmbedder | None = None,
    datacollector: Callable[[Simulation], mesa.DataCollector] | None = None,
    town_seed: int = 0,
) -> pd.DataFrame:
    """Run every (residents, seed) point for ``hours`` simulated hours; one summary row per point.

    ``scenario``: a path, a packaged name (``town25``) or a loaded ``Scenario``; ``residents`` defaults
    to its population (25 without a scenario). Other populations get a generated town (drawn with
    ``town_seed``, so all seeds of a size share one town and vary only the run). ``llm_factory`` makes
    one backend per point (default: the local engine named by the scenario). ``datacollector(sim)``
    may return a Mesa ``DataCollector``; it is attached to the town, collects once per step, and its
    model-variables DataFrame lands in the row's ``datacollector`` column.

    Blocks until done; inside a running event loop (Jupyter) use ``await asweep(...)``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("sweep() cannot run inside a running event loop (Jupyter): use `await asweep(...)`")
    return asyncio.run(
        asweep(
            scenario,
            residents=residents,
            seeds=seeds,
            hours=hours,
            out=out,
            llm_factory=llm_factory,
            embedder=embedder,
            datacollector=datacollector,
            town_seed=town_seed,
        )
    )


async def asweep(
    scenario: str | Path | Scenario | None = None,
    *,
    residents: Sequence[int] | None = None,
    seeds: Sequence[int] = (0,),
    hours: float = 1.0,
    out: str | Path = "runs/sweep",
    llm_factory: Callable[[], LLM] | None = None,
    embedder: TextEmbedder | None = None,
    datacollector: Callable[[Simulation], mesa.DataCollector] | None = None,
    town_seed: int = 0,
) -> pd.DataFrame:
    """``sweep`` for callers that already run an event loop."""
    if hours <= 0:
        raise ValueError(f"hours must be positive, not {hours}")
    base_path, base = _base_scenario(scenario)
    counts = (
        list(residents) if residents is not None else [len(base.definition.residents) if base else DEFAULT_RESIDENTS]
    )
    if not counts or not seeds:
        raise ValueError("a sweep needs at least one resident count and one seed")
    if any(n < 1 for n in counts):
        raise ValueError(f"resident counts must be at least 1: {counts}")
    points = [(n, int(seed)) for n in counts for seed in seeds]
    taken = [str(point_dir(out, n, s)) for n, s in points if (point_dir(out, n, s) / DB_NAME).exists()]
    if taken:
        raise RunError(f"{', '.join(taken)} already hold runs; pass another out= or remove them")
    rows = []
    for n, seed in points:
        path = _scenario_file(base_path, base, n, point_dir(out, n, seed), town_seed)
        llm = llm_factory() if llm_factory is not None else None  # None: Run.create starts the scenario's engine
        rows.append(await _run_point(path, n, seed, hours, point_dir(out, n, seed), llm, embedder, datacollector))
    return pd.DataFrame(rows)


def _base_scenario(scenario: str | Path | Scenario | None) -> tuple[Path | None, Scenario | None]:
    if scenario is None:
        return None, None
    if isinstance(scenario, Scenario):
        return None, scenario
    path = resolve_scenario_path(scenario)
    if not path.is_file():
        raise FileNotFoundError(
            f"no scenario file {scenario!s}; give a path, a packaged name (`simulacra scenario list`), or None "
            "to generate towns"
        )
    return path, load_scenario(path)


def _scenario_file(base_path: Path | None, base: Scenario | None, n: int, folder: Path, town_seed: int) -> Path:
    """The scenario file a point runs: the given file when the population matches, else one written here."""
    if base is not None and len(base.definition.residents) == n:
        if base_path is not None:
            return base_path
        data: dict[str, Any] = base.definition.model_dump(mode="json", by_alias=True)
    else:
        data = generate_scenario(n, seed=town_seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / GENERATED_NAME  # not scenario.yaml: Run.create copies the scenario there
    dump_scenario(data, path)
    return path


async def _run_point(
    scenario_path: Path,
    n: int,
    seed: int,
    hours: float,
    folder: Path,
    llm: LLM | None,
    embedder: TextEmbedder | None,
    datacollector: Callable[[Simulation], mesa.DataCollector] | None,
) -> dict[str, Any]:
    run = Run.create(scenario_path, seed=seed, hours=hours, llm=llm, embedder=embedder, run_dir=folder)
    try:
        collector = datacollector(run.sim) if datacollector is not None else None
        if collector is not None:
            run.sim.town.datacollector = collector
        t0 = time.perf_counter()
        await run.arun()
        wall = time.perf_counter() - t0
        stats = run.llm.stats() if hasattr(run.llm, "stats") else {}
        row = _row(run, n, seed, hours, wall, stats)
        if collector is not None:
            row["datacollector"] = collector.get_model_vars_dataframe()
        return row
    finally:
        await run.aclose()


def _row(run: Run, n: int, seed: int, hours: float, wall: float, stats: dict[str, float]) -> dict[str, Any]:
    first, last = run.first_metrics, run.sim.step_metrics()
    sim_hours = run.sim.town.clock.hours_of(run.sim.town.steps)
    prompt = last["llm.prompt_tokens"]
    row: dict[str, Any] = {
        "residents": n,
        "seed": seed,
        "hours": hours,
        "steps": run.sim.town.steps,
        "run_dir": str(run.dir),
        "wall_s": wall,
        "calls": int(last["llm.calls"]),
        "prompt_tokens": int(prompt),
        "cached_tokens": int(last["llm.cached_tokens"]),
        "completion_tokens": int(last["llm.completion_tokens"]),
        "mean_batch_seqs": float(stats["mean_batch_seqs"]) if "mean_batch_seqs" in stats else math.nan,
        "cache_hit_rate": last["llm.cached_tokens"] / prompt if prompt else math.nan,
        "calls_per_resident_hour": last["llm.calls"] / (n * sim_hours) if sim_hours else math.nan,
        "density_start": first.get("density", math.nan),
        "density_end": last["density"],
    }
    for name in sorted(k for k in last if k.startswith("known.")):
        fact = name.removeprefix("known.")
        row[f"known_{fact}_start"] = first.get(name, math.nan)
        row[f"known_{fact}_end"] = last[name]
    return row
