"""What the AppTest suites share: the app's path, a fresh app opened on a link, and the no-exception check."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
JOIN_S = 60  # a bound on one short job's thread, never a stand-in for synchronisation


def open_app(**query) -> AppTest:
    """The app as a fresh browser opens it with `query` in its link."""
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params.update(query)
    return at.run()


def assert_ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
