"""Engine speed on the tutorial (100 epochs), as ratios measured in one process, interleaved.

    python benchmarks/engine.py [--device cpu|cuda] [--rounds 3]

(a) the 3-way comparison (none, value:5, norm:1) with every record the dashboard draws (per-step norms, layer
    norms, clip rates, value histograms) vs three plain reference loops one after another (target <= 0.3x)
(b) a K=48 threshold sweep in the batched engine (norm records, no value histograms) vs one plain run (target <= 3x)
(c) the 3-way comparison with every record vs the same engine with recording off (overhead target <= 15%)
Each round times every measure once, in turn, so a busy shared machine slows all of them alike; each figure is
the best over rounds, in wall time and in this process's CPU time (steadier when other processes crowd the cores). The load average (`uptime`) is printed with each round. torch uses one thread, as the
engine does.
"""

from __future__ import annotations

import argparse
import os
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


def timed(fn) -> tuple[float, float]:
    """(wall s, CPU s of this process)."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, time.process_time() - c


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dev = args.device
    ds = load_dataset(TUTORIAL.data)
    three = with_clips(TUTORIAL, TUTORIAL_CLIPS)
    sweep = with_clips(TUTORIAL, [ClipSpec("value", float(t)) for t in np.logspace(-2, 2, 24)])
    sweep += with_clips(TUTORIAL, [ClipSpec("norm", float(t)) for t in np.logspace(-2, 3, 24)])
    # the plain loops run all 100 epochs (a hand-written loop keeps stepping after 'none' turns NaN)
    measures = {
        "plain_one": lambda: train_reference(three[2], dataset=ds),
        "plain_three": lambda: [train_reference(s, dataset=ds) for s in three],
        "three_all_records": lambda: train(three, device=dev, dataset=ds),
        "three_no_records": lambda: train(three, device=dev, dataset=ds, record=False),
        # a sweep records per-step norms and clip flags but no value histograms (what clipviz.sweep asks for)
        "sweep_48": lambda: train(sweep, device=dev, dataset=ds, histograms=False),
    }
    measures["plain_one"]()  # warm-up: first-call costs belong to no measure
    measures["three_all_records"]()  # warm-up: first-call costs belong to no measure
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in measures}
    print(f"tutorial, 100 epochs, device={dev}, torch {torch.__version__}, 1 thread, {args.rounds} interleaved rounds")
    for r in range(args.rounds):
        before = load()
        for name, fn in measures.items():
            times[name].append(timed(fn))
        runs = ", ".join(f"{k} {v[-1][0]:.2f}/{v[-1][1]:.2f}" for k, v in times.items())
        print(f"round {r + 1}: load average {before} -> {load()}; wall/CPU s: {runs}")
    best = {k: min(x[0] for x in v) for k, v in times.items()}
    best_cpu = {k: min(x[1] for x in v) for k, v in times.items()}
    rows = [
        ("(a) 3-way, all records / 3 plain loops", "three_all_records", "plain_three", 0.3),
        ("(b) K=48 sweep / 1 plain run", "sweep_48", "plain_one", 3.0),
        ("(c) 3-way records on / records off", "three_all_records", "three_no_records", 1.15),
    ]
    print(
        f"{'measure (best of rounds)':40s} {'ours (s)':>9s} {'base (s)':>9s} {'ratio':>7s} {'CPU ratio':>9s} {'target':>7s}"
    )
    for name, ours, base, target in rows:
        ratio, cpu = best[ours] / best[base], best_cpu[ours] / best_cpu[base]
        flag = "ok" if ratio <= target else "MISSED"
        line = f"{name:40s} {best[ours]:9.3f} {best[base]:9.3f} {ratio:7.2f} {cpu:9.2f}"
        print(f"{line} {'<=' + format(target, 'g'):>7s} {flag}")


if __name__ == "__main__":
    main()
