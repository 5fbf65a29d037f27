"""Threshold sweeps: every strategy x threshold x seed (x learning rate or batch size), trained in lockstep chunks.

The tutorial ends on "the threshold is a hyperparameter: experiment". A sweep is that experiment: a
log-spaced threshold range per strategy, the no-clipping baseline, several seeds, optionally a second
axis. Points that share a batch size train together as one batched engine job ("chunk", at most
`chunk_size` runs, so memory stays bounded); each chunk comes back as one small summary per run
(final/best loss, divergence, clip rate, early unclipped norms), never the full per-step records.
Diverged seeds are excluded from a point's median and counted (`summarize`).

Scaling out. The runner only talks to an `Executor`: `map(chunks, on_epoch)` yields `(index, summaries)`
as each chunk finishes, in any order, and `cancel()` stops it; chunks already yielded are kept.
`LocalExecutor` trains the chunks one after another in this process; `clipviz.executors.ChunkExecutor`
hands them to the local worker processes (one chunk per worker at a time); `clipviz.ray_executor.RayExecutor`
fans them out as Ray tasks over a cluster. A chunk is a pure function of its specs (`train_chunk`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from .config import STRATEGIES, Caps, ConfigError, RunSpec, param_count, validate_run
from .cost import DataShape, check_runs, data_shape, max_runs_within
from .jobs import FINISHED, BackgroundJob
from .strategies import REGISTRY

SWEEP_STRATEGIES = tuple(s for s in STRATEGIES if s != "none")  # 'none' always runs as the baseline
AXES = ("lr", "batch_size")  # the optional second axis
METRICS = {"final_val": "final validation MSE", "best_val": "best validation MSE", "final_train": "final train MSE"}
MAX_POINTS = 5000  # runs in one sweep (each chunk also obeys Caps.max_runs / max_total_params)
DEFAULT_CHUNK = 256  # runs per lockstep job: bigger amortises the per-step overhead; caps bound memory
WARMUP_STEPS = 50  # unclipped baseline: pre-clip norms kept from its first steps (the heuristics' input)
PASCANU_FACTORS = (0.5, 10.0)  # Pascanu et al. 2013 (ICML text), sec. 3.2: "from half to ten times this average"
AUTOCLIP_P = 10.0  # AutoClip's default percentile (Seetharaman et al. 2020)


# ---- what to sweep ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogRange:
    """`count` log-spaced values from `lo` to `hi` inclusive, rounded to 4 significant digits."""

    lo: float
    hi: float
    count: int

    def __post_init__(self) -> None:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (self.lo, self.hi))
        if not ok or not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            raise ConfigError(f"range bounds must be finite numbers, got {self.lo!r}:{self.hi!r}")
        if self.lo <= 0:
            raise ConfigError(f"range is log-spaced: its minimum must be positive, got {self.lo:g}")
        if self.lo >= self.hi:
            raise ConfigError(f"range minimum {self.lo:g} must be below its maximum {self.hi:g}")
        if not isinstance(self.count, int) or isinstance(self.count, bool) or not 1 <= self.count <= MAX_POINTS:
            raise ConfigError(f"range count must be a whole number from 1 to {MAX_POINTS}, got {self.count!r}")

    @classmethod
    def parse(cls, text: str) -> LogRange:
        """'0.01:1000:25' -> LogRange(0.01, 1000, 25), or ConfigError saying what is wrong."""
        parts = text.strip().split(":")
        if len(parts) != 3:
            raise ConfigError(f"range {text!r} must be MIN:MAX:COUNT, e.g. 0.01:1000:25")
        try:
            lo, hi = float(parts[0]), float(parts[1])
        except ValueError:
            raise ConfigError(f"range {text!r}: {parts[0]!r} or {parts[1]!r} is not a number") from None
        try:
            count = int(parts[2])
        except ValueError:
            raise ConfigError(f"range {text!r}: count {parts[2]!r} is not a whole number") from None
        return cls(lo, hi, count)

    def values(self) -> tuple[float, ...]:
        if self.count == 1:
            return (float(f"{self.lo:.4g}"),)
        return tuple(dict.fromkeys(float(f"{v:.4g}") for v in np.geomspace(self.lo, self.hi, self.count)))


# thresholds mean different things per strategy (THRESHOLD_MEANING): a default range for each, from the registry
DEFAULT_RANGES = {n: LogRange(*s.sweep) for n, s in REGISTRY.items() if s.sweep is not None}


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: what varies. Everything else is the sweep's base spec."""

    strategy: str
    threshold: float | None  # None for the 'none' baseline
    seed: int
    axis_value: float | None = None  # the second axis' value (lr or batch size); None without one


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: the base setup, the thresholds per strategy, the seeds and an optional second axis."""

    base: RunSpec  # data, model, optimizer, epochs: shared by every point
    thresholds: tuple[tuple[str, tuple[float, ...]], ...]  # (strategy, thresholds) for each clipped strategy
    seeds: tuple[int, ...] = (1, 2, 3)  # each point trains once per seed; medians are over these
    axis: str | None = None  # "lr" or "batch_size": the second axis, or None
    axis_values: tuple[float, ...] = ()  # its values (batch sizes are whole numbers)

    @property
    def strategies(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.thresholds)

    def axis_list(self) -> tuple[float | None, ...]:
        return self.axis_values if self.axis else (None,)

    def points(self) -> list[SweepPoint]:
        """Seed-major order: the first chunks cover every threshold once, later ones add seeds."""
        out = []
        for seed in self.seeds:
            for a in self.axis_list():
                out.append(SweepPoint("none", None, seed, a))
                out += [SweepPoint(s, t, seed, a) for s, ts in self.thresholds for t in ts]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base.to_dict(),
            "thresholds": {s: list(ts) for s, ts in self.thresholds},
            "seeds": list(self.seeds),
            "axis": self.axis,
            "axis_values": list(self.axis_values),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepSpec:
        return cls(
            base=RunSpec.from_dict(d["base"]),
            thresholds=tuple((s, tuple(float(t) for t in ts)) for s, ts in d["thresholds"].items()),
            seeds=tuple(int(s) for s in d["seeds"]),
            axis=d.get("axis"),
            axis_values=tuple(d.get("axis_values", ())),
        )


def make_sweep(
    base: RunSpec,
    strategies: Sequence[str] = ("value", "norm"),
    thresholds: LogRange | dict[str, LogRange] | None = None,
    seeds: int = 3,
    lrs: LogRange | Sequence[float] | None = None,
    batch_sizes: Sequence[int] | None = None,
    caps: Caps | None = None,
) -> SweepSpec:
    """Build and validate a sweep. `thresholds`: one range for all strategies, or per strategy (the rest default)."""
    strategies = tuple(dict.fromkeys(s for s in strategies if s != "none"))
    for s in strategies:
        if s not in SWEEP_STRATEGIES:
            raise ConfigError(f"unknown clipping strategy {s!r}; choose from {', '.join(SWEEP_STRATEGIES)}")
    per = thresholds if isinstance(thresholds, dict) else {s: thresholds or DEFAULT_RANGES[s] for s in strategies}
    table = []
    for s in strategies:
        r = per.get(s) or DEFAULT_RANGES[s]
        if s == "autoclip" and r.hi > 100:
            raise ConfigError(
                f"autoclip's threshold is a percentile in (0, 100], but the range goes to {r.hi:g}: "
                "give it its own range, e.g. --thresholds autoclip=1:90:9"
            )
        table.append((s, r.values()))
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"number of seeds must be a positive whole number, got {seeds!r}")
    if lrs is not None and batch_sizes is not None:
        raise ConfigError("a sweep has one second axis: learning rates or batch sizes, not both")
    # counted before anything is built: a huge seed or axis count must not allocate its points first
    n_axis = 1
    if lrs is not None:
        n_axis = lrs.count if isinstance(lrs, LogRange) else len(lrs)
    elif batch_sizes is not None:
        n_axis = len(batch_sizes)
    per_seed = 1 + sum(len(ts) for _, ts in table)  # the baseline and every strategy's thresholds
    n = seeds * max(n_axis, 1) * per_seed
    if n > MAX_POINTS:
        axis_part = f" x {n_axis:,} axis values" if n_axis > 1 else ""
        raise ConfigError(
            f"this sweep has {n:,} runs ({seeds:,} seeds{axis_part} x {per_seed:,} thresholds incl. the baseline), "
            f"over the limit of {MAX_POINTS:,}: fewer thresholds, seeds or axis values"
        )
    axis, values = None, ()
    if lrs is not None:
        axis, values = "lr", lrs.values() if isinstance(lrs, LogRange) else tuple(float(v) for v in lrs)
    elif batch_sizes is not None:
        axis, values = "batch_size", tuple(dict.fromkeys(batch_sizes))
    if axis and not values:
        raise ConfigError(f"the {axis} axis needs at least one value")
    sweep = SweepSpec(base, tuple(table), tuple(range(base.seed, base.seed + seeds)), axis, values)
    caps = caps or Caps.from_env()
    from .data import input_dim  # local, as in plan_chunks: a CSV's width comes from its header

    n_in = input_dim(base.data)
    for p in {replace(q, seed=base.seed) for q in sweep.points()}:  # one of each setup is enough to validate
        validate_run(point_spec(sweep, p), caps, n_in)
        check_runs([point_spec(sweep, p)], caps, histograms=False, keep_records=False)  # one run must fit a job
    return sweep


def point_spec(sweep: SweepSpec, point: SweepPoint) -> RunSpec:
    """The full RunSpec of one point: open it in the comparison view to see every chart of that run."""
    from .config import ClipSpec  # local: keeps the names above the public ones

    optim = sweep.base.optim
    tag = ""
    if sweep.axis == "lr":
        optim, tag = replace(optim, lr=float(point.axis_value)), f" lr={point.axis_value:g}"
    elif sweep.axis == "batch_size":
        optim, tag = replace(optim, batch_size=int(point.axis_value)), f" bs={int(point.axis_value)}"
    clip = ClipSpec(point.strategy, point.threshold)
    return replace(sweep.base, optim=optim, clip=clip, seed=point.seed, label=f"{clip.label}{tag} seed={point.seed}")


def plan_chunks(
    sweep: SweepSpec, chunk_size: int = DEFAULT_CHUNK, caps: Caps | None = None, parallel: int = 1
) -> list[list[SweepPoint]]:
    """Split the points into lockstep jobs of at most chunk_size runs (and the caps).

    `parallel`: how many chunks the executor trains at once (its worker processes). The clipping runs are then
    split into at least that many chunks, so no worker sits idle while one trains a single wide job.

    Runs differing in batch size cannot share a lockstep job. The 'none' runs get chunks of their own: they
    end as soon as they diverge (epoch 1 on the tutorial); in a shared job they would leave it then too (the
    engine drops diverged runs), but until then their one-run seed stretches cut its GEMMs to one run each. The clipping strategies share one chunk when all their runs fit in it (the engine
    keeps each strategy's runs in a block that its rule clips as a view, and one K=250 tutorial job took
    ~10% less CPU than two K=125 ones: fewer, wider ops); else each strategy is split apart, so a chunk's
    runs keep whole same-seed blocks (the engine's wide GEMMs need equal-sized ones).
    """
    caps = caps or Caps.from_env()
    if chunk_size < 1:
        raise ConfigError(f"chunk size must be positive, got {chunk_size}")
    from .data import input_dim

    n_in = input_dim(sweep.base.data)
    per_run = param_count(sweep.base.model, n_in)
    size = max(1, min(chunk_size, caps.max_runs, caps.max_total_params // max(per_run, 1)))
    shared: dict[tuple[int, bool], list[SweepPoint]] = {}  # (batch size, no clipping) -> points
    for p in sweep.points():
        shared.setdefault((point_spec(sweep, p).optim.batch_size, p.strategy == "none"), []).append(p)
    shape = data_shape(sweep.base) or _csv_shape(sweep.base, n_in, caps)
    fit: dict[int, int] = {}  # batch size -> most runs one job may train (the cost model; arithmetic only)
    for bs, _ in shared:
        if bs not in fit:
            spec = replace(sweep.base, optim=replace(sweep.base.optim, batch_size=bs))
            fit[bs] = max_runs_within(spec, caps, shape)
    out = []
    for (bs, _), g in shared.items():
        most = min(size, fit[bs])
        if parallel > 1 and g[0].strategy != "none":
            most = min(most, max(1, -(-len(g) // parallel)))  # one chunk per worker
        if len(g) <= most:
            out.append(g)
            continue
        per_strategy: dict[str, list[SweepPoint]] = {}
        for p in g:
            per_strategy.setdefault(p.strategy, []).append(p)
        for one in per_strategy.values():  # equal parts: 138 runs at size 128 -> 69 + 69, not 128 + 10
            part = -(-len(one) // -(-len(one) // most))
            out += [one[i : i + part] for i in range(0, len(one), part)]
    return out


def _csv_shape(base: RunSpec, n_in: int, caps: Caps) -> DataShape:
    """A CSV's shape before it is read: its real width, and a bound on its rows from its size (each of the
    n_in + 1 cells of a row takes at least a digit and a delimiter) and the reader's cap max_rows."""
    import os

    try:
        rows = min(caps.max_rows, os.path.getsize(base.data.csv_path or "") // (2 * (n_in + 1)) + 1)
    except OSError:
        rows = caps.max_rows
    return DataShape(rows, n_in, 1, max(1, int(rows * base.data.train_fraction)))


# ---- one chunk ----------------------------------------------------------------------------------
@dataclass
class RunSummary:
    """What a sweep keeps of one trained run: a few numbers and the validation curve."""

    spec: RunSpec
    epochs: int = 0  # epochs trained (up to and including the one it diverged in)
    final_train: float = math.nan  # last epoch's train MSE; nan if the run diverged
    final_val: float = math.nan  # validation MSE after the last epoch; nan if the run diverged
    best_val: float = math.nan  # lowest finite validation MSE seen (before any divergence)
    best_epoch: int = 0
    diverged: tuple[int, int] | None = None  # (epoch, step) of the first non-finite loss or norm
    clip_rate: float = 0.0  # fraction of the trained steps on which the clip changed the gradient
    val_curve: list[float] = field(default_factory=list)  # per epoch
    early_norms: list[float] = field(default_factory=list)  # 'none' only: pre-clip norms of the first steps
    norm_median: float = math.nan  # median pre-clip norm over every step of a run that trained (the heuristics')
    norm_p10: float = math.nan  # its 10th percentile (AutoClip's default); both nan if the run diverged


class ChunkSummary:
    """Folds one chunk's EpochRecords into a RunSummary per run (wherever the chunk trains)."""

    def __init__(self, runs: Sequence[RunSpec], record: bool = True):
        self.record = record
        self.out = [RunSummary(r) for r in runs]
        self.clipped = [0.0] * len(runs)
        self.steps = [0] * len(runs)
        self.norms: list[list[np.ndarray]] = [[] for _ in runs]  # each run's pre-clip norms, every step

    def add(self, rec: Any) -> None:
        s = self.out[rec.run]
        n_steps = len(rec.grad_norm_pre)
        self.clipped[rec.run] += rec.clip_rate * n_steps
        self.steps[rec.run] += n_steps
        s.epochs = rec.epoch
        s.val_curve.append(rec.val_loss)
        self.norms[rec.run].append(np.asarray(rec.grad_norm_pre, dtype=float))
        if s.spec.clip.strategy == "none" and len(s.early_norms) < WARMUP_STEPS:
            finite = [v for v in rec.grad_norm_pre if math.isfinite(v)]
            s.early_norms += finite[: WARMUP_STEPS - len(s.early_norms)]
        if rec.diverged:
            s.diverged = rec.diverged
        else:
            s.final_train, s.final_val = rec.train_loss, rec.val_loss
            if math.isfinite(rec.val_loss) and not rec.val_loss >= s.best_val:
                s.best_val, s.best_epoch = rec.val_loss, rec.epoch

    def finish(self) -> list[RunSummary]:
        for s, c, n, ns in zip(self.out, self.clipped, self.steps, self.norms, strict=True):
            s.clip_rate = c / n if n and self.record else (0.0 if self.record else math.nan)
            if s.diverged:
                s.final_train = s.final_val = math.nan
            elif ns and (v := np.concatenate(ns)).size:
                s.norm_median, s.norm_p10 = (float(q) for q in np.percentile(v, [50, AUTOCLIP_P]))
        return self.out


def train_chunk(
    runs: Sequence[RunSpec],
    *,
    device: str = "auto",
    dataset: Any = None,
    stop: threading.Event | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
    record: bool = True,
) -> list[RunSummary] | None:
    """Train one lockstep chunk and summarise each run; None if stopped before the end.

    A pure function of its arguments (the dataset is rebuilt from the specs when not given): the unit an
    executor ships to a worker. Value histograms are never needed here, so the engine skips them;
    record=False also skips the per-step norms, but then clip_rate is nan and early_norms empty (no
    clip-rate chart, no heuristics).
    """
    from .engine import Engine

    engine = Engine(
        list(runs),
        device=device,
        record=record,
        histograms=False,
        detail=False,  # a summary keeps the pre-clip norms and clip flags, not post-clip or per-layer norms
        dataset=dataset,
        stop=stop,
        keep_records=False,
    )
    summary = ChunkSummary(runs, record)
    last_epoch = 0
    for rec in engine:
        summary.add(rec)
        if on_epoch is not None and rec.epoch > last_epoch:
            last_epoch = rec.epoch
            on_epoch(rec.epoch, engine.epochs)
    if stop is not None and stop.is_set() and engine.epoch < engine.epochs and len(engine.reported_dead) < engine.k:
        return None  # stopped mid-chunk: its runs are unfinished, drop them
    return summary.finish()


class Executor(Protocol):
    """Trains chunks of RunSpecs and streams their summaries back; cancellable."""

    def map(
        self, chunks: Sequence[Sequence[RunSpec]], on_epoch: Callable[[int, int, int], None] | None = None
    ) -> Iterator[tuple[int, list[RunSummary]]]:
        """Yield (chunk index, one summary per run) as each chunk finishes, in any order.
        on_epoch(chunk index, epoch, epochs) reports progress inside a chunk where the executor can."""
        ...

    def cancel(self) -> None:
        """Stop soon: the chunk in progress is dropped, chunks already yielded stay with the caller."""
        ...


class LocalExecutor:
    """The default: chunks train one after another in this process, each as one batched engine job."""

    def __init__(self, device: str = "auto", record: bool = True):
        self.device, self.record = device, record  # record: see train_chunk
        self._stop = threading.Event()
        self._datasets: dict[Any, Any] = {}

    def map(self, chunks, on_epoch=None):
        from .data import load_dataset

        for i, runs in enumerate(chunks):
            if self._stop.is_set():
                return
            data = runs[0].data
            if data not in self._datasets:
                self._datasets[data] = load_dataset(data)
            cb = None if on_epoch is None else (lambda e, n, i=i: on_epoch(i, e, n))
            res = train_chunk(
                runs, device=self.device, dataset=self._datasets[data], stop=self._stop, on_epoch=cb, record=self.record
            )
            if res is None:
                return
            yield i, res

    def cancel(self) -> None:
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()


# ---- the runner ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepProgress:
    runs_done: int  # runs of finished chunks
    runs_total: int
    chunks_done: int
    chunks: int
    epoch: int  # epoch of the chunk in progress (0 between chunks)
    epochs: int
    fraction: float  # run-epochs trained / run-epochs asked for
    elapsed: float  # seconds
    eta: float | None  # seconds left, extrapolated from the run-epochs so far; None before the first epoch

    def line(self) -> str:
        eta = "" if self.eta is None else f", ETA {self.eta:.0f}s"
        chunk = min(self.chunks_done + 1, self.chunks)
        return f"{self.runs_done}/{self.runs_total} runs, chunk {chunk}/{self.chunks}, {self.elapsed:.1f}s{eta}"


@dataclass
class SweepResult:
    sweep: SweepSpec
    runs: list[RunSummary] = field(default_factory=list)  # finished runs (whole chunks), in arrival order
    complete: bool = False  # every chunk trained (False after a cancel: the finished chunks are kept)
    elapsed: float = 0.0

    def point_of(self, s: RunSummary) -> SweepPoint:
        a = None
        if self.sweep.axis == "lr":
            a = s.spec.optim.lr
        elif self.sweep.axis == "batch_size":
            a = s.spec.optim.batch_size
        return SweepPoint(s.spec.clip.strategy, s.spec.clip.threshold, s.spec.seed, a)


def run_sweep(
    sweep: SweepSpec,
    *,
    executor: Executor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    on_progress: Callable[[SweepProgress], None] | None = None,
    on_chunk: Callable[[SweepResult], None] | None = None,
    device: str = "auto",
) -> SweepResult:
    """Train the sweep chunk by chunk; on_chunk sees the partial result after each chunk (cancel from there)."""
    executor = executor or LocalExecutor(device)
    parallel = getattr(executor, "parallel", 1)  # the pool's workers (ChunkExecutor); in-process: 1
    chunks = [[point_spec(sweep, p) for p in c] for c in plan_chunks(sweep, chunk_size, parallel=parallel)]
    total = sum(len(c) for c in chunks)
    epochs = sweep.base.optim.epochs
    result, t0 = SweepResult(sweep), time.perf_counter()
    state = {"done": 0, "chunks": 0}

    def report(epoch: int, k_now: int) -> None:
        if on_progress is None:
            return
        el = time.perf_counter() - t0
        work = state["done"] * epochs + epoch * k_now
        eta = el * (total * epochs - work) / work if work else None
        frac = work / max(total * epochs, 1)
        on_progress(SweepProgress(state["done"], total, state["chunks"], len(chunks), epoch, epochs, frac, el, eta))

    report(0, 0)
    for _i, summaries in executor.map(chunks, lambda i, e, n: report(e, len(chunks[i]))):
        result.runs.extend(summaries)
        state["done"] += len(summaries)
        state["chunks"] += 1
        result.elapsed = time.perf_counter() - t0
        report(0, 0)
        if on_chunk is not None:
            on_chunk(result)
    result.complete = state["chunks"] == len(chunks)
    result.elapsed = time.perf_counter() - t0
    return result


@dataclass(frozen=True)
class SweepSnapshot:
    """What the sweep tab sees of a SweepJob at one moment; `result` is a copy (the finished chunks so far)."""

    job_id: int
    state: str  # one of clipviz.jobs.STATES
    queue_position: int | None  # 1 = starts next; None unless queued in a JobManager
    error: str | None  # "Type: message" when failed; the chunks finished before stay in result
    result: SweepResult
    progress: SweepProgress | None  # None before the worker's first report
    version: int  # grows on every change

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class SweepJob(BackgroundJob):
    """A sweep in a background thread for the dashboard: queued and capped by a JobManager like a comparison Job."""

    kind, what = "sweep", "a sweep"

    def __init__(
        self,
        sweep: SweepSpec,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        device: str = "auto",
        executor: Executor | None = None,  # default: chunks go to the server's executor (worker processes)
        on_done: Callable[[SweepSnapshot], None] | None = None,
    ):
        super().__init__(on_done)
        self.sweep, self.chunk_size = sweep, chunk_size
        if executor is None:
            from .executors import sweep_executor

            executor = sweep_executor(device)
        self.executor = executor
        self._result = SweepResult(sweep)
        self._progress: SweepProgress | None = None

    def snapshot(self) -> SweepSnapshot:
        return super().snapshot()

    def stop(self) -> None:
        """Stop soon: the chunk in progress is dropped, finished chunks stay in the result."""
        self.executor.cancel()
        super().stop()

    def _snapshot_locked(self) -> SweepSnapshot:
        r = self._result
        queued = self._queue_position if self._state == "queued" else None
        copy = SweepResult(r.sweep, list(r.runs), r.complete, r.elapsed)
        return SweepSnapshot(self.id, self._state, queued, self._error, copy, self._progress, self._version)

    def _train(self) -> str:
        def on_progress(p: SweepProgress) -> None:
            with self._cond:
                self._set_locked(progress=p)

        def on_chunk(r: SweepResult) -> None:  # kept as it lands: a later crash or stop keeps it
            with self._cond:
                self._set_locked(result=SweepResult(r.sweep, list(r.runs), r.complete, r.elapsed))

        res = run_sweep(
            self.sweep, executor=self.executor, chunk_size=self.chunk_size, on_progress=on_progress, on_chunk=on_chunk
        )
        with self._cond:
            self._set_locked(result=res)
        return "done" if res.complete else "stopped"
