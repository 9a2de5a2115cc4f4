"""How far a moefied model is from its dense source, on held-out prompts: next-token top-1 agreement,
mean KL(dense || MoE) and greedy-continuation agreement.

Prompts of one resident share a long system prefix, so each group's common prefix runs once per model
and its K/V is shared by the group's suffixes (`ContiguousKV` never writes a cached tensor in place).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from simulacra.inference.kvcache import ContiguousKV
from simulacra.inference.model import Transformer

Pair = tuple[list[int], list[int]]  # (prompt ids, answer ids)


@dataclass
class Scores:
    """Running sums for one model against the reference."""

    positions: int = 0
    top1: int = 0
    kl: float = 0.0
    answer_positions: int = 0
    answer_top1: int = 0
    answer_kl: float = 0.0
    greedy_prefix: float = 0.0  # sum over prompts of (agreeing prefix / reference length)
    greedy_exact: int = 0
    prompts: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {
            "top1": self.top1 / max(self.positions, 1),
            "kl": self.kl / max(self.positions, 1),
            "answer_top1": self.answer_top1 / max(self.answer_positions, 1),
            "answer_kl": self.answer_kl / max(self.answer_positions, 1),
            "greedy_prefix": self.greedy_prefix / max(self.prompts, 1),
            "greedy_exact": self.greedy_exact / max(self.prompts, 1),
            "positions": self.positions,
            "prompts": self.prompts,
        }


def common_prefix(seqs: Sequence[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = seqs[0][i]
        if any(s[i] != t for s in seqs):
            return i
    return n


def group_by_prefix(pairs: Sequence[Pair], share: float = 0.5) -> list[list[Pair]]:
    """Consecutive pairs whose prompts share at least `share` of the shorter prompt (one resident's
    system message, not just the town's name), in order."""
    groups: list[list[Pair]] = []
    for p in pairs:
        if groups:
            first = groups[-1][0][0]
            if common_prefix([first, p[0]]) >= share * min(len(first), len(p[0])):
                groups[-1].append(p)
                continue
        groups.append([p])
    return groups


def _run_prefix(model: Transformer, prefix: list[int], n: int) -> ContiguousKV:
    """A cache for n sequences that all start with `prefix` (its K/V computed once, shared)."""
    kv = ContiguousKV(model.cfg.n_layers, n)
    if prefix:
        one = ContiguousKV(model.cfg.n_layers, 1)
        one.set_batch([0], [len(prefix)])
        model(torch.tensor(prefix), torch.arange(len(prefix)), one, logits_rows=torch.tensor([len(prefix) - 1]))
        for layer in range(model.cfg.n_layers):
            kv.k[layer] = [one.k[layer][0]] * n
            kv.v[layer] = [one.v[layer][0]] * n
    return kv


def _extend(model: Transformer, kv: ContiguousKV, starts: list[int], parts: list[list[int]]) -> list[Tensor]:
    """Run each sequence's next `parts[i]` tokens (from position `starts[i]`); logits per sequence."""
    kv.set_batch(list(range(len(parts))), [len(s) for s in parts])
    tokens = torch.tensor([t for s in parts for t in s])
    positions = torch.tensor([p + i for p, s in zip(starts, parts, strict=True) for i in range(len(s))])
    return list(model(tokens, positions, kv).split([len(s) for s in parts]))


def _greedy(model: Transformer, kv: ContiguousKV, starts: list[int], first: list[int], n: int) -> list[list[int]]:
    """`n` greedy tokens per sequence, the first already chosen; positions continue from `starts`."""
    out = [[t] for t in first]
    pos = list(starts)
    for _ in range(n - 1):
        kv.set_batch(list(range(len(out))), [1] * len(out))
        nxt = model(torch.tensor([o[-1] for o in out]), torch.tensor(pos), kv).argmax(-1).tolist()
        for i, t in enumerate(nxt):
            out[i].append(t)
            pos[i] += 1
    return out


def _snapshot(kv: ContiguousKV) -> tuple[list[list[Tensor | None]], list[list[Tensor | None]]]:
    return [list(r) for r in kv.k], [list(r) for r in kv.v]


def _restore(kv: ContiguousKV, snap: tuple[list[list[Tensor | None]], list[list[Tensor | None]]]) -> None:
    kv.k, kv.v = [list(r) for r in snap[0]], [list(r) for r in snap[1]]


@dataclass
class _Run:
    logp: list[Tensor]  # per sequence: log-probs of every position after the shared prefix but the last
    greedy: list[list[int]]


def _run_group(
    model: Transformer, prefix: list[int], asks: list[list[int]], answers: list[list[int]], greedy_tokens: int
) -> _Run:
    """Teacher-forced log-probs over ask + answer, and greedy continuations of the asks, sharing the
    prefix's and the asks' K/V."""
    start = len(prefix)
    kv = _run_prefix(model, prefix, len(asks))
    ask_logits = _extend(model, kv, [start] * len(asks), asks)
    snap = _snapshot(kv)
    ends = [start + len(a) for a in asks]
    ans_logits = _extend(model, kv, ends, answers)
    logp = [torch.log_softmax(torch.cat((a, b))[:-1], -1) for a, b in zip(ask_logits, ans_logits, strict=True)]
    _restore(kv, snap)
    first = [int(a[-1].argmax()) for a in ask_logits]
    return _Run(logp, _greedy(model, kv, ends, first, greedy_tokens))


def _stop_at(seq: list[int], stops: set[int]) -> list[int]:
    for i, t in enumerate(seq):
        if t in stops:
            return seq[: i + 1]
    return seq


@torch.inference_mode()
def compare(
    reference: Transformer,
    models: Mapping[str, Transformer],
    pairs: Sequence[Pair],
    greedy_tokens: int = 32,
    stops: set[int] | frozenset[int] = frozenset(),
) -> dict[str, dict[str, float]]:
    """Each model against `reference` on (prompt, answer) pairs: teacher-forced next-token agreement
    and KL over every prompt-suffix and answer position, and greedy agreement from each prompt: the
    share of the reference's `greedy_tokens` (up to its stop token) that the model repeats before
    its first different token."""
    scores = {name: Scores() for name in models}
    for group in group_by_prefix(pairs):
        prompts = [p for p, _ in group]
        start = common_prefix(prompts) if len(group) > 1 else len(prompts[0]) - 1
        start = min(start, min(len(p) for p in prompts) - 1)  # every ask keeps at least one token
        prefix, asks, answers = prompts[0][:start], [p[start:] for p in prompts], [a for _, a in group]
        ref = _run_group(reference, prefix, asks, answers, greedy_tokens)
        ref_greedy = [_stop_at(g, set(stops)) for g in ref.greedy]
        for name, model in models.items():
            s = scores[name]
            got = _run_group(model, prefix, asks, answers, greedy_tokens)
            for i, (logp, logq) in enumerate(zip(ref.logp, got.logp, strict=True)):
                kl = (logp.exp() * (logp - logq)).sum(-1)
                agree = logq.argmax(-1) == logp.argmax(-1)
                ans = slice(len(asks[i]) - 1, None)  # positions that predict answer tokens
                s.positions += kl.numel()
                s.top1 += int(agree.sum())
                s.kl += float(kl.sum())
                s.answer_positions += kl[ans].numel()
                s.answer_top1 += int(agree[ans].sum())
                s.answer_kl += float(kl[ans].sum())
            for want, g in zip(ref_greedy, got.greedy, strict=True):
                same = common_prefix([want, g[: len(want)]])
                s.greedy_prefix += same / len(want)
                s.greedy_exact += int(same == len(want))
                s.prompts += 1
    return {name: s.as_dict() for name, s in scores.items()}
