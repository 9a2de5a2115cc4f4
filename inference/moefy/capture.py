"""Hidden states of the dense model over the town's prompts and its own answers to them.

The routers are fitted on each layer's FFN input (the post-attention RMSNorm output: what a Mixtral
router reads). The engine answers the prompts first, with the town's schema-constrained sampling;
then one forward pass per (prompt, answer) keeps the states the town really produces: prompt tokens
once per distinct prefix (as the engine's prefix cache computes them), and the tokens of the model's
own JSON answers. Both passes are independent of batching, so the same prompts give the same MoE.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from simulacra.inference.engine import Engine, EngineConfig
from simulacra.inference.kvcache import ContiguousKV
from simulacra.inference.loader import LoadedModel
from simulacra.inference.model import Transformer
from simulacra.inference.moefy.quality import common_prefix
from simulacra.inference.port import GenerateResult, RequestError


class PromptLike(Protocol):
    messages: list[dict[str, str]]
    schema: Any
    max_tokens: int


class FfnInputs:
    """Forward pre-hooks on every layer's FFN keeping (a random `keep` share of) its input rows.

    Every layer keeps the same rows of a forward pass, so row r of each layer is one token."""

    def __init__(self, model: torch.nn.Module, keep: float = 1.0, seed: int = 0) -> None:
        self.layers = list(model.layers)
        self.keep = keep
        self.gen = torch.Generator().manual_seed(seed)
        self.rows: list[list[Tensor]] = [[] for _ in self.layers]
        self._mask: Tensor | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> FfnInputs:
        for i, block in enumerate(self.layers):
            self._handles.append(block.ffn.register_forward_pre_hook(self._hook(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, i: int):  # noqa: ANN202 - a torch hook
        def hook(_module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0]
            if i == 0:
                self._mask = torch.rand(x.shape[0], generator=self.gen) < self.keep
            assert self._mask is not None
            self.rows[i].append(x[self._mask].detach().to(torch.float16, copy=True))

        return hook

    @property
    def n_rows(self) -> int:
        return sum(r.shape[0] for r in self.rows[0])

    def tensors(self, max_rows: int | None = None, seed: int = 0) -> list[Tensor]:
        """Per layer [N, H] fp32; a random subset of `max_rows` rows (the same for every layer)."""
        out = [torch.cat(r) for r in self.rows]
        n = out[0].shape[0]
        if max_rows is not None and n > max_rows:
            pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_rows].sort().values
            out = [t[pick] for t in out]
        return [t.float() for t in out]


def serve(
    lm: LoadedModel,
    prompts: Sequence[PromptLike],
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int = 0,
    max_num_seqs: int = 64,
    max_tokens: int | None = None,
) -> list[GenerateResult | None]:
    """Answer every prompt through an engine over `lm` (None where the engine refused it), with the
    town's sampling. The engine runs in its deterministic mode, so the answers do not depend on how
    the prompts happened to be batched: the same prompts and seed give the same MoE. `max_tokens`
    caps each prompt's own budget (the grammar closes the JSON when it runs out): long schedules add
    little but wall time."""
    config = EngineConfig(kv_cache_gb=0.5, max_num_seqs=max_num_seqs, device="cpu", seed=seed, deterministic=True)
    engine = Engine(lm, config)

    async def one(i: int, p: PromptLike) -> GenerateResult | None:
        budgets = [min(p.max_tokens, max_tokens or p.max_tokens), p.max_tokens]
        for budget in dict.fromkeys(budgets):  # the town's own budget when the cap fits no valid answer
            try:
                return await engine.generate(
                    p.messages,
                    schema=p.schema,
                    max_tokens=budget,
                    temperature=temperature,
                    top_p=top_p,
                    seed=seed * 100_003 + i,
                )
            except RequestError:
                continue
        return None

    async def run() -> list[GenerateResult | None]:
        try:
            return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))
        finally:
            await engine.aclose()

    return asyncio.run(run())


def capture(
    model: Transformer, pairs: Sequence[tuple[list[int], list[int]]], keep: float = 1.0, seed: int = 0
) -> FfnInputs:
    """Every layer's FFN inputs over each (prompt, answer), in sorted order, each token once: the
    prefix a sequence shares with the one before it (in sorted order, the longest it shares with any
    earlier one) keeps that one's K/V and only the rest is run. Capturing inside the engine would
    keep rows by how its steps happened to be batched; this pass keeps the same rows on every run."""
    cap = FfnInputs(model, keep=keep, seed=seed)
    before: list[int] = []
    kv = ContiguousKV(model.cfg.n_layers, 1)
    with cap, torch.inference_mode():
        for ids in sorted(prompt + answer for prompt, answer in pairs):
            shared = common_prefix([before, ids])
            if shared == len(ids):
                continue
            for layer in range(model.cfg.n_layers):  # the shared prefix's K/V (slices: never written in place)
                past_k, past_v = kv.k[layer][0], kv.v[layer][0]
                kv.k[layer][0] = past_k[:shared] if shared else None
                kv.v[layer][0] = past_v[:shared] if shared else None
            rest = ids[shared:]
            kv.set_batch([0], [len(rest)])
            model(torch.tensor(rest), torch.arange(shared, len(ids)), kv, logits_rows=torch.tensor([len(rest) - 1]))
            before = ids
    return cap


def sequences(
    lm: LoadedModel, prompts: Sequence[PromptLike], results: Sequence[GenerateResult | None]
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) of each answered prompt, as the engine tokenised them."""
    tok = lm.tokenizer
    end = [tok.eos_id] if tok.eos_id is not None else sorted(tok.eos_ids)[:1]
    out = []
    for p, r in zip(prompts, results, strict=True):
        if r is None:
            continue
        ids = tok.encode(tok.apply_chat_template(p.messages), add_special_tokens=False)
        out.append((ids, tok.encode(r.text, add_special_tokens=False) + end))
    return out
