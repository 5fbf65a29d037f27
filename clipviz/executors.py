"""Where jobs train, seen from the server: a pool of local worker processes (default), this process, or Ray.

An executor's `launch(task, listener)` starts a job (a worker.CompareTask or ChunkTask) and returns a
handle whose `send(op, arg)` delivers stop / pause / resume / step / speed; the job's messages come back
as `listener.on_message(kind, *args)` calls (kinds as in clipviz.worker) from one dispatcher thread.
`map(chunks, on_epoch)` / `cancel()` is the sweep side (clipviz.sweep.Executor) on top of launch.

The pool: CLIPVIZ_WORKERS processes (default: the core count), started with the 'spawn' method (no copy
of the server's threads or locks) and kept warm, each with one torch thread. A worker that dies (kill -9,
out of memory) is replaced; its jobs end 'failed' with the epochs they had streamed kept by the caller.
Choose with CLIPVIZ_EXECUTOR: process (default), inprocess, ray (see clipviz.ray_executor).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any
from typing import Any, Protocol

from .config import ConfigError, RunSpec

log = logging.getLogger(__name__)
EXECUTORS = ("process", "inprocess", "ray")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `import clipviz` works


class Listener(Protocol):
    busy: bool  # trains flat out (not paced, not paused): the pool spreads these over the workers first

    def on_message(self, kind: str, *args: Any) -> None: ...


class Handle:
    """A launched job: send it controls."""

    def __init__(self, deliver: Callable[[tuple], None], tid: int):
        self._deliver, self.tid = deliver, tid
        self.thread: threading.Thread | None = None  # the training thread, for the in-process executor only

    def send(self, op: str, arg: Any = None) -> None:
        self._deliver(("ctl", self.tid, op, arg))


def _notify(listener: Listener, kind: str, args: tuple) -> None:
    try:
        listener.on_message(kind, *args)
    except Exception:  # one job's bookkeeping must not end the dispatcher
        log.exception("clipviz: handling a %r message failed", kind)


def torch_threads() -> int:
    """Intra-op threads per training job: CLIPVIZ_TORCH_THREADS, default 1 (see clipviz.jobs)."""
    raw = os.environ.get("CLIPVIZ_TORCH_THREADS", "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(f"environment variable CLIPVIZ_TORCH_THREADS={raw!r} must be a positive integer")
    return int(raw)


def workers_from_env() -> int:
    """Worker processes: CLIPVIZ_WORKERS, default the core count."""
    raw = os.environ.get("CLIPVIZ_WORKERS", "").strip()
    if not raw:
        return os.cpu_count() or 1
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(f"environment variable CLIPVIZ_WORKERS={raw!r} must be a positive integer")
    return int(raw)


# ---- local worker processes -------------------------------------------------------------------------
class _Worker:
    """One worker process: a fresh interpreter (`python -m clipviz.worker`, i.e. spawn, not fork: none of
    the server's threads or locks are copied, and unlike multiprocessing's spawn it never re-imports the
    server's main module) talking over a socket pair."""

    def __init__(self, threads: int):
        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "clipviz.worker", str(theirs.fileno()), str(threads)]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
        theirs.close()  # ours is the only other end: the pipe reads EOF when the worker dies
        self.conn = Connection(ours.detach())
        self.tasks: dict[int, Listener] = {}
        self.ready = threading.Event()
        self.ready_after: float | None = None  # seconds from start to 'ready' (interpreter + torch imports)
        self.dead = False
        self._send_lock = threading.Lock()

    def deliver(self, msg: tuple) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        with self._send_lock:
            if self.dead:
                return
            try:
                self.conn.send_bytes(data)
            except OSError:  # it died: the dispatcher reports its jobs
                pass


class WorkerPool:
    """Warm local worker processes; each trains its jobs (several when paced) and streams their records back."""

    def __init__(self, workers: int | None = None, threads: int | None = None):
        self.size = workers or workers_from_env()
        self._threads = threads or torch_threads()
        self._lock = threading.Lock()
        self._tids = itertools.count(1)
        self._closed = False
        wake_r, wake_w = socket.socketpair()  # wakes the dispatcher on shutdown
        self._wake_r, self._wake_w = Connection(wake_r.detach()), Connection(wake_w.detach())
        self.workers = [_Worker(self._threads) for _ in range(self.size)]
        self.replaced = 0  # workers that died and were replaced
        self._thread = threading.Thread(target=self._dispatch, name="clipviz.pool", daemon=True)
        self._thread.start()

    # ---- the executor interface -------------------------------------------------------------------------
    def launch(self, task: Any, listener: Listener) -> Handle:
        with self._lock:
            if self._closed:
                raise RuntimeError("this worker pool was shut down")
            tid = next(self._tids)
            # a warm worker first (a cold one is still importing torch), then the fewest flat-out jobs
            # (one per worker while there are free ones), then the fewest jobs
            w = min(
                self.workers,
                key=lambda w: (not w.ready.is_set(), sum(t.busy for t in w.tasks.values()), len(w.tasks)),
            )
            w.tasks[tid] = listener
        w.deliver(("run", tid, task))
        return Handle(w.deliver, tid)

    def wait_ready(self, timeout: float) -> bool:
        """Block until every worker has imported torch and said 'ready' (the warm-up), up to timeout s."""
        deadline = time.monotonic() + timeout
        return all(w.ready.wait(max(0.0, deadline - time.monotonic())) for w in list(self.workers))

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    def busy_workers(self) -> int:
        with self._lock:
            return sum(bool(w.tasks) for w in self.workers)

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self.workers)
        for w in workers:
            if w.ready.is_set():
                w.deliver(("exit",))
            else:  # still importing torch (a replacement started as the server is being stopped): it holds nothing
                w.proc.kill()  # and would read 'exit' only after the import (seen: 4.7 s of every server's stop)
        self._wake_w.send_bytes(b"x")
        deadline = time.monotonic() + timeout
        for w in workers:
            try:
                w.proc.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(1.0)
        self._thread.join(max(0.1, deadline - time.monotonic()))

    # ---- the dispatcher thread ----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                by_conn = {w.conn: w for w in self.workers}
            for r in wait_any([*by_conn, self._wake_r]):
                w = by_conn.get(r)
                if w is not None and not w.dead and not self._drain(w):
                    self._died(w)

    def _drain(self, w: _Worker) -> bool:
        """Handle everything the worker sent; False once its socket is closed (it died or exited)."""
        try:
            self._handle(w, pickle.loads(w.conn.recv_bytes()))
            while w.conn.poll():
                self._handle(w, pickle.loads(w.conn.recv_bytes()))
            return True
        except (EOFError, OSError):
            return False

    def _handle(self, w: _Worker, msg: tuple) -> None:
        if msg[0] == "ready":
            w.ready_after = time.monotonic() - w.started
            w.ready.set()
            return
        kind, tid, args = msg[0], msg[1], msg[2:]
        with self._lock:
            listener = w.tasks.pop(tid, None) if kind == "end" else w.tasks.get(tid)
        if listener is not None:
            _notify(listener, kind, args)

    def _died(self, w: _Worker) -> None:
        try:
            code = w.proc.wait(5.0)
        except subprocess.TimeoutExpired:  # it closed its socket but lives on: it is of no use now
            w.proc.kill()
            code = w.proc.wait(5.0)
        how = f"killed by signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        with self._lock:
            w.dead = True
            orphans = list(w.tasks.values())
            w.tasks.clear()
            if self._closed:
                return
            self.workers[self.workers.index(w)] = _Worker(self._threads)  # a fresh one, warming up
            self.replaced += 1
        w.conn.close()
        log.error("clipviz worker process %s died (%s); %d job(s) failed, replaced it", w.proc.pid, how, len(orphans))
        for listener in orphans:
            err = f"WorkerDied: the worker process training this job ended ({how}); the epochs it finished are kept"
            _notify(listener, "end", ("failed", err, None))


# ---- this process -----------------------------------------------------------------------------------------
class InProcessExecutor:
    """Each job trains in its own thread of this process (tests, the CLI's single run): no process hop."""

    def __init__(self) -> None:
        self._tids = itertools.count(1)

    def launch(self, task: Any, listener: Listener) -> Handle:
        from .worker import Inbox

        tid = next(self._tids)
        inbox = Inbox()
        inbox.put(("run", tid, task))
        name = "clipviz-chunk" if type(task).__name__ == "ChunkTask" else "clipviz-compare"
        t = threading.Thread(target=self._serve, args=(inbox, listener, tid), name=f"{name}-{tid}", daemon=True)
        t.start()
        handle = Handle(inbox.put, tid)
        handle.thread = t
        return handle

    @staticmethod
    def _serve(inbox: Any, listener: Listener, tid: int) -> None:
        from .jobs import configure_torch_threads
        from .worker import serve

        try:
            configure_torch_threads()  # this thread's own count too (see jobs.py)
        except Exception as exc:  # a bad CLIPVIZ_TORCH_THREADS fails the job with its message
            _notify(listener, "end", ("failed", f"{type(exc).__name__}: {exc}", None))
            return
        serve(inbox, lambda m: _notify(listener, m[0], m[2:]), until_idle=True)


# ---- sweeps on top of launch ------------------------------------------------------------------------------
class _ChunkListener:
    busy = True

    def __init__(self, i: int, out: queue.Queue):
        self.i, self.out = i, out

    def on_message(self, kind: str, *args: Any) -> None:
        if kind in ("progress", "end"):
            self.out.put((kind, self.i, args))


class ChunkExecutor:
    """A sweep's chunks as jobs of an executor (the pool by default), `parallel` at a time; cancellable.

    clipviz.sweep.Executor: yields (index, summaries) as chunks finish, in any order; cancel() stops the
    chunks in progress (dropped) and launches no more; chunks already yielded stay with the caller.
    """

    def __init__(self, base: Any = None, device: str = "auto", record: bool = True, parallel: int | None = None):
        self.base = base or get_executor()
        self.device, self.record = device, record
        self.parallel = parallel or getattr(self.base, "size", 1)
        self._lock = threading.Lock()
        self._handles: dict[int, Handle] = {}
        self._cancelled = False

    def map(
        self, chunks: Sequence[Sequence[RunSpec]], on_epoch: Callable[[int, int, int], None] | None = None
    ) -> Iterator[tuple[int, list]]:
        out: queue.Queue = queue.Queue()
        todo = list(enumerate(chunks))[::-1]
        try:
            yield from self._run(todo, out, on_epoch)
        finally:  # the caller stopped iterating (or a chunk failed): nothing keeps training for it
            self._stop_all()

    def _run(self, todo: list, out: queue.Queue, on_epoch: Callable | None) -> Iterator[tuple[int, list]]:
        from .worker import ChunkTask

        while todo or self._handles:
            with self._lock:
                while todo and len(self._handles) < self.parallel and not self._cancelled:
                    i, runs = todo.pop()
                    task = ChunkTask(tuple(runs), self.device, self.record)
                    self._handles[i] = self.base.launch(task, _ChunkListener(i, out))
                if self._cancelled and not self._handles:
                    return
            kind, i, args = out.get()
            if kind == "progress":
                if on_epoch is not None:
                    on_epoch(i, *args)
                continue
            with self._lock:
                self._handles.pop(i, None)
            state, error, payload = args
            if state == "failed":
                raise ChunkFailed(error)
            if state == "done":
                yield i, payload

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
        self._stop_all()

    def _stop_all(self) -> None:
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
        for h in handles:
            h.send("stop")

    @property
    def cancelled(self) -> bool:
        return self._cancelled


class ChunkFailed(RuntimeError):
    """A sweep chunk failed in its worker (the message says why); chunks finished before are kept."""


# ---- the server's executor --------------------------------------------------------------------------------
_executor: Any = None
_executor_lock = threading.Lock()


def executor_kind() -> str:
    kind = os.environ.get("CLIPVIZ_EXECUTOR", "process").strip().lower() or "process"
    if kind not in EXECUTORS:
        raise ConfigError(f"CLIPVIZ_EXECUTOR={kind!r} must be one of {', '.join(EXECUTORS)}")
    return kind


def make_executor(kind: str | None = None, *, address: str | None = None, workers: int | None = None) -> Any:
    kind = kind or executor_kind()
    if kind == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(address)
    if kind == "inprocess":
        return InProcessExecutor()
    return WorkerPool(workers)


def sweep_executor(device: str = "auto", record: bool = True) -> Any:
    """A fresh clipviz.sweep.Executor for one sweep on the process's executor: Ray tasks, or pool chunks."""
    base = get_executor()
    if hasattr(base, "map"):  # Ray: one instance per sweep (its pending tasks and cancel flag)
        return type(base)(device=device, record=record)
    return ChunkExecutor(base, device=device, record=record)


def get_executor() -> Any:
    """This process's executor (CLIPVIZ_EXECUTOR), made on first use and kept (a warm pool)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = make_executor()
            if hasattr(_executor, "shutdown"):
                atexit.register(_executor.shutdown)
        return _executor


def warm_up(wait: float = 0.0) -> None:
    """Start the process's executor now and wait up to `wait` s for its workers to be ready. The app calls it
    first thing, so the workers import torch while the server does. Logs instead of raising: a missing Ray
    or a bad CLIPVIZ_WORKERS then fails the first job with its message, in the page."""
    try:
        ex = get_executor()
        if wait and hasattr(ex, "wait_ready") and not ex.wait_ready(wait):
            log.warning("clipviz: the worker processes were not ready after %g s; jobs wait for them", wait)
    except Exception:
        log.exception("clipviz: the executor could not start")
