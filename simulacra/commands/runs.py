"""`simulacra run | resume | replay | measure | interview | export | view | runs`: experiments from the shell."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from simulacra.commands import console, fail

if TYPE_CHECKING:
    from simulacra.run import Progress as RunProgress
    from simulacra.run import Run
    from simulacra.viewer.server import ViewerServer


def run(
    scenario: str = typer.Argument(..., help="scenario file, or a packaged scenario's name (town25, town3)"),
    hours: float = typer.Option(None, min=0.01, help="simulated hours to run (default: the scenario's duration)"),
    seed: int = typer.Option(None, help="run seed (default: the scenario's)"),
    model: str = typer.Option(None, help="GGUF file or HF folder (default: the scenario's, else packaged SmolLM2)"),
    out: Path = typer.Option(Path("runs"), help="folder for run directories"),
    view: bool = typer.Option(False, "--view", help="serve the live viewer and print its URL"),
    interview: bool = typer.Option(False, "--interview", help="interview every resident at the end (paper's method)"),
    deterministic: bool = typer.Option(
        False, "--deterministic", help="batch-invariant engine: a call's tokens do not depend on its batch (slower)"
    ),
    llm_url: list[str] = typer.Option(
        None,
        "--llm-url",
        help="an OpenAI-compatible server instead of the local engine (`simulacra serve`, vLLM, ...); repeat it to "
        "spread residents over several servers (each sticks to one; a failed server's residents move)",
    ),
    llm_model: str = typer.Option(None, "--llm-model", help="with --llm-url: the model name (default: the server's)"),
    llm_timeout: float = typer.Option(
        None,
        "--llm-timeout",
        min=1,
        help="with --llm-url: seconds to wait for each answer before retrying (default 60; a slow server's "
        "longest answers need more); recorded for resume",
    ),
    api_key_env: str = typer.Option(
        None,
        "--api-key-env",
        help="with --llm-url: the environment variable holding the API key (the run records its name only)",
    ),
    db: str = typer.Option(
        None,
        "--db",
        help="keep the run's rows in this PostgreSQL database (postgresql://USER@HOST:PORT/DB), shared with other "
        "runs and workers, instead of RUN/run.db; RUN/meta.json records it without the password (give that in "
        "PGPASSWORD or ~/.pgpass)",
    ),
) -> None:
    """Run a scenario; every step is committed to RUN/run.db (or --db), so the run can be resumed, replayed, viewed."""
    from simulacra.inference.errors import ModelLoadError
    from simulacra.run import Backend, Run
    from simulacra.scenario import ScenarioError, load_scenario, resolve_scenario_path
    from simulacra.storage import RunError

    if llm_url and (model or deterministic):
        fail("--model and --deterministic choose the local engine; with --llm-url name the model with --llm-model")
    if not llm_url and (llm_model or api_key_env or llm_timeout):
        fail("--llm-model, --llm-timeout and --api-key-env go with --llm-url URL (a remote server)")
    try:
        path = resolve_scenario_path(scenario)
        d = load_scenario(path).definition
        if llm_url:
            settings = {"timeout": llm_timeout} if llm_timeout else {}
            backend = Backend(
                "http", llm_model or "", urls=list(llm_url), api_key_env=api_key_env or None, settings=settings
            )
        else:
            settings = {"deterministic": True} if deterministic else {}
            backend = Backend("engine", model or d.model.path or "", settings=settings)
        run_ = Run.create(path, out=out, seed=seed, hours=hours, backend=backend, db=db)
    except (ScenarioError, ModelLoadError, FileNotFoundError, RunError) as exc:
        fail(str(exc))
    console.print(f"run directory: {run_.dir}")
    _go(_drive(run_, view, interview))


def resume(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    hours: float = typer.Option(None, min=0.01, help="run this many more simulated hours (default: to the end)"),
    from_step: int = typer.Option(
        None, "--from-step", min=0, help="continue from this saved step in a new run directory (RUN is not changed)"
    ),
    out: Path = typer.Option(None, help="with --from-step: the new run directory (default: RUN-from-step-N)"),
    view: bool = typer.Option(False, "--view", help="serve the live viewer"),
    interview: bool = typer.Option(False, "--interview", help="interview every resident at the end"),
    llm_url: list[str] = typer.Option(
        None, "--llm-url", help="a remote run: these servers instead of the recorded ones (recorded for next time)"
    ),
    db: str = typer.Option(
        None, "--db", help="a run in a database: reach it with this URL (a password, a moved server; recorded)"
    ),
) -> None:
    """Continue a run from its last committed step (after a crash, Ctrl-C, or to run longer)."""
    from sqlalchemy.exc import OperationalError

    run_ = _open_to_resume(run_dir, from_step, out, llm_url or None, db)
    try:
        steps = None
        if hours is not None:
            steps = run_.sim.town.clock.steps_in(hours)
            run_.steps_target = max(run_.steps_target, run_.sim.town.steps + steps)
            run_.store.set_status("running", "", steps_target=run_.steps_target)
        elif run_.sim.town.steps >= run_.steps_target:
            _say_complete(run_)
            return
    except OperationalError as exc:
        asyncio.run(run_.aclose())
        fail(f"could not write to {run_.store.where}: {exc.orig}. {run_.store.write_hint} and resume again")
    console.print(f"resuming {run_.dir} at step {run_.sim.town.steps} of {run_.steps_target}")
    _go(_drive(run_, view, interview, steps))


def _open_to_resume(
    run_dir: Path, from_step: int | None, out: Path | None, urls: list[str] | None = None, db: str | None = None
) -> Run:
    """The run to continue, locked: RUN itself, or (``--from-step``) a copy of it up to that step."""
    from simulacra.run import Run
    from simulacra.storage import RunError

    try:
        if from_step is None:
            return Run.open(run_dir, lock=True, urls=urls, db=db)
        run_ = Run.continue_from(run_dir, from_step, out, urls=urls, db=db)
    except RunError as exc:
        fail(str(exc))
    console.print(f"continuing {run_dir} from step {from_step} in {run_.dir} ({run_dir} is left as it is)")
    return run_


def _say_complete(run_: Run) -> None:
    """A resume with nothing left to run: mark the run finished if only the mark was missing, and say so."""
    if run_.store.info().status != "finished":
        run_.store.set_status("finished", "")  # every step was saved; only the mark was missing
    console.print(
        f"{run_.dir} is complete (step {run_.sim.town.steps} of {run_.steps_target}); nothing to resume. "
        f"Run it longer with `simulacra resume {run_.dir} --hours N`"
    )
    asyncio.run(run_.aclose())


def replay(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    out: Path = typer.Option(None, help="where to write the replayed run (default: RUN/replay-<time>)"),
) -> None:
    """Re-execute a run from its recorded LLM calls (no model) and check the events come out identical."""
    from simulacra.inference.backends.recording import ReplayMissError
    from simulacra.run import replay as replay_run
    from simulacra.storage import RunError

    try:
        _warn(run_dir)
        report = asyncio.run(replay_run(run_dir, out))
    except RunError as exc:
        fail(str(exc))
    except ReplayMissError as exc:
        fail(f"the replay of {run_dir} departed from its recorded calls: {exc}")
    if report.identical:
        console.print(f"identical: {report.events} events over {report.steps} steps ({report.run_dir})")
    else:
        console.print(f"[red]events differ[/red] at event {report.first_difference['index']}:")
        console.print_json(data=report.first_difference)
        raise typer.Exit(code=1)


def measure(run_dir: Path = typer.Argument(..., help="a run directory")) -> None:
    """The paper's interviews on a run as it stands (facts, relationships, why invitees stayed away),
    written to RUN/interviews.json, and the measurement table (ground truth beside interviews)."""
    from simulacra.run import Run
    from simulacra.storage import RunError

    async def main() -> None:
        run_ = Run.open(run_dir)
        try:
            _summary(run_, await _interview_all(run_))
        finally:
            await run_.aclose()

    try:
        asyncio.run(main())
    except RunError as exc:
        fail(str(exc))


def interview(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    resident: str = typer.Argument(..., help="the resident's full name"),
    question: str = typer.Argument(..., help="what to ask"),
) -> None:
    """Ask a resident of a run a question; the answer comes from their memories at the run's last step."""
    from simulacra.run import Run
    from simulacra.storage import RunError

    async def main() -> str:
        run_ = Run.open(run_dir)
        try:
            names = [r.name for r in run_.sim.residents]
            if resident not in names:
                raise RunError(f"{resident!r} is not a resident of this run; residents: {', '.join(names)}")
            return await run_.sim.interview(resident, question)
        finally:
            await run_.aclose()

    try:
        console.print(asyncio.run(main()), markup=False)
    except RunError as exc:
        fail(str(exc))


def export(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    format: str = typer.Option("parquet", "--format", help="parquet or csv"),
    out: Path = typer.Option(None, help="output folder (default: RUN/export)"),
) -> None:
    """Write a run's events, memories, calls and metrics as parquet or CSV tables."""
    from sqlalchemy.exc import DatabaseError

    from simulacra.export import export_run
    from simulacra.storage import RunError, damaged

    try:
        _warn(run_dir)
        files = export_run(run_dir, format, out)
    except (RunError, ValueError) as exc:
        fail(str(exc))
    except DatabaseError as exc:
        fail(str(damaged(run_dir, f"could not read it for export ({exc.orig})")))
    for name, path in files.items():
        console.print(f"{name}: {path}")


def view(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    port: int = typer.Option(8765, help="port on 127.0.0.1"),
) -> None:
    """Open a finished (or stopped) run in the browser viewer: scrub its timeline, inspect, interview."""
    from simulacra.run import Run
    from simulacra.storage import RunError
    from simulacra.viewer_run import start_viewer

    async def main() -> None:
        run_ = Run.open(run_dir, probe=False)  # a remote run's servers are asked only if the viewer interviews
        server = await start_viewer(run_, port=port)
        console.print(f"viewer: [bold]{server.url}[/bold]  (step {run_.sim.town.steps}; Ctrl-C to quit)")
        try:
            await asyncio.Event().wait()
        finally:
            await server.close()
            await run_.aclose()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except RunError as exc:
        fail(str(exc))


def runs(
    root: Path = typer.Argument(Path("runs"), help="folder holding run directories"),
    db: str = typer.Option(None, "--db", help="list the runs in this PostgreSQL database instead (postgresql://...)"),
) -> None:
    """List runs with their status and progress."""
    from simulacra.storage import list_runs

    if db:
        _db_runs(db)
        return
    table = Table(title=f"runs in {root}")
    for c in ("run", "scenario", "seed", "status", "steps", "updated", "note"):
        table.add_column(c)
    for path, row, problem in list_runs(root):
        if row is None:
            table.add_row(path.name, "", "", "[red]unreadable[/red]", "", "", escape(problem))
        else:
            table.add_row(
                path.name,
                row.scenario,
                str(row.seed),
                row.status if not problem else f"[red]{row.status}, damaged[/red]",
                f"{row.steps_done}/{row.steps_target}",
                f"{row.updated_at:%Y-%m-%d %H:%M}",
                escape("; ".join(x for x in (row.message, problem) if x)),
            )
    console.print(table)


def _db_runs(db: str) -> None:
    """``runs --db``: every run in the database, with its key and where its run directory is."""
    from simulacra.storage import RunError, list_db_runs, mask_url

    try:
        rows = list_db_runs(db)
    except RunError as exc:
        fail(str(exc))
    table = Table(title=f"runs in {mask_url(db)}")
    for c in ("run", "directory", "scenario", "seed", "status", "steps", "updated", "note"):
        table.add_column(c)
    for row in rows:
        table.add_row(
            row.run_id,
            escape(row.dir),
            row.scenario,
            str(row.seed),
            row.status,
            f"{row.steps_done}/{row.steps_target}",
            f"{row.updated_at:%Y-%m-%d %H:%M}",
            escape(row.message),
        )
    console.print(table)


def _summary(run_: Run, interviews: dict | None = None) -> None:
    from simulacra.metrics import summary

    first = run_.first_metrics or {}
    if not first:
        return
    sim = run_.sim
    table = Table(title=f"{sim.scenario.definition.name}: step {sim.town.steps} ({sim.town.now:%a %H:%M})")
    table.add_column("measure")
    table.add_column("value")
    for k, v in summary(sim, first, run_.wall_s, interviews, run_.store).items():
        table.add_row(k, str(v))
    console.print(table)


async def _drive(run_: Run, view: bool, interview: bool, steps: int | None = None) -> None:
    """Step the run to its target with a progress bar (and the live viewer), then interview and summarise."""
    server = None
    if view:
        from simulacra.viewer_run import start_viewer

        server = await start_viewer(run_)
        console.print(f"viewer: [bold]{server.url}[/bold]")
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )
    on_step = _show_progress(bar, run_, server)
    try:
        with bar:
            between = (lambda: server.source.wait_turn(0.0)) if server is not None else None
            await run_.arun(steps, on_step, between)
        results = await _interview_all(run_) if interview else None
        _summary(run_, results)
        console.print(
            f"run directory: [bold]{run_.dir}[/bold]  (inspect: simulacra view {run_.dir}; "
            f"export: simulacra export {run_.dir})"
        )
        if server is not None:
            console.print("the viewer stays up; Ctrl-C to quit")
            await asyncio.Event().wait()
    finally:
        if server is not None:
            await server.close()
        await run_.aclose()


def _show_progress(bar: Progress, run_: Run, server: ViewerServer | None) -> Callable[[RunProgress], None]:
    """The run's ``on_step``: the bar (or, in a log file, one line per simulated hour) and the viewer's frame."""
    task = bar.add_task("sim", total=run_.steps_target, completed=run_.sim.town.steps, info="")
    per_hour = max(1, run_.sim.town.clock.steps_in(1))

    def on_step(p: RunProgress) -> None:
        eta = "?" if math.isnan(p.eta_s) else f"{p.eta_s / 60:.1f} min"
        info = (
            f"{p.steps_per_s:.2f} steps/s ({p.step_s:.1f}s last) · {p.calls} calls · {p.tokens_per_s:.0f} tok/s · "
            f"batch {p.batch:.1f} · cache {p.hit_rate:.0%} · ETA {eta}"
        )
        bar.update(task, completed=p.step, description=f"{p.sim_time:%a %H:%M}", info=info)
        if not console.is_terminal and (p.step % per_hour == 0 or p.step == p.steps_target):
            # a log file gets no live bar: one plain line per simulated hour instead
            line = f"{p.sim_time:%a %H:%M} step {p.step}/{p.steps_target} · {info}"
            console.print(line, highlight=False, soft_wrap=True)
        if server is not None:
            server.source.record()
            server.publish(p.step)

    return on_step


async def _interview_all(run_: Run) -> dict:
    """The paper's end-of-run interviews, written to RUN/interviews.json."""
    from simulacra.metrics import interview_all

    console.print("interviewing every resident …")
    results = await interview_all(run_.sim, run_.store)
    (run_.dir / "interviews.json").write_text(json.dumps(results, indent=1, ensure_ascii=False, default=list))
    return results


def _go(coro: Coroutine[Any, Any, None]) -> None:
    """Run a command's coroutine; Ctrl-C exits 130 (the last whole step is saved), a run's error exits 2."""
    from sqlalchemy.exc import DatabaseError

    from simulacra.storage import RunError

    try:
        asyncio.run(coro)
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted[/yellow]: the last whole step is saved; continue with `simulacra resume RUN`"
        )
        raise typer.Exit(code=130) from None
    except RunError as exc:
        fail(str(exc))
    except DatabaseError as exc:  # a read the run's own checks did not cover
        fail(f"run.db could not be used: {exc.orig}. Run `simulacra runs` on its folder to see what is wrong")


def _warn(run_dir: Path) -> None:
    """Print what a cheap look finds wrong with a run that is still usable (replay, export)."""
    from simulacra.storage import RunStore

    store = RunStore(run_dir)
    try:
        for problem in store.problems():
            console.print(f"[yellow]warning:[/yellow] {escape(str(store.path))}: {escape(problem)}", soft_wrap=True)
    finally:
        store.close()
