"""The History tab: this browser's stored runs as one editable table (show, pin, name, note, delete), grouped
by any setting, and an import of a results JSON written by the CLI.

Every edit is applied in the editor's on_change callback, against the row order the table was drawn with
(its ids travel as the callback's argument), and the table's key changes with its content, so a browser's
stale copy of an older table can never apply an edit to the wrong run.
"""

from __future__ import annotations

import hashlib
import re
import time

import pandas as pd
import streamlit as st

from ..config import Caps, ConfigError
from ..records import loads
from ..text import md_escape
from . import charts, state
from .state import RunStore, StoredRun

EDITABLE = ["show", "pin", "name", "note", "delete"]
SMALL = 64  # px, the show and pin columns
GROUPS = ["job", "preset", "status", *charts.SETTING_COLUMNS]  # what the table can be grouped by


def _frame(runs: list[StoredRun], shown: set[int], doomed: set[int]) -> pd.DataFrame:
    """One row per run, newest first: the picks, the run's colour, its label, results, then its settings."""
    table = charts.runs_table([s.result for s in runs])
    front = pd.DataFrame(
        {
            "show": [s.id in shown for s in runs],
            "pin": [s.pinned for s in runs],
            "colour": ["●"] * len(runs),
            "run": [state.describe(s) for s in runs],
            "name": [s.name for s in runs],
            "note": [s.note for s in runs],
            "job": [s.job_id for s in runs],
            "preset": [s.preset or "(custom)" for s in runs],
            "status": [s.status for s in runs],
            "stored": [time.strftime("%Y-%m-%d %H:%M", time.localtime(s.created)) for s in runs],
        }
    )
    rest = table.drop(columns=["run"])
    out = pd.concat([front, rest], axis=1)
    out["delete"] = [s.id in doomed for s in runs]
    return out


def _digest(runs: list[StoredRun], shown: set[int], doomed: set[int], group: str) -> str:
    """Changes whenever anything the table shows changes: the editor's key (see the module doc)."""
    parts = [(s.id, s.pinned, s.name, s.note, s.id in shown, s.id in doomed) for s in runs]
    return hashlib.sha1(repr((parts, group)).encode()).hexdigest()[:12]


def _on_edit(key: str, ids: list[int]) -> None:
    """Apply the editor's changes: rows are positions in the table as drawn, ids[row] the run."""
    store: RunStore = state.store()
    edits = st.session_state.get(key, {}).get("edited_rows", {})
    shown, doomed = set(state.shown_ids()), set(st.session_state.get("hist_delete", set()))
    for row, change in edits.items():
        rid = ids[int(row)]
        if "show" in change:
            shown = shown | {rid} if change["show"] else shown - {rid}
        if "pin" in change:
            store.pin(rid, bool(change["pin"]))
        if "name" in change or "note" in change:
            store.rename(rid, _text(change.get("name")), _text(change.get("note")))
        if "delete" in change:
            doomed = doomed | {rid} if change["delete"] else doomed - {rid}
    st.session_state.hist_delete = doomed
    state.show_runs([i for i in store.ids() if i in shown], redraw=False)


def _text(v) -> str | None:
    """A name or note as stored: one line, at most 200 characters, without the characters that markdown
    (status lines quote names in backticks) or plotly's label HTML would read as markup."""
    if v is None:
        return None
    return re.sub(r"[<>&`\x00-\x1f]", "", str(v)).strip()[:200]


def _delete() -> None:
    doomed = st.session_state.get("hist_delete", set())
    n = state.store().delete(doomed)
    st.session_state.hist_delete = set()
    state.show_runs(state.shown_ids())
    st.session_state.notices.append(("success", f"Deleted {n} run{'s' * (n != 1)} from this browser's history."))


def _import() -> None:
    """Store the runs of a results JSON (`python -m clipviz run --out results.json`) as one imported job."""
    f = st.session_state.get("hist_import")
    if f is None:
        return
    caps = Caps.from_env()
    try:
        if f.size > caps.max_upload_mb * 2**20:
            raise ConfigError(f"the file is {f.size / 2**20:.1f} MB, over the cap max_upload_mb={caps.max_upload_mb}")
        results = loads(f.getvalue())
        if not any(r.records for r in results):
            raise ConfigError("it holds no run with a trained epoch")
    except ConfigError as exc:
        st.session_state.notices.append(("error", md_escape(f"Could not import {f.name}: {exc}")))
        return
    ids, evicted = state.store().add(results, "imported", preset="")
    state.show_runs(ids)
    msg = md_escape(f"Imported {len(ids)} run{'s' * (len(ids) != 1)} from {f.name}; they are on the charts.")
    if evicted:
        msg += f" History full: removed the {len(evicted)} oldest unpinned."
    st.session_state.notices.append(("success", msg))


def _groups(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per value of `by`: how many runs, how many diverged, median final and best validation loss."""
    g = df.assign(_div=df["diverged"].astype(str).str.len() > 0).groupby(df[by].astype(str), sort=True)
    return pd.DataFrame(
        {
            "runs": g.size(),
            "diverged": g["_div"].sum().astype(int),
            "median final val": g["final_val"].median(),
            "best val": g["best_val"].min(),
        }
    ).reset_index(names=by)


def render_history() -> None:
    """The whole History tab."""
    store: RunStore = state.store()
    runs = list(reversed(store.get()))  # newest first
    shown, doomed = set(state.shown_ids()), set(st.session_state.get("hist_delete", set())) & {s.id for s in runs}
    c = st.columns([1.2, 1, 1, 1.2, 1.6])
    c[0].button("Show the latest job", key="show_latest", on_click=lambda: state.show_runs(store.latest_job_ids()))
    c[1].button("Show pinned", key="show_pinned", on_click=lambda: state.show_runs(state.pinned_ids()))
    c[2].button("Show all", key="show_all", on_click=lambda: state.show_runs(store.ids()))
    c[3].button("Remove unpinned runs", key="clear_history", on_click=state.remove_unpinned, disabled=not runs)
    c[4].button(f"Delete ticked runs ({len(doomed)})", key="delete_ticked", on_click=_delete, disabled=not doomed,
                type="primary" if doomed else "secondary")  # fmt: skip
    if not runs:
        st.info("No runs stored yet. Train in the Compare tab, or import a results JSON below.")
    else:
        group = st.selectbox("Group by", ["(none)", *GROUPS], key="hist_group")
        df = _frame(runs, shown, doomed)
        ids = [s.id for s in runs]
        if group != "(none)":  # rows of a group together, newest first inside each
            order = df[group].astype(str).reset_index(drop=True).sort_values(kind="stable").index
            df, ids = df.iloc[order].reset_index(drop=True), [ids[i] for i in order]
            df.insert(0, group, df.pop(group))
        colours = [charts.strategy_color(store_run.result) for store_run in (runs[i] for i in _positions(runs, ids))]
        diff = charts.differing_columns(df)
        styler = df.style.apply(lambda _: [f"color: {c}; font-size: 1.2em" for c in colours], subset=["colour"])
        if diff:
            styler = styler.map(lambda _: "background-color: #fff3cd", subset=diff)
        key = f"hist_{_digest(runs, shown, doomed, group)}"
        num = st.column_config.NumberColumn(format="%.4g")
        st.data_editor(
            styler,
            key=key,
            hide_index=True,
            disabled=[col for col in df.columns if col not in EDITABLE],
            column_config={
                # fixed small widths: the browser tests find a row's boxes at known offsets in the canvas
                "show": st.column_config.CheckboxColumn(
                    "show", width=SMALL, help="on the Compare charts and in Export"
                ),
                "pin": st.column_config.CheckboxColumn(
                    "pin", width=SMALL, help="pinned runs stay on the charts and are kept"
                ),
                "colour": st.column_config.TextColumn("", width=32),
                "name": st.column_config.TextColumn("name", help="your name for the run (legends use it)"),
                "note": st.column_config.TextColumn("note"),
                "delete": st.column_config.CheckboxColumn("delete", help="tick, then 'Delete ticked runs'"),
                **{c: num for c in ("final_train", "final_val", "best_train", "best_val", "lr", "threshold")},
            },
            on_change=_on_edit,
            args=(key, ids),
        )
        st.caption(
            f"{len(runs)} runs kept in this browser's history, {sum(r.pinned for r in runs)} pinned "
            f"(at most {store.cap}; the oldest unpinned go first; "
            f"unpinned runs older than {Caps.from_env().history_ttl_days} days expire). "
            + ("Highlighted: the settings that differ between runs." if diff else "")
        )
        if group != "(none)":
            st.markdown(f"**By {group}**")
            st.dataframe(_groups(df, group), hide_index=True, key="hist_groups",
                         column_config={c: num for c in ("median final val", "best val")})  # fmt: skip
    st.file_uploader("Import a results JSON written by the CLI (python -m clipviz run --out results.json)",
                     type=["json"], key="hist_import", on_change=_import)  # fmt: skip


def _positions(runs: list[StoredRun], ids: list[int]) -> list[int]:
    where = {s.id: i for i, s in enumerate(runs)}
    return [where[i] for i in ids]
