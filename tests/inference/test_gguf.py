"""The GGUF path: tiny files written like llama.cpp's converter give the logits of the same weights
loaded from safetensors; quantised files stay close to them."""

from __future__ import annotations

import json

import pytest
import torch
from gguf import GGMLQuantizationType as Q

from simulacra.inference.errors import ModelLoadError
from simulacra.inference.loader import describe_model, load_transformer
from tests.inference.gguf_writer import quantisation_round_trip, write_gguf
from tests.inference.test_parity import ours_logits
from tests.inference.tiny_models import MOE_FAMILIES, build_reference, save_reference


@pytest.fixture(scope="module", params=["llama", *MOE_FAMILIES])
def checkpoint(request, tmp_path_factory):
    family = request.param
    folder = tmp_path_factory.mktemp(family)
    save_reference(build_reference(family, seed=3), folder / "hf")
    return family, folder


def test_gguf_logits_equal_safetensors_logits(checkpoint) -> None:
    family, folder = checkpoint
    gguf_path = write_gguf(folder / "hf", folder / "f32.gguf")
    _, from_st = load_transformer(folder / "hf", dtype=torch.float32)
    info, from_gguf = load_transformer(gguf_path, dtype=torch.float32)
    assert info.format == "gguf" and info.config.family == family
    assert info.config.moe_layers == from_st.cfg.moe_layers
    gen = torch.Generator().manual_seed(7)
    seqs = [torch.randint(0, 96, (n,), generator=gen) for n in (6, 13, 1)]
    for a, b in zip(ours_logits(from_st, seqs), ours_logits(from_gguf, seqs), strict=True):
        assert (a - b).abs().max().item() <= 1e-5


def test_llama3_rope_scaling_comes_from_rope_freqs(tmp_path) -> None:
    """Llama-3 scaling reaches a GGUF only as the `rope_freqs.weight` factors; without them the
    logits were 5 logits off (found by `make check-peer-gguf`, llama.cpp's own converter)."""
    save_reference(build_reference("llama_llama3_rope", seed=3), tmp_path / "hf")
    gguf_path = write_gguf(tmp_path / "hf", tmp_path / "f32.gguf")
    _, from_st = load_transformer(tmp_path / "hf", dtype=torch.float32)
    _, from_gguf = load_transformer(gguf_path, dtype=torch.float32)
    seqs = [torch.randint(0, 96, (n,), generator=torch.Generator().manual_seed(7)) for n in (40, 3)]
    for a, b in zip(ours_logits(from_st, seqs), ours_logits(from_gguf, seqs), strict=True):
        assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0])
def test_quantised_gguf_computes_with_its_dequantised_weights(checkpoint, qtype) -> None:
    """Block layout, dimension order, stacked experts and the Q/K un-permutation all survive
    quantisation: the logits equal those of the checkpoint whose weights went through the same
    quantise -> dequantise round trip."""
    family, folder = checkpoint
    path = write_gguf(folder / "hf", folder / f"{qtype.name}.gguf", qtype)
    assert describe_model(path).quantization == qtype.name
    expected = quantisation_round_trip(folder / "hf", folder / f"{qtype.name}-rt", qtype)
    _, want_model = load_transformer(expected, dtype=torch.float32)
    _, got_model = load_transformer(path, dtype=torch.float32)
    _, exact_model = load_transformer(folder / "hf", dtype=torch.float32)
    seqs = [torch.arange(10) * 7 % 96, torch.arange(3)]
    want, got = ours_logits(want_model, seqs), ours_logits(got_model, seqs)
    for w, g in zip(want, got, strict=True):
        assert (w - g).abs().max().item() <= 1e-4, (family, qtype.name)
    assert not torch.equal(ours_logits(exact_model, seqs)[0], got[0])  # the file really was quantised


@pytest.mark.parametrize("quantized_experts", [True, False])
def test_expert_shapes_that_disagree_with_the_metadata_fail_with_a_message(tmp_path, quantized_experts) -> None:
    """A file whose expert FFN length (metadata) does not match its expert tensors names the weight and
    both shapes, whether the experts are kept quantised or decoded to float."""
    save_reference(build_reference("mixtral", seed=3), tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))  # tensors: 64
    path = write_gguf(tmp_path / "hf", tmp_path / "bad.gguf", Q.Q8_0)
    with pytest.raises(ModelLoadError, match=r"layers\.0\.ffn\.gate_up.* shape \(8, 128, 64\) but the config implies"):
        load_transformer(path, quantized_experts=quantized_experts)
