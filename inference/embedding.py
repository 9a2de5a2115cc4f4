"""Sentence embeddings for memory relevance: all-MiniLM-L6-v2 as a small BERT in plain torch.

The model is the sentence-transformers pipeline "BERT -> mean pool over real tokens -> L2 normalise",
so cosine similarity between two rows is a dot product. We run it ourselves rather than through
`transformers` / `sentence_transformers` to keep the runtime dependency set to torch, safetensors and
tokenizers, and to keep the whole forward pass readable in one screen.

Each text runs through the model on its own (a batch of one, nothing padded), so its vector is a
function of the text alone, bit for bit, whatever other texts were embedded with it. Padded batches
changed the last bits of about half the vectors (1e-7), and batching only texts of equal length still
changed some (the matmuls' row count changes their kernels): enough to reorder near-tied memories in
retrieval, so a replay or a resumed run retrieved other memories than the recorded run. Results are
cached per distinct text, because agents re-embed the same memories often.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from tokenizers import Tokenizer
from torch import Tensor, nn

from simulacra.inference.errors import ModelLoadError
from simulacra.inference.hf_loader import rename
from simulacra.inference.packaged import embedding_model_dir


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    ffn_dim: int
    max_position: int
    type_vocab_size: int
    norm_eps: float

    @classmethod
    def from_hf(cls, path: Path, raw: dict[str, Any]) -> BertConfig:
        """Validate the parts of a HF BERT config.json that this implementation depends on."""
        if raw.get("model_type", "bert") != "bert":
            raise ModelLoadError(path, f"model_type is {raw.get('model_type')!r}, expected 'bert'")
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ModelLoadError(path, f"hidden_act {raw['hidden_act']!r} is not supported", "only exact 'gelu' is")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ModelLoadError(path, f"position_embedding_type {raw['position_embedding_type']!r} is not supported")
        try:
            cfg = cls(
                vocab_size=int(raw["vocab_size"]),
                dim=int(raw["hidden_size"]),
                n_layers=int(raw["num_hidden_layers"]),
                n_heads=int(raw["num_attention_heads"]),
                ffn_dim=int(raw["intermediate_size"]),
                max_position=int(raw["max_position_embeddings"]),
                type_vocab_size=int(raw.get("type_vocab_size", 2)),
                norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            )
        except KeyError as exc:
            raise ModelLoadError(path, f"missing key {exc.args[0]!r}", "is this a BERT config.json?") from exc
        if cfg.dim % cfg.n_heads:
            raise ModelLoadError(path, f"hidden_size {cfg.dim} is not divisible by num_attention_heads {cfg.n_heads}")
        return cfg


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.wq = nn.Linear(cfg.dim, cfg.dim)
        self.wk = nn.Linear(cfg.dim, cfg.dim)
        self.wv = nn.Linear(cfg.dim, cfg.dim)
        self.wo = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = (w(x).view(b, t, self.n_heads, -1).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # mask [B, 1, 1, T]: True = real key
        return self.wo(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Post-norm BERT layer: x = LN(x + attn(x)); x = LN(x + W2 gelu(W1 x))."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attn = Attention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_dim)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.dim)
        self.ffn_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.attn_norm(x + self.attn(x, mask))
        return self.ffn_norm(x + self.w2(F.gelu(self.w1(x))))


class Bert(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embeddings = nn.Embedding(cfg.max_position, cfg.dim)
        self.type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.dim)
        self.embed_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids [B, T] int64, mask [B, T] bool -> hidden states [B, T, dim]. Every text is segment 0."""
        t = ids.shape[1]
        x = self.tok_embeddings(ids) + self.type_embeddings.weight[0] + self.pos_embeddings.weight[:t]
        x = self.embed_norm(x)
        attn_mask = mask[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attn_mask)
        return x


# HF BertModel tensor name (optional "bert." prefix stripped) -> our name; \1 is the layer.
_RULES = [
    (r"embeddings\.word_embeddings\.weight", "tok_embeddings.weight"),
    (r"embeddings\.position_embeddings\.weight", "pos_embeddings.weight"),
    (r"embeddings\.token_type_embeddings\.weight", "type_embeddings.weight"),
    (r"embeddings\.LayerNorm\.(weight|bias)", r"embed_norm.\1"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.query\.(weight|bias)", r"layers.\1.attn.wq.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key\.(weight|bias)", r"layers.\1.attn.wk.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value\.(weight|bias)", r"layers.\1.attn.wv.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"layers.\1.attn.wo.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(weight|bias)", r"layers.\1.attn_norm.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"layers.\1.w1.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"layers.\1.w2.\2"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.(weight|bias)", r"layers.\1.ffn_norm.\2"),
]
_COMPILED = [(re.compile(rf"^(?:bert\.)?{pat}$"), repl) for pat, repl in _RULES]
# The pooler and pretraining heads are not part of the sentence embedding; the id buffers are recomputed.
_IGNORED = re.compile(r"^(?:bert\.)?(?:pooler\.|cls\.|embeddings\.(?:position_ids|token_type_ids)$)")


def _our_name(hf_name: str) -> str | None:
    return rename(_COMPILED, hf_name)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc


def _load_weights(file: Path, model: Bert) -> None:
    """Check every tensor's name and shape against the model before reading any data, then assign."""
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    try:
        handle = safe_open(file, "pt")
    except Exception as exc:
        raise ModelLoadError(file, f"cannot read safetensors file ({exc})", "the file may be truncated") from exc
    with handle as f:
        found: dict[str, str] = {}
        for key in f.keys():
            if _IGNORED.match(key):
                continue
            name = _our_name(key)
            if name is None or name not in expected:
                raise ModelLoadError(file, f"unexpected tensor {key!r}", "is this a BertModel checkpoint?")
            if name in found:
                raise ModelLoadError(file, f"tensor {key!r} duplicates {found[name]!r}")
            shape = tuple(f.get_slice(key).get_shape())
            if shape != expected[name]:
                raise ModelLoadError(
                    file, f"tensor {key!r} has shape {list(shape)}, config.json implies {list(expected[name])}"
                )
            found[name] = key
        missing = sorted(set(expected) - set(found))
        if missing:
            raise ModelLoadError(file, f"{len(missing)} tensors missing, e.g. {missing[:3]}", "the file is incomplete")
        state = {name: f.get_tensor(key).to(torch.float32) for name, key in found.items()}
    model.load_state_dict(state, strict=True, assign=True)


class Embedder:
    """all-MiniLM-L6-v2 (or any mean-pooled BERT sentence-transformers folder) on the CPU in fp32."""

    def __init__(self, path: str | Path | None = None, *, cache_size: int = 100_000) -> None:
        folder = Path(embedding_model_dir() if path is None else path).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(folder, "no such folder", "pass a sentence-transformers model folder, or None")
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (folder / name).is_file():
                raise ModelLoadError(folder, f"no {name} in this folder", "a sentence-transformers folder needs one")
        self.path = folder
        cfg = BertConfig.from_hf(folder / "config.json", _read_json(folder / "config.json"))
        self.dim: int = cfg.dim

        pooling = folder / "1_Pooling" / "config.json"
        if pooling.is_file() and not _read_json(pooling).get("pooling_mode_mean_tokens", True):
            raise ModelLoadError(pooling, "only mean pooling is supported")
        st_config = folder / "sentence_bert_config.json"
        max_len = _read_json(st_config).get("max_seq_length") if st_config.is_file() else None
        self.max_seq_length: int = min(int(max_len or cfg.max_position), cfg.max_position)

        try:
            self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:
            raise ModelLoadError(folder / "tokenizer.json", f"cannot load tokenizer ({exc})") from exc
        # tokenizer.json ships its own truncation (128) and fixed padding; the model card's limit is
        # sentence_bert_config.json's, and we pad per length-sorted batch ourselves.
        self._tokenizer.enable_truncation(max_length=self.max_seq_length)
        self._tokenizer.no_padding()

        with torch.device("meta"):
            model = Bert(cfg)
        _load_weights(folder / "model.safetensors", model)
        self._model = model.eval()

        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.texts_encoded = 0  # texts that went through the model (cache misses), for tests and stats

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim], rows L2-normalised, in input order; repeated texts hit the cache."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts; wrap a single text in a list")
        with self._lock:
            known: dict[str, np.ndarray] = {}
            missing: list[str] = []
            for text in dict.fromkeys(texts):
                row = self._cache.get(text)
                if row is None:
                    missing.append(text)
                else:
                    self._cache.move_to_end(text)
                    known[text] = row
            fresh = {text: self._encode(text) for text in missing}
            self.texts_encoded += len(missing)
            out = np.empty((len(texts), self.dim), dtype=np.float32)
            for i, text in enumerate(texts):
                out[i] = known[text] if text in known else fresh[text]
            if self.cache_size > 0:
                for text, row in fresh.items():
                    self._cache[text] = row
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out

    @torch.inference_mode()
    def _encode(self, text: str) -> np.ndarray:
        """One text through the model alone: mean over its tokens, L2-normalised."""
        ids = torch.tensor([self._tokenizer.encode(text).ids], dtype=torch.long)
        hidden = self._model(ids, torch.ones(ids.shape, dtype=torch.bool))
        return F.normalize(hidden.mean(1), p=2, dim=1)[0].numpy().copy()


_INSTANCES: dict[Path, Embedder] = {}
_INSTANCES_LOCK = threading.Lock()


def load_embedder(path: str | Path | None = None) -> Embedder:
    """The process-wide Embedder for a folder (default: the packaged model), loaded once even under threads."""
    key = Path(embedding_model_dir() if path is None else path).expanduser().resolve()
    with _INSTANCES_LOCK:
        embedder = _INSTANCES.get(key)
        if embedder is None:
            embedder = _INSTANCES[key] = Embedder(key)
    return embedder
