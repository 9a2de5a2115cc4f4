"""A town run against llama.cpp's `llama-server`, a server nobody here wrote (`make check-llama-server`).

Builds llama-server from the pinned llama-cpp-python sdist if needed (llama_cpp.py), starts it on a
free port of 127.0.0.1 on the packaged SmolLM2 GGUF, runs `simulacra run SCENARIO --hours H --llm-url
...` in a child process, resumes it for one more step (`simulacra resume`: the run reconnects from
what run.db recorded), then reads every recorded call back from run.db: calls, structured answers
that did not parse, tokens, prompt-cache hits, latency per call. Prints the figures and writes
bench/out/llama_server_run.json. Not part of `make test` (the build takes about 8 minutes).

`-t 1` by default: on a machine shared with other work, ggml's spinning thread pool with 2 threads
measured 10x slower per token (300+ ms vs 27-30 ms for one sequence of SmolLM2 under load 6).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))

import llama_cpp  # noqa: E402  bench/peers/llama_cpp.py, not llama-cpp-python

from simulacra.inference.packaged import default_model_path  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(slots: int, context: int, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    """llama-server on the packaged GGUF; returns once `/health` answers 200."""
    exe = llama_cpp.binary("llama-server")
    port = free_port()
    cmd = [exe, "-m", default_model_path(), "--host", "127.0.0.1", "--port", port, "--no-webui"]
    cmd += ["-np", slots, "-c", slots * context, "-t", threads]
    env = {**os.environ, "LD_LIBRARY_PATH": str(exe.parent)}
    proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"llama-server exited {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit(f"llama-server did not answer /health within 180 s; see {log}")


def simulacra(*args: str) -> float:
    """Run the `simulacra` command; its wall seconds. Exits with its output if it fails."""
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "simulacra"), *args], env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"simulacra {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    print(r.stdout[-1500:], flush=True)
    return time.perf_counter() - t0


def figures(run_dir: Path) -> dict:
    """What run.db recorded of the calls: counts, unparsed structured answers, tokens, cache, latency."""
    with sqlite3.connect(run_dir / "run.db") as db:
        records = [json.loads(r) for (r,) in db.execute("select record from call")]
        steps = db.execute("select max(step) from step").fetchone()[0]
    structured = [r for r in records if r["json_schema"] is not None]
    samples = [s for r in structured for s in (r["samples"] or [r])]
    unparsed = [s for s in samples if s["parsed"] is None]
    wall = sorted(r["timings"].get("wall_s", 0.0) for r in records)
    prompt = sum(r["prompt_tokens"] for r in records)
    cached = sum(r["cached_tokens"] for r in records)
    return {
        "steps": steps,
        "calls": len(records),
        "errors": sum(r["finish_reason"] == "error" for r in records),
        "structured_samples": len(samples),
        "unparsed": len(unparsed),
        "unparsed_cut_by_budget": sum(s["finish_reason"] == "length" for s in unparsed),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "cache_hit_rate": round(cached / prompt, 3) if prompt else 0.0,
        "calls_with_tokens_and_latency": sum(
            r["prompt_tokens"] > 0 and r["timings"].get("wall_s", 0) > 0 and "server_decode_s" in r["timings"]
            for r in records
        ),
        "wall_s_per_call": {
            "mean": round(statistics.fmean(wall), 2) if wall else 0.0,
            "p50": round(wall[len(wall) // 2], 2) if wall else 0.0,
            "p95": round(wall[int(len(wall) * 0.95)], 2) if wall else 0.0,
        },
        "servers": sorted({r["meta"].get("server", "") for r in records}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="scenarios/town3.yaml")
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--slots", type=int, default=8, help="llama-server --parallel (the residents ask n=4 lines)")
    ap.add_argument("--context", type=int, default=4096, help="context per slot")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/simulacra-llama-server"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    proc, url = start_server(a.slots, a.context, a.threads, a.out / "llama-server.log")
    try:
        before = set(a.out.iterdir())
        wall = simulacra("run", a.scenario, "--hours", str(a.hours), "--llm-url", f"{url}/v1", "--llm-timeout",
                         "900", "--out", str(a.out))  # fmt: skip
        (run_dir,) = [p for p in set(a.out.iterdir()) - before if p.is_dir()]
        first = figures(run_dir)
        resume_wall = simulacra("resume", str(run_dir), "--hours", "0.17")
        after = figures(run_dir)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    report = {
        "scenario": a.scenario,
        "hours": a.hours,
        "llama_server": {"slots": a.slots, "context_per_slot": a.context, "threads": a.threads},
        "run_dir": str(run_dir),
        "wall_s": round(wall, 1),
        "run": first,
        "resume_wall_s": round(resume_wall, 1),
        "after_resume": after,
    }
    print(json.dumps(report, indent=1))
    out = ROOT / "bench" / "out" / "llama_server_run.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
