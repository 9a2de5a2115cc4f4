"""Sampling filters: the fast nucleus (top-p) keeps exactly the tokens a full sort would keep."""

import pytest
import torch

from simulacra.inference.engine.sampling import NUCLEUS_PROBE, filter_logits, make_generator, sample_row
from simulacra.inference.port import SamplingParams


def full_sort_nucleus(logits: torch.Tensor, top_p: float) -> set[int]:
    """The textbook nucleus: sort everything, keep while the mass before a token is below top_p."""
    probs = torch.softmax(logits.double(), dim=-1)
    order = torch.argsort(probs, descending=True).tolist()
    kept, mass = set(), 0.0
    for i in order:
        if mass >= top_p:
            break
        kept.add(i)
        mass += float(probs[i])
    return kept


@pytest.mark.parametrize("sharpness", [0.3, 1.0, 3.0, 8.0])  # flat rows need the full sort; peaked ones do not
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
def test_nucleus_equals_a_full_sort(sharpness: float, top_p: float) -> None:
    g = torch.Generator().manual_seed(int(sharpness * 10 + top_p * 100))
    for _ in range(5):
        logits = torch.randn(5000, generator=g) * sharpness
        kept = set(torch.nonzero(torch.isfinite(filter_logits(logits, 0, top_p))).flatten().tolist())
        want = full_sort_nucleus(logits, top_p)
        # tokens whose mass-before sits within float rounding of top_p may go either way
        assert len(kept ^ want) <= 1
        assert len(kept & want) >= min(len(want), NUCLEUS_PROBE) - 1


def test_masked_rows_keep_only_allowed_tokens_and_their_logits() -> None:
    logits = torch.full((49152,), float("-inf"))
    allowed = torch.tensor([3, 70, 4000, 49151])
    logits[allowed] = torch.tensor([2.0, 1.5, 0.1, -3.0])
    out = filter_logits(logits, 0, 0.95)
    finite = torch.nonzero(torch.isfinite(out)).flatten()
    assert set(finite.tolist()) <= set(allowed.tolist()) and 3 in finite.tolist()
    assert torch.equal(out[finite], logits[finite])


def test_top_k_then_top_p_and_seeded_sampling() -> None:
    logits = torch.linspace(0, 100, 1000)  # neighbours 0.1 apart: at temperature 0.8 the 0.9 nucleus is ~19 tokens
    out = filter_logits(logits, 5, 1.0)
    assert torch.isfinite(out).sum() == 5 and torch.isfinite(out[-5:]).all()
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=0)
    a = [sample_row(logits, params, make_generator(7)) for _ in range(3)]
    assert len(set(a)) == 1 and a[0] >= 970  # same seed, same token; from the nucleus at the top
