"""The sweep tab: widgets -> SweepSpec -> a SweepJob in the server's JobManager -> a polling fragment draws it.

The sweep is submitted like a comparison job (same slots, same FIFO queue, 'queued, position n' while it
waits; one sweep per session next to its comparison job), and its worker (clipviz.sweep.SweepJob)
trains; this module only reads its snapshot. Results fill in chunk by chunk, so the charts appear while
the sweep is still training; a failed or stopped sweep keeps the chunks it finished.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import pandas as pd
import streamlit as st

from clipviz.config import ConfigError, RunSpec
from clipviz.jobs import JobBusy, get_manager
from clipviz.sweep import (
    DEFAULT_RANGES,
    METRICS,
    SWEEP_STRATEGIES,
    LogRange,
    SweepJob,
    SweepResult,
    SweepSnapshot,
    make_sweep,
    plan_chunks,
    point_spec,
)
from clipviz.sweep_report import dumps, heuristics, to_frame
from clipviz.text import md_escape, quote
from clipviz.ui import sweep_charts
from clipviz.ui.state import TABS, session_id

UI_CHUNK = 128  # smaller chunks than the CLI's: partial results show sooner, for a little throughput
_SAME_SCALE = ("value", "norm", "tensor-norm")  # thresholds on a gradient scale share the main range


def _read_form(base: RunSpec, thresholds: str, seeds: int, strategies: tuple[str, ...]):
    """Draw the sweep's widgets; return a validated SweepSpec, or None after showing the problem."""
    c = st.columns([2.2, 1.6, 0.8, 1.3, 1.6])
    chosen = c[0].multiselect(
        "Strategies",
        SWEEP_STRATEGIES,
        default=list(strategies),
        key="sw_strategies",
        help="the no-clipping baseline always runs too",
    )
    rng = c[1].text_input(
        "Thresholds MIN:MAX:COUNT (log-spaced)",
        thresholds,
        key="sw_thresholds",
        help="for value, norm and tensor-norm; agc, autoclip and zclip use their own scales",
    )
    n_seeds = c[2].number_input("Seeds", 1, 20, seeds, key="sw_seeds", help="medians and IQR are over seeds")
    axis = c[3].selectbox("Second axis", ["none", "learning rate", "batch size"], key="sw_axis")
    axis_text = ""
    if axis == "learning rate":
        axis_text = c[4].text_input("Learning rates MIN:MAX:COUNT", "0.001:1:7", key="sw_lrs")
    elif axis == "batch size":
        axis_text = c[4].text_input("Batch sizes B1,B2,...", "8,16,32,64,128", key="sw_bs")
    others = [s for s in chosen if s not in _SAME_SCALE]
    if others:
        st.caption("Own scales: " + ", ".join(f"{s} {DEFAULT_RANGES[s].lo:g}:{DEFAULT_RANGES[s].hi:g}" for s in others))
    try:
        main = LogRange.parse(rng)
        ranges = {s: main if s in _SAME_SCALE else DEFAULT_RANGES[s] for s in chosen}
        lrs = LogRange.parse(axis_text) if axis == "learning rate" else None
        bss = None
        if axis == "batch size":
            try:
                bss = [int(v) for v in axis_text.split(",")]
            except ValueError:
                raise ConfigError(f"batch sizes {quote(axis_text)} must be whole numbers separated by commas") from None
        if not chosen:
            raise ConfigError("choose at least one strategy to sweep")
        return make_sweep(base, chosen, ranges, int(n_seeds), lrs=lrs, batch_sizes=bss)
    except ConfigError as exc:
        st.error(f"Cannot sweep this: {md_escape(exc)}")
        return None


def _start(sweep, chunk_size: int) -> bool:
    """Queue the sweep in the server's JobManager; False (and a warning) if this session's sweep still trains."""
    job = SweepJob(sweep, chunk_size=chunk_size, device="auto")
    try:  # replace=False: a sweep in progress is never dropped behind the user's back
        get_manager().submit(job, session_id())
    except JobBusy as exc:
        st.warning(f"{md_escape(exc)}.")
        return False
    old: SweepJob | None = st.session_state.get("sweep_job")
    if old is not None and old.snapshot().result.runs:  # its runs stay downloadable (see _previous)
        st.session_state.sweep_previous = old.snapshot().result
    st.session_state.sweep_job = job
    return True


def _stop() -> None:
    job = st.session_state.get("sweep_job")
    if job is not None:
        job.stop()


def _open_point(spec: RunSpec) -> None:
    """Load one sweep point into the comparison view's controls (and train it), if the app has them."""
    try:
        from clipviz.ui.controls import load_setup
    except ImportError:
        st.session_state.sweep_opened = spec
        return
    load_setup(spec, clips=(spec.clip,), n_seeds=1, start=True)
    st.session_state.tab = TABS["compare"]  # st.tabs(key="tab"): the point's job shows where it trains
    st.session_state.sweep_opened = spec
    st.session_state.sweep_open_rerun = True  # this click reran only the fragment: _point_picker reruns the page


def _draw_results(result: SweepResult) -> None:
    sw = result.sweep
    metric = st.radio("Loss", list(METRICS)[:2], format_func=METRICS.get, horizontal=True, key="sw_metric")
    axis_value = None
    if sw.axis:
        axis_value = st.select_slider(
            f"{sw.axis.replace('_', ' ')} for the threshold charts",
            sw.axis_values,
            value=sweep_charts.pick_axis(result, None),
            key="sw_axis_value",
        )
    st.plotly_chart(sweep_charts.loss_vs_threshold(result, metric, axis_value), key="sw_loss")
    recs = sweep_charts.recommendation_rows(result, metric)
    st.markdown("**Recommended threshold range**, read from this sweep")
    st.dataframe(pd.DataFrame(recs), hide_index=True)
    heur = heuristics(result, axis_value)
    if heur:
        st.markdown(
            "**Classic rules of thumb**, computed from the measured gradient norms of runs that train (*from* says which)"
        )
        st.dataframe(
            pd.DataFrame(
                [
                    {"rule": h.name, "strategy": h.strategy, "range": f"{h.low:.3g} to {h.high:.3g}", "from": h.reason}
                    for h in heur
                ]
            ),
            hide_index=True,
        )
    st.plotly_chart(sweep_charts.clip_rate_vs_threshold(result, axis_value), key="sw_cliprate")
    if sw.axis:
        st.plotly_chart(sweep_charts.stability_map(result, metric), key="sw_map")
    _point_picker(result)
    c = st.columns(2)
    # deferred downloads (callables): no media file for the browser to find gone after a rerun (a 404 in its console)
    c[0].download_button("Download sweep JSON", functools.partial(dumps, result), "sweep.json", "application/json",
                         key="sw_json", on_click="ignore")  # fmt: skip
    c[1].download_button("Download sweep CSV", functools.partial(_csv, result), "sweep.csv", "text/csv",
                         key="sw_csv", on_click="ignore")  # fmt: skip


def _csv(result: SweepResult) -> str:
    return to_frame(result).to_csv(index=False)


def _point_picker(result: SweepResult) -> None:
    sw = result.sweep
    with st.expander("Open one point as a full run in the comparison view"):
        c = st.columns(4)
        strat = c[0].selectbox("Strategy", ["none", *sw.strategies], index=1 if sw.strategies else 0, key="sw_p_s")
        thr = None
        if strat != "none":
            thr = c[1].selectbox("Threshold", dict(sw.thresholds)[strat], key="sw_p_t", format_func=lambda v: f"{v:g}")
        seed = c[2].selectbox("Seed", sw.seeds, key="sw_p_seed")
        a = c[3].selectbox(sw.axis, sw.axis_values, key="sw_p_a") if sw.axis else None
        from clipviz.sweep import SweepPoint

        spec = point_spec(sw, SweepPoint(strat, thr, seed, a))
        st.button("Open in comparison", key="sw_open", on_click=_open_point, args=(spec,))
        if st.session_state.pop("sweep_open_rerun", False):
            # the sidebar and the Train logic live outside this fragment: the whole page reruns, draws the
            # loaded setup and trains it (a fragment-only rerun left the old setup on screen to train later)
            st.rerun(scope="app")
        if st.session_state.get("sweep_opened") == spec:
            st.success(f"Loaded {spec.name} into the comparison tab's controls.")


def _previous() -> None:
    """The sweep before the current one, kept for download: starting a new sweep never loses runs silently."""
    prev: SweepResult | None = st.session_state.get("sweep_previous")
    if prev is None:
        return
    with st.expander(f"Previous sweep: {len(prev.runs)} runs (replaced by the one above)"):
        st.download_button("Download previous sweep JSON", functools.partial(dumps, prev), "sweep-previous.json",
                           key="sw_prev_json", on_click="ignore")  # fmt: skip


def _status(snap: SweepSnapshot) -> None:
    result, prog = snap.result, snap.progress
    n, total = len(result.runs), len(result.sweep.points())
    if snap.state == "queued":
        st.progress(0.0, text=f"queued, position {snap.queue_position}: other jobs are training")
    elif not snap.finished:
        frac, text = (0.0, "starting…") if prog is None else (min(prog.fraction, 1.0), f"training: {prog.line()}")
        st.progress(frac, text=text)
    elif snap.state == "failed":
        kept = f"the {n} runs of its finished chunks are shown below" if n else "no chunk had finished"
        st.error(f"The sweep failed: {md_escape(snap.error)}. {kept.capitalize()}.")
    else:
        word = "finished" if result.complete else "stopped"
        st.success(f"Sweep {word}: {n} of {total} runs in {result.elapsed:.1f}s")


def _body() -> None:
    """Progress and charts from the job's snapshot; polled by a fragment while the job is queued or trains."""
    job: SweepJob | None = st.session_state.get("sweep_job")
    if job is None:
        st.info("Choose strategies and a threshold range, then run the sweep.")
        _previous()
        return
    snap = job.snapshot()
    _status(snap)
    if snap.result.runs:
        _draw_results(snap.result)
    _previous()
    if snap.finished and st.session_state.get("sweep_polled") is not job:
        st.session_state.sweep_polled = job
        st.rerun()  # once, the whole page: buttons re-enable and the polling stops


def render_sweep(
    base: RunSpec,
    *,
    thresholds: str = "0.001:1e12:46",
    seeds: int = 3,
    strategies: tuple[str, ...] = ("value", "norm"),
    chunk_size: int = UI_CHUNK,
) -> None:
    """The whole sweep tab for the setup `base` (its clip is ignored): widgets, run/stop, live charts."""
    st.markdown(
        "The threshold is a hyperparameter: **experiment**. Every strategy × threshold × seed trains at once "
        "(batched, in lockstep); the lines are medians over seeds, the bands the interquartile range."
    )
    sweep = _read_form(replace(base, label=""), thresholds, seeds, strategies)
    job: SweepJob | None = st.session_state.get("sweep_job")
    running = job is not None and not job.snapshot().finished  # queued counts: it can be stopped
    chunks = None
    if sweep is not None:
        try:  # reads a CSV's header: a target not in the file is named here, not raised
            chunks = len(plan_chunks(sweep, chunk_size))
        except ConfigError as exc:
            st.error(f"Cannot sweep this: {md_escape(exc)}")
            sweep = None
    c = st.columns([1.4, 1, 4])
    if sweep is not None:
        c[2].caption(f"{len(sweep.points())} runs × {sweep.base.optim.epochs} epochs, in {chunks} lockstep job(s)")
    if c[0].button("▶ Run sweep", key="sw_run", type="primary", disabled=sweep is None or running):
        if _start(sweep, chunk_size):
            st.rerun()  # the whole page again: Run disables, Stop enables, the fragment polls
    c[1].button("■ Stop", key="sw_stop", on_click=_stop, disabled=not running)
    # poll only while a job trains (AppTest does not fire run_every: tests call at.run() to poll)
    st.fragment(_body, run_every=1.0 if running else None)()
