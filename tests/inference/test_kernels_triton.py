"""The Triton fused-MoE kernel against the float64 reference: on a CUDA GPU when there is one, else on the
CPU through Triton's interpreter (`TRITON_INTERPRET=1`, set only while this module imports Triton and
while its tests run). Skipped, saying why, without Triton."""

from __future__ import annotations

import importlib

import pytest
import torch

from simulacra.inference import kernels
from tests.inference.test_kernels import H, experts, max_err, reference64, routed

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
NO_TRITON = "Triton is not installed (`pip install triton`); the GPU MoE kernel is unchecked"


def _import_triton_experts():
    """Without a GPU, Triton and the kernel module are imported with TRITON_INTERPRET=1: Triton reads it when
    `@triton.jit` wraps a function (its own library's at `import triton`, ours at the kernel module's import),
    which makes the kernels interpreted, on CPU tensors. The variable is put back straight after, so it does
    not leak into the rest of the run (no other code imports Triton without a GPU)."""
    with pytest.MonkeyPatch.context() as mp:
        if not CUDA:
            mp.setenv("TRITON_INTERPRET", "1")
        pytest.importorskip("triton", reason=NO_TRITON)
        return importlib.import_module("simulacra.inference.kernels.triton_moe").triton_experts


triton_experts = _import_triton_experts()


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    """Triton also reads TRITON_INTERPRET while interpreted kernels run: set for this module's tests only."""
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def on(*ts: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(DEVICE) for t in ts]


@pytest.mark.parametrize("block_m", [None, 16])
@pytest.mark.parametrize("n", [1, 7, 40])
def test_triton_fp32_matches_float64_reference(n: int, block_m: int | None) -> None:
    gate_up, down = experts(0)
    x, w, ids = routed(n, seed=n)
    got = triton_experts(*on(x, w, ids, gate_up, down), block_m=block_m).cpu()
    assert got.shape == (n, H)
    assert max_err(got, reference64(x, w, ids, gate_up, down)) <= 1e-4


def test_triton_empty_experts_and_all_to_one_expert() -> None:
    gate_up, down = experts(1)
    x, w, ids = routed(21, seed=3, allowed=[2, 5, 11, 12])
    assert max_err(triton_experts(*on(x, w, ids, gate_up, down)).cpu(), reference64(x, w, ids, gate_up, down)) <= 1e-4
    one = torch.full((21, 1), 7)
    got = triton_experts(*on(x, w[:, :1], one, gate_up, down)).cpu()
    assert max_err(got, reference64(x, w[:, :1], one, gate_up, down)) <= 1e-4
    assert triton_experts(*on(x[:0], w[:0], ids[:0], gate_up, down)).shape == (0, H)


def test_triton_bf16_weights() -> None:
    gate_up, down = experts(4, dtype=torch.bfloat16)
    x, w, ids = routed(9, seed=4)
    want = reference64(x.bfloat16().float(), w, ids, gate_up.float(), down.float())
    got = triton_experts(*on(x.bfloat16(), w, ids, gate_up, down)).cpu()
    assert max_err(got, want) <= 3e-2 * want.abs().max().item()


def test_triton_fixed_block_is_batch_invariant_bit_for_bit() -> None:
    gate_up, down = experts(7)
    probe_x, probe_w, probe_ids = routed(1, seed=99)
    alone = triton_experts(*on(probe_x, probe_w, probe_ids, gate_up, down), block_m=16).cpu()
    for size in (5, 33):
        x, w, ids = routed(size, seed=size)
        where = size // 2
        x[where], w[where], ids[where] = probe_x[0], probe_w[0], probe_ids[0]
        crowd = triton_experts(*on(x, w, ids, gate_up, down), block_m=16).cpu()
        assert torch.equal(crowd[where], alone[0])


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: checks that moe_experts dispatches CUDA tensors to Triton")
def test_moe_experts_dispatches_cuda_tensors_to_triton() -> None:
    gate_up, down = experts(2)
    x, w, ids = routed(12, seed=2)

    class Experts:
        pass

    moe = Experts()
    moe.gate_up, moe.down = on(gate_up, down)
    got = kernels.moe_experts(moe, *on(x, w, ids))
    assert got.is_cuda and max_err(got.cpu(), reference64(x, w, ids, gate_up, down)) <= 1e-4
