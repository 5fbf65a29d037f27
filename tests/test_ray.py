"""Ray executor against a local Ray started here (ray.init(num_cpus=2)): comparison and sweep equal local results.

Skipped, saying why, where Ray is not installed (it is an optional extra: requirements-ray.txt); CI
installs it (.ci/run), so these run there.
"""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest

from clipviz.config import TUTORIAL, TUTORIAL_CLIPS, with_clips
from clipviz.engine import Engine
from clipviz.jobs import Job
from clipviz.sweep import LocalExecutor, LogRange, SweepJob, make_sweep, run_sweep

ray = pytest.importorskip("ray", reason="Ray is optional and not installed here: pip install -r requirements-ray.txt")

from clipviz.ray_executor import RayExecutor, runtime_env  # noqa: E402

T = 120.0  # a cold Ray worker imports torch before its first epoch


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, runtime_env=runtime_env(), include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _exact(rec) -> bytes:
    return pickle.dumps(replace(rec, wall_time=0.0))


def test_a_comparison_streams_from_a_ray_actor_and_equals_the_local_engine(ray_local):
    runs = with_clips(replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=3)), TUTORIAL_CLIPS)
    local = list(Engine(runs, device="cpu"))
    job = Job(runs, device="cpu", executor=RayExecutor(), paused=True).start()
    job.wait_until(lambda s: s.state == "paused", T)
    job.step_epoch()  # the controls work as with local workers: one epoch, then parked
    assert job.wait_until(lambda s: s.state == "paused" and s.epoch == 1, T).epoch == 1
    job.resume()
    s = job.wait_until(lambda s: s.finished, T)
    assert s.state == "done" and s.epoch == 3
    key = lambda r: (r.run, r.epoch)  # noqa: E731
    remote = sorted((rec for r in s.results for rec in r.records), key=key)
    assert [_exact(r) for r in remote] == [_exact(r) for r in sorted(local, key=key)]


def test_a_bad_setup_on_ray_fails_with_the_human_message(ray_local):
    runs = with_clips(replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=3)), TUTORIAL_CLIPS)
    runs = [runs[0], replace(runs[1], optim=replace(runs[1].optim, epochs=4))]
    s = Job(runs, device="cpu", executor=RayExecutor()).start().wait_until(lambda s: s.finished, T)
    assert s.state == "failed" and s.error.startswith("ConfigError: runs trained together must share")


def test_a_ray_sweep_equals_the_local_sweep_and_reports_progress(ray_local):
    base = replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=3))
    sweep = make_sweep(base, ["value", "norm"], LogRange(0.1, 10, 3), seeds=2)
    epochs = []
    here = run_sweep(sweep, executor=LocalExecutor("cpu"), chunk_size=4)
    there = run_sweep(
        sweep, executor=RayExecutor(device="cpu"), chunk_size=4, on_progress=lambda p: epochs.append(p.epoch)
    )
    assert here.complete and there.complete and max(epochs) == 3
    label = lambda r: r.spec.label  # noqa: E731
    a, b = sorted(here.runs, key=label), sorted(there.runs, key=label)
    assert [pickle.dumps(r) for r in a] == [pickle.dumps(r) for r in b]


def test_a_cancelled_ray_sweep_keeps_its_finished_chunks(ray_local):
    base = replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=1000))
    sweep = make_sweep(base, ["norm"], LogRange(1, 10, 2), seeds=1)  # 'none' ends at epoch 1; norm trains long
    ex = RayExecutor(device="cpu")
    job = SweepJob(sweep, chunk_size=4, executor=ex)
    job.start()
    job.wait_until(lambda s: len(s.result.runs) == 1, T)  # the 'none' chunk landed
    job.stop()
    s = job.wait_until(lambda s: s.finished, T)
    assert s.state == "stopped" and not s.result.complete
    assert [r.spec.clip.strategy for r in s.result.runs] == ["none"]
