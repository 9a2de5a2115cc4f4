"""End to end in headless Chromium (Playwright): the page draws the town, inspects, scrubs and interviews.

Needs Debian's chromium at /usr/bin/chromium (``make test`` installs it); Playwright's own browser
download is never used (it cannot download here).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright

from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.viewer.server import ViewerServer
from simulacra.viewer.source import TownSource
from tests.viewer.conftest import town25

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).resolve().parents[2] / "docs"


def chromium() -> str:
    if not CHROMIUM.exists():
        pytest.fail(
            "the browser tests need Debian's chromium at /usr/bin/chromium: run `make chromium` "
            "(or `apt-get update && apt-get install -y chromium`)",
            pytrace=False,
        )
    return str(CHROMIUM)


def scripted_interviews() -> tuple[ScriptedLLM, object]:
    """Interviews answered by the scripted fake LLM, as a mind would through the engine port."""
    llm = ScriptedLLM(lambda prompt, schema, params: "I am off to work, and I love this town.")

    async def interview(name: str, question: str) -> str:
        result = await llm.generate(
            [{"role": "system", "content": f"You are {name}."}, {"role": "user", "content": question}], max_tokens=32
        )
        return result.text

    return llm, interview


async def step(src: TownSource, server: ViewerServer, n: int) -> None:
    for _ in range(n):
        await src.town.astep()
        src.record()
        server.publish(src.step)
        await asyncio.sleep(0)


async def wait_shown(page: Page, step: int) -> None:
    await page.wait_for_function(
        "s => window.viewer && window.viewer.shownStep() === s && window.viewer.settled()", arg=step, timeout=10_000
    )


@pytest.mark.slow
async def test_page_draws_inspects_scrubs_and_interviews(artifacts):
    exe = chromium()
    town = town25()
    llm, interview = scripted_interviews()
    src = TownSource(town, interview=interview)
    async with ViewerServer(src) as server, async_playwright() as pw:
        await step(src, server, 12)  # some history before the page opens
        browser = await pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 820})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(server.url)
            await wait_shown(page, 12)
            await step(src, server, 6)  # live deltas move the markers
            await wait_shown(page, 18)

            live = src.snapshot()
            width = await page.evaluate("() => document.getElementById('town').clientWidth")
            tile = width / live["map"]["width"]
            canvas = await page.locator("#town").bounding_box()
            positions = {}
            for r in live["residents"]:
                pos = await page.evaluate("n => window.viewer.residentScreenPos(n)", r["name"])
                assert (pos["tileX"], pos["tileY"]) == (r["x"], r["y"]), r["name"]
                assert pos["x"] == pytest.approx(canvas["x"] + (r["x"] + 0.5) * tile, abs=1)
                assert pos["y"] == pytest.approx(canvas["y"] + (r["y"] + 0.5) * tile, abs=1)
                positions[r["name"]] = pos
            assert await page.text_content("#stat-step") == "18"
            await page.screenshot(path=str(artifacts / "viewer-live.png"))

            # click a resident who stands alone on a tile: the inspector opens with their details
            tiles = [(r["x"], r["y"]) for r in live["residents"]]
            by_name = sorted(live["residents"], key=lambda r: r["name"])
            alone = next(r for r in by_name if tiles.count((r["x"], r["y"])) == 1)
            pos = positions[alone["name"]]
            await page.mouse.move(pos["x"], pos["y"])
            await page.wait_for_selector("#tooltip:not(.hidden)")
            assert alone["activity"] in await page.text_content("#tooltip")
            await page.mouse.click(pos["x"], pos["y"])
            await page.wait_for_selector("#inspector:not(.hidden)")
            assert await page.text_content("#ins-name") == alone["name"]
            details = src.resident_details(alone["name"])
            occupation = details["persona"]["occupation"]
            persona_has = "t => document.getElementById('ins-persona').textContent.includes(t)"
            await page.wait_for_function(persona_has, arg=occupation)
            memories = await page.locator("#ins-memories tbody tr").count()
            assert memories == len(details["memories"])
            assert await page.locator("#ins-rels li").count() == len(details["relationships"])
            assert await page.locator("#ins-plan li").count() == len(details["plan"])

            # ask them a question: the scripted mind answers through the server
            await page.fill("#question", "What are you up to today?")
            await page.click("#ask")
            await page.wait_for_selector("#answers .qa")
            answer = await page.text_content("#answers .qa")
            assert "I am off to work, and I love this town." in answer and "What are you up to today?" in answer
            assert any("What are you up to today?" in p for p in llm.prompts)
            await page.screenshot(path=str(artifacts / "viewer-inspector.png"))

            # scrub the timeline back: the markers go to where everyone was then, then back to live
            await page.locator("#timeline").fill("3")
            await wait_shown(page, 3)
            past = src.snapshot_at(3)
            moved = 0
            for r in past["residents"]:
                pos = await page.evaluate("n => window.viewer.residentScreenPos(n)", r["name"])
                assert (pos["tileX"], pos["tileY"]) == (r["x"], r["y"]), r["name"]
                moved += (pos["x"], pos["y"]) != (positions[r["name"]]["x"], positions[r["name"]]["y"])
            assert moved > 0
            assert "replay" in await page.text_content("#timeline-label")
            await step(src, server, 2)  # the run goes on while we look at the past
            assert await page.evaluate("() => window.viewer.shownStep()") == 3
            await page.click("#btn-live")
            await wait_shown(page, 20)
            assert "live" in await page.text_content("#timeline-label")
            assert errors == []
        finally:
            await browser.close()


@pytest.mark.slow
async def test_page_renders_speech_conversations_social_and_controls(artifacts):
    exe = chromium()
    town = town25()
    names = [r.name for r in town.residents]
    a, b = names[0], names[1]

    def extras(_town):
        return {
            "speech": {a: {"speech": "Lovely morning, isn't it?", "talking_to": b}},
            "conversations": [
                {"id": 1, "participants": [a, b], "ended": False,
                 "turns": [{"speaker": a, "text": "Lovely morning, isn't it?", "step": _town.steps}]},
            ],
            "stats": {"tokens_per_s": 812.5, "batch_size": 24, "cache_hit_rate": 0.83, "llm_calls": 40},
        }

    town.social.record_interaction(a, b, step=0)
    src = TownSource(town, extras=extras)
    async with ViewerServer(src) as server, async_playwright() as pw:
        await step(src, server, 2)
        browser = await pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 820})
            await page.goto(server.url)
            await wait_shown(page, 2)
            assert "Lovely morning" in await page.text_content("#convos")
            await page.wait_for_function("() => window.viewer.bubbles().length === 1")
            assert await page.evaluate("() => window.viewer.bubbles()") == ["Lovely morning, isn't it?"]
            assert await page.text_content("#stat-tps") == "812.5"
            assert await page.text_content("#stat-cache") == "83%"
            edges = len(src.snapshot()["social"]["edges"])
            assert await page.locator("#social line").count() == edges
            assert await page.locator("#social circle").count() == len(names)
            # controls: pause from the page pauses the source
            await page.wait_for_selector("#controls:not(.hidden)")
            await page.click("#btn-pause")
            await page.wait_for_function("() => document.getElementById('btn-pause').textContent === 'Resume'")
            assert src.paused
            await page.select_option("#speed", "4")
            for _ in range(100):
                if src.speed == 4.0:
                    break
                await asyncio.sleep(0.02)
            assert src.speed == 4.0
            await page.click("#btn-pause")
            await page.wait_for_function("() => document.getElementById('btn-pause').textContent === 'Pause'")
            assert not src.paused
            await page.screenshot(path=str(artifacts / "viewer-conversation.png"))
        finally:
            await browser.close()


@pytest.mark.slow
async def test_page_shows_a_forks_lineage_and_metric_curves(artifacts, tmp_path):
    """A fork's page: its parent and fork step on the timeline, and the run's metric curves, growing live."""
    from simulacra.run import Run
    from simulacra.viewer_run import start_viewer
    from tests.agents.fakes import WordEmbedder
    from tests.simulacra.test_run import chatty

    exe = chromium()
    parent = Run.create("scenarios/town3.yaml", out=tmp_path, seed=7, hours=2, llm=chatty(), embedder=WordEmbedder())
    await parent.arun(steps=6)
    await parent.aclose()
    told = [{"tell": {"to": "Ada Quill", "memory": "Cora hosts a tasting.", "fact": "party"}}]
    run = await Run.afork(parent.dir, 4, told, tmp_path / "fork", llm=chatty(), embedder=WordEmbedder())
    await run.arun(steps=2)
    server = await start_viewer(run)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 820})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.goto(server.url)
                await wait_shown(page, 6)
                lineage = await page.evaluate("() => window.viewer.lineage()")
                assert [(f["step"], f["interventions"]) for f in lineage] == [(4, ["tell Ada Quill"])]
                assert f"forked from {parent.dir.name} at step 4" in await page.text_content("#lineage")
                assert float((await page.evaluate("() => window.viewer.forkMark()"))[:-1]) == pytest.approx(100 * 4 / 6)
                curves = await page.evaluate("() => window.viewer.curves()")
                assert curves["known.party"] == 7 and {"density", "conversations", "llm.calls"} <= set(curves)
                assert await page.locator("#curves svg polyline").count() == len(curves)

                def on_step(p) -> None:
                    server.source.record()
                    server.publish(p.step)

                await run.arun(steps=2, on_step=on_step)  # live deltas add points to the curves
                await wait_shown(page, 8)
                assert (await page.evaluate("() => window.viewer.curves()"))["known.party"] == 9
                assert float((await page.evaluate("() => window.viewer.forkMark()"))[:-1]) == pytest.approx(50)
                await page.screenshot(path=str(artifacts / "viewer-fork.png"))
                assert errors == []
            finally:
                await browser.close()
    finally:
        await server.close()
        await run.aclose()


def test_docs_screenshots_are_small_pngs():
    """The screenshots in docs/ exist and stay small (bench/screenshots.py regenerates them)."""
    for name in ("viewer-live.png", "viewer-inspector.png"):
        path = DOCS / name
        assert path.exists(), f"{path} is missing: run `.venv/bin/python bench/screenshots.py`"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 300_000
