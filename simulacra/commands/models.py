"""`simulacra models | generate | serve`: the inference engine on its own."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from simulacra.commands import console, error, fail
from simulacra.inference.errors import ModelLoadError


def models(paths: list[Path] = typer.Argument(None, help="GGUF files or Hugging Face folders")) -> None:
    """List loadable models: the packaged default and any PATH given."""
    from simulacra.inference.loader import describe_model

    table = Table(title="Models")
    for col in ("model", "format", "family", "params", "experts (active/total)", "weights", "context"):
        table.add_column(col)
    failed = False
    for path in [None, *(paths or [])]:
        try:
            info = describe_model(path)
        except ModelLoadError as exc:
            error(str(exc))
            failed = True
            continue
        cfg = info.config
        params = f"{info.total_params / 1e6:,.1f}M"
        if cfg.is_moe:
            params += f" ({info.active_params / 1e6:,.1f}M active)"
        experts = f"{cfg.n_experts_per_tok}/{cfg.n_experts}" if cfg.is_moe else "dense"
        name = "default: " + info.path.name if path is None else str(info.path)
        table.add_row(name, info.format, cfg.family, params, experts, info.quantization, f"{cfg.max_position:,}")
    console.print(table)
    if failed:
        raise typer.Exit(code=2)


def generate(
    prompt: str,
    model: str = typer.Option(None, help="GGUF file or HF folder (default: packaged SmolLM2)"),
    max_tokens: int = typer.Option(64, min=1, max=4096),
    chat: bool = typer.Option(True, help="wrap the prompt in the model's chat template"),
) -> None:
    """Greedy continuation of PROMPT through the engine (a quick check that the model works)."""
    import asyncio

    from simulacra.inference.engine import Engine
    from simulacra.inference.port import RequestError

    try:
        t0 = time.perf_counter()
        engine = Engine(model)
        loaded = time.perf_counter() - t0
    except (ModelLoadError, ValueError) as exc:
        fail(str(exc))
    request = [{"role": "user", "content": prompt}] if chat else prompt

    async def complete():  # noqa: ANN202
        try:
            return await engine.generate(request, max_tokens=max_tokens, temperature=0.0)
        finally:
            await engine.aclose()

    t0 = time.perf_counter()
    try:
        out = asyncio.run(complete())
    except RequestError as exc:
        fail(str(exc))
    dt = time.perf_counter() - t0
    console.print(out.text)
    console.print(
        f"[dim]{out.prompt_tokens} prompt + {out.completion_tokens} new tokens in {dt:.2f}s; model loaded in "
        f"{loaded:.1f}s ({engine.lm.model.dtype})[/dim]"
    )


def serve(
    model: str = typer.Option(None, help="GGUF file or HF folder (default: packaged SmolLM2)"),
    host: str = typer.Option("127.0.0.1", help="bind address; anything but loopback exposes the engine"),
    port: int = typer.Option(8000),
    name: str = typer.Option(None, help="model id clients send (default: the file or folder name)"),
    kv_cache_gb: float = typer.Option(1.0, help="memory for the paged KV cache"),
    max_num_seqs: int = typer.Option(128, help="most requests decoded together"),
    device: str = typer.Option("auto", help="auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N"),
    deterministic: bool = typer.Option(
        False, help="batch-invariant kernels: a request's tokens do not depend on what else is batched (CPU, slower)"
    ),
) -> None:
    """Serve the engine over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)."""
    from simulacra.inference.backends.server import serve as serve_app
    from simulacra.inference.engine import Engine, EngineConfig

    try:
        config = EngineConfig(
            kv_cache_gb=kv_cache_gb, max_num_seqs=max_num_seqs, device=device, deterministic=deterministic
        )
        engine = Engine(model, config)
    except (ModelLoadError, ValueError) as exc:
        fail(str(exc))
    model_name = name or engine.lm.info.path.stem
    console.print(
        f"serving {model_name} at http://{host}:{port}/v1 (context {engine.context_length} tokens, "
        f"{engine.device}, {engine.lm.model.dtype})"
    )
    serve_app(engine, model_name, engine.context_length, host=host, port=port)


def moefy(
    model: str = typer.Argument(..., help="dense Llama-family GGUF or HF folder ('default': the packaged SmolLM2)"),
    experts: int = typer.Option(8, "--experts", "-e", help="experts per layer (E); must divide the FFN width"),
    top_k: int = typer.Option(6, "--top-k", "-k", help="experts each token runs (K), 1..E"),
    out: Path = typer.Option(..., "--out", "-o", help="a folder (Mixtral safetensors) or a .gguf file"),
    gguf: Path = typer.Option(None, "--gguf", help="also write a GGUF here (needs a GGUF source)"),
    expert_type: str = typer.Option(
        "f16", help="GGUF expert tensors: f32, f16, q8_0, q4_0 or q4_1 (quantised experts cost agreement: KERNELS.md)"
    ),
    method: str = typer.Option("coact", help="cluster neurons by co-activation ('coact') or by their 'weights'"),
    scenarios: list[str] = typer.Option(["town3", "town25"], "--scenario", help="scenarios whose prompts fit routers"),
    answer_tokens: int = typer.Option(64, min=1, help="cap on each calibration answer (tokens)"),
    max_rows: int = typer.Option(16384, min=64, help="captured tokens the routers are fitted on, at most"),
    spread: float = typer.Option(
        0.05, min=1e-4, max=1.0, help="router logit spread: expert weights are K·w = 1 ± spread/2"
    ),
    seed: int = typer.Option(0),
) -> None:
    """Turn a dense model into a routed MoE: experts from balanced clusters of each layer's FFN neurons, a
    router per layer fitted on hidden states of the town's prompts (held-out residents excluded)."""
    import torch

    from simulacra.calibration import town_prompts
    from simulacra.inference.loader import describe_model, load_model
    from simulacra.inference.moefy import EXPERT_TYPES, METHODS, MoefyError, check_request, write_gguf, write_hf
    from simulacra.inference.moefy import moefy as run_moefy
    from simulacra.scenario import ScenarioError

    t0 = time.perf_counter()
    targets = [out, *([gguf] if gguf else [])]
    for target in targets:
        if target.exists() and (target.is_file() or any(target.iterdir())):
            fail(f"{target} already exists; choose another output path or delete it")
    if expert_type not in EXPERT_TYPES:
        fail(f"unknown --expert-type {expert_type!r}; use one of {', '.join(EXPERT_TYPES)}")
    if method not in METHODS:
        fail(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
    try:
        info = describe_model(None if model == "default" else model)
        check_request(info.config, experts, top_k)
        if any(t.suffix == ".gguf" for t in targets) and info.format != "gguf":
            raise MoefyError("GGUF output needs a GGUF source (its tokenizer and attention tensors are copied)")
        prompts = [p for p in town_prompts(scenarios) if not p.heldout]
        lm = load_model(info.path, dtype=torch.float32)
        console.print(f"{info.path.name}: {len(prompts)} calibration prompts from {', '.join(scenarios)}")
        made = run_moefy(
            lm,
            prompts,
            experts,
            top_k,
            method,
            spread,
            max_rows,
            answer_tokens=answer_tokens,
            seed=seed,
            log=console.print,
        )
        for target in targets:
            if target.suffix == ".gguf":
                write_gguf(made.model, target, info.path, expert_type)
            else:
                write_hf(made.model, target, lm.tokenizer, info.path)
            console.print(f"wrote {target}")
    except (ModelLoadError, MoefyError, ScenarioError) as exc:
        fail(str(exc))
    cfg = made.model.cfg
    console.print(
        f"{cfg.n_experts} experts of {cfg.moe_intermediate_size} neurons, top-{top_k}, {cfg.n_layers} layers, "
        f"in {time.perf_counter() - t0:.0f}s; run it with `simulacra run town25 --model {targets[-1]}`"
    )
