"""clipviz dashboard: gradient clipping side by side, live. Layout and wiring only.

controls (sidebar widgets -> list[RunSpec]) -> state.start_job (one batched background Job)
-> polling fragments redraw the progress and the charts -> finished runs go into the session's RunStore.
Run it with `streamlit run app.py`.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import streamlit as st

from clipviz.executors import warm_up

warm_up()  # first, before the heavy imports: the training worker processes import torch meanwhile
from clipviz.config import Caps, ClipSpec, ConfigError  # noqa: E402
from clipviz.text import md_escape  # noqa: E402
from clipviz.ui import charts, controls, export, lesson, state  # noqa: E402
from clipviz.ui.cliff_view import render_cliff  # noqa: E402
from clipviz.ui.history_view import render_history  # noqa: E402
from clipviz.ui.live_status import CSS as LIVE_CSS  # noqa: E402
from clipviz.ui.live_status import live_status_html  # noqa: E402
from clipviz.ui.sweep_view import render_sweep  # noqa: E402

st.set_page_config(page_title="clipviz: gradient clipping side by side", page_icon="✂️", layout="wide")
state.init_session()
try:
    caps = Caps.from_env()
except ConfigError as exc:
    st.error(f"Server configuration problem: {md_escape(exc)}")
    st.stop()
if "url_problems" not in st.session_state:  # a shared link's values, checked once before any widget reads them
    _params = {k: st.query_params.get_all(k) for k in st.query_params}
    st.session_state.url_problems = controls.sanitize_url(caps)  # drops what no widget may take (classroom is bound)
    st.session_state.update(controls.url_state(_params, caps))  # the sidebar's values: sync_url keeps the link
if _cookie := state.set_cookie_html():  # first visit of this browser: keep its history id in a cookie
    st.html(_cookie, unsafe_allow_javascript=True)
store = state.store()
state.ingest_finished()

# static CSS only (never user data): a tighter top margin so charts fit a 1280x720 projector
_CSS = (
    "[data-testid='stMainBlockContainer'] {padding-top: 3.5rem; padding-bottom: 1rem;}"
    + LIVE_CSS  # the progress + status element (clipviz.ui.live_status)
)
# classroom: text a class can read (1.25rem body, >= 16 px everywhere) yet the loss chart and a gradient chart
# above the fold at 1280x720: no page header (the sidebar keeps its own collapse button), tight gaps,
# labels that wrap instead of being cut ("Classr…")
_BIG = (
    "[data-testid='stHeader'] {display: none;}"
    "[data-testid='stMainBlockContainer'] {padding-top: 0.75rem !important;}"
    "[data-testid='stMain'] [data-testid='stVerticalBlock'] {gap: 0.45rem;}"
    "[data-testid='stMain'] [data-testid='stMarkdown'] p, [data-testid='stMain'] [data-testid='stMarkdown'] li, "
    "[data-testid='stMain'] [data-testid='stAlert'] p, [data-testid='stSidebar'] [data-testid='stWidgetLabel'] p "
    "{font-size: 1.25rem !important;}"
    "[data-testid='stMain'] [data-testid='stWidgetLabel'] p, [data-testid='stMain'] button p, "
    "[data-testid='stMain'] [data-testid='stTab'] p, [data-testid='stMain'] [data-testid='stCaptionContainer'] "
    "{font-size: 1rem !important;}"
    "[data-testid='stMain'] [data-testid='stButton'] button {padding-left: 0.45rem; padding-right: 0.45rem;}"
    ".cv-progress p, .st-key-cliff_progress p {font-size: 1.05rem !important;}"
    ".cv-status p, .cv-status table, .cv-empty p {font-size: 1.1rem !important; line-height: 1.35;}"
)
bar = st.columns([1, 0.95, 1.1, 0.95, 1.3, 1.15, 1.5], vertical_alignment="bottom")
classroom = bar[6].toggle("Classroom", key="classroom", bind="query-params", help="big fonts, fewer controls")
st.markdown(f"<style>{_CSS}{_BIG if classroom else ''}</style>", unsafe_allow_html=True)
chart_h = 380 if classroom else 400  # classroom: both charts above the fold at 1280x720 (test_browser.py measures)


with st.sidebar:
    st.markdown("### ✂️ clipviz")
    st.caption("Gradient clipping, side by side: none vs value vs norm, live.")
    values = controls.render_controls(caps, classroom)
controls.sync_url(values, caps)  # the link always holds the setup on screen

runs, setup_error, csv_path = None, None, None
try:
    csv_path = controls.uploaded_csv(caps)
except ConfigError as exc:
    setup_error = f"CSV file rejected: {exc}"
    st.sidebar.error(md_escape(setup_error))
try:
    runs = controls.build_runs(values, csv_path, caps)
except ConfigError as exc:
    setup_error = f"Cannot train this setup: {exc}"


# ---- job controls -------------------------------------------------------------------------------
def _job_call(method: str) -> None:
    job = st.session_state.get("job")
    if job is not None:
        getattr(job, method)()


def _set_speed() -> None:
    job = st.session_state.get("job")
    if job is not None:
        job.set_speed(controls.speed_of(st.session_state.speed))


def _hold(method: str, hold: bool) -> None:
    """Pause, Resume and Step: the job's call, and whether the button should now offer Resume (Step pauses
    a playing job too, and the fragment that shows 'paused' does not redraw this button)."""
    _job_call(method)
    st.session_state.hold = hold


def _repeat_seeds() -> None:
    # a one-off: this job trains 5 seeds; the 'Seeds per setting' control (and the link) stay as they are
    st.session_state.oneoff_seeds, st.session_state.autostart = 5, True


def _train() -> None:
    # a callback, not the button's return value: a rerun that cuts the click's run short (a tab clicked at once)
    # used to lose the Train; the request below stands until a job is started from it
    st.session_state.autostart = True
    st.session_state.pop("oneoff_seeds", None)  # a plain Train trains the seeds the control says


def _spend_train_request() -> None:
    st.session_state.pop("autostart", None)
    st.session_state.pop("oneoff_seeds", None)


bar[0].button("Train", key="train", type="primary", icon=":material/play_arrow:", disabled=runs is None,
              on_click=_train, help="train the selected strategies side by side, as one batched job")  # fmt: skip
start_error = None
if st.session_state.get("autostart"):
    oneoff = st.session_state.get("oneoff_seeds")
    try:
        if runs is not None:  # else nothing to train: the setup's own error is shown already
            job_runs = controls.build_runs(values, csv_path, caps, n_seeds=oneoff) if oneoff else runs
            dataset = state.cached_dataset(job_runs[0].data)
            speed = controls.speed_of(st.session_state.get("speed", "20"))
            preset = st.session_state.get("preset", controls.CUSTOM)
            state.start_job(job_runs, controls.device_of(values), speed, dataset,
                            preset="" if preset == controls.CUSTOM else preset)  # fmt: skip
            state.show_runs(state.pinned_ids())  # pinned runs stay on the charts next to the new job
            st.session_state.url_problems = []
    except ConfigError as exc:
        start_error = f"Cannot train this setup: {exc}"
    except Exception:  # a bug, not a setup: spend the request, or every rerun would raise it again
        _spend_train_request()
        raise
    # spent only now, with no st call since start_job: a run cut short by a rerun (Streamlit's control
    # exceptions are BaseExceptions, not caught above) leaves the request for the next run, which trains it
    _spend_train_request()
snap = state.current_snapshot()  # the buttons' one look at the job (the live view takes its own, each poll)
live = snap is not None and not snap.finished
bar[1].button("Stop", key="stop", icon=":material/stop:", disabled=not live, on_click=_job_call, args=("stop",),
              help="stop now; finished epochs are kept, the one in progress is dropped")  # fmt: skip
paused = live and (snap.state == "paused" or st.session_state.hold)
bar[2].button("Resume" if paused else "Pause", key="pause", icon=":material/play_circle:" if paused else ":material/pause:",
              disabled=not live, on_click=_hold, args=("resume", False) if paused else ("pause", True))  # fmt: skip
bar[3].button("Step", key="step", icon=":material/skip_next:", disabled=not live, on_click=_hold, args=("step_epoch", True),
              help="train exactly one more epoch, then pause")  # fmt: skip
bar[4].select_slider("Epochs/s", controls.SPEEDS, value="20", key="speed", on_change=_set_speed,
                     help="epochs trained per second (max: as fast as the machine can)")  # fmt: skip
bar[5].button("5 seeds", key="repeat_seeds", icon=":material/replay:", disabled=runs is None, on_click=_repeat_seeds,
              help="train each setting with 5 seeds: the loss chart shows median and spread")  # fmt: skip

if st.session_state.url_problems:
    st.error("  \n".join(map(md_escape, st.session_state.url_problems)), icon=":material/link_off:")
# messages quote what the user chose (a link value, a CSV column): always shown escaped, never as markdown
for err in (setup_error, start_error, st.session_state.job_error):
    if err:
        st.error(md_escape(err))
while st.session_state.notices:
    kind, text = st.session_state.notices.pop(0)
    getattr(st, kind)(text)


# ---- what the charts show -------------------------------------------------------------------------
def shown_runs(job_snap) -> list:
    """History runs picked for the charts, plus the live job's runs (from the caller's snapshot) while it trains."""
    stored = store.get(state.shown_ids())
    if job_snap is not None and any(j.id == job_snap.job_id for j in st.session_state.jobs):
        stored += [state.StoredRun(0, r, -job_snap.job_id, job_snap.state) for r in job_snap.results if r.records]
    return stored


VIEWS = ("Norms", "One epoch", "Layers", "Clip rate", "Values")  # several seeds: the loss chart shows their band


def figure(fn, results, *args, **kw):
    """charts.fn(results, ...) built once per data and arguments: polls of an unchanged job (paused, queued,
    finished, or a session watching while others train) reuse it instead of rebuilding it."""
    key = (fn.__name__, tuple((r.spec, len(r.records)) for r in results), args, tuple(sorted(kw.items())), classroom)
    cache = st.session_state.setdefault("figure_cache", {})
    if key not in cache:
        if len(cache) >= 16:  # a few views x toggles; the oldest entry goes first
            cache.pop(next(iter(cache)))
        fig = fn(results, *args, **kw)
        cache[key] = charts.for_projector(fig) if classroom else fig  # classroom: every text >= 16 px
    return cache[key]


def gradient_chart(results, view: str, post: bool) -> None:
    """The chosen gradient view (one epoch and values get an epoch slider, under the chart: the chart stays high)."""
    results = charts.pool_seeds(results)  # several seeds: one panel (or line) per strategy, its seeds pooled
    epoch = None
    if view == "Layers":
        fig = figure(charts.layer_norms, results, height=chart_h, post=post)
    elif view == "Clip rate":
        fig = figure(charts.clip_rate, results, height=chart_h)
    elif view == "Norms":
        fig = figure(charts.norm_distribution_grid, results, post=post, height=chart_h)
    else:
        last = max((r.final.epoch for r in results if r.final), default=1)
        total = max([last, *(r.spec.optim.epochs for r in results)])  # the slider's range: fixed for a job
        # 'Newest epoch' follows the training; off, the slider picks one. The server never writes the slider's
        # value: a value set from the server each epoch came back from the browser stale (stuck at 47 of 100)
        follow = st.session_state.get("hist_follow", True)
        epoch = last if follow else min(max(1, int(st.session_state.get("hist_epoch") or last)), last)
        hist = charts.epoch_histogram if view == "One epoch" else charts.value_histogram
        fig = figure(hist, results, epoch, post=post, height=chart_h)
    st.plotly_chart(fig, key="chart_view")
    st.caption(charts.CAPTIONS[view])
    if epoch is not None and total > 1:
        c1, c2 = st.columns(2, vertical_alignment="bottom")
        c1.toggle("Newest epoch", value=True, key="hist_follow", help="follow the training; off: pick an epoch")
        if not follow:
            c2.slider(
                "Epoch", 1, total, value=epoch, key="hist_epoch", help="an epoch not trained yet shows the newest"
            )


def live_status() -> None:
    """Progress and one status line per run, from one snapshot. Cheap text (a few ms of server CPU), so it
    polls at a steady pace (state.status_interval) while the charts redraw at their own, load-dependent one."""
    snap = state.snapshot_after_start()  # after a Train: its first epoch, not 'epoch 0' until a later poll
    results = state.display_results(shown_runs(snap))
    with st.container(key="live_status"):  # ONE element: a cut-short rerun cannot leave new progress over old status
        st.html(live_status_html(snap, state.job_number(snap.job_id) if snap else None, results))
    _rerun_when_ended(snap)
    was_queued, st.session_state.was_queued = (
        st.session_state.get("was_queued"),
        snap is not None and snap.state == "queued",
    )
    if was_queued and not st.session_state.was_queued:
        st.rerun(scope="app")  # the job left the queue: the charts poll at the training pace (state.chart_interval)


def _rerun_when_ended(snap) -> None:
    if snap is not None and snap.finished and any(j.id == snap.job_id for j in st.session_state.jobs):
        st.rerun(scope="app")  # the job ended: store its runs and switch polling off


def watch_jobs() -> None:
    """While another tab is open: draws nothing, and reruns the page when the job ends (its runs go to History)."""
    _rerun_when_ended(state.current_snapshot())


def live_charts() -> None:
    """The loss chart and the chosen gradient view from their own snapshot (figures rebuilt only when it changed)."""
    results = state.display_results(shown_runs(state.current_snapshot()))
    seeded = any(len(g) > 1 for g in charts.seed_groups(results).values())
    left, right = st.columns([1, 1.2])
    with left:
        # the loss chart's axes in a popover on the toggles row: under the chart they fell below a projector's fold
        c1, c2 = st.columns(2, vertical_alignment="center")
        post = c1.toggle("After clipping", value=False, key="post_clip", help="gradients as the optimizer saw them")
        band = seeded and st.session_state.get("seed_band", True)  # its toggle sits under the chart (the fold)
        with c2.popover("Loss axes", icon=":material/tune:", help="loss chart: log scale, x axis, smoothing"):
            log_y = st.toggle("Log-scale loss", value=True, key="log_y")
            st.segmented_control("x axis", ["epoch", "step"], default="epoch", key="loss_x", disabled=band)
            st.select_slider("Smoothing", [0.0, 0.5, 0.8, 0.9, 0.95], value=0.0, key="smoothing", disabled=band,
                             help="exponential moving average, as in TensorBoard; the hover keeps the raw values")  # fmt: skip
        if band:
            st.plotly_chart(
                figure(charts.seed_band, results, "val_loss", log_y=log_y, height=chart_h), key="chart_loss"
            )
            st.caption(charts.CAPTIONS["seeds"])
        else:
            x = st.session_state.get("loss_x", "epoch") or "epoch"
            smooth = float(st.session_state.get("smoothing", 0.0))
            fig = figure(charts.loss_curves, results, log_y=log_y, height=chart_h, x=x, smoothing=smooth)
            st.plotly_chart(fig, key="chart_loss")
            st.caption(charts.CAPTIONS["loss"])
        if seeded:
            st.toggle("Median + IQR over seeds", value=True, key="seed_band", help="off: every seed")
    with right:
        view = st.segmented_control("Gradients", VIEWS, default=VIEWS[0], key="view", label_visibility="collapsed")
        gradient_chart(results, view or VIEWS[0], post)


# ---- page -----------------------------------------------------------------------------------------
TABS = state.TABS
# a key so the lesson's 'Try it' can switch to the tab that shows its result (st.session_state.tab = label)
tab_cmp, tab_lesson, tab_cliff, tab_hist, tab_sweep, tab_export = st.tabs(list(TABS.values()), key="tab",
                                                                          on_change="rerun")  # fmt: skip
# only the open tab runs (st.tabs with on_change="rerun" tracks it: `.open`): a rerun used to draw all six, the
# History table and the Export figures included, and a training class's reruns queued behind each other
if tab_cmp.open:
    with tab_cmp, st.container(key="tab_compare"):  # the key: what a test waits for after a click
        active = state.any_active()
        st.fragment(run_every=state.status_interval() if active else None)(live_status)()
        st.fragment(run_every=state.chart_interval() if active else None)(live_charts)()
elif state.any_active():  # another tab is open: nothing drawn, but a job that ends still goes into History
    st.fragment(run_every=state.status_interval())(watch_jobs)()


def _lesson_target():
    if runs is None:
        return None
    try:
        ds = state.cached_dataset(runs[0].data)
    except ConfigError:
        return None
    return ds.y_train_raw, ds.target_name


if tab_lesson.open:
    with tab_lesson, st.container(key="tab_lesson"):
        lesson.render_lesson(_lesson_target, TABS)

if tab_cliff.open:
    with tab_cliff, st.container(key="tab_cliff"):
        render_cliff(classroom)

if tab_hist.open:
    with tab_hist, st.container(key="tab_history"):
        render_history()

if tab_sweep.open:
    with tab_sweep, st.container(key="tab_sweep"):
        if runs is None:
            st.error(md_escape(setup_error) if setup_error else "Fix the setup in the sidebar first.")
        else:
            render_sweep(replace(runs[0], clip=ClipSpec("none"), label=""))

if tab_export.open:
    with tab_export, st.container(key="tab_export"):
        chosen = state.display_results(store.get(state.shown_ids()))
        figs = {
            "Loss curves": functools.partial(charts.loss_curves, chosen),
            "Norm distribution": functools.partial(charts.norm_distribution_grid, chosen),
            "Per-layer norms": functools.partial(charts.layer_norms, chosen),
            "Clip rate": functools.partial(charts.clip_rate, chosen),
            "Value histogram": functools.partial(charts.value_histogram, chosen),
            "Seed spread": functools.partial(charts.seed_band, chosen),
        }
        export.render_export(chosen, figs if chosen else {}, runs)
