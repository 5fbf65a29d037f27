"""Frozen run specifications, presets, caps and validation.

Everything the user can choose lands in one of these dataclasses; the engine,
the CLI and the dashboard pass them around instead of bags of arguments.
This module imports neither torch nor streamlit.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .strategies import NAMES as STRATEGIES
from .strategies import REGISTRY as _REGISTRY
from .strategies import canonical as _canonical

# what each strategy's single number means, and a sensible default for it (from the registry)
THRESHOLD_MEANING = {n: (s.threshold_meaning, s.default) for n, s in _REGISTRY.items()}
DATASETS = ("regression", "diabetes", "friedman1", "adding", "csv")
MODELS = ("mlp", "rnn")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "gelu", "linear")
INITS = ("he_uniform", "he_normal", "glorot_uniform", "glorot_normal", "torch_default")
OPTIMIZERS = ("sgd", "adam", "rmsprop")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A setting the user chose cannot run; the message says which and why, in plain words."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from exc
    if value <= 0:
        raise ConfigError(f"environment variable {name}={raw!r} must be positive")
    return value


@dataclass(frozen=True)
class Caps:
    """Limits that keep one job inside a shared machine. Owners override them with CLIPVIZ_* env vars."""

    max_runs: int = 512  # K: runs trained together in one job
    max_epochs: int = 1000
    max_params: int = 2_000_000  # parameters of one run's model
    max_total_params: int = 20_000_000  # K x parameters, bounds a job's memory
    max_rows: int = 100_000  # dataset rows (after loading a CSV)
    max_features: int = 1_000
    max_seq_len: int = 500
    max_depth: int = 64
    max_width: int = 1024
    max_upload_mb: int = 10
    max_jobs: int = field(default_factory=lambda: os.cpu_count() or 1)  # jobs training at once per server
    max_session_runs: int = 200  # runs kept per browser (its history) before the oldest unpinned are evicted
    history_ttl_days: int = 30  # stored unpinned runs older than this are deleted (a browser unseen that long: all)
    # the cost model (clipviz/cost.py) prices a whole job before anything is allocated:
    max_memory_mb: int = 1024  # estimated memory of one job: data, parameters, optimizer, buffers, records
    max_work: int = 200_000_000_000  # multiply-adds of one job; measured ~0.3 G/s on one core: ~10 min
    max_steps: int = 1_000_000  # sequential steps (epochs x minibatches x seq_len); ~1.5 ms each for an mlp
    max_step_work: int = 200_000_000  # multiply-adds of one step: bounds how long Stop waits (~0.5 s)

    @classmethod
    def from_env(cls) -> Caps:
        """Caps with each field overridable by CLIPVIZ_<FIELD> (e.g. CLIPVIZ_MAX_EPOCHS=300)."""
        base = cls()
        return replace(base, **{k: _env_int(f"CLIPVIZ_{k.upper()}", v) for k, v in asdict(base).items()})


@dataclass(frozen=True)
class DataSpec:
    name: str = "regression"  # one of DATASETS; the tutorial uses make_regression
    n_samples: int = 1000  # rows generated (regression, friedman1, adding)
    n_features: int = 20  # regression: input features; the tutorial has 20
    noise: float = 0.1  # regression/friedman1: std of gaussian noise on the target
    random_state: int = 1  # data seed, separate from the run seed: the tutorial fixes it to 1
    train_fraction: float = 0.5  # first fraction of rows trains, the rest validates (tutorial: 500/500)
    scale_x: bool = False  # standardise inputs with train-set mean/std
    scale_y: bool = False  # standardise the target: the textbook fix for this tutorial's explosion
    seq_len: int = 50  # adding problem: sequence length; longer = harder, the Pascanu et al. case
    csv_path: str | None = None  # csv: path of the uploaded/saved file
    target: str | None = None  # csv: target column name (default: the last column)


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "mlp"  # mlp, or rnn (Elman, tanh) for the sequence task
    width: int = 25  # hidden units per layer; tutorial: 25
    depth: int = 1  # hidden layers of the mlp (the rnn always has one recurrent layer); tutorial: 1
    activation: str = "relu"  # hidden activation of the mlp
    init: str = "he_uniform"  # hidden-layer init; the output layer uses glorot_uniform, Keras' default
    init_scale: float = 1.0  # multiplies the initial hidden weights (x10 makes deep nets explode)


@dataclass(frozen=True)
class OptimSpec:
    name: str = "sgd"  # sgd, adam, rmsprop, matching torch.optim's defaults otherwise
    lr: float = 0.01  # learning rate; tutorial 0.01
    momentum: float = 0.9  # sgd only; Keras' v=m*v-lr*g equals torch's form while lr is constant
    batch_size: int = 32  # last partial batch is kept, as Keras does
    epochs: int = 100


@dataclass(frozen=True)
class ClipSpec:
    strategy: str = "none"  # one of STRATEGIES
    threshold: float | None = None  # its one number (see THRESHOLD_MEANING); None for 'none'

    @property
    def label(self) -> str:
        if self.strategy == "none":
            return "none"
        return f"{self.strategy}:{self.threshold:g}"

    @classmethod
    def parse(cls, text: str) -> ClipSpec:
        """'none', 'value:5', 'norm:1', 'agc' (default threshold) -> ClipSpec, or ConfigError."""
        name, _, num = text.strip().lower().partition(":")
        name = _canonical(name)
        if name not in STRATEGIES:
            raise ConfigError(f"unknown clipping strategy {name!r}; choose from {', '.join(STRATEGIES)}")
        if name == "none":
            if num:
                raise ConfigError("'none' takes no threshold")
            return cls("none", None)
        if not num:
            return cls(name, THRESHOLD_MEANING[name][1])
        try:
            value = float(num)
        except ValueError as exc:
            raise ConfigError(f"threshold {num!r} of {name!r} is not a number") from exc
        spec = cls(name, value)
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown clipping strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        if self.strategy == "none":
            return
        t = self.threshold
        what = THRESHOLD_MEANING[self.strategy][0]
        if t is None or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ConfigError(f"{self.strategy} clipping needs a positive finite {what}, got {t!r}")
        top = _REGISTRY[self.strategy].max_threshold
        if top is not None and t > top:
            raise ConfigError(f"{self.strategy} {what} must be in (0, {top:g}], got {t:g}")


@dataclass(frozen=True)
class RunSpec:
    """One training run. K of these that share data, model and batching train together."""

    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    optim: OptimSpec = OptimSpec()
    clip: ClipSpec = ClipSpec()
    seed: int = 1  # initial weights and minibatch order; runs with equal seeds start identical
    label: str = ""  # shown in legends; defaults to the clip label (plus seed/lr when they vary)

    @property
    def name(self) -> str:
        return self.label or self.clip.label

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """Rebuild from to_dict() output (e.g. a JSON file loaded back); unknown keys are a ConfigError."""
        try:
            return cls(
                data=DataSpec(**d.get("data", {})),
                model=ModelSpec(**d.get("model", {})),
                optim=OptimSpec(**d.get("optim", {})),
                clip=ClipSpec(**d.get("clip", {})),
                seed=int(d.get("seed", 1)),
                label=str(d.get("label", "")),
            )
        except TypeError as exc:
            raise ConfigError(f"run spec has an unexpected field: {exc}") from exc


def _check_choice(value: Any, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose from {', '.join(choices)}")


def _check_range(value: Any, lo: float, hi: float, what: str, *, integer: bool = False, lo_open: bool = False) -> None:
    ok_type = isinstance(value, int) and not isinstance(value, bool) if integer else isinstance(value, (int, float))
    if not ok_type or (not integer and not math.isfinite(value)):
        raise ConfigError(f"{what} must be a {'whole' if integer else 'finite'} number, got {value!r}")
    if value < lo or (lo_open and value == lo) or value > hi:
        raise ConfigError(f"{what} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value:g}")


def param_count(model: ModelSpec, n_in: int) -> int:
    """Parameters of one run's model for n_in input features."""
    w = model.width
    if model.kind == "rnn":
        return n_in * w + w * w + 2 * w + w + 1
    sizes = [n_in] + [w] * model.depth + [1]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def _check_cap(value: Any, lo: int, cap: str, caps: Caps, what: str) -> None:
    """A whole number from lo up to the cap `cap` (a Caps field), with a message naming the cap."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{what} must be a whole number, got {value!r}")
    if value < lo:
        raise ConfigError(f"{what} must be at least {lo:,}, got {value:,}")
    if value > getattr(caps, cap):
        raise ConfigError(f"{what} {value:,} asked for, over the cap {cap}={getattr(caps, cap):,}")


def split_point(n: int, fraction: float) -> int:
    """First int(n * fraction) rows train, the rest validate; both parts must be non-empty."""
    n_train = int(n * fraction)
    if n_train < 1 or n - n_train < 1:
        need = next(m for m in range(2, 10**7) if 1 <= int(m * fraction) < m)
        raise ConfigError(
            f"{n:,} row{'s' if n != 1 else ''} cannot be split into train and validation with train fraction "
            f"{fraction:g}: at least {need:,} rows are needed"
        )
    return n_train


def data_width(d: DataSpec) -> int | None:
    """Input features per step that the spec alone implies; None for a CSV (its header says: data.input_dim)."""
    return {"adding": 2, "diabetes": 10, "csv": None}.get(d.name, d.n_features)


def check_data(d: DataSpec, caps: Caps | None = None) -> None:
    """The one place data settings are checked: validate_run and data.load_dataset both call it."""
    caps = caps or Caps.from_env()
    _check_choice(d.name, DATASETS, "dataset")
    # only the fields the dataset uses: a CSV's own rows and columns are capped when it is read
    if d.name in ("regression", "friedman1", "adding"):
        _check_cap(d.n_samples, 4, "max_rows", caps, "number of samples (n_samples)")
    if d.name in ("regression", "friedman1"):
        _check_cap(d.n_features, 1, "max_features", caps, "number of features (n_features)")
    if d.name == "adding":
        _check_cap(d.seq_len, 2, "max_seq_len", caps, "sequence length (seq_len)")
    _check_range(d.noise, 0, 1e6, "noise")
    _check_range(d.train_fraction, 0.05, 0.95, "train fraction")
    _check_range(d.random_state, 0, 2**32 - 1, "data seed (random_state)", integer=True)  # numpy's bound
    if d.name == "friedman1" and d.n_features < 5:
        raise ConfigError(f"friedman1 needs at least 5 features (its formula uses x0..x4), got {d.n_features}")
    if d.name in ("regression", "friedman1", "adding"):  # their row count is n_samples
        split_point(d.n_samples, d.train_fraction)
    if d.name == "csv" and not d.csv_path:
        raise ConfigError("the csv dataset needs a file: upload one first")


def validate_run(spec: RunSpec, caps: Caps | None = None, n_in: int | None = None) -> None:
    """Raise ConfigError naming the first setting that cannot run (or that passes a cap).

    n_in: the loaded dataset's input width; without it the width the data spec implies (a CSV's
    parameter count is then checked once the file is read: the engine passes n_in).
    """
    caps = caps or Caps.from_env()
    d, m, o = spec.data, spec.model, spec.optim
    check_data(d, caps)
    _check_choice(m.kind, MODELS, "model")
    if (m.kind == "rnn") != (d.name == "adding"):
        raise ConfigError("the rnn model trains on the sequence (adding) task, and only the rnn does")
    _check_range(m.width, 1, caps.max_width, "width (cap max_width)", integer=True)
    _check_range(m.depth, 1, caps.max_depth, "depth (cap max_depth)", integer=True)
    _check_choice(m.activation, ACTIVATIONS, "activation")
    _check_choice(m.init, INITS, "initialisation")
    _check_range(m.init_scale, 0, 1e6, "init scale", lo_open=True)
    _check_choice(o.name, OPTIMIZERS, "optimizer")
    _check_range(o.lr, 0, 1e6, "learning rate", lo_open=True)
    _check_range(o.momentum, 0, 0.999999, "momentum")
    _check_range(o.batch_size, 1, caps.max_rows, "batch size", integer=True)
    _check_range(o.epochs, 1, caps.max_epochs, "epochs (cap max_epochs)", integer=True)
    _check_range(spec.seed, 0, 2**31 - 1, "seed", integer=True)
    spec.clip.validate()
    n_in = data_width(d) if n_in is None else n_in
    if n_in is not None and param_count(m, n_in) > caps.max_params:
        raise ConfigError(
            f"model has {param_count(m, n_in):,} parameters ({n_in:,} inputs), over the cap max_params={caps.max_params:,}"
        )


def validate_runs(
    specs: list[RunSpec] | tuple[RunSpec, ...],
    caps: Caps | None = None,
    n_in: int | None = None,
    *,
    histograms: bool = True,  # the job bins value histograms (the comparison view does; sweeps do not)
    keep_records: bool = True,  # the caller keeps every EpochRecord (a sweep keeps only summaries)
) -> None:
    """Validate K runs that will train in lockstep: each valid, all sharing data, model and batching, and
    the whole job within the cost caps (clipviz/cost.py; a CSV is priced once read, by the engine).

    n_in: the loaded dataset's input width (see validate_run); the engine passes it once the data is loaded.
    """
    caps = caps or Caps.from_env()
    if not specs:
        raise ConfigError("nothing to train: choose at least one clipping strategy")
    if len(specs) > caps.max_runs:
        raise ConfigError(f"{len(specs)} runs asked for, over the cap max_runs={caps.max_runs}")
    for s in specs:
        validate_run(s, caps, n_in)
    first = specs[0]
    for s in specs[1:]:
        if s.data != first.data or s.model != first.model:
            raise ConfigError("runs trained together must share the dataset and the model")
        if (s.optim.name, s.optim.batch_size, s.optim.epochs) != (
            first.optim.name,
            first.optim.batch_size,
            first.optim.epochs,
        ):
            raise ConfigError("runs trained together must share optimizer, batch size and epochs")
    n_in = data_width(first.data) if n_in is None else n_in
    if n_in is None:
        return
    total = len(specs) * param_count(first.model, n_in)
    if total > caps.max_total_params:
        raise ConfigError(
            f"{len(specs)} runs x {param_count(first.model, n_in):,} parameters = {total:,}, "
            f"over the cap max_total_params={caps.max_total_params:,}"
        )
    from .cost import check_runs  # cost imports this module

    check_runs(specs, caps, histograms=histograms, keep_records=keep_records)


# the Keras article's setup; its three runs are the clip list below
TUTORIAL = RunSpec()
TUTORIAL_CLIPS = (ClipSpec("none"), ClipSpec("value", 5.0), ClipSpec("norm", 1.0))

PRESETS: dict[str, RunSpec] = {
    "tutorial": TUTORIAL,
    "tutorial-scaled": replace(TUTORIAL, data=replace(TUTORIAL.data, scale_y=True)),
    "diabetes": RunSpec(data=DataSpec(name="diabetes", scale_x=True), optim=OptimSpec(lr=0.01, epochs=100)),
    "friedman1": RunSpec(data=DataSpec(name="friedman1", n_features=10), optim=OptimSpec(lr=0.01, epochs=100)),
    "deep-mlp": RunSpec(
        model=ModelSpec(width=16, depth=12, activation="relu", init_scale=2.0), optim=OptimSpec(lr=0.01, epochs=50)
    ),
    "adding-rnn": RunSpec(
        data=DataSpec(name="adding", n_samples=2000, seq_len=50),
        model=ModelSpec(kind="rnn", width=32, init="glorot_uniform", init_scale=3.0),
        optim=OptimSpec(lr=0.05, momentum=0.9, epochs=30),
    ),
}


def with_clips(
    base: RunSpec, clips: list[ClipSpec] | tuple[ClipSpec, ...], seeds: tuple[int, ...] = (1,)
) -> list[RunSpec]:
    """The K runs of a comparison: every clip for every seed, all else from base."""
    multi = len(seeds) > 1
    return [
        replace(base, clip=c, seed=s, label=f"{c.label} seed={s}" if multi else c.label) for c in clips for s in seeds
    ]
