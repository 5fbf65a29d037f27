"""Widgets -> plain values -> list[RunSpec]. Every widget is bound to the URL, so a link reproduces a setup.

One table (`widget_table`) says what each widget is: the sidebar draws from it, presets and lessons
write into it, and `audit_url` checks a link's raw parameters against it. Streamlit silently drops a URL
value a widget cannot take; we say which one and why, and validate_runs checks the whole setup again.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import math
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, replace
from typing import Any

import streamlit as st
import torch

from ..config import (
    ACTIVATIONS,
    DATASETS,
    INITS,
    OPTIMIZERS,
    PRESETS,
    STRATEGIES,
    THRESHOLD_MEANING,
    TUTORIAL_CLIPS,
    Caps,
    ClipSpec,
    ConfigError,
    DataSpec,
    ModelSpec,
    OptimSpec,
    RunSpec,
    validate_runs,
    with_clips,
)
from ..data import input_dim, read_csv_table
from ..strategies import REGISTRY
from ..text import quote

# log-scale slider range of each strategy's one number (the registry's; the tutorial's values sit on the grid)
THRESHOLD_RANGES = {n: s.slider for n, s in REGISTRY.items() if s.slider is not None}
SPEEDS = ("1", "2", "5", "10", "20", "50", "max")  # playback, epochs per second
ADVANCED = "advanced"  # section hidden in classroom mode
CUSTOM = "(custom)"  # the preset box when the controls hold no preset's setup


def log_options(lo: float, hi: float, per_decade: int = 10) -> tuple[float, ...]:
    """Log-spaced values from lo to hi, two significant digits: 1, 1.3, 1.6, 2, 2.5, 3.2, 4, 5, 6.3, 7.9, 10."""
    k0, k1 = math.ceil(math.log10(lo) * per_decade - 1e-9), math.floor(math.log10(hi) * per_decade + 1e-9)
    vals = {float(f"{10 ** (k / per_decade):.2g}") for k in range(k0, k1 + 1)} | {lo, hi}
    return tuple(sorted(vals))


def thr_key(strategy: str) -> str:
    return "thr_" + strategy.replace("-", "_")


def fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Widget:
    label: str
    kind: str  # select, multi, options (select_slider), int (slider), float (slider), toggle, number
    default: Any
    options: tuple = ()
    lo: float = 0
    hi: float = 0
    step: float = 1
    section: str = "main"  # main, data, training, model; ADVANCED ones hide in classroom mode
    help: str | None = None


def _pow2(hi: int, extra: tuple[int, ...] = ()) -> tuple[int, ...]:
    return tuple(sorted({2**i for i in range(int(math.log2(hi)) + 1)} | {v for v in extra if v <= hi}))


@functools.cache
def widget_table(caps: Caps) -> dict[str, Widget]:
    d, m, o = DataSpec(), ModelSpec(), OptimSpec()
    t: dict[str, Widget] = {
        "strategies": Widget("Clipping strategies", "multi", [c.strategy for c in TUTORIAL_CLIPS], STRATEGIES,
                             help="trained side by side, one batched job; same data, same initial weights"),
    }  # fmt: skip
    for s, (lo, hi) in THRESHOLD_RANGES.items():
        what, default = THRESHOLD_MEANING[s]
        t[thr_key(s)] = Widget(f"{s}: {what}", "options", default, log_options(lo, hi))
    rows = _pow2(caps.max_rows, (100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000))
    t |= {
        "scale_y": Widget("Scale the target (the textbook fix)", "toggle", d.scale_y,
                          help="standardise y with train mean/std: the real cure for this explosion"),
        "dataset": Widget("Dataset", "select", d.name, DATASETS, section="data",
                          help="adding = the sequence task of Pascanu et al.; it trains an RNN"),
        "n_samples": Widget("Samples", "options", d.n_samples, tuple(v for v in rows if v >= 4), section="data"),
        "n_features": Widget("Features", "int", d.n_features, lo=1, hi=min(caps.max_features, 200), section="data"),
        "noise": Widget("Noise on the target", "options", d.noise, (0.0, *log_options(0.01, 100, 4)), section="data"),
        "seq_len": Widget("Sequence length", "int", d.seq_len, lo=2, hi=caps.max_seq_len, section="data"),
        "scale_x": Widget("Scale the inputs", "toggle", d.scale_x, section="data"),
        "lr": Widget("Learning rate", "options", o.lr, log_options(1e-5, 1.0)),
        "epochs": Widget("Epochs", "int", o.epochs, lo=1, hi=caps.max_epochs),
        "optimizer": Widget("Optimizer", "select", o.name, OPTIMIZERS, section=ADVANCED),
        "momentum": Widget("Momentum (sgd)", "float", o.momentum, lo=0.0, hi=0.99, step=0.01, section=ADVANCED),
        "batch_size": Widget("Batch size", "options", o.batch_size, _pow2(1024), section=ADVANCED),
        "seed": Widget("Seed", "number", 1, lo=0, hi=2**31 - 1, section=ADVANCED),
        "n_seeds": Widget("Seeds per setting", "int", 1, lo=1, hi=10, section=ADVANCED,
                          help="repeat each run with consecutive seeds: the charts show median and spread"),
        "depth": Widget("Hidden layers", "int", m.depth, lo=1, hi=caps.max_depth, section=ADVANCED),
        "width": Widget("Units per layer", "options", m.width, _pow2(caps.max_width, (25,)), section=ADVANCED),
        "activation": Widget("Activation", "select", m.activation, ACTIVATIONS, section=ADVANCED),
        "init": Widget("Initialisation", "select", m.init, INITS, section=ADVANCED),
        "init_scale": Widget("Init scale", "options", m.init_scale, log_options(0.1, 10), section=ADVANCED),
    }  # fmt: skip
    if torch.cuda.is_available():
        t["device"] = Widget("Device", "select", "cpu", ("cpu", "cuda"), section=ADVANCED)
    return t


# ---- drawing --------------------------------------------------------------------------------------
def _draw(key: str, w: Widget, disabled: bool = False) -> Any:
    # no bind="query-params": sync_url writes the link from the values, so every widget round-trips the same
    # way (Streamlit's binding missed values set by presets and by widgets in collapsed expanders)
    kw = dict(key=key, persist_state="session", help=w.help, disabled=disabled)
    # a preset or lesson may have just set the value through session state: then that value, not the default
    w = replace(w, default=None) if key in st.session_state and w.kind == "multi" else w
    if w.kind == "options":  # an exact value from a preset, a link or a sweep point joins the grid: no snapping
        w = replace(w, options=with_value(w.options, st.session_state.get(key)))
    if w.kind == "select":
        return st.selectbox(w.label, w.options, index=w.options.index(w.default), **kw)
    if w.kind == "multi":
        return st.multiselect(w.label, w.options, default=w.default, **kw)
    if w.kind == "options":
        return st.select_slider(w.label, w.options, value=w.default, format_func=fmt, **kw)
    if w.kind == "int":
        return st.slider(w.label, int(w.lo), int(w.hi), int(w.default), **kw)
    if w.kind == "float":
        return st.slider(w.label, float(w.lo), float(w.hi), float(w.default), step=w.step, **kw)
    if w.kind == "toggle":
        return st.toggle(w.label, value=w.default, **kw)
    return st.number_input(w.label, int(w.lo), int(w.hi), int(w.default), step=1, **kw)


def with_value(options: tuple, value: Any) -> tuple:
    """The options, plus `value` in its place if it is a number inside their range and not one of them."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value in options:
        return options
    if not (math.isfinite(value) and min(options) <= value <= max(options)):
        return options
    return tuple(sorted((*options, value)))


def loaded_preset(values: dict[str, Any]) -> str:
    """The preset whose data, model, optimizer and seed the values equal (clips and seeds aside), or CUSTOM."""
    for name, spec in PRESETS.items():
        want = spec_state(spec, clips=())
        if all(values.get(k) == val for k, val in want.items() if k not in ("strategies", "n_seeds")):
            return name
    return CUSTOM


def render_controls(caps: Caps, classroom: bool) -> dict[str, Any]:
    """Draw the setup widgets (call inside st.sidebar); returns {key: value} for build_runs."""
    table = widget_table(caps)
    v: dict[str, Any] = {k: st.session_state.get(k, w.default) for k, w in table.items()}
    # the box shows the preset the controls hold now (so a loaded preset stays visible until a value changes)
    st.session_state.preset = loaded_preset(v)
    st.selectbox("Preset", [CUSTOM, *PRESETS], key="preset", on_change=_on_preset,
                 help="load a ready-made setup into the controls; (custom) once a value differs")  # fmt: skip
    v["strategies"] = _draw("strategies", table["strategies"])
    with st.container(key="thresholds"):  # a fixed slot: the widgets below keep their places (and expanders)
        for s in v["strategies"]:
            if s != "none":
                v[thr_key(s)] = _draw(thr_key(s), table[thr_key(s)])
    v["scale_y"] = _draw("scale_y", table["scale_y"])
    v["lr"] = _draw("lr", table["lr"])
    v["epochs"] = _draw("epochs", table["epochs"])
    if classroom:
        st.caption("Classroom mode: advanced settings hidden (they keep their values).")
        return v
    # keyed expanders: a stable identity, so loading a preset does not collapse an open one
    with st.expander("Data", expanded=False, key="exp_data"):
        v["dataset"] = _draw("dataset", table["dataset"])
        name = v["dataset"]
        v["n_samples"] = _draw("n_samples", table["n_samples"], disabled=name in ("diabetes", "csv"))
        v["n_features"] = _draw("n_features", table["n_features"], disabled=name not in ("regression", "friedman1"))
        v["noise"] = _draw("noise", table["noise"], disabled=name not in ("regression", "friedman1"))
        v["seq_len"] = _draw("seq_len", table["seq_len"], disabled=name != "adding")
        v["scale_x"] = _draw("scale_x", table["scale_x"])
        st.file_uploader("CSV file (numeric columns, header row)", type=["csv", "txt", "tsv"], key="csv_file",
                         max_upload_size=upload_limit_mb(caps), on_change=_on_upload,
                         help=f"up to {caps.max_upload_mb} MB; the last column is the target unless you name one")  # fmt: skip
        v["csv_target"] = st.text_input("Target column (csv)", key="csv_target", placeholder="last column")
    with st.expander("Training", expanded=False, key="exp_training"):
        for k in ("optimizer", "momentum", "batch_size", "seed", "n_seeds", "device"):
            if k in table:
                v[k] = _draw(k, table[k], disabled=k == "momentum" and v["optimizer"] != "sgd")
        if "device" not in table:
            st.caption("Device: CPU (no CUDA GPU on this server)")
    with st.expander("Model", expanded=False, key="exp_model"):
        st.caption("RNN (Elman, tanh) for the adding task; MLP otherwise.")
        for k in ("depth", "width", "activation", "init", "init_scale"):
            v[k] = _draw(k, table[k])
    return v


# ---- values -> specs ------------------------------------------------------------------------------
def build_runs(v: dict[str, Any], csv_path: str | None, caps: Caps, n_seeds: int | None = None) -> list[RunSpec]:
    """The K runs of the comparison the controls describe (n_seeds overrides the widget for a one-off job);
    ConfigError names what cannot run."""
    name = v["dataset"]
    data = DataSpec(name=name, n_samples=v["n_samples"], n_features=v["n_features"], noise=float(v["noise"]),
                    seq_len=v["seq_len"], scale_x=bool(v["scale_x"]), scale_y=bool(v["scale_y"]),
                    csv_path=csv_path if name == "csv" else None,
                    target=(v.get("csv_target") or None) if name == "csv" else None)  # fmt: skip
    model = ModelSpec(kind="rnn" if name == "adding" else "mlp", width=v["width"], depth=v["depth"],
                      activation=v["activation"], init=v["init"], init_scale=float(v["init_scale"]))  # fmt: skip
    optim = OptimSpec(name=v["optimizer"], lr=float(v["lr"]), momentum=float(v["momentum"]),
                      batch_size=v["batch_size"], epochs=v["epochs"])  # fmt: skip
    clips = [ClipSpec(s, None if s == "none" else float(v[thr_key(s)])) for s in v["strategies"]]
    seed, n = int(v["seed"]), int(n_seeds or v["n_seeds"])
    runs = with_clips(RunSpec(data, model, optim), clips, tuple(range(seed, seed + n)))
    validate_runs(runs, caps, n_in=input_dim(data))  # a CSV's real width (its header), not n_features
    return runs


def device_of(v: dict[str, Any]) -> str:
    return v.get("device", "cpu")


def speed_of(choice: str) -> float | None:
    return None if choice == "max" else float(choice)


# ---- presets, lessons and links -----------------------------------------------------------------
def _snap(value: Any, w: Widget) -> Any:
    """The value, clamped into the widget's range. A value between the log grid's points is kept exactly
    (_draw adds it to the options): a preset loaded in the UI trains what `--preset` trains."""
    if w.kind == "options" and value not in w.options:
        lo, hi = min(w.options), max(w.options)
        return type(w.default)(min(max(value, lo), hi))
    if w.kind in ("int", "float"):
        return type(w.default)(min(max(value, w.lo), w.hi))
    return value


def spec_state(spec: RunSpec, clips: tuple[ClipSpec, ...] = TUTORIAL_CLIPS, n_seeds: int = 1) -> dict[str, Any]:
    """Widget values that reproduce `spec` with these clips."""
    d, m, o = spec.data, spec.model, spec.optim
    raw = dict(dataset=d.name, n_samples=d.n_samples, n_features=d.n_features, noise=d.noise, seq_len=d.seq_len,
               scale_x=d.scale_x, scale_y=d.scale_y, lr=o.lr, epochs=o.epochs, optimizer=o.name,
               momentum=o.momentum, batch_size=o.batch_size, seed=spec.seed, n_seeds=n_seeds, depth=m.depth,
               width=m.width, activation=m.activation, init=m.init, init_scale=m.init_scale,
               strategies=list(dict.fromkeys(c.strategy for c in clips)))  # fmt: skip
    raw |= {thr_key(c.strategy): c.threshold for c in clips if c.strategy != "none"}
    table = widget_table(Caps.from_env())
    return {k: _snap(val, table[k]) for k, val in raw.items() if k in table}


def load_setup(spec: RunSpec, clips: tuple[ClipSpec, ...] = TUTORIAL_CLIPS, n_seeds: int = 1, start=False) -> None:
    """Put a setup into the controls (call from an on_click/on_change callback); start=True trains it.

    n_seeds > 1 is a one-off: that job trains n seeds, the 'Seeds per setting' control is set to 1 and later
    jobs train one seed again (it needs start=True to mean anything)."""
    st.session_state.update(spec_state(spec, clips, 1))
    if start:
        st.session_state.autostart = True
        if n_seeds > 1:
            st.session_state.oneoff_seeds = n_seeds


def _on_preset() -> None:
    name = st.session_state.get("preset")
    if name in PRESETS:
        load_setup(PRESETS[name])


def _on_upload() -> None:
    if st.session_state.get("csv_file") is not None:  # a file was just chosen: train on it
        st.session_state.dataset = "csv"


# widgets bound to the URL outside the sidebar's table: the link audit checks them too
BOUND_ELSEWHERE = {"classroom": Widget("Classroom", "toggle", False)}
MAX_URL_PROBLEMS = 10  # messages shown for one link; the rest are counted


def url_rejects(params: dict[str, list[str]], caps: Caps) -> list[tuple[str, str | None, str]]:
    """(key, rejected raw value, or None for every value of the key, message) for each link value a
    widget cannot take. Streamlit would drop most silently, and a few (seed=inf) crash the widget."""
    table, out = widget_table(caps) | BOUND_ELSEWHERE, []
    for key, values in params.items():
        w = table.get(key)
        if w is None:
            continue
        if w.kind != "multi" and len(values) > 1:
            shown = ", ".join(quote(v, 20) for v in values[:5]) + (", …" if len(values) > 5 else "")
            msg = f"Link parameter {key} was given {len(values)} times ({shown}); a link sets it once. Using {fmt(w.default)}."
            out.append((key, None, msg))
            continue
        for raw in values:
            if w.kind == "multi" and raw == "":  # the empty selection (see url_params)
                continue
            if not _url_ok(raw, w):
                using = "the others are kept" if w.kind == "multi" else f"using {fmt(w.default)}"
                out.append((key, raw, f"Link parameter {key}={quote(raw)} was ignored: {_url_rule(w)}; {using}."))
    if "device" in params and "device" not in table and any(v != "cpu" for v in params["device"]):
        out.append(("device", None, "Link parameter device was ignored: this server has no CUDA GPU. Using the CPU."))
    return out


def audit_url(params: dict[str, list[str]], caps: Caps) -> list[str]:
    """Messages for link parameters a widget cannot take, at most MAX_URL_PROBLEMS lines (plain text)."""
    msgs = [m for _, _, m in url_rejects(params, caps)]
    if len(msgs) > MAX_URL_PROBLEMS:
        msgs = msgs[: MAX_URL_PROBLEMS - 1] + [f"… and {len(msgs) - MAX_URL_PROBLEMS + 1:,} more link problems."]
    return msgs


def sanitize_url(caps: Caps) -> list[str]:
    """Audit the page's link and drop what no widget may take from st.query_params, before any widget reads
    it (a bound widget reads its URL value when first drawn: seed=inf would raise inside number_input)."""
    params = {k: st.query_params.get_all(k) for k in st.query_params}
    rejects = url_rejects(params, caps)
    for key in dict.fromkeys(k for k, _, _ in rejects):
        bad = {raw for k, raw, _ in rejects if k == key}
        keep = [] if None in bad else [v for v in params[key] if v not in bad]
        if keep:
            st.query_params[key] = keep
        else:
            del st.query_params[key]
        _unseed(key, keep)
    return audit_url(params, caps)


def _unseed(key: str, keep: list[str]) -> None:
    """Make the widget seed from the cleaned value, not the link's raw one.

    Streamlit 1.67 seeds a bound widget from a snapshot of the link taken at the start of the run
    (QueryParams._initial_query_params), which st.query_params edits do not reach; and its seeding
    catches ValueError/TypeError/IndexError but not number_input's OverflowError (seed=inf). No public
    API edits that snapshot, so the private field is edited here, guarded: the test_bounds link tests
    fail if a Streamlit upgrade moves it.
    """
    from streamlit.runtime.state import get_session_state

    with get_session_state().query_params() as qp:
        initial = getattr(qp, "_initial_query_params", None)
        if isinstance(initial, dict):
            if keep:
                initial[key] = list(keep)
            else:
                initial.pop(key, None)


def _url_ok(raw: str, w: Widget) -> bool:
    return _url_value(raw, w) is not None


def url_state(params: dict[str, list[str]], caps: Caps) -> dict[str, Any]:
    """The widget values a link sets (the values url_rejects accepts), ready for st.session_state."""
    table, values = widget_table(caps), {}
    for key, raws in params.items():
        w = table.get(key)
        if w is None or (w.kind != "multi" and len(raws) > 1):  # given twice: the default (url_rejects says so)
            continue
        parsed = [_url_value(r, w) for r in raws if not (w.kind == "multi" and r == "")]
        parsed = [x for x in parsed if x is not None]
        if w.kind == "multi":
            if parsed or all(r == "" for r in raws):
                values[key] = list(dict.fromkeys(parsed))
        elif parsed:
            values[key] = parsed[0]
    return values


def _url_value(raw: str, w: Widget) -> Any:
    """The value a link's raw text means for this widget, or None when the widget cannot take it."""
    if w.kind in ("select", "multi"):
        return next((o for o in w.options if fmt(o) == raw), None)
    if w.kind == "toggle":
        return {"true": True, "false": False}.get(raw.lower())
    if w.kind == "options":  # any number inside the slider's range: _draw adds it to the grid
        lo, hi, integer = min(w.options), max(w.options), isinstance(w.default, int)
    else:
        lo, hi, integer = w.lo, w.hi, w.kind != "float"
    if integer and not re.fullmatch(r"[+-]?[0-9]{1,12}", raw.strip()):
        return None  # whole numbers as digits: '1e400', 'inf', '5.0' are not what an int widget parses
    try:
        x = float(raw)
    except ValueError:
        return None
    if not (math.isfinite(x) and lo <= x <= hi):
        return None
    return int(x) if integer else x


def _url_rule(w: Widget) -> str:
    if w.kind in ("select", "multi"):
        return f"{w.label.lower()} must be one of {', '.join(map(str, w.options))}"
    if w.kind == "options":
        what = "whole number" if isinstance(w.default, int) else "number"
        return f"{w.label.lower()} must be a {what} from {fmt(min(w.options))} to {fmt(max(w.options))}"
    if w.kind == "toggle":
        return f"{w.label.lower()} must be true or false"
    if w.kind == "float":
        return f"{w.label.lower()} must be a number in [{w.lo:g}, {w.hi:g}]"
    return f"{w.label.lower()} must be a whole number from {int(w.lo)} to {int(w.hi)}"


def _url_text(v: Any) -> str:
    """A value as link text that reads back exactly (floats: short when that is exact, else repr)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        short = f"{v:g}"
        return short if float(short) == v else repr(v)
    return str(v)


def url_params(values: dict[str, Any], caps: Caps) -> dict[str, list[str]]:
    """The link parameters of these widget values: every value that differs from its widget's default."""
    out = {}
    for key, w in widget_table(caps).items():
        v = values.get(key, w.default)
        if v == w.default:
            continue
        out[key] = [_url_text(x) for x in v] or [""] if w.kind == "multi" else [_url_text(v)]
    return out


def sync_url(values: dict[str, Any], caps: Caps) -> None:
    """Write the run-defining values into the page's URL (full script runs only), so a link reproduces them."""
    want = url_params(values, caps)
    for key in widget_table(caps):
        have = st.query_params.get_all(key)
        if key in want and have != want[key]:
            st.query_params[key] = want[key] if len(want[key]) > 1 else want[key][0]
        elif key not in want and have:
            del st.query_params[key]


# ---- csv upload ---------------------------------------------------------------------------------
_UPLOADS = os.path.join(tempfile.gettempdir(), f"clipviz_uploads_{os.getpid()}")  # this server's, removed at exit
MAX_SAVED_UPLOADS = 16  # validated uploads kept on disk (jobs read them by path); the oldest go first


def upload_limit_mb(caps: Caps) -> int:
    """The file uploader's own limit: above the cap, so clipviz's check (one message, naming the cap) sees
    files a little too big; Streamlit's browser-side MB are 10^6 bytes, its server's maxUploadSize MiB,
    and the server refuses above that, so the limit never exceeds it."""
    return max(1, min(2 * caps.max_upload_mb + 1, int(st.get_option("server.maxUploadSize"))))


def _save_csv(data: bytes, digest: str, caps: Caps) -> str:
    """Validate the bytes (ConfigError names the line and column) and save them for the jobs to read."""
    read_csv_table(data, caps)
    os.makedirs(_UPLOADS, exist_ok=True)
    path = os.path.join(_UPLOADS, digest[:20] + ".csv")
    if not os.path.exists(path):
        with open(path, "wb") as fh:
            fh.write(data)
        saved = sorted((os.path.join(_UPLOADS, n) for n in os.listdir(_UPLOADS)), key=os.path.getmtime)
        for old in saved[:-MAX_SAVED_UPLOADS]:  # bounded disk use; a job already loaded its data
            with contextlib.suppress(OSError):
                os.remove(old)
    return path


@functools.cache
def _checked_uploads() -> dict[tuple[str, Caps], tuple[str | None, str | None]]:
    """(content hash, caps) -> (saved path, None) or (None, error): a file is parsed once, accepted or not."""
    atexit.register(shutil.rmtree, _UPLOADS, True)  # the uploads go with the server process
    return {}


_uploads_lock = threading.Lock()  # script threads of several sessions share the verdicts


def uploaded_csv(caps: Caps) -> str | None:
    """Path of the uploaded CSV once it validates; ConfigError for a bad file, None when there is none."""
    f = st.session_state.get("csv_file")
    if f is None:
        return None
    if f.size > caps.max_upload_mb * 1024 * 1024:
        raise ConfigError(f"the file is {f.size / 2**20:.2f} MB, over the cap max_upload_mb={caps.max_upload_mb}")
    data = f.getvalue()
    key = (hashlib.sha256(data).hexdigest(), caps)
    with _uploads_lock:
        cache = _checked_uploads()
        if key not in cache or (cache[key][0] is not None and not os.path.exists(cache[key][0])):
            try:  # new, or its saved copy was evicted from disk since
                cache[key] = (_save_csv(data, key[0], caps), None)
            except ConfigError as exc:
                cache[key] = (None, str(exc))
            while len(cache) > 64:  # bounded: the oldest verdicts go first
                cache.pop(next(iter(cache)))
        path, error = cache[key]
    if error is not None:
        raise ConfigError(error)
    return path
