"""The torch MiniLM embedder matches the transformers reference, is batch-invariant, caches, and fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from simulacra.inference.embedding import Embedder, load_embedder
from simulacra.inference.errors import ModelLoadError
from simulacra.inference.packaged import embedding_model_dir

LONG = " ".join(f"Resident number {i} walked past the old bakery on Elm Street and waved." for i in range(40))
SENTENCES = [
    "Hi.",
    "The café serves coffee.",
    "Isabella is planning a Valentine's Day party at Hobbs Cafe on February 14th, 5-7pm!",
    "What?! No... really??? -- yes; (definitely) [maybe] {never} #tags @people 100% $5.00",
    "Naïve façade, jalapeño piñata, Zürich, smörgåsbord.",
    "東京は日本の首都です。",
    "Emoji time 🎉🍰☕ and some math: ∑ x² ≥ 0.",
    "",
    "   leading and trailing whitespace   ",
    LONG,  # far beyond 256 tokens: exercises truncation
    "Klaus Mueller is writing a research paper on the effects of gentrification in low-income communities.",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder()


def reference(texts: list[str]) -> np.ndarray:
    """sentence-transformers' pipeline rebuilt from transformers: BertModel, mean pooling, L2 normalise."""
    from transformers import AutoModel, AutoTokenizer

    folder = embedding_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    max_len = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


@pytest.mark.slow
def test_matches_transformers_reference(embedder: Embedder) -> None:
    ours = embedder.embed(SENTENCES)
    ref = reference(SENTENCES)
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    diff = float(np.abs(ours - ref).max())
    print(f"max abs diff vs transformers: {diff:.2e}")
    assert diff <= 1e-5
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    # The long text really was truncated to the model card's 256 tokens, not tokenizer.json's 128.
    assert len(embedder._tokenizer.encode(LONG).ids) == embedder.max_seq_length == 256


@pytest.mark.slow
def test_a_vector_depends_on_its_text_alone() -> None:
    """Bit for bit, whatever else is embedded in the same call and in what order (replay relies on it)."""
    fresh = Embedder(cache_size=0)  # no cache: every call runs the model
    together = fresh.embed(SENTENCES)
    for i, text in enumerate(SENTENCES):
        np.testing.assert_array_equal(fresh.embed([text])[0], together[i], err_msg=text)
    np.testing.assert_array_equal(fresh.embed(SENTENCES[::-1])[::-1], together)
    assert fresh.texts_encoded == 3 * len(set(SENTENCES))


@pytest.mark.slow
def test_semantics(embedder: Embedder) -> None:
    a, b, c = embedder.embed(["The café serves coffee", "Coffee is sold at the café", "The river flooded the meadow"])
    assert float(a @ b) > float(a @ c) + 0.2


@pytest.mark.slow
def test_cache_skips_the_model() -> None:
    fresh = Embedder(cache_size=3)
    first = fresh.embed(["apples", "pears", "apples"])
    assert fresh.texts_encoded == 2  # duplicates inside one call run once
    np.testing.assert_array_equal(first[0], first[2])
    again = fresh.embed(["pears", "apples"])
    assert fresh.texts_encoded == 2
    np.testing.assert_array_equal(again, first[[1, 0]])
    fresh.embed(["plums", "figs"])  # evicts the least recently used ("pears")
    assert fresh.texts_encoded == 4
    fresh.embed(["apples"])
    assert fresh.texts_encoded == 4
    fresh.embed(["pears"])
    assert fresh.texts_encoded == 5
    again[:] = 0  # the caller owns the returned array; the cache is untouched
    np.testing.assert_array_equal(fresh.embed(["apples"])[0], first[0])


@pytest.mark.slow
def test_empty_input_and_memoised_loader(embedder: Embedder) -> None:
    assert embedder.embed([]).shape == (0, 384)
    assert embedder.dim == 384
    assert load_embedder(embedding_model_dir()) is embedder
    with pytest.raises(TypeError):
        embedder.embed("a single string")  # type: ignore[arg-type]


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError) as info:
        Embedder(missing)
    assert str(missing) in str(info.value)


def test_missing_weights_and_bad_shapes(tmp_path: Path) -> None:
    source = embedding_model_dir()
    (tmp_path / "tokenizer.json").symlink_to(source / "tokenizer.json")
    config = json.loads((source / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="no model.safetensors") as info:
        Embedder(tmp_path)
    assert str(tmp_path) in str(info.value)

    (tmp_path / "model.safetensors").symlink_to(source / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 1000}))
    bad_shape = r"intermediate\.dense\.(weight|bias)' has shape \[1536.*implies \[1000"
    with pytest.raises(ModelLoadError, match=bad_shape) as info:
        Embedder(tmp_path)
    assert str(tmp_path / "model.safetensors") in str(info.value)


def test_checkpoint_names_with_and_without_bert_prefix() -> None:
    from simulacra.inference.embedding import _IGNORED, _our_name

    for prefix in ("", "bert."):
        assert _our_name(f"{prefix}encoder.layer.3.attention.self.query.weight") == "layers.3.attn.wq.weight"
        assert _our_name(f"{prefix}encoder.layer.5.output.LayerNorm.bias") == "layers.5.ffn_norm.bias"
        assert _our_name(f"{prefix}embeddings.word_embeddings.weight") == "tok_embeddings.weight"
        assert _IGNORED.match(f"{prefix}pooler.dense.weight") and _IGNORED.match(f"{prefix}embeddings.position_ids")
    assert _our_name("roberta.encoder.layer.0.output.dense.weight") is None
