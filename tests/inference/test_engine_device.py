"""The engine on a tiny MoE GGUF: where it runs (`EngineConfig.device`, `simulacra serve --device`) and
what keeping the experts quantised changes in its output (nothing, for greedy decoding here)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from gguf import GGMLQuantizationType as Q
from typer.testing import CliRunner

from simulacra.inference.engine import Engine, EngineConfig
from simulacra.inference.loader import default_dtype, load_model, resolve_device
from tests.inference.gguf_writer import write_gguf
from tests.inference.tiny_models import build_reference, save_reference

CUDA = torch.cuda.is_available()
PROMPTS = ["hello world", "The baker, Ada, opens at 7.", "a", '{"x": [1, 2, 3]}']


@pytest.fixture(scope="module", params=["mixtral", "olmoe"])
def gguf(request, tmp_path_factory):
    """A tiny MoE with Q4_0 weights (Q4_0 experts) and a byte vocabulary, so text goes in and out."""
    folder = tmp_path_factory.mktemp(request.param)
    save_reference(build_reference(request.param, seed=5), folder / "hf")
    return write_gguf(folder / "hf", folder / "q4_0.gguf", Q.Q4_0, tokenizer=True)


def greedy(engine: Engine, prompts: list[str] = PROMPTS, max_tokens: int = 24, **kw) -> list[str]:
    async def run() -> list[str]:
        try:
            results = await asyncio.gather(*(engine.generate(p, max_tokens=max_tokens, **kw) for p in prompts))
        finally:
            await engine.aclose()
        return [r.text for r in results]

    return asyncio.run(run())


def test_greedy_output_with_quantised_experts_equals_float_experts(gguf) -> None:
    """Quantised and float experts hold the same weights; the kernels' sums differ from the float path's
    in summation order only: measured at most 2.5e-6 in the logits along these generations (bounded by
    1e-4 in `test_load_model_keeps_gguf_experts_quantised`), while the smallest gap between the top two
    logits at any step was 6.5e-4 (mixtral) and 2.6e-3 (olmoe). No argmax can flip: the outputs are equal."""
    quantised = load_model(gguf, dtype=torch.float32)
    flat = load_model(gguf, dtype=torch.float32, quantized_experts=False)
    assert quantised.info.expert_quantization == "Q4_0" and flat.info.expert_quantization is None
    config = EngineConfig(device="cpu", kv_cache_gb=0.01)
    got, want = greedy(Engine(quantised, config)), greedy(Engine(flat, config))
    assert got == want
    assert all(len(text) == 24 for text in want)  # one character per token: no early stop hid anything


def test_engine_loads_and_runs_on_the_device_it_is_given(gguf) -> None:
    """A path is loaded on `EngineConfig.device` in that device's default dtype; KV cache, runner and
    sampling follow. "auto" is CUDA when torch sees a GPU, else the CPU: the same as "cpu" here."""
    outputs = []
    for device in ("cpu", "auto"):
        engine = Engine(gguf, EngineConfig(device=device, kv_cache_gb=0.01))
        expected = torch.device(resolve_device(device))
        assert engine.device.type == expected.type
        assert engine.lm.model.embed.weight.device.type == expected.type
        assert engine.lm.model.dtype == default_dtype(str(expected))
        assert engine.runner.kv.k.device.type == expected.type
        assert engine.lm.info.expert_quantization == ("Q4_0" if expected.type == "cpu" else None)
        outputs.append(greedy(engine, max_tokens=8) + greedy(engine_again(engine), max_tokens=8, temperature=0.8))
    if not CUDA:
        assert outputs[0] == outputs[1]


def engine_again(engine: Engine) -> Engine:
    """A fresh engine over the same loaded model and config (an engine cannot be reused once closed)."""
    return Engine(engine.lm, engine.config)


def test_seeded_sampling_is_reproducible_on_the_engine_device(gguf) -> None:
    lm = load_model(gguf, dtype=torch.float32)
    runs = [greedy(Engine(lm, EngineConfig(device="auto")), max_tokens=12, temperature=1.0, seed=3) for _ in "ab"]
    assert runs[0] == runs[1]


def test_bad_devices_are_refused_with_a_message(gguf, monkeypatch) -> None:
    with pytest.raises(ValueError, match="not supported; use 'auto', 'cpu' or 'cuda'"):
        Engine(gguf, EngineConfig(device="meta"))
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        Engine(gguf, EngineConfig(device="gpu"))
    if not CUDA:
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            Engine(gguf, EngineConfig(device="cuda"))
    lm = load_model(gguf, dtype=torch.float32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU, but the model was loaded on the CPU
    with pytest.raises(ValueError, match=r"loaded on cpu but EngineConfig.device is 'cuda'.*device='cuda'"):
        Engine(lm, EngineConfig(device="cuda"))


def test_serve_refuses_a_bad_device_before_loading_anything() -> None:
    from simulacra.cli import app

    result = CliRunner().invoke(app, ["serve", "--device", "tpu"])
    assert result.exit_code == 2
    assert "unknown device 'tpu'" in result.output


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: runs the engine with model, KV cache and sampling on cuda")
def test_engine_on_cuda_matches_the_cpu(gguf) -> None:
    """fp32 on both devices (the Triton experts use IEEE fp32 dots): greedy output agrees with the CPU's;
    on CUDA the experts are dequantised (the quantised kernels are CPU-only)."""
    on_cuda = load_model(gguf, dtype=torch.float32, device="cuda")
    assert on_cuda.info.expert_quantization is None
    engine = Engine(on_cuda, EngineConfig(device="cuda", kv_cache_gb=0.01))
    assert engine.device.type == "cuda" and engine.runner.kv.k.is_cuda
    on_cpu = Engine(load_model(gguf, dtype=torch.float32), EngineConfig(device="cpu", kv_cache_gb=0.01))
    assert greedy(engine) == greedy(on_cpu)
    sampled = Engine(load_model(gguf, device="cuda"), EngineConfig(device="auto", kv_cache_gb=0.01))
    assert sampled.lm.model.dtype == torch.bfloat16
    assert len(greedy(sampled, max_tokens=8, temperature=0.8, seed=1)) == len(PROMPTS)
