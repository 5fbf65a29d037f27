"""The CLI: `python -m clipviz run ...` (and `sweep ...`). Bad input: one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from .config import PRESETS, Caps, ClipSpec, ConfigError, DataSpec, RunSpec, validate_runs, with_clips
from .executors import workers_from_env
from .strategies import REGISTRY
from .sweep import (
    DEFAULT_CHUNK,
    DEFAULT_RANGES,
    METRICS,
    SWEEP_STRATEGIES,
    LocalExecutor,
    LogRange,
    make_sweep,
    plan_chunks,
    run_sweep,
)
from .sweep_report import best_thresholds
from .sweep_report import dumps as sweep_dumps
from .sweep_report import to_frame as sweep_frame
from .text import MAX_LINE, path_kind, quote, shorten


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, instead of argparse's usage dump
        self.exit(2, f"clipviz: error: {shorten(message, MAX_LINE)}\n")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return v


def _finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not finite")
    return v


def _add_setup_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tutorial", choices=sorted(PRESETS), help="starting setup (default: tutorial)")
    p.add_argument("--epochs", type=_positive_int, help="epochs (tutorial: 100)")
    p.add_argument("--seed", type=int, default=None, help="first seed: initial weights and minibatch order")
    p.add_argument("--seeds", type=_positive_int, default=1, help="train each setup for this many seeds")
    p.add_argument("--lr", type=_finite_float, help="learning rate (tutorial: 0.01)")
    p.add_argument("--momentum", type=_finite_float, help="SGD momentum (tutorial: 0.9)")
    p.add_argument("--optimizer", choices=["sgd", "adam", "rmsprop"], help="optimizer (tutorial: sgd)")
    p.add_argument("--batch-size", type=_positive_int, help="minibatch size (tutorial: 32)")
    p.add_argument("--scale-x", action="store_true", help="standardise the inputs")
    p.add_argument("--scale-y", action="store_true", help="standardise the target (the textbook fix)")
    p.add_argument("--data-csv", metavar="PATH", help="train on your own CSV (numeric columns)")
    p.add_argument("--target", help="target column of --data-csv (default: the last column)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train (default: auto)")
    p.add_argument("--out", metavar="JSON", help="write every record to this JSON file")
    p.add_argument("--csv", metavar="CSV", help="also write a tidy CSV (one row per run per epoch)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def base_spec(args: argparse.Namespace) -> RunSpec:
    """The preset with the command line's overrides applied (no clip yet)."""
    spec = PRESETS[args.preset]
    o = spec.optim
    o = replace(
        o,
        epochs=args.epochs or o.epochs,
        lr=o.lr if args.lr is None else args.lr,
        momentum=o.momentum if args.momentum is None else args.momentum,
        name=args.optimizer or o.name,
        batch_size=args.batch_size or o.batch_size,
    )
    d = replace(spec.data, scale_x=spec.data.scale_x or args.scale_x, scale_y=spec.data.scale_y or args.scale_y)
    if args.data_csv:
        d = DataSpec(name="csv", csv_path=args.data_csv, target=args.target, scale_x=args.scale_x, scale_y=args.scale_y)
    return replace(spec, data=d, optim=o, seed=spec.seed if args.seed is None else args.seed)


def _progress(done: int, total: int, t0: float, quiet: bool) -> None:
    if quiet:
        return
    width = 30
    fill = int(width * done / max(total, 1))
    sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] epoch {done}/{total}  {time.perf_counter() - t0:5.1f}s")
    sys.stderr.flush()
    if done >= total:
        sys.stderr.write("\n")


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def summary_table(results) -> str:
    rows = [("run", "train MSE", "val MSE", "result")]
    for r in results:
        last = r.final
        if last is None:
            rows.append((r.label, "-", "-", "no epochs"))
            continue
        d = r.diverged
        status = f"diverged at epoch {d[0]}, step {d[1]}" if d else f"trained {last.epoch} epochs"
        rows.append((r.label, _fmt(last.train_loss), _fmt(last.val_loss), status))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def check_writable(path: str | None, flag: str) -> None:
    """Before any training: --out/--csv must name a file (or a device such as /dev/null) we can write."""
    import os

    if not path:
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ConfigError(f"{flag} {quote(path)}: directory {quote(parent)} does not exist") from None
        if not os.access(parent, os.W_OK):
            raise ConfigError(f"{flag} {quote(path)}: directory {quote(parent)} is not writable") from None
        return
    except OSError as exc:
        raise ConfigError(f"{flag} {quote(path)}: {exc.strerror or exc}") from None
    if path_kind(st.st_mode) == "a directory":  # devices and pipes stay allowed: /dev/null, /dev/stdout
        raise ConfigError(f"{flag} {quote(path)} is a directory, not a file to write")
    if not os.access(path, os.W_OK):
        raise ConfigError(f"{flag} {quote(path)} is not writable")


def check_outputs(args: argparse.Namespace) -> None:
    check_writable(args.out, "--out")
    check_writable(args.csv, "--csv")


def write_outputs(results, args: argparse.Namespace, to_json, to_frame) -> None:
    if args.out:
        Path(args.out).write_text(to_json(results))
        print(f"wrote {args.out}")
    if args.csv:
        to_frame(results).to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")


def _add_executor_flags(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--executor",
        choices=["local", "process", "ray"],
        default=default,
        help=f"where to train: local (this process), process (worker processes), ray (a Ray cluster) (default: {default})",
    )
    p.add_argument("--workers", type=_positive_int, help="worker processes for --executor process (default: cores)")
    p.add_argument("--ray-address", help="Ray cluster for --executor ray (default: RAY_ADDRESS, else a local Ray)")


def _remote_run(runs: list[RunSpec], args: argparse.Namespace) -> list:
    """One comparison as a Job on worker processes or Ray (the controls and streaming the dashboard uses)."""
    from .executors import WorkerPool
    from .jobs import Job
    from .ray_executor import RayExecutor

    ex = RayExecutor(args.ray_address) if args.executor == "ray" else WorkerPool(args.workers)
    try:
        job = Job(runs, device=args.device, executor=ex).start()
        t0, snap = time.perf_counter(), job.snapshot()
        while not snap.finished:
            snap = job.wait_until(lambda s, v=snap.version: s.version > v, 24 * 3600)
            _progress(snap.epoch, snap.epochs, t0, args.quiet)
    finally:
        if isinstance(ex, WorkerPool):
            ex.shutdown()
    if snap.state == "failed":
        raise ConfigError(f"training failed: {snap.error}")
    return [rec for r in snap.results for rec in r.records]


def cmd_run(args: argparse.Namespace) -> int:
    from .engine import Engine
    from .records import dumps, group_records, to_frame

    check_outputs(args)
    clips = [ClipSpec.parse(c) for c in (args.clip or ["none", "value:5", "norm:1"])]
    base = base_spec(args)
    caps = Caps.from_env()
    if len(clips) * args.seeds > caps.max_runs:  # counted before the runs are built
        raise ConfigError(
            f"{len(clips)} clip(s) x {args.seeds:,} seeds = {len(clips) * args.seeds:,} runs, "
            f"over the cap max_runs={caps.max_runs:,}"
        )
    seeds = tuple(range(base.seed, base.seed + args.seeds))
    runs = with_clips(base, clips, seeds)
    validate_runs(runs)
    if args.executor != "local":  # the single run needs no process hop; asked for, it gets one
        records = _remote_run(runs, args)
        results = group_records(runs, records)
        print(summary_table(results))
        write_outputs(results, args, dumps, to_frame)
        return 0
    engine = Engine(runs, device=args.device, compile=args.compile)
    print(f"training {len(runs)} runs on {engine.device}: {', '.join(r.name for r in runs)}", file=sys.stderr)
    if engine.compile_note:
        print(engine.compile_note, file=sys.stderr)
    records, t0 = [], time.perf_counter()
    for rec in engine:
        records.append(rec)
        _progress(rec.epoch, engine.epochs, t0, args.quiet)
    _progress(engine.epochs, engine.epochs, t0, args.quiet or engine.epoch >= engine.epochs)
    results = group_records(runs, records)
    if args.compile and not engine.compile_note:
        print(f"compile time {engine.compile_seconds:.1f} s (in the wall time above)", file=sys.stderr)
    print(summary_table(results))
    write_outputs(results, args, dumps, to_frame)
    return 0


# ---- python -m clipviz sweep ... ----------------------------------------------------------------
def _arg(fn):
    """A ConfigError-raising parser as an argparse type: its message becomes the one-line error."""

    def parse(text: str):
        try:
            return fn(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = fn.__name__
    return parse


def _threshold_arg(text: str) -> tuple[str | None, LogRange]:
    """'0.01:1000:25' (every strategy) or 'norm=0.01:1000:25' (one strategy)."""
    name, sep, rng = text.partition("=")
    if not sep:
        return None, LogRange.parse(text)
    if name.strip() not in SWEEP_STRATEGIES:
        raise ConfigError(f"unknown clipping strategy {name.strip()!r}; choose from {', '.join(SWEEP_STRATEGIES)}")
    return name.strip(), LogRange.parse(rng)


def _batch_sizes_arg(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(","):
        try:
            v = int(part)
        except ValueError:
            raise ConfigError(f"batch size {part!r} is not a whole number") from None
        if v <= 0:
            raise ConfigError(f"batch size {v} must be positive")
        out.append(v)
    return tuple(out)


def add_sweep_parser(subparsers) -> None:
    """The `sweep` subcommand."""
    p = subparsers.add_parser(
        "sweep",
        help="train every strategy x threshold x seed and find the threshold that works",
        description="Sweep clipping thresholds (log-spaced) per strategy, with the no-clipping baseline and seeds.",
    )
    p.add_argument(
        "--strategy",
        action="append",
        choices=SWEEP_STRATEGIES,
        help="strategy to sweep (repeat; default: value and norm); the no-clipping baseline always runs",
    )
    p.add_argument(
        "--thresholds",
        action="append",
        type=_arg(_threshold_arg),
        metavar="[STRATEGY=]MIN:MAX:COUNT",
        help="log-spaced thresholds, e.g. 0.01:1000:25 for every strategy, or autoclip=1:90:9 for one "
        "(default per strategy: "
        + ", ".join(f"{s} {r.lo:g}:{r.hi:g}:{r.count}" for s, r in DEFAULT_RANGES.items())
        + ")",
    )
    axis = p.add_mutually_exclusive_group()
    axis.add_argument("--lrs", type=_arg(LogRange.parse), metavar="MIN:MAX:COUNT", help="second axis: learning rates")
    axis.add_argument(
        "--batch-sizes", type=_arg(_batch_sizes_arg), metavar="B1,B2,...", help="second axis: batch sizes"
    )
    p.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK, help=f"runs per lockstep job (default {DEFAULT_CHUNK})"
    )
    p.add_argument(
        "--metric", choices=sorted(METRICS), default="final_val", help="what 'best' means (default final_val)"
    )
    _add_setup_flags(p)
    _add_executor_flags(p, os.environ.get("CLIPVIZ_EXECUTOR", "process").replace("inprocess", "local"))
    p.set_defaults(func=cmd_sweep, seeds=3)


def _bar(pr, quiet: bool) -> None:
    if quiet:
        return
    width = 30
    fill = int(width * pr.fraction)
    sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {pr.line()}    ")
    sys.stderr.flush()


def cmd_sweep(args: argparse.Namespace) -> int:
    check_outputs(args)
    per: dict[str, LogRange] = {}
    every = None
    for name, rng in args.thresholds or []:
        if name is None:
            every = rng
        else:
            per[name] = rng
    strategies = args.strategy or ["value", "norm"]
    ranges = {s: per.get(s) or every or DEFAULT_RANGES[s] for s in strategies}
    sweep = make_sweep(base_spec(args), strategies, ranges, args.seeds, lrs=args.lrs, batch_sizes=args.batch_sizes)
    n = len(sweep.points())
    parallel = (args.workers or workers_from_env()) if args.executor == "process" else 1
    chunks = plan_chunks(sweep, args.chunk_size, parallel=parallel)
    print(f"sweeping {n} runs in {len(chunks)} lockstep job(s): {', '.join(sweep.strategies)} + none", file=sys.stderr)
    from .executors import ChunkExecutor, WorkerPool

    pool = None
    if args.executor == "ray":
        from .ray_executor import RayExecutor

        executor = RayExecutor(args.ray_address, device=args.device)
    elif args.executor == "process":
        pool = WorkerPool(min(parallel, len(chunks)))
        executor = ChunkExecutor(pool, device=args.device)
    else:
        executor = LocalExecutor(args.device)
    try:
        result = run_sweep(
            sweep, executor=executor, chunk_size=args.chunk_size, on_progress=lambda p: _bar(p, args.quiet)
        )
    finally:
        if pool is not None:
            pool.shutdown()
    if not args.quiet:
        sys.stderr.write(f"\ndone in {result.elapsed:.1f}s\n")
    print(best_thresholds(result, args.metric))
    write_outputs(result, args, sweep_dumps, sweep_frame)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m clipviz", description="Train and compare gradient-clipping strategies.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="train K setups side by side", description="Train K setups side by side.")
    run.add_argument(
        "--clip",
        action="append",
        metavar="STRATEGY[:T]",
        help=", ".join(f"{n}:{s.default:g}" if s.default else n for n, s in REGISTRY.items())
        + " (repeat; a name alone takes its default; default: the tutorial's three)",
    )
    _add_setup_flags(run)
    run.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each epoch's steps as one graph (off by default): a one-off compile of a few minutes, "
        "then faster epochs; pays off only for long runs or big K. Falls back to eager, with a note, where it cannot",
    )
    _add_executor_flags(run, "local")
    run.set_defaults(func=cmd_run)
    add_sweep_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"clipviz: error: {shorten(exc, MAX_LINE)}", file=sys.stderr)
        return 2
    except OSError as exc:
        msg = f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
        print(f"clipviz: error: {shorten(msg, MAX_LINE)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nclipviz: stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
