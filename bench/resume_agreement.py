"""How far a killed-and-resumed run on the local engine agrees with an uninterrupted one.

    python bench/resume_agreement.py [--scenario town3] [--hours 1] [--kill-at 3] [--seed 5] [--deterministic]

Runs the scenario twice with `simulacra run` on the packaged model: once straight through, once
SIGKILLed after step `--kill-at` is committed and then `simulacra resume`d. With the replay backend
the two event logs are identical (tests/simulacra/test_run.py); with the engine, sampling is seeded
per call, so they differ only where the engine's output depends on what else shared the batch (the
resumed step's batch is not the killed one's, and its prefixes come cold). `--deterministic` runs the
engine's batch-invariant mode, where they must not differ at all. Prints per-step agreement and the
first divergence.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from simulacra.storage import RunStore

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
CLI = [sys.executable, "-m", "simulacra.cli"]


def newest(out: Path) -> Path:
    return max(out.glob("*/run.db"), key=lambda p: p.stat().st_mtime).parent


def steps_done(run_dir: Path) -> int:
    try:
        with sqlite3.connect(f"file:{run_dir / 'run.db'}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("select max(step) from step").fetchone()[0] or 0
    except sqlite3.Error:
        return 0


def main(scenario: str, hours: float, kill_at: int, seed: int, out: Path, deterministic: bool = False) -> dict:
    args = ["run", scenario, "--hours", str(hours), "--seed", str(seed), *(["--deterministic"] * deterministic)]
    subprocess.run([*CLI, *args, "--out", str(out / "straight")], env=ENV, check=True, capture_output=True)
    straight = newest(out / "straight")

    proc = subprocess.Popen([*CLI, *args, "--out", str(out / "killed")], env=ENV, stdout=subprocess.DEVNULL)
    while proc.poll() is None:
        runs = list((out / "killed").glob("*/run.db"))
        if runs and steps_done(runs[0].parent) >= kill_at:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    killed = newest(out / "killed")
    at = steps_done(killed)
    subprocess.run([*CLI, "resume", str(killed)], env=ENV, check=True, capture_output=True)

    a, b = RunStore(straight).events(), RunStore(killed).events()
    by_step: dict[int, list[int]] = {}
    for e in a:
        by_step.setdefault(e["step"], [0, 0])[1] += 1
    bset = [json.dumps(e, sort_keys=True) for e in b]
    for e in a:
        if json.dumps(e, sort_keys=True) in bset:
            by_step[e["step"]][0] += 1
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    return {
        "killed_after_step": at,
        "events_straight": len(a),
        "events_resumed": len(b),
        "identical_prefix_events": first if first is not None else min(len(a), len(b)),
        "first_divergent_step": a[first]["step"] if first is not None and first < len(a) else None,
        "agreement_by_step": {s: f"{x}/{n}" for s, (x, n) in sorted(by_step.items())},
        "events_in_common": sum(x for x, _ in by_step.values()),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="town3")
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--kill-at", type=int, default=3)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("runs/resume-agreement"))
    ap.add_argument("--deterministic", action="store_true", help="the engine's batch-invariant mode")
    a = ap.parse_args()
    print(json.dumps(main(a.scenario, a.hours, a.kill_at, a.seed, a.out, a.deterministic), indent=1))
