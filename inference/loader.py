"""Load a model from a GGUF file or a Hugging Face safetensors folder, or the packaged default."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from simulacra.inference.config import ModelConfig, config_from_gguf, config_from_hf
from simulacra.inference.errors import ModelLoadError
from simulacra.inference.gguf_loader import gguf_pieces, gguf_shapes, open_gguf, quantization_summary
from simulacra.inference.hf_loader import hf_pieces, hf_shapes, read_config
from simulacra.inference.model import Transformer
from simulacra.inference.packaged import default_model_path
from simulacra.inference.tokenizer import Tokenizer
from simulacra.inference.weights import build_model, infer_structure


@dataclass
class ModelInfo:
    """What `simulacra models` shows; read from headers, no weights loaded."""

    path: Path
    format: str  # "gguf" or "safetensors"
    config: ModelConfig
    quantization: str
    total_params: int

    @property
    def active_params(self) -> int:
        return self.total_params - self.config.inactive_params()


def _inspect(p: Path) -> tuple[ModelInfo, object]:
    """Config and structure from headers; returns the info and the open GGUF reader (or None)."""
    if p.is_dir():
        cfg = config_from_hf(read_config(p), p / "config.json")
        shapes, reader, fmt, quant = hf_shapes(p), None, "safetensors", cfg_dtype_name(p)
    else:
        reader, meta = open_gguf(p)
        cfg = config_from_gguf(meta, p)
        shapes, fmt, quant = gguf_shapes(reader, p), "gguf", quantization_summary(reader)
    infer_structure(cfg, shapes)
    total = sum(math.prod(s) for s in shapes.values())
    return ModelInfo(p, fmt, cfg, quant, total), reader


@dataclass
class LoadedModel:
    info: ModelInfo
    model: Transformer
    tokenizer: Tokenizer

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


@cache
def default_dtype(device: str = "cpu") -> torch.dtype:
    """bf16 where the hardware has native bf16 matmuls (AMX / AVX512-BF16, any CUDA GPU), else fp32."""
    if device.startswith("cuda"):
        return torch.bfloat16
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return torch.float32
    return torch.bfloat16 if ("amx_bf16" in flags or "avx512_bf16" in flags) else torch.float32


def resolve_path(path: str | Path | None) -> Path:
    """None means the packaged default model."""
    if path is None or str(path) in ("", "default"):
        return default_model_path()
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(p, "no such file or folder", "give a .gguf file or a Hugging Face model folder")
    return p


def describe_model(path: str | Path | None = None) -> ModelInfo:
    return _inspect(resolve_path(path))[0]


def cfg_dtype_name(folder: Path) -> str:
    raw = read_config(folder)
    return str(raw.get("torch_dtype") or raw.get("dtype") or "float32")


def load_transformer(
    path: str | Path | None = None, dtype: torch.dtype | None = None, device: str = "cpu"
) -> tuple[ModelInfo, Transformer]:
    """Weights and config only (tiny test checkpoints have no tokenizer)."""
    info, reader = _inspect(resolve_path(path))
    p, cfg = info.path, info.config
    pieces = hf_pieces(p) if reader is None else gguf_pieces(reader, cfg, p)
    model = build_model(cfg, pieces, dtype or default_dtype(device), p)
    return info, model.to(device)


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    p = resolve_path(path)
    return Tokenizer.from_dir(p) if p.is_dir() else Tokenizer.from_gguf_metadata(open_gguf(p)[1], p)


def load_model(path: str | Path | None = None, dtype: torch.dtype | None = None, device: str = "cpu") -> LoadedModel:
    """Load weights, config and tokenizer; `dtype=torch.float32` is the reference mode for parity."""
    info, model = load_transformer(path, dtype, device)
    return LoadedModel(info, model, load_tokenizer(info.path))
