"""Load a model from a GGUF file or a Hugging Face safetensors folder, or the packaged default."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import torch

from simulacra.inference import kernels
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
    # GGUF type(s) of the routed experts kept quantised in memory ("Q4_0"; "Q4_0,Q8_0" when layers
    # differ), None when they are float. `describe_model` tells what a default (CPU) load keeps.
    expert_quantization: str | None = None

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
    return ModelInfo(p, fmt, cfg, quant, total, _expert_types(reader)), reader


def _expert_types(reader: object) -> str | None:
    """What `ModelInfo.expert_quantization` reports for a file whose experts are kept quantised."""
    found = set(kernels.gguf_expert_types(reader).values()) if reader is not None else set()
    return ",".join(sorted(found)) or None


@dataclass
class LoadedModel:
    info: ModelInfo
    model: Transformer
    tokenizer: Tokenizer

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


def resolve_device(device: str = "auto") -> str:
    """The device to run on: "auto" is "cuda" when torch sees a CUDA GPU, else "cpu"; others are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'") from exc
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use 'auto', 'cpu' or 'cuda'")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda or 'none'}); use device 'cpu' or 'auto'"
        )
    return device


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
    path: str | Path | None = None,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    quantized_experts: bool = True,
) -> tuple[ModelInfo, Transformer]:
    """Weights and config only (tiny test checkpoints have no tokenizer).

    With `quantized_experts` (and on the CPU, where the quantised kernels run), a GGUF MoE's Q8_0 /
    Q4_0 / Q4_1 expert tensors are kept as stored and never decoded to float: 36 / 20 / 24 bytes per
    32 weights instead of 128 (fp32), in memory and per decode step, and a faster load. `False` loads
    every weight as float (parity tests); other expert types are always decoded to float.
    """
    info, reader = _inspect(resolve_path(path))
    p, cfg = info.path, info.config
    quantized = {}
    if reader is not None and quantized_experts and torch.device(device).type == "cpu":
        quantized = {i: kernels.read_gguf_experts(reader, i) for i in kernels.gguf_expert_types(reader)}
    else:
        info = replace(info, expert_quantization=None)
    if reader is None:
        pieces = hf_pieces(p)
    else:
        pieces = gguf_pieces(reader, cfg, p, skip=kernels.gguf_expert_tensor_names(quantized))
    model = build_model(cfg, pieces, dtype or default_dtype(device), p, quantized)
    return info, model.to(device)


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    p = resolve_path(path)
    return Tokenizer.from_dir(p) if p.is_dir() else Tokenizer.from_gguf_metadata(open_gguf(p)[1], p)


def load_model(
    path: str | Path | None = None,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    quantized_experts: bool = True,
) -> LoadedModel:
    """Load weights, config and tokenizer; `dtype=torch.float32` is the reference mode for parity,
    `quantized_experts=False` the all-float one (see `load_transformer`)."""
    info, model = load_transformer(path, dtype, device, quantized_experts)
    return LoadedModel(info, model, load_tokenizer(info.path))
