"""A town on the real engine: wall time, calls, tokens, batching, prefix-cache hits, output sense.

    python bench/town.py [--scenario town25] [--hours 2] [--out runs/bench] [--json bench/out/town.json]

It runs the scenario as `simulacra run` does (a durable run: every step committed to run.db).

Per world step it reports how many residents thought with the LLM and how wide the engine's
batches were meanwhile (peak and mean sequences per engine step), so "≥ 0.8 of the thinking
residents batched together" can be read off. At the end: calls and tokens per resident-hour,
prefix-cache hit rate per call kind, and the share of sensible outputs by a fixed, crude judge
(`sensible_place`, `sensible_line`), stated in docs/BENCHMARKS.md. A script, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections import Counter
from pathlib import Path

from simulacra.run import Backend, Progress, Run
from simulacra.scenario import resolve_scenario_path
from simulacra.storage import RunStore

HOME_WORDS = ("breakfast", "dinner", "sleep", "bed", "shower", "wake", "getting up", "get up")
WORK_WORDS = ("work", "shift", "bake", "serve", "open the", "office", "patients", "shop")
STOP = set("the a an and to of at in on is it i you my your for with be are was this that do did so".split())


def sensible_place(action: str, place: str, home: str | None, work: str | None, places: list[str]) -> bool | None:
    """A crude judge: home words at home, work words at work, a named place where it is named; else None."""
    a = action.lower()
    area = place.split(":")[0]
    named = [p for p in places if p.split(":")[0].lower() in a]
    if named:
        return any(p.split(":")[0] == area for p in named)
    if any(w in a for w in HOME_WORDS):
        return area == home or "café" in area.lower() or "pub" in area.lower()
    if work and any(w in a for w in WORK_WORDS):
        return area == work
    return None


def sensible_line(text: str, partner: str, previous: str, topic_words: set[str]) -> bool:
    """Mentions the partner or picks up a word of the previous line or of a memory, and is not a repeat."""
    if previous and text.strip() == previous.strip():
        return False
    words = set(re.findall(r"[a-zà-ÿ']+", text.lower())) - STOP
    prev = set(re.findall(r"[a-zà-ÿ']+", previous.lower())) - STOP
    return partner.split()[0].lower() in text.lower() or bool(words & prev) or bool(words & topic_words)


async def main(scenario: str, hours: float, out: Path) -> dict:
    t_load = time.perf_counter()
    run = Run.create(resolve_scenario_path(scenario), out=out, hours=hours, backend=Backend("engine"))
    engine, sim = run.llm, run.sim
    load_s = time.perf_counter() - t_load
    rows: list[dict] = []
    events: list[dict] = []
    last = {"steps": 0, "batch_seqs": 0.0}

    def on_step(p: Progress) -> None:
        s = engine.stats()
        estep = s["steps"] - last["steps"]
        seqs = s["mean_batch_seqs"] * s["steps"]
        rows.append(
            {
                "step": p.step,
                "time": p.sim_time.strftime("%H:%M"),
                "engine_steps": estep,
                "peak_batch": s["peak_batch_seqs"],
                "mean_batch": round((seqs - last["batch_seqs"]) / max(estep, 1), 2),
                "wall_s": round(p.step_s, 1),
            }
        )
        last.update(steps=s["steps"], batch_seqs=seqs)
        engine.counters.peak_batch_seqs = 0
        print(json.dumps(rows[-1]), flush=True)

    t_run = time.perf_counter()
    await run.arun(on_step=on_step)
    run_s = time.perf_counter() - t_run
    stats = engine.stats()
    await run.aclose()
    store = RunStore(run.dir)
    events = store.events()
    records = store.calls()
    thinking: dict[int, set] = {}
    for r in records:
        if r.meta.get("resident"):
            thinking.setdefault(r.meta["step"], set()).add(r.meta["resident"])
    for row in rows:
        row["thinking"] = len(thinking.get(row["step"], ()))
        row["calls"] = sum(1 for r in records if r.meta.get("step") == row["step"])
    steps = len(rows)

    n = len(sim.residents)
    hours = steps * sim.town.clock.minutes_per_step / 60
    places = [p.name for p in sim.town.map.places]
    judged = Counter()
    for e in events:
        if e["kind"] == "hour_plan":
            r = sim.resident(e["resident"])
            for a in e["actions"]:
                v = sensible_place(a["activity"], a["place"], r.spec.home, r.spec.workplace, places)
                judged["place_judged" if v is not None else "place_unjudged"] += 1
                judged["place_sensible"] += bool(v)
    for conv in sim.society.conversations.history:
        for i, (speaker, text, _) in enumerate(conv.turns):
            mem = " ".join(m.text for m in sim.resident(speaker).stream.memories if m.kind == "seed")
            topic = set(re.findall(r"[a-zà-ÿ']+", mem.lower())) - STOP
            prev = conv.turns[i - 1][1] if i else ""
            judged["lines"] += 1
            judged["lines_sensible"] += sensible_line(text, conv.other(speaker), prev, topic)
    thinking_steps = [r for r in rows if r["thinking"]]
    per_hour = sim.town.clock.minutes_per_step and 60 // sim.town.clock.minutes_per_step
    later = [r["wall_s"] for r in rows[per_hour:]] or [r["wall_s"] for r in rows]
    first_hour = sum(r["wall_s"] for r in rows[:per_hour])
    later_hour = sum(later) / len(later) * per_hour
    result = {
        "scenario": scenario,
        "run_dir": str(run.dir),
        "residents": n,
        "steps": steps,
        "sim_hours": hours,
        "load_s": round(load_s, 1),
        "wall_s": round(run_s, 1),
        "wall_s_per_sim_hour": round(run_s / hours, 1),
        "wall_s_per_sim_hour_after_first": round(later_hour, 1),
        "extrapolated_10h_min": round((first_hour + 9 * later_hour) / 60, 1),
        "calls": len(records),
        "calls_per_resident_hour": round(len(records) / (n * hours), 2),
        "tokens_per_resident_hour": round(sum(r.prompt_tokens + r.completion_tokens for r in records) / (n * hours)),
        "completion_tokens_per_resident_hour": round(sum(r.completion_tokens for r in records) / (n * hours)),
        "prefix_hit_rate": round(stats["cache_hit_rate"], 3),
        "peak_batch_over_thinking": round(
            sum(r["peak_batch"] for r in thinking_steps) / max(sum(r["thinking"] for r in thinking_steps), 1), 3
        ),
        "by_kind": sim.society.call_stats(),
        "steps_detail": rows,
        "conversations": len(sim.society.conversations.history),
        "facts_known": sim.society.facts.counts(),
        "sensible_place": f"{judged['place_sensible']}/{judged['place_judged']} (unjudged {judged['place_unjudged']})",
        "sensible_lines": f"{judged['lines_sensible']}/{judged['lines']}",
        "engine": {k: stats[k] for k in ("mean_batch_seqs", "tokens_per_s", "decode_tokens_per_s", "preemptions")},
    }
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="town25")
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--json", type=Path, default=Path("bench/out/town.json"))
    args = ap.parse_args()
    res = asyncio.run(main(args.scenario, args.hours, args.out))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1, ensure_ascii=False))
    for k, v in res.items():
        if k not in ("steps_detail", "by_kind"):
            print(f"{k}: {v}")
    print("by kind:")
    for kind, s in res["by_kind"].items():
        print(
            f"  {kind:12s} calls {s['calls']:4d} invalid {s['invalid']:3d} prompt {s['prompt_tokens']:7d} "
            f"hit {s['hit_rate']:.2f} completion {s['completion_tokens']:6d}"
        )
