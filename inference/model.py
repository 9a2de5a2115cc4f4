"""The transformer: one readable file for Llama-style dense models and the MoE families.

Tokens arrive flattened (a ragged batch, no padding): `tokens[N]`, `positions[N]`, and a KV object
that knows which sequence each token belongs to. Attention is delegated to that object
(`kv.attend(layer, q, k, v)`), so the same model runs with no cache (parity tests), with the
simple contiguous cache below (greedy `generate`), or with the serving engine's paged cache.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simulacra.inference import kernels
from simulacra.inference.config import ModelConfig

# MoE expert compute: True runs `inference/kernels` (numba routing sort, grouped / narrow / quantised
# CPU kernels, Triton on CUDA, the batch-invariant mode); False runs `MoE.reference_experts`, the plain
# grouped loop kept as the readable reference.
MOE_KERNELS = True


class Linear(nn.Linear):
    """`nn.Linear` with two CPU speed-ups that leave every bit of the result as it was.

    - `packed`: oneDNN's blocked copy of a bf16 weight (`kernels.pack_linears`). `F.linear` on a bf16
      CPU weight reorders it into that layout on every call, which dominates small batches; the packed
      call runs the same kernel on the same layout (identical output) without the reorder.
    - batch invariance inside `kernels.invariant_forward()` (`EngineConfig.deterministic`): BLAS picks
      kernels and blockings by the row count, so a row's bits can depend on how many rows share the
      call; the invariant mode runs fixed-size row tiles instead (`kernels.invariant_linear`).
    """

    packed: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if kernels.invariant_forward_active():
            return kernels.invariant_linear(x, self.weight, bias=self.bias, packed=self.packed)
        return kernels.linear(x, self.weight, self.bias, self.packed)


class KVStore(Protocol):
    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        """Store this step's k/v for `layer` and return attention output [N, n_heads, head_dim] in v's
        dtype. q and k arrive rotated in fp32 (the store casts them to its own dtype once)."""
        ...


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """In fp32 whatever the weight's dtype; one fused op (each op costs a thread wake-up on the CPU)."""
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(self.weight.dtype)


def rope_inv_freq(cfg: ModelConfig) -> tuple[Tensor, float]:
    """Inverse frequencies and the cos/sin scale for the config's RoPE variant."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    sc = cfg.rope_scaling
    if not sc:
        return inv.float(), 1.0
    kind, factor = sc["rope_type"], float(sc.get("factor", 1.0))
    if kind == "linear":
        return (inv / factor).float(), 1.0
    orig = sc.get("original_max_position_embeddings") or cfg.max_position
    if kind == "llama3":
        low, high = sc.get("low_freq_factor", 1.0), sc.get("high_freq_factor", 4.0)
        low_wl, high_wl = orig / low, orig / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (orig / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= high_wl) & (wavelen <= low_wl)
        return torch.where(is_mid, mid, scaled).float(), 1.0
    # yarn
    beta_fast, beta_slow = sc.get("beta_fast", 32.0), sc.get("beta_slow", 1.0)

    def corr_dim(n_rot: float) -> float:
        return (dim * math.log(orig / (n_rot * 2 * math.pi))) / (2 * math.log(cfg.rope_theta))

    lo = max(math.floor(corr_dim(beta_fast)), 0)
    hi = min(math.ceil(corr_dim(beta_slow)), dim - 1)
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - lo) / max(hi - lo, 1e-3)).clamp(0, 1)
    extrap = 1 - ramp
    inv = (inv / factor) * (1 - extrap) + inv * extrap
    mscale = sc.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)
    return inv.float(), float(mscale)


def apply_rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """Rotate halves (the HF/NeoX layout; GGUF's interleaved Q/K rows are un-permuted at load), in fp32.

    `signed_sin` is sin with its first half negated (`Transformer.forward`), so the rotation is
    `x * cos + [x2, x1] * signed_sin`: four ops instead of six."""
    x = x.float()
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat((x2, x1), dim=-1), signed_sin)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        self.wqkv = Linear(cfg.hidden_size, (nh + 2 * nkv) * hd, bias=cfg.attn_bias)  # [q; k; v] rows
        self.wo = Linear(nh * hd, cfg.hidden_size, bias=False)
        if cfg.qk_norm == "head":
            self.q_norm, self.k_norm = RMSNorm(hd, cfg.rms_eps), RMSNorm(hd, cfg.rms_eps)
        elif cfg.qk_norm == "full":
            self.q_norm, self.k_norm = RMSNorm(nh * hd, cfg.rms_eps), RMSNorm(nkv * hd, cfg.rms_eps)
        self.scale = cfg.attention_multiplier or 1.0 / math.sqrt(hd)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kv: KVStore, layer: int) -> Tensor:
        cfg, n = self.cfg, x.shape[0]
        hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        qkv = self.wqkv(x)
        if cfg.qk_norm is None and cfg.clip_qkv is None:
            qk = qkv[:, : (nh + nkv) * hd].view(n, nh + nkv, hd)  # q and k heads rotate in one call
            v = qkv[:, (nh + nkv) * hd :].view(n, nkv, hd)
        else:
            q, k, v = qkv.split((nh * hd, nkv * hd, nkv * hd), dim=-1)
            if cfg.qk_norm == "full":
                q, k = self.q_norm(q), self.k_norm(k)
            if cfg.clip_qkv is not None:
                q, k, v = (t.clamp(-cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
            q, k, v = q.reshape(n, nh, hd), k.reshape(n, nkv, hd), v.reshape(n, nkv, hd)
            if cfg.qk_norm == "head":
                q, k = self.q_norm(q), self.k_norm(k)
            qk = torch.cat((q, k), dim=1)
        qk = apply_rope(qk, cos, sin)
        out = kv.attend(layer, qk[:, :nh], qk[:, nh:], v, self.scale)
        return self.wo(out.reshape(n, nh * hd))


class MLP(nn.Module):
    """SwiGLU with gate and up fused into one weight ([gate; up] rows)."""

    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.gate_up = Linear(hidden, 2 * inter, bias=False)
        self.down = Linear(inter, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def route(logits: Tensor, k: int, mode: str, norm_topk: bool) -> tuple[Tensor, Tensor]:
    """Router logits [N, E] -> (weights [N, k] fp32, expert ids [N, k])."""
    if mode == "topk_softmax":
        top, ids = torch.topk(logits.float(), k, dim=-1)
        return torch.softmax(top, dim=-1), ids
    probs = torch.softmax(logits.float(), dim=-1)
    weights, ids = torch.topk(probs, k, dim=-1)
    if norm_topk:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


class MoE(nn.Module):
    """Sparse MoE FFN: each token runs its top-k experts; tokens are grouped by expert.

    Experts are stacked tensors (`gate_up[E, 2I, H]`, `down[E, H, I]`); each expert with tokens
    runs one matmul over all its tokens (`reference_experts`). `experts()` runs the kernel layer.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        e, h, i = cfg.n_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.k, self.mode, self.norm_topk = cfg.n_experts_per_tok, cfg.router_mode, cfg.norm_topk_prob
        self.router = Linear(h, e, bias=False)
        self.gate_up = nn.Parameter(torch.empty(e, 2 * i, h))
        self.down = nn.Parameter(torch.empty(e, h, i))
        self.shared = MLP(h, cfg.shared_expert_intermediate_size) if cfg.shared_expert_intermediate_size else None
        self.shared_gate = Linear(h, 1, bias=False) if cfg.shared_expert_gate else None

    def experts(self, x: Tensor, weights: Tensor, ids: Tensor) -> Tensor:
        if MOE_KERNELS:
            return kernels.moe_experts(self, x, weights, ids)
        return self.reference_experts(x, weights, ids)

    def reference_experts(self, x: Tensor, weights: Tensor, ids: Tensor) -> Tensor:
        n, k = ids.shape
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)  # (token, slot) pairs sorted by expert
        counts = torch.bincount(flat, minlength=self.gate_up.shape[0]).tolist()
        token_of = order // k
        xs = x[token_of]
        out = torch.empty_like(xs)
        start = 0
        for e, c in enumerate(counts):
            if c:
                seg = xs[start : start + c]
                gate, up = (seg @ self.gate_up[e].T).chunk(2, dim=-1)
                out[start : start + c] = (F.silu(gate) * up) @ self.down[e].T
                start += c
        out = out.float() * weights.reshape(-1)[order].unsqueeze(1)
        y = torch.zeros(n, x.shape[1], dtype=torch.float32, device=x.device)
        y.index_add_(0, token_of, out)
        return y

    def forward(self, x: Tensor) -> Tensor:
        weights, ids = route(self.router(x), self.k, self.mode, self.norm_topk)
        y = self.experts(x, weights, ids)
        if self.shared is not None:
            s = self.shared(x).float()
            if self.shared_gate is not None:
                s = s * torch.sigmoid(self.shared_gate(x).float())
            y = y + s
        return y.to(x.dtype)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.ffn = MoE(cfg) if cfg.moe_layers[layer] else MLP(cfg.hidden_size, cfg.intermediate_size)
        self.residual_multiplier = cfg.residual_multiplier

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kv: KVStore) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, kv, self.layer) * self.residual_multiplier
        return x + self.ffn(self.ffn_norm(x)) * self.residual_multiplier


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        inv_freq, self.rope_scale = rope_inv_freq(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def tie_weights(self) -> None:
        if self.cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def forward(self, tokens: Tensor, positions: Tensor, kv: KVStore, logits_rows: Tensor | None = None) -> Tensor:
        """Logits (fp32) for `logits_rows` of the flattened batch (all rows when None)."""
        angles = positions.float()[:, None] * self.inv_freq[None, :]
        cos = (torch.cat((angles, angles), dim=-1).cos() * self.rope_scale)[:, None, :]
        sin = angles.sin() * self.rope_scale
        sin = torch.cat((-sin, sin), dim=-1)[:, None, :]  # signed for `apply_rope`
        x = self.embed(tokens).float()  # the residual stream stays fp32 whatever the weights' dtype
        if self.cfg.embedding_multiplier != 1.0:
            x = x * self.cfg.embedding_multiplier
        for block in self.layers:
            x = block(x, cos, sin, kv)
        if logits_rows is not None:
            x = x[logits_rows]
        logits = self.lm_head(self.norm(x)).float()
        return logits / self.cfg.logits_scaling if self.cfg.logits_scaling != 1.0 else logits
