"""Background jobs: a worker thread per job, a JobManager that caps how many train at once.

`BackgroundJob` is what the manager queues: a thread, a stop event, a state and a queue position.
`Job` (one comparison) and `clipviz.sweep.SweepJob` (a threshold sweep) are the two kinds; they
share the manager's slots and FIFO queue, and a session may hold one of each. The worker writes its
results into the job under a lock; the UI polls `snapshot()` (an immutable copy with a `version` to
skip redraws). Play, pause, step and playback speed work like TensorFlow Playground's, and every
wait is a Condition wait, so stop, resume, speed changes and shutdown wake the waiter at once. A
reaper thread stops the jobs of closed tabs. Nothing here draws or imports streamlit at import.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .config import Caps, ConfigError, RunSpec
from .data import Dataset
from .engine import Engine
from .records import EpochRecord, RunResult

log = logging.getLogger(__name__)

STATES = ("queued", "running", "paused", "done", "stopped", "failed")
FINISHED = ("done", "stopped", "failed")
_ids = itertools.count(1)


# ---- torch threads ------------------------------------------------------------------------------
# what torch.set_num_threads(n) does in this build (torch 2.13 CPU, OpenMP + MKL backend), measured
# with torch.get_num_threads() from other threads and read in ATen/ParallelOpenMP.cpp:
#   - the calling thread: its OpenMP team size and its MKL count (mkl_set_num_threads_local) -> n.
#   - a process-wide default (an atomic) that every thread reads lazily on its FIRST torch op:
#     threads started later (other jobs, streamlit's script threads) get n too.
#   - threads that already ran torch ops (e.g. the main thread) keep their old count.
# so it is neither thread-local nor fully global. we therefore use ONE value everywhere: the app calls
# configure_torch_threads() once per server process (sets the default for all later threads), and
# each worker sets the same n for itself too (cheap, idempotent, and right even if the app forgot).
# why 1: these models are tiny; with overlapping jobs, 2 intra-op threads each oversubscribe a
# 2-core machine (three jobs: 45 s with 2 threads each, 18 s with 1).


def torch_threads() -> int:
    """Intra-op threads per training job: CLIPVIZ_TORCH_THREADS, default 1."""
    raw = os.environ.get("CLIPVIZ_TORCH_THREADS", "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(f"environment variable CLIPVIZ_TORCH_THREADS={raw!r} must be a positive integer")
    return int(raw)


def configure_torch_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count for this thread and as the process default; returns it."""
    n = n or torch_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


# ---- what a JobManager runs ---------------------------------------------------------------------
class BackgroundJob:
    """A worker thread with a stop event, a state and a queue position: what a JobManager queues and caps.

    Subclasses give the worker's body, `_train()` (returns 'done' or 'stopped'; any exception fails the
    job and keeps what was trained), and `_snapshot_locked()`: an immutable view with `.state`,
    `.finished`, `.queue_position`, `.error` and `.version`. The manager only calls start, stop, join,
    snapshot and the done hooks; `kind` names the per-session slot the job takes.
    """

    kind = "job"  # a session has at most one running/queued job of each kind
    what = "a job"  # for messages: "a training job is already running"

    def __init__(self, on_done: Callable[[Any], None] | None = None):
        self.id = next(_ids)
        self.session_id: str | None = None  # set by JobManager.submit
        self._on_done = on_done  # the owner's callback, given the final snapshot
        self._hooks: list[Callable[[BackgroundJob], None]] = []  # JobManager's slot release
        self._hooks_ran = False
        self._cond = threading.Condition()
        self._stop = threading.Event()  # the engine checks it between steps
        self._thread: threading.Thread | None = None
        self._state = "queued"
        self._queue_position: int | None = None
        self._error: str | None = None
        self._version = 0

    # ---- accessors (any thread) ---------------------------------------------------------------------
    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def snapshot(self) -> Any:
        with self._cond:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> Any:
        raise NotImplementedError

    def wait_until(self, predicate: Callable[[Any], bool], timeout: float) -> Any:
        """Block until predicate(snapshot) holds (woken on every change); TimeoutError after timeout s."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self._snapshot_locked()), timeout):
                raise TimeoutError(f"job {self.id} did not reach the expected state in {timeout:g} s")
            return self._snapshot_locked()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker thread to end; True if it has (or never started)."""
        t = self._thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    # ---- controls (any thread) ----------------------------------------------------------------------
    def start(self):
        """Start the worker now (a JobManager calls this when a slot frees). No-op unless queued.

        If the OS refuses a thread the job fails (never raises): the server keeps going.
        """
        with self._cond:
            if self._state != "queued" or self._thread is not None:
                return self
            self._thread = threading.Thread(target=self._run, name=f"clipviz-{self.kind}-{self.id}", daemon=True)
            self._set_locked(state="running")
            try:
                self._thread.start()
                failed = False
            except Exception as exc:
                log.exception("clipviz %s job %s could not start", self.kind, self.id)
                self._thread = None
                self._set_locked(state="failed", error=f"{type(exc).__name__}: {exc}")
                failed = True
        if failed:
            self._finish()
        return self

    def stop(self) -> None:
        """Stop soon (at the next step; the epoch in progress is dropped); finished epochs stay in the job."""
        with self._cond:
            self._stop.set()
            never_started = self._state == "queued" and self._thread is None
            if never_started:
                self._set_locked(state="stopped")
            self._cond.notify_all()
        if never_started:
            self._finish()

    # ---- internals ----------------------------------------------------------------------------------
    def _train(self) -> str:
        raise NotImplementedError

    def _run(self) -> None:
        state, error = "stopped", None
        try:
            configure_torch_threads()  # sets this thread's own count too: see the note above
            state = self._train()
        except BaseException as exc:  # noqa: BLE001 - even SystemExit: the job must fail and free its slot
            # a job's crash must never reach other jobs or the server; a BaseException ends only this thread
            log.exception("clipviz %s job %s failed", self.kind, self.id)
            state, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            self._finish(state, error)

    def _set_locked(self, **changes) -> None:
        for k, v in changes.items():
            setattr(self, f"_{k}", v)
        self._version += 1
        self._cond.notify_all()

    def _set_queue_position(self, pos: int | None) -> None:
        with self._cond:
            if pos != self._queue_position:
                self._set_locked(queue_position=pos)

    def _finish(self, state: str | None = None, error: str | None = None) -> None:
        """Release the manager's slot, publish the final `state` (unless the caller already did), then tell the
        owner; exactly once, never under the job's lock. The slot goes first so that whoever sees the job
        finished also sees its slot free."""
        with self._cond:
            if self._hooks_ran:
                return
            self._hooks_ran = True
        self._call([(hook, self) for hook in self._hooks])
        if state is not None:
            with self._cond:
                self._set_locked(state=state, error=error)
        if self._on_done is not None:
            self._call([(self._on_done, self.snapshot())])

    def _call(self, calls: list) -> None:
        for fn, arg in calls:
            try:
                fn(arg)
            except Exception:
                log.exception("clipviz %s job %s: completion callback failed", self.kind, self.id)


# ---- one comparison -----------------------------------------------------------------------------
@dataclass(frozen=True)
class JobSnapshot:
    """What the UI sees of a job at one moment; results are fresh lists sharing the (immutable) records."""

    job_id: int
    state: str  # one of STATES
    epoch: int  # epochs trained so far
    epochs: int  # epochs asked for
    queue_position: int | None  # 1 = starts next; None unless queued in a JobManager
    error: str | None  # "Type: message" when failed
    results: list[RunResult]  # one per run, records so far
    version: int  # grows on every change: equal versions mean nothing to redraw
    speed: float | None  # epochs per second; None = as fast as possible

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def progress(self) -> float:
        return self.epoch / self.epochs if self.epochs else 0.0


def _check_speed(speed: float | None) -> float | None:
    if speed is None:
        return None
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed) or speed <= 0:
        raise ConfigError(f"playback speed must be a positive number of epochs per second (or None), got {speed!r}")
    return float(speed)


def _by_epoch(engine: Engine, k: int) -> Iterator[list[EpochRecord]]:
    """Group the engine's records per epoch without asking for the next epoch early.

    The engine yields one record per live run per epoch, and reports a run's divergence once, in
    the epoch it died; so the count of the next epoch's records is known before it is computed.
    """
    it, live = iter(engine), k
    while live > 0:
        batch = list(itertools.islice(it, live))
        if not batch:
            return
        yield batch
        live -= sum(r.diverged is not None for r in batch)


class Job(BackgroundJob):
    """Train `runs` (one comparison) in a background thread; thread-safe accessors for the UI."""

    kind, what = "compare", "a training job"

    def __init__(
        self,
        runs: list[RunSpec],
        *,
        device: str = "auto",
        record: bool = True,
        dataset: Dataset | None = None,
        speed: float | None = None,
        on_done: Callable[[JobSnapshot], None] | None = None,
        paused: bool = False,  # start paused: the worker builds the engine, then waits for step/resume
        caps: Caps | None = None,
    ):
        super().__init__(on_done)
        self.runs = list(runs)
        self._kw = dict(device=device, record=record, dataset=dataset, caps=caps)
        self._epoch = 0
        self._epochs = self.runs[0].optim.epochs if self.runs else 0
        self._results = [RunResult(s) for s in self.runs]
        self._speed = _check_speed(speed)
        self._paused = paused
        self._steps = 0  # epochs granted by step_epoch while paused
        self._stepping = False  # the epoch in progress was granted by a step: a pause waits for its end

    def snapshot(self) -> JobSnapshot:
        return super().snapshot()

    def _snapshot_locked(self) -> JobSnapshot:
        return JobSnapshot(
            job_id=self.id,
            state=self._state,
            epoch=self._epoch,
            epochs=self._epochs,
            queue_position=self._queue_position if self._state == "queued" else None,
            error=self._error,
            results=[RunResult(r.spec, list(r.records)) for r in self._results],
            version=self._version,
            speed=self._speed,
        )

    # ---- controls (any thread) ----------------------------------------------------------------------
    def pause(self) -> None:
        """Pause within ~0.1 s, mid-epoch if need be (state turns 'paused' once the worker is waiting).

        A step from a mid-epoch pause finishes that epoch; an epoch granted by a step runs to its end.
        """
        with self._cond:
            self._paused = True
            self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            self._paused, self._steps = False, 0
            self._cond.notify_all()

    def step_epoch(self) -> None:
        """Train exactly one more epoch, then wait (pauses a playing job after the epoch in progress)."""
        with self._cond:
            if self._state in FINISHED:
                return
            if not self._paused:
                self._paused, self._steps = True, 0
            self._steps += 1
            self._cond.notify_all()

    def set_speed(self, speed: float | None) -> None:
        """Playback speed in epochs per second; None = as fast as possible. Takes effect at once."""
        speed = _check_speed(speed)
        with self._cond:
            self._set_locked(speed=speed)

    # ---- the worker ---------------------------------------------------------------------------------
    def _wait_turn(self, last_start: float | None) -> bool:
        """Block until the next epoch may start (pause, step, pace); False once stopped."""
        with self._cond:
            while not self._stop.is_set():
                if self._paused:
                    if self._steps > 0:
                        self._steps -= 1
                        self._stepping = True
                        if self._state != "running":
                            self._set_locked(state="running")
                        return True  # a step ignores the pace
                    if self._state != "paused":
                        self._set_locked(state="paused")
                    self._cond.wait()
                    continue
                if self._state != "running":
                    self._set_locked(state="running")
                self._stepping = False
                if self._speed is not None and last_start is not None:
                    remaining = last_start + 1 / self._speed - time.monotonic()
                    if remaining > 0:
                        self._cond.wait(remaining)  # woken early by stop, pause or a speed change: re-check
                        continue
                return True
            return False

    def _hold(self) -> bool:
        """The engine's between-steps hook: wait here while paused mid-epoch; False once stopped."""
        with self._cond:
            while self._paused and not self._stepping and not self._stop.is_set():
                if self._steps > 0:  # a step finishes the epoch in progress
                    self._steps -= 1
                    self._stepping = True
                    break
                if self._state != "paused":
                    self._set_locked(state="paused")
                self._cond.wait()
            if self._stop.is_set():
                return False
            if self._state != "running":
                self._set_locked(state="running")
            return True

    def _train(self) -> str:
        engine = Engine(self.runs, stop=self._stop, hold=self._hold, **self._kw)
        with self._cond:
            self._set_locked(epochs=engine.epochs)
        batches, last_start, dead, finished = _by_epoch(engine, len(self.runs)), None, 0, False
        while not finished and self._wait_turn(last_start):
            last_start = time.monotonic()
            batch = next(batches, None)
            if batch is None:  # the engine saw the stop event
                break
            with self._cond:
                for rec in batch:
                    self._results[rec.run].records.append(rec)
                self._set_locked(epoch=batch[0].epoch)
            # done now, not after one more pace or pause: last epoch trained, or every run diverged
            dead += sum(r.diverged is not None for r in batch)
            finished = batch[0].epoch >= engine.epochs or dead == len(self.runs)
        return "done" if finished else "stopped"


# ---- the server's jobs --------------------------------------------------------------------------
class JobBusy(RuntimeError):
    """The session already has a job of this kind running or queued; the UI asks whether to replace it."""


class JobStats(NamedTuple):
    running: int  # jobs holding a training slot (a stopped job holds it until its thread ends)
    queued: int
    max_running: int


REAP_INTERVAL = 10.0  # s between checks for closed tabs; streamlit itself keeps a disconnected session ~2 min


class JobManager:
    """At most `max_running` jobs train at once, the rest wait FIFO; one running/queued job per session and kind.

    Comparison Jobs and SweepJobs share the slots and the queue (a session may have one of each). While
    any job is active, a daemon 'clipviz-reaper' thread cancels the jobs of closed or expired sessions
    every `reap_interval` s (None: never; call reap() yourself); it ends when no job is left.
    """

    def __init__(
        self,
        max_running: int | None = None,
        *,
        reap_interval: float | None = REAP_INTERVAL,
        is_session_alive: Callable[[str], bool] | None = None,  # default: session_alive (Streamlit's runtime)
    ):
        if reap_interval is not None and not reap_interval > 0:
            raise ValueError(f"reap_interval must be positive seconds or None, got {reap_interval!r}")
        self.max_running = max_running or Caps.from_env().max_jobs
        self.reap_interval = reap_interval
        self._is_alive = is_session_alive or session_alive
        self._lock = threading.RLock()  # re-entrant: stopping a queued job calls back into _release
        self._changed = threading.Condition(self._lock)  # the reaper waits on it: jobs ended, or shutdown
        self._running: list[BackgroundJob] = []
        self._queue: deque[BackgroundJob] = deque()
        self._by_session: dict[tuple[str, str], BackgroundJob] = {}  # (session, kind) -> its current job
        self._reaper: threading.Thread | None = None
        self._closed = False  # shut down: no more submits, the reaper ends

    def submit(self, job: BackgroundJob, session_id: str, *, replace: bool = False) -> BackgroundJob:
        """Queue `job` for `session_id` (it starts at once if a slot is free) and return it.

        replace=True stops the session's current job of the same kind first (what it trained stays in
        that job, for the caller to keep); replace=False raises JobBusy if there is one.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("this JobManager was shut down")
            if job.session_id is not None or job.snapshot().state != "queued":
                raise ValueError(f"job {job.id} was already submitted or started")
            key = (session_id, job.kind)
            current = self._by_session.get(key)
            if current is not None and not current.snapshot().finished:
                if not replace:
                    raise JobBusy(f"{job.what} is already running in this session: stop it, or replace it")
                current.stop()
            job.session_id = session_id
            job._hooks.append(self._release)
            self._by_session[key] = job
            self._queue.append(job)
            self._schedule()
            if self._reaper is None and self.reap_interval is not None and not self._idle():
                self._reaper = threading.Thread(target=self._reap_loop, name="clipviz-reaper", daemon=True)
                self._reaper.start()
        return job

    def job_for(self, session_id: str, kind: str = "compare") -> BackgroundJob | None:
        """The session's current (running, paused or queued) job of this kind ('compare' or 'sweep'), if any."""
        with self._lock:
            return self._by_session.get((session_id, kind))

    def cancel_session(self, session_id: str) -> list[BackgroundJob]:
        """Stop and forget all the session's jobs (closed tab, expired session); returns them."""
        with self._lock:
            jobs = [j for j in (*self._running, *self._queue) if j.session_id == session_id]
            for key in [k for k in self._by_session if k[0] == session_id]:
                del self._by_session[key]
        for j in jobs:
            j.stop()  # a queued job is removed now; a running one frees its slot when its thread ends
        return jobs

    def reap(self, is_session_alive: Callable[[str], bool] | None = None) -> list[str]:
        """Cancel the jobs of sessions that are gone; returns their session ids. The reaper calls it."""
        alive = is_session_alive or self._is_alive
        with self._lock:
            sessions = list(dict.fromkeys(sid for sid, _ in self._by_session))
        dead = []
        for sid in sessions:
            try:
                gone = not alive(sid)
            except Exception:
                log.exception("clipviz: could not tell whether session %s is alive; keeping its job", sid)
                gone = False
            if gone:
                self.cancel_session(sid)
                dead.append(sid)
        return dead

    def active(self) -> list[BackgroundJob]:
        """Running jobs, then queued ones in the order they will start."""
        with self._lock:
            return [*self._running, *self._queue]

    def stats(self) -> JobStats:
        with self._lock:
            return JobStats(len(self._running), len(self._queue), self.max_running)

    @property
    def reaper(self) -> threading.Thread | None:
        """The reaper thread while one runs (for tests and diagnostics)."""
        return self._reaper

    def shutdown(self, timeout: float = 1.0) -> bool:
        """Stop every job and the reaper, wait up to `timeout` s for their threads; True if all ended. Final."""
        with self._lock:
            self._closed = True
            jobs = [*self._running, *self._queue]
            self._by_session.clear()
            reaper = self._reaper
            self._changed.notify_all()  # the reaper wakes now, not at its next interval
        for j in jobs:
            j.stop()
        deadline = time.monotonic() + timeout
        ended = all(j.join(max(0.0, deadline - time.monotonic())) for j in jobs)
        if reaper is not None:
            reaper.join(max(0.0, deadline - time.monotonic()))
            ended = ended and not reaper.is_alive()
        return ended

    def _idle(self) -> bool:
        """Caller holds the lock."""
        return self._closed or not (self._running or self._queue)

    def _reap_loop(self) -> None:
        """The reaper: reap every reap_interval s while jobs are active; end when none is left or on shutdown."""
        while True:
            with self._lock:
                if self._changed.wait_for(self._idle, self.reap_interval):
                    self._reaper = None  # under the lock: a submit after this starts a new reaper
                    return
            try:
                self.reap()
            except Exception:  # never let one bad pass end the reaper while jobs still run
                log.exception("clipviz: reaping closed sessions failed")

    def _schedule(self) -> None:
        """Start queued jobs while slots are free; renumber the rest. Caller holds the lock."""
        while self._queue and len(self._running) < self.max_running:
            job = self._queue.popleft()
            self._running.append(job)
            job.start()  # never raises: a job that cannot start fails and calls _release
        for i, job in enumerate(self._queue, 1):
            job._set_queue_position(i)

    def _release(self, job: BackgroundJob) -> None:
        """A job ended (or was stopped while queued): free its slot and start the next."""
        with self._lock:
            if job in self._running:
                self._running.remove(job)
            if job in self._queue:
                self._queue.remove(job)
            key = (job.session_id, job.kind)
            if job.session_id is not None and self._by_session.get(key) is job:
                del self._by_session[key]
            self._schedule()
            self._changed.notify_all()  # the reaper ends once no job is left


_manager: JobManager | None = None
_manager_lock = threading.Lock()


def get_manager() -> JobManager:
    """The server's one JobManager (the app may also wrap this in st.cache_resource)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = JobManager()
        return _manager


def session_alive(session_id: str) -> bool:
    """False only when a Streamlit runtime exists and no longer knows the session.

    Streamlit 1.67: `Runtime.is_active_session` (thread-safe) covers connected sessions; a
    disconnected one stays resumable for ~2 minutes in the session manager's storage (a TTL cache,
    evicted without any callback), which only the private `_session_mgr.get_session_info` sees.
    Without a runtime (tests, CLI, bare `python`) every session counts as alive.
    """
    try:
        from streamlit import runtime
    except ImportError:
        return True
    if not runtime.exists():
        return True
    rt = runtime.get_instance()
    if rt.is_active_session(session_id):
        return True
    get_info = getattr(getattr(rt, "_session_mgr", None), "get_session_info", None)
    if get_info is None:  # a future streamlit without it: only connected sessions count
        return False
    try:
        return get_info(session_id) is not None
    except Exception:  # storage changed under us (another thread): assume alive, ask again next rerun
        return True
