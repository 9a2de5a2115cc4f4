"""How long a grammar token mask costs on this machine, for the packaged SmolLM2 vocabulary (49152 ids).

For a few schemas, drives constraints with seeded random logits (masked, then argmax) to completion
and times every mask step: llguidance's bitmask alone, and the whole `apply_masks` (bitmask +
unpack + -inf fill of an fp32 logits row). Then the same for a batch of 64 requests at once.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/structured_mask.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Literal

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import llguidance.torch as llg_torch  # noqa: E402
import torch  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from simulacra.inference.engine.structured import Constraint, GrammarCompiler, _executor, apply_masks  # noqa: E402
from simulacra.inference.loader import load_tokenizer  # noqa: E402


class Plan(BaseModel):
    place: Literal["cafe", "park", "home", "library", "town hall"]
    minutes: int = Field(ge=5, le=60)


class Action(BaseModel):
    thought: str = Field(max_length=120)
    action: Literal["move", "talk", "wait", "reflect"]
    target: str | None = None
    plan: list[Plan] = Field(max_length=3)


SCHEMAS = {
    "Plan (enum + int)": Plan,
    "Action (str, list, nested)": Action,
    "choices (5 strings)": ["cafe", "cafeteria", "park", "home", "town hall"],
}


def _step(constraints: list[Constraint], logits: torch.Tensor) -> None:
    """Pick each row's best allowed token and feed it back (a finished row restarts on a fresh matcher)."""
    for i, c in enumerate(constraints):
        c.advance(int(logits[i].argmax()))


def bench_single(compiler: GrammarCompiler, schema: object, steps: int, gen: torch.Generator) -> dict[str, float]:
    """Per-step µs for one request: llguidance's bitmask alone, and the full fill_mask."""
    ll_us: list[float] = []
    full_us: list[float] = []
    V = compiler.vocab_size
    bitmask = torch.empty((1, compiler.mask_words), dtype=torch.int32)
    c = compiler.matcher(schema)
    while len(full_us) < steps:
        if c.is_done():
            c = compiler.matcher(schema)
        t0 = time.perf_counter()
        llg_torch.fill_next_token_bitmask(c.matcher, bitmask, 0)
        ll_us.append((time.perf_counter() - t0) * 1e6)
        logits = torch.randn((1, V), generator=gen)
        t0 = time.perf_counter()
        c.fill_mask(logits[0])
        full_us.append((time.perf_counter() - t0) * 1e6)
        _step([c], logits)
    return {
        "llguidance_us": statistics.median(ll_us),
        "fill_mask_us": statistics.median(full_us),
        "fill_mask_mean_us": statistics.fmean(full_us),
    }


def bench_batch(
    compiler: GrammarCompiler, schema: object, batch: int, steps: int, gen: torch.Generator
) -> tuple[float, float]:
    """Median µs of llguidance's parallel bitmask alone, and of one whole `apply_masks`, over `batch` requests."""
    V = compiler.vocab_size
    cons = [compiler.matcher(schema) for _ in range(batch)]
    for i, c in enumerate(cons):  # stagger: row i starts i % 7 tokens in
        for _ in range(i % 7):
            row = torch.randn((1, V), generator=gen)
            apply_masks([c], row)
            if not c.is_done():
                c.advance(int(row[0].argmax()))
    ll_times: list[float] = []
    times: list[float] = []
    bitmask = torch.empty((batch, compiler.mask_words), dtype=torch.int32)
    for _ in range(steps):
        cons = [c if not c.is_done() else compiler.matcher(schema) for c in cons]
        t0 = time.perf_counter()
        llg_torch.fill_next_token_bitmask_par(_executor(), [(c.matcher, k) for k, c in enumerate(cons)], bitmask)
        ll_times.append((time.perf_counter() - t0) * 1e6)
        logits = torch.randn((batch, V), generator=gen)
        times.append(apply_masks(cons, logits) * 1e6)
        _step(cons, logits)
    return statistics.median(ll_times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tok = load_tokenizer()
    t0 = time.perf_counter()
    compiler = GrammarCompiler(tok, tok.vocab_size)
    build_s = time.perf_counter() - t0
    print(f"vocab {tok.vocab_size}; llguidance tokenizer built in {build_s * 1e3:.0f} ms; {os.cpu_count()} CPUs")
    gen = torch.Generator().manual_seed(0)
    results = {}
    b = f"B={args.batch}"
    print(f"{'':28} {'':>10} {'--- one request ---':>26}   {'--- batch of ' + str(args.batch) + ' ---':>28}")
    print(
        f"{'schema':28} {'compile ms':>10} {'llg µs':>8} {'mask µs':>8} {'mean µs':>8}   "
        f"{b + ' llg µs':>12} {b + ' µs':>9} {'µs/row':>6}"
    )
    for name, schema in SCHEMAS.items():
        t0 = time.perf_counter()
        compiler.compile(schema)
        compile_ms = (time.perf_counter() - t0) * 1e3
        single = bench_single(compiler, schema, args.steps, gen)
        batch_ll_us, batch_us = bench_batch(compiler, schema, args.batch, max(args.steps // 10, 10), gen)
        results[name] = {
            "compile_ms": compile_ms,
            **single,
            f"batch{args.batch}_llguidance_us": batch_ll_us,
            f"batch{args.batch}_us": batch_us,
        }
        print(
            f"{name:28} {compile_ms:10.1f} {single['llguidance_us']:8.0f} {single['fill_mask_us']:8.0f} "
            f"{single['fill_mask_mean_us']:8.0f}   {batch_ll_us:12.0f} {batch_us:9.0f} {batch_us / args.batch:6.0f}"
        )
    print("llg = llguidance's bitmask alone; mask = the whole fill_mask / apply_masks (bitmask + -inf bias added")
    print("to fp32 logits); medians per step, torch on 1 thread, llguidance's pool sized to the CPUs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"vocab_size": tok.vocab_size, "cpus": os.cpu_count(), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
