"""Logit parity with `transformers` for tiny random checkpoints loaded through our safetensors loader."""

from __future__ import annotations

import pytest
import torch

from simulacra.inference.kvcache import ContiguousKV
from simulacra.inference.loader import load_transformer
from tests.inference.tiny_models import FAMILIES, build_reference, save_reference

pytestmark = pytest.mark.slow  # transformers is the reference implementation here

BATCHES = [[5], [3, 11, 1, 7], [16, 16]]  # ragged lengths included


def ours_logits(model, seqs: list[torch.Tensor]) -> list[torch.Tensor]:
    kv = ContiguousKV(model.cfg.n_layers, len(seqs))
    kv.set_batch(list(range(len(seqs))), [len(s) for s in seqs])
    tokens = torch.cat(seqs)
    positions = torch.cat([torch.arange(len(s)) for s in seqs])
    with torch.inference_mode():
        return list(model(tokens, positions, kv).split([len(s) for s in seqs]))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(family: str, seed: int, tmp_path) -> None:
    ref = build_reference(family, seed)
    folder = save_reference(ref, tmp_path / family)
    info, model = load_transformer(folder, dtype=torch.float32)
    assert info.format == "safetensors"
    gen = torch.Generator().manual_seed(100 + seed)
    for lengths in BATCHES:
        seqs = [torch.randint(0, ref.config.vocab_size, (n,), generator=gen) for n in lengths]
        ours = ours_logits(model, seqs)
        for seq, got in zip(seqs, ours, strict=True):
            with torch.inference_mode():
                want = ref(seq[None]).logits[0]
            assert want.abs().max() > 0.5  # a real signal, not near-zero logits
            assert (got - want).abs().max().item() <= 1e-4, (family, seed, lengths)


def test_sharded_checkpoint_loads_like_single_file(tmp_path) -> None:
    ref = build_reference("qwen2_moe", 0)
    single = save_reference(ref, tmp_path / "single")
    sharded = save_reference(ref, tmp_path / "sharded", max_shard_size="100KB")
    assert len(list(sharded.glob("*.safetensors"))) > 1
    assert (sharded / "model.safetensors.index.json").is_file()
    _, a = load_transformer(single, dtype=torch.float32)
    _, b = load_transformer(sharded, dtype=torch.float32)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_structure_is_read_from_the_checkpoint(tmp_path) -> None:
    info, model = load_transformer(save_reference(build_reference("qwen2_moe", 0), tmp_path / "q"), dtype=torch.float32)
    cfg = info.config
    assert cfg.moe_layers == [True, False]  # mlp_only_layers=[1]
    assert cfg.attn_bias and cfg.shared_expert_gate and cfg.shared_expert_intermediate_size == 64
    assert info.total_params == sum(p.numel() for p in model.parameters())
    # one MoE layer of 8 experts, 3 active, each expert 3 * 64 * 32 weights
    assert info.total_params - info.active_params == 5 * 3 * 64 * 32
