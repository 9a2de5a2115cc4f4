"""How close a moefied SmolLM2 is to the dense one, on town prompts the routers were not fitted on.

The packaged model answers the town's prompts (`simulacra.calibration`: every kind of call, for every
resident of town3 and town25) through the engine. Residents are split: the routers are fitted on the
FFN inputs captured while it answers the fit residents' prompts; the held-out residents' prompts and
the dense model's own answers are the test set. Per split (E experts, clustering method) and K:

  top1 / KL        teacher-forced over the held-out prompts' user turn + answer: share of positions
                   where the MoE's argmax is the dense model's, and mean KL(dense || MoE) in nats;
  answer top1/KL   the same over the answer positions only (what decoding produces);
  greedy prefix    greedy continuation (32 tokens, cut at the dense model's stop token): the share of
                   the dense continuation the MoE repeats before its first different token;
  greedy exact     share of prompts whose continuation is identical;
  oracle / recall  per-layer means on the fit tokens: share of |activation| in the best K experts, and
                   share of those best K experts the fitted router picks.

    python bench/moefy_quality.py                      # E=8, K=2,4,6, co-activation and weight clustering
    python bench/moefy_quality.py --split 16:4,8 --cache .cache/moefy_capture.pt

Writes bench/out/moefy_quality.json and .md. `--cache` keeps the captured states and held-out answers
(the slow part, ~7 minutes on 2 shared cores) for reruns.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import torch

from simulacra.calibration import town_prompts
from simulacra.inference.loader import load_model
from simulacra.inference.moefy import build_moe, plan_moe, sequences, serve, summary
from simulacra.inference.moefy import capture as capture_states
from simulacra.inference.moefy.quality import compare

ROOT = Path(__file__).resolve().parent.parent


def parse_split(text: str) -> tuple[int, list[int]]:
    e, ks = text.split(":")
    return int(e), [int(k) for k in ks.split(",")]


def capture(lm, args) -> dict:  # noqa: ANN001
    if args.cache and Path(args.cache).is_file():
        return torch.load(args.cache)
    prompts = town_prompts(args.scenario)
    fit, held = [p for p in prompts if not p.heldout], [p for p in prompts if p.heldout]
    t0 = time.perf_counter()
    cap = capture_states(lm.model, sequences(lm, fit, serve(lm, fit, max_tokens=args.answer_tokens)), keep=args.keep)
    t1 = time.perf_counter()
    answers = serve(lm, held, seed=1, max_tokens=args.answer_tokens)
    data = {
        "x": [torch.cat(r) for r in cap.rows],
        "held": sequences(lm, held, answers),
        "held_kinds": [p.kind for p, a in zip(held, answers, strict=True) if a is not None],
        "fit_prompts": len(fit),
        "capture_s": t1 - t0,
        "held_s": time.perf_counter() - t1,
    }
    if args.cache:
        Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, args.cache)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="dense model (default: the packaged SmolLM2)")
    ap.add_argument("--split", action="append", type=parse_split, help="E:K,K,... (default 8:2,4,6)")
    ap.add_argument("--method", action="append", choices=["coact", "weights"], help="default: both")
    ap.add_argument("--scenario", action="append", help="default: town3 and town25")
    ap.add_argument("--cache", default=None, help="file for the captured states and held-out answers")
    ap.add_argument("--keep", type=float, default=0.6, help="share of captured tokens kept")
    ap.add_argument("--max-rows", type=int, default=16384)
    ap.add_argument("--answer-tokens", type=int, default=64)
    ap.add_argument("--greedy", type=int, default=32)
    ap.add_argument("--heldout-limit", type=int, default=0, help="score at most this many held-out prompts")
    ap.add_argument("--spread", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "moefy_quality"))
    args = ap.parse_args()
    args.split = args.split or [(8, [2, 4, 6])]
    args.method = args.method or ["coact", "weights"]
    args.scenario = args.scenario or ["town3", "town25"]
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(args.threads)

    lm = load_model(args.model, dtype=torch.float32)
    data = capture(lm, args)
    gen = torch.Generator().manual_seed(0)
    n = data["x"][0].shape[0]
    pick = torch.randperm(n, generator=gen)[: args.max_rows].sort().values
    inputs = [x[pick].float() for x in data["x"]]
    held = data["held"]
    stops = set(lm.tokenizer.eos_ids)
    print(f"fit on {inputs[0].shape[0]:,} captured tokens; {len(held)} held-out prompts", flush=True)

    if args.heldout_limit and len(held) > args.heldout_limit:
        step = len(held) / args.heldout_limit  # spread over residents and kinds
        held = [held[int(i * step)] for i in range(args.heldout_limit)]
    print(f"scoring {len(held)} held-out prompts", flush=True)

    rows = []
    dense_self = None
    for e, ks in args.split:
        for method in args.method:
            t0 = time.perf_counter()
            plan = plan_moe(lm.model, inputs, e, method, args.spread, ks=tuple(ks))
            split_s = time.perf_counter() - t0
            s = summary(plan)
            models = {str(k): build_moe(lm.model, plan, k) for k in ks}
            if dense_self is None:
                models["dense"] = lm.model
            t1 = time.perf_counter()
            got = compare(lm.model, models, held, args.greedy, stops)
            dense_self = dense_self or got.get("dense")
            for k in ks:
                row = {
                    "experts": e,
                    "top_k": k,
                    "method": method,
                    **got[str(k)],
                    "oracle_mass": s["oracle_mass"].get(k, 1.0),
                    "router_recall": s["router_recall"].get(k, 1.0),
                    "split_s": split_s,
                    "eval_s": time.perf_counter() - t1,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
            del models
    out = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "model": str(lm.info.path),
        "fit_tokens": inputs[0].shape[0],
        "fit_prompts": data["fit_prompts"],
        "heldout_prompts": len(held),
        "capture_s": data["capture_s"],
        "dense_self_check": dense_self,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2))
    lines = [
        f"# moefy quality ({out['date']})",
        "",
        f"{lm.info.path.name}; routers fitted on {out['fit_tokens']:,} tokens of {out['fit_prompts']} prompts; "
        f"{len(held)} held-out prompts.",
        "",
        "| E | K | method | top-1 | KL | answer top-1 | answer KL | greedy prefix | greedy exact | oracle |act| "
        "| router recall |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['experts']} | {r['top_k']} | {r['method']} | {r['top1']:.1%} | {r['kl']:.3f} | "
            f"{r['answer_top1']:.1%} | {r['answer_kl']:.3f} | {r['greedy_prefix']:.1%} | {r['greedy_exact']:.1%} | "
            f"{r['oracle_mass']:.1%} | {r['router_recall']:.1%} |"
        )
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
