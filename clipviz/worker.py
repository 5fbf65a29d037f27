"""Where training happens: one loop that trains the jobs it is handed, epoch by epoch, driven by messages.

The same loop (`serve`) runs in a worker process of the local pool (the default), in a thread of the
caller's process (`InProcessExecutor`: tests, the CLI) and, with the epochs computed by a Ray actor, in
a driver thread for Ray. Jobs go in as small frozen tasks (specs), records come out as plain data
(pickled EpochRecords, RunSummaries), so the server never sees a tensor. One loop may hold several
jobs: it trains the one whose next epoch is due, least recently served first, and blocks on its inbox
while every job is paused or waiting for its pace, so a paced job does not hold a core while it waits.

Messages (plain tuples). In: ("run", tid, task), ("ctl", tid, op, arg) with op in stop/pause/resume/
step/speed, ("exit",). Out: ("ready", pid), ("started", tid, epochs), ("epoch", tid, records),
("progress", tid, epoch, epochs), ("state", tid, "running" | "paused"), ("end", tid, state, error, payload).
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .config import Caps, RunSpec
from .data import Dataset, load_dataset
from .engine import Engine
from .records import EpochRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompareTask:
    """One comparison: its runs train in lockstep and every epoch's records are streamed back."""

    runs: tuple[RunSpec, ...]  # the K runs, one engine job
    device: str = "auto"  # where the worker trains ("auto": CUDA if the worker has it)
    record: bool = True  # the engine's per-step records (False: losses only)
    caps: Caps | None = None  # limits to validate against (None: the worker's CLIPVIZ_* env)
    dataset: Dataset | None = None  # ready data (a user CSV); None: the worker loads runs[0].data
    speed: float | None = None  # epochs per second; None: as fast as possible
    paused: bool = False  # start parked: build the engine, then wait for step/resume
    steps: int = 0  # epochs granted by step before the job reached a worker


@dataclass(frozen=True)
class ChunkTask:
    """One sweep chunk: trained to the end, reported as progress per epoch and summaries at the end."""

    runs: tuple[RunSpec, ...]
    device: str = "auto"
    record: bool = True  # see clipviz.sweep.train_chunk
    dataset: Dataset | None = None


class Pacer:
    """Play, pause, step and playback speed of one job (TensorFlow Playground's controls), as plain state."""

    def __init__(self, speed: float | None = None, paused: bool = False, steps: int = 0):
        self.speed, self.paused, self.steps = speed, paused, steps
        self.stopped = False
        self.last_start: float | None = None  # monotonic time the previous epoch started

    def apply(self, op: str, arg: Any = None) -> None:
        if op == "stop":
            self.stopped = True
        elif op == "pause":
            self.paused = True
        elif op == "resume":
            self.paused, self.steps = False, 0
        elif op == "step":  # one more epoch, then wait (a playing job pauses after the epoch in progress)
            if not self.paused:
                self.paused, self.steps = True, 0
            self.steps += 1
        elif op == "speed":
            self.speed = arg
        else:
            raise ValueError(f"unknown control {op!r}")

    def wait(self, now: float) -> float | None:
        """Seconds until the next epoch may start (0: now); None: parked until a control message."""
        if self.paused:
            return 0.0 if self.steps > 0 else None  # a step ignores the pace
        if self.speed is None or self.last_start is None:
            return 0.0
        return max(0.0, self.last_start + 1 / self.speed - now)

    def begin(self, now: float) -> None:
        if self.paused:
            self.steps -= 1
        self.last_start = now


def by_epoch(engine: Engine) -> Iterator[list[EpochRecord]]:
    """Group the engine's records per epoch without asking for the next epoch early.

    The engine yields one record per live run per epoch, and reports a run's divergence once, in
    the epoch it died; so the count of the next epoch's records is known before it is computed.
    """
    it, live = iter(engine), engine.k
    while live > 0:
        batch = list(itertools.islice(it, live))
        if not batch:
            return
        yield batch
        live -= sum(r.diverged is not None for r in batch)


class Inbox:
    """The loop's queue, plus what must reach a job mid-epoch: its stop event, set the moment a stop
    arrives, and whether a pause is pending (the engine's hold hook parks on it between steps)."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.stops: dict[int, threading.Event] = {}
        self._cond = threading.Condition()
        self._paused: dict[int, bool] = {}  # tid -> a pause arrived and no resume/step/stop since
        self._released_by: dict[int, str] = {}  # tid -> the control that ended the last pause

    def put(self, msg: tuple) -> None:
        if msg[0] == "ctl":
            tid, op = msg[1], msg[2]
            if op == "stop" and tid in self.stops:
                self.stops[tid].set()  # the engine checks it between steps
            with self._cond:
                if op == "pause":
                    self._paused[tid] = True
                elif op in ("resume", "step", "stop"):
                    self._paused[tid] = False
                    self._released_by[tid] = op
                self._cond.notify_all()
        self.queue.put(msg)

    def pause_pending(self, tid: int) -> bool:
        with self._cond:
            return self._paused.get(tid, False)

    def park(self, tid: int) -> str:
        """Block while the job's pause lasts; returns what ended it: resume, step or stop."""
        with self._cond:
            self._cond.wait_for(lambda: not self._paused.get(tid, False))
            return self._released_by.get(tid, "resume")

    def forget(self, tid: int) -> None:
        self.stops.pop(tid, None)
        with self._cond:
            self._paused.pop(tid, None)
            self._released_by.pop(tid, None)


# opens a task: (epochs, per-epoch record batches); the local default builds an Engine here, Ray's asks an actor.
# arguments: the task, its stop event, the loop's dataset cache, and the engine's between-steps hold hook
Opener = Callable[..., tuple[int, Iterator[list[EpochRecord]]]]


def open_local(
    task: CompareTask | ChunkTask, stop: threading.Event, datasets: dict, hold: Callable[[], bool] | None = None
) -> tuple[int, Iterator]:
    runs = list(task.runs)
    ds = task.dataset
    if ds is None and runs:  # specs are deterministic: the worker loads the data itself, once per data spec
        if runs[0].data not in datasets:
            if len(datasets) >= 4:
                datasets.pop(next(iter(datasets)))
            datasets[runs[0].data] = load_dataset(runs[0].data, getattr(task, "caps", None))
        ds = datasets[runs[0].data]
    if isinstance(task, ChunkTask):
        kw = dict(device=task.device, record=task.record, histograms=False, dataset=ds, stop=stop)
        engine = Engine(runs, **kw, keep_records=False)  # a chunk keeps summaries, not records
    else:
        engine = Engine(runs, device=task.device, record=task.record, dataset=ds, caps=task.caps, stop=stop, hold=hold)
    return engine.epochs, by_epoch(engine)


class _Active:
    """A job the loop holds: its pacer, its record batches, and what it reported last."""

    def __init__(self, tid: int, task: Any, stop: threading.Event, opener: Opener, datasets: dict, hold=None):
        self.tid, self.task, self.stop = tid, task, stop
        self.stepping = False  # the epoch in progress was granted by a step: it runs to its end
        self.hold_steps = 0  # steps spent finishing an epoch paused mid-way (not to be granted again)
        chunk = isinstance(task, ChunkTask)
        self.pacer = Pacer() if chunk else Pacer(task.speed, task.paused, task.steps)
        self.summary = None
        if chunk:
            from .sweep import ChunkSummary  # the sweep's per-run summary, built here from the records

            self.summary = ChunkSummary(task.runs, task.record)
        self.epochs, self.batches = opener(task, stop, datasets, hold)
        self.k, self.dead, self.epoch = len(task.runs), 0, 0
        self.reported = "running"
        self.turn = 0  # when it was last served: the least recent due job goes first


def serve(
    inbox: Inbox, send: Callable[[tuple], None], *, opener: Opener = open_local, until_idle: bool = False
) -> None:
    """Train the jobs the inbox hands in until ("exit",) (or, with until_idle, until no job is left)."""
    active: dict[int, _Active] = {}
    datasets: dict = {}
    turns = itertools.count(1)

    def end(a: _Active, state: str, error: str | None = None, payload: Any = None) -> None:
        active.pop(a.tid, None)
        inbox.forget(a.tid)
        a.batches.close()  # frees what the job holds now (Ray: its actor), not when it is collected
        send(("end", a.tid, state, error, payload))

    def hold_for(tid: int) -> Callable[[], bool]:
        """The engine's between-steps hook: a pause that arrives mid-epoch parks the job here, if it has
        the worker to itself (with others on it, it pauses at the epoch's end so they go on). False: stop."""

        def hold() -> bool:
            a = active.get(tid)
            if a is None or a.stop.is_set():
                return a is None or not a.stop.is_set()
            if a.stepping or len(active) > 1 or not inbox.pause_pending(tid):
                return True
            a.reported = "paused"
            send(("state", tid, "paused"))
            released_by = inbox.park(tid)
            if released_by == "stop" or a.stop.is_set():
                return False
            if released_by == "step":  # a step from a mid-epoch pause finishes that epoch, then parks
                a.hold_steps += 1
                a.stepping = True
            a.reported = "running"
            send(("state", tid, "running"))
            return True

        return hold

    def handle(msg: tuple) -> bool:
        if msg[0] == "exit":
            return False
        if msg[0] == "run":
            tid, task = msg[1], msg[2]
            stop = inbox.stops.setdefault(tid, threading.Event())
            try:
                hold = hold_for(tid) if isinstance(task, CompareTask) else None
                a = _Active(tid, task, stop, opener, datasets, hold)
            except Exception as exc:  # a bad setup (ConfigError) or a data problem: the job fails, the loop goes on
                log.warning("clipviz job %s could not start", tid, exc_info=not _is_config_error(exc))
                inbox.forget(tid)
                send(("end", tid, "failed", f"{type(exc).__name__}: {exc}", None))
                return True
            active[tid] = a
            send(("started", tid, a.epochs))
        elif msg[0] == "ctl" and msg[1] in active:
            a = active[msg[1]]
            if msg[2] == "step" and a.hold_steps > 0:  # already spent finishing a paused epoch
                a.hold_steps -= 1
            else:
                a.pacer.apply(msg[2], msg[3])
        return True

    def train_one(a: _Active) -> None:
        a.stepping = a.pacer.paused  # only a step starts an epoch while paused
        a.pacer.begin(time.monotonic())
        a.turn = next(turns)
        if a.reported != "running":
            a.reported = "running"
            send(("state", a.tid, "running"))
        try:
            batch = next(a.batches, None)
        except BaseException as exc:  # noqa: BLE001 - a job's crash (even SystemExit) fails only that job
            log.exception("clipviz job %s failed", a.tid)
            end(a, "failed", f"{type(exc).__name__}: {exc}")
            return
        if batch is None:  # the engine saw the stop event
            end(a, "stopped")
            return
        a.epoch = batch[0].epoch
        a.dead += sum(r.diverged is not None for r in batch)
        if a.summary is not None:
            for rec in batch:
                a.summary.add(rec)
            send(("progress", a.tid, a.epoch, a.epochs))
        else:
            send(("epoch", a.tid, batch))
        # done now, not after one more pace or pause: last epoch trained, or every run diverged
        if a.epoch >= a.epochs or a.dead == a.k:
            end(a, "done", None, a.summary.finish() if a.summary is not None else None)

    while True:
        now, due, timeout = time.monotonic(), [], None
        for a in list(active.values()):
            if a.pacer.stopped or a.stop.is_set():
                end(a, "stopped")
                continue
            w = a.pacer.wait(now)
            if w is None and a.reported != "paused":
                a.reported = "paused"
                send(("state", a.tid, "paused"))
            if w == 0:
                due.append(a)
            elif w is not None:
                timeout = w if timeout is None else min(timeout, w)
        if due:
            train_one(min(due, key=lambda a: a.turn))
            timeout = 0.0  # look at the inbox, then at the jobs again
        if until_idle and not active and inbox.queue.empty():
            return
        try:
            msg = inbox.queue.get(timeout=timeout) if timeout != 0.0 else inbox.queue.get_nowait()
        except queue.Empty:
            continue
        if not handle(msg):
            return
        while True:  # every message that is waiting, before the next epoch
            try:
                msg = inbox.queue.get_nowait()
            except queue.Empty:
                break
            if not handle(msg):
                return


def _is_config_error(exc: BaseException) -> bool:
    from .config import ConfigError

    return isinstance(exc, ConfigError)


# ---- a worker process -----------------------------------------------------------------------------
def process_main(conn: Any, torch_threads: int) -> None:
    """Entry point of a spawned worker: one torch thread, a reader thread feeding the inbox, then serve()."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the server's terminal: the server shuts us down
    torch.set_num_threads(torch_threads)
    inbox = Inbox()

    def read() -> None:  # its own thread, so a stop reaches the engine's event during an epoch
        while True:
            try:
                msg = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):  # the server is gone: nothing left to train for
                inbox.put(("exit",))
                return
            inbox.put(msg)

    def send(msg: tuple) -> None:  # the standard pickler: tensors (none expected) travel by value
        conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))

    threading.Thread(target=read, name="clipviz-worker-inbox", daemon=True).start()
    send(("ready", os.getpid()))
    try:
        serve(inbox, send)
    except (BrokenPipeError, EOFError, OSError):  # the server went away mid-send
        pass


if __name__ == "__main__":  # started by clipviz.executors.WorkerPool: python -m clipviz.worker FD THREADS
    import sys
    from multiprocessing.connection import Connection

    from clipviz import worker  # the module, not this __main__ copy: unpickled tasks are clipviz.worker's classes

    worker.process_main(Connection(int(sys.argv[1])), int(sys.argv[2]))
