"""Our engine against two peers, same model, same shapes, one run (`make bench-peers`).

bench/engine.py compares us with `transformers` only; a fast engine is judged against llama.cpp too.
Here the packaged SmolLM2 GGUF runs, at each batch size (default 1, 8, 32, 64; npp=256 prompt tokens
and ntg=64 generated tokens per sequence, greedy, EOS ignored), in:

  ours          the engine, `Engine.generate` for every sequence at once (bench/engine.py's helpers);
  transformers  `model.generate(input_ids [batch, npp], do_sample=False)` on the same weights, loaded
                from the same GGUF (dequantised), in the same dtype as ours;
  llama.cpp     `llama-batched-bench` (built from the pinned llama-cpp-python sdist by llama_cpp.py)
                on the GGUF file itself, i.e. its own Q4_1 kernels, not our float weights.

Rates are defined as llama-batched-bench defines S_PP and S_TG: prefill tok/s = batch*npp / time of
the prompt pass; decode tok/s = tokens produced by decode steps / time of those steps. For ours and
transformers (bench/engine.rates): prefill time = a run with 1 new token (the prompt pass and the first
token from its logits); decode time = (a run with ntg new tokens) - (that run), i.e. ntg-1 decode steps,
batch*(ntg-1) tokens. For llama.cpp: T_PP (the prompt pass) and T_TG (ntg decode steps of batch tokens
each, random tokens, no sampling). Best of 2 runs each up to batch 32 (the machine is shared), 1 above.
The three run interleaved per batch size, after a warm-up of each, in this one process (llama.cpp as a
child process, a fresh one per batch size with `-c batch*(npp+ntg)`, which llama.cpp pads per sequence).

Prints a markdown table and writes bench/out/peers.json. Not part of `make test`: the first run
downloads and compiles llama.cpp into .cache/peers/ (about 8 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # bench/engine.py and bench/machine.py; llama_cpp.py sits beside us

import engine as engine_bench  # noqa: E402  bench/engine.py
import llama_cpp  # noqa: E402  bench/peers/llama_cpp.py, not llama-cpp-python
import torch  # noqa: E402
from machine import describe  # noqa: E402

from simulacra.inference.loader import default_dtype, load_model  # noqa: E402
from simulacra.inference.packaged import default_model_path  # noqa: E402

PEERS = ["transformers", "llama.cpp"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def log(msg: str) -> None:
    print(msg, flush=True)


def repeats_for(batch: int) -> int:
    return 2 if batch <= 32 else 1  # as bench/engine.py: the big batches take long enough to be stable


def load_transformers(path: Path, dtype: torch.dtype):
    """The packaged GGUF in `transformers` (it dequantises the file itself, offline), in `dtype`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype).eval()


def llama_batched_bench(exe: Path, gguf: Path, batch: int, npp: int, ntg: int, threads: int) -> dict:
    """One `llama-batched-bench` run at one batch size; its JSON line, with S_PP/S_TG as our keys."""
    cmd = [
        exe,
        *("-m", gguf, "-c", batch * (npp + ntg), "-b", 2048, "-ub", 512),
        *("-npp", npp, "-ntg", ntg, "-npl", batch, "-t", threads, "--output-format", "jsonl"),
    ]
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=1800)
    rows = [json.loads(ln) for ln in (r.stdout + "\n" + r.stderr).splitlines() if ln.startswith("{")]
    if r.returncode or not rows:
        raise llama_cpp.PeerError(f"llama-batched-bench failed (exit {r.returncode}): {llama_cpp.last_line(r)}")
    row = rows[-1]
    return {
        "prefill_tok_s": row["speed_pp"],
        "decode_tok_s": row["speed_tg"],
        "prefill_s": row["t_pp"],
        "decode_s": row["t_tg"],
        "raw": row,
        "command": " ".join(str(c) for c in cmd),
    }


def best_llama(runs: list[dict]) -> dict:
    """Best prefill and best decode over repeated runs, as `engine.rates` takes them for ours."""
    best = dict(max(runs, key=lambda r: r["prefill_tok_s"]))
    fastest_tg = max(runs, key=lambda r: r["decode_tok_s"])
    best.update(decode_tok_s=fastest_tg["decode_tok_s"], decode_s=fastest_tg["decode_s"])
    best["runs"] = [{k: r[k] for k in ("prefill_tok_s", "decode_tok_s")} for r in runs]
    return best


def llama_version(exe: Path) -> str:
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    return next((ln.strip() for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("version")), "unknown")


def cell(row: dict, key: str) -> str:
    values = [row.get(name, {}).get(key) for name in ("ours", *PEERS)]
    return " / ".join("–" if v is None else f"{v:,.0f}" for v in values)


def ratios(row: dict) -> tuple[str, str]:
    """(ours ÷ the faster peer at prefill, naming it; ours ÷ llama.cpp at decode)."""
    ours = row["ours"]
    peers = [(row[p]["prefill_tok_s"], p) for p in PEERS if p in row]
    prefill = "–"
    if peers:
        rate, name = max(peers)
        prefill = f"{ours['prefill_tok_s'] / rate:.2f}x ({name})"
    decode = "–"
    if "llama.cpp" in row:
        decode = f"{ours['decode_tok_s'] / row['llama.cpp']['decode_tok_s']:.2f}x"
    return prefill, decode


def render(results: dict) -> str:
    m = results["meta"]
    lines = [
        f"Command: `{m['command']}` on {m['date']}; {m['machine']}; model {m['model']}; ours: {m['dtype']}; "
        f"transformers: {m['peers']['transformers']}; llama.cpp: {m['peers']['llama.cpp']}; npp={m['npp']}, "
        f"ntg={m['ntg']}, greedy, EOS ignored. Load average (1/5/15 min) {m['loadavg_start']} at start, "
        f"{m['loadavg_end']} at end.",
        "",
        "Prefill tok/s = batch*npp / prompt-pass time; decode tok/s = batch*steps / time of those decode steps "
        "(llama-batched-bench's S_PP and S_TG). Ours and transformers: prompt pass = a 1-new-token run, decode = "
        f"the {m['ntg']}-token run minus it ({m['ntg'] - 1} steps); llama.cpp: its T_PP and T_TG ({m['ntg']} "
        "steps). Best of 2 runs up to batch 32, 1 above. Others' CPU: the share of the machine's CPU time other "
        "processes used while each was measured (this machine is shared; each batch waits for a quiet CPU first).",
        "",
        "| batch | prefill tok/s ours / transformers / llama.cpp | decode tok/s ours / transformers / llama.cpp "
        "| prefill ours ÷ faster peer | decode ours ÷ llama.cpp | others' CPU ours / transformers / llama.cpp |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for b, row in results["rows"].items():
        prefill, decode = ratios(row)
        busy = " / ".join(f"{row[n]['others_cpu']:.0%}" if n in row else "–" for n in ("ours", *PEERS))
        lines.append(
            f"| {b} | {cell(row, 'prefill_tok_s')} | {cell(row, 'decode_tok_s')} | {prefill} | {decode} | {busy} |"
        )
    return "\n".join(lines)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class OthersCPU:
    """The share of the machine's CPU time that other processes used since `start()`: this machine is
    shared, and two busy cores are enough to halve a rate, so every figure comes with it."""

    def __init__(self) -> None:
        self.start()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        total = sum(fields)
        busy = total - fields[3] - fields[4]  # minus idle and iowait
        t = os.times()  # this process's threads and its finished children (llama-batched-bench)
        ours = (t.user + t.system + t.children_user + t.children_system) * os.sysconf("SC_CLK_TCK")
        return busy, total, ours

    def start(self) -> None:
        self.t0 = self._sample()

    def share(self) -> float:
        busy, total, ours = (b - a for a, b in zip(self.t0, self._sample(), strict=True))
        return max(0.0, (busy - ours) / max(total, 1))


def wait_quiet(max_s: float, below: float = 0.1) -> float:
    """Wait (up to `max_s`) until other processes use less than `below` of the CPU over 2 s; their share."""
    deadline = time.time() + max_s
    while True:
        probe = OthersCPU()
        time.sleep(2)
        share = probe.share()
        if share < below or time.time() >= deadline:
            return share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8,32,64", help="comma-separated batch sizes (default 1,8,32,64)")
    ap.add_argument("--npp", type=int, default=256, help="prompt tokens per sequence")
    ap.add_argument("--ntg", type=int, default=64, help="generated tokens per sequence")
    ap.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="auto: bf16 with AVX512-BF16/AMX")
    ap.add_argument("--threads", type=int, default=2, help="torch threads and llama.cpp -t")
    ap.add_argument("--wait-quiet", type=float, default=120, help="seconds to wait per batch for a quiet CPU")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = default_dtype("cpu") if args.dtype == "auto" else DTYPES[args.dtype]
    path = default_model_path()

    exe = None
    if not args.skip_llama_cpp:
        try:
            llama_cpp.build()  # all targets, one cmake run; instant when .cache/peers already holds them
            exe = llama_cpp.binary("llama-batched-bench")
        except llama_cpp.PeerError as exc:
            sys.exit(str(exc))
    lm = load_model(path, dtype=dtype)
    hf = None if args.skip_transformers else load_transformers(path, dtype)
    vocab = lm.model.cfg.vocab_size

    def ours(b: int, npp: int, ntg: int, repeats: int) -> dict:
        return engine_bench.ours_batched(lm, b, npp, ntg, repeats)

    def transformers(b: int, npp: int, ntg: int, repeats: int) -> dict:
        return engine_bench.hf_batched(hf, b, npp, ntg, vocab, repeats)

    def llama(b: int, npp: int, ntg: int, repeats: int) -> dict:
        return best_llama([llama_batched_bench(exe, path, b, npp, ntg, args.threads) for _ in range(repeats)])

    runners = {"ours": ours}
    if hf is not None:
        runners["transformers"] = transformers
    if exe is not None:
        runners["llama.cpp"] = llama

    started = loadavg()
    t0 = time.time()
    log(f"warm-up ({', '.join(runners)}) ...")
    for run in runners.values():
        run(8, args.npp, 4, 1)
    results: dict = {"rows": {}}
    others = OthersCPU()
    for b in batches:
        quiet = wait_quiet(args.wait_quiet)
        if quiet >= 0.1:
            log(f"other processes still use {quiet:.0%} of the CPU after {args.wait_quiet:.0f} s; measuring anyway")
        row = {}
        for name, run in runners.items():
            others.start()
            row[name] = run(b, args.npp, args.ntg, repeats_for(b))
            row[name]["others_cpu"] = others.share()
            shown = {k: round(v, 3) for k, v in row[name].items() if isinstance(v, float)}
            log(f"batch {b:3d} {name:12s} {json.dumps(shown)}")
        results["rows"][b] = row
    dtype_name = str(dtype).removeprefix("torch.")
    quant = lm.info.quantization
    peers = {
        "transformers": "skipped"
        if hf is None
        else f"{importlib.metadata.version('transformers')}, {dtype_name}, the same GGUF dequantised",
        "llama.cpp": "skipped"
        if exe is None
        else f"{llama_cpp.LCP} sdist ({llama_version(exe)}), the GGUF as stored ({quant} kernels), "
        f"llama-batched-bench -b 2048 -ub 512 -t {args.threads}",
    }
    results["meta"] = {
        "command": "make bench-peers",
        "date": datetime.date.today().isoformat(),
        "machine": describe(),
        "model": f"{path.name} ({quant})",
        "dtype": dtype_name,
        "peers": peers,
        "threads": args.threads,
        "npp": args.npp,
        "ntg": args.ntg,
        "llama_cpp_build_seconds": llama_cpp.build_seconds(),
        "loadavg_start": started,
        "loadavg_end": loadavg(),
        "minutes": round((time.time() - t0) / 60, 1),
    }
    text = render(results)
    print(f"\n{text}")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps({**results, "table": text}, indent=2))


if __name__ == "__main__":
    main()
