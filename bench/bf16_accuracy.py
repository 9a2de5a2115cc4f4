"""bf16 accuracy of the engine's path against the fp32 reference, beside a plain bf16 forward.

For each of N chat prompts (mixed topics and tasks, chat template applied), the fp32 model continues
greedily for a few tokens; the whole sequence is then scored three ways, teacher-forced:

  reference     fp32 weights, one forward over the whole sequence (the parity tests' path);
  plain bf16    bf16 weights through `ContiguousKV` as `greedy_generate` runs them: the prompt in
                one forward, then one token at a time with bf16 K/V;
  engine bf16   bf16 weights through the engine's `ModelRunner` store (`PagedKV`, fp32 K/V on the
                CPU, the numba decode kernel): the prompt as one cold prefill chunk, then one token
                at a time.

Per position: max |Δ logit|, KL(reference ‖ path) and whether the top-1 token agrees; reported for
the prompt positions (prefill), the generated ones (decode) and the last prompt position alone (it
decides the first generated token, where "What is the capital of France?" went wrong).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bf16_accuracy.py [--prompts 120] [--new 12]

Writes bench/out/bf16_accuracy.json and prints the Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from machine import describe  # noqa: E402 - bench/machine.py

from simulacra.inference.engine.runner import ModelRunner  # noqa: E402
from simulacra.inference.generate import greedy_generate  # noqa: E402
from simulacra.inference.kvcache import ContiguousKV  # noqa: E402
from simulacra.inference.loader import load_model  # noqa: E402
from simulacra.inference.model import Transformer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SUBJECTS = [
    "France", "the river Nile", "a village bakery", "the town council election", "photosynthesis",
    "a birthday party at the café", "the moon", "a library's opening hours", "chess", "the Roman Empire",
    "rain in autumn", "a new neighbour",
]  # fmt: skip
TASKS = [
    "What do you know about {s}?",
    "Write one sentence about {s}.",
    "Give me three facts about {s}.",
    "Explain {s} to a child.",
    "Is {s} important? Answer yes or no, then say why.",
    "Plan a morning around {s}.",
    "Describe {s} in the style of a news report.",
    "What would a baker say about {s}?",
    "List two questions about {s}.",
    "Summarise {s} in five words.",
]
FIXED = ["What is the capital of France?", "Hi!", "What is 2 + 2?", "Name a colour.", "Tell me a joke."]


def prompts(n: int) -> list[str]:
    combos = [t.format(s=s) for t, s in itertools.product(TASKS, SUBJECTS)]
    return (FIXED + combos)[:n]


def forward_all(model: Transformer, kv, tokens: list[int], start: int) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor(tokens), torch.arange(start, start + len(tokens)), kv)


def plain(model: Transformer, seq: list[int], prompt_len: int) -> torch.Tensor:
    kv = ContiguousKV(model.cfg.n_layers, 1)
    kv.set_batch([0], [prompt_len])
    rows = [forward_all(model, kv, seq[:prompt_len], 0)]
    for pos in range(prompt_len, len(seq)):
        kv.set_batch([0], [1])
        rows.append(forward_all(model, kv, seq[pos : pos + 1], pos))
    return torch.cat(rows)


def engine_path(model: Transformer, seq: list[int], prompt_len: int, block_size: int = 16) -> torch.Tensor:
    runner = ModelRunner(model, num_blocks=-(-len(seq) // block_size) + 1, block_size=block_size)
    table = list(range(-(-len(seq) // block_size)))
    runner.kv.prepare([(table, 0, prompt_len)])
    rows = [forward_all(model, runner.kv, seq[:prompt_len], 0)]
    for pos in range(prompt_len, len(seq)):
        runner.kv.prepare([(table, pos, 1)])
        rows.append(forward_all(model, runner.kv, seq[pos : pos + 1], pos))
    return torch.cat(rows)


def errors(ref: torch.Tensor, got: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per position: max |Δ logit|, KL(ref ‖ got) in nats, top-1 agreement."""
    ref, got = ref.double(), got.double()
    lp_ref, lp_got = ref.log_softmax(-1), got.log_softmax(-1)
    return {
        "max_abs": (ref - got).abs().amax(-1),
        "kl": (lp_ref.exp() * (lp_ref - lp_got)).sum(-1),
        "top1": (ref.argmax(-1) == got.argmax(-1)).double(),
    }


def summary(parts: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return {
        "positions": int(cat["top1"].numel()),
        "max_abs": float(cat["max_abs"].max()),
        "mean_max_abs": float(cat["max_abs"].mean()),
        "mean_kl": float(cat["kl"].mean()),
        "top1": float(cat["top1"].mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=120)
    ap.add_argument("--new", type=int, default=12, help="greedy tokens generated by fp32, scored as decode")
    args = ap.parse_args()
    ref_lm, bf = load_model(dtype=torch.float32), load_model(dtype=torch.bfloat16)
    tok = ref_lm.tokenizer
    paths = {"plain bf16": plain, "engine bf16": engine_path}
    got: dict[str, dict[str, list]] = {name: {"prefill": [], "decode": [], "last": []} for name in paths}
    texts = prompts(args.prompts)
    for i, text in enumerate(texts):
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))
        new = greedy_generate(ref_lm.model, [ids], args.new, stop_ids=tok.eos_ids)[0]
        seq, n = ids + new, len(ids)
        ref_kv = ContiguousKV(ref_lm.model.cfg.n_layers, 1)
        ref_kv.set_batch([0], [len(seq)])
        ref = forward_all(ref_lm.model, ref_kv, seq, 0)
        for name, fn in paths.items():
            e = errors(ref, fn(bf.model, seq, n))
            got[name]["prefill"].append({k: v[: n - 1] for k, v in e.items()})
            got[name]["last"].append({k: v[n - 1 : n] for k, v in e.items()})
            got[name]["decode"].append({k: v[n:] for k, v in e.items()})
        if (i + 1) % 20 == 0:
            print(f"{i + 1}/{len(texts)} prompts", flush=True)
    results = {name: {part: summary(rows) for part, rows in parts.items()} for name, parts in got.items()}
    meta = {
        "command": "python bench/bf16_accuracy.py",
        "date": datetime.date.today().isoformat(),
        "machine": describe(),
        "prompts": len(texts),
        "new_tokens": args.new,
    }
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bf16_accuracy.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\n{meta['command']} on {meta['date']}; {meta['machine']}; {meta['prompts']} prompts\n")
    print("| path | positions | max abs Δ | mean of per-position max Δ | mean KL (nats) | top-1 agreement |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, parts in results.items():
        for part in ("prefill", "last", "decode"):
            r = parts[part]
            print(
                f"| {name}, {part} | {r['positions']:,} | {r['max_abs']:.3f} | {r['mean_max_abs']:.3f} | "
                f"{r['mean_kl']:.2e} | {r['top1']:.2%} |"
            )


if __name__ == "__main__":
    main()
