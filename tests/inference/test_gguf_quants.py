"""Quantised GGUF blocks decode to the right floats.

The loader decodes quantised tensors with gguf-py's `dequantize`. Here an independent, loop-by-loop
reference dequantiser for every block format the loader claims is written from the ggml block
structs (`ggml-common.h`) and the `dequantize_row_*` functions of llama.cpp's `ggml-quants.c`.
Random raw blocks (gguf-py cannot quantise the K-quants, so the blocks are built by hand) are
written to a GGUF file, read back through the loader and compared with the reference.

The reference computes in float32 in the same order as the C code, so the results agree exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGUFWriter
from gguf import GGMLQuantizationType as Q

from simulacra.inference.config import ModelConfig
from simulacra.inference.gguf_loader import SUPPORTED_TYPES, gguf_pieces, open_gguf

QK_K = 256  # elements of a K-quant super-block
TENSOR = "blk.0.ffn_down.weight"
PIECE = "layers.0.ffn.down"

# Block structs, field by field in memory order, as `ggml-common.h` declares them:
# qtype -> (elements per block, [(field, bytes)]). `ggml_half` fields are 2-byte IEEE half floats.
LAYOUTS: dict[Q, tuple[int, list[tuple[str, int]]]] = {
    Q.Q4_0: (32, [("d", 2), ("qs", 16)]),
    Q.Q4_1: (32, [("d", 2), ("m", 2), ("qs", 16)]),
    Q.Q5_0: (32, [("d", 2), ("qh", 4), ("qs", 16)]),
    Q.Q5_1: (32, [("d", 2), ("m", 2), ("qh", 4), ("qs", 16)]),
    Q.Q8_0: (32, [("d", 2), ("qs", 32)]),
    Q.Q2_K: (QK_K, [("scales", QK_K // 16), ("qs", QK_K // 4), ("d", 2), ("dmin", 2)]),
    Q.Q3_K: (QK_K, [("hmask", QK_K // 8), ("qs", QK_K // 4), ("scales", 12), ("d", 2)]),
    Q.Q4_K: (QK_K, [("d", 2), ("dmin", 2), ("scales", 12), ("qs", QK_K // 2)]),
    Q.Q5_K: (QK_K, [("d", 2), ("dmin", 2), ("scales", 12), ("qh", QK_K // 8), ("qs", QK_K // 2)]),
    Q.Q6_K: (QK_K, [("ql", QK_K // 2), ("qh", QK_K // 4), ("scales", QK_K // 16), ("d", 2)]),
}
HALF_FIELDS = ("d", "m", "dmin")  # the fp16 scale fields; the random bytes of these are replaced


def _offsets(qtype: Q) -> dict[str, tuple[int, int]]:
    """Field -> (start, end) byte offsets inside one block."""
    out, pos = {}, 0
    for name, size in LAYOUTS[qtype][1]:
        out[name] = (pos, pos + size)
        pos += size
    return out


def _fields(block: bytes, qtype: Q) -> dict[str, bytes]:
    return {name: block[a:b] for name, (a, b) in _offsets(qtype).items()}


def _half(b: bytes) -> np.float32:
    """GGML_FP16_TO_FP32 of a little-endian ggml_half."""
    return np.frombuffer(b, dtype="<f2")[0].astype(np.float32)


def _f(x: int) -> np.float32:
    return np.float32(x)


# ---------------------------------------------------------------------------------------------
# Reference dequantisers: one block (bytes) -> its floats, transcribed from ggml-quants.c
# (the C loop index `l` is `k` here).
# ---------------------------------------------------------------------------------------------


def ref_q4_0(block: bytes) -> list[np.float32]:
    """dequantize_row_q4_0: byte j holds element j (low nibble) and j+16 (high nibble); (q-8)*d."""
    f = _fields(block, Q.Q4_0)
    d, qs = _half(f["d"]), f["qs"]
    y = [np.float32(0)] * 32
    for j in range(16):
        y[j] = _f((qs[j] & 0x0F) - 8) * d
        y[j + 16] = _f((qs[j] >> 4) - 8) * d
    return y


def ref_q4_1(block: bytes) -> list[np.float32]:
    """dequantize_row_q4_1: nibbles as in q4_0, unsigned; q*d + m."""
    f = _fields(block, Q.Q4_1)
    d, m, qs = _half(f["d"]), _half(f["m"]), f["qs"]
    y = [np.float32(0)] * 32
    for j in range(16):
        y[j] = _f(qs[j] & 0x0F) * d + m
        y[j + 16] = _f(qs[j] >> 4) * d + m
    return y


def ref_q5_0(block: bytes) -> list[np.float32]:
    """dequantize_row_q5_0: qh is a little-endian uint32 whose bit i is the 5th bit of element i;
    (q-16)*d."""
    f = _fields(block, Q.Q5_0)
    d, qs = _half(f["d"]), f["qs"]
    qh = int.from_bytes(f["qh"], "little")
    y = [np.float32(0)] * 32
    for j in range(16):
        xh_0 = ((qh >> j) << 4) & 0x10
        xh_1 = (qh >> (j + 12)) & 0x10  # bit j+16, moved to 0x10
        y[j] = _f(((qs[j] & 0x0F) | xh_0) - 16) * d
        y[j + 16] = _f(((qs[j] >> 4) | xh_1) - 16) * d
    return y


def ref_q5_1(block: bytes) -> list[np.float32]:
    """dequantize_row_q5_1: 5-bit unsigned quants as in q5_0; q*d + m."""
    f = _fields(block, Q.Q5_1)
    d, m, qs = _half(f["d"]), _half(f["m"]), f["qs"]
    qh = int.from_bytes(f["qh"], "little")
    y = [np.float32(0)] * 32
    for j in range(16):
        xh_0 = ((qh >> j) << 4) & 0x10
        xh_1 = (qh >> (j + 12)) & 0x10
        y[j] = _f((qs[j] & 0x0F) | xh_0) * d + m
        y[j + 16] = _f((qs[j] >> 4) | xh_1) * d + m
    return y


def ref_q8_0(block: bytes) -> list[np.float32]:
    """dequantize_row_q8_0: 32 int8 quants; q*d."""
    f = _fields(block, Q.Q8_0)
    d = _half(f["d"])
    qs = np.frombuffer(f["qs"], dtype=np.int8)
    return [_f(int(q)) * d for q in qs]


def ref_q2_K(block: bytes) -> list[np.float32]:
    """dequantize_row_q2_K: 16 sub-blocks of 16; scales[i] = scale (low nibble) | min (high nibble);
    each qs byte holds 2-bit quants of four sub-blocks 32 elements apart; d*sc*q - dmin*m."""
    f = _fields(block, Q.Q2_K)
    d, dmin, scales, qs = _half(f["d"]), _half(f["dmin"]), f["scales"], f["qs"]
    y: list[np.float32] = []
    is_ = 0
    for n in range(0, QK_K, 128):
        q = qs[n // 4 : n // 4 + 32]
        for shift in (0, 2, 4, 6):
            for half in (0, 16):
                sc = scales[is_]
                is_ += 1
                dl, ml = d * _f(sc & 0xF), dmin * _f(sc >> 4)
                y += [dl * _f((q[half + k] >> shift) & 3) - ml for k in range(16)]
    return y


def _q3_k_scale(scales: bytes, k: int) -> int:
    """Scale k (0..15) of q3_K: low 4 bits in bytes 0..7 (low nibbles for k < 8, high nibbles for
    k >= 8), high 2 bits in bytes 8..11 (2 bits per k // 4). This is the kmask1/kmask2 `aux`
    shuffle of dequantize_row_q3_K, written byte by byte. Stored with an offset of 32."""
    low = scales[k] & 0xF if k < 8 else scales[k - 8] >> 4
    high = (scales[8 + k % 4] >> (2 * (k // 4))) & 3
    return (low | (high << 4)) - 32


def ref_q3_K(block: bytes) -> list[np.float32]:
    """dequantize_row_q3_K: 2 low bits in qs (as q2_K), the 3rd bit in hmask (bit b of hmask[k] for
    the b-th group of 32 elements); a clear hmask bit subtracts 4; d * (scale-32) * q."""
    f = _fields(block, Q.Q3_K)
    d, hm, qs, scales = _half(f["d"]), f["hmask"], f["qs"], f["scales"]
    y: list[np.float32] = []
    is_, m = 0, 1
    for n in range(0, QK_K, 128):
        q = qs[n // 4 : n // 4 + 32]
        for shift in (0, 2, 4, 6):
            for half in (0, 16):
                dl = d * _f(_q3_k_scale(scales, is_))
                is_ += 1
                y += [dl * _f(((q[half + k] >> shift) & 3) - (0 if hm[half + k] & m else 4)) for k in range(16)]
            m <<= 1
    return y


def _get_scale_min_k4(j: int, q: bytes) -> tuple[int, int]:
    """get_scale_min_k4 of ggml-quants.c: 8 (scale, min) pairs of 6 bits packed in 12 bytes."""
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def ref_q4_K(block: bytes) -> list[np.float32]:
    """dequantize_row_q4_K: 8 sub-blocks of 32; each 32 qs bytes give two sub-blocks (low nibbles,
    then high nibbles); d*sc*q - dmin*m."""
    f = _fields(block, Q.Q4_K)
    d, dmin, scales, qs = _half(f["d"]), _half(f["dmin"]), f["scales"], f["qs"]
    y: list[np.float32] = []
    for i, j in enumerate(range(0, QK_K, 64)):
        q = qs[j // 2 : j // 2 + 32]
        sc1, m1 = _get_scale_min_k4(2 * i, scales)
        sc2, m2 = _get_scale_min_k4(2 * i + 1, scales)
        d1, min1 = d * _f(sc1), dmin * _f(m1)
        d2, min2 = d * _f(sc2), dmin * _f(m2)
        y += [d1 * _f(q[k] & 0xF) - min1 for k in range(32)]
        y += [d2 * _f(q[k] >> 4) - min2 for k in range(32)]
    return y


def ref_q5_K(block: bytes) -> list[np.float32]:
    """dequantize_row_q5_K: as q4_K plus a 5th bit (+16) from qh: sub-block s takes bit s of qh[k]."""
    f = _fields(block, Q.Q5_K)
    d, dmin, scales, qh, qs = _half(f["d"]), _half(f["dmin"]), f["scales"], f["qh"], f["qs"]
    y: list[np.float32] = []
    u1, u2 = 1, 2
    for i, j in enumerate(range(0, QK_K, 64)):
        ql = qs[j // 2 : j // 2 + 32]
        sc1, m1 = _get_scale_min_k4(2 * i, scales)
        sc2, m2 = _get_scale_min_k4(2 * i + 1, scales)
        d1, min1 = d * _f(sc1), dmin * _f(m1)
        d2, min2 = d * _f(sc2), dmin * _f(m2)
        y += [d1 * _f((ql[k] & 0xF) + (16 if qh[k] & u1 else 0)) - min1 for k in range(32)]
        y += [d2 * _f((ql[k] >> 4) + (16 if qh[k] & u2 else 0)) - min2 for k in range(32)]
        u1, u2 = u1 << 2, u2 << 2
    return y


def ref_q6_K(block: bytes) -> list[np.float32]:
    """dequantize_row_q6_K: per 128 elements, 64 ql bytes (low 4 bits) and 32 qh bytes (2 high bits
    each for four elements 32 apart); 16 int8 scales of 16 elements; d * scale * (q-32)."""
    f = _fields(block, Q.Q6_K)
    d = _half(f["d"])
    sc_all = np.frombuffer(f["scales"], dtype=np.int8)
    y = [np.float32(0)] * QK_K
    for n in range(0, QK_K, 128):
        ql = f["ql"][n // 2 : n // 2 + 64]
        qh = f["qh"][n // 4 : n // 4 + 32]
        sc = sc_all[n // 16 : n // 16 + 8]
        for k in range(32):
            is_ = k // 16
            q1 = ((ql[k] & 0xF) | (((qh[k] >> 0) & 3) << 4)) - 32
            q2 = ((ql[k + 32] & 0xF) | (((qh[k] >> 2) & 3) << 4)) - 32
            q3 = ((ql[k] >> 4) | (((qh[k] >> 4) & 3) << 4)) - 32
            q4 = ((ql[k + 32] >> 4) | (((qh[k] >> 6) & 3) << 4)) - 32
            y[n + k] = d * _f(int(sc[is_])) * _f(q1)
            y[n + k + 32] = d * _f(int(sc[is_ + 2])) * _f(q2)
            y[n + k + 64] = d * _f(int(sc[is_ + 4])) * _f(q3)
            y[n + k + 96] = d * _f(int(sc[is_ + 6])) * _f(q4)
    return y


REFERENCES: dict[Q, Callable[[bytes], list[np.float32]]] = {
    Q.Q4_0: ref_q4_0,
    Q.Q4_1: ref_q4_1,
    Q.Q5_0: ref_q5_0,
    Q.Q5_1: ref_q5_1,
    Q.Q8_0: ref_q8_0,
    Q.Q2_K: ref_q2_K,
    Q.Q3_K: ref_q3_K,
    Q.Q4_K: ref_q4_K,
    Q.Q5_K: ref_q5_K,
    Q.Q6_K: ref_q6_K,
}
FORMATS = list(REFERENCES)


def reference_dequantize(raw: np.ndarray, qtype: Q) -> np.ndarray:
    """Rows of raw blocks (uint8, [rows, bytes per row]) -> float32 [rows, elements per row]."""
    type_size = GGML_QUANT_SIZES[qtype][1]
    out = []
    for row in raw:
        data = row.tobytes()
        values: list[np.float32] = []
        for start in range(0, len(data), type_size):
            values += REFERENCES[qtype](data[start : start + type_size])
        out.append(values)
    return np.array(out, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Writing blocks to a GGUF file and decoding them through the loader.
# ---------------------------------------------------------------------------------------------


def random_blocks(qtype: Q, rows: int, cols: int, seed: int) -> np.ndarray:
    """Random raw blocks, [rows, bytes per row]; the fp16 scales are finite: d and m in [-0.1, 0.1],
    dmin (subtracted by the K-quants) in (0, 0.1]."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, cols // block_size, type_size), dtype=np.uint8)
    for name, (a, b) in _offsets(qtype).items():
        if name in HALF_FIELDS:
            low = 0.001 if name == "dmin" else -0.1
            vals = rng.uniform(low, 0.1, size=raw.shape[:2]).astype("<f2")
            raw[:, :, a:b] = vals.view(np.uint8).reshape(*raw.shape[:2], 2)
    return raw.reshape(rows, -1)


def load_through_loader(tmp_path: Path, qtype: Q, raw: np.ndarray) -> np.ndarray:
    """Write raw blocks as one quantised tensor of a llama GGUF file and decode it with the loader's
    `open_gguf` + `gguf_pieces` (the path `load_transformer` takes)."""
    rows, cols = raw.shape[0], raw.shape[1] // GGML_QUANT_SIZES[qtype][1] * GGML_QUANT_SIZES[qtype][0]
    path = tmp_path / f"{qtype.name}.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor(TENSOR, raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    reader, meta = open_gguf(path)
    assert meta["general.architecture"] == "llama"
    (t,) = reader.tensors
    assert t.name == TENSOR and t.tensor_type == qtype
    assert [int(n) for n in t.shape] == [cols, rows]  # GGUF lists dimensions fastest-first
    assert np.array_equal(np.asarray(t.data).reshape(raw.shape), raw)  # the bytes survived the file
    cfg = ModelConfig(  # only read to unpermute Q/K rows, not for ffn_down
        family="llama",
        vocab_size=32,
        hidden_size=rows,
        n_layers=1,
        n_heads=1,
        n_kv_heads=1,
        head_dim=rows,
        intermediate_size=cols,
    )
    ((name, tensor),) = list(gguf_pieces(reader, cfg, path))
    assert name == PIECE and tuple(tensor.shape) == (rows, cols)
    return tensor.numpy()


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_every_supported_quantisation_has_a_reference() -> None:
    assert set(FORMATS) == {q for q in SUPPORTED_TYPES if q not in (Q.F32, Q.F16, Q.BF16)}


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda q: q.name)
def test_block_layout_matches_gguf_sizes(qtype: Q) -> None:
    """The structs the references read agree with gguf-py's (block size, bytes per block)."""
    block_size, fields = LAYOUTS[qtype]
    assert (block_size, sum(size for _, size in fields)) == GGML_QUANT_SIZES[qtype]
    raw = random_blocks(qtype, 1, block_size, seed=0)
    assert len(REFERENCES[qtype](raw.tobytes())) == block_size


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda q: q.name)
def test_loader_decodes_random_blocks_like_the_reference(tmp_path: Path, qtype: Q) -> None:
    raw = random_blocks(qtype, rows=2, cols=512, seed=1234 + int(qtype))
    got = load_through_loader(tmp_path, qtype, raw)
    want = reference_dequantize(raw, qtype)
    assert np.isfinite(want).all() and want.std() > 0
    np.testing.assert_array_equal(got, want)


def test_hand_encoded_q8_0_and_q4_0(tmp_path: Path) -> None:
    d = np.array([0.5], dtype="<f2").tobytes()  # 0x3800
    assert d == b"\x00\x38"

    # Q8_0: d, then 32 int8 quants; value = q * d.
    #   q = 2 -> 1.0, -3 -> -1.5, 127 -> 63.5, -128 -> -64.0, 1 -> 0.5, everything else 0 -> 0.0.
    qs = np.zeros(32, dtype=np.int8)
    qs[[0, 1, 2, 3, 31]] = [2, -3, 127, -128, 1]
    q8 = np.frombuffer(d + qs.tobytes(), dtype=np.uint8).reshape(1, 34)
    want = np.zeros(32, dtype=np.float32)
    want[[0, 1, 2, 3, 31]] = [1.0, -1.5, 63.5, -64.0, 0.5]
    np.testing.assert_array_equal(load_through_loader(tmp_path, Q.Q8_0, q8)[0], want)
    np.testing.assert_array_equal(reference_dequantize(q8, Q.Q8_0)[0], want)

    # Q4_0: d, then 16 bytes; byte j = element j (low nibble) | element j+16 (high nibble);
    # value = (nibble - 8) * d, so nibble 8 -> 0.0.
    #   byte 0 = 0x9F: element 0  = (15-8)*0.5 =  3.5, element 16 = (9-8)*0.5 =  0.5
    #   byte 1 = 0x08: element 1  = ( 8-8)*0.5 =  0.0, element 17 = (0-8)*0.5 = -4.0
    #   byte 2 = 0xA6: element 2  = ( 6-8)*0.5 = -1.0, element 18 = (10-8)*0.5 = 1.0
    #   bytes 3..15 = 0x88: 0.0
    nibbles = bytes([0x9F, 0x08, 0xA6] + [0x88] * 13)
    q4 = np.frombuffer(d + nibbles, dtype=np.uint8).reshape(1, 18)
    want = np.zeros(32, dtype=np.float32)
    want[[0, 2, 16, 17, 18]] = [3.5, -1.0, 0.5, -4.0, 1.0]
    np.testing.assert_array_equal(load_through_loader(tmp_path, Q.Q4_0, q4)[0], want)
    np.testing.assert_array_equal(reference_dequantize(q4, Q.Q4_0)[0], want)
