"""Many viewer clients in one process (run by test_load.py in a subprocess, so their work is not the server's).

Usage: python -m tests.viewer.ws_clients WS_URL N. Prints "ready" once every client has its first
snapshot, then, when the server closes, one JSON line per client: snapshots, deltas, the last seq and
any sequence errors (a delta whose seq is not the previous one + 1).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

# The server writes type, seq, then the frame, whose first key is its step: read just that much, so
# fifty clients in one process keep up with the run on a small machine.
HEAD = re.compile(rb'^\{"type":"(\w+)","seq":(\d+),.*?"frame":\{"step":(\d+)', re.S)


ROOT = Path(__file__).resolve().parents[2]


def stalled_client(port: int) -> socket.socket:
    """A websocket client that completes the handshake and then never reads a byte."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    return s


async def start_clients(url: str, n: int) -> asyncio.subprocess.Process:
    """`n` reading clients of `url` in another process (this module's `main`), once all are connected."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.viewer.ws_clients", url, str(n), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line.strip() == b"ready", line
    return proc


async def client(url: str, ready: asyncio.Event, counter: list[int], n: int) -> dict:
    out = {"snapshots": 0, "resyncs": 0, "deltas": 0, "last_seq": None, "last_step": None, "errors": []}
    async with connect(url, max_size=None, compression=None) as ws:
        try:
            while True:
                raw = await ws.recv(decode=False)
                head = HEAD.match(raw)
                if head is None:
                    continue  # not part of the stream (control notes, answers)
                kind, seq, step = head[1].decode(), int(head[2]), int(head[3])
                if kind == "snapshot":
                    out["snapshots"] += 1
                    out["resyncs"] += b'"resync":true' in raw[:200]
                    if out["snapshots"] == 1:
                        counter[0] += 1
                        if counter[0] == n:
                            ready.set()
                elif kind == "delta":
                    if out["last_seq"] is None or seq != out["last_seq"] + 1:
                        out["errors"].append(f"delta seq {seq} after {out['last_seq']}")
                    out["deltas"] += 1
                else:
                    continue
                out["last_seq"], out["last_step"] = seq, step
        except ConnectionClosed:
            pass
    return out


async def main(url: str, n: int) -> None:
    ready, counter = asyncio.Event(), [0]
    tasks = [asyncio.create_task(client(url, ready, counter, n)) for _ in range(n)]
    await ready.wait()
    print("ready", flush=True)
    for result in await asyncio.gather(*tasks):
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
