"""From checkpoint tensors to the `Transformer`'s parameters, for every format.

Each format's reader renames its tensors to *pieces* with one spelling
(`layers.3.ffn.gate`, `layers.3.ffn.experts.5.up`, `layers.3.ffn.experts.down` for a stacked
tensor, ...). `assemble` then fuses gate+up, stacks per-expert tensors and checks every shape
against the config, so a wrong file fails with a message rather than a silent mismatch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from simulacra.inference import kernels
from simulacra.inference.config import ModelConfig
from simulacra.inference.errors import ModelLoadError
from simulacra.inference.gguf_loader import ROPE_FREQS
from simulacra.inference.kernels import QuantizedTensor
from simulacra.inference.model import Transformer, rope_inv_freq


def infer_structure(cfg: ModelConfig, pieces: dict[str, tuple[int, ...]]) -> None:
    """Fill the switches a checkpoint shows by the tensors it has (bias, q/k norm, shared experts)."""
    cfg.tie_embeddings = "lm_head.weight" not in pieces
    cfg.attn_bias = "layers.0.attn.wq.bias" in pieces
    qn = pieces.get("layers.0.attn.q_norm.weight")
    cfg.qk_norm = None if qn is None else ("head" if qn[0] == cfg.head_dim else "full")
    if cfg.is_moe:
        cfg.moe_layers = [f"layers.{i}.ffn.router.weight" in pieces for i in range(cfg.n_layers)]
        first = cfg.moe_layers.index(True) if any(cfg.moe_layers) else 0
        shared = pieces.get(f"layers.{first}.ffn.shared.gate")
        if shared is not None:
            cfg.shared_expert_intermediate_size = shared[0]
        cfg.shared_expert_gate = f"layers.{first}.ffn.shared_gate.weight" in pieces


def _fuse_qkv(pieces: dict[str, Tensor], prefix: str) -> None:
    """q, k, v projections -> one `wqkv` ([q; k; v] rows), under `prefix` (e.g. 'layers.0.attn.')."""
    for part in ("weight", "bias"):
        names = [f"{prefix}w{x}.{part}" for x in "qkv"]
        if all(n in pieces for n in names):
            pieces[f"{prefix}wqkv.{part}"] = torch.cat([pieces.pop(n) for n in names])


def _fuse(pieces: dict[str, Tensor], prefix: str, n_experts: int) -> None:
    """gate+up -> gate_up, and per-expert tensors -> stacked, under `prefix` (e.g. 'layers.0.ffn.')."""
    for part in ("gate", "up", "down"):
        stacked = f"{prefix}experts.{part}"
        if stacked not in pieces and f"{prefix}experts.0.{part}" in pieces:
            try:
                pieces[stacked] = torch.stack([pieces.pop(f"{prefix}experts.{e}.{part}") for e in range(n_experts)])
            except KeyError as exc:
                raise ModelLoadError("", f"expert tensor {exc.args[0]} is missing") from exc
    if f"{prefix}experts.gate" in pieces:
        pieces[f"{prefix}gate_up"] = torch.cat(
            (pieces.pop(f"{prefix}experts.gate"), pieces.pop(f"{prefix}experts.up")), 1
        )
        pieces[f"{prefix}down"] = pieces.pop(f"{prefix}experts.down")
    for sub in ("", "shared."):
        if f"{prefix}{sub}gate" in pieces:
            pieces[f"{prefix}{sub}gate_up.weight"] = torch.cat(
                (pieces.pop(f"{prefix}{sub}gate"), pieces.pop(f"{prefix}{sub}up"))
            )
            pieces[f"{prefix}{sub}down.weight"] = pieces.pop(f"{prefix}{sub}down")


def build_model(
    cfg: ModelConfig,
    tensors: Iterable[tuple[str, Tensor]],
    dtype: torch.dtype,
    where: str | Path,
    quantized: Mapping[int, tuple[QuantizedTensor, QuantizedTensor]] | None = None,
) -> Transformer:
    """Assemble pieces into a `Transformer` in `dtype`, checking names and shapes.

    `cfg` must already carry the checkpoint's structure (`infer_structure`). `quantized` maps a layer
    to its (gate_up, down) experts kept quantised; those layers need no float expert pieces.
    """
    pieces, rope_freqs = {}, None
    for name, t in tensors:
        if name == ROPE_FREQS:  # GGUF Llama-3 RoPE: a divisor per rotary frequency, kept fp32
            rope_freqs = t.float()
        else:
            pieces[name] = t.to(dtype)
    try:
        for i in range(cfg.n_layers):
            _fuse_qkv(pieces, f"layers.{i}.attn.")
            _fuse(pieces, f"layers.{i}.ffn.", cfg.n_experts)
    except ModelLoadError as exc:
        raise ModelLoadError(where, exc.problem) from exc
    for k in [k for k in pieces if k.endswith("shared_gate.weight")]:
        pieces[k] = pieces[k].reshape(1, -1)  # GGUF stores the shared-expert gate as a vector
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight")
    for i, pair in (quantized or {}).items():
        _check_quantized(expected, i, pair, where)
    missing = sorted(set(expected) - set(pieces))
    unexpected = sorted(set(pieces) - set(expected))
    if missing:
        raise ModelLoadError(
            where,
            f"{len(missing)} weight(s) missing, e.g. {', '.join(missing[:3])}",
            "the weights do not match the config's architecture or layer count",
        )
    if unexpected:
        raise ModelLoadError(
            where,
            f"{len(unexpected)} unexpected weight(s), e.g. {', '.join(unexpected[:3])}",
            "the weights do not match the config's architecture",
        )
    for k, shape in expected.items():
        if pieces[k].shape != shape:
            raise ModelLoadError(
                where,
                f"weight {k} has shape {tuple(pieces[k].shape)} but the config implies {tuple(shape)}",
                "config and weights disagree: check hidden/intermediate sizes, heads and expert count",
            )
    model.load_state_dict(pieces, strict=False, assign=True)
    for i, pair in (quantized or {}).items():
        kernels.set_quantized_experts(model.layers[i].ffn, *pair)
    model.tie_weights()
    inv_freq, model.rope_scale = rope_inv_freq(cfg)
    if rope_freqs is not None:
        if rope_freqs.shape != inv_freq.shape:
            raise ModelLoadError(
                where, f"rope_freqs has {rope_freqs.numel()} factors, but the head dim needs {inv_freq.numel()}"
            )
        inv_freq = inv_freq / rope_freqs
    model.inv_freq = inv_freq
    return model.eval().requires_grad_(False)


def _check_quantized(
    expected: dict[str, torch.Size], layer: int, pair: tuple[QuantizedTensor, QuantizedTensor], where: str | Path
) -> None:
    """Quantised experts of `layer` must match the config's expert shapes; they replace the float pieces."""
    for part, q in zip(("gate_up", "down"), pair, strict=True):
        key = f"layers.{layer}.ffn.{part}"
        if key not in expected:
            raise ModelLoadError(where, f"layer {layer} has stacked expert tensors but is not an MoE layer")
        shape = expected.pop(key)
        if tuple(q.shape) != tuple(shape):
            raise ModelLoadError(
                where,
                f"quantised experts {key} have shape {tuple(q.shape)} but the config implies {tuple(shape)}",
                "config and weights disagree: check hidden/intermediate sizes and expert count",
            )
