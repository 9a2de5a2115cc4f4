"""Eight-lane float vectors for numba kernels: a `vec8` type held in one AVX register, and a few intrinsics.

Why: numba compiles without LLVM's SLP vectoriser, and the loop vectoriser only vectorises loops whose
trip counts it cannot see, keeping accumulators of a vectorised loop in memory. A matvec over
quantised weights then spends its time on loads and stores of accumulators rather than on FMAs.
With a value type that *is* an LLVM `<8 x float>`, a kernel keeps its accumulators in registers
across a loop, like C intrinsics code; LLVM lowers the operations to AVX2/FMA (or whatever the host
has: on AVX-512 they are half-width, on ARM two NEON registers).

Loads and stores take (1-D C-contiguous array, start index) and touch elements start .. start + 7;
callers guarantee the range (no bounds checks, as with any SIMD code).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

_V8F = ir.VectorType(ir.FloatType(), 8)
_V8I = ir.VectorType(ir.IntType(32), 8)


class Vec8(types.Type):
    def __init__(self) -> None:
        super().__init__(name="vec8")


vec8 = Vec8()


@register_model(Vec8)
class _Vec8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type) -> None:
        super().__init__(dmm, fe_type, _V8F)


def _ptr(context, builder, aryty, ary, idx, vec_type):
    """Pointer to ary[idx], as a pointer to `vec_type`."""
    arr = context.make_array(aryty)(context, builder, ary)
    return builder.bitcast(cgutils.get_item_pointer(context, builder, aryty, arr, [idx]), vec_type.as_pointer())


_V8B = ir.VectorType(ir.IntType(8), 8)


def _load_bytes(builder, ptr, signed: bool):
    raw = builder.load(ptr, align=1)
    return builder.sext(raw, _V8I) if signed else builder.zext(raw, _V8I)


@intrinsic
def vzero(typingctx):
    """All lanes 0.0."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_V8F, [0.0] * 8)

    return vec8(), codegen


@intrinsic
def vsplat(typingctx, value):
    """All lanes `value` (float32)."""
    if value != types.float32:
        return None

    def codegen(context, builder, sig, args):
        one = builder.insert_element(ir.Constant(_V8F, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(one, ir.Constant(_V8F, ir.Undefined), ir.Constant(_V8I, [0] * 8))

    return vec8(value), codegen


@intrinsic
def vload(typingctx, ary, idx):
    """ary[idx : idx + 8] of a float32 array."""
    if not (isinstance(ary, types.Array) and ary.dtype == types.float32 and ary.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], _V8F), align=4)

    return vec8(ary, idx), codegen


@intrinsic
def vstore(typingctx, ary, idx, vec):
    """ary[idx : idx + 8] = vec."""
    if not (isinstance(ary, types.Array) and ary.dtype == types.float32 and vec == vec8):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _ptr(context, builder, sig.args[0], args[0], args[1], _V8F), align=4)
        return context.get_dummy_value()

    return types.none(ary, idx, vec), codegen


@intrinsic
def vload_i8(typingctx, ary, idx):
    """ary[idx : idx + 8] of an int8 array, as floats."""
    if not (isinstance(ary, types.Array) and ary.dtype == types.int8):
        return None

    def codegen(context, builder, sig, args):
        ints = _load_bytes(builder, _ptr(context, builder, sig.args[0], args[0], args[1], _V8B), signed=True)
        return builder.sitofp(ints, _V8F)

    return vec8(ary, idx), codegen


@intrinsic
def vload_nibbles(typingctx, ary, idx):
    """ary[idx : idx + 8] of a uint8 array as two float vectors: (low nibbles, high nibbles)."""
    if not (isinstance(ary, types.Array) and ary.dtype == types.uint8):
        return None

    def codegen(context, builder, sig, args):
        ints = _load_bytes(builder, _ptr(context, builder, sig.args[0], args[0], args[1], _V8B), signed=False)
        low = builder.and_(ints, ir.Constant(_V8I, [15] * 8))
        high = builder.lshr(ints, ir.Constant(_V8I, [4] * 8))
        tup = context.make_tuple(builder, sig.return_type, [builder.sitofp(low, _V8F), builder.sitofp(high, _V8F)])
        return tup

    return types.UniTuple(vec8, 2)(ary, idx), codegen


def _binary(name: str):
    @intrinsic
    def op(typingctx, a, b):
        if a != vec8 or b != vec8:
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, name)(args[0], args[1])

        return vec8(a, b), codegen

    return op


vadd = _binary("fadd")
vsub = _binary("fsub")
vmul = _binary("fmul")


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c, fused (one rounding)."""
    if a != vec8 or b != vec8 or c != vec8:
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8F, [_V8F] * 3), "llvm.fma.v8f32")
        return builder.call(fn, args)

    return vec8(a, b, c), codegen
