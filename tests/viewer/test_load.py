"""Load: 50 viewers on loopback while a run steps; every one sees every delta in order (or a snapshot).

The run is town25 with a stand-in mind whose ``think`` awaits a short sleep, as a resident awaits its
batched LLM call: that is where a real step spends its time, and where the server does its work. The
clients run in another process, so the time they spend parsing is not charged to the server. What
fifty clients cost the run in time is measured by `make bench-viewer` (bench/viewer.py), not here.
"""

from __future__ import annotations

import asyncio
import json

from simulacra.viewer.server import ViewerServer
from simulacra.viewer.source import TownSource, run_town
from simulacra.world import Resident
from tests.viewer.conftest import town25
from tests.viewer.ws_clients import start_clients

CLIENTS = 50
STEPS = 30
INFERENCE_S = 0.05  # a fast engine's batch for 25 residents; real steps take 0.1 s to seconds


class WaitingResident(Resident):
    """Follows the routine, after waiting as long as a batched LLM call would take."""

    async def think(self, perception):
        await asyncio.sleep(INFERENCE_S)
        return self.routine_action()


async def test_fifty_clients_get_every_delta_in_order_to_the_last_step():
    town = town25(resident_class=WaitingResident)
    src = TownSource(town)
    async with ViewerServer(src) as server:
        proc = await start_clients(server.ws_url, CLIENTS)
        start = server.seq
        assert await run_town(src, STEPS, server=server) == STEPS
        assert await server.flush(30)  # every client's queue went out
        await asyncio.sleep(0.2)  # the last deltas leave the socket buffers
        final_seq = server.seq
        assert final_seq == start + STEPS and server.client_count == CLIENTS  # nobody was dropped
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    results = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
    assert len(results) == CLIENTS
    for r in results:
        assert r["errors"] == [], r  # every delta was the one after the last: no gap, no repeat
        assert r["last_seq"] == final_seq and r["last_step"] == STEPS  # each ended on the last step
        assert r["snapshots"] == 1 + r["resyncs"]  # the first snapshot, then only resyncs
        assert r["deltas"] + r["resyncs"] >= 1  # it followed the run, by delta or by a fresh snapshot
