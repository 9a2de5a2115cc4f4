"""One model configuration for every supported family, read from GGUF metadata or a HF `config.json`.

Dense Llama-style models and the MoE families differ only in a handful of switches (router
normalisation, shared experts, q/k norm, Granite's multipliers), so one dataclass describes them all
and one `Transformer` runs them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulacra.inference.errors import ModelLoadError

# HF `model_type` -> our family name. GGUF architectures map through GGUF_ARCH below.
HF_FAMILIES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "mixtral": "mixtral",
    "qwen2_moe": "qwen2_moe",
    "qwen3_moe": "qwen3_moe",
    "olmoe": "olmoe",
    "granitemoe": "granitemoe",
}
GGUF_ARCH = {
    "llama": "llama",  # Mixtral is stored as arch "llama" with expert tensors
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "olmoe": "olmoe",
    "granitemoe": "granitemoe",
}
# How each family turns router logits into expert weights.
#   softmax_topk: softmax over all experts, take the top k, renormalise if norm_topk_prob.
#   topk_softmax: take the top k logits, softmax over those k (GraniteMoE).
ROUTER_MODE = {"granitemoe": "topk_softmax"}
# Default for norm_topk_prob when the file does not say (llama.cpp's choices per architecture).
NORM_TOPK_DEFAULT = {"mixtral": True, "llama": True, "qwen2_moe": False, "qwen3_moe": True, "olmoe": False}
ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass
class ModelConfig:
    family: str
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense FFN width (dense layers of MoE models too)
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": ..., "factor": ..., ...}
    max_position: int = 4096
    tie_embeddings: bool = False
    attn_bias: bool = False
    qk_norm: str | None = None  # None, "head" (per head, Qwen3) or "full" (whole projection, OLMoE)
    clip_qkv: float | None = None
    # Mixture of experts; n_experts == 0 means dense.
    n_experts: int = 0
    n_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    router_mode: str = "softmax_topk"
    shared_expert_intermediate_size: int = 0
    shared_expert_gate: bool = False
    moe_layers: list[bool] = field(default_factory=list)  # per layer: MoE FFN (True) or dense
    # Granite's scalars; 1.0 / None mean "as in Llama".
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float | None = None  # replaces 1/sqrt(head_dim) when set
    logits_scaling: float = 1.0

    def __post_init__(self) -> None:
        if not self.moe_layers:
            self.moe_layers = [self.n_experts > 0] * self.n_layers

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    def inactive_params(self) -> int:
        """Parameters a token does not touch: the experts its router did not pick."""
        per_expert = 3 * self.hidden_size * self.moe_intermediate_size
        return sum(self.moe_layers) * (self.n_experts - self.n_experts_per_tok) * per_expert


def _require(src: dict[str, Any], key: str, where: str | Path) -> Any:
    if key not in src or src[key] is None:
        raise ModelLoadError(where, f"required field {key!r} is missing")
    return src[key]


def _moe_layer_mask(n_layers: int, n_experts: int, sparse_step: int, mlp_only: list[int]) -> list[bool]:
    step = max(sparse_step, 1)
    return [n_experts > 0 and i not in mlp_only and (i + 1) % step == 0 for i in range(n_layers)]


def _rope_scaling(raw: dict[str, Any] | None, where: str | Path) -> dict[str, Any] | None:
    if not raw:
        return None
    raw = dict(raw)
    kind = raw.get("rope_type") or raw.get("type") or "default"
    if kind == "default":
        return None
    if kind not in ROPE_TYPES:
        raise ModelLoadError(where, f"RoPE scaling type {kind!r} is not supported", f"supported: {ROPE_TYPES}")
    raw["rope_type"] = kind
    return raw


def config_from_hf(cfg: dict[str, Any], where: str | Path) -> ModelConfig:
    """Read a Hugging Face `config.json` (transformers 4.x and 5.x spellings)."""
    model_type = cfg.get("model_type")
    if model_type not in HF_FAMILIES:
        raise ModelLoadError(
            where,
            f"unsupported architecture model_type={model_type!r}",
            f"supported: {', '.join(sorted(HF_FAMILIES))}",
        )
    family = HF_FAMILIES[model_type]
    if cfg.get("hidden_act", "silu") not in ("silu", "swish"):
        raise ModelLoadError(where, f"unsupported activation hidden_act={cfg['hidden_act']!r}", "only SiLU")
    n_heads = _require(cfg, "num_attention_heads", where)
    hidden = _require(cfg, "hidden_size", where)
    n_layers = _require(cfg, "num_hidden_layers", where)
    rope = cfg.get("rope_parameters") or {}
    rope_theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    n_experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    inter = _require(cfg, "intermediate_size", where)
    moe_inter = cfg.get("moe_intermediate_size") or inter
    mlp_only = list(cfg.get("mlp_only_layers") or [])
    return ModelConfig(
        family=family,
        vocab_size=_require(cfg, "vocab_size", where),
        hidden_size=hidden,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
        head_dim=cfg.get("head_dim") or hidden // n_heads,
        intermediate_size=inter,
        rms_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope_theta),
        rope_scaling=_rope_scaling(rope if rope.get("rope_type") else cfg.get("rope_scaling"), where),
        max_position=cfg.get("max_position_embeddings", 4096),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        clip_qkv=cfg.get("clip_qkv"),
        n_experts=n_experts,
        n_experts_per_tok=cfg.get("num_experts_per_tok", 0) if n_experts else 0,
        moe_intermediate_size=moe_inter if n_experts else 0,
        norm_topk_prob=bool(cfg.get("norm_topk_prob", NORM_TOPK_DEFAULT.get(family, False))),
        router_mode=ROUTER_MODE.get(family, "softmax_topk"),
        shared_expert_intermediate_size=cfg.get("shared_expert_intermediate_size") or 0,
        moe_layers=_moe_layer_mask(n_layers, n_experts, cfg.get("decoder_sparse_step", 1), mlp_only),
        embedding_multiplier=cfg.get("embedding_multiplier", 1.0),
        residual_multiplier=cfg.get("residual_multiplier", 1.0),
        attention_multiplier=cfg.get("attention_multiplier"),
        logits_scaling=cfg.get("logits_scaling", 1.0),
    )


def config_from_gguf(meta: dict[str, Any], where: str | Path) -> ModelConfig:
    """Read GGUF metadata (keys as llama.cpp's converter writes them)."""
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCH:
        raise ModelLoadError(
            where, f"unsupported GGUF architecture {arch!r}", f"supported: {', '.join(sorted(GGUF_ARCH))}"
        )
    family = GGUF_ARCH[arch]

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    def need(key: str) -> Any:
        return _require(meta, f"{arch}.{key}", where)

    n_heads = need("attention.head_count")
    hidden = need("embedding_length")
    n_layers = need("block_count")
    n_kv = get("attention.head_count_kv", n_heads)
    n_kv = n_kv[0] if isinstance(n_kv, list) else n_kv
    n_experts = get("expert_count", 0) or 0
    if family == "llama" and n_experts:
        family = "mixtral"
    vocab = get("vocab_size") or len(_require(meta, "tokenizer.ggml.tokens", where))
    rope_kind = get("rope.scaling.type")
    rope_scaling = None
    if rope_kind and rope_kind not in ("none", "default"):
        rope_scaling = {
            "rope_type": rope_kind,
            "factor": get("rope.scaling.factor", 1.0),
            "original_max_position_embeddings": get("rope.scaling.original_context_length"),
        }
    inter = get("feed_forward_length", 0)
    inter = inter[0] if isinstance(inter, list) else inter
    return ModelConfig(
        family=family,
        vocab_size=vocab,
        hidden_size=hidden,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=get("attention.key_length") or hidden // n_heads,
        intermediate_size=inter,
        rms_eps=get("attention.layer_norm_rms_epsilon", 1e-6),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(rope_scaling, where),
        max_position=get("context_length", 4096),
        clip_qkv=get("attention.clamp_kqv"),
        n_experts=n_experts,
        n_experts_per_tok=get("expert_used_count", 0) if n_experts else 0,
        moe_intermediate_size=(get("expert_feed_forward_length") or inter) if n_experts else 0,
        norm_topk_prob=bool(get("expert_weights_norm", NORM_TOPK_DEFAULT.get(family, False))),
        router_mode=ROUTER_MODE.get(family, "softmax_topk"),
        shared_expert_intermediate_size=get("expert_shared_feed_forward_length", 0) or 0,
        embedding_multiplier=get("embedding_scale", 1.0),
        residual_multiplier=get("residual_scale", 1.0),
        attention_multiplier=get("attention.scale"),
        logits_scaling=get("logit_scale", 1.0),
    )
