"""GGUF files: metadata, tensors dequantised to float, renamed to the model's pieces.

Expert tensors the kernels read quantised (`kernels.gguf_expert_types`) can be skipped here; the
loader builds them from the file's blocks instead (`kernels.read_gguf_experts`).

llama.cpp's converter permutes the Q/K projection rows of rotary-"normal" architectures (llama,
granite) so that GGML can rotate adjacent pairs; the model rotates halves (the HF layout), so those
rows are permuted back here.

Llama-3 RoPE scaling is not in the metadata: the converter writes `rope_freqs.weight`, one divisor
per rotary frequency, which `gguf_pieces` yields as the piece `ROPE_FREQS` for `build_model`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, ReaderTensor
from gguf.quants import dequantize

from simulacra.inference.config import ModelConfig
from simulacra.inference.errors import ModelLoadError

Q = GGMLQuantizationType
SUPPORTED_TYPES = {
    Q.F32,
    Q.F16,
    Q.BF16,
    Q.Q4_0,
    Q.Q4_1,
    Q.Q5_0,
    Q.Q5_1,
    Q.Q8_0,
    Q.Q2_K,
    Q.Q3_K,
    Q.Q4_K,
    Q.Q5_K,
    Q.Q6_K,
}
PERMUTED_ARCHS = {"llama", "granite", "granitemoe"}

_TOP = {"token_embd.weight": "embed.weight", "output_norm.weight": "norm.weight", "output.weight": "lm_head.weight"}
_BLOCK = {
    "attn_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "attn_q.weight": "attn.wq.weight",
    "attn_k.weight": "attn.wk.weight",
    "attn_v.weight": "attn.wv.weight",
    "attn_q.bias": "attn.wq.bias",
    "attn_k.bias": "attn.wk.bias",
    "attn_v.bias": "attn.wv.bias",
    "attn_output.weight": "attn.wo.weight",
    "attn_q_norm.weight": "attn.q_norm.weight",
    "attn_k_norm.weight": "attn.k_norm.weight",
    "ffn_gate.weight": "ffn.gate",
    "ffn_up.weight": "ffn.up",
    "ffn_down.weight": "ffn.down",
    "ffn_gate_inp.weight": "ffn.router.weight",
    "ffn_gate_exps.weight": "ffn.experts.gate",
    "ffn_up_exps.weight": "ffn.experts.up",
    "ffn_down_exps.weight": "ffn.experts.down",
    "ffn_gate_shexp.weight": "ffn.shared.gate",
    "ffn_up_shexp.weight": "ffn.shared.up",
    "ffn_down_shexp.weight": "ffn.shared.down",
    "ffn_gate_inp_shexp.weight": "ffn.shared_gate.weight",
}
_BLK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")
ROPE_FREQS = "rope_freqs"  # piece name of `rope_freqs.weight`: inv_freq is divided by it, as in llama.cpp


def open_gguf(path: Path) -> tuple[GGUFReader, dict[str, Any]]:
    """Open and validate a GGUF file; metadata as plain Python values."""
    if not path.is_file():
        raise ModelLoadError(path, "file not found", "check the path or run `simulacra models`")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(path, f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        reader = GGUFReader(path)
        meta = {k: f.contents() for k, f in reader.fields.items()}
    except Exception as exc:  # the reader fails in many ways on truncated or corrupt files
        raise ModelLoadError(
            path, f"corrupt or truncated GGUF file ({type(exc).__name__}: {exc})", "re-download or re-convert the file"
        ) from exc
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ModelLoadError(path, f"truncated GGUF file: tensor {t.name} ends past the end of the file")
    return reader, meta


def quantization_summary(reader: GGUFReader) -> str:
    """The dominant weight type of the file, e.g. 'Q4_1'."""
    counts: dict[str, int] = {}
    for t in reader.tensors:
        if len(t.shape) > 1:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + int(t.n_elements)
    return max(counts, key=counts.__getitem__) if counts else "F32"


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `permute` of Q/K rows: interleaved rotary pairs back to rotate-halves."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def piece_name(tensor_name: str) -> str | None:
    m = _BLK_RE.match(tensor_name)
    if m is None:
        return _TOP.get(tensor_name)
    return f"layers.{m.group(1)}.{_BLOCK[m.group(2)]}" if m.group(2) in _BLOCK else None


def _named_tensors(reader: GGUFReader, path: Path) -> Iterator[tuple[str, ReaderTensor]]:
    for t in reader.tensors:
        name = piece_name(t.name)
        if name is None:
            if t.name.startswith("rope_"):
                continue  # rope factors are not weights; `gguf_pieces` yields rope_freqs.weight on its own
            raise ModelLoadError(path, f"unknown tensor {t.name!r}", "this architecture's layout is not supported")
        yield name, t


def gguf_shapes(reader: GGUFReader, path: Path) -> dict[str, tuple[int, ...]]:
    """Piece name -> shape, without reading tensor data."""
    return {name: tuple(int(d) for d in reversed(t.shape)) for name, t in _named_tensors(reader, path)}


def gguf_pieces(
    reader: GGUFReader, cfg: ModelConfig, path: Path, skip: Collection[str] = ()
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (piece name, float32 tensor) for every tensor of the file but those named in `skip`
    (GGUF names: expert tensors kept quantised are never decoded, which is most of a MoE's load time)."""
    arch = reader.fields["general.architecture"].contents()
    for name, t in _named_tensors(reader, path):
        if t.name in skip:
            continue
        if t.tensor_type not in SUPPORTED_TYPES:
            raise ModelLoadError(
                path,
                f"tensor {t.name} uses unsupported quantisation {t.tensor_type.name}",
                f"supported: {', '.join(sorted(q.name for q in SUPPORTED_TYPES))}",
            )
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims fastest-first
        try:
            data = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32, copy=False).reshape(shape)
        except Exception as exc:
            raise ModelLoadError(path, f"cannot decode tensor {t.name} ({type(exc).__name__}: {exc})") from exc
        if arch in PERMUTED_ARCHS and t.name.endswith(("attn_q.weight", "attn_k.weight")):
            data = _unpermute(data, cfg.n_heads if "attn_q" in t.name else cfg.n_kv_heads)
        yield name, torch.from_numpy(np.array(data, dtype=np.float32, order="C"))  # own, writable copy
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            if t.tensor_type != Q.F32:
                raise ModelLoadError(path, f"tensor rope_freqs.weight is {t.tensor_type.name}, expected F32")
            yield ROPE_FREQS, torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(-1))
