"""Routed-expert kernels: what `MoE.experts` runs.

One entry point, `moe_experts(moe, x, weights, ids)`, picks the implementation from the tensors:

* CUDA tensors -> `triton_moe` (grouped GEMM over expert-sorted tokens; imported lazily so CPU-only
  installs never import Triton);
* CPU -> `cpu_moe`: wide matmuls for experts with many tokens, the numba narrow kernel for experts
  with few, the numba combine; quantised experts (`quant.QuantizedTensor`, attached to the module as
  `moe.quantized`) are read quantised. `loader.load_model` attaches a GGUF file's Q8_0 / Q4 experts
  this way at load time (`gguf_expert_types`, `read_gguf_experts`, `set_quantized_experts`).

`settings` holds the switches (one process-wide object, like torch's own backend flags):
`small_max` / `small_max_quantised` (the per-expert token count at which the wide matmul takes over,
measured by `bench/moe.py`) and `batch_invariant` (one fixed kernel configuration, so a token's output
does not depend on the batch around it: `invariant_kernel` "narrow" = the narrow kernel for every
expert, the fast choice without AMX; "tiled" = fixed `tile`-row matmuls; on CUDA a fixed BLOCK_M).

`invariant_forward()` makes the enclosed forward passes of *this thread* batch-invariant as a whole
(`EngineConfig(deterministic=True)`): the MoE experts as in `batch_invariant` mode and every linear
layer of `model.py` through `invariant_linear`. It is a context variable, not a process-wide switch,
so a default engine on another thread is unaffected.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from simulacra.inference.kernels.cpu_moe import cpu_experts
from simulacra.inference.kernels.dense import linear, pack_linears, serial_ops
from simulacra.inference.kernels.quant import QTYPES, QuantizedTensor, qlinear
from simulacra.inference.kernels.routing import ExpertSort, sort_by_expert

__all__ = [
    "QTYPES",
    "ExpertSort",
    "KernelSettings",
    "QuantizedTensor",
    "attach_gguf_experts",
    "batch_invariant",
    "cpu_experts",
    "gguf_expert_tensor_names",
    "gguf_expert_types",
    "invariant_forward",
    "invariant_forward_active",
    "invariant_linear",
    "linear",
    "moe_experts",
    "pack_linears",
    "serial_ops",
    "qlinear",
    "quantize_experts",
    "read_gguf_experts",
    "set_quantized_experts",
    "settings",
    "sort_by_expert",
]


@dataclass
class KernelSettings:
    """Process-wide kernel switches. Defaults are the measured crossovers on the reference machine."""

    small_max: int = 32  # float experts with fewer tokens than this take the narrow (weights-once) kernel
    small_max_quantised: int = 128  # same for quantised experts (the wide path dequantises the expert first)
    batch_invariant: bool = False  # one fixed kernel configuration: bit-identical per-token results at any batch size
    invariant_kernel: str = "narrow"  # CPU invariant mode: "narrow" (every expert) or "tiled" (fixed-shape matmuls)
    tile: int = 16  # rows per matmul in the "tiled" invariant mode / BLOCK_M of the Triton kernel


settings = KernelSettings()

_invariant_forward: ContextVar[bool] = ContextVar("invariant_forward", default=False)


@contextmanager
def batch_invariant(
    enabled: bool = True, kernel: str | None = None, tile: int | None = None
) -> Iterator[KernelSettings]:
    """Run the enclosed code in (or out of) batch-invariant mode, restoring the settings afterwards."""
    if kernel not in (None, "narrow", "tiled"):
        raise ValueError(f"invariant kernel must be 'narrow' or 'tiled', got {kernel!r}")
    saved = (settings.batch_invariant, settings.invariant_kernel, settings.tile)
    settings.batch_invariant = enabled
    settings.invariant_kernel = kernel or settings.invariant_kernel
    settings.tile = tile or settings.tile
    try:
        yield settings
    finally:
        settings.batch_invariant, settings.invariant_kernel, settings.tile = saved


@contextmanager
def invariant_forward(enabled: bool = True) -> Iterator[None]:
    """Batch-invariant forward passes in the enclosed code, on this thread only (a context variable):
    MoE experts in `batch_invariant` mode, every `model.Linear` through `invariant_linear`."""
    token = _invariant_forward.set(enabled)
    try:
        yield
    finally:
        _invariant_forward.reset(token)


def invariant_forward_active() -> bool:
    return _invariant_forward.get()


def moe_experts(moe: Any, x: Tensor, weights: Tensor, ids: Tensor) -> Tensor:
    """Routed-expert output [N, H] (fp32) of an `MoE` module: `moe.gate_up[E, 2I, H]`, `moe.down[E, H, I]`,
    or quantised copies in `moe.quantized` (a (gate_up, down) pair of `QuantizedTensor`) when present."""
    quantized = getattr(moe, "quantized", None)
    gate_up, down = quantized if quantized is not None else (moe.gate_up, moe.down)
    invariant = settings.batch_invariant or _invariant_forward.get()
    if x.is_cuda:
        from simulacra.inference.kernels.triton_moe import triton_experts

        return triton_experts(x, weights, ids, gate_up, down, block_m=settings.tile if invariant else None)
    small = settings.small_max_quantised if quantized is not None else settings.small_max
    if invariant and settings.invariant_kernel == "tiled":
        return cpu_experts(x, weights, ids, gate_up, down, tile=settings.tile)
    if invariant:
        small = None
    return cpu_experts(x, weights, ids, gate_up, down, small_max=small)


def invariant_linear(
    x: Tensor, weight: Tensor, tile: int | None = None, bias: Tensor | None = None, packed: Tensor | None = None
) -> Tensor:
    """`x @ weight.T (+ bias)` computed in fixed `tile`-row matmuls (the last one padded with zero rows):
    every matmul has the same shape, so row i's result is the same bits whatever else is in `x` and
    wherever row i sits. `x` may have leading dims ([..., K]). Used for every linear layer of a
    batch-invariant forward pass (`invariant_forward`); `packed` (`dense.pack_weight` of `weight`)
    runs each tile on oneDNN's pre-packed weight, same bits, no per-call reorder."""
    tile = tile or settings.tile
    lead, k = x.shape[:-1], x.shape[-1]
    x = x.reshape(-1, k)
    n = x.shape[0]
    pad = (-n) % tile
    xp = torch.cat((x, x.new_zeros(pad, k))) if pad else x.contiguous()
    dtype = torch.promote_types(x.dtype, weight.dtype)
    out = torch.empty(n + pad, weight.shape[0], dtype=dtype, device=x.device)
    for i in range(0, n + pad, tile):  # every tile on all threads (`dense.matmul_threads`): same shape, same bits
        out[i : i + tile] = linear(xp[i : i + tile], weight, None, packed)
    out = out[:n]
    if bias is not None:
        out = out + bias  # elementwise: per row
    return out.reshape(*lead, weight.shape[0])


def quantize_experts(model: torch.nn.Module, qtype: str, drop_float: bool = True) -> int:
    """Quantise every MoE layer's experts of `model` to `qtype` in place (`moe.quantized`).

    With `drop_float` the float expert weights are released (replaced by empty tensors), so memory
    and every later forward pass see only quantised experts. Returns the number of layers changed.
    """
    changed = 0
    for module in model.modules():
        if hasattr(module, "gate_up") and hasattr(module, "router") and module.gate_up.dim() == 3:
            pair = (QuantizedTensor.quantize(module.gate_up, qtype), QuantizedTensor.quantize(module.down, qtype))
            set_quantized_experts(module, *pair, drop_float=drop_float)
            changed += 1
    return changed


def gguf_expert_types(reader: Any) -> dict[int, str]:
    """Layer index -> quantisation type, for every layer of a GGUF file whose stacked experts
    (`ffn_{gate,up,down}_exps`) share one type these kernels read quantised. Headers only.

    Layers with another type (Q5_0, K-quants, floats) or mixed types are left out: they load as floats.
    """
    tensors = {t.name: t for t in reader.tensors}
    types_by_layer = {}
    for name in tensors:
        if not (name.startswith("blk.") and name.endswith(".ffn_down_exps.weight")):
            continue
        layer = int(name.split(".")[1])
        parts = [tensors.get(_gguf_expert_name(layer, p)) for p in ("gate", "up", "down")]
        if any(t is None for t in parts):
            continue
        kinds = {t.tensor_type.name for t in parts}
        if len(kinds) == 1 and kinds <= set(QTYPES):
            types_by_layer[layer] = kinds.pop()
    return types_by_layer


def gguf_expert_tensor_names(layers: Iterable[int]) -> set[str]:
    """The GGUF tensor names of the stacked experts of `layers` (what the float loader skips for them)."""
    return {_gguf_expert_name(i, p) for i in layers for p in ("gate", "up", "down")}


def read_gguf_experts(reader: Any, layer: int) -> tuple[QuantizedTensor, QuantizedTensor]:
    """(gate_up, down) of one layer, built from the file's quantised blocks (gate and up fused by
    concatenating quantised rows); no float copy is made. The layer must be in `gguf_expert_types`."""
    tensors = {t.name: t for t in reader.tensors}
    gate, up, down = (
        QuantizedTensor.from_gguf(t.data, t.tensor_type.name, tuple(int(d) for d in reversed(t.shape)))
        for t in (tensors[_gguf_expert_name(layer, p)] for p in ("gate", "up", "down"))
    )
    return gate.cat_rows(up), down


def attach_gguf_experts(model: torch.nn.Module, reader: Any, drop_float: bool = True) -> int:
    """Attach a GGUF file's Q8_0 / Q4_0 / Q4_1 expert tensors to `model` as they are stored (no float copy).

    `reader` is the file's `gguf.GGUFReader`. Gate and up (`ffn_gate_exps`, `ffn_up_exps`) are fused
    by concatenating quantised rows. Layers whose experts use another type keep their float weights.
    Returns the number of layers attached. (`loader.load_model` does this at load time, without ever
    decoding those experts to float.)
    """
    layers = [m for m in model.modules() if hasattr(m, "gate_up") and hasattr(m, "router")]
    moe_layers = [i for i, is_moe in enumerate(model.cfg.moe_layers) if is_moe]
    quantised = gguf_expert_types(reader)
    attached = 0
    for i, module in zip(moe_layers, layers, strict=True):
        if i in quantised:
            set_quantized_experts(module, *read_gguf_experts(reader, i), drop_float=drop_float)
            attached += 1
    return attached


def set_quantized_experts(
    module: torch.nn.Module, gate_up: QuantizedTensor, down: QuantizedTensor, drop_float: bool = True
) -> None:
    """Make an `MoE` module compute its experts from quantised weights (`moe.quantized`).

    With `drop_float` its float `gate_up` / `down` become empty tensors, so they hold no memory."""
    module.quantized = (gate_up, down)
    if drop_float:
        dtype = module.router.weight.dtype  # the layer's float dtype (gate_up may be an unloaded placeholder)
        module.gate_up = torch.nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)
        module.down = torch.nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)


def _gguf_expert_name(layer: int, part: str) -> str:
    return f"blk.{layer}.ffn_{part}_exps.weight"
