"""The progress line and the status lines: one piece of HTML from one snapshot (issue 9, item 9).

The browser test (test_browser_state) watches a live page; these check the markup itself: both halves
name the same epoch, user text is escaped, several seeds get one row per strategy.
"""

import re
from dataclasses import replace

from clipviz.jobs import JobSnapshot
from clipviz.ui.live_status import live_status_html, progress_text
from tests.test_charts import _diverged, _run


def _snap(state="running", epoch=2, epochs=3, results=(), position=None):
    return JobSnapshot(7, state, epoch, epochs, position, None, list(results), 1, None)


def test_progress_and_status_are_one_element_of_one_snapshot():
    results = [_diverged(), _run("value", 5.0, (900.0, 500.0)), _run("norm", 1.0, (2e4, 1.9e4))]
    html = live_status_html(_snap(results=results), 3, results)
    assert html.count('class="cv-live"') == 1  # one element holds both halves
    assert "job 3 · epoch 2/3 · running" in html and 'aria-valuenow="67"' in html
    assert re.findall(r"after epoch (\d+)", html) == ["2", "2"]
    assert "<code>none</code>: <b>diverged at epoch 1, step 8</b>" in html


def test_user_text_is_escaped():
    evil = replace(_run("norm", 1.0).spec, label="<img src=x onerror=alert(1)>")
    html = live_status_html(None, None, [replace(_run("norm", 1.0), spec=evil)])
    assert "<img" not in html and "&lt;img src=x" in html
    assert "Press <b>Train</b>" in html  # no job yet


def test_seeds_get_one_row_per_strategy_and_states_read_plainly():
    results = [_run("norm", 1.0, seed=s) for s in (1, 2, 3)] + [_run("value", 5.0, seed=s) for s in (1, 2, 3)]
    html = live_status_html(_snap(state="done", epoch=3), 1, results)
    assert html.count("<tr>") == 3 and html.count("<td>0/3</td>") == 2  # header + one row per strategy
    assert progress_text(_snap(state="queued", position=2), 4) == (
        "job 4 · queued, position 2: other jobs are training"
    )
    assert progress_text(_snap(state="done", epoch=1), 4) == "job 4 · epoch 1/3 · done: every run diverged"
    assert "No runs to show yet" in live_status_html(None, None, [])
