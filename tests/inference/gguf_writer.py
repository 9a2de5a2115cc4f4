"""Write tiny GGUF files the way llama.cpp's converter lays them out (names, stacked experts,
permuted Q/K rows for rotary-"normal" architectures), from a `transformers` reference model."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig

ARCH = {
    "llama": "llama",
    "mixtral": "llama",
    "qwen2_moe": "qwen2moe",
    "qwen3_moe": "qwen3moe",
    "olmoe": "olmoe",
    "granitemoe": "granitemoe",
}
PERMUTED = {"llama", "granitemoe"}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf `permute`: rotate-halves rows -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _checkpoint(folder: Path) -> dict[str, np.ndarray]:
    """The tensors as saved on disk (the checkpoint layout, not transformers' in-memory one)."""
    sd = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            sd.update({k: f.get_tensor(k).float().numpy() for k in f.keys()})
    return sd


def quantisation_round_trip(folder: Path, out: Path, qtype: GGMLQuantizationType) -> Path:
    """The same checkpoint with every weight matrix passed through quantise -> dequantise: what a
    correct loader of the quantised GGUF must compute."""
    out.mkdir(parents=True)
    shutil.copy(folder / "config.json", out / "config.json")
    tensors = {}
    for k, v in _checkpoint(folder).items():
        if v.squeeze().ndim >= 2 and qtype != GGMLQuantizationType.F32:  # as write_gguf: vectors stay F32
            v = dequantize(quantize(v, qtype), qtype) if qtype != GGMLQuantizationType.F16 else v.astype(np.float16)
        tensors[k] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    save_file(tensors, out / "model.safetensors")
    return out


def gguf_tensors(cfg, sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF checkpoint tensors -> GGUF tensor names and arrays (PyTorch [out, in] layout)."""
    arch = ARCH[cfg.model_type]
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        hf, b = f"model.layers.{i}.", f"blk.{i}."
        out[b + "attn_norm.weight"] = sd[hf + "input_layernorm.weight"]
        out[b + "ffn_norm.weight"] = sd[hf + "post_attention_layernorm.weight"]
        for src, dst in (("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("o", "attn_output")):
            w = sd[hf + f"self_attn.{src}_proj.weight"]
            if arch in PERMUTED and src in "qk":
                w = _permute(w, cfg.num_attention_heads if src == "q" else cfg.num_key_value_heads)
            out[b + dst + ".weight"] = w
            if hf + f"self_attn.{src}_proj.bias" in sd:
                out[b + dst + ".bias"] = sd[hf + f"self_attn.{src}_proj.bias"]
        for src in ("q", "k"):
            if hf + f"self_attn.{src}_norm.weight" in sd:
                out[b + f"attn_{src}_norm.weight"] = sd[hf + f"self_attn.{src}_norm.weight"]
        moe = hf + "block_sparse_moe."
        if cfg.model_type == "mixtral":
            n = cfg.num_local_experts
            out[b + "ffn_gate_inp.weight"] = sd[moe + "gate.weight"]
            for part, w in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
                out[b + f"ffn_{part}_exps.weight"] = np.stack([sd[moe + f"experts.{e}.{w}.weight"] for e in range(n)])
        elif cfg.model_type == "granitemoe":
            gate, up = np.split(sd[moe + "input_linear.weight"], 2, axis=1)
            out[b + "ffn_gate_inp.weight"] = sd[moe + "router.layer.weight"]
            out[b + "ffn_gate_exps.weight"], out[b + "ffn_up_exps.weight"] = gate, up
            out[b + "ffn_down_exps.weight"] = sd[moe + "output_linear.weight"]
        elif hf + "mlp.gate.weight" in sd:  # qwen2/3-moe, olmoe
            n = cfg.num_experts
            out[b + "ffn_gate_inp.weight"] = sd[hf + "mlp.gate.weight"]
            for part in ("gate", "up", "down"):
                out[b + f"ffn_{part}_exps.weight"] = np.stack(
                    [sd[hf + f"mlp.experts.{e}.{part}_proj.weight"] for e in range(n)]
                )
                if hf + f"mlp.shared_expert.{part}_proj.weight" in sd:
                    out[b + f"ffn_{part}_shexp.weight"] = sd[hf + f"mlp.shared_expert.{part}_proj.weight"]
            if hf + "mlp.shared_expert_gate.weight" in sd:
                out[b + "ffn_gate_inp_shexp.weight"] = sd[hf + "mlp.shared_expert_gate.weight"][0]
        else:  # dense FFN
            for part in ("gate", "up", "down"):
                out[b + f"ffn_{part}.weight"] = sd[hf + f"mlp.{part}_proj.weight"]
    return out


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """The divisor of each rotary frequency, as llama.cpp's converter writes it (`rope_freqs.weight`):
    Llama-3 scaling is not in a GGUF's metadata."""
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def byte_vocab(size: int) -> list[str]:
    """`size` single-byte tokens in GPT-2's byte-level spelling: printable ASCII, then "Ġ" (space) and
    "Ċ" (newline). 96 tokens cover them all, so the tiny models' ids and texts map one to one."""
    tokens = [chr(c) for c in range(33, 127)] + ["\u0120", "\u010a"]
    if size > len(tokens):
        raise ValueError(f"a byte vocabulary has at most {len(tokens)} single-byte tokens, asked for {size}")
    return tokens[:size]


def write_gguf(
    folder: Path, path: Path, qtype: GGMLQuantizationType = GGMLQuantizationType.F32, tokenizer: bool = False
) -> Path:
    """Convert the HF checkpoint in `folder` to GGUF; 2-D and 3-D weights in `qtype`, the rest F32.
    With `tokenizer`, a byte-level vocabulary (`byte_vocab`) too, so `load_model` and the engine take it."""
    cfg = AutoConfig.from_pretrained(folder)
    arch = ARCH[cfg.model_type]
    w = GGUFWriter(str(path), arch)
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt2")
        w.add_token_list(byte_vocab(cfg.vocab_size))
    w.add_uint32(f"{arch}.vocab_size", cfg.vocab_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    n_experts = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", 0)
    if n_experts:
        w.add_expert_count(n_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
        w.add_expert_feed_forward_length(getattr(cfg, "moe_intermediate_size", None) or cfg.intermediate_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    if getattr(cfg, "shared_expert_intermediate_size", 0):
        w.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    if cfg.model_type == "olmoe" and cfg.clip_qkv is not None:
        w.add_clamp_kqv(cfg.clip_qkv)
    if cfg.model_type == "granitemoe":
        w.add_float32(f"{arch}.embedding_scale", cfg.embedding_multiplier)
        w.add_float32(f"{arch}.residual_scale", cfg.residual_multiplier)
        w.add_float32(f"{arch}.attention.scale", cfg.attention_multiplier)
        w.add_float32(f"{arch}.logit_scale", cfg.logits_scaling)
    tensors = gguf_tensors(cfg, _checkpoint(folder))
    if (cfg.rope_parameters or {}).get("rope_type") == "llama3":
        tensors["rope_freqs.weight"] = llama3_rope_factors(cfg.rope_parameters, head_dim)
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim >= 2 and qtype != GGMLQuantizationType.F32:
            if qtype == GGMLQuantizationType.F16:
                w.add_tensor(name, arr.astype(np.float16))
            else:
                w.add_tensor(name, quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
