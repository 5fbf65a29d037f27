"""Threshold sweeps: the reference oracle, the statistics, non-finite safety, cancel, the CLI, the tutorial's shape, the UI."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from clipviz import executors, jobs
from clipviz.__main__ import main
from clipviz.config import TUTORIAL, ClipSpec, ConfigError
from clipviz.jobs import Job, JobManager
from clipviz.reference import train_reference
from clipviz.sweep import (
    LocalExecutor,
    LogRange,
    SweepPoint,
    SweepResult,
    make_sweep,
    plan_chunks,
    point_spec,
    run_sweep,
)
from clipviz.sweep_report import dumps, heuristics, loads, recommend, summarize, summary_rows, to_frame
from clipviz.ui import sweep_charts


def _base(epochs: int):
    return replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=epochs))


def _strict(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


# ---- the reference oracle -----------------------------------------------------------------------
def test_sweep_point_equals_the_same_run_trained_alone():
    sweep = make_sweep(_base(3), ["value", "norm"], LogRange(0.1, 10, 3), seeds=2, lrs=[0.005, 0.01])
    chunks = plan_chunks(sweep, chunk_size=5)
    assert sum(map(len, chunks)) == len(sweep.points()) == 2 * 2 * 7
    assert all(len(c) <= 5 and len({p.strategy for p in c}) == 1 for c in chunks)
    result = run_sweep(sweep, chunk_size=5, device="cpu")
    assert result.complete
    by_point = {result.point_of(s): s for s in result.runs}
    for point in [SweepPoint("norm", 1.0, 2, 0.005), SweepPoint("value", 10.0, 1, 0.01)]:
        spec = point_spec(sweep, point)
        assert (spec.optim.lr, spec.seed, spec.clip.threshold) == (point.axis_value, point.seed, point.threshold)
        alone = train_reference(spec, epochs=3)
        np.testing.assert_allclose(by_point[point].val_curve, alone.val_loss, rtol=1e-5)


def test_clipping_strategies_share_a_chunk_that_fits_them_and_none_trains_apart():
    sweep = make_sweep(_base(1), ["value", "norm"], LogRange(0.1, 10, 3), seeds=2)
    chunks = plan_chunks(sweep, chunk_size=12)
    assert [sorted({p.strategy for p in c}) for c in chunks] == [["none"], ["norm", "value"]]
    assert [len(c) for c in chunks] == [2, 12]
    split = plan_chunks(sweep, chunk_size=11)  # too many for one chunk: one strategy per chunk, as before
    assert [sorted({p.strategy for p in c}) for c in split] == [["none"], ["value"], ["norm"]]
    two = plan_chunks(sweep, chunk_size=12, parallel=2)  # two workers: one clipping chunk each, not one idle
    assert [sorted({p.strategy for p in c}) for c in two] == [["none"], ["value"], ["norm"]]
    assert sorted(map(len, two)) == [2, 6, 6]


def test_batch_size_axis_splits_lockstep_jobs():
    sweep = make_sweep(_base(1), ["norm"], LogRange(1, 10, 2), seeds=1, batch_sizes=[16, 32, 16])
    assert sweep.axis_values == (16, 32)
    chunks = plan_chunks(sweep, chunk_size=100)
    assert [sorted({point_spec(sweep, p).optim.batch_size for p in c}) for c in chunks] == [[16], [16], [32], [32]]


# ---- statistics ---------------------------------------------------------------------------------
def test_median_and_iqr_leave_out_diverged_seeds_and_count_them():
    s = summarize([1.0, 2.0, 3.0, 4.0, math.nan, math.inf])
    assert (s.median, s.q1, s.q3, s.n, s.n_diverged) == (2.5, 1.75, 3.25, 6, 2)
    s = summarize([1.0, 2.0, 100.0], diverged=[False, False, True])  # flagged diverged, finite value
    assert (s.median, s.q1, s.q3, s.n, s.n_diverged) == (1.5, 1.25, 1.75, 3, 1)
    s = summarize([math.nan, -math.inf], diverged=[True, False])
    assert math.isnan(s.median) and math.isnan(s.q1) and (s.n, s.n_diverged) == (2, 2)
    assert summarize([]).n == 0 and math.isnan(summarize([]).median)
    assert summarize([5.0]) == summarize([5.0], [False])
    assert (summarize([5.0]).median, summarize([5.0]).q1, summarize([5.0]).q3) == (5.0, 5.0, 5.0)


# ---- non-finite safety --------------------------------------------------------------------------
def test_diverging_points_never_break_charts_or_json():
    sweep = make_sweep(_base(2), ["value", "norm"], LogRange(1, 1e12, 4), seeds=2, lrs=[0.01, 0.1])
    result = run_sweep(sweep, device="cpu")
    rows = summary_rows(result)
    assert any(r["n_diverged"] == r["n"] for r in rows), "expected all-diverged points (1e12, none)"
    assert any(r["n_diverged"] == 0 for r in rows)
    empty = SweepResult(sweep)
    for res in (result, empty):
        for fig in (
            sweep_charts.loss_vs_threshold(res),
            sweep_charts.loss_vs_threshold(res, "best_val", axis_value=0.1),
            sweep_charts.clip_rate_vs_threshold(res),
            sweep_charts.stability_map(res),
        ):
            _strict(fig.to_json())
        rows_r = sweep_charts.recommendation_rows(res)
        # one row per swept strategy; the empty result recommends no range and says why
        assert [r["strategy"] for r in rows_r] == ["value", "norm"]
        if res is empty:
            assert all(r["recommended"] == "-" and r["why"] == "no results yet" for r in rows_r)
        _strict(json.dumps(rows_r))
        doc = _strict(dumps(res))
        assert doc["kind"] == "sweep"
    diverged = [r for r in doc_runs(result) if r["diverged"]]
    assert diverged and all("final_val" in r["nonfinite"] for r in diverged)
    back = loads(dumps(result))
    assert len(back.runs) == len(result.runs) and back.sweep == sweep
    assert [r.diverged for r in back.runs] == [r.diverged for r in result.runs]
    assert str(summary_rows(back)) == str(rows)
    df = to_frame(result)
    assert len(df) == len(result.runs) and df["diverged_epoch"].notna().any()
    one_d = make_sweep(_base(2), ["norm"], LogRange(1, 1e12, 3), seeds=1)
    _strict(sweep_charts.stability_map(SweepResult(one_d)).to_json())  # no second axis: a note, not a crash
    with pytest.raises(ConfigError, match="not a valid clipviz sweep file"):
        loads('{"sweep": 1}')


def doc_runs(result):
    return json.loads(dumps(result))["runs"]


# ---- cancel -------------------------------------------------------------------------------------
def test_cancel_keeps_finished_chunks_and_drops_the_one_in_progress():
    sweep = make_sweep(_base(4), ["value", "norm"], LogRange(0.1, 10, 3), seeds=2)  # 14 runs
    ex = LocalExecutor("cpu")

    def on_progress(p):
        if p.chunks_done == 1 and p.epoch == 2:  # mid-way through the second chunk
            ex.cancel()

    result = run_sweep(sweep, executor=ex, chunk_size=5, on_progress=on_progress)
    assert not result.complete
    first = plan_chunks(sweep, chunk_size=5)[0]
    assert [result.point_of(r) for r in result.runs] == first  # the finished chunk, whole; none of the second
    assert all(r.epochs == 4 or r.diverged for r in result.runs)
    # the partial result still summarises, charts and saves
    assert summary_rows(result) and recommend(result)
    _strict(sweep_charts.loss_vs_threshold(result).to_json())
    assert _strict(dumps(result))["complete"] is False


# ---- the CLI ------------------------------------------------------------------------------------
def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--thresholds", "10:1:5"], "must be below its maximum"),
        (["--thresholds", "1:1:5"], "must be below its maximum"),
        (["--thresholds", "0.1:10:0"], "count must be"),
        (["--thresholds=-1:10:5"], "minimum must be positive"),
        (["--thresholds", "-1:10:5"], "expected one argument"),
        (["--thresholds", "a:b:5"], "is not a number"),
        (["--thresholds", "1:10:x"], "is not a whole number"),
        (["--thresholds", "1:10"], "MIN:MAX:COUNT"),
        (["--thresholds", "1:inf:3"], "finite"),
        (["--thresholds", "bogus=1:10:3"], "unknown clipping strategy"),
        (["--strategy", "autoclip", "--thresholds", "1:1000:5"], "percentile"),
        (["--lrs", "1:0.1:3"], "must be below its maximum"),
        (["--batch-sizes", "0,8"], "must be positive"),
        (["--batch-sizes", "8,x"], "not a whole number"),
        (["--strategy", "bogus"], "invalid choice"),
        (["--seeds", "0"], "must be positive"),
    ],
)
def test_cli_bad_ranges_exit_2_with_a_message(flags, message, capsys):
    assert _exit_code(["sweep", "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipviz: error:") and message in err and err.count("\n") == 1, err


def test_cli_sweep_end_to_end(tmp_path, capsys):
    out, csv = tmp_path / "sweep.json", tmp_path / "sweep.csv"
    argv = ["sweep", "--preset", "tutorial", "--strategy", "value", "--strategy", "norm"]
    argv += ["--thresholds", "0.1:10:3", "--seeds", "2", "--lrs", "0.005:0.01:2", "--epochs", "3"]
    assert main(argv + ["--out", str(out), "--csv", str(csv)]) == 0
    printed = capsys.readouterr()
    assert "28/28 runs" in printed.err and "ETA" in printed.err  # progress bar
    assert "best threshold" in printed.out and "recommended range" in printed.out
    assert "lr=0.01" in printed.out and "value" in printed.out
    doc = _strict(out.read_text())
    assert doc["complete"] and len(doc["runs"]) == 2 * 2 * (1 + 3 + 3)
    assert doc["sweep"]["axis"] == "lr" and doc["sweep"]["thresholds"]["norm"] == [0.1, 1.0, 10.0]
    df = pd.read_csv(csv)
    assert len(df) == 28 and set(df["strategy"]) == {"none", "value", "norm"} and set(df["lr"]) == {0.005, 0.01}


# ---- the tutorial's shape -----------------------------------------------------------------------
def test_tutorial_sweep_reproduces_the_known_shape():
    """100 epochs, 3 seeds, thresholds 1e-3..1e12 (2 per decade). Measured: no clipping explodes in epoch 1;
    every seed trains (final val MSE < 1% of the untrained ~2.6e4) for value from 0.03 to 10 and for norm from
    1 to 30 (grid points); at 1e11 and above both explode like no clipping (value loses a first seed at 3e9);
    at 1e-3 they barely move (MSE ~2.5e4 against a best of ~6-8). Bounds below leave margin on all of these."""
    sweep = make_sweep(_base(100), ["value", "norm"], LogRange(1e-3, 1e12, 31), seeds=3)
    result = run_sweep(sweep, device="cpu")
    rows = summary_rows(result)
    none = [r for r in rows if r["strategy"] == "none"]
    assert none[0]["n_diverged"] == none[0]["n"] == 3
    for strat in ("value", "norm"):
        rs = sorted((r for r in rows if r["strategy"] == strat), key=lambda r: r["threshold"])
        best = min(r["median"] for r in rs if r["n_diverged"] == 0)
        trains = [r["threshold"] for r in rs if r["n_diverged"] == 0 and r["median"] < 260]
        assert len(trains) >= 3 and max(trains) / min(trains) >= 10, (strat, trains)  # at least a decade
        assert rs[-1]["threshold"] == 1e12 and rs[-1]["n_diverged"] == 3, "a huge threshold is no clipping"
        assert rs[0]["median"] > 100 * best and rs[0]["clip_rate"] == 1.0, "a tiny threshold trains slowly"
        rec = next(r for r in recommend(result) if r.strategy == strat)
        assert rec.low is not None and min(trains) <= rec.best <= max(trains)
        assert "every seed trained" in rec.reason
    # rules of thumb from runs that train: the unclipped runs diverged, so the norms come from the best clipped
    # setup; the Pascanu band must bracket the sweep's own best norm threshold within a decade (it used to sit
    # 3-4 orders of magnitude away, read off the exploding unclipped runs)
    heur = {h.name.split(" ")[0]: h for h in heuristics(result)}
    pascanu, best_norm = heur["Pascanu"], next(r for r in recommend(result) if r.strategy == "norm").best
    assert "unclipped runs diverged" in pascanu.reason and "norm:" in pascanu.reason, pascanu.reason
    assert pascanu.low / 10 <= best_norm <= pascanu.high * 10, (pascanu, best_norm)
    print(f"heuristics: {[(h.name, round(h.low, 3), round(h.high, 3)) for h in heur.values()]}, best norm {best_norm}")


# ---- the UI -------------------------------------------------------------------------------------
_SCRIPT = """
from dataclasses import replace

import torch

from clipviz.config import TUTORIAL
from clipviz.ui.sweep_view import render_sweep

torch.set_num_threads(1)
render_sweep(replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=3)), thresholds="0.1:100:4", seeds=2)
"""


def test_sweep_view_runs_in_apptest(tmp_path):
    from streamlit.testing.v1 import AppTest

    script = tmp_path / "sweep_app.py"
    script.write_text(_SCRIPT)
    at = AppTest.from_file(str(script), default_timeout=60)
    at.run()
    assert not at.exception
    assert "18 runs" in " ".join(c.value for c in at.caption)
    at.button(key="sw_run").click().run()
    deadline = time.monotonic() + 60
    while not at.success and time.monotonic() < deadline:
        time.sleep(0.2)
        at.run()
    assert not at.exception, at.exception
    assert at.success and "finished: 18 of 18 runs" in at.success[0].value
    assert len(at.get("plotly_chart")) >= 2 and len(at.dataframe) >= 1
    at.button(key="sw_open").click().run()
    assert not at.exception
    assert any("Loaded" in s.value for s in at.success)


def _sweep_app(tmp_path):
    from streamlit.testing.v1 import AppTest

    script = tmp_path / "sweep_app.py"
    script.write_text(_SCRIPT)
    at = AppTest.from_file(str(script), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def one_slot(monkeypatch):
    """The app's get_manager() answers a fresh one-slot JobManager for this test."""
    mgr = JobManager(1)
    monkeypatch.setattr(jobs, "_manager", mgr)
    yield mgr
    assert mgr.shutdown(10.0)


def _finish(at, timeout: float = 60):
    """Wait (on the job's condition, bounded) for the session's sweep to end, then redraw the page."""
    snap = at.session_state["sweep_job"].wait_until(lambda s: s.finished, timeout)
    at.run()
    assert not at.exception, at.exception
    return snap


def test_sweep_view_queues_behind_other_jobs_and_shows_its_position(tmp_path, one_slot):
    # norm-clipped (it does not diverge), 1000 epochs flat out: it holds the only slot until it is stopped below
    long = replace(TUTORIAL, label="other tab", clip=ClipSpec("norm", 1.0), optim=replace(TUTORIAL.optim, epochs=1000))
    blocker = one_slot.submit(Job([replace(long, seed=i) for i in range(8)], device="cpu"), "other-tab")
    at = _sweep_app(tmp_path)
    at.button(key="sw_run").click().run()
    assert not at.exception, at.exception
    job = at.session_state["sweep_job"]
    assert job.snapshot().state == "queued" and one_slot.active() == [blocker, job]
    assert [p.text for p in at.get("progress")] == ["queued, position 1: other jobs are training"]
    assert at.button(key="sw_run").disabled and not at.button(key="sw_stop").disabled  # a queued sweep can stop
    blocker.stop()  # the other tab's job ends: the sweep gets the slot
    snap = _finish(at)
    assert snap.state == "done" and "finished: 18 of 18 runs" in at.success[0].value
    assert tuple(one_slot.stats()) == (0, 0, 1)
    at.button(key="sw_run").click().run()  # a new sweep: the finished one stays downloadable, not lost
    assert not at.exception, at.exception
    assert len(at.session_state["sweep_previous"].runs) == 18
    assert [e.label for e in at.expander if e.label.startswith("Previous")] == [
        "Previous sweep: 18 runs (replaced by the one above)"
    ]
    assert _finish(at).state == "done"


def test_a_crashed_sweep_shows_its_error_keeps_finished_chunks_and_frees_the_slot(tmp_path, one_slot, monkeypatch):
    class Exploding(executors.ChunkExecutor):
        def __init__(self, *args, **kw):
            super().__init__(*args, **{**kw, "parallel": 1})  # one chunk at a time: they finish in order

        def map(self, chunks, on_epoch=None):
            for i, res in super().map(chunks, on_epoch):
                yield i, res
                if i == 0:
                    raise RuntimeError("out of memory (pretend)")  # after the first of two chunks (none; the clips)

    monkeypatch.setattr(executors, "ChunkExecutor", Exploding)
    at = _sweep_app(tmp_path)
    at.button(key="sw_run").click().run()
    snap = _finish(at)
    assert snap.state == "failed" and len(snap.result.runs) == 2  # the baseline's chunk
    errors = [
        re.sub(r"\\(.)", r"\1", e.value).replace("\u200b", "") for e in at.error
    ]  # as read: user text is markdown-escaped
    assert errors == [
        "The sweep failed: RuntimeError: out of memory (pretend). The 2 runs of its finished chunks are shown below."
    ]
    assert len(at.get("plotly_chart")) >= 2 and not at.button(key="sw_run").disabled
    assert tuple(one_slot.stats()) == (0, 0, 1)  # the slot is free for the next job
