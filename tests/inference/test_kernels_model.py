"""The kernels inside whole models: tiny random checkpoints of every MoE family, and GGUF files whose
quantised expert tensors are attached as stored (never dequantised to float in memory)."""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as Q

from simulacra.inference import kernels, model
from simulacra.inference.gguf_loader import open_gguf
from simulacra.inference.loader import load_transformer
from tests.inference.gguf_writer import write_gguf
from tests.inference.test_parity import ours_logits
from tests.inference.tiny_models import MOE_FAMILIES, build_reference, save_reference

SEQS = [torch.arange(11) * 7 % 96, torch.arange(3), torch.tensor([5])]


@pytest.fixture(scope="module", params=MOE_FAMILIES)
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    save_reference(build_reference(request.param, seed=4), folder / "hf")
    return request.param, folder


def test_kernels_equal_the_reference_experts_in_a_model(checkpoint, monkeypatch) -> None:
    family, folder = checkpoint
    _, m = load_transformer(folder / "hf", dtype=torch.float32)
    with_kernels = ours_logits(m, SEQS)
    monkeypatch.setattr(model, "MOE_KERNELS", False)
    reference = ours_logits(m, SEQS)
    for a, b in zip(with_kernels, reference, strict=True):
        assert (a - b).abs().max().item() <= 1e-4, family


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_gguf_quantised_experts_compute_like_their_dequantised_weights(checkpoint, qtype) -> None:
    family, folder = checkpoint
    path = write_gguf(folder / "hf", folder / f"{qtype.name}.gguf", qtype)
    _, dequantised = load_transformer(path, dtype=torch.float32)
    want = ours_logits(dequantised, SEQS)
    _, quantised = load_transformer(path, dtype=torch.float32)
    reader, _ = open_gguf(path)
    n_moe = sum(quantised.cfg.moe_layers)
    assert kernels.attach_gguf_experts(quantised, reader) == n_moe
    moe = next(m for m in quantised.modules() if isinstance(m, model.MoE))
    assert moe.gate_up.numel() == 0 and moe.quantized[0].qtype == qtype.name  # no float experts left
    for small_max in (1, None):  # all wide (dequantise per expert) / all narrow (quants read in registers)
        kernels.settings.small_max_quantised = small_max
        try:
            got = ours_logits(quantised, SEQS)
        finally:
            kernels.settings.small_max_quantised = kernels.KernelSettings.small_max_quantised
        for a, b in zip(got, want, strict=True):
            assert (a - b).abs().max().item() <= 1e-4, (family, qtype.name, small_max)
