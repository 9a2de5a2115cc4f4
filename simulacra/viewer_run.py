"""The viewer over a durable run: live frames from the simulation, any past step from ``run.db``.

``RunSource`` is the viewer's ``TownSource`` fed by a ``Run``: speech, conversations and run
statistics come from the minds (``Simulation.frame``), details and interviews from the residents,
and a step from before this process started (a resumed or finished run) is read from the database.
"""

from __future__ import annotations

from simulacra.run import Run
from simulacra.viewer.server import ViewerServer, serve_source
from simulacra.viewer.source import TownSource
from simulacra.world import Town


class RunSource(TownSource):
    def __init__(self, run: Run) -> None:
        self.run = run
        super().__init__(
            run.sim.town,
            interview=run.sim.interview,
            details=lambda name: run.sim.resident(name).details(),
            extras=self._extras,
        )

    def _extras(self, town: Town) -> dict:
        stats = self.run.llm.stats() if hasattr(self.run.llm, "stats") else {}
        frame = self.run.sim.frame(stats)
        speech = {
            r["name"]: {k: r[k] for k in ("speech", "talking_to") if k in r}
            for r in frame["residents"]
            if "talking_to" in r
        }
        return {"conversations": frame["conversations"], "stats": frame["stats"], "speech": speech}

    def snapshot(self) -> dict:
        return {**super().snapshot(), "first_step": 0}

    def snapshot_at(self, step: int) -> dict:
        if step in self._history:
            return {**super().snapshot_at(step), "first_step": 0}
        if not 0 <= step <= self.step:
            raise KeyError(f"step {step} is not in this run; steps 0..{self.step} are")
        return {**self.run.store.frame_at(step), "map": self._map, "first_step": 0}


async def start_viewer(run: Run, host: str = "127.0.0.1", port: int = 0) -> ViewerServer:
    """Serve the viewer for a run. After each step: ``server.source.record(); server.publish()``."""
    return await serve_source(RunSource(run), host, port)
