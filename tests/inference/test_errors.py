"""Bad model input gets one clear message naming the file and the problem, never a bare traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from safetensors import safe_open
from safetensors.torch import save_file

from simulacra.inference.errors import ModelLoadError
from simulacra.inference.loader import describe_model, load_transformer
from tests.inference.gguf_writer import write_gguf
from tests.inference.tiny_models import build_reference, save_reference


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Path, Path]:
    """A valid tiny Mixtral as a HF folder and as a GGUF file."""
    root = tmp_path_factory.mktemp("good")
    folder = save_reference(build_reference("mixtral", 0), root / "hf")
    return folder, write_gguf(folder, root / "model.gguf")


def expect_error(path: Path, *fragments: str) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        load_transformer(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_missing_file(tmp_path) -> None:
    expect_error(tmp_path / "nope.gguf", "no such file or folder")


def test_truncated_gguf(good, tmp_path) -> None:
    data = good[1].read_bytes()
    for cut in (len(data) // 2, 40):  # inside the tensor data; inside the metadata
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        expect_error(path, "truncated")


def test_not_a_gguf_file(tmp_path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip file")
    expect_error(path, "not a GGUF file")


def test_corrupt_gguf_header(good, tmp_path) -> None:
    data = bytearray(good[1].read_bytes())
    data[8:24] = b"\xff" * 16  # tensor and key counts become absurd
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(bytes(data))
    expect_error(path, "corrupt or truncated GGUF")


def _gguf_with(path: Path, arch: str, tensor_type: Q = Q.F32) -> Path:
    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_head_count(4)
    w.add_uint32(f"{arch}.vocab_size", 8)
    if tensor_type == Q.F32:
        w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    else:  # raw blocks of a type we do not decode (IQ4_NL: 18 bytes per 32 values)
        w.add_tensor("token_embd.weight", np.zeros((8, 18), dtype=np.uint8), raw_dtype=tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_gguf_architecture(tmp_path) -> None:
    expect_error(_gguf_with(tmp_path / "m.gguf", "mamba"), "unsupported GGUF architecture 'mamba'", "supported:")


def test_unsupported_quantisation(tmp_path) -> None:
    expect_error(_gguf_with(tmp_path / "m.gguf", "llama", Q.IQ4_NL), "token_embd.weight", "IQ4_NL")


def test_unsupported_hf_architecture(good, tmp_path) -> None:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    expect_error(folder, "unsupported architecture model_type='bert'")


def test_config_weights_shape_mismatch(good, tmp_path) -> None:
    folder = tmp_path / "mismatch"
    folder.mkdir()
    cfg = json.loads((good[0] / "config.json").read_text())
    cfg["intermediate_size"] = 80
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").write_bytes((good[0] / "model.safetensors").read_bytes())
    expect_error(folder, "has shape", "config implies", "intermediate")


def test_missing_expert_weights(good, tmp_path) -> None:
    folder = tmp_path / "missing"
    folder.mkdir()
    (folder / "config.json").write_text((good[0] / "config.json").read_text())
    with safe_open(good[0] / "model.safetensors", "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if "experts.3.w2" not in k}
    save_file(tensors, folder / "model.safetensors")
    expect_error(folder, "experts.3.down", "missing")


def test_folder_without_weights(good, tmp_path) -> None:
    folder = tmp_path / "noweights"
    folder.mkdir()
    (folder / "config.json").write_text((good[0] / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"")
    expect_error(folder, "no *.safetensors weights", "pytorch_model.bin")


def test_folder_without_config(tmp_path) -> None:
    expect_error(tmp_path, "no config.json")


def test_invalid_config_json(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama",\n "hidden_size": }')
    with pytest.raises(ModelLoadError, match=r"config.json: invalid JSON at line 2"):
        load_transformer(tmp_path)


def test_truncated_safetensors(good, tmp_path) -> None:
    folder = tmp_path / "trunc"
    folder.mkdir()
    (folder / "config.json").write_text((good[0] / "config.json").read_text())
    data = (good[0] / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match="cannot read safetensors file"):
        load_transformer(folder)


def test_describe_reports_without_loading(good) -> None:
    info = describe_model(good[1])
    assert (info.format, info.config.family, info.config.n_experts, info.config.n_experts_per_tok) == (
        "gguf",
        "mixtral",
        8,
        2,
    )


def test_cli_prints_the_error_not_a_traceback(tmp_path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "simulacra.cli", "models", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "broken.gguf" in proc.stdout and "error" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
