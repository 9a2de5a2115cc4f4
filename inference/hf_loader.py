"""Hugging Face folders: `config.json` plus one or many `*.safetensors` shards."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from simulacra.inference.errors import ModelLoadError

# HF tensor name (without the "model." prefix) -> piece name; \1 is the layer, \2 the expert.
_RULES = [
    (r"embed_tokens\.weight", "embed.weight"),
    (r"norm\.weight", "norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (r"layers\.(\d+)\.input_layernorm\.weight", r"layers.\1.attn_norm.weight"),
    (r"layers\.(\d+)\.post_attention_layernorm\.weight", r"layers.\1.ffn_norm.weight"),
    (r"layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", r"layers.\1.attn.w\2.\3"),
    (r"layers\.(\d+)\.self_attn\.o_proj\.weight", r"layers.\1.attn.wo.weight"),
    (r"layers\.(\d+)\.self_attn\.([qk])_norm\.weight", r"layers.\1.attn.\2_norm.weight"),
    (r"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", r"layers.\1.ffn.\2"),
    # Qwen2/3-MoE, OLMoE
    (r"layers\.(\d+)\.mlp\.gate\.weight", r"layers.\1.ffn.router.weight"),
    (r"layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight", r"layers.\1.ffn.experts.\2.\3"),
    (r"layers\.(\d+)\.mlp\.shared_expert\.(gate|up|down)_proj\.weight", r"layers.\1.ffn.shared.\2"),
    (r"layers\.(\d+)\.mlp\.shared_expert_gate\.weight", r"layers.\1.ffn.shared_gate.weight"),
    # transformers 5 in-memory layout, should a file carry it: stacked and fused
    (r"layers\.(\d+)\.mlp\.experts\.gate_up_proj", r"layers.\1.ffn.gate_up"),
    (r"layers\.(\d+)\.mlp\.experts\.down_proj", r"layers.\1.ffn.down"),
    # Mixtral: w1 = gate, w3 = up, w2 = down
    (r"layers\.(\d+)\.block_sparse_moe\.gate\.weight", r"layers.\1.ffn.router.weight"),
    (r"layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w1\.weight", r"layers.\1.ffn.experts.\2.gate"),
    (r"layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w3\.weight", r"layers.\1.ffn.experts.\2.up"),
    (r"layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w2\.weight", r"layers.\1.ffn.experts.\2.down"),
    # GraniteMoE: input_linear is [gate; up] stacked over experts
    (r"layers\.(\d+)\.block_sparse_moe\.router\.layer\.weight", r"layers.\1.ffn.router.weight"),
    (r"layers\.(\d+)\.block_sparse_moe\.input_linear\.weight", r"layers.\1.ffn.gate_up"),
    (r"layers\.(\d+)\.block_sparse_moe\.output_linear\.weight", r"layers.\1.ffn.down"),
]
_COMPILED = [(re.compile(rf"^(?:model\.)?{pat}$"), repl) for pat, repl in _RULES]
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


def rename(rules: list[tuple[re.Pattern, str]], name: str) -> str | None:
    """`name` rewritten by the first rule whose pattern matches it (None when none does)."""
    for pat, repl in rules:
        if pat.match(name):
            return pat.sub(repl, name)
    return None


def piece_name(hf_name: str) -> str | None:
    return rename(_COMPILED, hf_name)


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelLoadError(folder, "no config.json in this folder", "a Hugging Face model folder needs one")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc


def weight_files(folder: Path) -> list[Path]:
    """The safetensors shards, in the order of the index when there is one."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / n for n in names]
        for f in files:
            if not f.is_file():
                raise ModelLoadError(index, f"lists shard {f.name}, which is not in the folder")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise ModelLoadError(
            folder,
            f"no *.safetensors weights in this folder (found: {found})",
            "PyTorch .bin checkpoints are not loaded; convert them to safetensors",
        )
    return files


def _open(file: Path):  # noqa: ANN202 - safetensors' handle type is private
    try:
        return safe_open(file, "pt")
    except Exception as exc:
        raise ModelLoadError(file, f"cannot read safetensors file ({exc})", "the file may be truncated") from exc


def _named_keys(file: Path, handle: Any) -> Iterator[tuple[str, str]]:
    for key in handle.keys():
        if _IGNORED.search(key):
            continue
        name = piece_name(key)
        if name is None:
            raise ModelLoadError(file, f"unknown tensor {key!r}", "this architecture's layout is not supported")
        yield name, key


def hf_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Piece name -> shape, from the safetensors headers only."""
    shapes = {}
    for file in weight_files(folder):
        with _open(file) as f:
            for name, key in _named_keys(file, f):
                shapes[name] = tuple(f.get_slice(key).get_shape())
    return shapes


def hf_pieces(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for file in weight_files(folder):
        with _open(file) as f:
            for name, key in _named_keys(file, f):
                yield name, f.get_tensor(key)
