"""Resource bounds (issue 13): histograms in fixed memory, stop/pause within a step, crashed threads free slots.

Waits are deadline polls on real conditions (Job.wait_until, join); the latency bound is measured, not slept.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from clipviz import engine as engine_mod
from clipviz import jobs
from clipviz.config import PRESETS, TUTORIAL, TUTORIAL_CLIPS, Caps, ClipSpec, ConfigError, validate_runs, with_clips
from clipviz.cost import check_runs
from clipviz.data import load_dataset
from clipviz.engine import Engine, train
from clipviz.jobs import BackgroundJob, Job, JobManager
from clipviz.sweep import SWEEP_STRATEGIES, LogRange, SweepSpec, make_sweep, plan_chunks, point_spec

ROOT = Path(__file__).resolve().parents[1]

T = 10.0  # deadline for "soon"; only reached when a test fails


def _long_epoch_runs():
    """The issue's long-epoch link (adding task, seq_len 500, batch 1), with fewer rows: one epoch is ~1 min (within the caps)."""
    base = PRESETS["adding-rnn"]
    base = replace(
        base,
        data=replace(base.data, n_samples=2000, seq_len=500),
        optim=replace(base.optim, batch_size=1, epochs=1),
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


# ---- the cost model (items 1-3) -----------------------------------------------------------------
def _link(**kw):
    """A setup as the issue's links give it: the tutorial's three runs with data/model/optim overrides."""
    d = {k: v for k, v in kw.items() if k in ("n_samples", "n_features", "seq_len", "name")}
    m = {k: v for k, v in kw.items() if k in ("width", "kind")}
    o = {k: v for k, v in kw.items() if k in ("batch_size", "epochs")}
    base = replace(TUTORIAL, data=replace(TUTORIAL.data, **d), model=replace(TUTORIAL.model, **m))
    return with_clips(replace(base, optim=replace(base.optim, **o)), TUTORIAL_CLIPS)


ISSUE_LINKS = {  # item 1's two links and item 2's
    "width=1024&n_features=200&n_samples=100000&batch_size=32": (
        dict(width=1024, n_features=200, n_samples=100_000, batch_size=32),
        "cap max_work",
    ),
    "n_samples=100000&batch_size=1": (dict(n_samples=100_000, batch_size=1), "cap max_steps"),
    "dataset=adding&seq_len=500&n_samples=20000&batch_size=1&epochs=1000": (
        dict(name="adding", kind="rnn", seq_len=500, n_samples=20_000, batch_size=1, epochs=1000),
        "cap max_steps",
    ),
}


@pytest.mark.parametrize("link", list(ISSUE_LINKS))
def test_the_issue_links_are_priced_and_refused_before_anything_is_built(link, monkeypatch):
    kw, cap = ISSUE_LINKS[link]

    def never(*a, **k):
        raise AssertionError("the dataset was built before the cost check")

    monkeypatch.setattr(engine_mod, "load_dataset", never)
    with pytest.raises(ConfigError, match=cap) as err:
        Engine(_link(**kw), device="cpu")
    msg = str(err.value)
    assert "the server allows" in msg and "lower" in msg and "\n" not in msg and len(msg) < 300, msg


def test_memory_cap_is_named_and_environment_overridable(monkeypatch):
    runs = _link(n_samples=100_000, n_features=200)  # ~0.5 GB of data: inside the default 1 GB
    validate_runs(runs, Caps.from_env())
    monkeypatch.setenv("CLIPVIZ_MAX_MEMORY_MB", "256")
    with pytest.raises(ConfigError, match=r"needs ~\d+ MB of memory; the server allows 256 MB per job"):
        validate_runs(runs, Caps.from_env())
    monkeypatch.setenv("CLIPVIZ_MAX_MEMORY_MB", "lots")
    with pytest.raises(ConfigError, match="CLIPVIZ_MAX_MEMORY_MB"):
        Caps.from_env()


_RSS_SCRIPT = """
import json, resource, sys
from dataclasses import replace
from clipviz.config import TUTORIAL, TUTORIAL_CLIPS, with_clips
from clipviz.cost import data_shape, estimate
from clipviz.engine import train
base = replace(TUTORIAL, data=replace(TUTORIAL.data, n_samples=400, n_features=200),
               model=replace(TUTORIAL.model, width=1024), optim=replace(TUTORIAL.optim, batch_size=1, epochs=1))
runs = with_clips(base, TUTORIAL_CLIPS)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak so far: interpreter, torch, sklearn
res = train(runs, device="cpu")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
assert sum(res[1].records[0].value_hist_pre) == 200 * 206_849  # every element of every step binned
print(json.dumps({"grew": after - before, "estimate": estimate(runs, data_shape(base)).memory}))
"""


def test_training_memory_stays_within_the_estimate(tmp_path):
    """200 steps x 3 runs x 206,849 parameters: keeping each step's gradients (the old histograms) took
    1 GB; binned in bounded chunks the whole job stays inside the cost model's estimate."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"peak RSS grew {got['grew'] / 2**20:.0f} MB; estimate {got['estimate'] / 2**20:.0f} MB")
    assert got["grew"] <= got["estimate"] < Caps().max_memory_mb * 2**20, got


def test_sweep_counts_are_checked_before_any_point_is_built(monkeypatch):
    def never(self):
        raise AssertionError("points were built before the count was checked")

    monkeypatch.setattr(SweepSpec, "points", never)
    big = LogRange(0.001, 1e12, 5000)
    with pytest.raises(ConfigError, match="over the limit of 5,000"):  # the issue's Sweep tab case
        ranges = {s: big for s in ("value", "norm", "tensor-norm")}  # as the Sweep tab sends it; the rest default
        make_sweep(TUTORIAL, list(SWEEP_STRATEGIES), ranges, 20, lrs=LogRange(0.001, 1.0, 100))
    with pytest.raises(ConfigError, match="100,000,000,000"):
        make_sweep(TUTORIAL, ["norm"], seeds=100_000_000_000)


def test_sweep_chunks_fit_the_cost_caps(monkeypatch):
    base = replace(TUTORIAL, data=replace(TUTORIAL.data, n_samples=20_000), optim=replace(TUTORIAL.optim, epochs=20))
    sweep = make_sweep(base, ["norm"], LogRange(0.01, 100.0, 40), seeds=3)
    roomy = plan_chunks(sweep, 256)
    monkeypatch.setenv("CLIPVIZ_MAX_MEMORY_MB", "64")  # a sweep keeps no records, but each seed its shuffled data
    caps = Caps.from_env()
    tight = plan_chunks(sweep, 256, caps)
    assert len(tight) > len(roomy)
    for chunk in tight:
        check_runs([point_spec(sweep, p) for p in chunk], caps, histograms=False, keep_records=False)


def test_the_engine_never_writes_to_the_shared_dataset():
    """The UI hands one cached Dataset to every job (item 9): training must leave it as it was."""
    ds = load_dataset(TUTORIAL.data)
    before = [t.clone() for t in (ds.x_train, ds.y_train, ds.x_val, ds.y_val)]
    train(with_clips(replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=2)), TUTORIAL_CLIPS), dataset=ds)
    for a, b in zip(before, (ds.x_train, ds.y_train, ds.x_val, ds.y_val), strict=True):
        assert torch.equal(a, b)
