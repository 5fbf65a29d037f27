"""Jobs on a Ray cluster (CLIPVIZ_EXECUTOR=ray, or --executor ray): Ray is optional and imported only here.

A comparison streams its epochs from an actor per job: the server-side loop (clipviz.worker.serve, in a
'clipviz-ray-N' thread that only waits) applies pause / step / pace and asks the actor for one epoch at
a time, so the controls behave as with local workers, and stop kills the actor. A sweep fans its chunks
out as Ray tasks, each a streaming generator that yields its per-epoch progress and then its summaries;
they are yielded as they land, cancel() cancels the tasks still running, finished chunks stay.

Connect with RAY_ADDRESS (Ray's own variable) or `RayExecutor(address)`; without either, a local Ray is
started. The clipviz package is shipped to the cluster's workers (runtime_env py_modules); torch,
numpy and scikit-learn must be installed there (the same requirements.txt).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .config import ConfigError, RunSpec
from .executors import ChunkFailed, Handle, Listener, _notify
from .worker import ChunkTask, Inbox, open_local, serve

INSTALL = "pip install -r requirements-ray.txt  (or: pip install 'clipviz[ray]')"


def import_ray() -> Any:
    """The ray module, or a ConfigError that names the install command."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the Ray executor was chosen but Ray is not installed: {INSTALL}") from None
    return ray


def runtime_env() -> dict:
    """Ship this clipviz package to the cluster's workers, so they train exactly this code."""
    return {"py_modules": [os.path.dirname(os.path.abspath(__file__))]}


def _cause(exc: Exception) -> Exception:
    """The user's exception inside Ray's wrapper (RayTaskError.cause), e.g. a ConfigError from the specs."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, Exception) else exc


# ---- what runs on the cluster -----------------------------------------------------------------------------
class EpochActor:
    """One comparison's engine, on a Ray worker: open() builds it, next() trains one epoch (None at the end)."""

    def open(self, task: Any) -> int:
        import torch

        torch.set_num_threads(1)  # one CPU reserved per actor: one torch thread (see clipviz.jobs)
        epochs, self.batches = open_local(task, threading.Event(), {})
        return epochs

    def next(self) -> list | None:
        return next(self.batches, None)


def chunk_stream(task: ChunkTask) -> Iterator[tuple]:
    """A sweep chunk as a Ray streaming generator: ("progress", epoch, epochs) per epoch, then ("done", summaries)."""
    import torch

    from .sweep import ChunkSummary

    torch.set_num_threads(1)
    summary = ChunkSummary(task.runs, task.record)
    epochs, batches = open_local(task, threading.Event(), {})
    for batch in batches:
        for rec in batch:
            summary.add(rec)
        yield ("progress", batch[0].epoch, epochs)
    yield ("done", summary.finish())


# ---- the executor ---------------------------------------------------------------------------------------------
class RayExecutor:
    """launch() for comparisons (an actor each), map()/cancel() for sweeps (a Ray task per chunk)."""

    def __init__(self, address: str | None = None, device: str = "auto", record: bool = True):
        ray = import_ray()
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            ray.init(address=address, runtime_env=runtime_env(), log_to_driver=False, include_dashboard=False)
        self.ray = ray
        self.device, self.record = device, record  # for map(): see clipviz.sweep.train_chunk
        # chunks the cluster trains at once (one CPU each): run_sweep splits a sweep into at least that many
        self.parallel = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._actor = ray.remote(num_cpus=1)(EpochActor)
        self._chunk = ray.remote(num_cpus=1)(chunk_stream)
        self._tids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict = {}
        self._cancelled = False

    # ---- comparisons ------------------------------------------------------------------------------------------
    def launch(self, task: Any, listener: Listener) -> Handle:
        tid = next(self._tids)
        inbox = Inbox()
        inbox.put(("run", tid, task))
        send = lambda m: _notify(listener, m[0], m[2:])  # noqa: E731
        kw = {"opener": self._open, "until_idle": True}
        threading.Thread(target=serve, args=(inbox, send), kwargs=kw, name=f"clipviz-ray-{tid}", daemon=True).start()
        return Handle(inbox.put, tid)

    def _open(self, task: Any, stop: threading.Event, datasets: dict, hold: Any = None) -> tuple[int, Iterator[list]]:
        """An actor for the task; its epochs one call each. `hold` (mid-epoch pause) does not cross to Ray:
        a pause there takes effect at the end of the epoch in progress."""
        ray = self.ray
        actor = self._actor.remote()
        try:
            epochs = ray.get(actor.open.remote(task))
        except Exception as exc:
            ray.kill(actor)
            raise _cause(exc) from None

        def batches() -> Iterator[list]:
            try:
                while not stop.is_set():
                    try:
                        batch = ray.get(actor.next.remote())
                    except Exception as exc:
                        raise _cause(exc) from None
                    if batch is None:
                        return
                    yield batch
            finally:  # done, stopped or failed: the actor's CPU goes back to the cluster
                ray.kill(actor)

        return epochs, batches()

    # ---- sweeps (clipviz.sweep.Executor) -------------------------------------------------------------------------
    def map(
        self, chunks: Sequence[Sequence[RunSpec]], on_epoch: Callable[[int, int, int], None] | None = None
    ) -> Iterator[tuple[int, list]]:
        ray = self.ray
        with self._lock:
            for i, runs in enumerate(chunks):
                if not self._cancelled:
                    self._pending[self._chunk.remote(ChunkTask(tuple(runs), self.device, self.record))] = i
        try:
            while True:
                with self._lock:
                    gens = list(self._pending)
                if not gens:
                    return
                ready, _ = ray.wait(gens, num_returns=1, timeout=1.0)  # the timeout re-reads the list after a cancel
                for gen in ready:
                    with self._lock:
                        i = self._pending.get(gen)
                    if i is None:
                        continue
                    try:
                        item = ray.get(next(gen))
                    except StopIteration:
                        with self._lock:
                            self._pending.pop(gen, None)
                        continue
                    except Exception as exc:
                        if self._cancelled:  # a cancelled chunk: dropped, like the local executors do
                            with self._lock:
                                self._pending.pop(gen, None)
                            continue
                        cause = _cause(exc)
                        raise ChunkFailed(f"{type(cause).__name__}: {cause}") from None
                    if item[0] == "progress":
                        if on_epoch is not None:
                            on_epoch(i, item[1], item[2])
                        continue
                    with self._lock:
                        self._pending.pop(gen, None)
                    yield i, item[1]
        finally:
            self._cancel_pending()

    def cancel(self) -> None:
        self._cancelled = True
        self._cancel_pending()

    def _cancel_pending(self) -> None:
        with self._lock:
            gens = list(self._pending)
            self._pending.clear()
        for gen in gens:
            try:
                self.ray.cancel(gen)
            except Exception:  # already finished: nothing to cancel
                pass

    @property
    def cancelled(self) -> bool:
        return self._cancelled
