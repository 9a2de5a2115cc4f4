"""Parameter sweeps: the same question asked of towns of several sizes and seeds, one run directory each.

Scaling studies (how diffusion, density and cost change with population) need many comparable runs.
``sweep`` runs every (resident count, seed) point as an ordinary durable run under ``out`` (each can
be resumed, replayed, viewed or exported like any other) and returns one summary row per point as a
pandas DataFrame. Where a point's population differs from the given scenario's (or none is given),
the town generator draws a town of that size; the generated YAML is kept in the point's folder.

A point is one code path, ``_run_point``, wherever it runs; the executor only decides where:

- ``executor="in-process"`` (the default): one point after another in this process;
- ``executor="ray"``: every point is a Ray task declaring ``num_cpus=cpus_per_point`` and
  ``num_gpus=gpus_per_point``, on a local Ray (started here, and shut down here, when this process has
  none) or the cluster at ``address``. The task builds its own LLM in the worker, so ``llm_factory``,
  ``embedder`` and ``datacollector`` travel pickled (cloudpickle: module-level functions and plain
  objects do, an open engine or socket does not), or the point names a ``Backend`` it can rebuild.

Sweeps are re-runnable: a point whose run already reached its steps is skipped and its row rebuilt
from ``run.db``; an interrupted, paused or failed one is resumed from its last saved step (a point
whose folder holds another town or seed is refused). A point that fails does not stop the others: its
row says ``status="failed"`` and the ``error``. Progress comes per point as ``PointProgress``
(queued, running step k/N, then done / resumed / skipped / failed) to ``on_progress`` and the
``simulacra.sweeps`` logger. ``load_sweep_file`` reads the YAML that ``simulacra sweep`` runs.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import logging
import math
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simulacra.agents.society import TextEmbedder
from simulacra.backend import Backend
from simulacra.inference.port import LLM
from simulacra.run import Run
from simulacra.scenario import (
    Issue,
    Scenario,
    ScenarioError,
    dump_scenario,
    generate_scenario,
    load_scenario,
    path_str,
    read_yaml,
    resolve_scenario_path,
)
from simulacra.scenario.errors import line_for, pydantic_issue
from simulacra.simulation import Simulation
from simulacra.storage import RunError, RunRow, RunStore, holds_run

if TYPE_CHECKING:
    import mesa

    from simulacra.world.clock import Clock

DEFAULT_RESIDENTS = 25
GENERATED_NAME = "generated-scenario.yaml"
EXECUTORS = ("in-process", "ray")
# every row has these, in this order (then known_<fact>_start/_end, then datacollector when one is given)
COLUMNS = (
    "residents",
    "seed",
    "hours",
    "status",  # done (run now) | resumed (continued now) | skipped (finished earlier) | failed
    "error",
    "steps",
    "steps_target",
    "steps_computed",  # steps this call computed (0 for a skipped point)
    "run_dir",
    "wall_s",  # the run's compute time over all its sessions
    "calls",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "mean_batch_seqs",  # the engine's, over the steps computed now (NaN for a skipped point)
    "cache_hit_rate",
    "calls_per_resident_hour",
    "density_start",
    "density_end",
)
COUNTS = ("steps", "steps_target", "steps_computed", "calls", "prompt_tokens", "cached_tokens", "completion_tokens")

log = logging.getLogger(__name__)


def point_dir(out: str | Path, residents: int, seed: int) -> Path:
    """The run directory of one sweep point."""
    return Path(out) / f"n{residents}-s{seed}"


@dataclass(frozen=True)
class Point:
    """One sweep point; what a point-aware ``llm_factory(point)`` is given."""

    residents: int
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name


@dataclass(frozen=True)
class PointProgress:
    """A point's state change: ``queued``, ``running`` (at ``step`` of ``steps_target``), then ``done``,
    ``resumed``, ``skipped`` or ``failed`` (with ``error``)."""

    point: Point
    state: str
    step: int = 0
    steps_target: int = 0
    error: str = ""


@dataclass
class _Job:
    """Everything one point needs, wherever it runs (pickled into a Ray task)."""

    point: Point
    scenario_path: Path  # the file the point's run is created from
    hours: float
    llm_factory: Callable[..., LLM] | None
    backend: Backend | None
    embedder: TextEmbedder | None
    datacollector: Callable[[Simulation], mesa.DataCollector] | None
    db: str | None = None  # a PostgreSQL URL the point's run keeps its rows in (None: its run.db)


Report = Callable[[PointProgress], None]


def sweep(
    scenario: str | Path | Scenario | None = None,
    *,
    residents: Sequence[int] | None = None,
    seeds: Sequence[int] = (0,),
    hours: float = 1.0,
    out: str | Path = "runs/sweep",
    llm_factory: Callable[..., LLM] | None = None,
    backend: Backend | None = None,
    embedder: TextEmbedder | None = None,
    datacollector: Callable[[Simulation], mesa.DataCollector] | None = None,
    town_seed: int = 0,
    executor: str = "in-process",
    address: str | None = None,
    cpus_per_point: float = 1,
    gpus_per_point: float = 0,
    on_progress: Callable[[PointProgress], None] | None = None,
    db: str | None = None,
) -> pd.DataFrame:
    """Run every (residents, seed) point for ``hours`` simulated hours; one summary row per point.

    ``scenario``: a path, a packaged name (``town25``) or a loaded ``Scenario``; ``residents`` defaults
    to its population (25 without a scenario). Other populations get a generated town (drawn with
    ``town_seed``, so all seeds of a size share one town and vary only the run).

    The LLM of a point: ``llm_factory()`` (or ``llm_factory(point)`` if it takes an argument, a ``Point``)
    makes one per point; else ``backend`` (``Backend("engine", model)``, ``Backend("http", urls=...)``, or
    ``Backend("replay", source=EARLIER_SWEEP_OUT)``: each point answers from the same point there); else the
    local engine named by the scenario. With ``executor="ray"`` the factory is pickled to the worker.

    ``datacollector(sim)`` may return a Mesa ``DataCollector``; it is attached to the town, collects once
    per step computed now, and its model-variables DataFrame lands in the row's ``datacollector`` column
    (None for a skipped point). ``executor``, ``address``, ``cpus_per_point``, ``gpus_per_point``: where
    points run (module docstring). Re-running with the same ``out`` skips finished points and resumes
    the others. ``db``: a PostgreSQL URL every point's run keeps its rows in (``Run.create``), so workers on
    many machines write to one database. Blocks until done; inside a running event loop (Jupyter) use
    ``await asweep(...)``.
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
            backend=backend,
            embedder=embedder,
            datacollector=datacollector,
            town_seed=town_seed,
            executor=executor,
            address=address,
            cpus_per_point=cpus_per_point,
            gpus_per_point=gpus_per_point,
            on_progress=on_progress,
            db=db,
        )
    )


async def asweep(
    scenario: str | Path | Scenario | None = None,
    *,
    residents: Sequence[int] | None = None,
    seeds: Sequence[int] = (0,),
    hours: float = 1.0,
    out: str | Path = "runs/sweep",
    llm_factory: Callable[..., LLM] | None = None,
    backend: Backend | None = None,
    embedder: TextEmbedder | None = None,
    datacollector: Callable[[Simulation], mesa.DataCollector] | None = None,
    town_seed: int = 0,
    executor: str = "in-process",
    address: str | None = None,
    cpus_per_point: float = 1,
    gpus_per_point: float = 0,
    on_progress: Callable[[PointProgress], None] | None = None,
    db: str | None = None,
) -> pd.DataFrame:
    """``sweep`` for callers that already run an event loop."""
    if hours <= 0:
        raise ValueError(f"hours must be positive, not {hours}")
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(map(repr, EXECUTORS))}, not {executor!r}")
    if address is not None and executor != "ray":
        raise ValueError(f"address={address!r} names a Ray cluster; pass executor='ray' with it")
    if cpus_per_point <= 0 or gpus_per_point < 0:
        raise ValueError(
            f"cpus_per_point must be positive and gpus_per_point not negative, not {cpus_per_point}, {gpus_per_point}"
        )
    if llm_factory is not None and backend is not None:
        raise ValueError("pass llm_factory or backend, not both")
    base_path, base = _base_scenario(scenario)
    counts = (
        list(residents) if residents is not None else [len(base.definition.residents) if base else DEFAULT_RESIDENTS]
    )
    if not counts or not seeds:
        raise ValueError("a sweep needs at least one resident count and one seed")
    if any(n < 1 for n in counts):
        raise ValueError(f"resident counts must be at least 1: {counts}")
    root = Path(out).resolve() if executor == "ray" else Path(out)  # a worker may not share this process's cwd
    jobs = []
    for n in counts:
        for seed in seeds:
            point = Point(n, int(seed), point_dir(root, n, int(seed)))
            path = _scenario_file(base_path, base, n, point.run_dir, town_seed)
            backend_ = _point_backend(backend, point)
            jobs.append(_Job(point, path, hours, llm_factory, backend_, embedder, datacollector, db))

    def emit(p: PointProgress) -> None:
        if p.state == "running":
            log.debug("%s: step %d/%d", p.point.name, p.step, p.steps_target)
        else:
            log.info("%s: %s%s", p.point.name, p.state, f": {p.error}" if p.error else "")
        if on_progress is not None:
            on_progress(p)

    for job in jobs:
        emit(PointProgress(job.point, "queued"))
    if executor == "ray":
        rows = await _on_ray(jobs, emit, address, cpus_per_point, gpus_per_point)
    else:
        rows = []
        for job in jobs:
            row = await _run_point(job, emit)
            _finish(job, row, emit)
            rows.append(row)
    return _frame(rows)


def _point_backend(backend: Backend | None, point: Point) -> Backend | None:
    """A replay backend's source is a sweep folder: each point answers from the same point there."""
    if backend is not None and backend.kind == "replay":
        return replace(backend, source=str(point_dir(backend.source, point.residents, point.seed)))
    return backend


def _finish(job: _Job, row: dict[str, Any], emit: Report) -> None:
    emit(PointProgress(job.point, row["status"], row["steps"] or 0, row["steps_target"] or 0, row["error"]))


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for c in COUNTS:
        df[c] = df[c].astype("Int64")  # a failed point's counts are <NA>, the others stay whole numbers
    return df


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


# ---------------------------------------------------------------- one point, wherever it runs


async def _run_point(job: _Job, report: Report) -> dict[str, Any]:
    """Create, resume or skip one point's run; its row. Any error becomes a failed row (the sweep goes on);
    an interrupt (Ctrl-C, a cancelled Ray task) propagates, and the run is marked interrupted."""
    p, folder = job.point, job.point.run_dir
    want: int | None = None
    try:
        scenario = load_scenario(job.scenario_path)
        clock = scenario.clock
        want = clock.steps_in(job.hours)
        if holds_run(folder):
            info = _check_same_point(job)
            if info.steps_done >= want:
                return _stored_row(p, job.hours, clock, "skipped", 0, math.nan)
        llm = _make_point_llm(job)
        try:
            if holds_run(folder):
                urls = job.backend.urls if job.backend is not None and job.backend.kind == "http" else None
                run = Run.open(folder, llm=llm, embedder=job.embedder, lock=True, urls=urls)
                status = "resumed"
                if run.steps_target < want:  # asked for more hours than the run was started with
                    run.steps_target = want
                    run.store.set_status("running", "", steps_target=want)
            else:
                backend = job.backend
                if backend is not None and backend.kind == "engine" and not backend.model:
                    backend = replace(backend, model=scenario.definition.model.path or "")
                run = Run.create(
                    job.scenario_path,
                    seed=p.seed,
                    hours=job.hours,
                    backend=backend,
                    llm=llm,
                    embedder=job.embedder,
                    run_dir=folder,
                    db=job.db,
                )
                status = "done"
        except BaseException:
            if llm is not None:
                await llm.aclose()
            raise
        try:
            collector = job.datacollector(run.sim) if job.datacollector is not None else None
            if collector is not None:
                run.sim.town.datacollector = collector
            start = run.sim.town.steps
            report(PointProgress(p, "running", start, want))
            await run.arun(steps=want - start, on_step=lambda pr: report(PointProgress(p, "running", pr.step, want)))
            stats = run.llm.stats() if hasattr(run.llm, "stats") else {}
            batch = float(stats["mean_batch_seqs"]) if "mean_batch_seqs" in stats else math.nan
            row = _stored_row(p, job.hours, clock, status, run.sim.town.steps - start, batch, run.store)
            if collector is not None:
                row["datacollector"] = collector.get_model_vars_dataframe()
            return row
        finally:
            await run.aclose()
    except Exception as exc:  # a failed point is a row; the other points go on
        return failed_row(p, job.hours, _message(exc), job.datacollector is not None, want)


def _make_point_llm(job: _Job) -> LLM | None:
    """``llm_factory(point)`` if it takes an argument, ``llm_factory()`` if not; None: the backend's."""
    factory = job.llm_factory
    if factory is None:
        return None
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        return factory()
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    takes_point = any(q.kind in positional and q.default is q.empty for q in params)
    return factory(job.point) if takes_point else factory()


def _check_same_point(job: _Job) -> RunRow:
    """The stored run's info; RunError if it is not this point's (another town or seed)."""
    folder = job.point.run_dir
    store = RunStore(folder)
    try:
        info = store.info()
    finally:
        store.close()
    stored = folder / "scenario.origin.yaml"
    stored = stored if stored.exists() else folder / "scenario.yaml"
    same_town = stored.is_file() and stored.read_bytes() == job.scenario_path.read_bytes()
    if info.seed != job.point.seed or not same_town:
        what = f"seed {info.seed}" if info.seed != job.point.seed else f"another town than {job.scenario_path}"
        raise RunError(
            f"{folder} holds a run of {what}, not this sweep point's; pass another out= (--out) or delete {folder}"
        )
    return info


def _message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, RunError) else f"{type(exc).__name__}: {exc}"


def _stored_row(
    p: Point,
    hours: float,
    clock: Clock,
    status: str,
    computed: int,
    batch: float,
    store: RunStore | None = None,
) -> dict[str, Any]:
    """A point's row, read from its ``run.db`` (the same for a point run now and one finished earlier)."""
    own = store is None
    store = store or RunStore(p.run_dir)
    try:
        info = store.info()
        metrics = store.metrics()
        wall = store.wall_s()
    finally:
        if own:
            store.close()
    first = {k: v[0][1] for k, v in metrics.items() if v and v[0][0] == 0}
    last = {k: v[-1][1] for k, v in metrics.items() if v}
    steps = info.steps_done
    sim_hours = clock.hours_of(steps)
    n = p.residents
    prompt = last.get("llm.prompt_tokens", 0.0)
    calls = last.get("llm.calls", 0.0)
    row: dict[str, Any] = {
        "residents": n,
        "seed": p.seed,
        "hours": hours,
        "status": status,
        "error": "",
        "steps": steps,
        "steps_target": clock.steps_in(hours),
        "steps_computed": computed,
        "run_dir": str(p.run_dir),
        "wall_s": wall,
        "calls": int(calls),
        "prompt_tokens": int(prompt),
        "cached_tokens": int(last.get("llm.cached_tokens", 0.0)),
        "completion_tokens": int(last.get("llm.completion_tokens", 0.0)),
        "mean_batch_seqs": batch,
        "cache_hit_rate": last.get("llm.cached_tokens", 0.0) / prompt if prompt else math.nan,
        "calls_per_resident_hour": calls / (n * sim_hours) if sim_hours else math.nan,
        "density_start": first.get("density", math.nan),
        "density_end": last.get("density", math.nan),
    }
    for name in sorted(k for k in last if k.startswith("known.")):
        fact = name.removeprefix("known.")
        row[f"known_{fact}_start"] = first.get(name, math.nan)
        row[f"known_{fact}_end"] = last[name]
    return row


def failed_row(
    p: Point, hours: float, error: str, with_collector: bool = False, target: int | None = None
) -> dict[str, Any]:
    """The row of a point that failed: the same columns, the error said, the steps it has saved (if any)."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS, math.nan)
    row.update(residents=p.residents, seed=p.seed, hours=hours, status="failed", error=error, run_dir=str(p.run_dir))
    for c in COUNTS:
        row[c] = None
    row.update(steps=_saved_steps(p.run_dir), steps_target=target)
    if with_collector:
        row["datacollector"] = None
    return row


def _saved_steps(run_dir: Path) -> int | None:
    """How far a point's run got, or None when there is no readable run."""
    if not holds_run(run_dir):
        return None
    try:
        store = RunStore(run_dir)
    except Exception:  # damaged: the error in the row says so
        return None
    try:
        return store.info().steps_done
    except Exception:
        return None
    finally:
        store.close()


# ---------------------------------------------------------------- the Ray executor


class _ProgressSink:
    """A Ray actor the point tasks report their steps to; the driver takes them while it waits."""

    def __init__(self) -> None:
        self.items: list[PointProgress] = []

    def put(self, item: PointProgress) -> None:
        self.items.append(item)

    def take(self) -> list[PointProgress]:
        items, self.items = self.items, []
        return items


def _ray_point(job: _Job, sink: Any) -> dict[str, Any]:
    """The body of a point's Ray task: ``_run_point`` in the worker, its steps reported to ``sink``."""
    return asyncio.run(_run_point(job, lambda p: sink.put.remote(p)))


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """A RunError at once when nothing listens at a Ray address (``ray.init`` would retry for minutes)."""
    if not address or address == "auto":
        return
    hostport = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RunError(f"Ray address {address!r} is not HOST:PORT; use ray://HOST:10001 or HOST:6379")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RunError(
            f"nothing answers at the Ray cluster {address} ({exc.strerror or exc}); check that its head is up "
            "(`ray start --head`) and the address (ray://HOST:10001 or HOST:6379), or leave it out to start a "
            "local Ray"
        ) from exc


async def _on_ray(
    jobs: list[_Job], emit: Report, address: str | None, cpus: float, gpus: float, poll_s: float = 0.25
) -> list[dict[str, Any]]:
    """Every point as a Ray task; rows in the points' order. Starts (and stops) a local Ray if none is up."""
    try:
        import ray
        from ray import cloudpickle
    except ImportError:
        raise ImportError(
            "executor='ray' needs Ray: `pip install 'ray>=2.60,<3'` (or `pip install -e '.[ray]'`)"
        ) from None
    try:
        cloudpickle.dumps(jobs[0])
    except Exception as exc:  # whatever the pickler trips on, the fix is the same
        raise ValueError(
            "executor='ray' sends each point to a worker, so llm_factory, embedder and datacollector must be "
            f"picklable (module-level functions or plain objects, not a loaded engine or an open client): {exc}"
        ) from exc
    started = not ray.is_initialized()
    if started:
        _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise RunError(
                f"could not start or reach {where}: {exc}; check the address (ray://HOST:10001 or HOST:6379), "
                "or leave it out to start a local Ray"
            ) from exc
    elif address is not None:
        log.warning("Ray is already initialised in this process; address=%r is not used", address)
    rows: dict[int, dict[str, Any]] = {}
    pending: list[Any] = []
    try:
        sink = ray.remote(num_cpus=0)(_ProgressSink).remote()
        task = ray.remote(_ray_point).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        index = {}
        for i, job in enumerate(jobs):
            ref = task.remote(job, sink)
            index[ref] = i
            pending.append(ref)
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
            for p in ray.get(sink.take.remote()):
                if _point_index(jobs, p) not in rows:  # a late step report of a point already finished
                    emit(p)
            for ref in ready:
                i = index[ref]
                try:
                    rows[i] = ray.get(ref)
                except Exception as exc:  # the worker died (killed, out of memory): a failed row
                    job = jobs[i]
                    rows[i] = failed_row(job.point, job.hours, _ray_message(exc), job.datacollector is not None)
                _finish(jobs[i], rows[i], emit)
            if pending:
                await asyncio.sleep(poll_s)
    except BaseException:
        for ref in pending:  # an interrupted sweep: the tasks get a KeyboardInterrupt, their runs save it
            ray.cancel(ref)
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=10)
        raise
    finally:
        if started:
            ray.shutdown()
    return [rows[i] for i in range(len(jobs))]


def _point_index(jobs: list[_Job], p: PointProgress) -> int:
    return next(i for i, j in enumerate(jobs) if j.point == p.point)


def _ray_message(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()
    return f"the point's Ray task failed: {type(exc).__name__}: {first[0] if first else ''}"


# ---------------------------------------------------------------- the YAML of `simulacra sweep`


class SweepFileError(ScenarioError):
    """A sweep file that cannot be used; one ``file, line N, field: problem`` line per problem."""


class BackendSpec(BaseModel):
    """``backend:`` of a sweep file: which LLM every point uses."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["engine", "http", "replay"] = "engine"
    model: str = ""  # engine: the model file or folder ("" = the scenario's); http: the model name
    urls: list[str] = []  # http: the servers
    api_key_env: str | None = None  # http: the environment variable holding the key
    source: str = ""  # replay: the folder of an earlier sweep; each point answers from its own point there
    settings: dict[str, Any] = {}  # engine: EngineConfig fields (deterministic: true, ...); http: client options

    @model_validator(mode="after")
    def _fits_kind(self) -> BackendSpec:
        if self.kind == "http" and not self.urls:
            raise ValueError("an http backend needs urls: [http://HOST:PORT, ...] (`simulacra serve` prints one)")
        if self.kind != "http" and (self.urls or self.api_key_env):
            raise ValueError(f"urls and api_key_env go with kind: http, not kind: {self.kind}")
        if self.kind == "replay" and not self.source:
            raise ValueError("a replay backend needs source: the out folder of an earlier sweep of the same points")
        if self.kind != "replay" and self.source:
            raise ValueError(f"source goes with kind: replay, not kind: {self.kind}")
        return self

    def to_backend(self) -> Backend:
        return Backend(self.kind, self.model, self.source, dict(self.settings), list(self.urls), self.api_key_env)


class SweepSpec(BaseModel):
    """A sweep file (``simulacra sweep FILE``); relative paths in it are relative to the file's folder."""

    model_config = ConfigDict(extra="forbid")

    scenario: str | None = None  # a file or a packaged name; none: generated towns
    residents: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] | None = None
    seeds: Annotated[list[int], Field(min_length=1)] = [0]
    hours: float = Field(gt=0)
    town_seed: int = 0
    backend: BackendSpec | None = None
    out: str | None = None  # default: runs/<file name> (from where the command runs)
    executor: Literal["in-process", "ray"] = "in-process"
    address: str | None = None  # a Ray cluster (ray://HOST:10001 or HOST:6379); none: a local Ray
    cpus_per_point: float = Field(1, gt=0)
    gpus_per_point: float = Field(0, ge=0)


_SPECS: dict[tuple, type[BaseModel]] = {(): SweepSpec, ("backend",): BackendSpec}


def load_sweep_file(path: str | Path) -> SweepSpec:
    """A validated sweep file, its paths made absolute; ``SweepFileError`` with every problem located."""
    source = str(path)
    p = Path(path)
    if p.is_file() and not p.read_text(encoding="utf-8").strip():
        raise SweepFileError(source, [Issue(None, "", "the file is empty; a sweep needs at least hours: N")])
    try:
        data, lines = read_yaml(p)
    except ScenarioError as exc:
        raise SweepFileError(source, exc.issues) from None
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise SweepFileError(source, [_issue(e, lines) for e in exc.errors()]) from None
    here = p.resolve().parent
    issues = []
    if spec.scenario is not None:
        local = here / spec.scenario
        scenario = local if local.is_file() else resolve_scenario_path(spec.scenario)
        if not Path(scenario).is_file():
            issues.append(
                Issue(
                    line_for(lines, ("scenario",)),
                    "scenario",
                    f"no scenario file {spec.scenario} (next to this file, or from the current folder) and no "
                    "packaged scenario of that name (`simulacra scenario list`); fix the path or leave scenario out "
                    "to generate towns",
                )
            )
        spec.scenario = str(scenario)
    if spec.backend is not None and spec.backend.kind == "replay":
        spec.backend.source = str(here / spec.backend.source)
        if not Path(spec.backend.source).is_dir():
            issues.append(
                Issue(
                    line_for(lines, ("backend", "source")),
                    "backend.source",
                    f"no folder {spec.backend.source}; give the out folder of an earlier sweep of the same points",
                )
            )
    if spec.backend is not None and spec.backend.kind == "engine" and spec.backend.model:
        local = here / spec.backend.model
        spec.backend.model = str(local) if local.exists() else spec.backend.model
    if spec.out is not None:
        spec.out = str(here / spec.out)
    if issues:
        raise SweepFileError(source, issues)
    return spec


def _issue(err: Any, lines: dict[tuple, int]) -> Issue:
    """pydantic's error as a located sentence; an unknown key lists this file's keys, not a scenario's."""
    loc = tuple(err["loc"])
    if err["type"] != "extra_forbidden":
        return pydantic_issue(err, lines)
    model = _SPECS.get(loc[:-1], SweepSpec)
    allowed = list(model.model_fields)
    key = str(loc[-1])
    guess = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"; did you mean '{guess[0]}'?" if guess else ""
    return Issue(line_for(lines, loc), path_str(loc[:-1]), f"unknown key '{key}'{hint} (allowed: {', '.join(allowed)})")
