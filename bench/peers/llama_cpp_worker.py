"""Child process of gguf_converter.py: run one GGUF file in llama.cpp and keep every position's logits.

Usage: llama_cpp_worker.py FILE.gguf SEQS.json OUT.npz, with LLAMA_CPP_LIB_PATH naming the folder
of libllama.so and PYTHONPATH the unpacked llama-cpp-python sdist (its own ctypes bindings are used).
Each sequence is decoded from an empty cache in one batch, F32 KV cache, no flash attention.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import sys
import types
from pathlib import Path

import numpy as np


def bindings():
    # The package's __init__ also imports the high-level API and its dependencies (diskcache, ...);
    # only the ctypes module is needed, so the package is stood up bare.
    pkg = types.ModuleType("llama_cpp")
    pkg.__path__ = [str(Path(os.environ["PYTHONPATH"].split(os.pathsep)[0]) / "llama_cpp")]
    sys.modules["llama_cpp"] = pkg
    return importlib.import_module("llama_cpp.llama_cpp")


def main(path: str, job: str, out: str) -> None:
    lc = bindings()
    seqs = json.loads(Path(job).read_text())
    lc.llama_backend_init()
    mparams = lc.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = lc.llama_model_load_from_file(path.encode(), mparams)
    if not model:
        sys.exit("llama_model_load_from_file failed")
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    n_max = max(len(s) for s in seqs)
    cparams = lc.llama_context_default_params()
    cparams.n_ctx = max(64, n_max)
    cparams.n_batch = cparams.n_ubatch = max(64, n_max)
    cparams.n_seq_max = 1
    cparams.n_threads = cparams.n_threads_batch = 2
    cparams.type_k = cparams.type_v = 0  # GGML_TYPE_F32
    cparams.flash_attn_type = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = lc.llama_init_from_model(model, cparams)
    if not ctx:
        sys.exit("llama_init_from_model failed")
    results = {}
    for i, seq in enumerate(seqs):
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        batch = lc.llama_batch_init(len(seq), 0, 1)
        batch.n_tokens = len(seq)
        for j, t in enumerate(seq):
            batch.token[j], batch.pos[j], batch.n_seq_id[j] = t, j, 1
            batch.seq_id[j][0] = 0
            batch.logits[j] = 1
        rc = lc.llama_decode(ctx, batch)
        if rc != 0:
            sys.exit(f"llama_decode returned {rc}")
        rows = []
        for j in range(len(seq)):
            ptr = ctypes.cast(lc.llama_get_logits_ith(ctx, j), ctypes.POINTER(ctypes.c_float))
            rows.append(np.ctypeslib.as_array(ptr, (n_vocab,)).copy())
        results[f"s{i}"] = np.stack(rows)
        lc.llama_batch_free(batch)
    np.savez(out, **results)
    lc.llama_free(ctx)
    lc.llama_model_free(model)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
