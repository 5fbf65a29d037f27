"""The real dashboard in a real browser: start `streamlit run app.py`, drive Debian's Chromium with Playwright.

Shared by tests/test_browser.py and benchmarks/{latency,load}.py. Playwright's own browser download
does not work here, so Chromium is always /usr/bin/chromium (or whatever `chromium` is on PATH).
Selectors live here too, so one app change means one edit.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [  # DESIGN.md: what Debian's chromium needs in a container
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# several pages at once: keep hidden/occluded tabs running at full speed (load benchmark)
NO_THROTTLE_ARGS = [
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]

# ---- selectors (see app.py) ---------------------------------------------------------------------
TRAIN = ".st-key-train button:visible"  # the Train button (streamlit also keeps a hidden copy of it)
PROGRESS = ".st-key-live_status .cv-progress"  # 'epoch k/N · state'
STATUS = ".st-key-live_status .cv-status"  # one line per run: 'none: diverged at epoch 1, step 8'
SPEED = ".st-key-speed"  # the 'Epochs per second' select slider
EXCEPTION = '[data-testid="stException"]'  # streamlit's traceback box
ERROR = '[data-testid="stAlert"]'  # st.error / st.warning boxes
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'  # the script is not running


def chromium_path() -> str | None:
    """Debian's chromium, or None when it is not installed."""
    if os.path.exists("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if chromium_path() is None:
        return "chromium is not installed (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the server ---------------------------------------------------------------------------------
@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's output, without its HTTP access log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join([ln for ln in text.splitlines() if not _ACCESS_LOG.search(ln)][-lines:])


_ACCESS_LOG = re.compile(r' - "(GET|POST|HEAD|PUT|DELETE|OPTIONS) \S+ HTTP/[\d.]+" \d{3}$')


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def streamlit_server(log_path: Path, env: dict[str, str] | None = None, timeout: float = 45.0) -> Iterator[Server]:
    """`streamlit run app.py` on a free port; yields once /_stcore/health answers (RuntimeError after timeout s)."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]  # fmt: skip
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        # own process group: teardown ends the server and anything it started, and nothing else
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(server.url):
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not answer /_stcore/health in {timeout:g} s:\n{server.log_tail()}")
            time.sleep(0.2)  # polling a subprocess's port: nothing to wait on instead
        yield server
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 15)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(5)


def proc_status(pid: int) -> dict[str, int]:
    """Threads, VmRSS and VmHWM (peak RSS) in KiB of a live process, from /proc (no psutil needed)."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("Threads", "VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (those that are gone count 0)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def descendants(pid: int) -> list[int]:
    """Every live process below pid (e.g. playwright's driver and the chromium processes it started)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


# ---- the browser --------------------------------------------------------------------------------
@contextlib.contextmanager
def chromium(extra_args: list[str] = ()) -> Iterator:
    """A headless Debian Chromium driven by Playwright; closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS + list(extra_args)
        )
        try:
            yield browser
        finally:
            browser.close()


def open_app(page, url: str, timeout_ms: float = 30_000) -> None:
    """Load the dashboard and wait until the script has drawn the Train button and gone idle."""
    page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
    page.locator(TRAIN).wait_for(state="visible", timeout=timeout_ms)
    wait_idle(page, timeout_ms)


def wait_idle(page, timeout_ms: float = 30_000) -> None:
    """Until the app script has finished its run (streamlit marks stApp with the script's state)."""
    page.locator(IDLE).wait_for(state="attached", timeout=timeout_ms)


# a flag set when the app script next starts a run: an action's rerun can begin after the page first looks
# idle, so 'wait until idle' alone may see the page from before the action (observed in CI)
_JS_ARM = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    window.__cvRan = false;
    if (window.__cvWatched !== app) {
        window.__cvWatched = app;
        // a short run can be over before the callback fires: look at each change's old value too
        new MutationObserver((changes) => {
            if (app.getAttribute('data-test-script-state') === 'running'
                || changes.some((c) => c.oldValue === 'running')) window.__cvRan = true;
        }).observe(app, {attributes: true, attributeOldValue: true, attributeFilter: ['data-test-script-state']});
    }
}"""


def after_rerun(page, action, timeout_ms: float = 15_000) -> None:
    """Do `action()`, then wait until the script run it starts has begun and finished (a polling fragment of a
    training job also counts as a run: use it for actions on a quiet page)."""
    page.evaluate(_JS_ARM)
    action()
    page.wait_for_function("() => window.__cvRan === true", timeout=timeout_ms)
    wait_idle(page, timeout_ms)


def set_speed(page, label: str, timeout_ms: float = 10_000) -> None:
    """Move the 'Epochs per second' select slider to `label` ('1' ... '50', 'max') with the keyboard."""
    thumb = page.locator(f'{SPEED} input[type="range"]').first  # visually hidden, keyboard-driven (react-aria)
    thumb.wait_for(state="attached", timeout=timeout_ms)
    if thumb.get_attribute("aria-valuetext") == label:
        return
    thumb.focus()
    thumb.press("End" if label == "max" else "Home")
    if label != "max":  # step right from the first option
        for _ in range(50):
            if thumb.get_attribute("aria-valuetext") == label:
                break
            thumb.press("ArrowRight")
    page.wait_for_function(
        "([sel, want]) => document.querySelector(sel)?.getAttribute('aria-valuetext') === want",
        arg=[f'{SPEED} input[type="range"]', label],
        timeout=timeout_ms,
    )
    wait_idle(page, timeout_ms)


def tab(page, name: str, timeout_ms: float = 15_000) -> None:
    """Open one of the page's tabs ('Compare', 'History', ...) and wait until its content is drawn: only the open
    tab runs (app.py), so the click starts a rerun, and each tab's content sits in a container keyed tab_<name>.
    Not after_rerun: in CI its wait for the click's run timed out once on a freshly restarted server (not
    understood); callers that read what a run changes wait for that content instead."""
    page.get_by_role("tab", name=name).click()
    page.locator(f".st-key-tab_{name.lower()}").wait_for(state="visible", timeout=timeout_ms)
    wait_idle(page, timeout_ms)


def pick(page, key: str, option: str, timeout_ms: float = 15_000) -> None:
    """Choose `option` in the selectbox with this widget key."""
    box = page.locator(f".st-key-{key} input")
    for attempt in range(3):  # a polling fragment may redraw the list under the pointer: open it again
        box.scroll_into_view_if_needed()
        box.click()
        box.fill(option)  # filters the list to the option (long lists are virtualised: off-screen ones are absent)
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=5_000)
            break
        except Exception:
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
    wait_idle(page, timeout_ms)
    page.wait_for_function(
        "([sel, want]) => document.querySelector(sel)?.value === want",
        arg=[f".st-key-{key} input", option],
        timeout=timeout_ms,
    )


def selected(page, key: str) -> str:
    """The value a selectbox shows (it is its input's value)."""
    return page.locator(f".st-key-{key} input").input_value()


def slider_to(page, key: str, steps_from_min: int, timeout_ms: float = 15_000) -> None:
    """Put a slider at its minimum, then `steps_from_min` steps right (keyboard: Home, ArrowRight...), and wait
    for the script run that takes the new value. Keys pressed during another run can be lost: callers wait for
    what the value should change (e.g. the link), not only for this."""
    thumb = page.locator(f'.st-key-{key} input[type="range"]').first  # visually hidden, keyboard-driven
    target = thumb.evaluate("(el, n) => String(Number(el.min) + n * Number(el.step || 1))", steps_from_min)
    if thumb.input_value() == target:
        return  # already there: no value is sent, so no rerun to wait for
    wait_idle(page, timeout_ms)

    def keys():
        thumb.focus()
        thumb.press("Home")
        for _ in range(steps_from_min):
            thumb.press("ArrowRight")

    after_rerun(page, keys, timeout_ms)  # the slider sends its value when the keys stop (a blur here lost it)


def click_button(page, key: str, timeout_ms: float = 15_000, idle: bool = True) -> None:
    """Click the (visible) button with this widget key and (idle=True) wait for the script to finish. While a
    job plays, its polling fragment keeps the script busy: then wait for what the click should show instead."""
    page.locator(f".st-key-{key} button:visible").click()
    if idle:
        wait_idle(page, timeout_ms)


def button_text(page, key: str) -> str:
    return page.locator(f".st-key-{key} button:visible").inner_text().strip()


HISTORY_GRID = '[data-testid="stDataFrame"]'  # the History tab's run table (a canvas grid)
GRID_ROW_PX, GRID_HEADER_PX, GRID_SMALL_PX = 35, 35, 64  # row and header heights; the show/pin columns' width


def history_click(page, row: int, column: str, timeout_ms: float = 15_000) -> None:
    """Click the 'show' or 'pin' box of a History row (0 = newest): the grid is a canvas, so by position
    (clipviz.ui.history_view gives those columns a fixed width). Waits for the run the edit starts and, for a
    pin, until the caption's pinned count has changed (a run seen may be an earlier action's)."""
    wait_idle(page, timeout_ms)
    box = page.locator(HISTORY_GRID).first.bounding_box()
    x = box["x"] + GRID_SMALL_PX * (0.5 if column == "show" else 1.5)
    before = pinned_count(page)
    # the grid sends its edit on a short debounce, then the script reruns: wait for that run, not a fixed time
    after_rerun(page, lambda: page.mouse.click(x, box["y"] + GRID_HEADER_PX + GRID_ROW_PX * (row + 0.5)), timeout_ms)
    if column == "pin":
        page.wait_for_function(_JS_COUNT, arg=[PINNED_RE, before, False], timeout=timeout_ms)


# counts in the History tab's caption: 'N runs kept in this browser's history, P pinned'
STORED_RE, PINNED_RE = r"(\d+) runs? kept in this browser", r"(\d+) pinned"
_JS_COUNT = """([pattern, n, equal]) => {
    const m = (document.querySelector('[data-testid="stMain"]')?.innerText || "").match(new RegExp(pattern));
    if (!m) return equal && n === 0;  // no caption: a count of 0, never a change
    return equal ? Number(m[1]) === n : Number(m[1]) !== n;
}"""


def _caption_count(page, pattern: str) -> int:
    m = re.search(pattern, page.locator('[data-testid="stMain"]').inner_text())
    return int(m.group(1)) if m else 0


def pinned_count(page) -> int:
    """'P pinned' from the History tab's caption (0 when it does not say)."""
    return _caption_count(page, PINNED_RE)


def stored_count(page) -> int:
    """'N runs kept in this browser's history' from the History tab's caption (0 when it says none)."""
    return _caption_count(page, STORED_RE)


def wait_stored(page, want: int, timeout_ms: float = 15_000) -> int:
    """stored_count once it reads `want`, or what it reads at the deadline: an action's rerun may not have
    started when the page first looks idle, so a count read at once can be the one from before the action."""
    try:
        page.wait_for_function(_JS_COUNT, arg=[STORED_RE, want, True], timeout=timeout_ms)
    except Exception:  # playwright's TimeoutError: the caller's assertion shows what the page says instead
        pass
    return stored_count(page)


def progress_text(page) -> str:
    loc = page.locator(PROGRESS)
    return loc.inner_text() if loc.count() else ""


# in-page predicates (also used with playwright's async API by benchmarks/load.py). textContent, not
# innerText: reading it forces no layout, so polling every few ms does not slow the page it measures.
JS_EPOCH = """([sel, want]) => {
    const el = document.querySelector(sel);
    const m = el && el.textContent.match(/epoch (\\d+)\\/(\\d+)/);
    if (!m) return false;
    return (want === null ? +m[1] === +m[2] : +m[1] >= want) ? m[0] : false;
}"""
JS_DONE = """([prog, stat]) => {
    const p = document.querySelector(prog), s = document.querySelector(stat);
    const m = p && p.textContent.match(/epoch \\d+\\/\\d+ · (done|stopped|failed)/);
    return m && s ? m[0] : false;
}"""


def wait_epoch(page, epoch: int | None, timeout_ms: float, poll_ms: float = 10) -> str:
    """Wait until the progress shows 'epoch k/N' with k >= epoch (k == N when epoch is None); returns it.

    Polls in the page every poll_ms, so the moment seen is when the DOM first shows the text (give or
    take poll_ms), not when Python next looks.
    """
    handle = page.wait_for_function(JS_EPOCH, arg=[PROGRESS, epoch], polling=poll_ms, timeout=timeout_ms)
    return handle.json_value()


def wait_done(page, timeout_ms: float, poll_ms: float = 10) -> str:
    """Wait until the job is finished (done, stopped or failed) and the status lines are drawn; returns
    the progress text, e.g. 'epoch 100/100 · done'."""
    handle = page.wait_for_function(JS_DONE, arg=[PROGRESS, STATUS], polling=poll_ms, timeout=timeout_ms)
    return handle.json_value()


def job_shown(page) -> int:
    """The job number on the progress line ('job 3 · epoch 2/2 · done'), 0 before the first job."""
    m = re.search(r"job (\d+) ·", progress_text(page))
    return int(m.group(1)) if m else 0


def wait_job_done(page, number: int, timeout_ms: float, poll_ms: float = 20) -> str:
    """Wait until job `number` is finished and its status lines are drawn (not an earlier job's); returns
    the progress text from 'epoch'."""
    handle = page.wait_for_function(
        "([prog, stat, n]) => { const p = document.querySelector(prog), s = document.querySelector(stat);"
        " const m = p && p.textContent.match(new RegExp('job ' + n + ' · (epoch [0-9]+/[0-9]+ · (done|stopped|failed))'));"
        " return m && s ? m[1] : false; }",
        arg=[PROGRESS, STATUS, number],
        polling=poll_ms,
        timeout=timeout_ms,
    )
    return handle.json_value()


def status_by_run(page) -> dict[str, str]:
    """{'none': 'diverged at epoch 1, step 8', 'value:5': 'train loss ...', ...} from the status lines."""
    out = {}
    for line in page.locator(STATUS).inner_text().splitlines():
        # labels contain ':' themselves ('value:5'): split at ': ' instead
        label, sep, text = line.partition(": ")
        if sep:
            out[label.strip()] = text.strip()
    return out


# ---- the README's screenshot --------------------------------------------------------------------
def screenshot_mid_comparison(path: Path, epoch: int = 30, speed: str = "5", viewport=(1440, 900)) -> str:
    """Start the tutorial comparison at `speed` epochs/s and save the page once `epoch` is on screen."""
    log = Path(tempfile.mkdtemp(prefix="clipviz-screenshot-")) / "streamlit.log"
    with streamlit_server(log) as server, chromium() as browser:
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        open_app(page, server.url, timeout_ms=60_000)
        set_speed(page, speed)
        page.locator(TRAIN).click()
        page.mouse.move(viewport[0] - 5, viewport[1] // 2)  # off the Train button: no tooltip in the picture
        shown = wait_epoch(page, epoch, timeout_ms=60_000)
        page.wait_for_timeout(600)  # a picture, not a test: let plotly finish drawing the last redraw
        page.evaluate("() => document.querySelectorAll('*').forEach(e => { if (e.scrollTop) e.scrollTop = 0; })")
        page.screenshot(path=str(path))
        return shown


if __name__ == "__main__":  # python tests/browser_util.py assets/dashboard.png
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "assets" / "dashboard.png").resolve()
    print(f"{out}: {screenshot_mid_comparison(out)}")


# ---- measuring the page ------------------------------------------------------------------------------
# bounding box [left, top, right, bottom] of a keyed element (st.container(key=...) / widget key), or null
JS_BOX = """(key) => { const e = document.querySelector('.st-key-' + key); if (!e) return null;
    const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom].map(Math.round); }"""
# every visible piece of text the page cut off (an ellipsis, or content wider than its box that is not shown)
JS_CUT = """() => { const out = [];
    document.querySelectorAll('[data-testid=stMain] *, [data-testid=stSidebar] *').forEach(e => {
        if (!e.offsetParent || !e.textContent.trim() || e.closest('.js-plotly-plot')) return;
        const cs = getComputedStyle(e);
        if (e.scrollWidth > e.clientWidth + 1 && (cs.overflowX !== 'visible' || cs.textOverflow === 'ellipsis'))
            out.push(e.textContent.trim().slice(0, 40));
    }); return out; }"""
# font sizes (px) of every text in a keyed plotly chart: ticks, axis titles, legend, annotations
JS_CHART_FONTS = """(key) => [...document.querySelectorAll('.st-key-' + key + ' .main-svg text')]
    .filter(t => t.textContent.trim()).map(t => parseFloat(getComputedStyle(t).fontSize))"""


def box(page, key: str) -> list[int] | None:
    return page.evaluate(JS_BOX, key)


def cut_texts(page) -> list[str]:
    return page.evaluate(JS_CUT)


def chart_fonts(page, key: str) -> list[float]:
    return page.evaluate(JS_CHART_FONTS, key)


def wait_chart_title(page, key: str, text: str, timeout_ms: float = 20_000) -> None:
    """Until the keyed plotly chart's title contains text (plotly has drawn the new figure)."""
    page.wait_for_function(
        "([k, t]) => (document.querySelector('.st-key-' + k + ' .gtitle') || {}).textContent?.includes(t)",
        arg=[key, text],
        timeout=timeout_ms,
    )
