"""Background jobs: streaming, stop/pause/step/pace, crashes, the FIFO queue, sessions, sweeps in the same
queue, the reaper of closed tabs, no leaked threads.

Jobs built without an executor train in the process's default one: the warm pool of worker processes
(test_default_executor_is_the_worker_pool), so these tests cross the process boundary. Tests that swap
the engine for a stand-in use the in-process executor, where a monkeypatch reaches.

Every wait is on a Condition or Event with a bounded deadline (Job.wait_until, Event.wait, join);
nothing sleeps in place of synchronisation.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

import pytest
import torch

from clipviz import jobs, worker
from clipviz.config import TUTORIAL, TUTORIAL_CLIPS, ClipSpec, ConfigError, with_clips
from clipviz.engine import Engine
from clipviz.executors import InProcessExecutor, WorkerPool, get_executor
from clipviz.jobs import Job, JobBusy, JobManager, get_manager, session_alive
from clipviz.records import EpochRecord
from clipviz.sweep import LocalExecutor, LogRange, RunSummary, SweepJob, make_sweep, plan_chunks

T = 10.0  # deadline for anything that should happen "soon"; only reached when a test fails


def _runs(epochs: int = 5, label: str = ""):
    base = replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=epochs))
    runs = with_clips(base, TUTORIAL_CLIPS)
    return [replace(r, label=f"{label}{r.label}") for r in runs] if label else runs


def _lengths(snap):
    return {r.label: len(r.records) for r in snap.results}


@pytest.fixture(autouse=True)
def no_leaked_threads():
    yield
    for t in threading.enumerate():
        if t.name.startswith("clipviz-"):  # job workers (clipviz-compare-N, clipviz-sweep-N) and clipviz-reaper
            t.join(T)
            assert not t.is_alive(), f"{t.name} outlived its test"


@pytest.fixture
def manager():
    made = []

    def make(max_running, **kw):
        made.append(JobManager(max_running, **kw))
        return made[-1]

    yield make
    for m in made:
        assert m.shutdown(T)


def test_default_executor_is_the_worker_pool():
    ex = get_executor()
    assert isinstance(ex, WorkerPool) and ex is get_executor() and ex.wait_ready(60)


def test_job_streams_records_and_finishes_the_tutorial():
    job = Job(_runs(5), device="cpu", paused=True).start()
    s0 = job.wait_until(lambda s: s.state == "paused", T)
    assert (s0.epoch, s0.epochs, s0.queue_position, s0.error) == (0, 5, None, None)
    assert _lengths(s0) == {"none": 0, "value:5": 0, "norm:1": 0}
    job.step_epoch()
    s1 = job.wait_until(lambda s: s.state == "paused" and s.epoch == 1, T)
    assert _lengths(s1) == {"none": 1, "value:5": 1, "norm:1": 1}
    assert s1.version > s0.version
    job.resume()
    s = job.wait_until(lambda s: s.finished, T)
    assert (s.state, s.epoch, s.progress) == ("done", 5, 1.0) and s.version > s1.version
    assert job.snapshot().version == s.version  # nothing changes after the end: the UI can stop polling
    by = {r.label: r for r in s.results}
    assert by["none"].diverged is not None and by["none"].diverged[0] == 1 and len(by["none"].records) == 1
    for label in ("value:5", "norm:1"):
        assert by[label].diverged is None and [e.epoch for e in by[label].records] == [1, 2, 3, 4, 5]
    assert _lengths(s1) == {"none": 1, "value:5": 1, "norm:1": 1}  # a snapshot is a copy: it never grows
    assert job.join(T) and job.thread is None  # it trained in a worker process, not in a thread here


@pytest.mark.parametrize("where", ["between paced epochs", "while training"])
def test_stop_keeps_finished_epochs_and_ends_the_thread(where):
    job = Job(_runs(1000), device="cpu", speed=0.05 if where == "between paced epochs" else None).start()
    job.wait_until(lambda s: s.epoch >= (1 if where == "between paced epochs" else 3), T)
    job.stop()
    assert job.join(T)
    s = job.snapshot()
    assert s.state == "stopped" and 1 <= s.epoch < 1000 and s.error is None
    lengths = _lengths(s)
    assert lengths["none"] == 1  # diverged in epoch 1, then frozen
    assert lengths["value:5"] == lengths["norm:1"] == s.epoch


def test_pause_then_step_trains_exactly_one_epoch_each():
    job = Job(_runs(1000), device="cpu").start()
    job.wait_until(lambda s: s.epoch >= 1, T)
    job.pause()
    e = job.wait_until(lambda s: s.state == "paused", T).epoch
    job.step_epoch()
    s = job.wait_until(lambda s: s.state == "paused" and s.epoch == e + 1, T)
    assert _lengths(s)["value:5"] == e + 1
    job.step_epoch()
    job.step_epoch()
    job.wait_until(lambda s: s.state == "paused" and s.epoch == e + 3, T)
    with pytest.raises(TimeoutError):  # parked: no further epoch comes
        job.wait_until(lambda s: s.epoch > e + 3, 0.3)
    job.stop()
    assert job.join(T) and job.snapshot().state == "stopped"


def test_speed_paces_epochs_and_can_change_while_running():
    epochs, speed = 10, 50.0
    t0 = time.monotonic()
    job = Job(_runs(epochs), device="cpu", speed=speed).start()
    assert job.wait_until(lambda s: s.finished, T).state == "done"
    assert time.monotonic() - t0 >= 0.9 * (epochs - 1) / speed  # the first epoch starts at once
    slow = Job(_runs(5), device="cpu", speed=0.05).start()  # 20 s per epoch...
    slow.wait_until(lambda s: s.epoch == 1, T)
    slow.set_speed(None)  # ...until the waiting worker is woken to go full speed
    assert slow.wait_until(lambda s: s.finished, T).state == "done"
    with pytest.raises(ConfigError, match="speed"):
        slow.set_speed(0)


def test_a_job_ends_at_its_last_epoch_or_last_live_run_even_when_paced():
    # 20 s per epoch: a worker that waited for the pace before finding out it was done would time out
    last = Job(_runs(2), device="cpu", speed=0.05, paused=True).start()
    last.step_epoch()
    last.step_epoch()
    assert last.wait_until(lambda s: s.finished, T).state == "done"
    alone = with_clips(replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=5)), [ClipSpec("none")])
    s = Job(alone, device="cpu", speed=0.05).start().wait_until(lambda s: s.finished, T)
    assert s.state == "done" and s.epoch == 1 and s.results[0].diverged is not None


def test_a_crash_fails_the_job_keeps_its_runs_and_frees_the_slot(monkeypatch, caplog, manager):
    class Exploding(Engine):
        def __iter__(self):
            for rec in super().__iter__():
                if self.epoch > 2:
                    raise RuntimeError("CUDA out of memory (pretend)")
                yield rec

    monkeypatch.setattr(worker, "Engine", Exploding)
    mgr = manager(1)
    done = threading.Event()
    ex = InProcessExecutor()  # where the monkeypatch reaches
    bad = mgr.submit(Job(_runs(5), device="cpu", on_done=lambda snap: done.set(), executor=ex), "s1")
    good = mgr.submit(Job(_runs(2), device="cpu", executor=ex), "s2")  # waits for bad's slot; never reaches epoch 3
    with caplog.at_level(logging.ERROR, logger="clipviz.worker"):
        s = bad.wait_until(lambda s: s.finished, T)
        assert done.wait(T)
        assert good.wait_until(lambda s: s.finished, T).state == "done"
    assert s.state == "failed" and s.error == "RuntimeError: CUDA out of memory (pretend)"
    assert s.epoch == 2 and _lengths(s) == {"none": 1, "value:5": 2, "norm:1": 2}
    assert any(r.exc_info for r in caplog.records)  # the traceback goes to the log, not the message
    assert mgr.stats()[:2] == (0, 0)


def test_a_bad_setup_fails_with_a_human_message():
    runs = [_runs(5)[0], _runs(6)[1]]  # epochs differ: cannot train together
    s = Job(runs, device="cpu").start().wait_until(lambda s: s.finished, T)
    assert s.state == "failed" and s.error.startswith("ConfigError: runs trained together must share")
    assert "Traceback" not in s.error and all(not r.records for r in s.results)


class _Gated:
    """Stands in for Engine: blocks until its gate opens, counts how many train at once."""

    cv = threading.Condition()
    gates: dict[str, threading.Event] = {}
    started: list[str] = []
    now = peak = 0
    threads: list[int] = []

    def __init__(self, runs, *, stop, **_):
        self.runs, self.stop, self.epochs, self.epoch = runs, stop, runs[0].optim.epochs, 0
        self.k = len(runs)

    def __iter__(self):
        tag, cls = self.runs[0].label, type(self)
        with cls.cv:
            cls.started.append(tag)
            cls.threads.append(torch.get_num_threads())
            cls.now += 1
            cls.peak = max(cls.peak, cls.now)
            cls.cv.notify_all()
        try:
            cls.gates[tag].wait(T)
            while self.epoch < self.epochs and not self.stop.is_set():
                self.epoch += 1
                for i, r in enumerate(self.runs):
                    yield EpochRecord(i, r.name, self.epoch, 1.0, 1.0, [], [], {}, 0.0, 0.0)
        finally:
            with cls.cv:
                cls.now -= 1

    @classmethod
    def wait_started(cls, n):
        with cls.cv:
            assert cls.cv.wait_for(lambda: len(cls.started) >= n, T)


@pytest.fixture
def gated(monkeypatch):
    monkeypatch.setattr(worker, "Engine", _Gated)
    ex = InProcessExecutor()  # where the monkeypatch reaches
    _Gated.gates, _Gated.started, _Gated.threads, _Gated.now, _Gated.peak = {}, [], [], 0, 0

    def job(tag):
        _Gated.gates[tag] = threading.Event()
        return Job([replace(TUTORIAL, label=tag, optim=replace(TUTORIAL.optim, epochs=2))], executor=ex)

    yield job
    for g in _Gated.gates.values():
        g.set()


def test_queue_is_fifo_and_caps_running_jobs(gated, manager):
    mgr = manager(2)
    a, b, c, d = (mgr.submit(gated(tag), f"session-{tag}") for tag in "abcd")
    assert [j.snapshot().state for j in (a, b, c, d)] == ["running", "running", "queued", "queued"]
    assert (c.snapshot().queue_position, d.snapshot().queue_position) == (1, 2)
    assert tuple(mgr.stats()) == (2, 2, 2) and mgr.active() == [a, b, c, d]
    _Gated.wait_started(2)
    _Gated.gates["a"].set()
    c.wait_until(lambda s: s.state == "running", T)
    assert d.wait_until(lambda s: s.queue_position == 1, T).state == "queued"
    _Gated.wait_started(3)
    for tag in "bcd":
        _Gated.gates[tag].set()
    for j in (a, b, c, d):
        s = j.wait_until(lambda s: s.finished, T)
        assert s.state == "done" and s.epoch == 2
    # a and b start together (either may reach the engine first); c, then d, as slots free
    assert sorted(_Gated.started[:2]) == ["a", "b"] and _Gated.started[2:] == ["c", "d"] and _Gated.peak == 2
    assert _Gated.threads == [jobs.torch_threads()] * 4  # each worker trains with CLIPVIZ_TORCH_THREADS (default 1)


def test_one_job_per_session(manager):
    mgr = manager(1)
    old = mgr.submit(Job(_runs(5), device="cpu", paused=True), "s")
    old.step_epoch()
    old.wait_until(lambda s: s.state == "paused" and s.epoch == 1, T)
    with pytest.raises(JobBusy, match="already running"):
        mgr.submit(Job(_runs(5), device="cpu"), "s")
    new = mgr.submit(Job(_runs(5), device="cpu"), "s", replace=True)
    assert mgr.job_for("s") is new
    assert old.join(T)
    s = old.snapshot()
    assert s.state == "stopped" and _lengths(s) == {"none": 1, "value:5": 1, "norm:1": 1}  # the app keeps these
    assert new.wait_until(lambda s: s.finished, T).state == "done"  # started once old freed the only slot
    with pytest.raises(ValueError, match="already submitted"):
        mgr.submit(new, "other")


def test_cancel_session_stops_running_and_queued_jobs(manager):
    mgr = manager(1)
    running = mgr.submit(Job(_runs(1000), device="cpu"), "s1")  # flat out: holds the only slot
    queued = mgr.submit(Job(_runs(5), device="cpu"), "s2")
    last = mgr.submit(Job(_runs(5), device="cpu"), "s3")
    running.wait_until(lambda s: s.epoch >= 1, T)
    assert queued.snapshot().queue_position == 1 and last.snapshot().queue_position == 2
    assert mgr.cancel_session("s2") == [queued]
    assert queued.snapshot().state == "stopped" and queued.thread is None
    assert last.snapshot().queue_position == 1
    assert mgr.cancel_session("s1") == [running]
    assert running.join(T) and running.snapshot().state == "stopped"
    assert last.wait_until(lambda s: s.finished, T).state == "done"
    assert last.join(T) and tuple(mgr.stats()) == (0, 0, 1) and mgr.job_for("s3") is None


def test_paced_and_paused_jobs_share_a_slot_flat_out_jobs_queue(manager):
    mgr = manager(1)
    paced = [mgr.submit(Job(_runs(1000), device="cpu", speed=2.0), "p")]
    paused = mgr.submit(Job(_runs(5), device="cpu", paused=True), "q")
    flat = mgr.submit(Job(_runs(1000), device="cpu"), "f")  # the one slot's flat-out job
    after = mgr.submit(Job(_runs(5), device="cpu"), "g")
    for j in paced:  # every paced session sees its first epoch at once, none waits in the queue
        j.wait_until(lambda s: s.epoch >= 1, T)
    assert paused.wait_until(lambda s: s.state == "paused", T).epoch == 0
    flat.wait_until(lambda s: s.epoch >= 1, T)
    assert after.snapshot().queue_position == 1 and tuple(mgr.stats()) == (3, 1, 1)
    flat.pause()  # no longer flat out: the queued job gets the slot
    assert after.wait_until(lambda s: s.finished, T).state == "done"
    for j in (*paced, paused, flat):
        j.stop()
        assert j.join(T)


def test_reap_cancels_jobs_of_sessions_that_are_gone(manager):
    mgr = manager(2)
    alive = mgr.submit(Job(_runs(5), device="cpu", paused=True), "alive")
    dead = mgr.submit(Job(_runs(5), device="cpu", paused=True), "dead")
    assert mgr.reap(lambda sid: sid == "alive") == ["dead"]
    assert dead.join(T) and dead.snapshot().state == "stopped" and mgr.job_for("dead") is None

    def broken(sid):
        raise RuntimeError("cannot tell")

    assert mgr.reap(broken) == []  # unsure: keep the job, ask again on the next rerun
    assert mgr.reap() == []  # no Streamlit runtime here: every session counts as alive
    assert alive.snapshot().state in ("running", "paused") and mgr.job_for("alive") is alive


def test_session_alive_without_runtime_and_manager_singleton():
    assert session_alive("anything")
    assert get_manager() is get_manager()


def test_bad_thread_setting_fails_the_job(monkeypatch):
    monkeypatch.setenv("CLIPVIZ_TORCH_THREADS", "two")
    s = Job(_runs(2), device="cpu", executor=InProcessExecutor()).start().wait_until(lambda s: s.finished, T)
    assert s.state == "failed" and "CLIPVIZ_TORCH_THREADS" in s.error
    with pytest.raises(ConfigError, match="CLIPVIZ_TORCH_THREADS"):  # a pool asked for then says so too
        WorkerPool(1)


# ---- the reaper ---------------------------------------------------------------------------------
def test_reaper_stops_jobs_of_a_closed_tab_without_another_submit(manager):
    alive = {"tab", "other"}
    mgr = manager(3, reap_interval=0.05, is_session_alive=lambda sid: sid in alive)
    paused = mgr.submit(Job(_runs(5), device="cpu", paused=True), "tab")
    sweep = mgr.submit(SweepJob(_sweep(), executor=_GatedExecutor()), "tab")
    other = mgr.submit(Job(_runs(5), device="cpu", speed=0.05), "other")  # paced: 20 s per epoch
    reaper = mgr.reaper
    assert reaper is not None and reaper.name == "clipviz-reaper" and reaper.is_alive()
    paused.wait_until(lambda s: s.state == "paused", T)
    alive.discard("tab")  # the tab closed: no rerun, no submit from now on
    assert paused.wait_until(lambda s: s.finished, T).state == "stopped"
    assert sweep.wait_until(lambda s: s.finished, T).state == "stopped"
    assert mgr.job_for("tab") is None and mgr.job_for("tab", "sweep") is None
    assert other.snapshot().state == "running" and mgr.reaper is reaper  # alive sessions keep theirs
    alive.clear()  # the last tab closes too: its paced job stops, and with no job left the reaper ends
    assert other.wait_until(lambda s: s.finished, T).state == "stopped"
    reaper.join(T)
    assert not reaper.is_alive() and mgr.reaper is None and tuple(mgr.stats()) == (0, 0, 3)


def test_reaper_ends_with_the_last_job_and_comes_back_on_demand(manager):
    mgr = manager(1, reap_interval=3600)  # an hour: only a wake-up, never the interval, can end it in time
    first = mgr.submit(Job(_runs(2), device="cpu", paused=True), "s")  # held until we hold the reaper
    reaper = mgr.reaper
    assert reaper is not None and reaper.is_alive()
    first.resume()
    assert first.wait_until(lambda s: s.finished, T).state == "done"
    reaper.join(T)
    assert not reaper.is_alive() and mgr.reaper is None
    second = mgr.submit(Job(_runs(5), device="cpu", paused=True), "s")
    assert mgr.reaper is not None and mgr.reaper is not reaper and mgr.reaper.is_alive()
    second.wait_until(lambda s: s.state == "paused", T)
    again = mgr.reaper
    assert mgr.shutdown(T)  # wakes the reaper at once (the fixture's leak check joins it too)
    assert not again.is_alive() and second.snapshot().state == "stopped"
    with pytest.raises(RuntimeError, match="shut down"):
        mgr.submit(Job(_runs(2), device="cpu"), "s")


def test_reaper_can_be_switched_off():
    mgr = JobManager(1, reap_interval=None)
    job = mgr.submit(Job(_runs(5), device="cpu", paused=True), "s")
    assert mgr.reaper is None
    job.wait_until(lambda s: s.state == "paused", T)
    assert mgr.shutdown(T)
    with pytest.raises(ValueError, match="reap_interval"):
        JobManager(1, reap_interval=0)


# ---- sweeps share the queue ---------------------------------------------------------------------
def _sweep(epochs: int = 1):
    """3 tiny runs in 2 chunks (the 'none' baseline, then norm at 1 and 10)."""
    return make_sweep(replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=epochs)), ["norm"], LogRange(1, 10, 2), 1)


class _GatedExecutor:
    """Stands in for LocalExecutor: each chunk waits for a permit (allow), then yields dummy summaries."""

    def __init__(self):
        self.permits, self.started, self._cancelled = threading.Semaphore(0), threading.Event(), False

    def allow(self, chunks: int = 1) -> None:
        self.permits.release(chunks)

    def map(self, chunks, on_epoch=None):
        self.started.set()
        for i, runs in enumerate(chunks):
            if not self.permits.acquire(timeout=T) or self._cancelled:
                return
            yield i, [RunSummary(r, epochs=r.optim.epochs) for r in runs]

    def cancel(self):
        self._cancelled = True
        self.permits.release(1000)


def test_a_sweep_queued_behind_a_running_job_starts_after_it(gated, manager):
    mgr = manager(1)
    job = mgr.submit(gated("a"), "s1")
    sweep = mgr.submit(SweepJob(_sweep(2), device="cpu"), "s2")  # a real sweep: 3 runs, 2 epochs
    s = sweep.snapshot()
    assert (s.state, s.queue_position, s.result.runs, s.progress) == ("queued", 1, [], None)
    assert tuple(mgr.stats()) == (1, 1, 1) and mgr.active() == [job, sweep]
    _Gated.wait_started(1)
    _Gated.gates["a"].set()
    assert job.wait_until(lambda s: s.finished, T).state == "done"
    s = sweep.wait_until(lambda s: s.finished, T)
    assert s.state == "done" and s.error is None and s.queue_position is None
    assert s.result.complete and len(s.result.runs) == 3 and all(r.epochs == 2 or r.diverged for r in s.result.runs)
    assert sweep.join(T) and tuple(mgr.stats()) == (0, 0, 1)


def test_the_cap_counts_sweeps(gated, manager):
    mgr = manager(2)
    ex1, ex2 = _GatedExecutor(), _GatedExecutor()
    one = mgr.submit(SweepJob(_sweep(), executor=ex1), "s1")
    two = mgr.submit(SweepJob(_sweep(), executor=ex2), "s2")
    job = mgr.submit(gated("c"), "s3")
    assert [j.snapshot().state for j in (one, two, job)] == ["running", "running", "queued"]
    assert job.snapshot().queue_position == 1 and tuple(mgr.stats()) == (2, 1, 2)
    assert ex1.started.wait(T) and ex2.started.wait(T)
    ex1.allow(2)  # the first sweep's two chunks: it ends, and its slot goes to the job
    assert one.wait_until(lambda s: s.finished, T).state == "done"
    job.wait_until(lambda s: s.state == "running", T)
    _Gated.gates["c"].set()
    ex2.allow(2)
    assert job.wait_until(lambda s: s.finished, T).state == "done"
    assert two.wait_until(lambda s: s.finished, T).state == "done"


def test_a_session_has_one_sweep_next_to_its_job_and_replacing_keeps_finished_chunks(manager):
    mgr = manager(3)
    job = mgr.submit(Job(_runs(5), device="cpu", paused=True), "s")
    ex = _GatedExecutor()
    old = mgr.submit(SweepJob(_sweep(), executor=ex), "s")  # a comparison job does not block a sweep
    assert mgr.job_for("s") is job and mgr.job_for("s", "sweep") is old
    job.wait_until(lambda s: s.state == "paused", T)
    ex.allow(1)
    n0 = len(plan_chunks(_sweep())[0])
    old.wait_until(lambda s: len(s.result.runs) == n0, T)
    with pytest.raises(JobBusy, match="a sweep is already running"):
        mgr.submit(SweepJob(_sweep(), executor=_GatedExecutor()), "s")
    new_ex = _GatedExecutor()
    new = mgr.submit(SweepJob(_sweep(), executor=new_ex), "s", replace=True)
    assert old.join(T)
    s = old.snapshot()
    assert s.state == "stopped" and len(s.result.runs) == n0 and not s.result.complete  # for the UI to keep
    assert mgr.job_for("s", "sweep") is new and mgr.job_for("s") is job
    assert job.snapshot().state == "paused"  # replacing the sweep left the comparison alone
    new_ex.allow(2)
    assert new.wait_until(lambda s: s.finished, T).state == "done"


def test_cancel_session_stops_its_sweep_too(manager):
    mgr = manager(1)
    blocker = mgr.submit(Job(_runs(5), device="cpu", paused=True), "other")
    ex = _GatedExecutor()
    running = mgr.submit(SweepJob(_sweep(), executor=ex), "s")
    queued = mgr.submit(SweepJob(_sweep(), executor=_GatedExecutor()), "s2")
    assert mgr.cancel_session("s2") == [queued]
    assert queued.snapshot().state == "stopped" and queued.thread is None  # removed from the queue at once
    blocker.wait_until(lambda s: s.state == "paused", T)
    assert mgr.cancel_session("other") == [blocker]
    running.wait_until(lambda s: s.state == "running", T)
    assert ex.started.wait(T)
    assert mgr.cancel_session("s") == [running]
    assert running.join(T) and running.snapshot().state == "stopped" and not running.snapshot().result.complete
    assert blocker.join(T)  # its worker confirms the stop asynchronously
    assert tuple(mgr.stats()) == (0, 0, 1) and mgr.job_for("s", "sweep") is None


def test_a_crashed_sweep_fails_keeps_its_finished_chunks_and_frees_the_slot(caplog, manager):
    class Exploding(LocalExecutor):
        def map(self, chunks, on_epoch=None):
            for item in super().map(chunks, on_epoch):
                yield item
                raise RuntimeError("out of memory (pretend)")  # after the first chunk

    mgr = manager(1)
    done = threading.Event()
    bad = mgr.submit(SweepJob(_sweep(2), executor=Exploding("cpu"), on_done=lambda snap: done.set()), "s1")
    good = mgr.submit(Job(_runs(2), device="cpu"), "s2")  # waits for the sweep's slot
    with caplog.at_level(logging.ERROR, logger="clipviz.jobs"):
        s = bad.wait_until(lambda s: s.finished, T)
        assert done.wait(T)
        assert good.wait_until(lambda s: s.finished, T).state == "done"
    assert s.state == "failed" and s.error == "RuntimeError: out of memory (pretend)"
    first = plan_chunks(_sweep(2))[0]
    assert [s.result.point_of(r) for r in s.result.runs] == first and not s.result.complete
    assert any(r.exc_info for r in caplog.records)
    assert tuple(mgr.stats()) == (0, 0, 1) and mgr.job_for("s1", "sweep") is None
