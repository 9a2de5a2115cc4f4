"""The reference decode loop: batched greedy generation over `ContiguousKV`, no paging, no scheduler.

Not a second product path (`simulacra generate`, the server and the towns all run the engine): it is
the plain oracle the engine's outputs are proved against (tests/inference/test_engine.py,
test_server_engine.py, test_smollm2.py, bench/bf16_accuracy.py), kept small so it is obviously right.
"""

from __future__ import annotations

import torch

from simulacra.inference.kvcache import ContiguousKV
from simulacra.inference.model import Transformer


@torch.inference_mode()
def greedy_generate(
    model: Transformer, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int] | frozenset = frozenset()
) -> list[list[int]]:
    """Continue each prompt greedily as one ragged batch; a stop token ends its row and is kept."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    n = len(prompts)
    kv = ContiguousKV(model.cfg.n_layers, n)
    outputs: list[list[int]] = [[] for _ in range(n)]
    active = list(range(n))
    step_tokens = [list(p) for p in prompts]
    start_pos = [0] * n
    for _ in range(max_new_tokens):
        lengths = [len(step_tokens[s]) for s in active]
        tokens = torch.tensor([t for s in active for t in step_tokens[s]])
        positions = torch.tensor([start_pos[s] + i for s in active for i in range(len(step_tokens[s]))])
        last_rows = torch.tensor(lengths).cumsum(0) - 1
        kv.set_batch(active, lengths)
        next_ids = model(tokens, positions, kv, logits_rows=last_rows).argmax(-1).tolist()
        still = []
        for s, tok in zip(active, next_ids, strict=True):
            start_pos[s] += len(step_tokens[s])
            outputs[s].append(tok)
            step_tokens[s] = [tok]
            if tok not in stop_ids:
                still.append(s)
        active = still
        if not active:
            break
    return outputs
