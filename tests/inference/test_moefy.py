"""`simulacra moefy`: a dense Llama-family model split into a routed Mixtral MoE.

The models here are tiny random Llamas with the packaged SmolLM2 tokenizer (so the town's prompts and
schemas work), written as GGUF the way llama.cpp lays a dense Llama out.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFWriter
from typer.testing import CliRunner

from simulacra.cli import app
from simulacra.inference.kvcache import ContiguousKV
from simulacra.inference.loader import describe_model, load_model, load_transformer
from simulacra.inference.model import Transformer
from simulacra.inference.moefy import (
    MoefyError,
    build_moe,
    check_request,
    set_top_k,
    uniform_plan,
)
from simulacra.inference.moefy.quality import compare
from simulacra.inference.moefy.split import balanced_kmeans, fit_router, plan_moe
from simulacra.inference.moefy.write import copy_field
from simulacra.inference.packaged import default_model_path
from simulacra.run import Run
from simulacra.viewer_run import RunSource

H, FFN, LAYERS, HEADS, KV_HEADS = 64, 256, 2, 4, 2


def tiny_dense_gguf(path: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama (H=64, I=256) with SmolLM2's tokenizer and an 8k context."""
    src = GGUFReader(default_model_path())
    vocab = len(src.fields["tokenizer.ggml.tokens"].contents())
    w = GGUFWriter(str(path), "llama")
    for key in src.fields:
        if key.startswith("tokenizer."):
            copy_field(w, src, key)
    w.add_name("tiny-llama")
    w.add_uint32("llama.vocab_size", vocab)
    w.add_block_count(LAYERS)
    w.add_context_length(8192)
    w.add_embedding_length(H)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(100000.0)
    rng = np.random.default_rng(seed)
    hd = H // HEADS

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / cols**0.5).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.2 * rng.standard_normal(H)).astype(np.float32)

    w.add_tensor("token_embd.weight", rng.standard_normal((vocab, H)).astype(np.float32))
    w.add_tensor("output_norm.weight", norm())
    for i in range(LAYERS):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", norm())
        w.add_tensor(b + "ffn_norm.weight", norm())
        w.add_tensor(b + "attn_q.weight", mat(H, H))
        w.add_tensor(b + "attn_k.weight", mat(KV_HEADS * hd, H))
        w.add_tensor(b + "attn_v.weight", mat(KV_HEADS * hd, H))
        w.add_tensor(b + "attn_output.weight", mat(H, H))
        w.add_tensor(b + "ffn_gate.weight", mat(FFN, H))
        w.add_tensor(b + "ffn_up.weight", mat(FFN, H))
        w.add_tensor(b + "ffn_down.weight", mat(H, FFN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def logits(model: Transformer, tokens: list[int]) -> torch.Tensor:
    kv = ContiguousKV(model.cfg.n_layers, 1)
    kv.set_batch([0], [len(tokens)])
    with torch.inference_mode():
        return model(torch.tensor(tokens), torch.arange(len(tokens)), kv)


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    return tiny_dense_gguf(tmp_path_factory.mktemp("dense") / "tiny.gguf")


def run_moefy(dense: Path, out: Path) -> tuple[Path, Path, str]:
    folder, gguf = out / "moe", out / "moe.gguf"
    args = ["moefy", str(dense), "--experts", "8", "--top-k", "2", "-o", str(folder), "--gguf", str(gguf)]
    result = CliRunner().invoke(app, [*args, "--expert-type", "q8_0", "--scenario", "town3", "--answer-tokens", "16"])
    assert result.exit_code == 0, result.output
    return folder, gguf, result.output


@pytest.fixture(scope="module")
def moefied(dense, tmp_path_factory) -> tuple[Path, Path, str]:
    """`simulacra moefy` on the tiny model: a Mixtral folder and a Q8_0-expert GGUF."""
    return run_moefy(dense, tmp_path_factory.mktemp("moe"))


def test_moefy_twice_writes_the_same_model(dense, moefied, tmp_path) -> None:
    """The calibration answers and the captured states do not depend on how the engine batched them."""
    _, again, _ = run_moefy(dense, tmp_path)
    assert again.read_bytes() == moefied[1].read_bytes()


TOKENS = [1, 504, 3458, 314, 253, 1345, 28, 2, 198, 33, 4100, 42, 17, 999, 5]


def test_all_experts_at_weight_one_are_the_dense_model(dense) -> None:
    """K = E with every expert at weight 1 (zero router: renormalised weights 1/E, down scaled by E) sums
    every neuron of the dense FFN, whatever the neurons' order."""
    _, model = load_transformer(dense, dtype=torch.float32)
    plan = uniform_plan(model, 8)
    for split in plan.layers:
        split.order = torch.randperm(FFN, generator=torch.Generator().manual_seed(3))
    moe = build_moe(model, plan, top_k=8)
    assert moe.cfg.family == "mixtral" and moe.cfg.n_experts == 8 and moe.cfg.moe_intermediate_size == FFN // 8
    want = logits(model, TOKENS)
    assert want.abs().max() > 1.0
    assert (logits(moe, TOKENS) - want).abs().max().item() <= 1e-4


def test_a_fitted_router_picks_the_experts_that_matter() -> None:
    """On data whose best experts are a linear function of the input, the fitted router finds them."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 32, generator=gen)
    truth = torch.randn(8, 32, generator=gen)
    target = (x @ truth.T).exp()  # positive "output norms", ranked as x @ truth.T
    w = fit_router(x, target)
    hits = (target.topk(2, 1).indices[:, :, None] == (x @ w.T).topk(2, 1).indices[:, None, :]).any(-1)
    assert hits.float().mean() > 0.8  # chance is 0.25


def test_balanced_kmeans_makes_equal_clusters_of_related_points() -> None:
    gen = torch.Generator().manual_seed(1)
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=gen), dim=1)
    pts = torch.nn.functional.normalize(
        centres.repeat_interleave(24, 0) + 0.1 * torch.randn(96, 16, generator=gen), dim=1
    )
    labels = balanced_kmeans(pts, 4)
    assert torch.bincount(labels, minlength=4).tolist() == [24] * 4
    for c in range(4):  # each true cluster lands in one label
        assert labels[c * 24 : (c + 1) * 24].unique().numel() == 1


def test_moefy_writes_a_mixtral_folder_and_a_gguf_the_loader_reads(moefied) -> None:
    folder, gguf, output = moefied
    output = " ".join(output.split())  # rich wraps lines at the terminal's width
    assert "calibration prompts" in output and "router recall" in output and "simulacra run town25" in output
    info = describe_model(folder)
    assert info.format == "safetensors" and info.config.family == "mixtral"
    assert (info.config.n_experts, info.config.n_experts_per_tok, info.config.moe_intermediate_size) == (8, 2, 32)
    ginfo = describe_model(gguf)
    assert ginfo.config.family == "mixtral" and ginfo.expert_quantization == "Q8_0"
    a = load_model(folder, dtype=torch.float32)
    b = load_model(gguf, dtype=torch.float32)
    assert a.tokenizer.encode("Hello, Pell Café!") == b.tokenizer.encode("Hello, Pell Café!")
    assert a.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]) == b.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}]
    )
    # the GGUF's experts are the folder's, to within Q8_0's rounding (a wrong layout would be far off)
    c = load_model(gguf, dtype=torch.float32, quantized_experts=False)
    for la_, lc_ in zip(a.model.layers, c.model.layers, strict=True):
        for name in ("gate_up", "down"):
            wa, wc = getattr(la_.ffn, name), getattr(lc_.ffn, name)
            assert ((wa - wc).abs() <= wa.abs().amax(-1, keepdim=True) / 127 + 1e-6).all(), name
    la, lb = logits(a.model, TOKENS), logits(b.model, TOKENS)
    # Q8_0 experts against fp32 ones: the same next token almost everywhere, and close logits on most
    # tokens (a rounding can flip a near-tied top-2 routing choice, which moves that token's logits)
    assert (la.argmax(-1) == lb.argmax(-1)).float().mean() >= 0.8
    per_token = (la - lb).abs().amax(-1) / la.abs().amax(-1)
    assert per_token.median() < 0.05, per_token


@pytest.mark.slow  # transformers is the reference implementation
def test_the_folder_loads_in_transformers_as_mixtral_with_our_logits(moefied) -> None:
    from transformers import AutoModelForCausalLM, MixtralForCausalLM

    folder, _, _ = moefied
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert isinstance(ref, MixtralForCausalLM)
    _, ours = load_transformer(folder, dtype=torch.float32)
    with torch.inference_mode():
        want = ref(torch.tensor([TOKENS])).logits[0]
    assert (logits(ours, TOKENS) - want).abs().max().item() <= 1e-4


def test_quality_against_itself_is_perfect_and_k_changes_in_place(dense) -> None:
    _, model = load_transformer(dense, dtype=torch.float32)
    xs = []
    hooks = [b.ffn.register_forward_pre_hook(lambda _m, a: xs.append(a[0].clone())) for b in model.layers]
    logits(model, list(range(200, 600)))
    for h in hooks:
        h.remove()
    plan = plan_moe(model, xs, 8, ks=(2,))
    assert all(0.25 < s.router_recall[2] <= 1 for s in plan.layers)
    pairs = [([1, 2, 3, 50, 60, 70], [80, 90]), ([1, 2, 3, 55, 65], [75])]
    moe = build_moe(model, plan, top_k=8)
    moe8 = logits(moe, TOKENS)
    set_top_k(moe, 2)
    got = compare(model, {"dense": model, "moe": moe}, pairs, greedy_tokens=4)
    assert got["dense"]["top1"] == 1.0 and abs(got["dense"]["kl"]) < 1e-6 and got["dense"]["greedy_prefix"] == 1.0
    assert got["moe"]["kl"] > 0 and got["moe"]["positions"] == got["dense"]["positions"]
    set_top_k(moe, 8)
    assert (logits(moe, TOKENS) - moe8).abs().max() < 1e-4


def test_requests_that_cannot_be_met_say_what_to_change(dense, tmp_path) -> None:
    _, model = load_transformer(dense, dtype=torch.float32)
    with pytest.raises(MoefyError, match="does not divide the FFN width 256; choose one of 2, 4, 8"):
        check_request(model.cfg, 6, 2)
    with pytest.raises(MoefyError, match="--top-k must be between 1 and --experts"):
        check_request(model.cfg, 8, 9)
    run = CliRunner()
    cases = [
        (["moefy", str(tmp_path / "nope.gguf"), "-o", str(tmp_path / "o")], "no such file or folder"),
        (["moefy", str(dense), "--experts", "6", "-o", str(tmp_path / "o")], "does not divide"),
        (["moefy", str(dense), "--experts", "8", "--top-k", "9", "-o", str(tmp_path / "o")], "--top-k must be"),
        (["moefy", str(dense), "-o", str(tmp_path / "o"), "--expert-type", "q3"], "unknown --expert-type"),
        (["moefy", str(dense), "-o", str(dense)], "already exists"),
    ]
    for args, message in cases:
        result = run.invoke(app, args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_town3_runs_an_hour_on_a_moefied_model(moefied, tmp_path) -> None:
    """`simulacra run town3 --model MOE` as any run: stopped at half an hour and resumed, replayed exactly from
    its records, and read by the viewer."""
    _, gguf, _ = moefied
    cli = CliRunner()
    result = cli.invoke(app, ["run", "town3", "--hours", "0.5", "--model", str(gguf), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "r").iterdir()
    result = cli.invoke(app, ["resume", str(run_dir), "--hours", "0.5"])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(run_dir / "run.db") as conn:
        done, model = conn.execute("select steps_done, model from run").fetchone()
        calls = conn.execute("select count(*) from call").fetchone()[0]
    assert done == 6 and calls > 0 and model == str(gguf)  # the resume kept the MoE
    result = cli.invoke(app, ["replay", str(run_dir), "--out", str(tmp_path / "replayed")])
    assert result.exit_code == 0 and "identical:" in result.output, result.output
    run = Run.open(run_dir, probe=False)
    try:
        snap = RunSource(run).snapshot()
        assert snap["step"] == 6 and len(snap["residents"]) == 3 and snap["run"]["metrics"]
    finally:
        asyncio.run(run.aclose())
