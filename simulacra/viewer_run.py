"""The viewer over a durable run: live frames from the simulation, any past step from ``run.db``.

``RunSource`` is the viewer's ``TownSource`` fed by a ``Run``: speech, conversations and run
statistics come from the minds (``Simulation.frame``), details and interviews from the residents,
and a step from before this process started (a resumed or finished run) is read from the database.
A snapshot also carries the run's ``run`` panel: its name, its lineage (each fork's parent, step, time
and interventions) and its metric curves so far; each delta carries the step's new metric values.
"""

from __future__ import annotations

import json

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
        return {**super().snapshot(), "first_step": 0, "run": self.run_info()}

    def delta(self, since_step: int) -> dict:
        return {
            **super().delta(since_step),
            "metrics": {"step": self.step, "values": curves(self.run.sim.step_metrics())},
        }

    def run_info(self) -> dict:
        """The run panel: name, lineage (forks, oldest first) and every shown metric's ``[step, value]`` points."""
        settings = json.loads(self.run.store.info().settings)
        clock = self.run.sim.town.clock
        forks = [
            {
                "parent": str(f["parent"]),
                "step": f["step"],
                "time": clock.at(f["step"]).isoformat(),
                "interventions": [next(iter(i)) + _about(next(iter(i.values()))) for i in f["interventions"]],
            }
            for f in (settings.get("lineage") or {}).get("forks", [])
        ]
        series = curves(self.run.store.metrics())
        return {
            "name": self.run.dir.name,
            "lineage": forks,
            "metrics": {k: [list(p) for p in v] for k, v in series.items()},
        }

    def snapshot_at(self, step: int) -> dict:
        if step in self._history:
            return {**super().snapshot_at(step), "first_step": 0}
        if not 0 <= step <= self.step:
            raise KeyError(f"step {step} is not in this run; steps 0..{self.step} are")
        return {**self.run.store.frame_at(step), "map": self._map, "first_step": 0}


async def start_viewer(run: Run, host: str = "127.0.0.1", port: int = 0) -> ViewerServer:
    """Serve the viewer for a run. After each step: ``server.source.record(); server.publish()``."""
    return await serve_source(RunSource(run), host, port)


CURVES = ("known.", "present.", "density", "conversations", "llm.calls")


def curves(metrics: dict) -> dict:
    """The metrics the viewer draws as curves: facts known, attendance, density, conversations, LLM calls."""
    return {k: v for k, v in metrics.items() if k.startswith(CURVES)}


def _about(spec: dict) -> str:
    """A few words on an intervention's target (` party`, ` Ada Quill`)."""
    target = spec.get("id") or spec.get("name") or spec.get("resident") or spec.get("to")
    if isinstance(target, list):
        target = ", ".join(target)
    return f" {target}" if target else ""
