"""Engine benchmark (`make bench-engine`): our engine against `transformers` on the same weights, same run.

Sections:
  batched   llama-batched-bench's shape (-npp 256 -ntg 64): prefill tok/s and aggregate decode tok/s
            at several concurrencies, ours and transformers `generate` side by side;
  town      64 requests sharing a 512-token prefix with 64-token distinct tails: prefill tokens
            computed vs submitted;
  schema    64 concurrent schema-constrained requests: tok/s and mask overhead;
  variance  how often greedy output changes when only the batch around a request changes.

Writes bench/out/engine.json and replaces the engine section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import time
from pathlib import Path
from typing import Literal

import torch
from machine import describe  # bench/machine.py: scripts run with bench/ on sys.path
from pydantic import BaseModel, Field

from simulacra.inference.engine import Engine, EngineConfig
from simulacra.inference.loader import LoadedModel, load_model
from simulacra.inference.packaged import default_model_path

ROOT = Path(__file__).resolve().parent.parent


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1000, vocab) for _ in range(length)] for _ in range(n)]


def rates(b: int, npp: int, ntg: int, run, repeats: int) -> dict:
    """Prefill and decode rates from two timed runs of the same batch: one new token (prefill + 1)
    and `ntg` new tokens; decode time is their difference. The same method for both engines, best of
    `repeats` runs each, because this machine is shared and noisy."""
    first = min(run(1) for _ in range(repeats))
    full = min(run(ntg) for _ in range(repeats))
    return {
        "prefill_tok_s": b * npp / first,
        "decode_tok_s": b * (ntg - 1) / max(full - first, 1e-9),
        "prefill_s": first,
        "total_s": full,
    }


def ours_batched(lm: LoadedModel, b: int, npp: int, ntg: int, repeats: int, deterministic: bool = False) -> dict:
    prompts = random_prompts(b, npp, lm.model.cfg.vocab_size, seed=b)

    async def once(new_tokens: int) -> float:
        config = EngineConfig(
            kv_cache_gb=3.0, max_batched_tokens=4096, max_num_seqs=max(b, 1), deterministic=deterministic
        )
        engine = Engine(lm, config)
        t0 = time.perf_counter()
        await asyncio.gather(*(engine.generate(p, max_tokens=new_tokens, ignore_eos=True) for p in prompts))
        seconds = time.perf_counter() - t0
        await engine.aclose()
        return seconds

    return rates(b, npp, ntg, lambda n: asyncio.run(once(n)), repeats)


@torch.inference_mode()
def hf_batched(model, b: int, npp: int, ntg: int, vocab: int, repeats: int) -> dict:
    ids = torch.tensor(random_prompts(b, npp, vocab, seed=b))

    def once(new_tokens: int) -> float:
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0

    return rates(b, npp, ntg, once, repeats)


async def town(lm: LoadedModel) -> dict:
    engine = Engine(lm, EngineConfig(kv_cache_gb=2.0))
    prefix = random_prompts(1, 512, lm.model.cfg.vocab_size, seed=99)[0]
    tails = random_prompts(64, 64, lm.model.cfg.vocab_size, seed=100)
    t0 = time.perf_counter()
    await asyncio.gather(*(engine.generate(prefix + t, max_tokens=8, ignore_eos=True) for t in tails))
    seconds = time.perf_counter() - t0
    stats = engine.stats()
    await engine.aclose()
    return {
        "submitted_prompt_tokens": stats["prompt_tokens"],
        "computed_prefill_tokens": stats["prefill_tokens"],
        "computed_fraction": stats["prefill_tokens"] / stats["prompt_tokens"],
        "seconds": seconds,
        "cache_hit_rate": stats["cache_hit_rate"],
    }


class Plan(BaseModel):
    place: Literal["cafe", "park", "library", "home", "bakery", "town hall"]
    activity: str = Field(max_length=60)
    minutes: int = Field(ge=5, le=120)


async def schema_workload(lm: LoadedModel) -> dict:
    engine = Engine(lm, EngineConfig(kv_cache_gb=2.0))
    names = ["Ada", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana"]
    prompts = [
        [
            {"role": "system", "content": "You plan the next hour of a town resident. Answer in JSON."},
            {"role": "user", "content": f"{names[i % 8]} has a free hour on day {i}. What next?"},
        ]
        for i in range(64)
    ]
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(engine.generate(p, schema=Plan, max_tokens=64, temperature=0.7, seed=i) for i, p in enumerate(prompts))
    )
    seconds = time.perf_counter() - t0
    stats = engine.stats()
    await engine.aclose()
    valid = sum(isinstance(r.parsed, Plan) for r in results)
    return {
        "requests": 64,
        "valid": valid,
        "generated_tokens": sum(r.completion_tokens for r in results),
        "tok_s": sum(r.completion_tokens for r in results) / seconds,
        "mask_seconds": stats["mask_seconds"],
        "step_seconds": stats["step_seconds"],
        "mask_overhead": stats["mask_seconds"] / stats["step_seconds"],
    }


async def variance(lm: LoadedModel, n: int = 16, others: int = 48, tokens: int = 32) -> dict:
    questions = [f"Describe resident number {i} of a small town in one sentence." for i in range(n)]
    prompts = [[{"role": "user", "content": q}] for q in questions]
    noise = random_prompts(others, 100, lm.model.cfg.vocab_size, seed=7)
    alone = []
    for p in prompts:
        engine = Engine(lm)
        alone.append((await engine.generate(p, max_tokens=tokens, ignore_eos=True)).text)
        await engine.aclose()
    engine = Engine(lm, EngineConfig(kv_cache_gb=2.0))
    crowd = await asyncio.gather(
        *(engine.generate(p, max_tokens=tokens, ignore_eos=True) for p in prompts),
        *(engine.generate(x, max_tokens=tokens, ignore_eos=True) for x in noise),
    )
    await engine.aclose()
    changed = sum(a != c.text for a, c in zip(alone, crowd[:n], strict=True))
    return {"requests": n, "batch_size": n + others, "greedy_outputs_changed": changed, "tokens": tokens}


def table(results: dict) -> str:
    rows = [
        "| concurrency | ours prefill tok/s | transformers prefill tok/s | ratio | ours decode tok/s | "
        "transformers decode tok/s | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for b, r in results["batched"].items():
        o, h = r["ours"], r.get("transformers")
        if h:
            rows.append(
                f"| {b} | {o['prefill_tok_s']:,.0f} | {h['prefill_tok_s']:,.0f} | "
                f"{o['prefill_tok_s'] / h['prefill_tok_s']:.2f}x | {o['decode_tok_s']:,.0f} | "
                f"{h['decode_tok_s']:,.0f} | {o['decode_tok_s'] / h['decode_tok_s']:.2f}x |"
            )
        else:
            rows.append(f"| {b} | {o['prefill_tok_s']:,.0f} | – | – | {o['decode_tok_s']:,.0f} | – | – |")
    t, s, v = results["town"], results["schema"], results["variance"]
    meta = results["meta"]
    return "\n".join(
        [
            f"Command: `{meta['command']}` on {meta['date']}; {meta['machine']}; model {meta['model']} "
            f"(ours: {meta['dtype']}; transformers: float32 from the same GGUF); npp={meta['npp']}, ntg={meta['ntg']}. "
            "Prefill rate from a 1-token run, decode rate from the difference to a full run, best of 2 runs up to "
            "concurrency 32.",
            "",
            *rows,
            "",
            f"Town-like (64 requests, shared 512-token prefix, 64-token tails): {t['computed_prefill_tokens']:,} "
            f"prefill tokens computed of {t['submitted_prompt_tokens']:,} submitted "
            f"({t['computed_fraction']:.1%}), {t['seconds']:.1f} s.",
            "",
            f"Structured (64 concurrent `Plan` requests): {s['valid']}/64 valid, {s['tok_s']:.0f} generated tok/s, "
            f"mask time {s['mask_seconds']:.2f} s of {s['step_seconds']:.1f} s of steps "
            f"({s['mask_overhead']:.1%}).",
            "",
            f"Batch variance (greedy, {v['tokens']} tokens, {meta['dtype']}): "
            f"{v['greedy_outputs_changed']} of {v['requests']} outputs changed when run inside a batch of "
            f"{v['batch_size']} instead of alone.",
        ]
    )


def write_doc(text: str) -> None:
    doc = ROOT / "docs" / "BENCHMARKS.md"
    start, end = "<!-- engine:start -->", "<!-- engine:end -->"
    body = doc.read_text() if doc.exists() else "# Benchmarks\n"
    section = f"{start}\n## Engine (`make bench-engine`)\n\n{text}\n{end}"
    if start in body:
        body = body[: body.index(start)] + section + body[body.index(end) + len(end) :]
    else:
        body = body.rstrip() + "\n\n" + section + "\n"
    doc.write_text(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    ap.add_argument("--npp", type=int, default=256)
    ap.add_argument("--ntg", type=int, default=64)
    ap.add_argument("--hf-max-concurrency", type=int, default=64, help="skip transformers above this")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model()
    path = default_model_path()
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    results: dict = {"batched": {}}
    for b in args.concurrency:
        repeats = 2 if b <= 32 else 1
        row = {"ours": ours_batched(lm, b, args.npp, args.ntg, repeats)}
        if b <= args.hf_max_concurrency:
            row["transformers"] = hf_batched(hf, b, args.npp, args.ntg, lm.model.cfg.vocab_size, repeats)
        results["batched"][b] = row
        print(b, json.dumps(row), flush=True)
    results["town"] = asyncio.run(town(lm))
    print("town", results["town"], flush=True)
    results["schema"] = asyncio.run(schema_workload(lm))
    print("schema", results["schema"], flush=True)
    results["variance"] = asyncio.run(variance(lm))
    print("variance", results["variance"], flush=True)
    results["meta"] = {
        "command": "make bench-engine",
        "date": datetime.date.today().isoformat(),
        "machine": describe(),
        "model": path.name,
        "dtype": str(lm.model.dtype),
        "npp": args.npp,
        "ntg": args.ntg,
    }
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine.json").write_text(json.dumps(results, indent=2))
    text = table(results)
    print(text)
    if not args.no_doc:
        write_doc(text)


if __name__ == "__main__":
    main()
