"""The viewer over a durable run: live deltas with speech and stats, details and interviews from the minds,
past steps from run.db after the process that ran them is gone."""

import json

from websockets.asyncio.client import connect

from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.run import Run
from simulacra.viewer_run import start_viewer

from ..agents.fakes import WordEmbedder, by_kind
from ..viewer.conftest import apply_delta, recv_type
from .test_run import chatty, chatty_answers


async def test_live_run_streams_and_answers(tmp_path) -> None:
    llm = ScriptedLLM(by_kind({**chatty_answers(), "Answer": lambda p, s: {"answer": "I make coffee.", "because": []}}))
    run = Run.create("scenarios/town3.yaml", out=tmp_path, hours=1, llm=llm, embedder=WordEmbedder())
    server = await start_viewer(run)
    try:
        async with connect(server.ws_url) as ws:
            snap = await recv_type(ws, "snapshot")
            state = snap["frame"]
            assert state["step"] == 0 and state["first_step"] == 0 and "map" in state

            def on_step(p) -> None:
                server.source.record()
                server.publish(p.step)

            await run.arun(on_step=on_step)
            spoke = False
            for step in range(1, 7):
                delta = await recv_type(ws, "delta")
                assert delta["frame"]["step"] == step
                state = apply_delta(state, delta["frame"])
                spoke |= any("speech" in r for r in delta["frame"]["residents"])
                assert "stats" in delta["frame"]
            assert spoke  # chatty residents talk, and the page gets their lines
            for r in run.sim.town.snapshot()["residents"]:
                got = next(x for x in state["residents"] if x["id"] == r["id"])
                assert (got["x"], got["y"], got["activity"]) == (r["x"], r["y"], r["activity"])
            await ws.send(json.dumps({"type": "details", "id": 1, "name": "Ada Quill"}))
            details = (await recv_type(ws, "details"))["details"]
            assert details["memories"] and all("score" in m for m in details["memories"])
            assert details["plan"]
            await ws.send(
                json.dumps({"type": "interview", "id": 2, "name": "Ada Quill", "question": "What do you do?"})
            )
            assert (await recv_type(ws, "interview"))["answer"] == "I make coffee."
    finally:
        await server.close()
        await run.aclose()

    # later, another process: any past step comes from run.db
    again = Run.open(run.dir, llm=ScriptedLLM(by_kind()), embedder=WordEmbedder())
    server = await start_viewer(again)
    try:
        async with connect(server.ws_url) as ws:
            assert (await recv_type(ws, "snapshot"))["frame"]["step"] == 6
            await ws.send(json.dumps({"type": "get_step", "id": 3, "step": 2}))
            frame = (await recv_type(ws, "frame"))["frame"]
            assert frame["step"] == 2 and len(frame["residents"]) == 3
            await ws.send(json.dumps({"type": "get_step", "id": 4, "step": 99}))
            assert (await recv_type(ws, "error"))["code"] == "unknown_step"
    finally:
        await server.close()
        await again.aclose()


async def test_a_forks_snapshot_carries_its_lineage_and_metric_curves(tmp_path) -> None:
    parent = Run.create("scenarios/town3.yaml", out=tmp_path, hours=1, llm=chatty(), embedder=WordEmbedder())
    await parent.arun(steps=4)
    await parent.aclose()
    run = await Run.afork(
        parent.dir, 2, [{"cancel_event": "party"}], tmp_path / "fork", llm=chatty(), embedder=WordEmbedder()
    )
    server = await start_viewer(run)
    try:
        async with connect(server.ws_url) as ws:
            info = (await recv_type(ws, "snapshot"))["frame"]["run"]
            assert info["name"] == "fork"
            assert [(f["parent"], f["step"], f["interventions"]) for f in info["lineage"]] == [
                (str(parent.dir), 2, ["cancel_event party"])
            ]
            assert [p[0] for p in info["metrics"]["known.party"]] == [0, 1, 2]
            assert "llm.prompt_tokens" not in info["metrics"]

            def on_step(p) -> None:
                server.source.record()
                server.publish(p.step)

            await run.arun(steps=1, on_step=on_step)
            metrics = (await recv_type(ws, "delta"))["frame"]["metrics"]
            assert metrics["step"] == 3 and metrics["values"]["known.party"] >= 1
    finally:
        await server.close()
        await run.aclose()
