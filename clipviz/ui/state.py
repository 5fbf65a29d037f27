"""Per-session state: the run history (RunStore) and the session's training jobs.

The RunStore is plain Python (no streamlit), so tests drive it directly. The session helpers
below keep one RunStore and the session's jobs in st.session_state, set up behind one guard.
A job's runs enter the history when it ends (done, stopped or failed): nothing trained is lost.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field, replace

import streamlit as st

from ..config import Caps, DataSpec, RunSpec
from ..data import Dataset, load_dataset
from ..jobs import Job, JobSnapshot, configure_torch_threads, get_manager
from ..records import RunResult


@dataclass
class StoredRun:
    id: int  # unique within the session, grows
    result: RunResult  # spec and records
    job_id: int  # the job that trained it (runs of one job compare fairly)
    status: str  # the job's end state: done, stopped or failed
    pinned: bool = False  # pinned runs are never evicted


@dataclass
class RunStore:
    """The session's finished runs, oldest first; at most `cap` (oldest unpinned evicted)."""

    cap: int = field(default_factory=lambda: Caps.from_env().max_session_runs)
    runs: list[StoredRun] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1), repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def add(self, results: list[RunResult], job_id: int, status: str) -> tuple[list[int], list[StoredRun]]:
        """Store a job's runs (those with at least one epoch); returns (new ids, evicted runs)."""
        with self._lock:
            new = [StoredRun(next(self._ids), r, job_id, status) for r in results if r.records]
            self.runs.extend(new)
            return [s.id for s in new], self._evict()

    def _evict(self) -> list[StoredRun]:
        evicted = []
        while len(self.runs) > self.cap:
            victim = next((s for s in self.runs if not s.pinned), None)
            if victim is None:  # everything pinned: keep them all, the user asked for it
                break
            self.runs.remove(victim)
            evicted.append(victim)
        return evicted

    def pin(self, run_id: int, pinned: bool = True) -> None:
        with self._lock:
            for s in self.runs:
                if s.id == run_id:
                    s.pinned = pinned

    def set_pinned(self, ids: set[int]) -> None:
        """Pin exactly these runs."""
        with self._lock:
            for s in self.runs:
                s.pinned = s.id in ids

    def remove_unpinned(self) -> int:
        with self._lock:
            before = len(self.runs)
            self.runs = [s for s in self.runs if s.pinned]
            return before - len(self.runs)

    def ids(self) -> list[int]:
        with self._lock:
            return [s.id for s in self.runs]

    def get(self, ids: list[int] | None = None) -> list[StoredRun]:
        """Stored runs with these ids, in history order (all when ids is None)."""
        with self._lock:
            return list(self.runs) if ids is None else [s for s in self.runs if s.id in set(ids)]

    def latest_job_ids(self) -> list[int]:
        with self._lock:
            if not self.runs:
                return []
            last = self.runs[-1].job_id
            return [s.id for s in self.runs if s.job_id == last]

    def __len__(self) -> int:
        return len(self.runs)


def display_results(stored: list[StoredRun]) -> list[RunResult]:
    """Results for the charts; when runs of several jobs are shown, legends say which job."""
    several = len({s.job_id for s in stored}) > 1
    out = []
    for s in stored:
        res = s.result
        if several:
            tag = f"#{s.id}" if s.id else "(live)"
            res = RunResult(replace(res.spec, label=f"{res.label} {tag}"), res.records)
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
    """One line for pickers: '#3 value:5 (job 2, done)'."""
    pin = " 📌" if s.pinned else ""
    return f"#{s.id} {s.result.label} (job {s.job_id}, {s.status}){pin}"


# ---- the session ------------------------------------------------------------------------------
@st.cache_resource
def _threads_configured() -> int:
    """Once per server process: torch threads (see jobs.py). Training happens in worker processes (app.py
    starts them first thing), not here, so the server no longer shortens the GIL switch interval."""
    return configure_torch_threads()


def poll_interval() -> float:
    """Seconds between live redraws: 0.5 s, stretched while several jobs share the server's cores.

    Each redraw rebuilds and re-sends the charts, which costs the server (and the browser) CPU that the
    training threads need; a queued job has nothing new to show, so it only checks its place every 2 s.
    """
    snap = current_snapshot()
    if snap is not None and snap.state == "queued":
        return 2.0
    return 0.5 * max(1, get_manager().stats().running)


def init_session() -> None:
    """Everything this session keeps, set up once."""
    if "store" in st.session_state:
        return
    _threads_configured()
    st.session_state.store = RunStore()
    st.session_state.jobs = []  # submitted and not yet moved into the store
    st.session_state.job = None  # the latest job (controls act on it)
    st.session_state.notices = []  # (kind, text) shown once at the top
    st.session_state.job_error = None  # the last failed job's message, shown until the next Train
    # the history runs on the charts. app-owned, not a widget key: a fragment rerun can carry a stale copy
    # of a widget's value from the browser, which would silently undo a selection the app just made.
    st.session_state.shown_ids = []
    st.session_state.history_version = 0  # part of the history widgets' keys: bumped when the app sets them


def show_runs(ids: list[int], redraw: bool = True) -> None:
    """Put these history runs on the charts; redraw=False when the History picker itself changed them."""
    st.session_state.shown_ids = [i for i in ids if i in set(store().ids())]
    st.session_state.history_version += redraw


def on_history_pick(which: str, version: int) -> None:
    """on_change of the History pickers; a stale browser copy of an older picker (see above) is ignored."""
    if version != st.session_state.history_version:
        return
    picked = st.session_state.get(f"{which}_{version}", [])
    if which == "overlay":
        show_runs(picked, redraw=False)
    else:
        store().set_pinned(set(picked))


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


def start_job(runs: list[RunSpec], device: str, speed: float | None, dataset=None) -> Job:
    """Submit one batched job for the session, replacing (stopping) its current one; trained runs are kept."""
    manager = get_manager()  # its reaper stops the jobs of closed tabs
    job = Job(runs, device=device, speed=speed, dataset=dataset)
    manager.submit(job, session_id(), replace=True)
    st.session_state.jobs.append(job)
    st.session_state.job = job
    st.session_state.job_error = None
    return job


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
        ids, evicted = store().add(snap.results, snap.job_id, snap.state)
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
