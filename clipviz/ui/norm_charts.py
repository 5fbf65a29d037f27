"""Gradient-norm charts: the per-epoch distribution (a heatmap per run) and one epoch's histogram (runs overlaid).

Both count on records.norm_bins: quarter-decade rows, and for a global-norm run a row of its own for norms equal to
its threshold c, so the clipped steps sit on one bar labelled '= c' instead of straddling a bin edge. Pure: no
widgets, no streamlit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ..records import NormBins, RunResult, norm_bins
from .charts import (
    _SMALL,
    _diverged_text,
    _epoch_axis,
    _line,
    _marks,
    _note,
    _style,
    _subplots,
    _x_title,
    empty_figure,
    run_colors,
)

_MARGIN = 0.25  # decades of empty rows shown around the used ones
_DEFAULT_SPAN = (-1.0, 1.25)  # log10 range shown when no run has a finite norm yet


def clip_line(res: RunResult) -> float | None:
    """The norm threshold to draw for a run: norm and tensor-norm clip at a fixed norm c (the others at none, at a
    ratio or at a moving percentile)."""
    c = res.spec.clip.threshold
    ok = res.spec.clip.strategy in ("norm", "tensor-norm") and c is not None and math.isfinite(c) and c > 0
    return float(c) if ok else None


def bins_for(res: RunResult) -> NormBins:
    """The run's norm rows: a row of its own at c for global-norm clipping, the one rule whose clipped global norm
    is exactly c (per-tensor clipping bounds each tensor, not the global norm)."""
    return norm_bins(clip_line(res) if res.spec.clip.strategy == "norm" else None)


def _span(used: Sequence[tuple[NormBins, np.ndarray]], also: Sequence[float] = ()) -> tuple[float, float]:
    """The log10 range of the rows with counts in any run (or holding a value of also), a margin either side."""
    lo, hi = math.inf, -math.inf
    for bins, cnt in used:
        rows = np.flatnonzero(cnt[: len(bins.labels)])
        if rows.size:
            lo, hi = min(lo, bins.display[rows[0]]), max(hi, bins.display[rows[-1] + 1])
    for v in also:
        lo, hi = min(lo, math.log10(v)), max(hi, math.log10(v))
    if not math.isfinite(lo):
        return _DEFAULT_SPAN
    full = norm_bins().display
    return max(full[0], lo - _MARGIN), min(full[-1], hi + _MARGIN)


def _rows_in(bins: NormBins, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the rows overlapping [lo, hi], their boundaries clipped to it): [n], [n + 1]."""
    d = bins.display
    idx = np.flatnonzero((d[1:] > lo) & (d[:-1] < hi))
    return idx, np.clip(np.append(d[idx], d[idx[-1] + 1]), lo, hi)


def _norm_figure(results: Sequence[RunResult], post: bool, thresholds, height: int, title: str) -> go.Figure:
    bins = [bins_for(res) for res in results]
    grids = [np.array([b.counts(r.grad_norm_post if post else r.grad_norm_pre) for r in res.records]).T
             for res, b in zip(results, bins, strict=True)]  # fmt: skip  # each [rows + 1, epochs]
    lines = [clip_line(res) if t is None else t for res, t in zip(results, thresholds, strict=True)]
    lines = [t if t is not None and math.isfinite(t) and t > 0 else None for t in lines]
    lo, hi = _span([(b, g.sum(axis=1)) for b, g in zip(bins, grids, strict=True) if g.size], [t for t in lines if t])
    y_nf = hi + 0.375  # the non-finite row, after an empty one
    zmax = max((g.max() for g in grids if g.size), default=1.0)
    # a run that diverged early gets a narrow panel, not a whole one for a one-epoch sliver
    done = [max((r.epoch for r in res.records), default=0) for res in results]
    widths = [max(0.35, n / max(max(done), 1)) for n in done]
    fig, _, cols = _subplots(results, len(results), shared_yaxes=True, shared_xaxes=False, horizontal_spacing=0.025,
                             column_widths=widths)  # fmt: skip
    for j, (res, g, b, thr) in enumerate(zip(results, grids, bins, lines, strict=True), start=1):
        if not g.size:
            _note(fig, j, "no epochs yet", row=1, col=j)
            continue
        epochs = [r.epoch for r in res.records]
        fig.update_xaxes(range=[0.5, max(epochs) + 0.5], row=1, col=j)  # equal epochs per pixel in every panel
        idx, y_edges = _rows_in(b, lo, hi)
        z = np.vstack([g[idx], np.zeros((1, g.shape[1])), g[-1:]])  # the shown rows, an empty one, non-finite
        labels = [b.labels[i] for i in idx] + ["", "non-finite ‖g‖"]
        # numpy, not nested lists: plotly ships it as one binary array (no per-cell validation; at epoch 100 of
        # the tutorial 607 -> 143 KiB sent every poll); NaN = empty cell, drawn blank. The hover takes epoch and
        # count from the cell and only the bin's name from text, which only cells with counts carry.
        zz = np.where(z > 0, z, np.nan)
        text = np.where(z > 0, np.array(labels, dtype=object)[:, None], "")
        ys = [*y_edges, hi + 0.25, hi + 0.5]  # one more than rows: plotly reads them as the cells' edges
        hm = go.Heatmap(x=np.array(epochs), y=np.array(ys), z=zz, text=text, hoverongaps=False, coloraxis="coloraxis",
                        name=res.label, hovertemplate="epoch %{x}<br>%{text}<br>%{z} steps<extra></extra>")  # fmt: skip
        fig.add_trace(hm, row=1, col=j)
        nf = [(e, int(n)) for e, n in zip(epochs, g[-1], strict=True) if n > 0]
        if nf:
            hover = [f"{res.label}<br>epoch {e}: {n} non-finite ‖g‖ {_diverged_text(res)}" for e, n in nf]
            mark = _marks([e for e, _ in nf], [y_nf] * len(nf), hover, [str(n) for _, n in nf], group=res.label)
            fig.add_trace(mark, row=1, col=j)
        if thr:
            per = " per tensor" if res.spec.clip.strategy == "tensor-norm" else ""
            # post-clip norms sit exactly on the threshold: a thin, half-transparent line does not hide them
            line = dict(color="black", dash="dot" if post else "dash", width=1.5 if post else 3)
            # below the cells: where the clipped steps sit on the '= c' row they stay visible
            fig.add_hline(y=math.log10(thr), line=line, opacity=0.6 if post else 1.0, row=1, col=j, layer="below",
                          annotation_text=f"clip at {thr:g}{per}")  # fmt: skip
    eq = sorted({b.threshold for b in bins if b.at_c is not None and lo <= math.log10(b.threshold) <= hi})
    ticks = [k for k in range(-4, 9) if lo <= k <= hi and all(abs(k - math.log10(c)) > 0.3 for c in eq)]
    vals = ticks + [math.log10(c) for c in eq] + [y_nf]
    text = [f"1e{k}" if k else "1" for k in ticks] + [f"= {c:g}" for c in eq] + ["non-finite"]
    fig.update_yaxes(tickvals=vals, ticktext=text, range=[lo, hi + 0.5])
    fig.update_yaxes(title=f"{'post' if post else 'pre'}-clip ‖g‖ (log)", row=1, col=1)
    fig.update_xaxes(_epoch_axis(results, max(3, 8 // cols), fixed=False) | {"title": None})  # cells set the range
    _x_title(fig, "epoch", 1, cols)
    colorbar = dict(title="steps", thickness=14, tickfont=dict(size=_SMALL))
    fig.update_layout(coloraxis=dict(colorscale="Viridis", cmin=0, cmax=zmax, colorbar=colorbar))
    return _style(fig, title, height, f"norms:{post}")


def norm_distribution(
    result: RunResult, post: bool = False, threshold: float | None = None, height: int = 480
) -> go.Figure:
    """One run's gradient norm per step, as a heatmap of epoch x log10 ‖g‖ (TensorBoard's distributions)."""
    when = "post" if post else "pre"
    return _norm_figure([result], post, [threshold], height, f"Gradient norms, {when}-clip: {result.label}")


def norm_distribution_grid(results: Sequence[RunResult], post: bool = False, height: int = 480) -> go.Figure:
    """norm_distribution for every run, one column each, on the same axes."""
    if not results:
        return empty_figure("no runs yet", height)
    title = f"Gradient norms per step, {'post' if post else 'pre'}-clip"
    return _norm_figure(results, post, [None] * len(results), height, title)


# ---- one epoch's norm histogram, runs overlaid ----------------------------------------------------------
def epoch_histogram(results: Sequence[RunResult], epoch: int, post: bool = False, height: int = 480) -> go.Figure:
    """One epoch's gradient-norm histogram, every run overlaid as a step line on log bins; each norm threshold is a
    dashed line inside the x range, and a global-norm run's clipped steps are one bar labelled '= c'."""
    if not results:
        return empty_figure("no runs yet", height)
    found = [next((r for r in res.records if r.epoch == epoch), None) for res in results]
    bins = [bins_for(res) for res in results]
    rows = [b.counts(r.grad_norm_post if post else r.grad_norm_pre) if r else np.zeros(len(b.labels) + 1)
            for b, r in zip(bins, found, strict=True)]  # fmt: skip
    lines = {c: res for res in results if (c := clip_line(res))}
    lo, hi = _span(list(zip(bins, rows, strict=True)), list(lines))
    x_bad = 10 ** (hi + 0.5)
    fig = go.Figure()
    for res, c, rec, b, cnt in zip(results, run_colors(results), found, bins, rows, strict=True):
        if rec is None:  # a short legend entry that says why this run is missing; the note above has the detail
            why = f"diverged ep {res.diverged[0]}" if res.diverged else f"no epoch {epoch}"
            fig.add_trace(_line([None], [math.nan], f"{res.label} ({why})", c, "", mode="lines"))
            continue
        idx, edges = _rows_in(b, lo, hi)
        labels = [b.labels[i] for i in idx]
        hover = f"{res.label}<br>%{{customdata}}: %{{y}} steps"
        y = [*cnt[idx], cnt[idx[-1]]]
        fig.add_trace(_line(10**edges, y, res.label, c, hover, mode="lines", shape="hv",
                            customdata=labels + labels[-1:]))  # fmt: skip
        if b.at_c is not None and cnt[b.at_c] > 0:  # the clipped steps: one bar, labelled
            fig.add_annotation(x=math.log10(b.threshold), y=float(cnt[b.at_c]), text=f"= {b.threshold:g}",
                               showarrow=False, xanchor="left", yanchor="bottom", xshift=4, font=dict(color=c))  # fmt: skip
        if cnt[-1] > 0:
            n = int(cnt[-1])
            hover = f"{res.label}<br>epoch {epoch}: {n} non-finite ‖g‖ {_diverged_text(res)}"
            fig.add_trace(_marks([x_bad], [n], [hover], [f"{n} non-finite"], group=res.label, pos="middle left"))
    for c, res in lines.items():  # shapes take data values on a log axis (annotations and ranges take log10)
        per = " per tensor" if res.spec.clip.strategy == "tensor-norm" else ""
        # post-clip steps sit exactly on the threshold: a thin, half-transparent line does not hide them
        line = dict(color="black", dash="dot" if post else "dash", width=1.5 if post else 2)
        fig.add_vline(x=c, line=line, opacity=0.6 if post else 1.0, annotation_text=f"clip at {c:g}{per}",
                      annotation_position="top right")  # fmt: skip
    missing = [res for res, rec in zip(results, found, strict=True) if rec is None]
    if missing:
        why = "<br>".join(f"{r.label}: {_diverged_text(r) or 'not trained that far'}" for r in missing)
        fig.add_annotation(text=f"no record for epoch {epoch}: {', '.join(r.label for r in missing)}", x=0, y=1.02,
                           xref="paper", yref="paper", xanchor="left", yanchor="bottom", showarrow=False,
                           hovertext=why)  # fmt: skip
    # the range in log10 (plotly's log-axis convention): every used row, every threshold, the non-finite marker
    right = hi + 0.75 if any(cnt[-1] > 0 for cnt in rows) else hi
    fig.update_xaxes(type="log", title=f"{'post' if post else 'pre'}-clip global ‖g‖ (log bins)", exponentformat="e",
                     range=[lo, right])  # fmt: skip
    fig.update_yaxes(title="steps", rangemode="tozero")
    return _style(fig, f"Gradient norms in epoch {epoch}", height, f"epoch_hist:{post}")
