"""Sweep cost on the tutorial (100 epochs), as ratios measured in one process.

    python benchmarks/sweep.py [--device cpu|cuda] [--repeat 3] [--chunk-size 256]

2 strategies (value, norm) x 25 thresholds (0.01..1000) x 5 seeds = 250 runs, plus the sweep's no-clipping
baseline (5 runs, 255 in all), against ONE plain single-model run (reference.train_reference, norm:1).
Target: the whole sweep <= 10x one plain run. Also the same sweep with the engine's records off (faster,
but no clip rate and no norm heuristics), which shows what the engine's record mode costs. Also peak memory: the process's ru_maxrss before and after
the sweep, and the bytes held by live torch tensors after the first epoch of each chunk (the biggest is printed).
Each timing is the best of --repeat runs; torch uses one thread, as the engine does.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipviz.config import TUTORIAL, ClipSpec  # noqa: E402
from clipviz.data import load_dataset  # noqa: E402
from clipviz.reference import train_reference  # noqa: E402
from clipviz.sweep import LocalExecutor, LogRange, make_sweep, plan_chunks, run_sweep  # noqa: E402


def best_of(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times), out


def live_tensor_bytes() -> int:
    """Bytes of distinct storages behind every torch tensor Python can reach right now."""
    seen, total = set(), 0
    with warnings.catch_warnings():  # isinstance() on some torch module objects warns about deprecations
        warnings.simplefilter("ignore")
        objs = gc.get_objects()
        tensors = [o for o in objs if _is_tensor(o)]
    for obj in tensors:
        try:
            st = obj.untyped_storage()
        except Exception:  # some tensors have no storage to read (e.g. meta tensors): skip them
            continue
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


def _is_tensor(obj) -> bool:
    try:
        return isinstance(obj, torch.Tensor)
    except Exception:  # some objects refuse isinstance
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset(TUTORIAL.data)
    plain_spec = TUTORIAL.__class__(clip=ClipSpec("norm", 1.0))
    sweep = make_sweep(TUTORIAL, ["value", "norm"], LogRange(0.01, 1000, 25), seeds=5)
    chunks = plan_chunks(sweep, args.chunk_size)
    tensors = {}

    def probe(p):
        if p.epoch == 1 and p.chunks_done not in tensors:  # once per chunk; the biggest counts
            tensors[p.chunks_done] = live_tensor_bytes()

    def once(record=True):
        ex = LocalExecutor(args.device, record=record)
        return run_sweep(sweep, executor=ex, chunk_size=args.chunk_size, on_progress=probe if record else None)

    # interleaved, best of each: other processes on a small shared machine slow both alike
    plains, sweeps, fasts, rss_before, result = [], [], [], 0.0, None
    for _ in range(args.repeat):
        plains.append(best_of(lambda: train_reference(plain_spec, dataset=ds), 1)[0])
        if not sweeps:  # before the first sweep: the process's peak so far
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
        t, result = best_of(once, 1)
        sweeps.append(t)
        fasts.append(best_of(lambda: once(record=False), 1)[0])
    plain, swept = min(plains), min(sweeps)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = len(result.runs)
    ratio, fast = swept / plain, min(fasts)
    print(f"tutorial, 100 epochs, device={args.device}, torch {torch.__version__}, 1 thread, best of {args.repeat}")
    print(
        f"sweep: {n} runs (value, norm x 25 thresholds x 5 seeds + 5 no-clip), lockstep jobs of {[len(c) for c in chunks]}"
    )
    print(f"{'measure':44s} {'value':>12s}")
    print(f"{'one plain run (reference loop), s':44s} {plain:12.3f}")
    print(f"{'whole sweep, s':44s} {swept:12.3f}")
    print(f"{'sweep / one plain run (target <= 10)':44s} {ratio:12.2f}  {'ok' if ratio <= 10 else 'MISSED'}")
    print(f"{'same sweep, engine record=False, s':44s} {fast:12.3f}")
    print(f"{'  ... / one plain run (no clip rate, norms)':44s} {fast / plain:12.2f}")
    print(f"{'plain-run equivalents per run':44s} {ratio / n:12.4f}")
    print(f"{'runs per second':44s} {n / swept:12.1f}")
    print(f"{'plain runs, all repeats, s':44s} {' '.join(f'{x:.2f}' for x in plains):>12s}")
    print(f"{'sweeps, all repeats, s':44s} {' '.join(f'{x:.2f}' for x in sweeps):>12s}")
    print(f"{'record=False sweeps, all repeats, s':44s} {' '.join(f'{x:.2f}' for x in fasts):>12s}")
    print(f"{'peak RSS before the first sweep, MiB':44s} {rss_before:12.1f}")
    print(f"{'peak RSS after all sweeps, MiB':44s} {rss_after:12.1f}")
    print(f"{'torch tensors alive after epoch 1 (max), MiB':44s} {max(tensors.values(), default=0) / 2**20:12.2f}")


if __name__ == "__main__":
    main()
