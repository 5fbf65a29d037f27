"""Per-session state: the browser's run history (a SQLite RunStore) and the session's training jobs.

The RunStore (clipviz.runstore) is plain Python, so tests drive it directly. The session helpers below
keep one RunStore, opened for this browser's id (a cookie), and the session's jobs in st.session_state,
set up behind one guard. A job's runs enter the history when it ends (done, stopped, failed or
replaced by a newer job): nothing trained is lost, and only the current job's runs reach the charts.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import replace

import streamlit as st

from ..config import Caps, DataSpec, RunSpec
from ..data import Dataset, load_dataset
from ..jobs import Job, JobSnapshot, configure_torch_threads, get_manager
from ..records import RunResult
from ..runstore import DB_NAME, RunStore, StoredRun, data_dir

__all__ = ["RunStore", "StoredRun"]  # re-exported: tests and the views import them from here
COOKIE = "clipviz_browser"  # the per-browser id that keys the history (a random token, not personal data)
_BROWSER_ID = re.compile(r"[0-9a-f]{32}")


def display_results(stored: list[StoredRun]) -> list[RunResult]:
    """Results for the charts; when runs of several jobs are shown, legends say which job."""
    several = len({s.job_id for s in stored}) > 1
    out = []
    for s in stored:
        res = s.result
        if several or s.name:
            tag = f" #{s.num}" if s.id else " (live)"
            res = RunResult(replace(res.spec, label=f"{s.label}{tag if several else ''}"), res.records)
        out.append(res)
    return out


@st.cache_resource(max_entries=8, show_spinner="Loading the data…")
def cached_dataset(spec: DataSpec) -> Dataset:
    """The dataset a spec names, ONE shared object per spec for every session and queued job (cache_data
    would hand each caller its own unpickled copy: 76 MB each for 100k x 200). Read-only by contract: the
    engine indexes it into new tensors and never writes to it (tests/test_bounds.py checks). ConfigError for
    a bad spec (errors are not cached)."""
    ds = load_dataset(spec)
    ds.y_train_raw.flags.writeable = False
    return ds


def describe(s: StoredRun) -> str:
    """One line for pickers and tables: '#3 value:5 · tutorial (job 2)'. It never depends on the pin or on
    anything else that changes while a widget shows it (a changed label once crashed the History picker)."""
    where = s.preset or s.result.spec.data.name
    return f"#{s.num} {s.label} · {where} (job {s.job_id})"


# ---- the session ------------------------------------------------------------------------------
@st.cache_resource
def _threads_configured() -> int:
    """Once per server process: torch threads (see jobs.py). Training happens in worker processes (app.py
    starts them first thing), not here, so the server no longer shortens the GIL switch interval."""
    return configure_torch_threads()


STATUS_INTERVAL = 0.5  # s between polls of the progress and status lines (a few lines of text)


# the page's tabs: key -> label (st.tabs key="tab" holds the open one's label; the lesson's 'Try it' sets it)
TABS = {
    "compare": ":material/monitoring: Compare",
    "lesson": ":material/school: Lesson",
    "cliff": ":material/landscape: Cliff",
    "history": ":material/history: History",
    "sweep": ":material/tune: Sweep",
    "export": ":material/download: Export",
}


def status_interval() -> float:
    """Seconds between polls of the progress and status lines: steady, whatever the load (they are cheap)."""
    return STATUS_INTERVAL


CHART_INTERVAL = 1.0  # s between chart redraws with one job training; stretched with more (chart_interval)


def chart_interval() -> float:
    """Seconds between chart redraws: 1 s, stretched while several jobs share the server's cores.

    Each redraw rebuilds and re-sends two plotly figures, and the browser lays them out again (measured
    with Chromium's profiler: most of a page's script time is plotly redrawing its axes), so it costs the
    server and every browser CPU that other sessions need. A queued job has nothing new to show: 2 s.
    """
    snap = current_snapshot()
    if snap is not None and snap.state == "queued":
        return 2.0
    return max(CHART_INTERVAL, 0.5 * get_manager().stats().running)


def init_session() -> None:
    """Everything this session keeps, set up once."""
    if "store" in st.session_state:
        return  # set up once per session
    _threads_configured()
    caps = Caps.from_env()
    st.session_state.store = RunStore(data_dir() / DB_NAME, browser_id(), caps.max_session_runs, caps.history_ttl_days)
    st.session_state.jobs = []  # submitted and not yet moved into the store
    st.session_state.job_preset = {}  # job id -> the preset the controls held when it was submitted
    st.session_state.job_number = {}  # job id -> its number in this browser's history
    st.session_state.job = None  # the latest job (controls act on it)
    st.session_state.notices = []  # (kind, text) shown once at the top
    st.session_state.job_error = None  # the last failed job's message, shown until the next Train
    # the history runs on the charts. app-owned, not a widget key: a fragment rerun can carry a stale copy
    # of a widget's value from the browser, which would silently undo a selection the app just made.
    st.session_state.history_version = 0  # part of the history widgets' keys: bumped when the app sets them
    st.session_state.replaced = set()  # ids of jobs a newer Train replaced: their runs go to the history only
    st.session_state.hold = False  # Pause or Step was pressed and not Resume: the button offers Resume
    s = st.session_state.store  # a reload (or a server restart) shows what this browser last trained
    st.session_state.shown_ids = list(dict.fromkeys([x.id for x in s.get() if x.pinned] + s.latest_job_ids()))


def browser_id() -> str:
    """This browser's id: the cookie it sent, else a new random one (set_cookie_html gives it to the browser).

    A cookie, not the URL: links are shared, and a shared link must not share the history."""
    if "browser_id" not in st.session_state:
        sent = st.context.cookies.get(COOKIE, "")
        sent = sent if isinstance(sent, str) else ""  # AppTest has no browser: no cookies
        st.session_state.browser_id = sent if _BROWSER_ID.fullmatch(sent) else secrets.token_hex(16)
        st.session_state.cookie_sent = bool(_BROWSER_ID.fullmatch(sent))
    return st.session_state.browser_id


def set_cookie_html() -> str | None:
    """A script that stores this session's browser id in a cookie (a year), or None when the browser sent it.

    Streamlit reads cookies (st.context.cookies) but has no call to set one; the id is ours (hex), never user
    text, so it is safe to write into the script."""
    if st.session_state.get("cookie_sent", True):
        return None
    bid = browser_id()
    assert _BROWSER_ID.fullmatch(bid)
    return (f"<script>if (!document.cookie.split('; ').some(c => c.startsWith('{COOKIE}='))) "
            f"document.cookie = '{COOKIE}={bid}; path=/; max-age=31536000; SameSite=Lax';</script>")  # fmt: skip


def show_runs(ids: list[int], redraw: bool = True) -> None:
    """Put these history runs on the charts; redraw=False when the History picker itself changed them."""
    st.session_state.shown_ids = [i for i in ids if i in set(store().ids())]
    st.session_state.history_version += redraw


def shown_ids() -> list[int]:
    return [i for i in st.session_state.get("shown_ids", []) if i in set(store().ids())]


def pinned_ids() -> list[int]:
    return [s.id for s in store().get() if s.pinned]


def remove_unpinned() -> None:
    store().remove_unpinned()
    show_runs(shown_ids())


def store() -> RunStore:
    return st.session_state.store


def session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "local"


def start_job(runs: list[RunSpec], device: str, speed: float | None, dataset=None, preset: str = "") -> Job:
    """Submit one batched job for the session, replacing (stopping) its current one; trained runs are kept.

    The replaced job is stopped now and its runs go to the history when it ends, never onto the charts."""
    old = st.session_state.get("job")
    if old is not None and not old.snapshot().finished:
        old.stop()
        st.session_state.replaced = st.session_state.get("replaced", set()) | {old.id}
    manager = get_manager()  # its reaper stops the jobs of closed tabs
    job = Job(runs, device=device, speed=speed, dataset=dataset)
    manager.submit(job, session_id(), replace=True)
    st.session_state.jobs.append(job)
    st.session_state.job = job
    st.session_state.job_preset[job.id] = preset
    # the job's number in this browser's history (the progress line says it, History groups by it)
    number = max(store().next_job(), st.session_state.get("last_job_number", 0) + 1)
    st.session_state.last_job_number = number
    st.session_state.job_number[job.id] = number
    st.session_state.job_error = None
    st.session_state.hold = False  # the new job plays: the Pause button reads Pause
    st.session_state.await_first_epoch = job.id  # the live view's next look waits for epoch 1 (snapshot_after_start)
    return job


# the run a Train starts waits this long at most for the job's first epoch, so the page the click draws shows it
# (and the first point of each curve): the next poll may come seconds later on a busy server, where Streamlit
# holds a session's polls behind its other runs (issue 11: 'first epoch on screen' took 2.5-6.6 s with 4 pages)
FIRST_EPOCH_WAIT_S = 0.5


def snapshot_after_start() -> JobSnapshot | None:
    """The current job's snapshot; in the run right after start_job, once its first epoch is in (or it is queued,
    paused, ended, or FIRST_EPOCH_WAIT_S has passed)."""
    job = st.session_state.get("job")
    if job is None:
        return None
    if st.session_state.pop("await_first_epoch", None) != job.id:
        return job.snapshot()
    try:
        return job.wait_until(
            lambda s: s.epoch >= 1 or s.finished or s.state in ("queued", "paused"), FIRST_EPOCH_WAIT_S
        )
    except TimeoutError:  # a slow start: the page shows epoch 0 and the polls take over
        return job.snapshot()


def job_number(job_id: int) -> int | None:
    """A job's number in this browser's history (None for a job this session did not start)."""
    return st.session_state.get("job_number", {}).get(job_id)


def current_snapshot() -> JobSnapshot | None:
    job = st.session_state.get("job")
    return job.snapshot() if job is not None else None


def any_active() -> bool:
    return any(not j.snapshot().finished for j in st.session_state.get("jobs", []))


def ingest_finished() -> list[int]:
    """Move every ended job's runs into the store; returns the new run ids (for the chart overlay)."""
    new_ids, keep = [], []
    for job in st.session_state.jobs:
        snap = job.snapshot()
        if not snap.finished:
            keep.append(job)
            continue
        replaced = job.id in st.session_state.get("replaced", set())
        preset = st.session_state.job_preset.get(job.id, "")
        number = st.session_state.job_number.get(job.id)
        # job_key: a rerun can interrupt this loop after the store took a job and before `jobs` forgot it
        ids, evicted = store().add(snap.results, "replaced" if replaced else snap.state, preset, job=number,
                                   job_key=f"{number}:{job.id}")  # fmt: skip
        if not replaced and job is st.session_state.job:  # a replaced job's runs stay off the charts
            new_ids += ids
        if snap.state == "failed":
            st.session_state.job_error = f"Training job {snap.job_id} failed: {snap.error}"
        if evicted:
            st.session_state.notices.append(
                ("warning", f"History is full ({store().cap} runs): removed the {len(evicted)} oldest unpinned.")
            )
    st.session_state.jobs = keep
    if new_ids:  # a job ended: its runs (and the pinned ones) go on the charts
        show_runs(pinned_ids() + new_ids)
    return new_ids
