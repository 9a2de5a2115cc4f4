"""Re-judge a run's interviews.json with `simulacra.metrics.judge`, without a new call.

`python bench/rejudge_interviews.py RUN …` prints, per fact, the knowing and unsupported counts of the
recorded judge and of the current one. The ground truth of the residents whose answers are supported
comes from the recorded `knows` (the current judge supports a subset of what the earlier ones did, and
their `knows` is supported ∩ ground truth), so older runs can be compared after a judge changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from simulacra.agents.facts import FactTracker
from simulacra.metrics import judge
from simulacra.scenario import load_scenario


def main(runs: list[str]) -> None:
    for run in map(Path, runs):
        d = load_scenario(run / "scenario.yaml").definition
        tracker = FactTracker(list(d.information))
        facts = json.loads((run / "interviews.json").read_text())["facts"]
        places = [p.name for p in d.map.places]
        unsupported = total = 0
        for info in d.information:
            f = facts[info.id]
            for name in f["knows"]:
                tracker.known[info.id][name] = None  # type: ignore[assignment]  # only the keys are read
            new = judge(info, tracker, f["answers"], places)
            unsupported += len(new["unsupported"])
            total += len(f["answers"])
            print(
                f"{run.name} {info.id}: knows {len(f['knows'])} -> {len(new['knows'])}, "
                f"unsupported {len(f['unsupported'])} -> {len(new['unsupported'])} {new['unsupported']}"
            )
        print(f"{run.name}: unsupported {unsupported} of {total} ({unsupported / max(total, 1):.0%})")


if __name__ == "__main__":
    main(sys.argv[1:])
