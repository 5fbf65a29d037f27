"""What the AppTest suites share: the app's path, a fresh app opened on a link, and the no-exception check."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from clipviz.ui.state import TABS

APP = str(Path(__file__).resolve().parents[1] / "app.py")
JOIN_S = 60  # a bound on one short job's thread, never a stand-in for synchronisation


def open_app(**query) -> AppTest:
    """The app as a fresh browser opens it with `query` in its link."""
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params.update(query)
    return at.run()


def open_tab(at: AppTest, name: str) -> AppTest:
    """Switch to a tab, as a click on it does (st.tabs key="tab"): only the open tab's content runs."""
    at.session_state["tab"] = TABS[name]
    return at.run()


def assert_ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def press_five_seeds(at: AppTest, epochs: int = 2):
    """Short epochs at full speed, then '5 seeds': the job it starts trains every strategy on seeds 1-5."""
    at.slider(key="epochs").set_value(epochs)
    at.select_slider(key="speed").set_value("max")
    at.button(key="repeat_seeds").click().run()
    assert_ok(at)
    job = at.session_state["job"]
    assert len(job.runs) == 15 and {r.seed for r in job.runs} == {1, 2, 3, 4, 5}
    return job
