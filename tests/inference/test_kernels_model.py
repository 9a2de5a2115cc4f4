"""The kernels inside whole models: tiny random checkpoints of every MoE family, and GGUF files whose
quantised expert tensors are kept as stored (never dequantised to float in memory), by `load_model`
itself or attached afterwards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from simulacra.inference import gguf_loader, kernels, model
from simulacra.inference.gguf_loader import open_gguf
from simulacra.inference.loader import describe_model, load_model, load_transformer
from tests.inference.gguf_writer import write_gguf
from tests.inference.test_parity import ours_logits
from tests.inference.tiny_models import MOE_FAMILIES, build_reference, save_reference

SEQS = [torch.arange(11) * 7 % 96, torch.arange(3), torch.tensor([5])]


def gguf_file(folder: Path, qtype: Q) -> Path:
    """The family's checkpoint as a GGUF file with `qtype` weights and a byte vocabulary (written once)."""
    path = folder / f"{qtype.name}.gguf"
    return path if path.exists() else write_gguf(folder / "hf", path, qtype, tokenizer=True)


def moe_layers(m: model.Transformer) -> list[model.MoE]:
    return [block.ffn for block in m.layers if isinstance(block.ffn, model.MoE)]


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
    path = gguf_file(folder, qtype)
    _, dequantised = load_transformer(path, dtype=torch.float32, quantized_experts=False)
    want = ours_logits(dequantised, SEQS)
    _, quantised = load_transformer(path, dtype=torch.float32, quantized_experts=False)
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


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0])
def test_load_model_keeps_gguf_experts_quantised(checkpoint, qtype, monkeypatch) -> None:
    """`load_model` builds the experts from the file's blocks, never decodes them to float, and computes
    what the all-float load (`quantized_experts=False`, the path every load took before) computes."""
    family, folder = checkpoint
    path = gguf_file(folder, qtype)
    decoded = []
    real_dequantize = gguf_loader.dequantize

    def recording_dequantize(data: np.ndarray, kind: Q) -> np.ndarray:
        decoded.append(data.ndim)
        return real_dequantize(data, kind)

    monkeypatch.setattr(gguf_loader, "dequantize", recording_dequantize)
    lm = load_model(path, dtype=torch.float32)
    assert decoded and max(decoded) <= 2, "a stacked expert tensor (3-D) was dequantised"
    monkeypatch.undo()
    flat = load_model(path, dtype=torch.float32, quantized_experts=False)

    assert lm.info.expert_quantization == describe_model(path).expert_quantization == qtype.name
    assert flat.info.expert_quantization is None
    cfg = lm.config
    shapes = (
        (cfg.n_experts, 2 * cfg.moe_intermediate_size, cfg.hidden_size),
        (cfg.n_experts, cfg.hidden_size, cfg.moe_intermediate_size),
    )
    for q_moe, f_moe in zip(moe_layers(lm.model), moe_layers(flat.model), strict=True):
        assert q_moe.gate_up.numel() == q_moe.down.numel() == 0  # no float experts held
        assert [(q.qtype, q.shape) for q in q_moe.quantized] == [(qtype.name, s) for s in shapes]
        assert getattr(f_moe, "quantized", None) is None
        assert (tuple(f_moe.gate_up.shape), tuple(f_moe.down.shape)) == shapes
        for q, w in zip(q_moe.quantized, (f_moe.gate_up, f_moe.down), strict=True):
            assert torch.equal(q.dequantize(), w)  # the same weights, bit for bit
            assert q.nbytes * 3 < w.numel() * w.element_size()  # Q8_0: 36, Q4_0: 20 bytes per 128 of fp32
    for a, b in zip(ours_logits(lm.model, SEQS), ours_logits(flat.model, SEQS), strict=True):
        assert (a - b).abs().max().item() <= 1e-4, (family, qtype.name)


def test_other_expert_types_still_load_as_float(checkpoint) -> None:
    """Q5_0 (like the K-quants) has no quantised kernel: its experts are dequantised, as before."""
    family, folder = checkpoint
    path = gguf_file(folder, Q.Q5_0)
    info, m = load_transformer(path, dtype=torch.float32)
    assert info.expert_quantization is None
    assert all(getattr(moe, "quantized", None) is None and moe.gate_up.dim() == 3 for moe in moe_layers(m))
