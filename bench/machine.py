"""One line naming the CPU a benchmark ran on: model, the matmul-relevant flags, threads, torch.

Every figure in docs/BENCHMARKS.md names its CPU, because the machines change kind between sessions
(AVX2 only, AVX512-BF16, AMX) and the engine picks its dtype from these flags.
"""

from __future__ import annotations

from pathlib import Path

import torch


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    line = next((ln for ln in text.splitlines() if ln.startswith("model name")), "")
    return line.partition(":")[2].strip() or "unknown CPU"


def describe() -> str:
    """E.g. "AMD EPYC (AVX2, AVX512-BF16, no AMX), 2 threads, torch 2.13.0"."""
    flags = cpu_flags()
    isa = ["AVX2" if "avx2" in flags else "no AVX2"]
    if "avx512f" in flags:
        isa.append("AVX512-BF16" if "avx512_bf16" in flags else "AVX-512 without BF16")
    isa.append("AMX" if "amx_bf16" in flags else "no AMX")
    return f"{cpu_name()} ({', '.join(isa)}), {torch.get_num_threads()} threads, torch {torch.__version__}"
