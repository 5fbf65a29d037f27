"""What a warm worker pool buys: click-to-first-epoch of the tutorial comparison, cold pool vs warm pool vs in-process.

    python benchmarks/startup.py [--workers 2] [--repeat 3]

Cold: the pool is started and the job submitted at once (the first Train after a server start, had the pool
been started lazily): the first epoch waits for a fresh interpreter to import torch. Warm: the pool was
started earlier and is ready (what the app does: it starts the pool first thing when its script first runs).
In-process: the job trains in a thread of this process (torch already imported). Load averages are printed
beside the figures: on a shared 2-core machine they move every number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipviz.config import TUTORIAL, TUTORIAL_CLIPS, with_clips  # noqa: E402
from clipviz.executors import InProcessExecutor, WorkerPool  # noqa: E402
from clipviz.jobs import Job  # noqa: E402


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def first_epoch(executor) -> float:
    t = time.perf_counter()
    job = Job(with_clips(TUTORIAL, TUTORIAL_CLIPS), device="cpu", executor=executor).start()
    job.wait_until(lambda s: s.epoch >= 1 or s.finished, 300)
    out = time.perf_counter() - t
    job.stop()
    job.join(60)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for _ in range(args.repeat):
        before = load()
        pool = WorkerPool(args.workers)
        cold = first_epoch(pool)  # submitted while the workers are still importing torch
        ready = pool.wait_ready(300)
        ready_after = [w.ready_after for w in pool.workers]
        warm = first_epoch(pool)
        pool.shutdown()
        local = first_epoch(InProcessExecutor())
        rows.append((cold, warm, local, ready, ready_after, before, load()))
    print(f"tutorial 3-way comparison, submit -> first epoch back, {args.workers} workers, {os.cpu_count()} cores")
    print(
        f"{'cold pool s':>12s} {'warm pool s':>12s} {'in-process s':>13s}  worker ready after s   load before -> after"
    )
    for cold, warm, local, ready, after, b, a in rows:
        ra = ", ".join(f"{x:.1f}" for x in after if x is not None) if ready else "not ready"
        print(f"{cold:12.2f} {warm:12.3f} {local:13.3f}  {ra:20s}  {b} -> {a}")
    med = [statistics.median(r[i] for r in rows) for i in range(3)]
    print(f"median: cold {med[0]:.2f} s, warm {med[1]:.3f} s, in-process {med[2]:.3f} s")


if __name__ == "__main__":
    main()
