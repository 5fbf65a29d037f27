"""The dashboard in streamlit's AppTest: every control path, bad input, a real job end to end, and the parts
(run store, exports) on their own. AppTest does not fire run_every: tests call at.run() again to poll."""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import replace

import pytest
from streamlit.testing.v1 import AppTest

from clipviz.config import STRATEGIES, TUTORIAL, Caps, ClipSpec, RunSpec
from clipviz.jobs import Job
from clipviz.records import EpochRecord, RunResult, loads
from clipviz.ui import controls, export
from tests.app_util import JOIN_S, open_tab, press_five_seeds
from tests.app_util import assert_ok as _ok
from tests.app_util import open_app as _app


def _reject_constant(name: str):
    """json.loads accepts NaN/Infinity by default; strict JSON may not contain them."""
    raise ValueError(f"non-strict JSON constant {name}")


def _errors(at: AppTest) -> str:
    """The banners' text as the user reads it: user values are markdown-escaped (text.md_escape)."""
    return re.sub(r"\\(.)", r"\1", " | ".join(e.value for e in at.error)).replace("\u200b", "")


def _train(at: AppTest, epochs: int, speed: str = "max") -> Job:
    at.slider(key="epochs").set_value(epochs)
    at.select_slider(key="speed").set_value(speed)
    at.button(key="train").click().run()
    _ok(at)
    job = at.session_state["job"]
    assert job is not None, _errors(at)
    return job


def _fake_result(label: str = "value:5", epochs: int = 2) -> RunResult:
    spec = replace(TUTORIAL, clip=ClipSpec.parse(label))
    recs = [
        EpochRecord(0, label, e, 1.0 / e, 2.0 / e, [1.0], [1.0], {"w": 1.0}, 0.5, 0.1) for e in range(1, epochs + 1)
    ]
    return RunResult(spec, recs)


# ---- the page ---------------------------------------------------------------------------------
def test_starts_on_the_tutorial_ready_to_train():
    at = _app()
    _ok(at)
    assert not at.error
    assert at.button(key="train").label == "Train"
    assert at.multiselect(key="strategies").value == ["none", "value", "norm"]
    assert at.select_slider(key="thr_value").value == 5.0
    assert at.select_slider(key="thr_norm").value == 1.0
    assert at.select_slider(key="lr").value == 0.01
    assert at.slider(key="epochs").value == 100
    assert [t.label for t in at.tabs][:5] == [
        ":material/monitoring: Compare", ":material/school: Lesson", ":material/landscape: Cliff",
        ":material/history: History", ":material/tune: Sweep",
    ]  # fmt: skip


def test_every_strategy_and_threshold_extreme():
    at = _app()
    at.multiselect(key="strategies").set_value(list(STRATEGIES)).run()
    _ok(at)
    assert not at.error, _errors(at)
    for s in STRATEGIES[1:]:
        lo, hi = controls.THRESHOLD_RANGES[s]
        for v in (lo, hi):
            at.select_slider(key=controls.thr_key(s)).set_value(v).run()
            _ok(at)
            assert not at.error, (s, v, _errors(at))


@pytest.mark.parametrize("dataset", ["regression", "diabetes", "friedman1", "adding"])
def test_every_dataset(dataset):
    at = _app()
    at.selectbox(key="dataset").set_value(dataset)
    if dataset == "friedman1":
        at.slider(key="n_features").set_value(10)
    at.run()
    _ok(at)
    assert not at.error, _errors(at)
    assert at.session_state["dataset"] == dataset


def test_csv_upload_good_and_bad(tmp_path):
    at = _app()
    good = "a,b,target\n" + "\n".join(f"{i},{i % 7},{2 * i + 1}" for i in range(40))
    path = tmp_path / "good.csv"
    path.write_text(good)
    at.selectbox(key="dataset").set_value("csv")
    at.file_uploader(key="csv_file").upload("good.csv", path.read_bytes(), "text/csv")
    at.run()
    _ok(at)
    assert not at.error, _errors(at)
    at.session_state["store"].add([_fake_result()], status="done")
    at.file_uploader(key="csv_file").set_value(("bad.csv", b"a,b\n1,x\n2,3\n", "text/csv")).run()
    _ok(at)
    assert "CSV file rejected" in _errors(at) and "non-numeric" in _errors(at)
    assert len(at.session_state["store"]) == 1  # nothing the user had is lost


def test_controls_at_their_extremes_never_raise():
    at = _app()
    at.multiselect(key="strategies").set_value(list(STRATEGIES)).run()
    for key, w in controls.widget_table(Caps.from_env()).items():
        if w.kind not in ("options", "int", "float"):
            continue
        find = at.select_slider if w.kind == "options" else at.slider
        if find(key=key).disabled:
            continue
        for v in (w.options[0], w.options[-1]) if w.kind == "options" else (w.lo, w.hi):
            find(key=key).set_value(type(w.default)(v)).run()
            _ok(at)
        find(key=key).set_value(w.default).run()
    assert not at.error, _errors(at)
    at.selectbox(key="dataset").set_value("adding").run()
    for v in (2, Caps.from_env().max_seq_len):
        at.slider(key="seq_len").set_value(v).run()
        _ok(at)


def test_impossible_setting_is_an_error_not_a_traceback():
    at = _app()
    at.slider(key="depth").set_value(64)
    at.select_slider(key="width").set_value(1024).run()
    _ok(at)
    assert "max_params" in _errors(at)
    assert at.button(key="train").disabled
    at.multiselect(key="strategies").set_value([]).run()
    assert "choose at least one clipping strategy" in _errors(at)


def test_bad_link_parameters_are_named_and_ignored():
    at = _app(epochs="999999", lr="-1", strategies="garbage", scale_y="maybe", dataset="mnist")
    _ok(at)
    text = _errors(at)
    for fragment in ("epochs='999999'", "lr='-1'", "strategies='garbage'", "scale_y='maybe'", "dataset='mnist'"):
        assert fragment in text, text
    assert at.slider(key="epochs").value == 100  # the cap held: the default, not 999999
    assert at.select_slider(key="lr").value == 0.01


def test_good_link_parameters_reproduce_a_setup():
    at = _app(epochs="7", lr="0.1", strategies=["norm", "tensor-norm"], thr_norm="2", scale_y="true")
    _ok(at)
    assert not at.error, _errors(at)
    assert at.slider(key="epochs").value == 7
    assert at.multiselect(key="strategies").value == ["norm", "tensor-norm"]
    assert at.select_slider(key="thr_norm").value == 2.0
    assert at.toggle(key="scale_y").value is True


# ---- jobs end to end ----------------------------------------------------------------------------------
def test_train_streams_records_into_the_history():
    at = _app()
    job = _train(at, epochs=3)
    assert job.join(JOIN_S)
    at.run()
    _ok(at)
    store = at.session_state["store"]
    runs = {s.result.label: s.result for s in store.get()}
    assert list(runs) == ["none", "value:5", "norm:1"]
    assert runs["none"].diverged is not None and runs["none"].diverged[0] == 1
    assert len(runs["norm:1"].records) == 3
    status = " ".join(h.value for h in at.html)  # progress and status lines: one element (ui.live_status)
    assert "<code>none</code>: <b>diverged at epoch 1, step" in status
    assert "after epoch 3" in status and "epoch 3/3 · done" in status
    assert at.session_state["shown_ids"] == store.ids()  # the finished job is on the charts


def test_only_the_open_tab_runs_and_a_job_ending_elsewhere_reaches_history():
    """st.tabs(on_change="rerun"): a rerun draws the open tab alone (it drew all six: History's table and Export's
    figures on every Train); a job that ends while History is open still lands there."""
    at = _app()
    assert not [u for u in at.get("file_uploader") if u.key == "hist_import"]  # History is not drawn
    assert not [b for b in at.button if b.key == "sw_run"]  # nor is Sweep
    job = _train(at, epochs=3)
    open_tab(at, "history")
    assert [u.key for u in at.get("file_uploader") if u.key == "hist_import"] == ["hist_import"]
    assert not at.get("plotly_chart")  # the Compare charts are not drawn while History is open
    assert job.join(JOIN_S)
    at.run()  # the watcher's poll (AppTest does not fire run_every: a rerun stands in for it)
    _ok(at)
    assert [s.result.label for s in at.session_state["store"].get()] == ["none", "value:5", "norm:1"]


def test_the_page_a_train_draws_shows_its_first_epoch():
    """The run a click on Train starts waits (<= FIRST_EPOCH_WAIT_S) for the job's first epoch: the page said
    'epoch 0' until a later poll, and on a busy server that poll came seconds later (issue 11)."""
    at = _app()
    job = _train(at, epochs=50, speed="2")  # paced: epoch 2 comes 0.5 s after epoch 1, so the page shows exactly 1
    status = " ".join(h.value for h in at.html)
    assert "epoch 1/50 · running" in status, status
    job.stop()
    assert job.join(JOIN_S)


def _view_title(at: AppTest) -> str:
    """The gradient chart's title (the plotly figure the page was sent)."""
    return json.loads(at.get("plotly_chart")[1].proto.spec)["layout"]["title"]["text"]


def test_values_follow_the_newest_epoch_until_the_user_picks_one():
    at = _app()
    assert _train(at, epochs=3).join(JOIN_S)
    at.session_state["view"] = "Values"
    at.run()
    assert "epoch 3" in _view_title(at) and "hist_epoch" not in [w.key for w in at.slider]  # following: no slider
    at.toggle(key="hist_follow").set_value(False).run()  # off: the slider appears at the newest epoch
    assert at.slider(key="hist_epoch").value == 3
    at.slider(key="hist_epoch").set_value(1).run()
    assert "epoch 1" in _view_title(at)


def test_stop_keeps_what_was_trained():
    at = _app()
    job = _train(at, epochs=200, speed="10")
    job.wait_until(lambda s: s.epoch >= 2, timeout=JOIN_S)
    at.button(key="stop").click().run()
    assert job.join(JOIN_S)
    at.run()
    _ok(at)
    stored = at.session_state["store"].get()
    assert [s.status for s in stored] == ["stopped"] * 3
    norm = next(s.result for s in stored if s.result.label == "norm:1")
    assert 2 <= len(norm.records) < 200


def test_lesson_try_it_loads_and_trains():
    at = open_tab(_app(), "lesson")
    at.radio(key="lesson_step").set_value(at.radio(key="lesson_step").options[1]).run()
    at.slider(key="epochs").set_value(2)
    at.select_slider(key="speed").set_value("max")
    at.button(key="try_1").click().run()
    _ok(at)
    job = at.session_state["job"]
    assert [r.name for r in job.runs] == ["none"] and job.runs[0].optim.epochs == 100  # the lesson's setup
    job.stop()
    assert job.join(JOIN_S)


def test_failed_job_shows_its_error_and_keeps_history():
    at = _app()
    at.session_state["store"].add([_fake_result()], status="done")
    job = Job([RunSpec(data=replace(TUTORIAL.data, n_samples=3))], speed=None)  # too few rows: fails in the worker
    job.start()
    assert job.join(JOIN_S)
    at.session_state["jobs"] = [job]
    at.session_state["job"] = job
    at.run()
    _ok(at)
    assert "failed" in _errors(at) and "ConfigError" in _errors(at)
    assert len(at.session_state["store"]) == 1


# ---- the parts ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", ["none", "value:5", "norm:1", "tensor-norm:1", "agc:0.01", "autoclip:10", "zclip"])
def test_exported_code_compiles_and_trains_one_epoch(clip):
    spec = replace(TUTORIAL, clip=ClipSpec.parse(clip), optim=replace(TUTORIAL.optim, epochs=1))
    code = export.code_snippet(spec)
    compile(code, "export.py", "exec")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {"__name__": "exported"})
    assert out.getvalue().startswith("epoch 1: train loss")


def test_exported_code_for_the_rnn_and_scaled_sets():
    for spec in (
        RunSpec(
            data=replace(TUTORIAL.data, name="adding", n_samples=64, seq_len=5),
            model=replace(TUTORIAL.model, kind="rnn", init="glorot_normal", init_scale=2.0),
        ),
        RunSpec(data=replace(TUTORIAL.data, name="diabetes", scale_x=True, scale_y=True)),
    ):
        spec = replace(spec, optim=replace(spec.optim, epochs=1))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(export.code_snippet(spec), "export.py", "exec"), {"__name__": "exported"})
        assert "validation loss" in out.getvalue()


def test_record_downloads_round_trip():
    results = [_fake_result("value:5"), RunResult(TUTORIAL, [EpochRecord(0, "none", 1, float("inf"),
               float("nan"), [float("inf")], [float("inf")], {}, 0.0, 0.0, diverged=(1, 8))])]  # fmt: skip
    back = loads(export.json_bytes(results))
    assert back[1].diverged == (1, 8)
    json.loads(export.json_bytes(results), parse_constant=_reject_constant)  # strict JSON: no NaN/Infinity
    assert export.csv_bytes(results).decode().startswith("run,label,strategy")
    assert b"plotly" in export.figure_html(lambda: __import__("plotly.graph_objects").graph_objects.Figure())


def test_log_options_hold_the_tutorial_values():
    for lo, hi in controls.THRESHOLD_RANGES.values():
        opts = controls.log_options(lo, hi)
        assert opts[0] == lo and opts[-1] == hi and list(opts) == sorted(set(opts))
    assert {5.0, 1.0} <= set(controls.log_options(0.01, 100)) and 0.01 in controls.log_options(1e-5, 1)


def test_preset_and_five_seeds_load_into_the_controls():
    at = _app()
    at.selectbox(key="preset").set_value("adding-rnn").run()
    _ok(at)
    assert at.session_state["dataset"] == "adding" and at.slider(key="epochs").value == 30
    assert not at.error, _errors(at)
    at.selectbox(key="preset").set_value("tutorial").run()
    job = press_five_seeds(at)
    assert job.join(JOIN_S)
    at.run()
    _ok(at)
    assert len(at.session_state["store"]) == 15
