"""Kill-and-resume soak: a town3 run SIGKILLed at a random moment after its first commit, then resumed, N times.

Each trial starts a fresh replayed run of one uninterrupted town3 run (the replay backend needs no
model, so the subprocess starts fast), SIGKILLs it at a random moment (after a random committed step,
plus a random delay into the next one; one trial in four resumes and is killed again right after its
last commit), resumes it to the end, and checks: finished, every step exactly once, events,
calls and metrics per step equal to the uninterrupted run's. The test suite runs three such kills
(`tests/simulacra/test_faults.py`); this runs many, for the docs.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/kill_soak.py [--trials 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import describe  # noqa: E402 - bench/machine.py

from simulacra.run import Run  # noqa: E402
from tests.simulacra.test_faults import (  # noqa: E402
    CLI,
    ENV,
    STEPS,
    _kill_after_last_commit,
    _kill_at_step,
    _steps_done,
    assert_whole,
)
from tests.simulacra.test_run import TOWN3, chatty  # noqa: E402


def base_run(tmp: Path) -> Path:
    async def make() -> Path:
        run = Run.create(TOWN3, out=tmp, seed=7, hours=2, llm=chatty(), embedder=None)
        await run.arun()
        await run.aclose()
        return run.dir.resolve()

    return asyncio.run(make())


def trial(base: Path, dest: Path, rng: random.Random) -> str:
    at, jitter = rng.randrange(1, STEPS - 1), rng.uniform(0, 0.05)
    _kill_at_step([*CLI, "replay", str(base), "--out", str(dest)], dest, at, jitter)
    where = f"{jitter * 1000:.0f} ms after step {at} (saved: {_steps_done(dest)})"
    if rng.random() < 0.25 and _steps_done(dest) < STEPS:  # and again, once the last step is saved
        _kill_after_last_commit([*CLI, "resume", str(dest)])
        where += f", then right after the last commit (saved: {_steps_done(dest)})"
    out = subprocess.run([*CLI, "resume", str(dest)], env=ENV, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise AssertionError(f"resume failed: {out.stdout[-1500:]}{out.stderr[-1500:]}")
    assert_whole(dest, base)
    return where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        base = base_run(Path(tmp) / "base")
        clean = 0
        for i in range(args.trials):
            try:
                where = trial(base, Path(tmp) / f"trial-{i}", rng)
                clean += 1
                print(f"trial {i + 1}: killed {where}; resumed: finished, every step once, events equal", flush=True)
            except AssertionError as exc:
                print(f"trial {i + 1}: FAILED: {exc}", flush=True)
    print(
        f"\n{clean} of {args.trials} kill-and-resume trials clean ({time.time() - t0:.0f} s); "
        f"{datetime.date.today()}; {describe()}"
    )


if __name__ == "__main__":
    main()
