"""GPU fused MoE: grouped GEMMs over expert-sorted tokens in Triton (the shape of vLLM's `fused_moe`).

Imported only when a CUDA tensor reaches `kernels.moe_experts` (or by tests), so CPU-only installs
never import Triton. Tests run these kernels on the CPU through Triton's interpreter
(`TRITON_INTERPRET=1`, set before this module is imported).

Data flow: `routing.sort_by_expert(ids, E, block=BLOCK_M)` groups the (token, slot) pairs by expert
and pads each expert's run to BLOCK_M rows (vLLM's `moe_align_block_size`), so every row tile of
the sorted order belongs to one expert (`block_expert`). Then

1. `_gate_up_kernel`, grid (row tiles, I / BLOCK_N): gathers the tile's token rows, multiplies by
   that expert's gate and up rows (one fused [2I, H] weight), fp32 accumulation, and writes
   silu(gate) * up: the activation never exists unfused;
2. `_down_kernel`, grid (row tiles, H / BLOCK_N): activation tile times the expert's down weight,
   scaled by each pair's routing weight, stored at the pair's own row (pair = token * k + slot);
3. the k slots of each token are added in slot order (k elementwise adds, no atomics).

Every block size is fixed for a given `block_m`, and no reduction is split across programs, so a
row's result depends only on its own data: with a fixed `block_m` (the batch-invariant mode) a
token's output is the same bits at any batch size. fp32 weights use IEEE fp32 dots (not TF32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from simulacra.inference.kernels.cpu_moe import expert_shapes
from simulacra.inference.kernels.routing import sort_by_expert

BLOCK_N = 32
BLOCK_K = 32


@triton.jit
def _gate_up_kernel(
    x_ptr,
    w_ptr,
    act_ptr,
    tok_ptr,
    blk_expert_ptr,
    hidden,
    inter,
    stride_x,
    stride_we,
    stride_wn,
    stride_act,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(blk_expert_ptr + pid_m)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = tl.load(tok_ptr + offs_m)  # padding slots point at the zero row appended to x
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < inter
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    w_base = w_ptr + e.to(tl.int64) * stride_we
    for k0 in range(0, hidden, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < hidden
        a = tl.load(x_ptr + tok[:, None].to(tl.int64) * stride_x + offs_k[None, :], mask=k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & n_ok[None, :]
        wg = tl.load(w_base + offs_n[None, :] * stride_wn + offs_k[:, None], mask=w_mask, other=0.0)
        wu = tl.load(w_base + (offs_n[None, :] + inter) * stride_wn + offs_k[:, None], mask=w_mask, other=0.0)
        if UPCAST:
            a, wg, wu = a.to(tl.float32), wg.to(tl.float32), wu.to(tl.float32)
        if IEEE:
            acc_g += tl.dot(a, wg, input_precision="ieee")
            acc_u += tl.dot(a, wu, input_precision="ieee")
        else:
            acc_g += tl.dot(a, wg)
            acc_u += tl.dot(a, wu)
    act = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
    ptrs = act_ptr + offs_m[:, None].to(tl.int64) * stride_act + offs_n[None, :]
    tl.store(ptrs, act.to(act_ptr.dtype.element_ty), mask=n_ok[None, :])


@triton.jit
def _down_kernel(
    act_ptr,
    w_ptr,
    out_ptr,
    pair_ptr,
    route_w_ptr,
    blk_expert_ptr,
    inter,
    hidden,
    n_pairs,
    stride_act,
    stride_we,
    stride_wn,
    stride_out,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(blk_expert_ptr + pid_m)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(pair_ptr + offs_m)  # n_pairs marks a padding slot
    real = pair < n_pairs
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < hidden
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    w_base = w_ptr + e.to(tl.int64) * stride_we
    for k0 in range(0, inter, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < inter
        a = tl.load(
            act_ptr + offs_m[:, None].to(tl.int64) * stride_act + offs_k[None, :], mask=k_ok[None, :], other=0.0
        )
        wd = tl.load(
            w_base + offs_n[None, :] * stride_wn + offs_k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0
        )
        if UPCAST:
            a, wd = a.to(tl.float32), wd.to(tl.float32)
        if IEEE:
            acc += tl.dot(a, wd, input_precision="ieee")
        else:
            acc += tl.dot(a, wd)
    route_w = tl.load(route_w_ptr + pair, mask=real, other=0.0)
    acc = acc * route_w[:, None]
    ptrs = out_ptr + pair[:, None].to(tl.int64) * stride_out + offs_n[None, :]
    tl.store(ptrs, acc, mask=real[:, None] & n_ok[None, :])


def triton_experts(
    x: Tensor, weights: Tensor, ids: Tensor, gate_up: Tensor, down: Tensor, block_m: int | None = None
) -> Tensor:
    """Routed-expert output [N, H] (fp32) on the tensors' device; `block_m` fixed = batch-invariant.

    `gate_up[E, 2I, H]` and `down[E, H, I]` are fp32 / bf16 / fp16 tensors; quantised experts are
    not supported on GPU yet (dequantise them, or keep them on the CPU path).
    """
    if not isinstance(gate_up, Tensor) or not isinstance(down, Tensor):
        raise NotImplementedError("quantised experts run on the CPU kernels only; dequantise them for the GPU")
    n, k = ids.shape
    n_exp, inter, hidden = expert_shapes(gate_up, down, weights, ids)
    dev = x.device
    y = torch.zeros(n, hidden, dtype=torch.float32, device=dev)
    if n == 0:
        return y
    if block_m is None:  # fast mode: small tiles for decode-sized batches, larger for prefill
        block_m = 16 if n * k < 4 * n_exp else 64
    srt = sort_by_expert(ids, n_exp, block=block_m)
    tok = torch.from_numpy(srt.tokens()).to(dev)
    pairs = torch.from_numpy(srt.sorted_pairs).to(dev)
    blk_expert = torch.from_numpy(srt.block_expert).to(dev)
    xz = torch.cat((x.to(gate_up.dtype), x.new_zeros(1, hidden, dtype=gate_up.dtype))).contiguous()
    gate_up, down = gate_up.contiguous(), down.contiguous()
    act = torch.empty(srt.sorted_pairs.size, inter, dtype=gate_up.dtype, device=dev)
    out = torch.empty(n * k, hidden, dtype=torch.float32, device=dev)
    ieee = gate_up.dtype == torch.float32
    # Triton's interpreter (numpy underneath, no bf16) returns garbage from a bf16 tl.dot: there the
    # tiles are widened to fp32 first. Compiled kernels keep bf16/fp16 dots on the tensor cores.
    upcast = not ieee and bool(triton.knobs.runtime.interpret)
    n_tiles = srt.block_expert.size
    _gate_up_kernel[(n_tiles, triton.cdiv(inter, BLOCK_N))](
        xz,
        gate_up,
        act,
        tok,
        blk_expert,
        hidden,
        inter,
        xz.stride(0),
        gate_up.stride(0),
        gate_up.stride(1),
        act.stride(0),
        IEEE=ieee,
        UPCAST=upcast,
        BLOCK_M=block_m,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
    )
    _down_kernel[(n_tiles, triton.cdiv(hidden, BLOCK_N))](
        act,
        down,
        out,
        pairs,
        weights.to(device=dev, dtype=torch.float32).contiguous().reshape(-1),
        blk_expert,
        inter,
        hidden,
        n * k,
        act.stride(0),
        down.stride(0),
        down.stride(1),
        out.stride(0),
        IEEE=ieee,
        UPCAST=upcast,
        BLOCK_M=block_m,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
    )
    per_slot = out.view(n, k, hidden)
    y.copy_(per_slot[:, 0])
    for s in range(1, k):  # slot order, elementwise: no atomics, no batch-dependent reduction
        y += per_slot[:, s]
    return y
