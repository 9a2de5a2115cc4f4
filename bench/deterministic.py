"""What `EngineConfig(deterministic=True)` costs: prefill and decode tok/s at several batch sizes, on and off.

`python bench/deterministic.py [--batches 1 8 64] [--npp 128] [--ntg 32] [--repeats 1]`: the packaged model
in its default dtype, random prompts of `npp` tokens, `ntg` new tokens (ignore_eos). Same method as
bench/engine.py: prefill = a run with one new token, decode = the difference to a run with `ntg`.
Prints a markdown table (with the CPU and the date) and writes it to bench/out/deterministic.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import time
from pathlib import Path

from engine import random_prompts, rates  # bench/engine.py
from machine import describe  # bench/machine.py: scripts run with bench/ on sys.path

from simulacra.inference import kernels
from simulacra.inference.engine import Engine, EngineConfig
from simulacra.inference.loader import LoadedModel, load_model

ROOT = Path(__file__).resolve().parent.parent


def measure(lm: LoadedModel, b: int, npp: int, ntg: int, repeats: int, deterministic: bool) -> dict:
    prompts = random_prompts(b, npp, lm.model.cfg.vocab_size, seed=b)

    async def once(new_tokens: int) -> float:
        config = EngineConfig(
            kv_cache_gb=2.0, max_batched_tokens=4096, max_num_seqs=max(b, 1), deterministic=deterministic
        )
        engine = Engine(lm, config)
        t0 = time.perf_counter()
        await asyncio.gather(*(engine.generate(p, max_tokens=new_tokens, ignore_eos=True) for p in prompts))
        seconds = time.perf_counter() - t0
        await engine.aclose()
        return seconds

    return rates(b, npp, ntg, lambda n: asyncio.run(once(n)), repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--npp", type=int, default=128, help="prompt tokens per request")
    ap.add_argument("--ntg", type=int, default=32, help="new tokens per request")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many runs per cell")
    ap.add_argument("--tile", type=int, default=kernels.settings.tile, help="rows per invariant linear tile")
    ap.add_argument("--out", default="deterministic.md", help="file name under bench/out/")
    args = ap.parse_args()
    kernels.settings.tile = args.tile
    lm = load_model()
    measure(lm, 2, 32, 4, 1, True)  # warm up (numba kernels, oneDNN)
    measure(lm, 2, 32, 4, 1, False)
    lines = [
        f"Deterministic mode cost, {datetime.date.today()}, {describe()}, {lm.info.path.name} "
        f"({lm.model.dtype}), prompts of {args.npp} tokens, {args.ntg} new tokens, best of {args.repeats}, "
        f"{args.tile}-row linear tiles.",
        "",
        "| batch | prefill tok/s off | prefill tok/s on | on/off | decode tok/s off | decode tok/s on | on/off |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for b in args.batches:
        off = measure(lm, b, args.npp, args.ntg, args.repeats, False)
        on = measure(lm, b, args.npp, args.ntg, args.repeats, True)
        line = (
            f"| {b} | {off['prefill_tok_s']:.0f} | {on['prefill_tok_s']:.0f} | "
            f"{on['prefill_tok_s'] / off['prefill_tok_s']:.2f} | {off['decode_tok_s']:.1f} | "
            f"{on['decode_tok_s']:.1f} | {on['decode_tok_s'] / off['decode_tok_s']:.2f} |"
        )
        lines.append(line)
        print(line, flush=True)
    out = ROOT / "bench" / "out" / args.out
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
