"""Routed-expert kernels (`inference/kernels`) against an independent float64 MoE layer.

Every CPU path is checked: the wide matmul path, the narrow (weights-read-once) kernel, the mix the
dispatcher picks, the batch-invariant tiled mode, bf16 and quantised (Q8_0 / Q4_0 / Q4_1) experts;
over ragged token counts, experts that receive no tokens and all tokens routed to one expert.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from simulacra.inference import kernels
from simulacra.inference.config import ModelConfig
from simulacra.inference.kernels import (
    QuantizedTensor,
    cpu_experts,
    invariant_linear,
    qlinear,
    sort_by_expert,
)
from simulacra.inference.model import MoE, route

E, H, INTER, K = 16, 128, 64, 4
TOKEN_COUNTS = [1, 2, 5, 17, 64, 203]  # ragged: not multiples of anything
PATHS = {"wide": 1, "narrow": None, "mixed": 4}  # small_max: every expert wide / narrow / by count


def experts(seed: int, n_exp: int = E, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gate_up = torch.randn(n_exp, 2 * INTER, H, generator=g) / H**0.5
    down = torch.randn(n_exp, H, INTER, generator=g) / INTER**0.5
    return gate_up.to(dtype), down.to(dtype)


def routed(n: int, seed: int, n_exp: int = E, allowed: list[int] | None = None) -> tuple[torch.Tensor, ...]:
    """Tokens, router weights and distinct expert ids per token (optionally only from `allowed`)."""
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(n, H, generator=g)
    pool = torch.tensor(allowed if allowed is not None else list(range(n_exp)))
    ids = torch.stack([pool[torch.randperm(len(pool), generator=g)[:K]] for _ in range(n)] or [pool[:K]])[:n]
    w = torch.softmax(torch.randn(n, K, generator=g), -1)
    return x, w, ids


def reference64(x, w, ids, gate_up, down) -> torch.Tensor:
    """The MoE layer in float64, one expert and slot at a time (independent of the kernels' grouping)."""
    x, w, gate_up, down = x.double(), w.double(), gate_up.double(), down.double()
    inter = down.shape[2]
    y = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64)
    for s in range(ids.shape[1]):
        for e in ids[:, s].unique().tolist():
            rows = (ids[:, s] == e).nonzero().squeeze(1)
            h = x[rows] @ gate_up[e].T
            y[rows] += w[rows, s, None] * ((F.silu(h[:, :inter]) * h[:, inter:]) @ down[e].T)
    return y


def max_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.double() - want).abs().max().item()


# ---------------------------------------------------------------------------------------------- routing


def test_sort_groups_pairs_by_expert_stably_with_offsets_and_inverse() -> None:
    ids = torch.tensor([[3, 1], [1, 0], [3, 2], [1, 3]])
    s = sort_by_expert(ids, n_experts=5)
    assert s.counts.tolist() == [1, 3, 1, 3, 0]  # expert 4 receives nothing
    assert s.offsets.tolist() == [0, 1, 4, 5, 8, 8]
    assert s.sorted_pairs.tolist() == [3, 1, 2, 6, 5, 0, 4, 7]  # pair = token * k + slot, stable
    assert (s.sorted_pairs[s.position] == np.arange(8)).all()
    assert s.tokens().tolist() == [1, 0, 1, 3, 2, 0, 2, 3]


def test_sort_pads_each_expert_to_the_block_like_moe_align_block_size() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (37, 3), generator=g)
    s = sort_by_expert(ids, n_experts=8, block=4)
    assert (np.diff(s.offsets) % 4 == 0).all()
    assert s.sorted_pairs.size == s.offsets[-1] == s.block_expert.size * 4
    for e in range(8):
        run = s.sorted_pairs[s.offsets[e] : s.offsets[e + 1]]
        real = run[: s.counts[e]]
        assert (run[s.counts[e] :] == 37 * 3).all()  # padding sentinel
        assert (ids.reshape(-1)[real] == e).all() and (np.diff(real) > 0).all()
        assert (s.block_expert[s.offsets[e] // 4 : s.offsets[e + 1] // 4] == e).all()
    assert (s.tokens()[s.sorted_pairs == 37 * 3] == 37).all()  # padding reads the zero row


def test_sort_edge_cases() -> None:
    one = sort_by_expert(torch.full((9, 2), 2), n_experts=4)
    assert one.counts.tolist() == [0, 0, 18, 0]
    empty = sort_by_expert(torch.empty(0, 2, dtype=torch.int64), n_experts=4)
    assert empty.sorted_pairs.size == 0 and empty.offsets.tolist() == [0] * 5
    with pytest.raises(ValueError):
        sort_by_expert(torch.tensor([[0, 4]]), n_experts=4)


# ------------------------------------------------------------------------------------- float experts


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("n", TOKEN_COUNTS)
def test_fp32_experts_match_float64_reference(path: str, n: int) -> None:
    gate_up, down = experts(0)
    x, w, ids = routed(n, seed=n)
    got = cpu_experts(x, w, ids, gate_up, down, small_max=PATHS[path])
    assert got.dtype == torch.float32 and got.shape == (n, H)
    assert max_err(got, reference64(x, w, ids, gate_up, down)) <= 1e-4


@pytest.mark.parametrize("path", list(PATHS))
def test_experts_with_no_tokens_and_all_tokens_on_one_expert(path: str) -> None:
    gate_up, down = experts(1)
    x, w, ids = routed(40, seed=3, allowed=[2, 5, 6, 11, 13])  # 11 of 16 experts receive nothing
    got = cpu_experts(x, w, ids, gate_up, down, small_max=PATHS[path])
    assert max_err(got, reference64(x, w, ids, gate_up, down)) <= 1e-4
    ids_one = torch.full((40, 1), 7)  # k = 1, everything to expert 7
    got = cpu_experts(x, w[:, :1], ids_one, gate_up, down, small_max=PATHS[path])
    assert max_err(got, reference64(x, w[:, :1], ids_one, gate_up, down)) <= 1e-4
    got = cpu_experts(x[:0], w[:0], ids[:0], gate_up, down, small_max=PATHS[path])
    assert got.shape == (0, H)


@pytest.mark.parametrize("n", [1, 17, 64])
def test_batch_invariant_mode_matches_reference(n: int) -> None:
    gate_up, down = experts(2)
    x, w, ids = routed(n, seed=n)
    got = cpu_experts(x, w, ids, gate_up, down, tile=16)
    assert max_err(got, reference64(x, w, ids, gate_up, down)) <= 1e-4


@pytest.mark.parametrize("path", ["wide", "narrow"])
def test_bf16_experts(path: str) -> None:
    """bf16 weights: the narrow kernel widens them exactly (fp32 math); the wide path computes in bf16."""
    gate_up, down = experts(4, dtype=torch.bfloat16)
    x, w, ids = routed(33, seed=4)
    want = reference64(x.bfloat16().float(), w, ids, gate_up.float(), down.float())
    got = cpu_experts(x.bfloat16(), w, ids, gate_up, down, small_max=PATHS[path])
    assert max_err(got, want) <= (1e-4 if path == "narrow" else 3e-2 * want.abs().max().item())


def test_moe_module_runs_the_kernels_and_keeps_the_reference() -> None:
    cfg = ModelConfig("olmoe", 96, H, 1, 4, 4, 32, 64, n_experts=E, n_experts_per_tok=K, moe_intermediate_size=INTER)
    moe = MoE(cfg)
    gate_up, down = experts(5)
    with torch.no_grad():
        moe.gate_up.copy_(gate_up)
        moe.down.copy_(down)
        moe.router.weight.normal_(generator=torch.Generator().manual_seed(5))
    x = torch.randn(70, H, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        weights, ids = route(moe.router(x), K, "softmax_topk", False)
        got, ref = moe.experts(x, weights, ids), moe.reference_experts(x, weights, ids)
    assert max_err(got, reference64(x, weights, ids, gate_up, down)) <= 1e-4
    assert (got - ref).abs().max().item() <= 1e-4


# ------------------------------------------------------------------------------------ batch invariance


def _probe_outputs(batch_sizes: list[int], weights_of, kernel: str) -> list[torch.Tensor]:
    """The outputs of 5 fixed probe tokens, computed inside batches of different sizes and companions,
    at different positions."""
    gate_up, down = weights_of
    probes_x, probes_w, probes_ids = routed(5, seed=99)
    outs = []
    for b, size in enumerate(batch_sizes):
        x, w, ids = routed(size, seed=200 + b)
        where = torch.randperm(size + 5, generator=torch.Generator().manual_seed(b))[:5]
        keep = torch.ones(size + 5, dtype=torch.bool)
        keep[where] = False
        xx, ww, ii = (torch.empty(size + 5, *t.shape[1:], dtype=t.dtype) for t in (x, w, ids))
        xx[where], ww[where], ii[where] = probes_x, probes_w, probes_ids
        xx[keep], ww[keep], ii[keep] = x, w, ids
        with kernels.batch_invariant(kernel=kernel, tile=16):
            y = kernels.moe_experts(_Experts(gate_up, down), xx, ww, ii)
        outs.append(y[where])
    return outs


class _Experts:
    def __init__(self, gate_up, down) -> None:
        self.gate_up, self.down = gate_up, down


@pytest.mark.parametrize("kernel", ["narrow", "tiled"])
@pytest.mark.parametrize("fmt", ["fp32", "bf16", "Q8_0", "Q4_0", "Q4_1"])
def test_batch_invariant_mode_is_bit_for_bit(fmt: str, kernel: str) -> None:
    """5 probe tokens alone, and inside batches of 1 to 150 other tokens at random positions: same bits.
    Batch sizes straddle every switch of the default mode (narrow/wide at 32 tokens per expert)."""
    gate_up, down = experts(7, dtype=torch.bfloat16 if fmt == "bf16" else torch.float32)
    if fmt.startswith("Q"):
        gate_up, down = QuantizedTensor.quantize(gate_up, fmt), QuantizedTensor.quantize(down, fmt)
    outs = _probe_outputs([0, 1, 3, 16, 40, 150], (gate_up, down), kernel)
    for other in outs[1:]:
        assert torch.equal(other, outs[0])


def test_default_mode_is_not_batch_invariant_which_is_why_the_mode_exists() -> None:
    """Documents the problem: with adaptive kernels a token's bits depend on its batch."""
    gate_up, down = experts(7)
    probes_x, probes_w, probes_ids = routed(1, seed=99)
    alone = cpu_experts(probes_x, probes_w, probes_ids, gate_up, down)
    x, w, ids = routed(300, seed=5)
    crowd = cpu_experts(
        torch.cat((probes_x, x)), torch.cat((probes_w, w)), torch.cat((probes_ids, ids)), gate_up, down
    )[:1]
    assert (alone - crowd).abs().max().item() <= 1e-5  # same value to rounding ...
    assert not torch.equal(alone, crowd)  # ... but not the same bits


def test_invariant_linear_is_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(96, H, generator=g)
    probe = torch.randn(1, H, generator=g)
    alone = invariant_linear(probe, w, tile=16)
    for n in (2, 17, 100):
        x = torch.randn(n, H, generator=g)
        x[n // 2] = probe[0]
        assert torch.equal(invariant_linear(x, w, tile=16)[n // 2], alone[0])
    assert (alone - probe @ w.T).abs().max().item() <= 1e-4


# ---------------------------------------------------------------------------------------- quantised

QTYPES = ["Q8_0", "Q4_0", "Q4_1"]


@pytest.mark.parametrize("qtype", QTYPES)
def test_quantize_is_bit_exact_with_gguf_and_reads_gguf_blocks(qtype: str) -> None:
    w = torch.randn(3, 40, 96, generator=torch.Generator().manual_seed(8)).numpy()
    w[0, 0, :32] = 0.0  # an all-zero block
    w[1, 2, 32:64] = 5.0  # a constant block
    gq = getattr(GGMLQuantizationType, qtype)
    raw = quantize(w, gq)
    ours = QuantizedTensor.quantize(w, qtype)
    from_file = QuantizedTensor.from_gguf(raw, qtype, w.shape)
    for a, b in zip(ours.arrays, from_file.arrays, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(ours.dequantize().numpy(), dequantize(raw, gq))
    assert ours.gguf_nbytes == raw.nbytes


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("path", ["narrow", "wide", "mixed"])
def test_quantised_experts_match_float64_reference_of_dequantised(qtype: str, path: str) -> None:
    gate_up, down = experts(9)
    qgu, qdn = QuantizedTensor.quantize(gate_up, qtype), QuantizedTensor.quantize(down, qtype)
    for n, allowed in ((1, None), (6, None), (45, [0, 3, 4, 9])):
        x, w, ids = routed(n, seed=n, allowed=allowed)
        want = reference64(x, w, ids, qgu.dequantize(), qdn.dequantize())
        got = cpu_experts(x, w, ids, qgu, qdn, small_max=PATHS[path])
        assert max_err(got, want) <= 1e-4, (qtype, path, n)
    # and the quantisation is real: far from the float weights' result
    assert max_err(got, reference64(x, w, ids, gate_up, down)) > 1e-3


@pytest.mark.parametrize("qtype", QTYPES)
def test_qlinear_matches_float64_reference(qtype: str) -> None:
    g = torch.Generator().manual_seed(10)
    w = QuantizedTensor.quantize(torch.randn(72, 160, generator=g), qtype)
    for n in (1, 3, 9):
        x = torch.randn(n, 160, generator=g)
        want = x.double() @ w.dequantize().double().T
        assert max_err(qlinear(x, w), want) <= 1e-4


def test_quantize_experts_replaces_float_weights() -> None:
    cfg = ModelConfig("olmoe", 96, H, 1, 4, 4, 32, 64, n_experts=E, n_experts_per_tok=K, moe_intermediate_size=INTER)
    model = torch.nn.Sequential(MoE(cfg))
    gate_up, down = experts(11)
    with torch.no_grad():
        model[0].gate_up.copy_(gate_up)
        model[0].down.copy_(down)
    assert kernels.quantize_experts(model, "Q8_0") == 1
    assert model[0].gate_up.numel() == 0 and model[0].quantized[0].qtype == "Q8_0"
    x, w, ids = routed(12, seed=12)
    want = reference64(x, w, ids, model[0].quantized[0].dequantize(), model[0].quantized[1].dequantize())
    assert max_err(model[0].experts(x, w, ids), want) <= 1e-4


def test_bad_inputs_fail_with_a_message() -> None:
    gate_up, down = experts(0)
    x, w, ids = routed(3, seed=0)
    with pytest.raises(ValueError, match="disagree"):
        cpu_experts(x, w, ids, gate_up, down[:, :, :10])
    with pytest.raises(ValueError, match="multiple of 32"):
        QuantizedTensor.quantize(torch.zeros(4, 40), "Q8_0")
    with pytest.raises(ValueError, match="unsupported"):
        QuantizedTensor.quantize(torch.zeros(4, 64), "Q5_K")
