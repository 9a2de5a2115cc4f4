"""A durable run: a ``Simulation`` whose every step is committed to ``run.db`` and can be resumed or replayed.

A run directory holds ``run.db``, ``scenario.yaml`` (the scenario as run) and ``meta.json`` (seed,
model and its hash, backend, engine settings, versions); a run started with ``db`` (``--db postgresql://...``)
keeps its rows in that database instead, and its ``meta.json`` says where. ``Run.create`` starts one, ``Run.open``
continues one from its last committed step, ``replay`` re-executes one from its recorded LLM calls
(no model needed) and reports whether the events come out identical.

A process that writes a run holds its ``RunLock`` (``run.lock``) from ``create`` / ``arun`` until
``aclose``; a second one is told who holds it. ``continue_from`` continues a damaged run from its
last good step in a new directory (``simulacra resume RUN --from-step N``).

``afork`` (``simulacra fork``) makes a counterfactual: a new run whose steps up to the fork step are
re-executed from the parent's recorded calls (so the state in memory is exactly the parent's, which a
copy of the database cannot give: memories' last-retrieved times are not kept per step), checked to
log the parent's events, then changed by interventions (``simulacra.interventions``) and continued.
A fork's settings carry its lineage (each fork step and its interventions), so ``replay`` re-applies
them at the same steps, and its first scenario is kept as ``scenario.origin.yaml``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import json
import platform
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, is_dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError, OperationalError

import simulacra
from simulacra.agents import MindConfig, RetrievalWeights
from simulacra.agents.society import TextEmbedder
from simulacra.backend import Backend, make_llm
from simulacra.inference.backends.recording import CallRecord, RecordingLLM, ReplayLLM, ReplayMissError
from simulacra.inference.port import LLM
from simulacra.scenario import Scenario, dump_scenario, load_scenario
from simulacra.simulation import Simulation, mind_config
from simulacra.storage import (
    RunError,
    RunLock,
    RunStore,
    StepData,
    damaged,
    fork_run,
    holds_run,
    read_only,
    require_run_dir,
)

if TYPE_CHECKING:
    from simulacra.interventions import Intervention

ORIGIN_NAME = "scenario.origin.yaml"  # a fork's first scenario (its scenario.yaml is the town after its edits)


@dataclass
class Progress:
    """What the progress display shows after each step."""

    step: int
    steps_target: int
    sim_time: datetime
    step_s: float
    steps_per_s: float
    calls: int
    tokens_per_s: float
    batch: float
    hit_rate: float
    eta_s: float


@dataclass
class ReplayReport:
    identical: bool
    steps: int
    events: int
    first_difference: dict[str, Any] | None = None
    run_dir: Path | None = None


def file_sha256(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        return ""
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unique_dir(root: Path, name: str, seed: int) -> Path:
    return _free_path(root / f"{name}-{datetime.now():%Y%m%d-%H%M%S}-s{seed}")


def _free_path(base: Path) -> Path:
    """`base`, or `base-2`, `base-3`, … whichever does not exist yet."""
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "run"


class Run:
    """A simulation tied to its run directory."""

    def __init__(
        self,
        sim: Simulation,
        store: RunStore,
        records: list[CallRecord],
        llm: LLM,
        target: int,
        lock: RunLock | None = None,
    ) -> None:
        self.sim = sim
        self.store = store
        self.lock = lock or RunLock(store.dir)  # held while this process writes the run
        self.records = records
        self.llm = llm  # the backend itself (closed by ``aclose``)
        self.steps_target = target
        self._servers: list[dict[str, Any]] | None = None  # the remote servers' capabilities last written to meta.json
        self.wall_s = 0.0
        self.first_metrics: dict[str, float] = {}

    @property
    def dir(self) -> Path:
        return self.store.dir

    @classmethod
    def create(
        cls,
        scenario_path: str | Path,
        *,
        out: str | Path = "runs",
        seed: int | None = None,
        hours: float | None = None,
        backend: Backend | None = None,
        llm: LLM | None = None,
        embedder: TextEmbedder | None = None,
        config: MindConfig | None = None,
        run_dir: str | Path | None = None,
        db: str | None = None,
    ) -> Run:
        """Start a run: a fresh run directory with step 0 committed. ``llm`` overrides ``backend``. ``db``: a
        PostgreSQL URL to keep the rows in, shared with other runs and workers (default: ``RUN/run.db``)."""
        scenario = load_scenario(scenario_path)
        d = scenario.definition
        seed = d.simulation.seed if seed is None else int(seed)
        if llm is not None:
            backend = backend or Backend("custom")  # a caller's LLM object: resume needs the same object
        else:
            backend = backend or Backend("engine", d.model.path or "")
        target = scenario.max_steps if hours is None else scenario.clock.steps_in(hours)
        path = Path(run_dir) if run_dir else _unique_dir(Path(out), _slug(d.name), seed)
        if holds_run(path):
            raise RunError(f"{path} already holds a run; resume it with `simulacra resume {path}`")
        made = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create the run directory {path}: {exc.strerror}") from exc
        lock = RunLock(path).acquire()  # before anything is written: two creates of one directory collide here
        try:
            if holds_run(path):
                raise RunError(f"{path} already holds a run; resume it with `simulacra resume {path}`")
            config = config or mind_config(scenario, seed)
            llm = llm or make_llm(backend)
            if backend.kind == "http" and not backend.model:  # the server's model, named, so a resume asks for it
                backend = replace(backend, model=str(getattr(llm, "model", "")))
            model_path = _model_path(llm, backend)
            model_sha256 = file_sha256(model_path) if model_path and backend.kind != "http" else ""
            settings = {
                "backend": asdict(backend),
                "engine": _engine_settings(llm),
                "mind": _config_json(config),
                "hours": hours,
                "versions": _versions(),
                "argv": sys.argv,
            }
            meta = {"scenario": d.name, "seed": seed, "model": model_path, "model_sha256": model_sha256, **settings}
            try:
                store = RunStore(path, create=True, db=db)
                meta |= {"db": store.pointer} if store.shared else {}  # where the rows are (no password)
                shutil.copyfile(scenario_path, path / "scenario.yaml")
                store.start(
                    scenario=d.name,
                    seed=seed,
                    model=model_path,
                    model_sha256=model_sha256,
                    settings=settings,
                    steps_target=target,
                )
                (path / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
            except (OSError, OperationalError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else exc.orig
                hint = "Check that the database server is up" if db else "Free disk space"
                raise RunError(
                    f"could not start the run in {path}: {why}. {hint}, delete {path} and start again"
                ) from exc
            records: list[CallRecord] = []
            sim = Simulation(scenario, RecordingLLM(llm, records.append), embedder, seed=seed, config=config)
            run = cls(sim, store, records, llm, target, lock)
            run._commit(0.0)  # step 0: the starting state, seed memories, the first frame
        except BaseException:
            lock.release()
            if made and not holds_run(path):  # nothing was started: leave no directory behind
                shutil.rmtree(path, ignore_errors=True)
            raise
        return run

    @classmethod
    def open(
        cls,
        run_dir: str | Path,
        *,
        llm: LLM | None = None,
        embedder: TextEmbedder | None = None,
        lock: bool = False,
        urls: list[str] | None = None,
        probe: bool = True,
        db: str | None = None,
    ) -> Run:
        """Continue a run from its last committed step (resume, interview, view).

        ``lock``: take the run's lock now (a resume: fail at once, before a model loads, if another
        process runs it, and check the whole database before writing to it); otherwise ``arun``
        takes it before the first write. ``urls``: a remote run's servers from now on (moved or
        replaced), recorded as its backend's for the next resume; needs ``lock``. ``probe=False``: do not
        check a remote run's servers now (the viewer opens a run whose servers are gone). ``db``: reach the run's
        database with this URL instead of the one ``meta.json`` records (a password, a moved server)."""
        require_run_dir(run_dir)
        held = RunLock(run_dir).acquire() if lock else None
        store: RunStore | None = None
        try:
            store = RunStore(run_dir, lock=held, db=db)
            info = store.info()
            settings = json.loads(info.settings)
            scenario = load_scenario(Path(run_dir) / "scenario.yaml")
            last = store.last_step()
            if last is None:
                raise RunError(
                    f"{store.where}: no step was ever committed (the run was stopped while starting); nothing can be "
                    f"resumed: delete {store.dir} and start the run again"
                )
            try:
                state = json.loads(last.state)
            except ValueError as exc:
                raise damaged(
                    store.dir, f"the saved state of step {last.step} (the last) does not parse ({exc})"
                ) from exc
            backend = Backend(**settings["backend"])
            if urls:
                if backend.kind != "http" or held is None:
                    raise RunError(
                        f"--llm-url replaces the servers of a remote run being resumed; {store.dir} used a "
                        f"{backend.kind!r} backend"
                    )
                backend = replace(backend, urls=list(urls))
            llm = llm or make_llm(backend, after_step=last.step, probe=probe)
            if urls:
                settings["backend"] = asdict(backend)
                store.set_settings(settings)
            config = _config_from_json(settings["mind"])
            records: list[CallRecord] = []
            sim = Simulation(scenario, RecordingLLM(llm, records.append), embedder, seed=info.seed, config=config)
            try:
                sim.load_state_dict(state)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise damaged(
                    store.dir, f"the saved state of step {last.step} (the last) does not fit this town ({exc!r:.200})"
                ) from exc
            store.load_memories(sim.society.memories)
            run = cls(sim, store, records, llm, info.steps_target, held)
            run.wall_s = store.wall_s()
            first = store.metrics()
            run.first_metrics = {k: v[0][1] for k, v in first.items() if v}
            if urls:
                run._write_meta(backend=settings["backend"])
        except BaseException:
            if store is not None:
                store.close()
            if held is not None:
                held.release()
            raise
        return run

    @classmethod
    def continue_from(
        cls,
        run_dir: str | Path,
        step: int,
        out: str | Path | None = None,
        *,
        llm: LLM | None = None,
        embedder: TextEmbedder | None = None,
        urls: list[str] | None = None,
        db: str | None = None,
    ) -> Run:
        """Copy ``run_dir``'s steps up to ``step`` into a new run directory (``out``, default ``RUN-from-step-N``)
        and open that, locked, to continue (``urls``, ``db``: as for ``open``). ``run_dir`` is only read (through a
        temporary copy); a run in a shared database is continued there."""
        src = Path(run_dir)
        require_run_dir(src)
        dest = Path(out) if out else _free_path(src.with_name(f"{src.name}-from-step-{step}"))
        made = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        lock = RunLock(dest).acquire()
        try:
            fork_run(src, dest, step, db=db)
        except BaseException:
            lock.release()
            if made:
                shutil.rmtree(dest, ignore_errors=True)
            raise
        lock.release()
        return cls.open(dest, llm=llm, embedder=embedder, lock=True, urls=urls)

    @classmethod
    async def afork(
        cls,
        run_dir: str | Path,
        at: int | datetime | str,
        interventions: list[Intervention | dict] = (),  # type: ignore[assignment]
        out: str | Path | None = None,
        *,
        llm: LLM | None = None,
        embedder: TextEmbedder | None = None,
    ) -> Run:
        """A counterfactual of ``run_dir`` from step (or simulated time) ``at``: a new run directory (``out``,
        default ``RUN-fork-N``) whose steps up to ``at`` are the parent's, re-executed from its recorded calls,
        then changed by ``interventions`` and left open, locked, to continue (``arun``). The parent is only
        read, through a temporary copy. Everything is validated before the directory is made, and a fork that
        fails half-way is removed. ``llm``: the backend to continue with (default: the parent's, rebuilt)."""
        from simulacra import interventions as iv

        src = Path(run_dir)
        with read_only(src) as parent:
            info = parent.info()
            settings = json.loads(info.settings)
            db = parent.db_url  # a fork of a run in a shared database goes there too
            origin = load_scenario(_origin_path(src))
            step = _fork_step(at, origin, info.steps_done, src)
            calls, events = parent.calls(up_to=step), [e for e in parent.events() if e["step"] <= step]
        lineage = _lineage(settings)
        forks = [f for f in lineage["forks"] if f["step"] <= step]
        parsed = [
            x if isinstance(x, iv.Intervention) else iv.parse_one(x, "interventions", loc=(i,))
            for i, x in enumerate(interventions)
        ]
        iv.check(parsed, iv.scenario_at(origin, forks), step)
        dest = Path(out) if out else _free_path(src.with_name(f"{src.name}-fork-{step}"))
        if dest.exists() and any(dest.iterdir()):
            raise RunError(f"{dest} already exists and is not empty; choose another directory with --out")
        backend, llm = _continuation(settings, parsed, llm, step)
        try:
            run = cls.create(
                _origin_path(src),
                seed=info.seed,
                hours=origin.clock.hours_of(info.steps_target),
                llm=ReplayLLM(calls),
                embedder=embedder,
                config=_config_from_json(lineage["origin_mind"]),
                run_dir=dest,
                db=db,
            )
        except BaseException:
            await llm.aclose()
            raise
        try:
            try:
                await run._advance(forks, step)
            except ReplayMissError as exc:
                raise RunError(
                    f"{src}: its steps up to {step} cannot be re-executed from its recorded calls ({exc}); was it "
                    "made with another embedder (the command line uses the packaged one) or an older simulacra?"
                ) from exc
            _same_events(events, run.store.events(), src, step)
            await run._intervene(parsed, {"parent": str(src), "step": step})
            await run._use_llm(llm, backend)
            run._write_meta(fork={"parent": str(src), "step": step, "interventions": [i.to_json() for i in parsed]})
            run.store.set_status("paused", f"forked from {src} at step {step}")
        except BaseException:
            await llm.aclose()
            store = run.store
            await run.aclose()
            store.delete_rows()  # in a shared database: the half-made fork's rows
            shutil.rmtree(dest, ignore_errors=True)
            raise
        return run

    @classmethod
    def fork(cls, run_dir: str | Path, at: int | datetime | str, interventions: list = (), **kw: Any) -> Run:  # type: ignore[assignment]
        """``afork`` for scripts without a running event loop."""
        return asyncio.run(cls.afork(run_dir, at, interventions, **kw))

    async def _advance(self, forks: list[dict], until: int) -> None:
        """Step to ``until``, applying each lineage fork's interventions at its step (a fork's or replay's past)."""
        from simulacra.interventions import parse_interventions

        for f in sorted(forks, key=lambda f: f["step"]):
            await self.arun(steps=f["step"] - self.sim.town.steps)
            await self._intervene(parse_interventions(f["interventions"], f"the fork of {f['parent']}"), f)
        await self.arun(steps=until - self.sim.town.steps)

    async def _intervene(self, interventions: list[Intervention], note: dict) -> None:
        """Apply interventions at the last saved step and save that step again as the changed town; record
        them in the lineage, and the edited scenario and mind settings for ``resume``."""
        from simulacra.interventions import apply, new_model

        before = self.sim.scenario
        self.sim, events = apply(self.sim, interventions)
        sim = self.sim
        data = StepData(
            step=sim.town.steps,
            sim_time=sim.town.now,
            wall_s=0.0,
            frame=sim.frame(_frame_stats(self.llm.stats() if hasattr(self.llm, "stats") else {})),
            state=sim.state_dict(),
            events=events,
            calls=[],
            metrics=sim.step_metrics(),
        )
        self.store.rewrite_last_step(data, sim.society.memories)
        settings = json.loads(self.store.info().settings)
        lineage = _lineage(settings)
        lineage["forks"].append(
            {"parent": note["parent"], "step": note["step"], "interventions": [i.to_json() for i in interventions]}
        )
        settings.update(lineage=lineage, mind=_config_json(sim.society.config))
        model = new_model(interventions)
        if model:
            settings["backend"]["model"] = model
        self.store.set_settings(settings)
        if sim.scenario is not before:
            self._write_scenario(sim.scenario)
        self._write_meta(lineage=lineage["forks"], mind=settings["mind"], backend=settings["backend"])

    def _write_scenario(self, scenario: Scenario) -> None:
        if not (self.dir / ORIGIN_NAME).exists():
            shutil.copyfile(self.dir / "scenario.yaml", self.dir / ORIGIN_NAME)
        dump_scenario(scenario.definition.model_dump(mode="json"), self.dir / "scenario.yaml")

    async def _use_llm(self, llm: LLM, backend: Backend) -> None:
        """Continue with ``llm`` (after a fork's replayed steps), recorded as the run's backend for ``resume``."""
        old, self.llm = self.llm, llm
        self.sim.llm.inner = llm  # type: ignore[attr-defined]  # the RecordingLLM every mind calls
        await old.aclose()
        settings = json.loads(self.store.info().settings)
        settings.update(backend=asdict(backend), engine=_engine_settings(llm))
        self.store.set_settings(settings)
        self._write_meta(backend=settings["backend"], engine=settings["engine"], model=_model_path(llm, backend))

    def _write_meta(self, **fields: Any) -> None:
        path = self.dir / "meta.json"
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            meta = {}
        path.write_text(json.dumps({**meta, **fields}, indent=1, default=str))

    def _commit(self, wall_s: float) -> None:
        sim = self.sim
        stats = self.llm.stats() if hasattr(self.llm, "stats") else {}
        metrics = sim.step_metrics()
        if sim.town.steps == 0:
            self.first_metrics = dict(metrics)
        data = StepData(
            step=sim.town.steps,
            sim_time=sim.town.now,
            wall_s=wall_s,
            frame=sim.frame(_frame_stats(stats)),
            state=sim.state_dict(),
            events=sim.society.take_events(),
            calls=list(self.records),
            metrics=metrics,
        )
        try:
            self.store.commit_step(data, sim.society.memories)
        except IntegrityError as exc:  # commit_step checks the step first; this is the database's own guard
            raise RunError(
                f"could not write step {data.step} to {self.store.where}: it is already there ({exc.orig}); the state "
                f"in memory is stale. Nothing was written; resume with `simulacra resume {self.dir}`"
            ) from exc
        except OperationalError as exc:
            if data.step == 0:
                hint = self.store.write_hint
                raise RunError(
                    f"could not write step 0 to {self.store.where}: {exc.orig}. The run has no saved step; "
                    f"{hint[0].lower()}{hint[1:]}, delete {self.dir} and start it again"
                ) from exc
            raise RunError(
                f"could not write step {data.step} to {self.store.where}: {exc.orig}. Nothing of that step was kept; "
                f"steps up to {data.step - 1} are saved. {self.store.write_hint} and continue with "
                f"`simulacra resume {self.dir}`"
            ) from exc
        self.records.clear()

    async def step(self) -> float:
        t0 = time.perf_counter()
        await self.sim.astep()
        wall = time.perf_counter() - t0
        self._commit(wall)
        self.wall_s += wall
        self._note_servers()
        return wall

    def _note_servers(self) -> None:
        """Record in meta.json what each remote server's dialect took or left out, when that changes
        (the dialect is detected at the first request; a skipped field is counted as it is met)."""
        capabilities = getattr(self.llm, "capabilities", None)
        if capabilities is None:
            return
        servers = capabilities()
        servers = servers if isinstance(servers, list) else [{"server": getattr(self.llm, "base_url", ""), **servers}]
        if servers != self._servers:
            self._servers = servers
            self._write_meta(servers=servers)

    async def arun(
        self,
        steps: int | None = None,
        on_step: Callable[[Progress], None] | None = None,
        between: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Step until the target (or ``steps`` more); status and message say how it ended.

        ``between`` is awaited after each step (the viewer's pause and speed controls)."""
        target = self.steps_target if steps is None else min(self.sim.town.steps + steps, self.steps_target)
        self._hold()
        try:
            self.store.set_status("running", "")
        except OperationalError as exc:
            raise RunError(
                f"could not write to {self.store.where}: {exc.orig}. {self.store.write_hint} and continue with "
                f"`simulacra resume {self.dir}`"
            ) from exc
        done0, t_start = self.sim.town.steps, time.perf_counter()
        try:
            while self.sim.town.steps < target:
                wall = await self.step()
                if on_step is not None:
                    on_step(self._progress(wall, done0, t_start, target))
                if between is not None:
                    await between()
        except (KeyboardInterrupt, asyncio.CancelledError):
            saved = self._saved_step()
            self._try_status(
                "interrupted",
                f"stopped during step {saved + 1}; steps up to {saved} are saved; "
                f"continue with `simulacra resume {self.dir}`",
            )
            raise
        except RunError as exc:
            self._try_status("failed", str(exc))
            raise
        except Exception as exc:
            self._try_status("failed", f"{type(exc).__name__}: {exc} (in step {self._saved_step() + 1})")
            raise
        status = "finished" if self.sim.town.steps >= self.steps_target else "paused"
        self._try_status(status, "")  # the steps are saved (the last one marked the run finished) either way

    def _hold(self) -> None:
        """Take the run's lock (once) and make sure the state in memory is the last saved step's."""
        if self.lock.held:
            return
        self.lock.acquire()
        last = self.store.last_step()
        if last is None or last.step != self.sim.town.steps:
            self.lock.release()
            raise RunError(
                f"{self.store.where}: the run has moved on to step {last.step if last else None} since it was opened "
                f"at step {self.sim.town.steps} (another process ran it); open it again to continue"
            )

    def _saved_step(self) -> int:
        """The last committed step (the town in memory may be a step further, uncommitted)."""
        last = self.store.last_step()
        return last.step if last is not None else 0

    def _try_status(self, status: str, message: str) -> None:
        try:
            self.store.set_status(status, message)
        except OperationalError:
            pass  # the disk is still full; the message is printed by the caller

    def _progress(self, wall: float, done0: int, t_start: float, target: int) -> Progress:
        stats = self.llm.stats() if hasattr(self.llm, "stats") else {}
        done = self.sim.town.steps - done0
        elapsed = time.perf_counter() - t_start
        rate = done / elapsed if elapsed > 0 else 0.0
        calls = sum(int(s["calls"]) for s in self.sim.society.call_stats().values())
        return Progress(
            step=self.sim.town.steps,
            steps_target=target,
            sim_time=self.sim.town.now,
            step_s=wall,
            steps_per_s=rate,
            calls=calls,
            tokens_per_s=float(stats.get("tokens_per_s", 0.0)),
            batch=float(stats.get("mean_batch_seqs", 0.0)),
            hit_rate=float(stats.get("cache_hit_rate", 0.0)),
            eta_s=(target - self.sim.town.steps) / rate if rate > 0 else float("nan"),
        )

    async def aclose(self) -> None:
        try:
            await self.llm.aclose()
        finally:
            self.store.close()
            self.lock.release()


def _frame_stats(stats: dict[str, float]) -> dict[str, float]:
    return {
        "tokens_per_s": round(float(stats.get("tokens_per_s", 0.0)), 1),
        "batch_size": round(float(stats.get("mean_batch_seqs", 0.0)), 2),
        "cache_hit_rate": round(float(stats.get("cache_hit_rate", 0.0)), 3),
        "llm_calls": int(stats.get("requests", 0)),
    }


def _model_path(llm: LLM, backend: Backend) -> str:
    lm = getattr(llm, "lm", None)
    path = getattr(getattr(lm, "info", None), "path", None)
    return str(path) if path else backend.model


def _engine_settings(llm: LLM) -> dict[str, Any]:
    """The local engine's configuration, compute dtype and device (what else decides its outputs)."""
    config, lm = getattr(llm, "config", None), getattr(llm, "lm", None)
    if config is None or lm is None or not is_dataclass(config):
        return {}
    out = {**asdict(config), "dtype": str(lm.model.dtype).removeprefix("torch."), "device": str(llm.device)}
    if out.get("deterministic"):
        from simulacra.inference import kernels

        out["invariant_tile"] = kernels.settings.tile  # the row tile every linear runs in
    return out


VERSIONED = ("torch", "numpy", "numba", "mesa", "llguidance", "tokenizers", "sqlmodel", "pydantic", "websockets")


def _versions() -> dict[str, str]:
    out = {"simulacra": simulacra.__version__, "python": platform.python_version()}
    for dist in VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _config_json(config: MindConfig) -> dict[str, Any]:
    return asdict(config)


def _config_from_json(d: dict[str, Any]) -> MindConfig:
    return MindConfig(**{**d, "retrieval": RetrievalWeights(**d["retrieval"])})


def _origin_path(run_dir: Path) -> Path:
    """The scenario a run's step 0 was built from (a fork's ``scenario.yaml`` is its town after the edits)."""
    origin = Path(run_dir) / ORIGIN_NAME
    return origin if origin.exists() else Path(run_dir) / "scenario.yaml"


def _lineage(settings: dict) -> dict:
    """The run's first mind settings and its forks (step, parent, interventions), oldest first."""
    lineage = settings.get("lineage") or {"origin_mind": settings["mind"], "forks": []}
    return {"origin_mind": lineage["origin_mind"], "forks": list(lineage["forks"])}


def _fork_step(at: int | datetime | str, scenario: Scenario, steps_done: int, src: Path) -> int:
    """A step number, or the first step at or after a simulated time (``2025-04-10 12:00``)."""
    clock = scenario.clock
    if isinstance(at, str) and not at.strip().isdigit():
        try:
            at = datetime.fromisoformat(at.strip())
        except ValueError:
            raise RunError(
                f"--at {at!r}: not a step or a simulated time; write a step number or e.g. "
                f"'{clock.at(steps_done):%Y-%m-%d %H:%M}'"
            ) from None
    step = clock.step_of(at) if isinstance(at, datetime) else int(at)
    if not 0 <= step <= steps_done:
        raise RunError(
            f"--at {at}: {src} has steps 0-{steps_done} ({clock.at(0):%a %Y-%m-%d %H:%M} to "
            f"{clock.at(steps_done):%a %H:%M}); fork it at one of those"
        )
    return step


def _continuation(settings: dict, interventions: list[Intervention], llm: LLM | None, step: int) -> tuple[Backend, LLM]:
    """The backend a fork goes on with after ``step``: ``llm`` if given, else the parent's (with a new model)."""
    from simulacra.interventions import new_model

    if llm is not None:
        return Backend("custom"), llm
    backend = Backend(**settings["backend"])
    model = new_model(interventions)
    if model:
        if backend.kind != "engine":
            raise RunError(
                f"the run used a {backend.kind!r} backend, so `set: {{model: ...}}` cannot take effect; fork an "
                "engine run, or pass the LLM to continue with (Run.afork(..., llm=...))"
            )
        backend = replace(backend, model=model)
    return backend, make_llm(backend, after_step=step)


def _same_events(parent: list[dict], again: list[dict], src: Path, step: int) -> None:
    """RunError unless the re-executed steps logged the parent's events (then the state is the parent's)."""
    n = next((i for i, (a, b) in enumerate(zip(parent, again, strict=False)) if a != b), None)
    if n is None and len(parent) == len(again):
        return
    n = min(len(parent), len(again)) if n is None else n
    where = (parent[n:] or again[n:])[0]["step"]
    raise RunError(
        f"{src}: its steps up to {step} do not re-execute to the same events (first difference at step {where}: "
        f"{(parent[n : n + 1] or ['nothing'])[0]} vs {(again[n : n + 1] or ['nothing'])[0]}); was it made with another "
        "embedder or an older simulacra? `simulacra replay` it to see, or fork it at an earlier step"
    )


async def replay(
    run_dir: str | Path, out: str | Path | None = None, embedder: TextEmbedder | None = None
) -> ReplayReport:
    """Re-execute a run from its recorded calls into a new run directory and compare the event logs."""
    source = RunStore(run_dir)
    info = source.info()
    original = source.events()
    target = info.steps_done
    dest = Path(out) if out else Path(run_dir) / f"replay-{datetime.now():%Y%m%d-%H%M%S}"
    lineage = _lineage(json.loads(info.settings))
    origin = _origin_path(Path(run_dir))
    run = Run.create(
        origin,
        seed=info.seed,
        hours=load_scenario(origin).clock.hours_of(target),
        backend=Backend("replay", source=str(run_dir)),
        embedder=embedder,
        config=_config_from_json(lineage["origin_mind"]),
        run_dir=dest,
    )
    try:
        await run._advance(lineage["forks"], target)  # a fork's interventions again at their steps
    finally:
        await run.aclose()
    again = RunStore(dest).events()
    first = next(
        (
            {"index": i, "original": a, "replay": b}
            for i, (a, b) in enumerate(zip(original, again, strict=False))
            if a != b
        ),
        None,
    )
    if first is None and len(original) != len(again):
        n = min(len(original), len(again))
        first = {"index": n, "original": original[n : n + 1], "replay": again[n : n + 1]}
    return ReplayReport(first is None, target, len(again), first, dest)
