"""Model files nobody here wrote (`make check-peer-gguf`, issue 13 point 7).

`tests/inference/test_gguf.py` reads GGUF files written by `tests/inference/gguf_writer.py`, which
shares the loader's assumptions (tensor names, the Q/K permutation, how experts are stacked). This
check takes the files from llama.cpp's own converter instead:

1. downloads the `llama-cpp-python` sdist from the package index (it vendors llama.cpp, with
   `convert_hf_to_gguf.py` and its matching `gguf-py`) into `.cache/peers/`;
2. builds a tiny random `transformers` checkpoint of each family in `tests/inference/tiny_models.py`
   (same configs and init, the vocabulary widened to the tokenizer's; a few variants where the
   converter or llama.cpp cannot take the tiny_models shape) with SmolLM2's tokenizer, rebuilt by
   `transformers` from the packaged GGUF, so that the converter recognises its pre-tokenizer;
3. converts each with the converter to F32, F16 and Q8_0 and loads the files with our loader, as the
   engine does (`load_model`, fp32; Q8_0 experts kept quantised) and all-float;
4. compares our logits with `transformers` running the weights the file holds (the checkpoint's
   weights rounded exactly as the converter rounds them, with llama.cpp's `gguf.quants`: F16, or Q8_0
   quantise + dequantise; 1-D tensors, norms and routers stay F32 as the converter keeps them), and
   with the original fp32 weights;
5. builds `libllama` from the same sdist (cmake, CPU only) and, through the sdist's own ctypes
   bindings, runs each file there: its next-token choice (argmax) at every position against ours.

Prints a table family x outtype and writes bench/out/peer_gguf.json and bench/out/peer_gguf.md;
exits 1 when a file that converted is outside the expectations. Not part of `make test`: it
downloads a peer (a 75 MB sdist) and compiles it (about 10 minutes on 2 busy cores, once).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.metadata
import json
import os
import shutil
import sys
import time
from pathlib import Path
from unittest.mock import patch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # tests.inference.tiny_models; bench/machine.py

import llama_cpp  # noqa: E402  bench/peers/llama_cpp.py (this script's folder), not llama-cpp-python
import numpy as np  # noqa: E402
import torch  # noqa: E402
from llama_cpp import CACHE, LCP, last_line, log, run  # noqa: E402
from machine import describe  # noqa: E402

from simulacra.inference.kvcache import ContiguousKV  # noqa: E402
from simulacra.inference.loader import load_model  # noqa: E402
from simulacra.inference.packaged import default_model_path  # noqa: E402
from tests.inference import tiny_models  # noqa: E402

SENTENCEPIECE = "sentencepiece==0.2.3"  # the converter imports it before looking for tokenizer.model
OUTTYPES = ["f32", "f16", "q8_0"]
# name -> (tiny_models family, overrides). The variants exist because the converter refuses a dense
# layer in Qwen2-MoE (tiny_models' mlp_only_layers=[1]) and llama.cpp runs OLMoE only without GQA.
CHECKPOINTS: dict[str, tuple[str, dict]] = {
    **{f: (f, {}) for f in tiny_models.FAMILIES},
    "qwen2_moe_all_moe": ("qwen2_moe", {"mlp_only_layers": []}),
    "olmoe_mha": ("olmoe", {"num_key_value_heads": 4, "rms_norm_eps": 1e-5, "clip_qkv": None}),
}
ORDER = [
    "llama",
    "llama_llama3_rope",
    "llama_linear_rope",
    "mixtral",
    "qwen2_moe",
    "qwen2_moe_all_moe",
    "qwen3_moe",
    "olmoe",
    "olmoe_mha",
    "granitemoe",
]
SEED = 0
LENGTHS = [1, 6, 17]  # random token sequences per file; one more from TEXT
TEXT = "The baker opens at 7:30, and 12 villagers queue for bread."
TOL = 1e-4  # ours vs transformers on the same weights, as in tests/inference/test_parity.py
# HF parameters llama.cpp's converter keeps in F32 whatever --outtype says (FFN_GATE_INP and
# FFN_GATE_INP_SHEXP: the routers); 1-D tensors and norms are F32 too.
ROUTER_SUFFIXES = (
    "mlp.gate.weight",
    "block_sparse_moe.gate.weight",
    "block_sparse_moe.router.weight",
    "shared_expert_gate.weight",
)


# ------------------------------------------------------------------------------------------- the peer


def converter_deps() -> Path:
    """What the converter imports that the project does not install, kept out of the venv."""
    target = CACHE / "pydeps"
    if not (target / "sentencepiece").is_dir():
        log(f"installing {SENTENCEPIECE} into {target.relative_to(ROOT)} ...")
        r = run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, SENTENCEPIECE])
        if r.returncode:
            sys.exit(f"pip install {SENTENCEPIECE} failed: {last_line(r)}")
    return target


def build_llama_cpp() -> tuple[Path | None, str]:
    """libllama (+ libggml*) from the sdist (llama_cpp.py builds it, once); (lib folder or None, note)."""
    cached = llama_cpp.is_built(["llama"])
    try:
        lib = llama_cpp.lib_dir()
    except llama_cpp.PeerError as exc:
        return None, str(exc)
    return lib, "built earlier" if cached else f"built in {llama_cpp.build_seconds()} s"


# ------------------------------------------------------------------------------------- the checkpoints


def tokenizer_dir() -> Path:
    """SmolLM2's tokenizer as `transformers` rebuilds it from the packaged GGUF (tokenizer.json etc.)."""
    out = CACHE / "tokenizer"
    if not (out / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        gguf = default_model_path()
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def build_checkpoint(name: str, tok, tok_dir: Path, folder: Path):
    """tiny_models' random checkpoint (seed SEED) with the tokenizer's vocabulary, saved with it."""
    family, overrides = CHECKPOINTS[name]
    common = {k: v for k, v in overrides.items() if k in tiny_models.COMMON}
    spec = {**tiny_models.FAMILIES[family], **{k: v for k, v in overrides.items() if k not in common}}
    with patch.dict(tiny_models.COMMON, vocab_size=len(tok), **common), patch.dict(tiny_models.FAMILIES, {name: spec}):
        model = tiny_models.build_reference(name, SEED)
    model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    if folder.exists():
        shutil.rmtree(folder)
    tiny_models.save_reference(model, folder)
    for f in tok_dir.iterdir():
        shutil.copy(f, folder / f.name)
    return model


def convert(src: Path, deps: Path, folder: Path, outtype: str, out: Path) -> tuple[bool, str]:
    converter = src / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"  # puts its own gguf-py first on sys.path
    env = dict(os.environ, PYTHONPATH=str(deps))
    env.pop("NO_LOCAL_GGUF", None)
    r = run([sys.executable, converter, folder, "--outtype", outtype, "--outfile", out], env=env)
    if r.returncode or not out.is_file():
        return False, last_line(r)
    return True, ""


def kept_f32(name: str, p: torch.Tensor) -> bool:
    return p.ndim <= 1 or name.endswith("norm.weight") or name.endswith(ROUTER_SUFFIXES)


def file_weights(model, outtype: str):
    """A copy of `model` holding exactly the weights the converter writes for `outtype` (dequantised)."""
    import gguf  # the venv's; main() checks it is the sdist's gguf-py version

    qtype = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}.get(outtype)
    rt = copy.deepcopy(model)
    if qtype is None:
        return rt
    with torch.no_grad():
        for name, p in rt.named_parameters():
            if kept_f32(name, p):
                continue
            a = p.detach().numpy()
            t = qtype
            if t == gguf.GGMLQuantizationType.Q8_0 and a.shape[-1] % 32:
                t = gguf.GGMLQuantizationType.F16  # the converter's fallback on QuantError
            p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(a, t), t).reshape(a.shape)))
    return rt


def type_check(reader, model, outtype: str) -> str:
    """'' when the file's element counts per type equal what `file_weights` assumed, else a note."""
    in_file: dict[str, int] = {}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":  # Llama-3 RoPE factors: computed by the converter, no HF tensor
            continue
        in_file[t.tensor_type.name] = in_file.get(t.tensor_type.name, 0) + int(t.n_elements)
    main = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[outtype]
    assumed: dict[str, int] = {}
    seen = set()
    for name, p in model.named_parameters():
        if p.data_ptr() in seen:  # tied embeddings are one tensor in the file
            continue
        seen.add(p.data_ptr())
        kind = "F32" if kept_f32(name, p) else ("F16" if main == "Q8_0" and p.shape[-1] % 32 else main)
        assumed[kind] = assumed.get(kind, 0) + p.numel()
    return "" if in_file == assumed else f"types: file {in_file} != assumed {assumed}"


def file_settings(reader, model) -> dict:
    """HF config fields the file states differently from the checkpoint (what the converter dropped)."""
    arch = reader.fields["general.architecture"].contents()
    field = reader.fields.get(f"{arch}.attention.layer_norm_rms_epsilon")
    changed = {}
    if field is not None and not np.isclose(field.contents(), model.config.rms_norm_eps, rtol=1e-5, atol=0):
        changed["rms_norm_eps"] = float(f"{float(field.contents()):.6g}")  # as float32 holds it
    clamp = reader.fields.get(f"{arch}.attention.clamp_kqv")
    clip = getattr(model.config, "clip_qkv", None)
    if (clamp is None) != (clip is None) or (clamp is not None and not np.isclose(clamp.contents(), clip)):
        changed["clip_qkv"] = None if clamp is None else float(clamp.contents())
    return changed


def with_settings(model, changed: dict):
    """The same weights under a config changed as the file states."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(model.config)
    for k, v in changed.items():
        setattr(cfg, k, v)
    other = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    other.load_state_dict(model.state_dict())
    return other.eval()


# ------------------------------------------------------------------------------------------ the logits


def sequences(tok, vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(1234)
    seqs = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in LENGTHS]
    return [*seqs, tok.encode(TEXT, add_special_tokens=False)]


def reference_logits(model, seqs: list[list[int]]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [model(torch.tensor([s])).logits[0].float() for s in seqs]


def ours_logits(model, seqs: list[list[int]]) -> list[torch.Tensor]:
    """One ragged batch through our model (as tests/inference/test_parity.py does)."""
    kv = ContiguousKV(model.cfg.n_layers, len(seqs))
    kv.set_batch(list(range(len(seqs))), [len(s) for s in seqs])
    tokens = torch.tensor([t for s in seqs for t in s])
    positions = torch.cat([torch.arange(len(s)) for s in seqs])
    with torch.inference_mode():
        return list(model(tokens, positions, kv).float().split([len(s) for s in seqs]))


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def argmax_agreement(ours, theirs, want) -> tuple[int, int, int]:
    """(positions where llama.cpp's argmax is ours, positions, disagreements llama.cpp's own error
    explains: the reference's gap between the two choices is at most twice llama.cpp's largest
    |logit error| at that position, so its rounding alone can swap them)."""
    agree = explained = total = 0
    for g, t, w in zip(ours, theirs, want, strict=True):
        a, b = g.argmax(-1), t.argmax(-1)
        err = (t - w).abs().max(-1).values
        gap = (w.gather(-1, a[:, None]) - w.gather(-1, b[:, None]))[:, 0].abs()
        same = a == b
        agree += int(same.sum())
        explained += int((~same & (gap <= 2 * err)).sum())
        total += len(a)
    return agree, total, explained


def llama_cpp_logits(src: Path, lib: Path, path: Path, seqs: list[list[int]]) -> tuple[list | None, str]:
    """Logits at every position from llama.cpp, in a child process (a crash there is a result, not ours)."""
    work = CACHE / "work"
    work.mkdir(parents=True, exist_ok=True)
    job, out = work / "seqs.json", work / "llama_logits.npz"
    job.write_text(json.dumps(seqs))
    out.unlink(missing_ok=True)
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=str(lib), PYTHONPATH=str(src))
    worker = Path(__file__).with_name("llama_cpp_worker.py")
    r = run([sys.executable, worker, path, job, out], env=env, timeout=600)
    if r.returncode or not out.is_file():
        errors = [ln for ln in (r.stderr + r.stdout).splitlines() if "error" in ln.lower()]
        return None, " ".join((errors[0] if errors else last_line(r)).split())
    data = np.load(out)
    return [torch.from_numpy(data[f"s{i}"]) for i in range(len(seqs))], ""


# ------------------------------------------------------------------------------------------- the check


def check_file(row: dict, path: Path, ref, outtype: str, seqs, want_orig, tok, src, lib) -> None:
    import gguf

    reader = gguf.GGUFReader(path)
    row["file_mb"] = round(path.stat().st_size / 1e6, 1)
    row["types_note"] = type_check(reader, ref, outtype)
    changed = file_settings(reader, ref)
    if changed:
        row["lossy"] = {k: [getattr(ref.config, k), v] for k, v in changed.items()}  # [checkpoint, file]
    want = reference_logits(file_weights(with_settings(ref, changed) if changed else ref, outtype), seqs)
    row["ref_vs_orig"] = max_diff(want, want_orig)
    got = None
    try:
        loaded = load_model(path, dtype=torch.float32)  # as the engine loads it (Q8_0 experts kept quantised)
        got = ours_logits(loaded.model, seqs)
        got_float = ours_logits(load_model(path, dtype=torch.float32, quantized_experts=False).model, seqs)
        row["ours_vs_file"] = max_diff(got, want)
        row["ours_float_vs_file"] = max_diff(got_float, want)
        row["ours_vs_orig"] = max_diff(got, want_orig)
        row["tokenizer_agrees"] = (
            loaded.tokenizer.encode(TEXT) == seqs[-1] == tok.encode(TEXT, add_special_tokens=False)
        )
    except Exception as exc:  # a loader failure is a finding, reported in the table
        row["load_error"] = f"{type(exc).__name__}: {exc}"
    if lib is None:
        return
    theirs, err = llama_cpp_logits(src, lib, path, seqs)
    if theirs is None:
        row["llama_error"] = err
        return
    row["llama_vs_file"] = max_diff(theirs, want)
    if got is not None:
        row["argmax_agree"], row["positions"], row["argmax_explained"] = argmax_agreement(got, theirs, want)


def failures(rows: list[dict]) -> list[dict]:
    def bad(r: dict) -> bool:
        if not r.get("converted"):
            return False
        unexplained = r.get("positions", 0) - r.get("argmax_agree", 0) - r.get("argmax_explained", 0)
        return bool(
            "load_error" in r
            or r.get("types_note")
            or r.get("ours_vs_file", 1) > TOL
            or r.get("ours_float_vs_file", 1) > TOL
            or not r.get("tokenizer_agrees", False)
            or unexplained > 0
        )

    return [r for r in rows if bad(r)]


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.1e}"


def render(rows: list[dict]) -> str:
    lines = [
        "| checkpoint | outtype | converted | ours − transformers, file's weights (engine load / all-float) "
        "| ours − transformers, fp32 weights | llama.cpp argmax = ours | llama.cpp − transformers, file's weights |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if not r["converted"]:
            lines.append(f"| {r['name']} | {r['outtype']} | no: `{r['error']}` | – | – | – | – |")
            continue
        conv = "yes"
        if r.get("lossy"):
            said = ", ".join(f"{k} {a} → {b}" for k, a, b in ((k, *v) for k, v in r["lossy"].items()))
            conv = f"yes, lossy: {said}"
        if r.get("types_note"):
            conv += f" ({r['types_note']})"
        if "load_error" in r:
            cells = [f"load failed: {r['load_error']}", "–"]
        else:
            cells = [f"{fmt(r['ours_vs_file'])} / {fmt(r['ours_float_vs_file'])}", fmt(r["ours_vs_orig"])]
        if "llama_error" in r:
            lcpp = [f"does not run: `{r['llama_error']}`", "–"]
        elif "llama_vs_file" in r:
            agree = "–"
            if "argmax_agree" in r:
                agree = f"{r['argmax_agree']}/{r['positions']}"
                if r["argmax_agree"] < r["positions"]:
                    agree += f" ({r['argmax_explained']} within llama.cpp's error)"
            lcpp = [agree, fmt(r["llama_vs_file"])]
        else:
            lcpp = ["–", "–"]
        lines.append(f"| {r['name']} | {r['outtype']} | {conv} | " + " | ".join(cells + lcpp) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", nargs="*", default=ORDER, choices=ORDER)
    ap.add_argument("--outtypes", nargs="*", default=OUTTYPES, choices=OUTTYPES)
    ap.add_argument("--no-llama-cpp", action="store_true", help="skip building and running llama.cpp")
    args = ap.parse_args()
    t_start = time.time()
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    try:
        src = llama_cpp.sdist()
    except llama_cpp.PeerError as exc:
        sys.exit(str(exc))
    # Our loader and `file_weights` use the venv's gguf; the converter runs with the sdist's gguf-py.
    ours_gguf = importlib.metadata.version("gguf")
    vendored = (src / "vendor" / "llama.cpp" / "gguf-py" / "pyproject.toml").read_text()
    if f'version = "{ours_gguf}"' not in vendored:
        log(f"note: the venv's gguf {ours_gguf} is not the sdist's gguf-py version; Q8_0 round trips may differ")
    deps = converter_deps()
    lib, build_note = (None, "not run (--no-llama-cpp)") if args.no_llama_cpp else build_llama_cpp()
    log(f"libllama: {build_note}")
    from transformers import AutoTokenizer

    tok_dir = tokenizer_dir()
    tok = AutoTokenizer.from_pretrained(tok_dir)

    rows = []
    for name in args.checkpoints:
        folder = CACHE / "hf" / name
        ref = build_checkpoint(name, tok, tok_dir, folder)
        seqs = sequences(tok, ref.config.vocab_size)
        want_orig = reference_logits(ref, seqs)
        for outtype in args.outtypes:
            row: dict = {"name": name, "outtype": outtype}
            path = CACHE / "gguf" / f"{name}.{outtype}.gguf"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            t0 = time.time()
            row["converted"], err = convert(src, deps, folder, outtype, path)
            row["convert_s"] = round(time.time() - t0, 1)
            if row["converted"]:
                check_file(row, path, ref, outtype, seqs, want_orig, tok, src, lib)
            else:
                row["error"] = err
            rows.append(row)
            shown = {k: v for k, v in row.items() if k not in ("name", "outtype")}
            log(f"{name:18s} {outtype:5s} {json.dumps(shown)}")

    table = render(rows)
    header = (
        f"Command: `make check-peer-gguf` on {datetime.date.today()}; {describe()}; {LCP} "
        f"(its convert_hf_to_gguf.py and gguf-py; libllama {build_note}); transformers "
        f"{importlib.metadata.version('transformers')}; {len(rows)} conversions in "
        f"{(time.time() - t_start) / 60:.1f} min."
    )
    print(f"\n{header}\n\n{table}")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "peer_gguf.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    (out / "peer_gguf.md").write_text(f"{header}\n\n{table}\n")
    bad = failures(rows)
    if bad:
        print(f"\n{len(bad)} file(s) outside the expectations: {[(r['name'], r['outtype']) for r in bad]}")
        sys.exit(1)
    print(f"\nall {sum(r['converted'] for r in rows)} converted files within the expectations")


if __name__ == "__main__":
    main()
