"""Where an engine step's time goes (issue 14, point 1): a per-step breakdown at several batch sizes.

Runs the real engine on the packaged model with `llama-batched-bench`'s shape (B requests, 256
random prompt tokens, 64 new tokens each) and times, on the engine's worker thread, each part of
every step with `perf_counter` wrappers (no profiler, so no per-op overhead is added):

  matmul            every `model.Linear` call (projections, MLP, lm_head)
  attention         `PagedKV.attend`: K/V written into the cache + the attention kernel
  norms             `RMSNorm`
  rope              `apply_rope` (q and k rotations)
  other forward     the rest of `Transformer.forward`: embeddings, cos/sin, residual adds, SwiGLU's
                    activation, dtype casts, and the Python of the layer loop
  step preparation  `ModelRunner.run` outside the forward: token/position tensors, `PagedKV.prepare`
  sampling          `Engine._sample` outside the grammar masks
  masks             grammar masks (`structured.apply_masks`; 0 here: unconstrained requests)
  scheduler         the rest of `Engine.step`: scheduling, block bookkeeping, counters
  between steps     worker-loop wall time outside `Engine.step` (inbox, wake-ups, futures)

Decode steps (every chunk one token) and prefill steps are reported apart. Writes bench/out/step_profile.json
and prints a markdown table; `--label` names the column (e.g. "before", "after").
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from machine import describe  # bench/machine.py: scripts run with bench/ on sys.path

from simulacra.inference import model as model_mod
from simulacra.inference.engine import Engine, EngineConfig, structured
from simulacra.inference.engine.paged_kv import PagedKV
from simulacra.inference.engine.runner import ModelRunner
from simulacra.inference.loader import load_model

ROOT = Path(__file__).resolve().parent.parent
PARTS = ["matmul", "attention", "norms", "rope", "other forward", "step preparation", "sampling", "masks",
         "scheduler", "between steps"]


class Timers:
    """Seconds per part for the current step; `close_step` files them under decode or prefill."""

    def __init__(self) -> None:
        self.now: dict[str, float] = defaultdict(float)
        self.steps: dict[str, list[dict[str, float]]] = {"decode": [], "prefill": []}
        self.last_end: float | None = None
        self.kind = "decode"

    def wrap(self, owner: object, name: str, part: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.now[part] += time.perf_counter() - t0

        setattr(owner, name, timed)

    def close_step(self, start: float, end: float) -> None:
        n = self.now
        forward = n.pop("forward", 0.0)
        run = n.pop("run", 0.0)
        sample = n.pop("sample", 0.0)
        n["other forward"] = forward - n["matmul"] - n["attention"] - n["norms"] - n["rope"]
        n["step preparation"] = run - forward
        n["sampling"] = sample - n["masks"]
        n["scheduler"] = (end - start) - run - sample
        n["between steps"] = start - self.last_end if self.last_end is not None else 0.0
        self.steps[self.kind].append({p: n.get(p, 0.0) for p in PARTS})
        self.now, self.last_end = defaultdict(float), end


@contextmanager
def instrumented(engine: Engine, timers: Timers):
    """Patch the classes' methods for the run, restore them after."""
    targets = [
        (model_mod.Linear, "forward", "matmul"),
        (PagedKV, "attend", "attention"),
        (model_mod.RMSNorm, "forward", "norms"),
        (model_mod, "apply_rope", "rope"),
        (model_mod.Transformer, "forward", "forward"),
        (ModelRunner, "run", "run"),
        (Engine, "_sample", "sample"),
        (structured, "apply_masks", "masks"),
    ]
    saved = [(o, n, getattr(o, n)) for o, n, _ in targets]
    for owner, name, part in targets:
        timers.wrap(owner, name, part)
    step, schedule = engine.step, engine.scheduler.schedule

    def classified_schedule():
        chunks = schedule()
        timers.kind = "decode" if all(c.num_tokens == 1 for c in chunks) else "prefill"
        return chunks

    def timed_step() -> None:
        t0 = time.perf_counter()
        step()
        timers.close_step(t0, time.perf_counter())

    engine.step, engine.scheduler.schedule = timed_step, classified_schedule
    try:
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
        del engine.step, engine.scheduler.schedule


def profile_batch(lm, b: int, npp: int, ntg: int, deterministic: bool) -> dict:
    rng = random.Random(b)
    prompts = [[rng.randrange(1000, lm.model.cfg.vocab_size) for _ in range(npp)] for _ in range(b)]
    engine = Engine(lm, EngineConfig(kv_cache_gb=3.0, max_batched_tokens=4096, max_num_seqs=max(b, 1),
                                     deterministic=deterministic))
    timers = Timers()

    async def go() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(engine.generate(p, max_tokens=ntg, ignore_eos=True) for p in prompts))
        return time.perf_counter() - t0

    asyncio.run(engine.generate(prompts[0][:16], max_tokens=2))  # warm-up: numba, oneDNN primitives
    with instrumented(engine, timers):
        wall = asyncio.run(go())
    asyncio.run(engine.aclose())
    out = {"batch": b, "wall_s": wall}
    for kind, steps in timers.steps.items():
        steps = steps[1:] if kind == "decode" else steps  # the first decode step follows the prefill's
        if steps:
            out[kind] = {p: sum(s[p] for s in steps) / len(steps) * 1000 for p in PARTS}
            out[kind]["steps"] = len(steps)
    return out


def table(results: list[dict], kind: str) -> str:
    head = "| part (ms per step) | " + " | ".join(f"batch {r['batch']}" for r in results) + " |"
    rows = [head, "|---|" + "---:|" * len(results)]
    for p in PARTS:
        cells = [f"{r[kind][p]:.1f} ({r[kind][p] / sum(r[kind][q] for q in PARTS):.0%})" for r in results]
        rows.append(f"| {p} | " + " | ".join(cells) + " |")
    totals = [sum(r[kind][q] for q in PARTS) for r in results]
    rows.append("| **step** | " + " | ".join(f"**{t:.1f}**" for t in totals) + " |")
    if kind == "decode":
        rows.append("| decode tok/s | " + " | ".join(f"{r['batch'] * 1000 / t:,.0f}" for r, t in
                                                    zip(results, totals, strict=True)) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--npp", type=int, default=256)
    ap.add_argument("--ntg", type=int, default=64)
    ap.add_argument("--deterministic", action="store_true")
    ap.add_argument("--label", default="now")
    args = ap.parse_args()
    lm = load_model()
    results = [profile_batch(lm, b, args.npp, args.ntg, args.deterministic) for b in args.batch]
    meta = {"date": datetime.date.today().isoformat(), "machine": describe(), "dtype": str(lm.model.dtype),
            "label": args.label, "npp": args.npp, "ntg": args.ntg, "deterministic": args.deterministic}
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"step_profile-{args.label}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"{args.label}: {meta['machine']}, {meta['dtype']}, npp {args.npp}, ntg {args.ntg}")
    print("\nDecode steps\n\n" + table(results, "decode"))
    print("\nPrefill steps (chunks of up to 4,096 tokens)\n\n" + table(results, "prefill"))


if __name__ == "__main__":
    main()
