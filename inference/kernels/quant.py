"""Quantised weights kept quantised in memory (GGUF Q8_0, Q4_0, Q4_1) and the numba kernels that read them.

Why: decode is memory-bound. A decode step of a top-8 OLMoE layer reads 8 experts' weights; Q4_0 is
18 bytes per 32 weights against 64 for bf16 and 128 for fp32, so keeping experts quantised and
decoding them inside the kernel (never materialising a float copy in memory) moves 3.5-7x fewer
bytes — if the kernel decodes fast enough to keep up with memory, which is what the layout is for.

Layout. GGUF interleaves each 32-weight block as (f16 scale, [f16 min], 32 quants). We keep the same
quants and scales, rearranged once at load time into *row tiles*: `L` consecutive rows (`lanes`,
128 for real shapes) are interleaved so that, for each column, the L rows' quants are contiguous:

* `qs`: Q8_0 int8 `[S, R/L, C, L]`; Q4 uint8 `[S, R/L, C/2, L]`, where byte j of a row holds
  weight j in its low nibble and weight j + C/2 in its high nibble (long unit-stride unpacking);
* `d` (and `m` for Q4_1): float32 `[S, R/L, C/32, L]` (numba has no float16 on CPU: 2 extra bytes
  per block, Q4_0 moves 20 instead of 18 bytes per 32 weights).

The matvec over a tile then runs with the L rows as SIMD lanes: per column one vector of quants, one
broadcast activation, per-block scales applied once per 32 columns as a vector — no horizontal sum
per block, no float copy of the row (measured 2-2.5x faster than decode-row-then-dot, see
docs/KERNELS.md). Dequantised values (`dequantize`, the wide path) are exactly gguf-py's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch
from numba import types
from numba.extending import overload
from torch import Tensor

from simulacra.inference.kernels.simd import (
    vadd,
    vfma,
    vload,
    vload_i8,
    vload_nibbles,
    vmul,
    vsplat,
    vstore,
    vsub,
    vzero,
)

QTYPES = ("Q8_0", "Q4_0", "Q4_1")
BLOCK = 32
GGUF_BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}
MAX_LANES = 16  # rows per interleaved tile: two 8-lane vectors (fewer only for odd shapes, see lanes_for)


def tile_dot(w, e, tile, xs, rows, xsum, res):  # pragma: no cover - numba overload below
    """res[t, l] = (row tile*L + l of expert e) . xs[rows[t]] for every token t and lane l.

    `xsum[r, b]` is the sum of xs[r] over 32-column block b (`block_sums`), which Q4 needs for its
    offsets; computed once per activation row, not once per tile."""
    raise NotImplementedError


def decode_tile(w, e, tile, out_t):  # pragma: no cover - numba overload below
    """out_t[:, tile*L + l] = row tile*L + l of expert e as float32, exactly as gguf-py dequantises it."""
    raise NotImplementedError


def _kind(w) -> str | None:
    if not isinstance(w, types.BaseTuple):
        return None
    if len(w) == 2 and w[0].dtype == types.int8:
        return "Q8_0"
    if len(w) == 2 and w[0].dtype == types.uint8:
        return "Q4_0"
    if len(w) == 3:
        return "Q4_1"
    return None


#
# A tile is 16 rows side by side: per column, 16 quants = two 8-lane vectors. Activations are
# broadcast; the per-block partial sums stay in registers (`vec8`) for the 32 columns of a block and
# are scaled into `res` once per block. Tokens are taken one or two at a time (two share each
# converted weight vector; more would spill the 16 AVX registers), and a token's sequence of
# operations is the same either way: the result for a token never depends on the batch around it.


@numba.njit(fastmath=True, cache=True)
def _q8_tile16(qs, d, xs, rows, res):  # pragma: no cover - compiled
    n_cols = qs.shape[0]
    bs = n_cols // d.shape[0]
    q1 = qs.reshape(-1)
    c = rows.size
    t = 0
    while t < c:
        pair = c - t >= 2
        x0 = xs[rows[t]]
        x1 = xs[rows[t + 1]] if pair else x0
        r0 = vzero()
        r1 = vzero()
        r2 = vzero()
        r3 = vzero()
        for b in range(d.shape[0]):
            qb = q1[16 * b * bs : 16 * (b + 1) * bs]
            x0b = x0[b * bs : (b + 1) * bs]
            x1b = x1[b * bs : (b + 1) * bs]
            a0 = vzero()  # token 0, lanes 0-7 / 8-15
            a1 = vzero()
            a2 = vzero()  # token 1
            a3 = vzero()
            for j in range(bs):  # a token's arithmetic is the same whether or not it has a partner
                w0 = vload_i8(qb, 16 * j)
                w1 = vload_i8(qb, 16 * j + 8)
                s0 = vsplat(x0b[j])
                a0 = vfma(w0, s0, a0)
                a1 = vfma(w1, s0, a1)
                if pair:
                    s1 = vsplat(x1b[j])
                    a2 = vfma(w0, s1, a2)
                    a3 = vfma(w1, s1, a3)
            d0 = vload(d[b], 0)
            d1 = vload(d[b], 8)
            r0 = vfma(a0, d0, r0)
            r1 = vfma(a1, d1, r1)
            if pair:
                r2 = vfma(a2, d0, r2)
                r3 = vfma(a3, d1, r3)
        vstore(res[t], 0, r0)
        vstore(res[t], 8, r1)
        if pair:
            vstore(res[t + 1], 0, r2)
            vstore(res[t + 1], 8, r3)
        t += 2 if pair else 1


@numba.njit(fastmath=True, cache=True)
def _q4_tile16(qs, d, m, with_min, xs, rows, xsum, res):  # pragma: no cover - compiled
    """Byte column j holds weights j (low nibbles) and j + C/2 (high): block b and block b + nb/2 are
    accumulated from the same bytes. Q4_0: d * (sum q*x - 8 sum x); Q4_1: d * sum q*x + m * sum x."""
    half = qs.shape[0]
    hb = d.shape[0] // 2
    bs = 2 * half // d.shape[0]
    q1 = qs.reshape(-1)
    c = rows.size
    t = 0
    while t < c:
        pair = c - t >= 2
        tt = t + 1 if pair else t
        x0, x1 = xs[rows[t]], xs[rows[tt]]
        sum0, sum1 = xsum[rows[t]], xsum[rows[tt]]
        r0 = vzero()
        r1 = vzero()
        r2 = vzero()
        r3 = vzero()
        for b in range(hb):
            qb = q1[16 * b * bs : 16 * (b + 1) * bs]
            x0l, x0h = x0[b * bs : (b + 1) * bs], x0[half + b * bs : half + (b + 1) * bs]
            x1l, x1h = x1[b * bs : (b + 1) * bs], x1[half + b * bs : half + (b + 1) * bs]
            lo0 = vzero()  # token 0: low / high blocks, lanes 0-7 / 8-15
            lo1 = vzero()
            hi0 = vzero()
            hi1 = vzero()
            plo0 = vzero()  # token 1
            plo1 = vzero()
            phi0 = vzero()
            phi1 = vzero()
            for j in range(bs):
                l0, h0 = vload_nibbles(qb, 16 * j)
                l1, h1 = vload_nibbles(qb, 16 * j + 8)
                sl = vsplat(x0l[j])
                sh = vsplat(x0h[j])
                lo0 = vfma(l0, sl, lo0)
                lo1 = vfma(l1, sl, lo1)
                hi0 = vfma(h0, sh, hi0)
                hi1 = vfma(h1, sh, hi1)
                if pair:
                    sl = vsplat(x1l[j])
                    sh = vsplat(x1h[j])
                    plo0 = vfma(l0, sl, plo0)
                    plo1 = vfma(l1, sl, plo1)
                    phi0 = vfma(h0, sh, phi0)
                    phi1 = vfma(h1, sh, phi1)
            bl, bh = b, b + hb
            dl0, dl1, dh0, dh1 = vload(d[bl], 0), vload(d[bl], 8), vload(d[bh], 0), vload(d[bh], 8)
            ml0, ml1, mh0, mh1 = vload(m[bl], 0), vload(m[bl], 8), vload(m[bh], 0), vload(m[bh], 8)
            k = np.float32(1.0) if with_min else np.float32(-8.0)  # offset: m * sum x, or -8 d * sum x
            r0 = vfma(lo0, dl0, vfma(hi0, dh0, r0))
            r1 = vfma(lo1, dl1, vfma(hi1, dh1, r1))
            r0 = vfma(ml0, vsplat(k * sum0[bl]), vfma(mh0, vsplat(k * sum0[bh]), r0))
            r1 = vfma(ml1, vsplat(k * sum0[bl]), vfma(mh1, vsplat(k * sum0[bh]), r1))
            if pair:
                r2 = vfma(plo0, dl0, vfma(phi0, dh0, r2))
                r3 = vfma(plo1, dl1, vfma(phi1, dh1, r3))
                r2 = vfma(ml0, vsplat(k * sum1[bl]), vfma(mh0, vsplat(k * sum1[bh]), r2))
                r3 = vfma(ml1, vsplat(k * sum1[bl]), vfma(mh1, vsplat(k * sum1[bh]), r3))
        vstore(res[t], 0, r0)
        vstore(res[t], 8, r1)
        if pair:
            vstore(res[t + 1], 0, r2)
            vstore(res[t + 1], 8, r3)
        t += 2 if pair else 1


@numba.njit(fastmath=True, cache=True)
def block_sums(xs, bs):  # pragma: no cover - compiled
    """Sum of each row of xs over each `bs`-column block."""
    n, cols = xs.shape
    out = np.empty((n, cols // bs), np.float32)
    for r in range(n):
        for b in range(cols // bs):
            acc = np.float32(0.0)
            for i in range(b * bs, b * bs + bs):
                acc += xs[r, i]
            out[r, b] = acc
    return out


@numba.njit(fastmath=True, cache=True)
def _tile_generic(qs, d, m, nibbles, with_min, xs, rows, res):  # pragma: no cover - compiled
    """Any tiling: each column of L weights is dequantised once and added into every token's row."""
    n_q, lanes = qs.shape
    n_cols = 2 * n_q if nibbles else n_q
    bs = n_cols // d.shape[0]
    col = np.empty(lanes, np.float32)
    res[:] = 0.0
    for i in range(n_cols):
        db, mb = d[i // bs], m[i // bs]
        q = qs[i % n_q]
        shift = 0 if i < n_q else 4
        for lane in range(lanes):
            if nibbles:
                v = np.float32((np.int32(q[lane]) >> shift) & 15)
                col[lane] = db[lane] * v + mb[lane] if with_min else db[lane] * (v - np.float32(8.0))
            else:
                col[lane] = db[lane] * np.float32(q[lane])
        for t in range(rows.size):
            xi = xs[rows[t], i]
            rt = res[t]
            for lane in range(lanes):
                rt[lane] += col[lane] * xi


@overload(tile_dot)
def _tile_dot(w, e, tile, xs, rows, xsum, res):
    """16-lane tiles go to the register kernels above; other tilings (rows not a multiple of 32, or Q4
    rows not a multiple of 64 columns: tiny test models) to `_tile_generic`."""
    kind = _kind(w)
    if kind == "Q8_0":

        def impl_q8(w, e, tile, xs, rows, xsum, res):
            qs, d = w[0][e, tile], w[1][e, tile]
            if qs.shape[1] == 16:
                _q8_tile16(qs, d, xs, rows, res)
            else:
                _tile_generic(qs, d, d, False, False, xs, rows, res)

        return impl_q8
    if kind in ("Q4_0", "Q4_1"):
        with_min = kind == "Q4_1"

        def impl_q4(w, e, tile, xs, rows, xsum, res):
            qs, d = w[0][e, tile], w[1][e, tile]
            m = w[-1][e, tile]  # Q4_1's minimums (the scales again for Q4_0, unused)
            if qs.shape[1] == 16 and qs.shape[0] % (2 * qs.shape[0] // d.shape[0]) == 0:
                _q4_tile16(qs, d, m, with_min, xs, rows, xsum, res)
            else:
                _tile_generic(qs, d, m, True, with_min, xs, rows, res)

        return impl_q4
    return None


@overload(decode_tile, jit_options={"fastmath": False})  # gguf-py's arithmetic exactly: no FMA contraction
def _decode_tile(w, e, tile, out_t):
    """out_t is the *transposed* matrix [C, R] (C-contiguous): column i of the tile's L rows lands in
    out_t[i, tile*L : tile*L + L], so the quants read and the floats written are both unit-stride."""
    kind = _kind(w)
    if kind is None:
        return None
    # 16-lane tiles: whole columns as two vectors (vec8 ops carry no fast-math flags, so mul and add stay
    # separate roundings, as in gguf-py). Other tilings: the same arithmetic one lane at a time.
    if kind == "Q8_0":

        def impl(w, e, tile, out_t):
            qs, d = w[0][e, tile], w[1][e, tile]
            n_cols, lanes = qs.shape
            bs = n_cols // d.shape[0]
            base = tile * lanes
            q1 = qs.reshape(-1)
            for i in range(n_cols):
                db = d[i // bs]
                o = out_t[i][base : base + lanes]
                if lanes == 16:
                    vstore(o, 0, vmul(vload(db, 0), vload_i8(q1, 16 * i)))
                    vstore(o, 8, vmul(vload(db, 8), vload_i8(q1, 16 * i + 8)))
                else:
                    q = qs[i]
                    for lane in range(lanes):
                        o[lane] = db[lane] * np.float32(q[lane])

        return impl
    with_min = kind == "Q4_1"

    def impl4(w, e, tile, out_t):
        qs, d = w[0][e, tile], w[1][e, tile]
        m = w[-1][e, tile]  # the scales again for Q4_0 (unused there)
        half, lanes = qs.shape
        bs = 2 * half // d.shape[0]
        base = tile * lanes
        q1 = qs.reshape(-1)
        eight = vsplat(np.float32(8.0))
        for i in range(half):  # byte column i: weight i (low nibble) and weight i + C/2 (high nibble)
            d_lo, d_hi = d[i // bs], d[(i + half) // bs]
            m_lo, m_hi = m[i // bs], m[(i + half) // bs]
            o_lo, o_hi = out_t[i][base : base + lanes], out_t[i + half][base : base + lanes]
            if lanes == 16:
                for h in range(2):
                    lo, hi = vload_nibbles(q1, 16 * i + 8 * h)
                    if with_min:
                        vstore(o_lo, 8 * h, vadd(vmul(vload(d_lo, 8 * h), lo), vload(m_lo, 8 * h)))
                        vstore(o_hi, 8 * h, vadd(vmul(vload(d_hi, 8 * h), hi), vload(m_hi, 8 * h)))
                    else:
                        vstore(o_lo, 8 * h, vmul(vload(d_lo, 8 * h), vsub(lo, eight)))
                        vstore(o_hi, 8 * h, vmul(vload(d_hi, 8 * h), vsub(hi, eight)))
            else:
                q = qs[i]
                for lane in range(lanes):
                    v = np.int32(q[lane])
                    lo_f, hi_f = np.float32(v & 15), np.float32(v >> 4)
                    if with_min:
                        o_lo[lane] = d_lo[lane] * lo_f + m_lo[lane]
                        o_hi[lane] = d_hi[lane] * hi_f + m_hi[lane]
                    else:
                        o_lo[lane] = d_lo[lane] * (lo_f - np.float32(8.0))
                        o_hi[lane] = d_hi[lane] * (hi_f - np.float32(8.0))

    return impl4


@numba.njit(cache=True, parallel=True)
def _dequantize_t(w, out_t):  # pragma: no cover - compiled
    """out_t[s, C, R] <- every stacked matrix, transposed (the layout a torch matmul `x @ W.T` wants)."""
    n_s, n_tiles = w[0].shape[0], w[0].shape[1]
    for it in numba.prange(n_s * n_tiles):
        s, tile = it // n_tiles, it % n_tiles
        decode_tile(w, s, tile, out_t[s])


@numba.njit(cache=True, parallel=True, fastmath=True)
def narrow_experts_q(x, tokens, starts, counts, experts, gate_up, down, act, out):  # pragma: no cover - compiled
    """Quantised narrow expert kernel (few tokens per expert), parallel over (expert, row tile).

    Phase 1: for each gate tile g and its up tile (g + I/L), act[s] = silu(gate) * up for the
    expert's slots s. Phase 2: out[s] = down tiles . act[s]. Each weight byte is read once per step.
    """
    inter = act.shape[1]
    hidden = out.shape[1]
    n_exp = experts.size
    lanes1 = gate_up[0].shape[3]
    tiles1 = inter // lanes1
    xsum = block_sums(x, hidden // gate_up[1].shape[2])
    for it in numba.prange(n_exp * tiles1):
        e = experts[it // tiles1]
        g = it % tiles1
        lo, c = starts[e], counts[e]
        rows = tokens[lo : lo + c]
        gate = np.empty((c, lanes1), np.float32)
        up = np.empty((c, lanes1), np.float32)
        tile_dot(gate_up, e, g, x, rows, xsum, gate)
        tile_dot(gate_up, e, tiles1 + g, x, rows, xsum, up)
        for t in range(c):
            a = act[lo + t, g * lanes1 : g * lanes1 + lanes1]
            for lane in range(lanes1):
                v = gate[t, lane]
                a[lane] = v / (np.float32(1.0) + np.exp(-v)) * up[t, lane]
    lanes2 = down[0].shape[3]
    tiles2 = hidden // lanes2
    bs2 = inter // down[1].shape[2]
    asum = np.zeros((act.shape[0], inter // bs2), np.float32)
    for i in range(n_exp):  # cheap (one add per activation); a prange here only costs compile time
        lo, c = starts[experts[i]], counts[experts[i]]
        asum[lo : lo + c] = block_sums(act[lo : lo + c], bs2)
    for it in numba.prange(n_exp * tiles2):
        e = experts[it // tiles2]
        tile = it % tiles2
        lo, c = starts[e], counts[e]
        rows = np.arange(lo, lo + c)
        res = np.empty((c, lanes2), np.float32)
        tile_dot(down, e, tile, act, rows, asum, res)
        for t in range(c):
            out[lo + t, tile * lanes2 : tile * lanes2 + lanes2] = res[t]


@numba.njit(cache=True, parallel=True, fastmath=True)
def _qmatmul(x, w, out):  # pragma: no cover - compiled
    """out[n, R] = x[n] . W[0] rows, parallel over row tiles."""
    lanes = w[0].shape[3]
    n_tiles = w[0].shape[1]
    rows = np.arange(x.shape[0])
    xsum = block_sums(x, x.shape[1] // w[1].shape[2])
    for tile in numba.prange(n_tiles):
        res = np.empty((x.shape[0], lanes), np.float32)
        tile_dot(w, 0, tile, x, rows, xsum, res)
        out[:, tile * lanes : tile * lanes + lanes] = res


@numba.njit(cache=True, parallel=True)
def _quantize_q8_0(x, codes, d):  # pragma: no cover - compiled
    """llama.cpp's reference `quantize_row_q8_0` (gguf-py's bit-exact numpy port), scale left in f32."""
    n_rows, n_blocks = d.shape
    for r in numba.prange(n_rows):
        for b in range(n_blocks):
            blk = x[r, b * 32 : b * 32 + 32]
            amax = np.float32(0.0)
            for i in range(32):
                amax = max(amax, abs(blk[i]))
            db = amax / np.float32(127.0)
            inv = np.float32(0.0) if db == 0 else np.float32(1.0) / db
            for i in range(32):
                v = blk[i] * inv
                a = abs(v)
                fl = np.floor(a)
                rounded = fl + np.floor(np.float32(2.0) * (a - fl))
                codes[r, b * 32 + i] = np.int8(rounded if v >= 0 else -rounded)
            d[r, b] = db


@numba.njit(cache=True, parallel=True)
def _quantize_q4(x, codes, d, m, with_min):  # pragma: no cover - compiled
    """llama.cpp's reference `quantize_row_q4_0` / `q4_1` (as gguf-py), 4-bit codes out, scales in f32."""
    n_rows, n_blocks = d.shape
    for r in numba.prange(n_rows):
        for b in range(n_blocks):
            blk = x[r, b * 32 : b * 32 + 32]
            out = codes[r, b * 32 : b * 32 + 32]
            if with_min:
                lo, hi = blk[0], blk[0]
                for i in range(32):
                    lo, hi = min(lo, blk[i]), max(hi, blk[i])
                db = (hi - lo) / np.float32(15.0)
                inv = np.float32(0.0) if db == 0 else np.float32(1.0) / db
                for i in range(32):
                    out[i] = min(15, np.int32(np.trunc((blk[i] - lo) * inv + np.float32(0.5))))
                m[r, b] = lo
            else:
                best = blk[0]
                for i in range(32):
                    if abs(blk[i]) > abs(best):
                        best = blk[i]
                db = best / np.float32(-8.0)
                inv = np.float32(0.0) if db == 0 else np.float32(1.0) / db
                for i in range(32):
                    out[i] = min(15, np.int32(np.trunc(blk[i] * inv + np.float32(8.5))))
            d[r, b] = db


def lanes_for(rows: int) -> int:
    """Rows per interleaved tile: the largest power of two <= MAX_LANES dividing half the rows (all rows
    when odd), so a fused [gate; up] weight never has a tile straddling the two halves."""
    n = rows // 2 if rows % 2 == 0 else rows
    lanes = MAX_LANES
    while n % lanes:
        lanes //= 2
    return lanes


def _interleave(a: np.ndarray, lanes: int) -> np.ndarray:
    """[S, R, X] row-major -> [S, R/L, X, L] (L rows side by side)."""
    s, r, x = a.shape
    return np.ascontiguousarray(a.reshape(s, r // lanes, lanes, x).transpose(0, 1, 3, 2))


def _deinterleave(a: np.ndarray) -> np.ndarray:
    s, t, x, lanes = a.shape
    return np.ascontiguousarray(a.transpose(0, 1, 3, 2).reshape(s, t * lanes, x))


@dataclass
class QuantizedTensor:
    """A stack of row-quantised matrices of float shape `[..., R, C]` (C a multiple of 32), kept quantised.

    Expert weights have shape `[E, R, C]`; a 2-D weight `[R, C]` is stored as a stack of one. Arrays
    are in the row-tile layout of the module docstring (`lanes` rows per tile).
    """

    qtype: str
    shape: tuple[int, ...]
    lanes: int
    qs: np.ndarray
    d: np.ndarray
    m: np.ndarray | None = None

    @classmethod
    def from_codes(
        cls, qtype: str, shape: tuple[int, ...], codes: np.ndarray, d: np.ndarray, m: np.ndarray | None = None
    ) -> QuantizedTensor:
        """From row-major per-weight codes ([.., R, C]: int8 for Q8_0, 0..15 for Q4) and f32 scales [.., R, C/32]."""
        _check(qtype, shape)
        rows, cols = shape[-2:]
        lanes = lanes_for(rows)
        codes = codes.reshape(-1, rows, cols)
        if qtype != "Q8_0":
            codes = codes[..., : cols // 2] | (codes[..., cols // 2 :] << 4)
        arrays = [_interleave(a.reshape(-1, rows, a.shape[-1]), lanes) for a in (codes, d, m) if a is not None]
        return cls(qtype, tuple(shape), lanes, *arrays)

    @classmethod
    def from_gguf(cls, raw: np.ndarray, qtype: str, shape: tuple[int, ...]) -> QuantizedTensor:
        """From GGUF's interleaved blocks (`ReaderTensor.data`, uint8) of a tensor of float `shape`."""
        _check(qtype, shape)
        blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, GGUF_BLOCK_BYTES[qtype])
        lead, n_blocks = shape[:-1], shape[-1] // BLOCK
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32).reshape(*lead, n_blocks)
        if qtype == "Q8_0":
            return cls.from_codes(qtype, shape, blocks[:, 2:].copy().view(np.int8), d)
        nibbles = blocks[:, 2:] if qtype == "Q4_0" else blocks[:, 4:]
        codes = np.concatenate((nibbles & 15, nibbles >> 4), axis=1)  # GGUF's in-block order: i, i + 16
        m = None
        if qtype == "Q4_1":
            m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32).reshape(*lead, n_blocks)
        return cls.from_codes(qtype, shape, codes, d, m)

    @classmethod
    def quantize(cls, w: Tensor | np.ndarray, qtype: str) -> QuantizedTensor:
        """Quantise float weights with llama.cpp's reference rounding (bit-exact with gguf-py)."""
        arr = w.detach().float().cpu().numpy() if isinstance(w, Tensor) else np.asarray(w, np.float32)
        shape = tuple(arr.shape)
        _check(qtype, shape)
        rows = np.ascontiguousarray(arr.reshape(-1, shape[-1]), dtype=np.float32)
        d = np.empty((rows.shape[0], shape[-1] // BLOCK), np.float32)
        m = None
        if qtype == "Q8_0":
            codes = np.empty(rows.shape, np.int8)
            _quantize_q8_0(rows, codes, d)
        else:
            codes = np.empty(rows.shape, np.uint8)
            m = np.empty_like(d)
            _quantize_q4(rows, codes, d, m, qtype == "Q4_1")
            m = m.astype(np.float16).astype(np.float32) if qtype == "Q4_1" else None  # GGUF stores f16
        d = d.astype(np.float16).astype(np.float32)
        return cls.from_codes(qtype, shape, codes, d, m)

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """The numba weight object: (qs, d) or (qs, d, m)."""
        return tuple(a for a in (self.qs, self.d, self.m) if a is not None)

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (this layout, f32 scales)."""
        return sum(a.nbytes for a in self.arrays)

    @property
    def gguf_nbytes(self) -> int:
        """Bytes of the same tensor in GGUF's own block layout (f16 scales)."""
        return int(np.prod(self.shape)) // BLOCK * GGUF_BLOCK_BYTES[self.qtype]

    def dequantize(self) -> Tensor:
        """The float32 weights (exactly gguf-py's dequantisation)."""
        rows, cols = self.shape[-2:]
        out_t = np.empty((self.qs.shape[0], cols, rows), np.float32)
        _dequantize_t(self.arrays, out_t)
        return torch.from_numpy(np.ascontiguousarray(out_t.transpose(0, 2, 1)).reshape(self.shape))

    def dequantize_t(self, e: int, out: np.ndarray | None = None) -> Tensor:
        """Stacked matrix e's float32 weights *transposed*, [C, R] contiguous, decoded into `out` if given
        (a reused buffer): `x @ W.T` is then a plain row-major matmul `x @ dequantize_t(e)`."""
        rows, cols = self.shape[-2:]
        buf = np.empty((1, cols, rows), np.float32) if out is None else out.reshape(1, cols, rows)
        _dequantize_t(tuple(a[e : e + 1] for a in self.arrays), buf)
        return torch.from_numpy(buf[0])

    def codes(self) -> tuple[np.ndarray, ...]:
        """Row-major (codes or packed bytes, d[, m]) as [S, R, X]: for tests and re-layout."""
        return tuple(_deinterleave(a) for a in self.arrays)

    def cat_rows(self, other: QuantizedTensor) -> QuantizedTensor:
        """[.., R1, C] ++ [.., R2, C] along rows (gate and up fused into one weight, still quantised)."""
        same = other.qtype == self.qtype and other.lanes == self.lanes
        if not same or other.shape[:-2] != self.shape[:-2] or other.shape[-1] != self.shape[-1]:
            raise ValueError("cannot fuse quantised tensors of different types, shapes or tilings")
        cat = [np.concatenate((a, b), axis=1) for a, b in zip(self.arrays, other.arrays, strict=True)]
        shape = (*self.shape[:-2], self.shape[-2] + other.shape[-2], self.shape[-1])
        return QuantizedTensor(self.qtype, shape, self.lanes, *cat)


def _check(qtype: str, shape: tuple[int, ...]) -> None:
    if qtype not in QTYPES:
        raise ValueError(f"unsupported quantisation {qtype!r}; supported: {', '.join(QTYPES)}")
    if len(shape) < 2 or shape[-1] % BLOCK:
        raise ValueError(f"quantised rows need a length that is a multiple of {BLOCK}, got shape {shape}")


def qlinear(x: Tensor, w: QuantizedTensor) -> Tensor:
    """`x @ W.T` for a quantised 2-D weight [R, C] (dense FFN or attention projections), fp32 out.

    Reads the weight once for all rows of x, decoding in registers: the decode-time kernel. For many
    rows, `w.dequantize()` once and a float matmul is faster (see docs/KERNELS.md).
    """
    if len(w.shape) != 2:
        raise ValueError("qlinear takes a 2-D quantised weight")
    x2 = np.ascontiguousarray(x.detach().reshape(-1, x.shape[-1]).float().numpy())
    out = np.empty((x2.shape[0], w.shape[0]), np.float32)
    _qmatmul(x2, w.arrays, out)
    return torch.from_numpy(out).reshape(*x.shape[:-1], w.shape[0])
