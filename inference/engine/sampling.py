"""Token sampling in fp32, one seeded generator per request.

Guarantee: a request with the same prompt, parameters and seed, run in a batch of the same
composition, yields the same tokens. Each request draws only from its own generator, so the
random stream never depends on its neighbours; what can still change with the neighbours is the
logits themselves (the matmul reduction order depends on batch shape), which the engine benchmark
measures for greedy decoding; `EngineConfig(deterministic=True)` fixes the logits too. Everything here
works on one row at a time, so a row's token never depends on the other rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from simulacra.inference.port import SamplingParams

NUCLEUS_PROBE = 256  # candidates ranked before falling back to a full sort (filter_logits)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A request's own random stream, on the device its logits live on (torch samples there)."""
    return torch.Generator(device=device).manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)


def filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Mask (to -inf) everything outside the top-k and the top-p nucleus of one fp32 row."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        probs = torch.softmax(logits, dim=-1)
        # The nucleus is nearly always inside the top few hundred tokens (a grammar mask or a peaked
        # distribution): rank those only, and sort the whole vocabulary (~5 ms for 49k) only when
        # they do not hold top_p of the mass. Same tokens kept either way.
        top, order = torch.topk(probs, min(NUCLEUS_PROBE, probs.shape[-1]))
        if float(top.sum()) < top_p:
            top, order = torch.sort(probs, descending=True)
        # keep a token while the mass before it is below top_p (the first token always stays)
        keep = order[(top.cumsum(-1) - top) < top_p]
        out = torch.full_like(logits, float("-inf"))
        out[keep] = logits[keep]
        return out
    return logits


def sample_row(logits: Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from one fp32 logits row (already masked by any grammar)."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    logits = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
