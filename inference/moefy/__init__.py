"""Turn a dense Llama-family model into a routed Mixtral-style MoE (`simulacra moefy`).

One module per job, in the order the work is done (the method and its choices: `docs/KERNELS.md`,
"A MoE from the dense model"):

- `capture`: the dense model answers prompts through the engine (deterministic mode); then one
  forward pass per (prompt, answer), with pre-hooks keeping every layer's FFN input (what a router
  reads);
- `split`: per layer, balanced k-means of the FFN neurons into E equal experts (by co-activation, or
  by their weights), a least-squares router to the experts' output norms, and the MoE `Transformer`;
- `write`: a Mixtral safetensors folder (loads in `transformers`) or a llama.cpp-style GGUF;
- `quality`: agreement with the dense model on held-out prompts.

`inference` knows nothing of residents: the town's prompts come from the caller
(`simulacra.calibration`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from simulacra.inference.loader import LoadedModel
from simulacra.inference.model import Transformer
from simulacra.inference.moefy.capture import FfnInputs, PromptLike, capture, sequences, serve
from simulacra.inference.moefy.split import (
    METHODS,
    MoefyError,
    MoePlan,
    build_moe,
    check_request,
    plan_moe,
    set_top_k,
    summary,
    uniform_plan,
)
from simulacra.inference.moefy.write import EXPERT_TYPES, write_gguf, write_hf


@dataclass
class Moefied:
    model: Transformer
    plan: MoePlan
    timings: dict[str, float] = field(default_factory=dict)
    rows: int = 0  # captured tokens the routers were fitted on
    prompts: int = 0


def moefy(
    lm: LoadedModel,
    prompts: Sequence[PromptLike],
    n_experts: int,
    top_k: int,
    method: str = "coact",
    spread: float = 0.05,
    max_rows: int = 16384,
    keep: float = 0.5,
    answer_tokens: int = 64,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> Moefied:
    """Capture FFN inputs while `lm` answers `prompts`, split every layer, build the MoE at `top_k`."""
    check_request(lm.config, n_experts, top_k)
    if method not in METHODS:
        raise MoefyError(f"unknown clustering method {method!r}; use one of {', '.join(METHODS)}")
    if not prompts:
        raise MoefyError("no calibration prompts")
    t0 = time.perf_counter()
    results = serve(lm, prompts, seed=seed, max_tokens=answer_tokens)
    answered = sum(r is not None for r in results)
    cap = capture(lm.model, sequences(lm, prompts, results), keep=keep, seed=seed)
    inputs = cap.tensors(max_rows, seed=seed)
    t1 = time.perf_counter()
    log(f"captured {inputs[0].shape[0]:,} of {cap.n_rows:,} tokens from {answered} answers in {t1 - t0:.0f}s")
    plan = plan_moe(lm.model, inputs, n_experts, method, spread, seed=seed)
    t2 = time.perf_counter()
    s = summary(plan)
    per_k = ", ".join(
        f"K={k}: oracle |act| {s['oracle_mass'][k]:.0%}, router recall {s['router_recall'][k]:.0%}"
        for k in s["oracle_mass"]
    )
    log(f"split {lm.config.n_layers} layers into {n_experts} experts ({method}) in {t2 - t1:.0f}s; {per_k}")
    return Moefied(
        build_moe(lm.model, plan, top_k),
        plan,
        {"capture_s": t1 - t0, "split_s": t2 - t1},
        rows=inputs[0].shape[0],
        prompts=answered,
    )


__all__ = [
    "EXPERT_TYPES",
    "METHODS",
    "FfnInputs",
    "MoePlan",
    "Moefied",
    "MoefyError",
    "build_moe",
    "capture",
    "check_request",
    "moefy",
    "plan_moe",
    "sequences",
    "serve",
    "set_top_k",
    "summary",
    "uniform_plan",
    "write_gguf",
    "write_hf",
]
