"""Engine speed of a moefied model at each K beside the dense model, in one run (issue 19, point 4).

For the dense packaged model and the MoE (`--moe`, e.g. `make moefy`'s GGUF) at every K of `--ks`
(the router's top-k is changed in place; speed does not depend on the expert weights' scale), with
the expert kernels (`model.MOE_KERNELS`), through the engine:

  prefill tok/s   B prompts of `--npp` random tokens, one new token each;
  decode tok/s    the same B prompts with `--ntg` new tokens: (B * (ntg - 1)) / (that time - prefill time);
  moe share       share of the decode run's model time spent inside the MoE layers (router, top-k,
                  experts, combine), timed by forward hooks on every layer's FFN (dense: the MLPs).

B is 1, 8 and 64 by default. The MoE is measured with its GGUF experts kept quantised (as `simulacra
run` loads it) and, with `--float-experts`, also decoded to float. Timings are the best of `--repeats`
runs (the machine is shared). Writes bench/out/moefy_speed.json and .md.

    python bench/moefy_speed.py --moe build/moefy/smollm2-e8k6.gguf
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import time
from pathlib import Path

import torch

from simulacra.inference import model as model_module
from simulacra.inference.engine import Engine, EngineConfig
from simulacra.inference.loader import LoadedModel, load_model

ROOT = Path(__file__).resolve().parent.parent


class FfnTimer:
    """Seconds spent inside every layer's FFN and inside the whole model, via forward hooks."""

    def __init__(self, lm: LoadedModel) -> None:
        self.ffn_s = self.model_s = 0.0
        self._t: dict[int, float] = {}
        self._handles = []
        for block in lm.model.layers:
            self._handles.append(block.ffn.register_forward_pre_hook(self._start))
            self._handles.append(block.ffn.register_forward_hook(self._stop_ffn))
        self._handles.append(lm.model.register_forward_pre_hook(self._start))
        self._handles.append(lm.model.register_forward_hook(self._stop_model))

    def _start(self, module, _args) -> None:  # noqa: ANN001
        self._t[id(module)] = time.perf_counter()

    def _stop_ffn(self, module, _args, _out) -> None:  # noqa: ANN001
        self.ffn_s += time.perf_counter() - self._t[id(module)]

    def _stop_model(self, module, _args, _out) -> None:  # noqa: ANN001
        self.model_s += time.perf_counter() - self._t[id(module)]

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def prompts(b: int, npp: int, vocab: int) -> list[list[int]]:
    rng = random.Random(b)
    return [[rng.randrange(1000, vocab) for _ in range(npp)] for _ in range(b)]


def measure(lm: LoadedModel, b: int, npp: int, ntg: int, repeats: int) -> dict:
    batch = prompts(b, npp, lm.model.cfg.vocab_size)

    async def once(new_tokens: int) -> float:
        engine = Engine(lm, EngineConfig(kv_cache_gb=2.0, max_batched_tokens=4096, max_num_seqs=max(b, 1)))
        t0 = time.perf_counter()
        await asyncio.gather(*(engine.generate(p, max_tokens=new_tokens, ignore_eos=True) for p in batch))
        seconds = time.perf_counter() - t0
        await engine.aclose()
        return seconds

    asyncio.run(once(2))  # warm-up: kernel compilation, allocator, packed weights
    first = min(asyncio.run(once(1)) for _ in range(repeats))
    full = min(asyncio.run(once(ntg)) for _ in range(repeats))
    timer = FfnTimer(lm)
    try:
        asyncio.run(once(ntg))
    finally:
        timer.close()
    return {
        "batch": b,
        "prefill_tok_s": b * npp / first,
        "decode_tok_s": b * (ntg - 1) / (full - first) if full > first else float("nan"),
        "ffn_share": timer.ffn_s / max(timer.model_s, 1e-9),
    }


def set_k(lm: LoadedModel, k: int) -> None:
    lm.model.cfg.n_experts_per_tok = k
    for block in lm.model.layers:
        block.ffn.k = k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moe", required=True, nargs="+", help="moefied model(s), GGUF or folder")
    ap.add_argument("--dense", default=None, help="the dense model (default: the packaged SmolLM2)")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 4, 6])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--npp", type=int, default=128)
    ap.add_argument("--ntg", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--float-experts", action="store_true", help="also measure the MoE with float experts")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "moefy_speed"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(args.threads)
    model_module.MOE_KERNELS = True

    rows = []

    def run(name: str, lm: LoadedModel, k: int | None) -> None:
        for b in args.batches:
            row = {"model": name, "top_k": k, **measure(lm, b, args.npp, args.ntg, args.repeats)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    run("dense", load_model(args.dense), None)
    modes = [True, False] if args.float_experts else [True]
    for path in args.moe:
        for quantised in modes:
            lm = load_model(path, quantized_experts=quantised)
            kind = lm.info.expert_quantization or f"float experts, {str(lm.model.dtype).removeprefix('torch.')}"
            for k in args.ks:
                set_k(lm, k)
                run(f"moe {Path(path).name} ({kind})", lm, k)
    out = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "moe": args.moe,
        "npp": args.npp,
        "ntg": args.ntg,
        "threads": args.threads,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2))
    lines = [
        f"# moefy speed ({out['date']}; prompts of {args.npp} tokens, {args.ntg} new, {args.threads} threads)",
        "",
        "| model | K | batch | prefill tok/s | decode tok/s | FFN/MoE share of model time |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['top_k'] or '-'} | {r['batch']} | {r['prefill_tok_s']:.0f} | "
            f"{r['decode_tok_s']:.1f} | {r['ffn_share']:.0%} |"
        )
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
