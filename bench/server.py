"""Server benchmark (`make bench-server`): the OpenAI-compatible server and HTTP client, timed.

The tests (tests/inference/test_server.py, test_http_backend.py) check the behaviour: concurrent
requests are all inside the backend at once, a timed-out attempt is retried and then reported. This
measures the time, which on a shared 2-core machine is too noisy for a test's assertion:

  concurrency   N chat completions at once through the official `openai` client against a scripted
                backend that takes LATENCY s per request; wall time against one latency (perfect
                overlap) and N latencies (a server that queues them)
  timeout       OpenAIHTTPBackend (timeout 0.2 s, one retry) against a backend that answers after
                0.6 s: how long generate() and stream() take to give up (2 attempts each), against
                the 1.2 s each would take if the client waited for the answers

Prints Markdown tables and writes bench/out/server.json.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/server.py [--latency 0.3] [--concurrency 1 16 64]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import openai  # noqa: E402
from machine import describe  # noqa: E402 - bench/machine.py: scripts run with bench/ on sys.path

from simulacra.inference.backends.fake import ScriptedLLM  # noqa: E402
from simulacra.inference.backends.http import HTTPBackendTimeout, OpenAIHTTPBackend  # noqa: E402
from simulacra.inference.backends.server import running  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench-model"
CONTEXT = 512


def bench_concurrency(n: int, latency: float, repeats: int) -> dict:
    llm = ScriptedLLM("concurrent answer", latency=latency)
    walls = []
    with running(llm, MODEL, CONTEXT) as srv:

        async def go() -> float:
            async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=60) as c:
                t0 = time.perf_counter()
                results = await asyncio.gather(
                    *(
                        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"resident {i}"}])
                        for i in range(n)
                    )
                )
                wall = time.perf_counter() - t0
            assert [r.choices[0].message.content for r in results] == ["concurrent answer"] * n
            return wall

        for _ in range(repeats):
            walls.append(asyncio.run(go()))
    wall = statistics.median(walls)
    return {
        "requests": n,
        "latency_s": latency,
        "wall_s": wall,
        "serial_s": n * latency,
        "overlap": n * latency / wall,
        "max_in_flight": int(llm.stats()["max_in_flight"]),
        "walls": walls,
    }


def bench_timeout(timeout: float, answer_after: float, repeats: int) -> dict:
    slow = ScriptedLLM("eventually", latency=answer_after)
    gen, stream = [], []
    with running(slow, MODEL, CONTEXT) as srv:

        async def go() -> tuple[float, float]:
            b = OpenAIHTTPBackend(srv.base_url, MODEL, timeout=timeout, max_retries=1, backoff=0.01)
            try:
                t0 = time.perf_counter()
                try:
                    await b.generate("hurry", max_tokens=3)
                    raise AssertionError("generate did not time out")
                except HTTPBackendTimeout:
                    pass
                t1 = time.perf_counter()
                try:
                    _ = [e async for e in b.stream("hurry", max_tokens=3)]
                    raise AssertionError("stream did not time out")
                except TimeoutError:
                    pass
                t2 = time.perf_counter()
            finally:
                await b.aclose()
            return t1 - t0, t2 - t1

        for _ in range(repeats):
            g, s = asyncio.run(go())
            gen.append(g)
            stream.append(s)
    return {
        "timeout_s": timeout,
        "answer_after_s": answer_after,
        "attempts": 2,
        "generate_s": statistics.median(gen),
        "stream_s": statistics.median(stream),
        "waiting_s": 2 * answer_after,
        "runs": {"generate": gen, "stream": stream},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "server.json")
    args = ap.parse_args()
    conc = [bench_concurrency(n, args.latency, args.repeats) for n in args.concurrency]
    tmo = bench_timeout(0.2, 0.6, args.repeats)
    print(f"server over loopback; {describe()}; median of {args.repeats} runs")
    print()
    print(f"Concurrent chat completions, scripted backend taking {args.latency:g} s each:")
    print()
    print("| requests | wall s | one latency s | serial s | overlap (serial / wall) | max in flight |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in conc:
        print(
            f"| {r['requests']} | {r['wall_s']:.3f} | {r['latency_s']:.3f} | {r['serial_s']:.3f} "
            f"| {r['overlap']:.1f}x | {r['max_in_flight']} |"
        )
    print()
    print(
        f"Client timeout {tmo['timeout_s']:g} s with one retry, backend answering after {tmo['answer_after_s']:g} s:"
    )
    print()
    print("| call | attempts | gave up after s | waiting for the answers would take s |")
    print("|---|---:|---:|---:|")
    for call in ("generate", "stream"):
        print(f"| {call} | {tmo['attempts']} | {tmo[f'{call}_s']:.3f} | {tmo['waiting_s']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.date.today().isoformat(), "machine": describe(), "argv": sys.argv}
    args.out.write_text(json.dumps({"meta": meta, "concurrency": conc, "timeout": tmo}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
