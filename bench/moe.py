"""MoE layer benchmark (`make bench-moe`): our kernels against the usual ways of computing an MoE layer,
and against the physical limits, in the same run, on random weights at real shapes.

Per shape (OLMoE; Mixtral scaled to fit; Qwen2-MoE with its shared expert) and token count, the time
of one whole MoE layer (router, top-k, experts, shared expert, combine) for:

  ours            `kernels.moe_experts` with fp32 / Q8_0 / Q4_0 experts, and fp32 in batch-invariant mode;
  grouped         the previous `MoE.reference_experts` (argsort + one matmul per expert + index_add_);
  naive loop      transformers' reference loop (one_hot mask, per expert: where, 3 matmuls, index_add_);
  gather          gpt-fast: gather each token's expert weights, batched einsum (skipped above --gather-gb);
  dense           every expert on every token, weighted by a dense [N, E] routing matrix;
and the limits:
  roof            one dense FFN with the *active* parameter count (k experts' worth + the shared expert),
                  the best a matmul on this machine can do with the same FLOPs;
  floor           the bytes of the experts the batch selects (fp32, and Q4_0 in GGUF's 18 bytes / 32
                  weights) plus the fp32 shared expert and router, read once at the bandwidth measured
                  at the start of the run.

Also the narrow/wide switch: per-expert token counts at which the wide matmul beats the narrow kernel,
and (`--e2e`) a 2-layer random-weight OLMoE-shaped model through our engine against `transformers`:
prefill and decode tok/s. Timings are the best of several runs (the machine is shared). Writes
bench/out/moe.json and bench/out/moe.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import torch
import torch.nn.functional as F

from simulacra.inference import kernels, model
from simulacra.inference.config import ModelConfig
from simulacra.inference.kernels import QuantizedTensor, cpu_experts
from simulacra.inference.model import MoE

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {
    # name: hidden, experts, top-k, expert intermediate, shared-expert intermediate, norm_topk_prob
    "OLMoE": dict(hidden=2048, experts=64, top_k=8, inter=1024, shared=0, norm=False),
    "Mixtral (scaled: hidden 2048, expert 7168)": dict(
        hidden=2048, experts=8, top_k=2, inter=7168, shared=0, norm=True
    ),
    "Qwen2-MoE (A2.7B shapes, shared expert)": dict(
        hidden=2048, experts=60, top_k=4, inter=1408, shared=5632, norm=False
    ),
}
TOKENS = [1, 4, 16, 64, 256, 1024]


# ------------------------------------------------------------------------------------------ helpers


def best_time(fn, min_reps: int = 2, max_reps: int = 7, budget_s: float = 1.5) -> float:
    """Best of several runs after one warm-up (the machine is shared: the minimum is the signal)."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@numba.njit(parallel=True, fastmath=True)
def _read_rows(a: np.ndarray) -> float:  # pragma: no cover - compiled
    n_items = a.shape[0] // 4
    out = np.zeros(n_items, np.float32)
    for it in numba.prange(n_items):
        r0, r1, r2, r3 = a[4 * it], a[4 * it + 1], a[4 * it + 2], a[4 * it + 3]
        s = np.float32(0.0)
        for i in range(a.shape[1]):
            s += r0[i] + r1[i] + r2[i] + r3[i]
        out[it] = s
    return out.sum()


def measure_bandwidth() -> float:
    """Read bandwidth in GB/s: the best of a 4-stream numba read and torch's sum over 512 MB."""
    a = np.random.default_rng(0).random((65536, 2048), dtype=np.float32)
    best = a.nbytes / best_time(lambda: _read_rows(a), min_reps=3, max_reps=5)
    t = torch.from_numpy(a)
    best = max(best, a.nbytes / best_time(lambda: t.sum(), min_reps=3, max_reps=5))
    return best / 1e9


def build(spec: dict, seed: int = 0) -> MoE:
    cfg = ModelConfig(
        "olmoe",
        1000,
        spec["hidden"],
        1,
        16,
        16,
        spec["hidden"] // 16,
        spec["inter"],
        n_experts=spec["experts"],
        n_experts_per_tok=spec["top_k"],
        moe_intermediate_size=spec["inter"],
        norm_topk_prob=spec["norm"],
        shared_expert_intermediate_size=spec["shared"],
        shared_expert_gate=bool(spec["shared"]),
    )
    with torch.device("meta"):
        moe = MoE(cfg)
    g = torch.Generator().manual_seed(seed)
    h = spec["hidden"]

    def rand(*shape: int) -> torch.nn.Parameter:
        return torch.nn.Parameter(torch.randn(*shape, generator=g) / shape[-1] ** 0.5, requires_grad=False)

    moe.router.weight = rand(spec["experts"], h)
    moe.gate_up = rand(spec["experts"], 2 * spec["inter"], h)
    moe.down = rand(spec["experts"], h, spec["inter"])
    if moe.shared is not None:
        moe.shared.gate_up.weight = rand(2 * spec["shared"], h)
        moe.shared.down.weight = rand(h, spec["shared"])
        moe.shared_gate.weight = rand(1, h)
    return moe.eval()


# ---------------------------------------------------------------------------------- other methods


def naive_loop(moe: MoE, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """transformers' reference loop (Mixtral / OLMoE / Qwen2-MoE `forward`): separate gate and up."""
    n_exp, inter = moe.gate_up.shape[0], moe.down.shape[2]
    y = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32)
    mask = F.one_hot(ids, num_classes=n_exp).permute(2, 1, 0)  # [E, k, N]
    for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
        slot, tok = torch.where(mask[e[0]])
        cur = x[tok]
        w = moe.gate_up[e[0]]
        h = F.silu(cur @ w[:inter].T) * (cur @ w[inter:].T)
        y.index_add_(0, tok, (h @ moe.down[e[0]].T) * weights[tok, slot, None])
    return y


def gather(moe: MoE, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """gpt-fast's ConditionalFeedForward: gather each token's k expert weights, batched einsum."""
    inter = moe.down.shape[2]
    w1 = moe.gate_up[ids]  # [N, k, 2I, H]
    h = torch.einsum("ti,taoi->tao", x, w1)
    act = F.silu(h[..., :inter]) * h[..., inter:]
    out = torch.einsum("tao,taio->tai", act, moe.down[ids])
    return torch.einsum("tai,ta->ti", out, weights)


def dense(moe: MoE, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by the dense routing matrix (zeros off the top k)."""
    n_exp, inter = moe.gate_up.shape[0], moe.down.shape[2]
    dense_w = torch.zeros(x.shape[0], n_exp).scatter_(1, ids, weights)
    y = torch.zeros(x.shape[0], x.shape[1])
    for e in range(n_exp):
        h = x @ moe.gate_up[e].T
        y.addcmul_((F.silu(h[:, :inter]) * h[:, inter:]) @ moe.down[e].T, dense_w[:, e : e + 1])
    return y


def roof_fn(spec: dict, n: int):
    """One dense SwiGLU FFN with the active intermediate width (k experts + shared), weights [in, out]."""
    h, width = spec["hidden"], spec["top_k"] * spec["inter"] + spec["shared"]
    w1 = torch.randn(h, 2 * width) / h**0.5
    w2 = torch.randn(width, h) / width**0.5
    x = torch.randn(n, h)

    def run() -> torch.Tensor:
        a = x @ w1
        return (F.silu(a[:, :width]) * a[:, width:]) @ w2

    return run


def floor_bytes(spec: dict, ids: torch.Tensor, bytes_per_weight: float) -> float:
    """Bytes of the weights the batch must read: the distinct selected experts at `bytes_per_weight`; the
    shared expert and the router in fp32 (they stay fp32 in every variant measured here)."""
    h, i = spec["hidden"], spec["inter"]
    distinct = int(torch.unique(ids).numel())
    return distinct * 3 * h * i * bytes_per_weight + (3 * h * spec["shared"] + h * spec["experts"]) * 4.0


# ------------------------------------------------------------------------------------------ runs


def run_layer(moe: MoE, x: torch.Tensor, method: str) -> torch.Tensor:
    with torch.inference_mode():
        if method == "grouped":
            model.MOE_KERNELS = False
            try:
                return moe(x)
            finally:
                model.MOE_KERNELS = True
        if method in ("naive loop", "gather", "dense"):
            fn = {"naive loop": naive_loop, "gather": gather, "dense": dense}[method]
            moe.experts = lambda xx, w, ids: fn(moe, xx, w, ids)
            try:
                return moe(x)
            finally:
                del moe.experts
        if method == "ours batch-inv":
            with kernels.batch_invariant():
                return moe(x)
        return moe(x)


def bench_shape(name: str, spec: dict, tokens: list[int], bw: float, gather_gb: float, dense_max: int) -> list[dict]:
    moe = build(spec)
    quantised = {
        q: (QuantizedTensor.quantize(moe.gate_up, q), QuantizedTensor.quantize(moe.down, q)) for q in ("Q8_0", "Q4_0")
    }
    h, k, i = spec["hidden"], spec["top_k"], spec["inter"]
    rows = []
    for n in tokens:
        x = torch.randn(n, h, generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            _, ids = model.route(moe.router(x), k, moe.mode, moe.norm_topk)
        ref = run_layer(moe, x, "grouped")
        row: dict = {"tokens": n, "distinct_experts": int(torch.unique(ids).numel())}
        methods = ["ours fp32", "ours Q8_0", "ours Q4_0", "ours batch-inv", "grouped", "naive loop", "gather", "dense"]
        for method in methods:
            if method == "gather" and n * k * 3 * h * i * 4 > gather_gb * 1e9:
                row[method] = None  # would materialise more than --gather-gb of gathered weights
                continue
            if method == "dense" and n > dense_max:
                row[method] = None
                continue
            if method.startswith("ours Q"):
                moe.quantized = quantised[method[5:]]
            try:
                out = run_layer(moe, x, method)
                if not method.startswith("ours Q"):
                    assert (out - ref).abs().max().item() < 1e-3, (name, n, method)
                row[method] = best_time(lambda method=method, x=x: run_layer(moe, x, method)) * 1e3
            finally:
                moe.quantized = None
        row["roof"] = best_time(roof_fn(spec, n)) * 1e3
        row["floor fp32"] = floor_bytes(spec, ids, 4.0) / (bw * 1e9) * 1e3
        row["floor Q4_0"] = floor_bytes(spec, ids, 18 / 32) / (bw * 1e9) * 1e3
        row["% roof"] = 100 * row["roof"] / row["ours fp32"]
        row["Q4 % floor"] = 100 * row["floor Q4_0"] / row["ours Q4_0"]
        row["x naive"] = row["naive loop"] / row["ours fp32"]
        rows.append(row)
        print(name, json.dumps({k_: (round(v, 3) if isinstance(v, float) else v) for k_, v in row.items()}), flush=True)
    return rows


def bench_switch(tokens_per_expert: list[int]) -> list[dict]:
    """OLMoE expert shapes, 8 experts with c tokens each: narrow kernel vs wide matmul."""
    spec = SHAPES["OLMoE"]
    g = torch.Generator().manual_seed(1)
    e, h, i = 8, spec["hidden"], spec["inter"]
    gate_up = torch.randn(e, 2 * i, h, generator=g) / h**0.5
    down = torch.randn(e, h, i, generator=g) / i**0.5
    formats = {
        "fp32": (gate_up, down),
        "Q4_0": (QuantizedTensor.quantize(gate_up, "Q4_0"), QuantizedTensor.quantize(down, "Q4_0")),
    }
    rows = []
    for c in tokens_per_expert:
        x, w = torch.randn(c, h, generator=g), torch.rand(c, e, generator=g)
        ids = torch.arange(e).repeat(c, 1)
        row: dict = {"tokens_per_expert": c}
        for fmt, (gu, dn) in formats.items():
            for path, small_max in (("narrow", 1 << 30), ("wide", 1)):
                call = (x, w, ids, gu, dn)
                row[f"{fmt} {path}"] = best_time(lambda a=call, s=small_max: cpu_experts(*a, small_max=s)) * 1e3
        rows.append(row)
        print("switch", json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    return rows


# ------------------------------------------------------------------------------------- end to end


def e2e(concurrency: list[int], npp: int, ntg: int, layers: int) -> dict:
    """A random-weight OLMoE-shaped model (vocab 49152 so the packaged SmolLM2 tokenizer fits) through
    our engine and through `transformers` on the same weights, fp32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from simulacra.inference.loader import LoadedModel, load_tokenizer, load_transformer

    cfg = AutoConfig.for_model(
        "olmoe",
        vocab_size=49152,
        hidden_size=2048,
        intermediate_size=1024,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        num_experts=64,
        num_experts_per_tok=8,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else torch.randn_like(p) / p.shape[-1] ** 0.5)
    results: dict = {"layers": layers, "npp": npp, "ntg": ntg, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        info, ours = load_transformer(tmp, dtype=torch.float32)
        lm = LoadedModel(info, ours, load_tokenizer())
        prompts = {
            b: [[random.Random(b * 1000 + i).randrange(1000, 49152) for _ in range(npp)] for i in range(b)]
            for b in concurrency
        }
        for b in concurrency:
            row = {"ours": asyncio.run(_ours(lm, prompts[b], ntg)), "transformers": _hf(hf, prompts[b], ntg)}
            results["rows"][b] = row
            print("e2e", b, json.dumps(row), flush=True)
        kernels.quantize_experts(ours, "Q4_0")  # the same engine with Q4_0 experts (no transformers peer)
        for b in concurrency:
            results["rows"][b]["ours Q4_0"] = asyncio.run(_ours(lm, prompts[b], ntg))
            print("e2e Q4_0", b, json.dumps(results["rows"][b]["ours Q4_0"]), flush=True)
    return results


async def _ours(lm, prompts: list[list[int]], ntg: int) -> dict:
    from simulacra.inference.engine import Engine, EngineConfig

    engine = Engine(lm, EngineConfig(kv_cache_gb=1.0, max_batched_tokens=4096, max_num_seqs=max(len(prompts), 1)))
    await engine.generate(prompts[0][:8], max_tokens=2, ignore_eos=True)  # warm-up (first-call costs)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(engine.generate(p, max_tokens=ntg, ignore_eos=True) for p in prompts))
    total = time.perf_counter() - t0
    await engine.aclose()
    prefill = max(r.timings["first_token_s"] for r in results)
    tokens = sum(len(p) for p in prompts)
    return {
        "prefill_tok_s": tokens / prefill,
        "decode_tok_s": len(prompts) * (ntg - 1) / max(total - prefill, 1e-9),
    }


@torch.inference_mode()
def _hf(hf, prompts: list[list[int]], ntg: int) -> dict:
    """Prefill = `generate` of one token; decode = the extra time of `ntg` tokens over one, per token."""
    ids = torch.tensor(prompts)

    def gen(n: int) -> float:
        t0 = time.perf_counter()
        hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0

    gen(1)  # warm-up
    first = gen(1)
    total = gen(ntg)
    return {
        "prefill_tok_s": ids.numel() / first,
        "decode_tok_s": len(prompts) * (ntg - 1) / max(total - first, 1e-9),
    }


# ------------------------------------------------------------------------------------------ output


def fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}" if v < 100 else f"{v:,.0f}"


def markdown(results: dict) -> str:
    meta = results["meta"]
    out = [
        f"Command: `{meta['command']}` on {meta['date']}; {meta['machine']}; compute dtype fp32 (this CPU has no "
        f"native bf16); measured read bandwidth {meta['bandwidth_gb_s']:.1f} GB/s. Times are ms per MoE layer call "
        "(router + top-k + experts + shared expert + combine), best of several runs.",
        "",
        "Columns: *ours* = `kernels.moe_experts` (fp32, Q8_0, Q4_0 experts; *b-inv* = fp32 batch-invariant mode); "
        "*grouped* = the previous `MoE.reference_experts`; *naive* = transformers' per-expert loop; *gather* = "
        "gpt-fast's per-token weight gather (– where it would gather more than the memory cap); *dense* = all experts "
        "on all tokens; *roof* = one dense FFN with the active parameter count; *floor* = selected experts' bytes "
        "(fp32 / GGUF Q4_0) + the fp32 shared expert and router, at the measured bandwidth; *% roof* = roof / ours "
        "fp32; *Q4 % floor* = Q4_0 floor / ours Q4_0.",
    ]
    for name, rows in results["shapes"].items():
        out += [
            "",
            f"**{name}**",
            "",
            "| tokens | ours fp32 | ours Q8_0 | ours Q4_0 | ours b-inv | grouped | naive | gather | dense | roof | "
            "floor fp32 | floor Q4_0 | % roof | Q4 % floor | × naive |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            out.append(
                f"| {r['tokens']} | {fmt(r['ours fp32'])} | {fmt(r['ours Q8_0'])} | {fmt(r['ours Q4_0'])} | "
                f"{fmt(r['ours batch-inv'])} | {fmt(r['grouped'])} | {fmt(r['naive loop'])} | {fmt(r['gather'])} | "
                f"{fmt(r['dense'])} | {fmt(r['roof'])} | {fmt(r['floor fp32'], 2)} | {fmt(r['floor Q4_0'], 2)} | "
                f"{r['% roof']:.0f}% | {r['Q4 % floor']:.0f}% | {r['x naive']:.1f}× |"
            )
    sw = results.get("switch")
    if sw:
        out += [
            "",
            "**Narrow kernel vs wide matmul** (OLMoE expert shapes, 8 experts × c tokens each, ms):",
            "",
            "| tokens per expert | fp32 narrow | fp32 wide | Q4_0 narrow | Q4_0 wide |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in sw:
            out.append(
                f"| {r['tokens_per_expert']} | {fmt(r['fp32 narrow'])} | {fmt(r['fp32 wide'])} | "
                f"{fmt(r['Q4_0 narrow'])} | {fmt(r['Q4_0 wide'])} |"
            )
    ee = results.get("e2e")
    if ee:
        out += [
            "",
            f"**End to end**: random-weight OLMoE-shaped model ({ee['layers']} layers, hidden 2048, 64 experts top-8, "
            f"vocab 49152), fp32, prompts of {ee['npp']} tokens, {ee['ntg']} generated; our engine (kernels on) vs "
            "`transformers` on the same weights:",
            "",
            "| concurrency | ours prefill tok/s | transformers prefill tok/s | ours decode tok/s | "
            "transformers decode tok/s | ours, Q4_0 experts: prefill / decode tok/s |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for b, r in ee["rows"].items():
            o, h, q = r["ours"], r["transformers"], r.get("ours Q4_0")
            q_text = f"{q['prefill_tok_s']:,.0f} / {q['decode_tok_s']:,.1f}" if q else "–"
            out.append(
                f"| {b} | {o['prefill_tok_s']:,.0f} | {h['prefill_tok_s']:,.0f} | {o['decode_tok_s']:,.1f} | "
                f"{h['decode_tok_s']:,.1f} | {q_text} |"
            )
    out += ["", *targets(results)]
    return "\n".join(out)


def targets(results: dict) -> list[str]:
    lines = ["Targets (issue #5; written for an AMX/bf16 machine, measured here in fp32):", ""]
    for name, rows in results["shapes"].items():
        big = [r for r in rows if r["tokens"] >= 256]
        small = [r for r in rows if r["tokens"] <= 4]
        at64 = [r for r in rows if r["tokens"] == 64]
        parts = []
        if big:
            worst = min(r["% roof"] for r in big)
            parts.append(f"≥70% of roof from 256 tokens: {worst:.0f}% {'met' if worst >= 70 else 'NOT met'}")
        if small:
            worst = min(r["Q4 % floor"] for r in small)
            parts.append(f"≥50% of Q4 floor at 1–4 tokens: {worst:.0f}% {'met' if worst >= 50 else 'NOT met'}")
        if at64:
            x = at64[0]["x naive"]
            parts.append(f"≥5× naive at 64 tokens: {x:.1f}× {'met' if x >= 5 else 'NOT met'}")
        lines.append(f"- {name}: " + "; ".join(parts))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=TOKENS)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), help="names or unique prefixes")
    ap.add_argument("--gather-gb", type=float, default=2.0, help="skip gpt-fast gather above this many GB")
    ap.add_argument("--dense-max", type=int, default=1024, help="skip the all-experts baseline above this N")
    ap.add_argument("--switch", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--quick", action="store_true", help="OLMoE only, 1/16/256 tokens, small switch sweep")
    ap.add_argument("--e2e", type=int, nargs="*", default=None, help="run the engine comparison at these concurrencies")
    ap.add_argument("--e2e-layers", type=int, default=2)
    ap.add_argument("--npp", type=int, default=128)
    ap.add_argument("--ntg", type=int, default=32)
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.shapes, args.switch = [1, 16, 256], ["OLMoE"], [1, 8, 32]
    torch.manual_seed(0)
    bw = measure_bandwidth()
    print(f"bandwidth {bw:.1f} GB/s", flush=True)
    names = [n for n in SHAPES if any(n.startswith(p) for p in args.shapes)]
    results: dict = {"shapes": {}}
    for name in names:
        results["shapes"][name] = bench_shape(name, SHAPES[name], args.tokens, bw, args.gather_gb, args.dense_max)
    results["switch"] = bench_switch(args.switch) if args.switch else []
    if args.e2e is not None:
        results["e2e"] = e2e(args.e2e or [1, 8], args.npp, args.ntg, args.e2e_layers)
    results["meta"] = {
        "command": " ".join(["python bench/moe.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, numba {numba.__version__} ({numba.get_num_threads()} threads)",
        "bandwidth_gb_s": bw,
        "settings": vars(kernels.settings),
    }
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "moe.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (out / "moe.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
