"""Embedding throughput: texts/second for 256 sentences of ~15 words (each text runs alone).

Memory relevance embeds every new observation, so this is the cost per memory. The cache is off,
so every text goes through the model.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/embedding.py
"""

from __future__ import annotations

import os
import random
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from simulacra.inference.embedding import Embedder  # noqa: E402

WORDS = (
    "the resident walked to cafe library park morning evening coffee friend talked about party plans "
    "garden market painting music election neighbour quietly happily book river bakery town square"
).split()


def sentences(n: int, words: int = 15, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words + rng.randint(-3, 3))) + "." for _ in range(n)]


def main() -> None:
    embedder = Embedder(cache_size=0)
    texts = sentences(256)
    embedder.embed(texts[:16])  # warm-up
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(texts)} texts")
    start = time.perf_counter()
    embedder.embed(texts)
    elapsed = time.perf_counter() - start
    print(f"{len(texts) / elapsed:8.1f} texts/s ({1000 * elapsed / len(texts):.2f} ms a text)")

if __name__ == "__main__":
    main()
