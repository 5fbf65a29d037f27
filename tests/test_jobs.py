"""Background jobs: streaming, stop/pause/step/pace, crashes, the FIFO queue, sessions, no leaked threads.

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

from clipviz import jobs
from clipviz.config import TUTORIAL, TUTORIAL_CLIPS, ClipSpec, ConfigError, with_clips
from clipviz.engine import Engine
from clipviz.jobs import Job, JobBusy, JobManager, get_manager, session_alive
from clipviz.records import EpochRecord

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
        if t.name.startswith("clipviz-job-"):
            t.join(T)
            assert not t.is_alive(), f"{t.name} outlived its test"


@pytest.fixture
def manager():
    made = []

    def make(max_running):
        made.append(JobManager(max_running))
        return made[-1]

    yield make
    for m in made:
        assert m.shutdown(T)


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
    assert job.join(1.0)


@pytest.mark.parametrize("where", ["between paced epochs", "while training"])
def test_stop_keeps_finished_epochs_and_ends_the_thread(where):
    job = Job(_runs(1000), device="cpu", speed=0.05 if where == "between paced epochs" else None).start()
    job.wait_until(lambda s: s.epoch >= (1 if where == "between paced epochs" else 3), T)
    job.stop()
    assert job.join(1.0) and not job.thread.is_alive()
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
    assert job.join(1.0) and job.snapshot().state == "stopped"


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

    monkeypatch.setattr(jobs, "Engine", Exploding)
    mgr = manager(1)
    done = threading.Event()
    bad = mgr.submit(Job(_runs(5), device="cpu", on_done=lambda snap: done.set()), "s1")
    good = mgr.submit(Job(_runs(2), device="cpu"), "s2")  # waits for bad's slot; never reaches epoch 3
    with caplog.at_level(logging.ERROR, logger="clipviz.jobs"):
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
    monkeypatch.setattr(jobs, "Engine", _Gated)
    _Gated.gates, _Gated.started, _Gated.threads, _Gated.now, _Gated.peak = {}, [], [], 0, 0

    def job(tag):
        _Gated.gates[tag] = threading.Event()
        return Job([replace(TUTORIAL, label=tag, optim=replace(TUTORIAL.optim, epochs=2))])

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
    assert old.join(1.0)
    s = old.snapshot()
    assert s.state == "stopped" and _lengths(s) == {"none": 1, "value:5": 1, "norm:1": 1}  # the app keeps these
    assert new.wait_until(lambda s: s.finished, T).state == "done"  # started once old freed the only slot
    with pytest.raises(ValueError, match="already submitted"):
        mgr.submit(new, "other")


def test_cancel_session_stops_running_and_queued_jobs(manager):
    mgr = manager(1)
    running = mgr.submit(Job(_runs(5), device="cpu", paused=True), "s1")
    queued = mgr.submit(Job(_runs(5), device="cpu", paused=True), "s2")
    last = mgr.submit(Job(_runs(5), device="cpu"), "s3")
    running.wait_until(lambda s: s.state == "paused", T)
    assert mgr.cancel_session("s2") == [queued]
    assert queued.snapshot().state == "stopped" and queued.thread is None
    assert last.snapshot().queue_position == 1
    assert mgr.cancel_session("s1") == [running]
    assert running.join(1.0) and not running.thread.is_alive()
    assert last.wait_until(lambda s: s.finished, T).state == "done"
    assert last.join(1.0) and tuple(mgr.stats()) == (0, 0, 1) and mgr.job_for("s3") is None


def test_reap_cancels_jobs_of_sessions_that_are_gone(manager):
    mgr = manager(2)
    alive = mgr.submit(Job(_runs(5), device="cpu", paused=True), "alive")
    dead = mgr.submit(Job(_runs(5), device="cpu", paused=True), "dead")
    assert mgr.reap(lambda sid: sid == "alive") == ["dead"]
    assert dead.join(1.0) and dead.snapshot().state == "stopped" and mgr.job_for("dead") is None

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
    s = Job(_runs(2), device="cpu").start().wait_until(lambda s: s.finished, T)
    assert s.state == "failed" and "CLIPVIZ_TORCH_THREADS" in s.error
