"""The cost model: what a job will take (memory, work, sequential steps), checked before anything is allocated.

A link or a CLI flag can ask for any setup inside the per-field caps, and their product is what fills a
server: 100,000 rows x width 1,024 is fine field by field and needs hours. So every job is priced here from
its specs alone, with plain arithmetic, and refused with a message that names the cost, the cap and what to
lower. Estimates are upper-ish bounds measured against this engine (see the per-term comments); the
caps are `Caps` fields, overridable with CLIPVIZ_MAX_MEMORY_MB, CLIPVIZ_MAX_WORK, CLIPVIZ_MAX_STEPS and
CLIPVIZ_MAX_STEP_WORK. No torch here: the UI and the CLI price a setup without importing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .config import Caps, ConfigError, RunSpec, param_count

# gradient elements the engine buffers (per side, pre and post clip) before binning them into the
# value histograms: the buffer, not the epoch's steps x runs x parameters, bounds that memory
HIST_CHUNK = 1 << 22
_F32 = 4
_PY_FLOAT = 32  # a float in a Python list: 8-byte pointer + 24-byte object
_RECORD_FIXED = 2 * 61 * 36 + 2_000  # one EpochRecord: two value histograms as int lists + fields and dicts
_MB = 1024 * 1024
_SLACK = 32 * _MB  # allocator slack and torch's per-op workspaces (tests/test_bounds.py measures peak RSS)


@dataclass(frozen=True)
class DataShape:
    """What a dataset will hold, known from its spec before it is built."""

    rows: int  # train + validation rows
    features: int  # inputs per step the model sees
    seq_len: int  # time steps per row (1 for tabular data)
    n_train: int  # rows that train (the rest validate)


@dataclass(frozen=True)
class Cost:
    """A job's estimated price; each field is checked against its cap."""

    memory: int  # bytes: data, parameters and optimizer state, activations, per-epoch buffers, records
    work: int  # multiply-adds over the whole job: runs x train rows x epochs x parameters x seq_len
    steps: int  # sequential steps: epochs x minibatches x seq_len (what no batching can parallelise)
    step_work: int  # multiply-adds of one step: runs x batch x parameters x seq_len (bounds stop latency)


def data_shape(spec: RunSpec) -> DataShape | None:
    """The dataset's shape from its spec; None for a CSV (its shape is known only once it is read)."""
    d = spec.data
    if d.name == "csv":
        return None
    rows, feats, seq = d.n_samples, d.n_features, 1
    if d.name == "diabetes":
        rows, feats = 442, 10  # sklearn's bundled set
    elif d.name == "adding":
        feats, seq = 2, d.seq_len
    return DataShape(rows, feats, seq, max(1, int(rows * d.train_fraction)))


def estimate(specs: Sequence[RunSpec], shape: DataShape, *, histograms: bool = True, keep_records: bool = True) -> Cost:
    """Price K runs that train together (they share data, model and batching: see validate_runs)."""
    first, k = specs[0], len(specs)
    m, o = first.model, first.optim
    p = param_count(m, shape.features)
    steps_per_epoch = -(-shape.n_train // o.batch_size)
    batch = min(o.batch_size, shape.n_train)
    cells = shape.rows * shape.seq_len * shape.features
    seeds = len({s.seed for s in specs})
    # built in float64 (sklearn / numpy, one scaled copy), kept as float32, and shuffled once per epoch:
    # one copy when every run shares a seed, else a [K, N, ...] copy (each run its own minibatch order)
    data = cells * (8 * 2 + _F32) + (1 if seeds == 1 else k) * shape.n_train * shape.seq_len * shape.features * _F32
    slots = {"sgd": 1, "adam": 2, "rmsprop": 2}.get(o.name, 2)
    # parameters, optimizer state, and per step the gradient plus the clipper's and masking's [K, P] temporaries
    params = k * p * _F32 * (8 + slots)
    depth = 1 if m.kind == "rnn" else m.depth
    acts = k * batch * shape.seq_len * (m.width * depth + shape.features + 1) * _F32 * 4  # saved + their grads
    n_tensors = 6 if m.kind == "rnn" else 2 * m.depth + 2
    per_epoch = steps_per_epoch * k * (6 + n_tensors) * (_F32 + 8 + 8)  # device buffers, float64 copy, numpy
    # pre and post buffers (float32) and the binning pass's int64 indices and temporaries (~28 B an element)
    hist = 2 * min(HIST_CHUNK, steps_per_epoch * k * p) * 32 if histograms else 0
    records = o.epochs * k * (steps_per_epoch * 2 * _PY_FLOAT + _RECORD_FIXED) if keep_records else 0
    return Cost(
        memory=_SLACK + data + params + acts + per_epoch + hist + records,
        work=k * shape.n_train * o.epochs * p * shape.seq_len,
        steps=o.epochs * steps_per_epoch * shape.seq_len,
        step_work=k * batch * p * shape.seq_len,
    )


def _size(n: float) -> str:
    return f"{n / 1024**3:.3g} GB" if n >= 1024**3 else f"{n / _MB:.3g} MB"


def _count(n: float) -> str:
    for div, unit in ((1e12, " trillion"), (1e9, " billion"), (1e6, " million")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:,.0f}"


def check(cost: Cost, caps: Caps, k: int = 1) -> None:
    """Raise ConfigError naming the cost furthest over its cap, the cap, and what to lower."""
    runs = f" or runs (now {k})" if k > 1 else ""
    limit = caps.max_memory_mb * _MB
    over = [
        (
            cost.memory / limit,
            f"this setup needs ~{_size(cost.memory)} of memory; the server allows {_size(limit)} per job "
            f"(cap max_memory_mb): lower samples, features, width, epochs or batch count{runs}",
        ),
        (
            cost.step_work / caps.max_step_work,
            f"one training step needs ~{_count(cost.step_work)} multiply-adds; the server allows "
            f"{_count(caps.max_step_work)} (cap max_step_work, keeps Stop prompt): lower batch size, width{runs}",
        ),
        (
            cost.steps / caps.max_steps,
            f"this setup trains {_count(cost.steps)} sequential steps (epochs x minibatches x sequence length); "
            f"the server allows {_count(caps.max_steps)} (cap max_steps): lower epochs, samples or sequence "
            "length, or raise the batch size",
        ),
        (
            cost.work / caps.max_work,
            f"this setup needs ~{_count(cost.work)} multiply-adds of training (runs x samples x epochs x "
            f"parameters); the server allows {_count(caps.max_work)} per job (cap max_work): lower epochs, "
            f"samples, width{runs}",
        ),
    ]
    ratio, message = max(over, key=lambda o: o[0])
    if ratio > 1:
        raise ConfigError(message)


def check_runs(
    specs: Sequence[RunSpec],
    caps: Caps,
    shape: DataShape | None = None,
    *,
    histograms: bool = True,
    keep_records: bool = True,
) -> None:
    """Price and check K runs; `shape` defaults to the spec's (nothing to check for a CSV not yet read)."""
    shape = shape or data_shape(specs[0])
    if shape is not None:
        check(estimate(specs, shape, histograms=histograms, keep_records=keep_records), caps, len(specs))


def max_runs_within(
    spec: RunSpec, caps: Caps, shape: DataShape, *, histograms: bool = False, keep_records: bool = False
) -> int:
    """The most runs of `spec` (distinct seeds, the costlier case) one job may train; ConfigError if not even one."""
    check_runs([spec], caps, shape, histograms=histograms, keep_records=keep_records)

    def fits(k: int) -> bool:
        specs = [spec] * (k - 1) + [RunSpec(spec.data, spec.model, spec.optim, spec.clip, spec.seed + 1)]
        try:
            check_runs(specs, caps, shape, histograms=histograms, keep_records=keep_records)
        except ConfigError:
            return False
        return True

    lo, hi = 1, caps.max_runs  # cost grows with k: bisect on the arithmetic, nothing is built
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo
