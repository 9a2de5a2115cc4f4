"""Screenshots of the viewer for the docs: docs/viewer-live.png and docs/viewer-inspector.png.

Runs town25 (world-only routine) for a simulated morning behind a viewer, with a stand-in mind that
talks (one conversation, speech bubbles) and answers interviews, and photographs the page in headless
Chromium (Debian's /usr/bin/chromium; `make chromium` installs it).

    .venv/bin/python bench/screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from playwright.async_api import async_playwright

from simulacra.scenario import load_scenario, packaged_scenarios
from simulacra.viewer.server import ViewerServer
from simulacra.viewer.source import TownSource

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


async def main(out: Path, steps: int) -> None:
    town = load_scenario(packaged_scenarios()["town25"]).build_town(seed=1)
    a, b = town.residents[0].name, town.residents[1].name
    lines = [(a, "Morning! Did you hear about the market on Saturday?"), (b, "I did, I'm bringing bread.")]

    def extras(t):
        said = lines[: 1 + (t.steps % 2)]
        speaker, text = said[-1]
        return {
            "speech": {speaker: {"speech": text, "talking_to": b if speaker == a else a}},
            "conversations": [{"id": 1, "participants": [a, b], "ended": False,
                               "turns": [{"speaker": s, "text": x, "step": t.steps} for s, x in said]}],
            "stats": {"tokens_per_s": 412.0, "batch_size": 25, "cache_hit_rate": 0.78, "llm_calls": 25 * t.steps},
        }

    async def interview(name: str, question: str) -> str:
        return f"Right now I'm {town.resident(name).activity or 'taking it easy'}; busy morning, but a good one."

    town.social.record_interaction(a, b, step=0)
    src = TownSource(town, interview=interview, extras=extras)
    async with ViewerServer(src) as server, async_playwright() as pw:
        for _ in range(steps):
            await town.astep()
            src.record()
            server.publish(src.step)
            await asyncio.sleep(0.1)  # a plausible pace for the stats bar
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = await browser.new_page(viewport={"width": 1400, "height": 780})
        await page.goto(server.url)
        await page.wait_for_function(f"() => window.viewer && window.viewer.shownStep() === {steps}")
        await page.wait_for_timeout(300)
        out.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(out / "viewer-live.png"))
        who = town.residents[2].name
        pos = await page.evaluate("n => window.viewer.residentScreenPos(n)", who)
        await page.mouse.click(pos["x"], pos["y"])
        await page.wait_for_selector("#ins-plan li")
        await page.fill("#question", "What are you doing this morning?")
        await page.click("#ask")
        await page.wait_for_selector("#answers .qa")
        await page.mouse.move(pos["x"], pos["y"])
        await page.wait_for_timeout(200)
        await page.screenshot(path=str(out / "viewer-inspector.png"))
        await browser.close()
    for name in ("viewer-live.png", "viewer-inspector.png"):
        print(f"{out / name}: {(out / name).stat().st_size // 1024} KiB")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    p.add_argument("--steps", type=int, default=16)
    opts = p.parse_args()
    asyncio.run(main(opts.out, opts.steps))
