"""Viewer benchmark (`make bench-viewer`): what websocket viewers cost a run that is stepping.

The tests (tests/viewer/test_protocol.py, test_load.py) check the behaviour: a stalled client is
resynced with a fresh snapshot instead of a backlog, fifty clients get every delta in order. This
measures the time, which on a shared 2-core machine is too noisy for a test's assertion:

  stalled   a generated town of 3,000 residents, 80 steps from the morning commute (world only,
            no minds), with no client vs one client that completes the handshake and never reads;
            once with the kernel's default send buffer (which here swallows the whole run) and
            once with a 4 KiB one, so the server's own queue overflows and is cut to a snapshot
  fifty     town25 with a stand-in mind that awaits 50 ms per step (a fast engine's batch), 30
            steps, with no client vs 50 clients in another process (tests/viewer/ws_clients.py)

The arms are run alternately (none, client, ..., then reversed) and the medians compared; the target
is a slowdown of at most 10%. Prints a Markdown table and writes bench/out/viewer.json.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/viewer.py [--stalled-trials 7] [--load-trials 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.viewer.ws_clients

from machine import describe  # noqa: E402 - bench/machine.py: scripts run with bench/ on sys.path

from simulacra.scenario import generate_scenario, load_scenario, packaged_scenarios, parse_scenario  # noqa: E402
from simulacra.viewer.server import ViewerServer  # noqa: E402
from simulacra.viewer.source import TownSource, run_town  # noqa: E402
from simulacra.world import Resident  # noqa: E402
from tests.viewer.ws_clients import stalled_client, start_clients  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
INFERENCE_S = 0.05


async def interleaved_medians(
    arms: dict[str, Callable[[], Awaitable[float]]], trials: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Run each arm once per trial, alternating the order; return each arm's median and all times."""
    times: dict[str, list[float]] = {k: [] for k in arms}
    names = list(arms)
    for t in range(trials):
        for name in names if t % 2 == 0 else names[::-1]:
            times[name].append(await arms[name]())
    return {k: statistics.median(v) for k, v in times.items()}, times


async def bench_stalled(residents: int, steps: int, trials: int) -> list[dict]:
    town = parse_scenario(generate_scenario(residents, seed=1), source=f"generated-{residents}").build_town(seed=1)
    for _ in range(30):  # into the morning commute: many residents move every step
        town.step()
    saved = town.state_dict()
    resynced: dict[str, list[bool]] = {"default": [], "small": []}

    async def run(stalled: str | None) -> float:
        town.load_state_dict(saved)
        src = TownSource(town)
        async with ViewerServer(src) as server:
            sock = stalled_client(server.port) if stalled else None
            while server.client_count < int(stalled is not None):
                await asyncio.sleep(0.01)
            if stalled == "small":  # its bytes pile up in the server, not in the kernel, as in the test
                (client,) = server._clients
                client.ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await asyncio.sleep(0.2)  # its snapshot is on its way (and stuck) before timing starts
            t0 = time.perf_counter()
            assert await run_town(src, steps, server=server) == steps
            elapsed = time.perf_counter() - t0
            if stalled:
                assert server.client_count == 1
                resynced[stalled].append(any(c.snapshot_pending for c in server._clients))
                sock.close()
        return elapsed

    arms = {"none": lambda: run(None), "default": lambda: run("default"), "small": lambda: run("small")}
    med, times = await interleaved_medians(arms, trials)
    buffers = {"default": "the kernel's default send buffer", "small": "a 4 KiB send buffer"}
    return [
        {
            "case": f"1 stalled client ({buffers[k]}), {residents:,} residents, {steps} steps (world only)",
            "trials": trials,
            "none_s": med["none"],
            "client_s": med[k],
            "slowdown": med[k] / med["none"] - 1,
            "note": f"resynced (its queue overflowed) in {sum(resynced[k])} of {len(resynced[k])} trials",
            "times": {"none": times["none"], "client": times[k]},
        }
        for k in ("default", "small")
    ]


class WaitingResident(Resident):
    """Follows the routine, after waiting as long as a batched LLM call would take."""

    async def think(self, perception):
        await asyncio.sleep(INFERENCE_S)
        return self.routine_action()


async def bench_fifty(clients: int, steps: int, trials: int) -> dict:
    scenario = load_scenario(packaged_scenarios()["town25"])
    delivered: list[float] = []

    async def run(with_clients: bool) -> float:
        town = scenario.build_town(seed=1, resident_class=WaitingResident)
        src = TownSource(town)
        async with ViewerServer(src) as server:
            proc = None
            if with_clients:
                proc = await start_clients(server.ws_url, clients)
            t0 = time.perf_counter()
            assert await run_town(src, steps, server=server) == steps
            elapsed = time.perf_counter() - t0
            await server.flush(30)
            await asyncio.sleep(0.2)
        if proc is not None:
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            results = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
            assert all(r["errors"] == [] for r in results), results
            delivered.append(sum(r["deltas"] for r in results) / (clients * steps))
        return elapsed

    med, times = await interleaved_medians({"none": lambda: run(False), "client": lambda: run(True)}, trials)
    return {
        "case": f"{clients} clients, town25, {steps} steps with {INFERENCE_S * 1e3:.0f} ms inference",
        "trials": trials,
        "none_s": med["none"],
        "client_s": med["client"],
        "slowdown": med["client"] / med["none"] - 1,
        "note": "steps sent as deltas (not resyncs): " + ", ".join(f"{d:.0%}" for d in delivered),
        "times": times,
    }


async def amain(args: argparse.Namespace) -> list[dict]:
    return [
        *await bench_stalled(args.residents, args.steps, args.stalled_trials),
        await bench_fifty(args.clients, 30, args.load_trials),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--residents", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--stalled-trials", type=int, default=7)
    ap.add_argument("--load-trials", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "viewer.json")
    args = ap.parse_args()
    rows = asyncio.run(amain(args))
    print(f"viewer cost on a stepping run; {describe()}; medians of interleaved trials; target: slowdown <= 10%")
    print("| case | trials | no client s | with clients s | slowdown | note |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['trials']} | {r['none_s']:.3f} | {r['client_s']:.3f} | {r['slowdown']:+.1%} "
            f"| {r['note']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.date.today().isoformat(), "machine": describe(), "argv": sys.argv}
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
