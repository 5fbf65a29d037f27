"""Training in worker processes: bit-for-bit records, controls across the process boundary, a killed worker,
a closed tab's worker freed, no training thread left in the server process, sweeps on the pool.

The warm pool is the process's default executor (get_executor: 2 workers here), shared by every test
that uses it; starting one costs seconds (a fresh interpreter imports torch). Every wait has a deadline
on a real condition.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
from dataclasses import replace

import pytest

from clipviz.config import TUTORIAL, TUTORIAL_CLIPS, ClipSpec, ConfigError, with_clips
from clipviz.engine import Engine
from clipviz.executors import ChunkExecutor, WorkerPool, get_executor, make_executor, workers_from_env
from clipviz.jobs import Job, JobManager
from clipviz.sweep import LocalExecutor, LogRange, make_sweep, run_sweep
from clipviz.worker import Pacer

T = 30.0  # deadline for anything that should happen "soon" (a replaced worker re-imports torch)


def _runs(epochs: int):
    return with_clips(replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=epochs)), TUTORIAL_CLIPS)


def _exact(rec) -> bytes:
    """A record's bytes with its wall time zeroed: equal bytes = equal bits in every float, NaN payloads too."""
    return pickle.dumps(replace(rec, wall_time=0.0))


@pytest.fixture(scope="module")
def pool() -> WorkerPool:
    p = get_executor()
    assert isinstance(p, WorkerPool) and p.wait_ready(120)
    return p


def _wait(cond, timeout: float = T, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout:g} s")
        time.sleep(0.02)  # polling a real condition with a deadline


def test_records_from_a_worker_equal_the_in_process_engine_bit_for_bit(pool):
    runs = _runs(4) + [replace(TUTORIAL, clip=ClipSpec("agc", 0.05), seed=7, optim=replace(TUTORIAL.optim, epochs=4))]
    runs = [replace(r, seed=7) for r in runs]  # one seed: a lockstep job shares its minibatch order
    local = list(Engine(runs, device="cpu"))
    s = Job(runs, device="cpu", executor=pool).start().wait_until(lambda s: s.finished, T)
    remote = [rec for r in s.results for rec in r.records]
    assert s.state == "done" and len(remote) == len(local) > 4
    key = lambda r: (r.run, r.epoch)  # noqa: E731
    assert [_exact(r) for r in sorted(remote, key=key)] == [_exact(r) for r in sorted(local, key=key)]
    assert any(r.diverged for r in remote)  # the 'none' run's NaNs crossed the boundary as NaNs


def test_pause_step_and_stop_cross_the_process_boundary(pool):
    job = Job(_runs(1000), device="cpu", executor=pool, paused=True).start()
    s0 = job.wait_until(lambda s: s.state == "paused", T)
    assert s0.epoch == 0 and s0.epochs == 1000
    job.step_epoch()
    job.step_epoch()
    s2 = job.wait_until(lambda s: s.state == "paused" and s.epoch == 2, T)
    with pytest.raises(TimeoutError):  # parked in the worker: no third epoch comes
        job.wait_until(lambda s: s.epoch > 2, 0.5)
    job.set_speed(20.0)
    job.resume()
    job.wait_until(lambda s: s.epoch >= s2.epoch + 3 and s.state == "running", T)
    job.stop()
    assert job.join(T)
    s = job.snapshot()
    assert s.state == "stopped" and 5 <= s.epoch < 1000 and s.error is None
    assert len(s.results[1].records) == s.epoch  # every finished epoch came back


def test_pause_on_a_shared_worker_stops_at_an_epoch_boundary_and_its_worker_mate_goes_on(pool):
    # one more flat-out job than workers: two of them share a worker (the loop alternates their epochs)
    jobs = [Job(_runs(1000), device="cpu", executor=pool).start() for _ in range(pool.size + 1)]
    try:
        for j in jobs:
            j.wait_until(lambda s: s.epoch >= 1, T)
        shared = next(w for w in pool.workers if len(w.tasks) == 2)
        mine, mate = [j for j in jobs if j in shared.tasks.values()]
        mine.pause()
        paused = mine.wait_until(lambda s: s.state == "paused", T)
        mate_at = mate.snapshot().epoch
        mate.wait_until(lambda s: s.epoch >= mate_at + 5, T)  # the worker-mate keeps training
        s = mine.snapshot()
        assert s.state == "paused" and s.epoch == paused.epoch  # no epoch, and no part of one, while paused
        # whole epochs only, for every run that trains on ('none' diverges in epoch 1 and stops there)
        assert [len(r.records) for r in s.results[1:]] == [s.epoch] * 2
        mine.resume()
        mine.wait_until(lambda s: s.epoch >= paused.epoch + 2 and s.state == "running", T)
    finally:
        for j in jobs:
            j.stop()
        assert all(j.join(T) for j in jobs)


def test_pacer_controls():
    p = Pacer(speed=2.0)
    assert p.wait(0.0) == 0.0
    p.begin(0.0)
    assert p.wait(0.2) == pytest.approx(0.3)
    p.apply("step")  # a step pauses a playing job and ignores the pace
    assert p.wait(0.2) == 0.0
    p.begin(0.2)
    assert p.wait(5.0) is None  # parked
    p.apply("resume")
    p.apply("speed", None)
    assert p.wait(0.21) == 0.0
    with pytest.raises(ValueError):
        p.apply("jump")


def test_kill_9_fails_the_job_keeps_its_epochs_and_the_next_job_runs(pool):
    job = Job(_runs(1000), device="cpu", executor=pool).start()
    job.wait_until(lambda s: s.epoch >= 3, T)
    victim = next(w for w in pool.workers if w.tasks)
    others = [w.proc.pid for w in pool.workers if w is not victim]
    os.kill(victim.proc.pid, signal.SIGKILL)
    s = job.wait_until(lambda s: s.finished, T)
    assert s.state == "failed" and "SIGKILL" in s.error and "epochs it finished are kept" in s.error
    assert s.epoch >= 3 and len(s.results[1].records) == s.epoch  # what it streamed before it died
    assert [r.epoch for r in s.results[1].records] == list(range(1, s.epoch + 1))
    assert victim.proc.pid not in pool.pids() and all(p in pool.pids() for p in others)
    assert len(pool.pids()) == pool.size  # replaced
    assert pool.wait_ready(T)  # the replacement warms up (imports torch) by itself, before any job is sent to it
    # the next jobs run, on the surviving worker and on the replacement once it is warm
    nxt = [Job(_runs(3), device="cpu", executor=pool).start() for _ in range(pool.size)]
    for j in nxt:
        assert j.wait_until(lambda s: s.finished, T).state == "done"


def test_a_closed_tabs_job_is_stopped_and_its_worker_freed(pool):
    alive = {"tab"}
    mgr = JobManager(2, reap_interval=0.05, is_session_alive=lambda sid: sid in alive)
    try:
        job = mgr.submit(Job(_runs(1000), device="cpu", executor=pool), "tab")
        job.wait_until(lambda s: s.epoch >= 1, T)
        assert pool.busy_workers() == 1
        alive.clear()  # the tab closes
        assert job.wait_until(lambda s: s.finished, T).state == "stopped"
        _wait(lambda: pool.busy_workers() == 0, what="the worker freed")
        assert tuple(mgr.stats()) == (0, 0, 2)
    finally:
        assert mgr.shutdown(T)


def test_no_training_thread_in_the_server_process(pool):
    before = {t.ident for t in threading.enumerate()}
    jobs = [Job(_runs(30), device="cpu", executor=pool).start() for _ in range(3)]
    jobs[0].wait_until(lambda s: s.epoch >= 1, T)
    during = {t.name for t in threading.enumerate() if t.ident not in before}
    assert during == set(), f"threads started in the server for training: {during}"
    for j in jobs:
        assert j.wait_until(lambda s: s.finished, T).state == "done" and j.thread is None
    names = {t.name for t in threading.enumerate()}
    assert not any(n.startswith(("clipviz-compare", "clipviz-chunk", "clipviz-sweep")) for n in names), names
    assert pool.busy_workers() == 0


def test_a_sweep_on_the_pool_equals_the_in_process_sweep(pool):
    base = replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=3))
    sweep = make_sweep(base, ["value", "norm"], LogRange(0.1, 10, 3), seeds=2)
    seen = []
    here = run_sweep(sweep, executor=LocalExecutor("cpu"), chunk_size=4)
    there = run_sweep(
        sweep, executor=ChunkExecutor(pool, device="cpu"), chunk_size=4, on_progress=lambda p: seen.append(p.epoch)
    )
    assert here.complete and there.complete and max(seen) == 3  # per-epoch progress came back
    label = lambda r: r.spec.label  # noqa: E731
    a, b = sorted(here.runs, key=label), sorted(there.runs, key=label)
    assert [pickle.dumps(r) for r in a] == [pickle.dumps(r) for r in b]


def test_a_cancelled_pool_sweep_keeps_finished_chunks(pool):
    base = replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=1000))
    sweep = make_sweep(base, ["norm"], LogRange(1, 10, 2), seeds=1)  # chunks: 'none' (ends at once), norm
    ex = ChunkExecutor(pool, device="cpu", parallel=1)
    res = run_sweep(sweep, executor=ex, chunk_size=4, on_chunk=lambda r: ex.cancel())
    assert not res.complete and [r.spec.clip.strategy for r in res.runs] == ["none"]
    _wait(lambda: pool.busy_workers() == 0, what="the cancelled chunk's worker freed")


def test_executor_settings_fail_with_a_message(monkeypatch):
    monkeypatch.setenv("CLIPVIZ_WORKERS", "lots")
    with pytest.raises(ConfigError, match="CLIPVIZ_WORKERS"):
        workers_from_env()
    monkeypatch.setenv("CLIPVIZ_EXECUTOR", "slurm")
    with pytest.raises(ConfigError, match="CLIPVIZ_EXECUTOR"):
        make_executor()


def test_ray_chosen_but_missing_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as where it is not installed
    with pytest.raises(ConfigError, match=r"pip install -r requirements-ray.txt"):
        make_executor("ray")
