"""Write a moefied model as a Mixtral checkpoint: a Hugging Face safetensors folder, or a GGUF file.

Mixtral is the one MoE layout that both our loader and `transformers` read and whose routing is plain
top-k over a softmax, renormalised (see `split.py` for why that still gives weight ~1 per expert).
The GGUF is llama.cpp's Mixtral spelling (architecture `llama` with `ffn_*_exps` tensors); every
tensor outside the FFNs is copied from the source GGUF as stored (no re-quantisation), and the
experts are written in the type asked for (Q8_0 / Q4_0 / Q4_1 stay quantised in the engine).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import quantize
from safetensors.torch import save_file

from simulacra.inference.model import Transformer
from simulacra.inference.moefy.split import MoefyError
from simulacra.inference.tokenizer import Tokenizer

EXPERT_TYPES = {
    "f32": GGMLQuantizationType.F32,
    "f16": GGMLQuantizationType.F16,
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_1": GGMLQuantizationType.Q4_1,
}
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def hf_config(moe: Transformer) -> dict:
    """`config.json` of a MixtralForCausalLM with the MoE's shapes."""
    c = moe.cfg
    return {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.moe_intermediate_size,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_position,
        "rms_norm_eps": c.rms_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "num_local_experts": c.n_experts,
        "num_experts_per_tok": c.n_experts_per_tok,
        "router_jitter_noise": 0.0,
        "output_router_logits": False,
        "sliding_window": None,
        "attention_dropout": 0.0,
        "tie_word_embeddings": c.tie_embeddings,
        "torch_dtype": "float32",
    }


def hf_tensors(moe: Transformer, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The MoE's weights under Mixtral's checkpoint names (per-expert w1 = gate, w3 = up, w2 = down)."""
    c = moe.cfg
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    out = {"model.embed_tokens.weight": moe.embed.weight, "model.norm.weight": moe.norm.weight}
    if not c.tie_embeddings:
        out["lm_head.weight"] = moe.lm_head.weight
    for i, block in enumerate(moe.layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = block.attn_norm.weight
        out[p + "post_attention_layernorm.weight"] = block.ffn_norm.weight
        wq, wk, wv = block.attn.wqkv.weight.split((q, kv, kv))
        out |= {p + "self_attn.q_proj.weight": wq, p + "self_attn.k_proj.weight": wk}
        out |= {p + "self_attn.v_proj.weight": wv, p + "self_attn.o_proj.weight": block.attn.wo.weight}
        ffn = block.ffn
        out[p + "block_sparse_moe.gate.weight"] = ffn.router.weight
        gate, up = ffn.gate_up.chunk(2, dim=1)
        for e in range(c.n_experts):
            x = p + f"block_sparse_moe.experts.{e}."
            out |= {x + "w1.weight": gate[e], x + "w3.weight": up[e], x + "w2.weight": ffn.down[e]}
    # the router keeps fp32: its logits are scaled small and only their order and tiny spread matter
    return {
        k: v.detach().to(torch.float32 if "gate.weight" in k else dtype).contiguous().clone() for k, v in out.items()
    }


def _tokenizer_files(tok: Tokenizer, out: Path, source: Path) -> None:
    """Copy a HF source's tokenizer files, or write a GGUF source's tokenizer as `tokenizer.json`."""
    if source.is_dir():
        for name in _TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy(source / name, out / name)
        return
    tok.backend.save(str(out / "tokenizer.json"))
    config: dict = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": tok.add_bos}
    for key, tid in (("bos_token", tok.bos_id), ("eos_token", tok.eos_id), ("pad_token", tok.pad_id)):
        if tid is not None:
            config[key] = tok.id_to_token(tid)
    if tok.chat_template:
        config["chat_template"] = tok.chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))


def write_hf(
    moe: Transformer, out: Path, tokenizer: Tokenizer, source: Path, dtype: torch.dtype = torch.float32
) -> Path:
    """A Mixtral folder: config.json, model.safetensors and the tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    config = hf_config(moe) | {"torch_dtype": str(dtype).removeprefix("torch.")}
    for key, tid in (("bos_token_id", tokenizer.bos_id), ("eos_token_id", tokenizer.eos_id)):
        if tid is not None:
            config[key] = tid
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file(hf_tensors(moe, dtype), str(out / "model.safetensors"), metadata={"format": "pt"})
    _tokenizer_files(tokenizer, out, source)
    return out


_DENSE_FFN = ("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")


def copy_field(w: GGUFWriter, reader: GGUFReader, key: str) -> None:
    """Copy one metadata field as stored (type included)."""
    f = reader.fields[key]
    vtype = f.types[0]
    sub = f.types[1] if vtype == GGUFValueType.ARRAY and len(f.types) > 1 else None
    w.add_key_value(key, f.contents(), vtype, sub)


def _as_gguf(t: torch.Tensor, qtype: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType | None]:
    arr = np.ascontiguousarray(t.detach().float().numpy())
    if qtype == GGMLQuantizationType.F32:
        return arr, None
    if qtype == GGMLQuantizationType.F16:
        return arr.astype(np.float16), None
    return quantize(arr, qtype), qtype


def write_gguf(moe: Transformer, out: Path, source: Path, expert_type: str = "f16") -> Path:
    """A llama.cpp-style Mixtral GGUF: the source GGUF's metadata (tokenizer, RoPE) and non-FFN
    tensors as stored, routers in F32, experts in `expert_type`."""
    if source.is_dir():
        raise MoefyError(
            "GGUF output copies the tokenizer and attention tensors from a GGUF source, and this model is a "
            "Hugging Face folder; write the safetensors folder (-o DIR) or convert the dense model to GGUF first"
        )
    if expert_type not in EXPERT_TYPES:
        raise MoefyError(f"unknown expert type {expert_type!r}; use one of {', '.join(EXPERT_TYPES)}")
    qtype = EXPERT_TYPES[expert_type]
    reader = GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama":
        raise MoefyError(f"the source GGUF's architecture is {arch!r}; moefy writes Mixtral from 'llama' models")
    c = moe.cfg
    if qtype not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16) and (
        c.hidden_size % 32 or c.moe_intermediate_size % 32
    ):
        raise MoefyError(
            f"{expert_type} packs rows in blocks of 32, but hidden size {c.hidden_size} / expert size "
            f"{c.moe_intermediate_size} is not a multiple of 32; use --expert-type f16 or fewer experts"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(str(out), arch)
    overridden = {f"{arch}.feed_forward_length", "general.name", "general.file_type"}
    for key in reader.fields:
        if not key.startswith("GGUF.") and key != "general.architecture" and key not in overridden:
            copy_field(w, reader, key)
    name = reader.fields["general.name"].contents() if "general.name" in reader.fields else source.stem
    w.add_name(f"{name} MoE {c.n_experts}x{c.moe_intermediate_size} top-{c.n_experts_per_tok}")
    w.add_feed_forward_length(c.moe_intermediate_size)
    w.add_expert_count(c.n_experts)
    w.add_expert_used_count(c.n_experts_per_tok)
    w.add_expert_feed_forward_length(c.moe_intermediate_size)
    w.add_expert_weights_norm(True)
    for t in reader.tensors:
        if t.name.endswith(_DENSE_FFN):
            continue
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            w.add_tensor(t.name, np.array(t.data))
        else:
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    for i, block in enumerate(moe.layers):
        ffn, b = block.ffn, f"blk.{i}."
        w.add_tensor(b + "ffn_gate_inp.weight", np.ascontiguousarray(ffn.router.weight.detach().float().numpy()))
        gate, up = ffn.gate_up.chunk(2, dim=1)
        for part, tensor in (("gate", gate), ("up", up), ("down", ffn.down)):
            arr, raw = _as_gguf(tensor, qtype)
            w.add_tensor(b + f"ffn_{part}_exps.weight", arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
