"""Jobs in the server: their state, their controls, and a JobManager that caps how many train at once.

`BackgroundJob` is what the manager queues: a stop event, a state and a queue position. `Job` (one
comparison) trains in an executor (clipviz.executors: a warm local worker process by default, Ray when
configured, this process for tests) and only keeps what it streams back; `clipviz.sweep.SweepJob` (a
threshold sweep) hands its chunks to the same executor from a thread that waits for them. Both share the
manager's slots and FIFO queue, and a session may hold one of each. The UI polls `snapshot()` (an
immutable copy with a `version` to skip redraws); every wait is a Condition wait. Play, pause, step and
playback speed work like TensorFlow Playground's. A reaper thread stops the jobs of closed tabs.
Nothing here draws or imports streamlit at import.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch

from .config import Caps, ConfigError, RunSpec
from .data import Dataset
from .executors import torch_threads, warm_up  # noqa: F401 - re-exported: the UI and tests use them here
from .records import RunResult

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


def configure_torch_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count for this thread and as the process default; returns it."""
    n = n or torch_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


# ---- what a JobManager runs ---------------------------------------------------------------------
def _joined(thread: threading.Thread | None, timeout: float | None) -> bool:
    """Join a job's thread (if it has one) within timeout; True once it has ended or never started."""
    if thread is not None:
        thread.join(timeout)
        return not thread.is_alive()
    return True


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
        self._released = False  # the done hooks have run: the slot is free
        self._busy_hooks: list[Callable[[], None]] = []  # JobManager's re-schedule when `busy` changes

    @property
    def busy(self) -> bool:
        """Trains flat out, so it counts against the manager's cap (a sweep always does)."""
        return True

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
        return _joined(self._thread, timeout)

    # ---- controls (any thread) ----------------------------------------------------------------------
    def start(self):
        """Start the worker now (a JobManager calls this when a slot frees). No-op unless queued.

        If the OS refuses a thread the job fails (never raises): the server keeps going.
        """
        return self._start_once(lambda: self._thread is not None, self._start_thread)

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"clipviz-{self.kind}-{self.id}", daemon=True)
        try:
            self._thread.start()
        except Exception:
            self._thread = None
            raise

    def _start_once(self, started: Callable[[], bool], launch: Callable[[], None]):
        """Mark a queued, not yet started job running and `launch` it, under the job's lock. If `launch`
        raises, the job fails with that message (the traceback goes to the log) and frees its slot."""
        with self._cond:
            if self._state != "queued" or started():
                return self
            self._set_locked(state="running")
            try:
                launch()
                failed = False
            except Exception as exc:
                log.exception("clipviz %s job %s could not start", self.kind, self.id)
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
        with self._cond:
            self._released = True  # join() returns from here on
            self._cond.notify_all()

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


class Job(BackgroundJob):
    """One comparison, trained by an executor (a worker process by default); thread-safe accessors for the UI.

    The job itself only keeps what the worker streamed back (records per epoch, its state) and forwards
    the controls; pause, step and pace are applied where the epochs are trained (clipviz.worker.Pacer).
    """

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
        executor: Any = None,  # where it trains; None: the process's (clipviz.executors.get_executor)
    ):
        super().__init__(on_done)
        self.runs = list(runs)
        self._kw = dict(device=device, record=record, dataset=dataset, caps=caps)
        self._executor = executor
        self._handle: Any = None
        self._epoch = 0
        self._epochs = self.runs[0].optim.epochs if self.runs else 0
        self._results = [RunResult(s) for s in self.runs]
        self._speed = _check_speed(speed)
        self._paused = paused
        self._steps = 0  # epochs granted by step_epoch before the job reached its worker

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

    @property
    def busy(self) -> bool:
        """Trains flat out: counts against the manager's cap (a paced or paused job mostly waits)."""
        return self._speed is None and not self._paused

    @property
    def thread(self) -> threading.Thread | None:
        """The training thread when the executor is this process (InProcessExecutor); else None."""
        return getattr(self._handle, "thread", None)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the job has ended and released its slot; True if it has (or never started)."""
        with self._cond:
            if self._state == "queued" and self._handle is None:
                return True
            if not self._cond.wait_for(lambda: self._released, timeout):
                return False
        return _joined(self.thread, timeout)

    # ---- controls (any thread) ----------------------------------------------------------------------
    def start(self):
        """Hand the job to its executor now (a JobManager calls this when a slot frees). No-op unless queued.

        If the executor refuses (no worker, Ray missing) the job fails (never raises): the server keeps going.
        """
        from .worker import CompareTask

        def launch() -> None:  # under the job's lock, with the controls as they are now
            kw = self._kw
            task = CompareTask(tuple(self.runs), kw["device"], kw["record"], kw["caps"], kw["dataset"])
            task = replace(task, speed=self._speed, paused=self._paused, steps=self._steps)
            self._handle = (self._executor or _default_executor()).launch(task, self)

        return self._start_once(lambda: self._handle is not None, launch)

    def stop(self) -> None:
        """Stop soon (within or after the epoch in progress); what was trained stays in the job."""
        with self._cond:
            self._stop.set()
            handle = self._handle
            never_started = self._state == "queued" and handle is None
            if never_started:
                self._set_locked(state="stopped")
        if handle is not None:
            handle.send("stop")
        if never_started:
            self._finish()

    def pause(self) -> None:
        """Pause after the epoch in progress (state turns 'paused' once the worker is waiting)."""
        self._control("pause", paused=True)

    def resume(self) -> None:
        self._control("resume", paused=False, steps=0)

    def step_epoch(self) -> None:
        """Train exactly one more epoch, then wait (pauses a playing job after the epoch in progress)."""
        with self._cond:
            if self._state in FINISHED:
                return
            steps = self._steps + 1 if self._paused else 1
        self._control("step", paused=True, steps=steps)

    def set_speed(self, speed: float | None) -> None:
        """Playback speed in epochs per second; None = as fast as possible. Takes effect at once."""
        speed = _check_speed(speed)
        self._control("speed", speed, speed=speed)

    def _control(self, op: str, arg: Any = None, **mirror: Any) -> None:
        """Mirror the control here (the snapshot, the cap's `busy`, a task not launched yet), then send it."""
        with self._cond:
            was = self.busy
            if "paused" in mirror:
                self._paused = mirror["paused"]
            if "steps" in mirror:
                self._steps = mirror["steps"]
            if "speed" in mirror:
                self._speed = mirror["speed"]
            if op == "resume" and self._state == "paused":
                self._state = "running"  # at once: the page offers Pause again (the worker confirms with its epochs)
            self._set_locked()
            handle, changed = self._handle, was != self.busy
        if handle is not None:
            handle.send(op, arg)
        if changed:
            for hook in list(self._busy_hooks):
                hook()

    # ---- what the executor reports (its dispatcher thread) --------------------------------------------------
    def on_message(self, kind: str, *args: Any) -> None:
        with self._cond:
            if self._state in FINISHED:
                return
            if kind == "started":
                self._set_locked(epochs=args[0])
            elif kind == "epoch":
                for rec in args[0]:
                    self._results[rec.run].records.append(rec)
                self._set_locked(epoch=args[0][0].epoch)
            elif kind == "state":
                self._set_locked(state=args[0])
        if kind == "end":
            state, error = args[0], args[1]
            if state == "failed":
                log.error("clipviz %s job %s failed: %s", self.kind, self.id, error)
            self._finish(state, error)


def _default_executor() -> Any:
    from .executors import get_executor

    return get_executor()


# ---- the server's jobs --------------------------------------------------------------------------
class JobBusy(RuntimeError):
    """The session already has a job of this kind running or queued; the UI asks whether to replace it."""


class JobStats(NamedTuple):
    running: int  # jobs started and not ended (paced and paused ones included)
    queued: int
    max_running: int


PACED_PER_SLOT = 4  # paced or paused jobs that may share one slot of the cap (see JobManager._schedule)
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
            job._busy_hooks.append(self._reschedule)
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
        """Start queued jobs (FIFO) while the cap allows; renumber the rest. Caller holds the lock.

        The cap counts jobs that train flat out (`busy`): at most max_running of them, one per worker by
        default. A paced or paused job mostly waits, so it does not hold a core: up to PACED_PER_SLOT of
        them share a slot (the worker trains whichever is due), which keeps every session's first epoch
        fast when a class presses Train at once. A job that turns busy while running is not preempted.
        """
        busy = sum(j.busy for j in self._running)
        while self._queue and len(self._running) < self.max_running * PACED_PER_SLOT:
            job = self._queue[0]
            if job.busy and busy >= self.max_running:
                break
            self._queue.popleft()
            self._running.append(job)
            busy += job.busy
            job.start()  # never raises: a job that cannot start fails and calls _release
        for i, job in enumerate(self._queue, 1):
            job._set_queue_position(i)

    def _reschedule(self) -> None:
        """A running job paused, resumed or changed its pace: a slot may have freed."""
        with self._lock:
            if not self._closed:
                self._schedule()

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
