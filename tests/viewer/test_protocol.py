"""The websocket server over loopback: stream, queries, errors, limits, security, stalled clients."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import struct

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from simulacra.scenario import generate_scenario, parse_scenario
from simulacra.viewer.server import ViewerServer, serve_source
from simulacra.viewer.source import TownSource, run_town
from simulacra.viewer.web import Gate
from tests.viewer.conftest import apply_delta, recv_json, recv_type, town3, town25, world_part
from tests.viewer.ws_clients import stalled_client


async def test_snapshot_then_deltas_reproduce_the_town_at_every_step():
    town = town25()
    src = TownSource(town)
    async with ViewerServer(src) as server, connect(server.ws_url) as ws:
        first = await recv_json(ws)
        assert first["type"] == "snapshot" and first["live"] and not first["resync"]
        assert first["frame"]["map"] == town.map.to_json()
        expected = {town.steps: world_part(town.snapshot())}
        for _ in range(40):  # the town steps on its own; the client reads afterwards
            await town.astep()
            src.record()
            expected[town.steps] = world_part(town.snapshot())
            server.publish(town.steps)
            await asyncio.sleep(0)
        state, seq = first["frame"], first["seq"]
        assert world_part(state) == expected[0]
        for _ in range(40):
            msg = await recv_json(ws)
            assert msg["type"] == "delta" and msg["seq"] == seq + 1
            seq = msg["seq"]
            state = apply_delta(state, msg["frame"])
            assert world_part(state) == expected[msg["frame"]["step"]]
        assert state["step"] == 40 and len(state["residents"]) == 25
        start = {r["id"]: (r["x"], r["y"]) for r in first["frame"]["residents"]}
        assert any((r["x"], r["y"]) != start[r["id"]] for r in state["residents"])  # people did go places

        # any past step, on request, without the map (the page has it)
        for step in (0, 1, 17, 40):
            await ws.send(json.dumps({"type": "get_step", "step": step, "id": f"s{step}"}))
            msg = await recv_type(ws, "frame")
            assert msg["id"] == f"s{step}" and msg["step"] == step and "map" not in msg["frame"]
            assert world_part(msg["frame"]) == expected[step]
        await ws.send(json.dumps({"type": "get_step", "step": 999, "id": "late"}))
        err = await recv_type(ws, "error")
        assert err["code"] == "unknown_step" and err["id"] == "late" and "0..40" in err["message"]


async def test_details_interview_control_and_live():
    async def mind(name: str, question: str) -> str:
        await asyncio.sleep(0.01)
        return f"{name} says: I heard '{question}'"

    town = town3()
    src = TownSource(town, interview=mind)
    async with ViewerServer(src) as server, connect(server.ws_url) as ws, connect(server.ws_url) as other:
        await recv_json(ws)
        await recv_json(other)
        await ws.send(json.dumps({"type": "details", "name": "Ben Quill", "id": 1}))
        d = await recv_type(ws, "details")
        assert d["id"] == 1 and d["details"]["persona"]["occupation"] == "gardener"
        await ws.send(json.dumps({"type": "details", "name": "Nobody", "id": 2}))
        err = await recv_type(ws, "error")
        assert err == {"type": "error", "code": "unknown_resident", "id": 2, "message": err["message"]}
        assert "'Nobody' is not a resident" in err["message"]

        await ws.send(json.dumps({"type": "interview", "name": "Ada Quill", "question": "Busy day?", "id": "i1"}))
        ans = await recv_type(ws, "interview")
        assert ans["id"] == "i1" and ans["answer"] == "Ada Quill says: I heard 'Busy day?'"

        await ws.send(json.dumps({"type": "control", "command": "pause", "id": "c1"}))
        assert (await recv_type(ws, "control"))["state"] == {"paused": True, "speed": 1.0}
        assert (await recv_type(other, "control"))["state"]["paused"]  # every viewer learns of it
        await ws.send(json.dumps({"type": "control", "command": "speed", "value": 500, "id": "c2"}))
        err = await recv_type(ws, "error")
        assert err["code"] == "invalid" and err["id"] == "c2"
        await ws.send(json.dumps({"type": "control", "command": "resume"}))
        assert not (await recv_type(ws, "control"))["state"]["paused"]

        await run_town(src, 3, server=server)
        await ws.send(json.dumps({"type": "live"}))
        snap = await recv_type(ws, "snapshot")
        assert snap["frame"]["step"] == 3 and snap["seq"] == server.seq and snap["control"]["paused"] is False


async def test_interview_without_a_mind_is_an_error_frame():
    async with ViewerServer(TownSource(town3())) as server, connect(server.ws_url) as ws:
        await ws.send(json.dumps({"type": "interview", "name": "Ada Quill", "question": "Hello?", "id": 5}))
        err = await recv_type(ws, "error")
        assert err["code"] == "no_mind" and err["id"] == 5 and "no mind is attached" in err["message"]


async def test_bad_messages_get_error_frames_and_the_connection_goes_on():
    bad = [
        ("{oops", "bad_json", None),
        ('{"type": "fly", "id": "f"}', "unknown_type", "f"),
        ('{"type": "get_step", "step": "x", "id": 3}', "invalid", 3),
        ('{"type": "interview", "name": "Ada Quill", "question": "' + "?" * 501 + '", "id": 4}', "invalid", 4),
        ('"just a string"', "bad_message", None),
    ]
    async with ViewerServer(TownSource(town3())) as server, connect(server.ws_url) as ws:
        await recv_json(ws)
        for raw, code, rid in bad:
            await ws.send(raw)
            err = await recv_type(ws, "error")
            assert (err["code"], err["id"]) == (code, rid) and err["message"]
        await ws.send(b"\x00binary")
        assert (await recv_type(ws, "error"))["code"] == "bad_message"
        await ws.send(json.dumps({"type": "details", "name": "Ada Quill", "id": "ok"}))
        assert (await recv_type(ws, "details"))["id"] == "ok"


async def test_oversize_message_closes_1009_and_others_are_still_served():
    async with ViewerServer(TownSource(town3())) as server, connect(server.ws_url) as ws:
        async with connect(server.ws_url, max_size=None) as big:
            await recv_json(big)
            await big.send(json.dumps({"type": "details", "name": "x" * 70_000}))
            with pytest.raises(ConnectionClosedError) as e:
                while True:
                    await big.recv()
            assert e.value.rcvd.code == 1009
        await ws.send(json.dumps({"type": "details", "name": "Ada Quill", "id": 1}))
        assert (await recv_type(ws, "details"))["id"] == 1


async def test_rate_limit_answers_rate_limited_then_recovers():
    async with ViewerServer(TownSource(town3()), rate=20, burst=40) as server, connect(server.ws_url) as ws:
        await recv_json(ws)
        for i in range(80):
            await ws.send(json.dumps({"type": "get_step", "step": 0, "id": i}))
        kinds = []
        for _ in range(80):
            msg = await recv_json(ws)
            kinds.append(msg["type"] if msg["type"] != "error" else msg["code"])
        assert kinds.count("rate_limited") >= 30 and kinds.count("frame") >= 40
        await asyncio.sleep(0.2)  # a few tokens come back
        await ws.send(json.dumps({"type": "get_step", "step": 0, "id": "again"}))
        assert (await recv_type(ws, "frame"))["id"] == "again"


async def test_non_loopback_bind_needs_the_token_before_the_handshake():
    # Bound to every interface, but all traffic goes to 127.0.0.1.
    server = await serve_source(TownSource(town3()), host="0.0.0.0")
    try:
        token = server.token
        assert token and len(token) >= 20 and f"?token={token}" in server.url
        base = f"ws://127.0.0.1:{server.port}/ws"
        for url, status in ((base, 401), (f"{base}?token=wrong", 403), (f"{base}?token={token}x", 403)):
            with pytest.raises(InvalidStatus) as e:
                async with connect(url):
                    pass
            assert e.value.response.status_code == status
        async with connect(f"{base}?token={token}") as ws:
            assert (await recv_json(ws))["type"] == "snapshot"
        # a page from another host is refused even with the token
        with pytest.raises(InvalidStatus) as e:
            async with connect(f"{base}?token={token}", origin=f"http://myhost.example:{server.port}"):
                pass
        assert e.value.response.status_code == 403
    finally:
        await server.close()


def test_wildcard_bind_accepts_its_own_page_by_any_name():
    """Bound to 0.0.0.0 the page may be reached as http://myhost:port; its Origin must match the Host."""
    gate = Gate(host="0.0.0.0", token="t", port=8765)
    assert gate.allowed_origin("http://myhost.example:8765", "myhost.example:8765")
    assert not gate.allowed_origin("http://evil.example:8765", "myhost.example:8765")
    assert gate.allowed_origin("http://127.0.0.1:8765", "127.0.0.1:8765")
    assert gate.allowed_origin(None, "x")  # not a browser: the token decides
    loop_gate = Gate(host="127.0.0.1", token=None, port=8765)
    assert not loop_gate.allowed_origin("http://rebound.example:8765", "rebound.example:8765")  # DNS rebinding


async def test_loopback_needs_no_token_unless_given_one():
    async with ViewerServer(TownSource(town3())) as server:
        assert server.token is None and "token" not in server.url
    async with ViewerServer(TownSource(town3()), token="s3cret") as server:
        with pytest.raises(InvalidStatus) as e:
            async with connect(f"ws://127.0.0.1:{server.port}/ws"):
                pass
        assert e.value.response.status_code == 401
        async with connect(server.ws_url) as ws:
            assert (await recv_json(ws))["type"] == "snapshot"


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:1", "null", "file://"])
async def test_foreign_origin_is_refused(origin):
    async with ViewerServer(TownSource(town3())) as server:
        with pytest.raises(InvalidStatus) as e:
            async with connect(server.ws_url, origin=origin):
                pass
        assert e.value.response.status_code == 403
        for own in (f"http://127.0.0.1:{server.port}", f"http://localhost:{server.port}"):
            async with connect(server.ws_url, origin=own) as ws:
                assert (await recv_json(ws))["type"] == "snapshot"


def _get(port: int, path: str) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    resp = conn.getresponse()
    out = resp.status, dict(resp.getheaders()), resp.read()
    conn.close()
    return out


async def test_static_page_is_served_and_nothing_else():
    async with ViewerServer(TownSource(town3())) as server:
        for path, ctype in (("/", "text/html"), ("/app.js", "javascript"), ("/style.css", "text/css")):
            status, headers, body = await asyncio.to_thread(_get, server.port, path)
            assert status == 200 and ctype in headers["Content-Type"] and body
            assert "default-src 'self'" in headers["Content-Security-Policy"]
        for path in ("/../server.py", "/%2e%2e/server.py", "/source.py", "/nope"):
            status, _, _ = await asyncio.to_thread(_get, server.port, path)
            assert status == 404, path


async def test_client_that_falls_behind_gets_a_fresh_snapshot_not_a_backlog():
    town = town25()
    src = TownSource(town)
    async with ViewerServer(src, queue_size=4) as server, connect(server.ws_url) as ws:
        first = await recv_json(ws)
        for _ in range(10):  # ten steps before the client's task runs: its queue overflows
            await town.astep()
            src.record()
            server.publish(town.steps)
        msg = await recv_json(ws)
        assert msg["type"] == "snapshot" and msg["resync"] and msg["seq"] == first["seq"] + 10
        assert world_part(msg["frame"]) == world_part(town.snapshot())
        await run_town(src, 2, server=server)
        for k in (11, 12):
            msg = await recv_json(ws)
            assert msg["type"] == "delta" and msg["seq"] == first["seq"] + k


def _read_until_resync(sock: socket.socket, timeout: float = 10.0) -> list[dict]:
    """Read the stalled client's socket at last: its text frames (server frames are unmasked) up to and
    including the first ``resync`` snapshot. ``timeout`` only guards against a hang."""
    sock.settimeout(timeout)
    buf = b""

    def need(n: int) -> None:
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise EOFError(f"the server closed the stalled client's socket after {len(msgs)} messages")
            buf += chunk

    msgs: list[dict] = []
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(1 << 16)
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    while not msgs or not (msgs[-1]["type"] == "snapshot" and msgs[-1]["resync"]):
        need(2)
        opcode, n, off = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if n == 126:
            need(4)
            n, off = struct.unpack(">H", buf[2:4])[0], 4
        elif n == 127:
            need(10)
            n, off = struct.unpack(">Q", buf[2:10])[0], 10
        need(off + n)
        payload, buf = buf[off : off + n], buf[off + n :]
        if opcode == 1:
            msgs.append(json.loads(payload))
    return msgs


async def test_a_client_that_never_reads_is_resynced_and_does_not_hold_up_the_run():
    """A client that completes the handshake and then reads nothing is never waited for: every step
    runs and is published, the reading client gets every delta in order and its requests answered,
    and the stalled client's backlog is cut to one fresh snapshot, which is what it gets when it reads
    again. (What a stalled client costs in time is measured by `make bench-viewer`, not here.)"""
    town = parse_scenario(generate_scenario(300, seed=1), source="generated-300").build_town(seed=1)
    for _ in range(30):  # into the morning commute: many residents move every step
        town.step()
    src, steps = TownSource(town), 40
    async with ViewerServer(src, queue_size=8) as server:
        sock = stalled_client(server.port)
        while server.client_count < 1:
            await asyncio.sleep(0.01)
        (stalled,) = server._clients
        # a small kernel send buffer, so its bytes pile up in the server, not in the kernel
        stalled.ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        async with connect(server.ws_url, max_size=None) as ws:
            first = await recv_json(ws)
            start = first["seq"]
            assert await run_town(src, steps, server=server) == steps
            assert server.seq == start + steps and town.steps == 30 + steps
            state = first["frame"]
            for k in range(1, steps + 1):
                msg = await recv_json(ws)
                assert (msg["type"], msg["seq"]) == ("delta", start + k)
                state = apply_delta(state, msg["frame"])
            assert world_part(state) == world_part(town.snapshot())
            await ws.send(json.dumps({"type": "get_step", "step": 31, "id": "meanwhile"}))
            assert (await recv_type(ws, "frame"))["step"] == 31  # the loop keeps serving

            assert server.client_count == 2  # still connected, still never reading
            assert stalled.snapshot_pending and stalled.queue.qsize() == 1  # one snapshot waits, no backlog
            got = await asyncio.to_thread(_read_until_resync, sock)
            sock.close()
    assert got[0]["type"] == "snapshot" and not got[0]["resync"]
    deltas = got[1:-1]
    assert [m["type"] for m in deltas] == ["delta"] * len(deltas) and len(deltas) < steps
    assert [m["seq"] for m in deltas] == list(range(got[0]["seq"] + 1, got[0]["seq"] + 1 + len(deltas)))
    assert got[-1]["seq"] == server.seq and world_part(got[-1]["frame"]) == world_part(town.snapshot())
