"""How many conversation lines of a run are worth reading (issue 15, point 2).

    python bench/line_quality.py RUN [RUN ...] [--examples 3] [--json OUT]

Reads each run's utterance events and counts the lines that echo the partner or the conversation,
duplicate a line said earlier in the run, loop, or leak the prompt or a "Name:" prefix (the checks
are `simulacra.agents.lines`, the ones the mind uses to drop candidates). Prints a Markdown table,
one row per run, and a few examples of each fault.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from simulacra.agents import lines
from simulacra.scenario import load_scenario
from simulacra.storage import RunStore


def measure(run_dir: Path) -> dict:
    """Per run: lines, count per fault, lines free of all four, and examples per fault."""
    names = [r.name for r in load_scenario(run_dir / "scenario.yaml").definition.residents]
    store = RunStore(run_dir)
    try:
        events = [e for e in store.events() if e["kind"] == "utterance"]
        last = store.last_step()
    finally:
        store.close()
    by_conv: dict[int, list[str]] = defaultdict(list)
    said_before: set[str] = set()
    pending: list[tuple[int, str]] = []  # this step's lines: "said earlier" from the next step on, as for the mind
    step = None
    counts = dict.fromkeys(lines.FAULTS, 0)
    examples: dict[str, list[str]] = defaultdict(list)
    free = 0
    for e in events:
        if e["step"] != step:
            said_before |= {lines.normalise(t) for _, t in pending}
            pending, step = [], e["step"]
        conv, text = e["conversation"], e["text"]
        found = lines.faults(text, by_conv[conv], said_before, names)
        for f in found:
            counts[f] += 1
            examples[f].append(f"{e['speaker']} → {e['to']}: {text}")
        free += not found
        by_conv[conv].append(text)
        pending.append((conv, text))
    total = len(events)
    return {
        "run": str(run_dir),
        "steps": last.step + 1 if last is not None else 0,
        "residents": len(names),
        "lines": total,
        "conversations": len(by_conv),
        "faults": counts,
        "free": free,
        "free_share": free / total if total else float("nan"),
        "examples": dict(examples),
    }


def table(results: list[dict]) -> str:
    head = "| run | residents | steps | lines | echo | duplicate | loop | leak | free of all four |"
    out = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        n = r["lines"] or 1
        cells = [f"{r['faults'][f]} ({r['faults'][f] / n:.0%})" for f in lines.FAULTS]
        out.append(
            f"| {Path(r['run']).name} | {r['residents']} | {r['steps']} | {r['lines']} | "
            + " | ".join(cells)
            + f" | **{r['free']} ({r['free_share']:.0%})** |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--examples", type=int, default=3, help="examples printed per fault and run")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    results = [measure(r) for r in args.runs]
    print(table(results))
    for r in results:
        for fault, shown in r["examples"].items():
            for text in shown[: args.examples]:
                print(f"  [{Path(r['run']).name}] {fault}: {text}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
