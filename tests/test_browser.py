"""The dashboard in a real browser: `streamlit run app.py` driven by Debian's Chromium through Playwright.

Skips, saying why, without Chromium or Playwright. One server and one browser for the module; each test
gets a fresh browser context (a new Streamlit session). The server's output goes to a log file whose
tail is printed when a test fails.
"""

from __future__ import annotations

import contextlib

import pytest

from tests import browser_util as bu

pytestmark = [pytest.mark.browser, pytest.mark.skipif(bu.missing() is not None, reason=str(bu.missing()))]

VIEWPORT = {"width": 1440, "height": 900}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with bu.streamlit_server(tmp_path_factory.mktemp("server") / "streamlit.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    with bu.chromium() as br:
        yield br


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    try:
        yield context.new_page()
    finally:
        context.close()


@contextlib.contextmanager
def server_log_on_failure(server: bu.Server):
    try:
        yield
    except BaseException:
        print(f"---- tail of the server log ({server.log_path}) ----\n{server.log_tail(60)}")
        raise


def test_tutorial_comparison_trains_to_the_end(server, page, tmp_path, record_property):
    with server_log_on_failure(server):
        bu.open_app(page, server.url, timeout_ms=45_000)  # the first run imports torch: slow on 2 cores
        page.locator(bu.TRAIN).click()
        bu.wait_epoch(page, 1, timeout_ms=15_000)  # live: epochs appear while the job trains
        assert bu.wait_done(page, timeout_ms=60_000) == "epoch 100/100 · done"

        runs = bu.status_by_run(page)
        assert list(runs) == ["none", "value:5", "norm:1"], runs
        assert runs["none"].startswith("diverged at epoch 1"), runs
        for label in ("value:5", "norm:1"):
            assert "diverged" not in runs[label] and runs[label].endswith("after epoch 100"), runs
        assert page.locator(bu.EXCEPTION).count() == 0

        shot = tmp_path / "dashboard_done.png"
        page.screenshot(path=str(shot))
        record_property("screenshot", str(shot))
        print(f"screenshot: {shot}")


def test_hostile_link_shows_a_message_not_a_traceback(server, page):
    with server_log_on_failure(server):
        bu.open_app(page, f"{server.url}/?epochs=999999&lr=-1&strategies=rm%20-rf", timeout_ms=45_000)
        alerts = page.locator(bu.ERROR)
        alerts.first.wait_for(state="visible", timeout=10_000)
        text = " ".join(alerts.all_inner_texts())
        assert "epochs='999999' was ignored" in text, text
        assert "lr='-1' was ignored" in text, text
        assert "strategies='rm -rf' was ignored" in text, text
        assert page.locator(bu.EXCEPTION).count() == 0
        assert "Traceback" not in page.locator("body").inner_text()
        # the bad values were replaced by the defaults: the page can still train
        assert page.locator(bu.TRAIN).is_enabled()
