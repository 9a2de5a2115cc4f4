"""Token sampling in fp32, one seeded generator per request.

Guarantee: a request with the same prompt, parameters and seed, run in a batch of the same
composition, yields the same tokens. Each request draws only from its own generator, so the
random stream never depends on its neighbours; what can still change with the neighbours is the
logits themselves (the matmul reduction order depends on batch shape), which the engine benchmark
measures for greedy decoding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from simulacra.inference.port import SamplingParams


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A request's own random stream, on the device its logits live on (torch samples there)."""
    return torch.Generator(device=device).manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)


def filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Mask (to -inf) everything outside the top-k and the top-p nucleus of one fp32 row."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.clone()
        logits[order[drop]] = float("-inf")
    return logits


def sample_row(logits: Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from one fp32 logits row (already masked by any grammar)."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    logits = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
