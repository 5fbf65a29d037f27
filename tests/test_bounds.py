"""Resource bounds (issue 13): histograms in fixed memory, stop/pause within a step, crashed threads free slots.

Waits are deadline polls on real conditions (Job.wait_until, join); the latency bound is measured, not slept.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from clipviz import engine as engine_mod
from clipviz import jobs
from clipviz.config import PRESETS, TUTORIAL, TUTORIAL_CLIPS, ClipSpec, with_clips
from clipviz.engine import Engine, train
from clipviz.jobs import BackgroundJob, Job, JobManager

T = 10.0  # deadline for "soon"; only reached when a test fails


def _long_epoch_runs():
    """The issue's long-epoch link (adding task, seq_len 500, batch 1), with fewer rows: one epoch is still ~1 min."""
    base = PRESETS["adding-rnn"]
    base = replace(
        base,
        data=replace(base.data, n_samples=2000, seq_len=500),
        optim=replace(base.optim, batch_size=1, epochs=1000),
    )
    return with_clips(base, [ClipSpec("none"), ClipSpec("norm", 1.0)])


def test_value_histograms_binned_per_chunk_equal_one_pass(monkeypatch):
    runs = with_clips(replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=2)), TUTORIAL_CLIPS)
    whole = train(runs, device="cpu")  # the tutorial's epoch fits one chunk
    monkeypatch.setattr(engine_mod, "HIST_CHUNK", 1)  # bin after every step: memory of one step only
    stepwise = train(runs, device="cpu")
    n_params = 20 * 25 + 25 + 25 + 1
    for a, b in zip(whole, stepwise, strict=True):
        for ea, eb in zip(a.records, b.records, strict=True):
            assert ea.value_hist_pre == eb.value_hist_pre and ea.value_hist_post == eb.value_hist_post
            # every element of every step counted once (a diverged run counts its whole epoch too)
            assert sum(ea.value_hist_pre) == sum(ea.value_hist_post) == 16 * n_params
        np.testing.assert_array_equal([e.val_loss for e in a.records], [e.val_loss for e in b.records])


def test_stop_mid_epoch_ends_within_two_seconds_and_drops_the_partial_epoch():
    stop, held = threading.Event(), threading.Event()

    def hold() -> bool:
        held.set()  # the engine is HOLD_EVERY s into an epoch
        return True

    eng = Engine(_long_epoch_runs(), device="cpu", stop=stop, hold=hold)
    assert eng.steps_per_epoch == 1000  # minutes of work in one epoch
    out: list = []
    worker = threading.Thread(target=lambda: out.extend(eng), name="clipviz-test-engine")
    worker.start()
    assert held.wait(T)
    t0 = time.monotonic()
    stop.set()
    worker.join(T)
    latency = time.monotonic() - t0
    assert not worker.is_alive() and latency < 2.0, latency
    assert out == [] and eng.epoch == 0  # no record pretends the partial epoch was one


def test_pause_and_stop_a_long_epoch_job_mid_epoch():
    job = Job(_long_epoch_runs(), device="cpu").start()
    job.wait_until(lambda s: s.state == "running", T)
    t0 = time.monotonic()
    job.pause()
    s = job.wait_until(lambda s: s.state == "paused", T)
    pause_latency = time.monotonic() - t0
    assert s.epoch == 0 and pause_latency < 2.0, pause_latency
    job.resume()
    job.wait_until(lambda s: s.state == "running", T)
    t0 = time.monotonic()
    job.stop()
    assert job.join(T)
    stop_latency = time.monotonic() - t0
    s = job.snapshot()
    assert s.state == "stopped" and s.epoch == 0 and all(not r.records for r in s.results)
    assert stop_latency < 2.0, stop_latency


def test_a_step_from_a_mid_epoch_pause_finishes_that_epoch(monkeypatch):
    monkeypatch.setattr(engine_mod, "HOLD_EVERY", 0.0)  # hold between every step: the tutorial pauses mid-epoch
    job = Job(with_clips(TUTORIAL, TUTORIAL_CLIPS), device="cpu").start()
    job.pause()
    s = job.wait_until(lambda s: s.state == "paused", T)
    e = s.epoch
    job.step_epoch()
    s = job.wait_until(lambda s: s.state == "paused" and s.epoch == e + 1, T)
    with pytest.raises(TimeoutError):  # parked again at the epoch's end
        job.wait_until(lambda s: s.epoch > e + 1, 0.3)
    job.stop()
    assert job.join(T) and job.snapshot().state == "stopped"


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()])
def test_a_base_exception_fails_the_job_and_frees_its_slot(exc):
    class Dying(BackgroundJob):
        def _train(self):
            raise exc

        def _snapshot_locked(self):
            return jobs.JobSnapshot(self.id, self._state, 0, 1, None, self._error, [], self._version, None)

    mgr = JobManager(1, reap_interval=None)
    try:
        bad = mgr.submit(Dying(), "s1")
        good = mgr.submit(
            Job(with_clips(replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=1)), TUTORIAL_CLIPS)), "s2"
        )
        s = bad.wait_until(lambda s: s.finished, T)
        assert s.state == "failed" and s.error.startswith(type(exc).__name__)
        assert good.wait_until(lambda s: s.finished, T).state == "done"  # the slot came back
        assert mgr.stats()[:2] == (0, 0)
    finally:
        assert mgr.shutdown(T)
