"""Dense linears on oneDNN's pre-packed bf16 weights, and the small-pass thread policy (kernels/dense.py)."""

import pytest
import torch
from torch import nn

from simulacra.inference.kernels import dense

needs_pack = pytest.mark.skipif(
    not dense.can_pack(torch.zeros(2, 2, dtype=torch.bfloat16)), reason="torch built without oneDNN linear packing"
)


@needs_pack
@pytest.mark.parametrize("rows", [1, 3, 16, 64, 300])
def test_packed_linear_gives_the_bits_of_f_linear(rows: int) -> None:
    g = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, 64, generator=g).to(torch.bfloat16)
    bias = torch.randn(96, generator=g).to(torch.bfloat16)
    x = torch.randn(rows, 64, generator=g).to(torch.bfloat16)
    packed = dense.pack_weight(weight)
    assert torch.equal(dense.packed_linear(x, packed, bias), nn.functional.linear(x, weight, bias))
    batched = dense.packed_linear(x.view(1, rows, 64), packed)
    assert torch.equal(batched, nn.functional.linear(x, weight).view(1, rows, 96))


def test_serial_ops_runs_small_passes_on_one_thread_and_restores_the_count() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with dense.serial_ops(dense.SERIAL_TOKENS):
            assert torch.get_num_threads() == 1
            assert dense.matmul_threads(dense.PARALLEL_ROWS) == 2  # wide matmuls take the threads back
            assert dense.matmul_threads(dense.PARALLEL_ROWS - 1) == 0  # narrow ones stay on one
            x = torch.randn(dense.PARALLEL_ROWS, 8)
            dense.linear(x, torch.randn(4, 8), None, None)
            assert torch.get_num_threads() == 1  # ... and give it back afterwards
        assert torch.get_num_threads() == 2
        with dense.serial_ops(dense.SERIAL_TOKENS + 1):  # big passes keep every thread
            assert torch.get_num_threads() == 2
            assert dense.matmul_threads(1000) == 0
        with pytest.raises(RuntimeError), dense.serial_ops(1):
            raise RuntimeError("a failing forward pass")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@needs_pack
def test_pack_linears_packs_bf16_layers_once_and_keeps_their_output() -> None:
    from simulacra.inference.model import Linear

    layers = nn.Sequential(Linear(32, 48, bias=True), Linear(48, 8, bias=False)).to(torch.bfloat16)
    fp32 = Linear(8, 8, bias=False)
    model = nn.Sequential(layers, fp32)
    x = torch.randn(5, 32).to(torch.bfloat16)
    expected = layers(x)
    assert dense.pack_linears(model) == 2
    first = layers[0].packed
    assert first is not None and fp32.packed is None  # fp32 weights are left to the plain GEMM
    assert dense.pack_linears(model) == 2 and layers[0].packed is first  # idempotent
    assert torch.equal(layers(x), expected)
