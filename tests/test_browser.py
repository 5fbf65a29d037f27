"""The dashboard in a real browser: `streamlit run app.py` driven by Debian's Chromium through Playwright.

Skips, saying why, without Chromium or Playwright. One server and one browser for the module; each test
gets a fresh browser context (a new Streamlit session). The server's output goes to a log file whose
tail is printed when a test fails.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from clipviz.config import Caps
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


@contextlib.contextmanager
def _listener():
    """A local HTTP server that counts the paths it is asked for (a markdown image would be one)."""
    import http.server
    import threading

    seen: list[str] = []

    class Count(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(self.path)
            self.send_response(204)
            self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()

        def log_message(self, *args):  # quiet
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Count)
    thread = threading.Thread(target=srv.serve_forever, name="test-listener", daemon=True)
    thread.start()
    try:
        yield srv.server_address[1], seen
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_no_bound_key_with_a_markdown_image_makes_a_request(server, page):
    """Issue 13 item 4: every URL-bound key (26 + classroom) carries `![x](http://127.0.0.1:PORT/p.png)`;
    the page names each one as text, and the browser never asks the listener for the image."""
    from urllib.parse import urlencode

    from clipviz.ui import controls

    keys = sorted(controls.widget_table(Caps.from_env()) | controls.BOUND_ELSEWHERE)
    with server_log_on_failure(server), _listener() as (port, seen):
        img = f"![x](http://127.0.0.1:{port}/p.png)"
        for i in range(0, len(keys), 9):  # at most 9 problems are listed per link: 3 page loads
            part = keys[i : i + 9]
            bu.open_app(page, f"{server.url}/?{urlencode({k: img for k in part})}", timeout_ms=45_000)
            alerts = page.locator(bu.ERROR)
            alerts.first.wait_for(state="visible", timeout=10_000)
            text = " ".join(alerts.all_inner_texts()).replace("\u200b", "")  # text.md_escape's autolink breaks
            for k in part:
                assert f"{k}='{img}' was ignored" in text, (k, text)
            assert page.locator(bu.EXCEPTION).count() == 0
            found = page.locator(f'img[src*=":{port}"], a[href*=":{port}"]')
            assert found.count() == 0, [found.nth(j).evaluate("e => e.outerHTML") for j in range(found.count())][:3]
        # a control request from the same page, after every render: the listener is reachable, and had an
        # image been rendered its request would have come first
        page.evaluate(f"fetch('http://127.0.0.1:{port}/control').catch(() => null)")
        page.wait_for_function(
            f"() => performance.getEntriesByName('http://127.0.0.1:{port}/control').length > 0", timeout=10_000
        )
        deadline = time.monotonic() + 10
        while "/control" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)  # the listener's thread records it: poll the real condition with a deadline
        assert seen == ["/control"], seen


def test_the_memory_exhaustion_link_is_refused_and_the_server_stays_small(server, page):
    """Issue 13 item 1: width 1024 x 200 features x 100,000 rows is priced and refused before Train."""
    with server_log_on_failure(server):
        link = "/?width=1024&n_features=200&n_samples=100000&batch_size=32"
        bu.open_app(page, server.url + link, timeout_ms=45_000)
        alert = page.locator(bu.ERROR).filter(has_text="the server allows")
        alert.first.wait_for(state="visible", timeout=10_000)
        text = alert.first.inner_text()
        assert "Cannot train this setup: this setup needs ~" in text and "lower epochs, samples, width" in text
        assert not page.locator(bu.TRAIN).is_enabled()
        assert page.locator(bu.EXCEPTION).count() == 0
        peak = bu.proc_status(server.pid)["VmHWM"] * 1024  # the server's peak RSS so far, bytes
        print(f"server peak RSS {peak / 2**20:.0f} MB")
        assert peak < Caps.from_env().max_memory_mb * 2**20
