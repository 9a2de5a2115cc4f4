"""Tiny random checkpoints of every supported family, built offline with `transformers`.

Weights are drawn with a larger spread than transformers' default init so that logits and router
choices are far from trivial; what the parity tests compare is then a real computation.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from simulacra.inference.loader import LoadedModel

COMMON = dict(
    vocab_size=96,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)

FAMILIES: dict[str, dict] = {
    "llama": dict(model_type="llama", intermediate_size=96, tie_word_embeddings=True),
    "llama_llama3_rope": dict(
        model_type="llama",
        intermediate_size=96,
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=10000.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
    "llama_linear_rope": dict(
        model_type="llama",
        intermediate_size=96,
        rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=4.0),
    ),
    "mixtral": dict(model_type="mixtral", intermediate_size=64, num_local_experts=8, num_experts_per_tok=2),
    "qwen2_moe": dict(
        model_type="qwen2_moe",
        intermediate_size=96,
        moe_intermediate_size=32,
        num_experts=8,
        num_experts_per_tok=3,
        shared_expert_intermediate_size=64,
        norm_topk_prob=False,
        decoder_sparse_step=1,
        mlp_only_layers=[1],
    ),
    "qwen3_moe": dict(
        model_type="qwen3_moe",
        intermediate_size=96,
        moe_intermediate_size=32,
        num_experts=8,
        num_experts_per_tok=2,
        head_dim=24,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    ),
    "olmoe": dict(
        model_type="olmoe",
        intermediate_size=32,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=False,
        clip_qkv=2.5,
    ),
    "granitemoe": dict(
        model_type="granitemoe",
        intermediate_size=32,
        num_local_experts=8,
        num_experts_per_tok=2,
        embedding_multiplier=4.0,
        residual_multiplier=0.5,
        attention_multiplier=0.1,
        logits_scaling=2.0,
    ),
}
MOE_FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe"]


def build_reference(family: str, seed: int):
    """A `transformers` causal LM of the family with random weights (fp32, eval mode)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(FAMILIES[family])
    model_type = spec.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **COMMON, **spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    spread_init(model)
    return model.eval()


def spread_init(model: torch.nn.Module, generator: torch.Generator | None = None) -> None:
    """A wider spread than the default init (norm weights near 1, others N(0, 1/fan_in)): random
    models then give peaked, varied logits, so comparisons between paths are not all near-ties."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else noise / p.shape[-1] ** 0.5)


def tiny_llama_with_packaged_tokenizer() -> LoadedModel:
    """A 2-layer random fp32 Llama as wide as SmolLM2's vocabulary, with the packaged tokenizer: real
    text and real schemas go through it, at a tiny model's speed."""
    from simulacra.inference.config import ModelConfig
    from simulacra.inference.loader import LoadedModel, ModelInfo, load_tokenizer
    from simulacra.inference.model import Transformer

    tok = load_tokenizer()
    cfg = ModelConfig(
        family="llama",
        vocab_size=tok.vocab_size,
        hidden_size=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        intermediate_size=96,
        max_position=512,
        tie_embeddings=True,
    )
    model = Transformer(cfg)
    model.tie_weights()
    spread_init(model, torch.Generator().manual_seed(7))
    params = sum(p.numel() for p in model.parameters())
    info = ModelInfo(path=Path("tiny-llama"), format="safetensors", config=cfg, quantization="F32", total_params=params)
    return LoadedModel(info, model.eval(), tok)


def save_reference(model, folder: Path, max_shard_size: str | None = None) -> Path:
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    return folder
