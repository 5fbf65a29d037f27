"""AppTest regressions for the dashboard's state (issue 9): links, presets, one-off seeds, Pause/Step, pins
across Train, replaced jobs, the sweep's 'Open in comparison', CSV upload and the History store."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from clipviz.__main__ import base_spec, build_parser
from clipviz.config import PRESETS, TUTORIAL_CLIPS, Caps, ClipSpec, with_clips
from clipviz.ui import controls
from clipviz.ui.state import TABS
from tests.app_util import JOIN_S, open_tab, press_five_seeds
from tests.app_util import assert_ok as _ok
from tests.app_util import open_app as _app

CAPS = Caps.from_env()
TABLE = controls.widget_table(CAPS)


def _values(at: AppTest) -> dict:
    return {k: at.session_state[k] for k in TABLE if k in at.session_state}


def _link(at: AppTest) -> dict[str, list[str]]:
    return {k: at.query_params.get_all(k) if hasattr(at.query_params, "get_all") else _all(at, k)
            for k in at.query_params}  # fmt: skip


def _all(at: AppTest, k: str) -> list[str]:
    v = at.query_params[k]
    return list(v) if isinstance(v, list) else [v]


def _other(key: str, w: controls.Widget):
    """A value of this widget that is not its default (and valid next to the others)."""
    if w.kind == "multi":
        return ["value", "agc", "zclip"]
    if w.kind == "select":
        return next(o for o in w.options if o != w.default and o != "csv")
    if w.kind == "toggle":
        return not w.default
    if w.kind == "options":  # off the grid on purpose: links and presets keep exact values
        between = (w.options[1] + w.options[2]) / 2
        return int(between) if isinstance(w.default, int) and int(between) not in w.options else between
    if w.kind == "float":
        return round(w.default / 2 + 0.005, 2) if w.default else 0.37
    return int(w.default) + 1 if w.default + 1 <= w.hi else int(w.default) - 1


@pytest.mark.parametrize("key", list(TABLE))
def test_every_run_defining_widget_round_trips_through_a_link(key):
    """controls -> link parameters -> controls gives back the exact value, for each widget on its own."""
    w = TABLE[key]
    value = _other(key, w)
    params = controls.url_params({key: value}, CAPS)
    assert list(params) == [key], params  # a changed value is in the link; defaults are not
    assert controls.audit_url(params, CAPS) == []
    assert controls.url_state(params, CAPS) == {key: value}
    assert controls.url_params({key: w.default}, CAPS) == {}


def test_a_whole_setup_round_trips_through_the_page_url():
    """A link that changes every run-defining widget (off-grid numbers included) sets each of them, and the
    page writes back the same link."""
    want = {k: _other(k, w) for k, w in TABLE.items()}
    want["dataset"] = "friedman1"  # one that uses features and noise
    link = controls.url_params(want, CAPS)
    assert set(link) == set(TABLE)
    at = _app(**link)
    _ok(at)
    assert not at.error, [e.value for e in at.error]
    assert _values(at) == want
    assert _link(at) == link
    at.run()  # and it stays so on the next rerun
    assert _values(at) == want and _link(at) == link


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_preset_loaded_in_the_ui_is_the_cli_preset_and_survives_a_link(name):
    at = _app()
    at.selectbox(key="preset").set_value(name).run()
    _ok(at)
    cli = with_clips(base_spec(build_parser().parse_args(["run", "--preset", name])), TUTORIAL_CLIPS)
    ui = controls.build_runs(_values(at), None, CAPS)
    assert ui == cli  # exactly: no slider snapping (adding-rnn's init_scale 3.0 once became 3.2)
    assert at.selectbox(key="preset").value == name  # the box shows what is loaded
    again = _app(**_link(at))
    _ok(again)
    assert controls.build_runs(_values(again), None, CAPS) == cli
    assert again.selectbox(key="preset").value == name


def test_preset_box_says_custom_once_a_value_changes():
    at = _app()
    assert at.selectbox(key="preset").value == "tutorial"
    at.selectbox(key="dataset").set_value("diabetes").run()
    assert at.selectbox(key="preset").value == controls.CUSTOM
    assert at.query_params["dataset"] == "diabetes"  # a dropdown's value reaches the link (bug 7)
    at.multiselect(key="strategies").set_value(["none", "agc"]).run()
    at.selectbox(key="preset").set_value("tutorial").run()
    _ok(at)
    assert "dataset" not in at.query_params and at.selectbox(key="preset").value == "tutorial"


def _train(at: AppTest, epochs: int, speed: str = "max"):
    at.slider(key="epochs").set_value(epochs)
    at.select_slider(key="speed").set_value(speed)
    at.button(key="train").click().run()
    _ok(at)
    return at.session_state["job"]


def test_five_seeds_is_a_one_off():
    at = _app()
    job = press_five_seeds(at)
    assert job.join(JOIN_S)
    at.run()
    assert "n_seeds" not in at.query_params and at.slider(key="n_seeds").value == 1
    nxt = _train(at, 2)
    assert len(nxt.runs) == 3  # the next Train trains one seed again
    assert nxt.join(JOIN_S)


def test_lesson_steps_leave_the_seed_count_alone():
    """A lesson step with several seeds trains them once (load_setup: a one-off); the control stays at 1."""
    from clipviz.ui.lesson import STEPS

    trains = [k for k in range(1, len(STEPS)) if STEPS[k].spec is not None]  # step 1 only loads
    i = max(trains, key=lambda k: (STEPS[k].n_seeds, -k))
    at = open_tab(_app(), "lesson")
    at.radio(key="lesson_step").set_value(at.radio(key="lesson_step").options[i]).run()
    at.button(key=f"try_{i}").click().run()
    _ok(at)
    job = at.session_state["job"]
    assert {r.seed for r in job.runs} == set(range(1, STEPS[i].n_seeds + 1))
    job.stop()
    assert job.join(JOIN_S)
    at.run()
    assert "n_seeds" not in at.query_params and at.slider(key="n_seeds").value == 1


def test_pause_then_step_offers_resume():
    at = _app()
    job = _train(at, 200, speed="5")
    at.button(key="pause").click().run()
    assert at.button(key="pause").label == "Resume"
    at.button(key="step").click().run()
    job.wait_until(lambda s: s.state == "paused", timeout=JOIN_S)
    at.run()
    assert at.button(key="pause").label == "Resume"  # was 'Pause' while the progress said paused
    at.button(key="pause").click().run()
    assert at.button(key="pause").label == "Pause"
    job.wait_until(lambda s: s.state == "running", timeout=JOIN_S)
    at.button(key="stop").click().run()
    assert job.join(JOIN_S)


def test_pins_survive_the_next_train_and_stay_on_the_charts():
    at = _app()
    first = _train(at, 2)
    assert first.join(JOIN_S)
    at.run()
    store = at.session_state["store"]
    pinned = store.ids()[1]
    store.pin(pinned)
    second = _train(at, 2)
    assert second.join(JOIN_S)
    at.run()
    _ok(at)
    assert [s.id for s in store.get() if s.pinned] == [pinned]
    assert pinned in at.session_state["shown_ids"]
    third = _train(at, 2)  # and while the next job trains
    assert pinned in at.session_state["shown_ids"]
    assert third.join(JOIN_S)


def test_a_replaced_job_goes_to_history_never_onto_the_new_jobs_charts():
    at = _app()
    old = _train(at, 300, speed="50")
    old.wait_until(lambda s: s.epoch >= 1, timeout=JOIN_S)
    at.selectbox(key="preset").set_value("adding-rnn").run()
    new = _train(at, 2)
    assert old.join(JOIN_S) and new.join(JOIN_S)
    at.run()
    _ok(at)
    store = at.session_state["store"]
    shown = store.get(at.session_state["shown_ids"])
    assert shown and all(s.result.spec.data.name == "adding" for s in shown)  # no tutorial run among them
    assert {s.status for s in store.get() if s.result.spec.data.name != "adding"} == {"replaced"}


def test_sweep_open_in_comparison_loads_and_trains_the_point():
    at = _app()
    at.slider(key="epochs").set_value(2)
    at.select_slider(key="speed").set_value("max")
    open_tab(at, "sweep")
    # 0.464 and 2.15 sit between the slider grid's points
    at.text_input(key="sw_thresholds").set_value("0.1:10:4").run()
    at.number_input(key="sw_seeds").set_value(1).run()
    at.button(key="sw_run").click().run()
    job = at.session_state["sweep_job"]
    assert job.join(JOIN_S)
    at.run()
    _ok(at)
    at.selectbox(key="sw_p_s").set_value("norm").run()
    thr = at.selectbox(key="sw_p_t").options[1]
    at.selectbox(key="sw_p_t").set_value(float(thr)).run()
    at.button(key="sw_open").click().run()
    _ok(at)
    assert at.session_state["tab"] == TABS["compare"]  # the point's job shows where it trains
    assert at.session_state["strategies"] == ["norm"] and at.session_state["thr_norm"] == float(thr)
    job = at.session_state["job"]
    assert job is not None and [r.clip for r in job.runs] == [ClipSpec("norm", float(thr))]
    assert at.query_params["thr_norm"] == controls._url_text(float(thr))
    job.stop()
    assert job.join(JOIN_S)


def test_csv_upload_switches_the_dataset_to_csv(tmp_path):
    at = _app()
    data = ("a,b,target\n" + "\n".join(f"{i},{i % 7},{2 * i + 1}" for i in range(40))).encode()
    at.file_uploader(key="csv_file").upload("good.csv", data, "text/csv").run()
    _ok(at)
    assert at.selectbox(key="dataset").value == "csv"
    assert not at.error, [e.value for e in at.error]


def test_history_imports_a_cli_results_json_and_rejects_a_bad_one(tmp_path):
    from clipviz.__main__ import main

    out = tmp_path / "results.json"
    assert (
        main(["run", "--preset", "tutorial", "--epochs", "2", "--clip", "value:5", "--out", str(out), "--quiet"]) == 0
    )
    at = open_tab(_app(), "history")
    at.file_uploader(key="hist_import").upload("results.json", out.read_bytes(), "application/json").run()
    _ok(at)
    stored = at.session_state["store"].get()
    assert [(s.result.label, s.status, len(s.result.records)) for s in stored] == [("value:5", "imported", 2)]
    assert at.session_state["shown_ids"] == [stored[0].id]  # on the charts at once
    at.file_uploader(key="hist_import").upload("bad.json", b'{"runs": 3}', "application/json").run()
    _ok(at)
    assert "Could not import bad\\.json" in " ".join(e.value for e in at.error)  # markdown-escaped
    assert len(at.session_state["store"]) == 1  # nothing lost
