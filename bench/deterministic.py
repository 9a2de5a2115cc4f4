"""What `EngineConfig(deterministic=True)` costs: prefill and decode tok/s at several batch sizes, on and off.

`python bench/deterministic.py [--batches 1 8 64] [--npp 128] [--ntg 32] [--repeats 1]`: the packaged model
in its default dtype, random prompts of `npp` tokens, `ntg` new tokens (ignore_eos). Same method as
bench/engine.py: prefill = a run with one new token, decode = the difference to a run with `ntg`.
Prints a markdown table (with the CPU and the date) and writes it to bench/out/deterministic.md.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from engine import ours_batched  # bench/engine.py
from machine import describe  # bench/machine.py: scripts run with bench/ on sys.path

from simulacra.inference import kernels
from simulacra.inference.loader import load_model

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--npp", type=int, default=128, help="prompt tokens per request")
    ap.add_argument("--ntg", type=int, default=32, help="new tokens per request")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many runs per cell")
    ap.add_argument("--tile", type=int, default=kernels.settings.tile, help="rows per invariant linear tile")
    ap.add_argument("--out", default="deterministic.md", help="file name under bench/out/")
    args = ap.parse_args()
    kernels.settings.tile = args.tile
    lm = load_model()
    ours_batched(lm, 2, 32, 4, 1, True)  # warm up (numba kernels, oneDNN)
    ours_batched(lm, 2, 32, 4, 1, False)
    lines = [
        f"Deterministic mode cost, {datetime.date.today()}, {describe()}, {lm.info.path.name} "
        f"({lm.model.dtype}), prompts of {args.npp} tokens, {args.ntg} new tokens, best of {args.repeats}, "
        f"{args.tile}-row linear tiles.",
        "",
        "| batch | prefill tok/s off | prefill tok/s on | on/off | decode tok/s off | decode tok/s on | on/off |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for b in args.batches:
        off = ours_batched(lm, b, args.npp, args.ntg, args.repeats, False)
        on = ours_batched(lm, b, args.npp, args.ntg, args.repeats, True)
        line = (
            f"| {b} | {off['prefill_tok_s']:.0f} | {on['prefill_tok_s']:.0f} | "
            f"{on['prefill_tok_s'] / off['prefill_tok_s']:.2f} | {off['decode_tok_s']:.1f} | "
            f"{on['decode_tok_s']:.1f} | {on['decode_tok_s'] / off['decode_tok_s']:.2f} |"
        )
        lines.append(line)
        print(line, flush=True)
    out = ROOT / "bench" / "out" / args.out
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
