"""Engine speed on the tutorial (100 epochs), as ratios measured in one process.

    python benchmarks/engine.py [--device cpu|cuda] [--repeat 3]

(a) the 3-way comparison in the batched engine vs three plain reference loops one after another (target <= 0.5x)
(b) a K=48 threshold sweep in the batched engine (norm records, no value histograms) vs one plain run (target <= 3x)
(c) the engine with every record vs the same engine with recording off (overhead target <= 15%)
Each timing is the best of --repeat runs; torch uses one thread, as the engine does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipviz.config import TUTORIAL, TUTORIAL_CLIPS, ClipSpec, with_clips  # noqa: E402
from clipviz.data import load_dataset  # noqa: E402
from clipviz.engine import train  # noqa: E402
from clipviz.reference import train_reference  # noqa: E402


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset(TUTORIAL.data)
    three = with_clips(TUTORIAL, TUTORIAL_CLIPS)
    # the plain loops run all 100 epochs (a hand-written loop keeps stepping after 'none' turns NaN)
    plain_one = best_of(lambda: train_reference(three[2], dataset=ds), args.repeat)
    plain_three = best_of(lambda: [train_reference(s, dataset=ds) for s in three], args.repeat)
    batched_three = best_of(lambda: train(three, device=args.device, dataset=ds), args.repeat)
    sweep = with_clips(TUTORIAL, [ClipSpec("value", float(t)) for t in np.logspace(-2, 2, 24)])
    sweep += with_clips(TUTORIAL, [ClipSpec("norm", float(t)) for t in np.logspace(-2, 3, 24)])
    # a sweep records per-step norms and clip flags but no value histograms (what clipviz.sweep asks for)
    batched_48 = best_of(lambda: train(sweep, device=args.device, dataset=ds, histograms=False), args.repeat)
    rec_on = batched_three
    rec_off = best_of(lambda: train(three, device=args.device, dataset=ds, record=False), args.repeat)
    rows = [
        ("(a) 3-way batched / 3 plain loops", batched_three, plain_three, 0.5),
        ("(b) K=48 sweep batched / 1 plain run", batched_48, plain_one, 3.0),
        ("(c) records on / records off", rec_on, rec_off, 1.15),
    ]
    print(f"tutorial, 100 epochs, device={args.device}, torch {torch.__version__}, 1 thread, best of {args.repeat}")
    print(f"{'measure':40s} {'ours (s)':>9s} {'base (s)':>9s} {'ratio':>7s} {'target':>7s}")
    for name, ours, base, target in rows:
        ratio = ours / base
        flag = "ok" if ratio <= target else "MISSED"
        print(f"{name:40s} {ours:9.3f} {base:9.3f} {ratio:7.2f} {'<=' + format(target, 'g'):>7s} {flag}")


if __name__ == "__main__":
    main()
