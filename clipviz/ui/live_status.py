"""The progress line and the run status lines as ONE piece of HTML, built from one job snapshot.

They used to be two Streamlit elements (st.progress, then st.markdown). The browser applies a rerun's elements
one by one, and a fragment rerun can be cut short between them (the next poll, a click), so a page could show
'epoch 48/100' over status lines that said 'after epoch 69'. One element is drawn whole or not at all: what the
class sees always comes from one snapshot. No Streamlit here, so the markup is unit-tested without a server.

Every user-chosen string (a run label can carry a preset or CSV name) goes through html.escape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from clipviz.jobs import JobSnapshot
from clipviz.records import RunResult
from clipviz.ui import charts

# static CSS only (never user data), injected once by app.py; the bar follows Streamlit's st.progress look
CSS = (
    ".cv-live {display: grid; grid-template-columns: 1fr 2fr; column-gap: 1rem; align-items: start;}"
    ".cv-progress p, .cv-status p {margin: 0 0 0.2rem 0;}"
    ".cv-bar {height: 0.5rem; border-radius: 0.25rem; background: rgba(151, 166, 195, 0.25); overflow: hidden;}"
    ".cv-fill {height: 100%; background: #ff4b4b;}"
    ".cv-status table {border-collapse: collapse;} .cv-status th, .cv-status td {padding: 0.05rem 0.6rem;"
    " border-bottom: 1px solid rgba(49, 51, 63, 0.1); text-align: left;}"
    ".cv-empty {padding: 0.5rem 0.9rem; border-radius: 0.5rem; background: rgba(28, 131, 225, 0.1);"
    " color: rgb(0, 66, 128);}"
)


def progress_text(snap: JobSnapshot | None, number: int | None) -> str:
    """'job 3 · epoch 48/100 · running' (plain text; the caller escapes it)."""
    if snap is None:
        return ""
    if snap.state == "queued":
        return f"job {number} · queued, position {snap.queue_position}: other jobs are training"
    why = ": every run diverged" if snap.state == "done" and snap.epoch < snap.epochs else ""
    return f"job {number} · epoch {snap.epoch}/{snap.epochs} · {snap.state}{why}"


def _progress_html(snap: JobSnapshot | None, number: int | None) -> str:
    if snap is None:
        return '<div class="cv-progress"><p>Press <b>Train</b> to train the selected strategies side by side.</p></div>'
    frac = 0.0 if snap.state == "queued" else min(1.0, max(0.0, snap.progress))
    return (
        f'<div class="cv-progress" role="progressbar" aria-valuemin="0" aria-valuemax="100"'
        f' aria-valuenow="{frac * 100:.0f}"><p>{escape(progress_text(snap, number))}</p>'
        f'<div class="cv-bar"><div class="cv-fill" style="width: {frac * 100:.1f}%"></div></div></div>'
    )


def _seed_rows(results: Sequence[RunResult]) -> str:
    """Several seeds: one compact row per strategy (median final validation loss, IQR, diverged k/n)."""
    table = charts.seed_table(results)
    head = "".join(f"<th>{h}</th>" for h in ("strategy", "seeds", "median final val", "IQR", "diverged"))
    rows = []
    for strategy, seeds, median, iqr, diverged, _epoch in table.itertuples(index=False):
        med = f"{median:.4g}" if not math.isnan(median) else "–"  # nan: every seed diverged
        cells = (f"<code>{escape(str(strategy))}</code>", seeds, med, escape(str(iqr)), escape(str(diverged)))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _run_line(r: RunResult) -> str:
    if r.diverged:
        text = f"<b>diverged at epoch {r.diverged[0]}, step {r.diverged[1]}</b>"
    else:
        last = r.final
        text = f"train loss {last.train_loss:.4g}, validation loss {last.val_loss:.4g} after epoch {last.epoch}"
    return f"<p><code>{escape(r.label)}</code>: {text}</p>"


def status_html(results: Sequence[RunResult]) -> str:
    if not results:
        return '<div class="cv-empty"><p>No runs to show yet. Train, or pick runs in the History tab.</p></div>'
    if any(len(g) > 1 for g in charts.seed_groups(results).values()):
        return f'<div class="cv-status">{_seed_rows(results)}</div>'
    return f'<div class="cv-status">{"".join(_run_line(r) for r in results)}</div>'


def live_status_html(snap: JobSnapshot | None, number: int | None, results: Sequence[RunResult]) -> str:
    """Progress (left third) and status lines (right two thirds) of the same snapshot, as one element."""
    return f'<div class="cv-live">{_progress_html(snap, number)}{status_html(results)}</div>'
