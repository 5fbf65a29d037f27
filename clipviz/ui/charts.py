"""Charts: records -> plotly figures. Pure functions: no widgets, no training, no streamlit.

NaN and +-inf are the subject of this tool, so they are drawn, never dropped: a red x at the top edge of
the plot (-inf at the bottom) whose hover gives the exact value; values a log axis cannot show (zero,
negative) get a red triangle at the bottom edge. Every strategy keeps one hue in every chart.
"""

from __future__ import annotations

import colorsys
import math
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from .. import strategies
from ..config import ClipSpec, RunSpec
from ..records import VALUE_EDGES, RunResult

STRATEGY_COLORS = {n: strategies.colour(n) for n in strategies.NAMES}  # the registry's hues (Okabe-Ito)
NONFINITE_COLOR = "#d55e00"
_OTHER = strategies.OTHER_COLOUR  # a label whose strategy we cannot tell
_FONT = 16
_SMALL = 12  # tick labels of small multiples, ~150 px wide panels at half a projector's width
SETTING_COLUMNS = ["strategy", "threshold", "optimizer", "lr", "momentum", "batch", "epochs", "seed", "dataset"]
SETTING_COLUMNS += ["n_samples", "noise", "scale_x", "scale_y", "model", "width", "depth", "activation", "init"]
SETTING_COLUMNS += ["init_scale"]


# ---- colours ----------------------------------------------------------------------------------------
def _strategy(obj: Any) -> str:
    obj = obj.spec if isinstance(obj, RunResult) else obj
    obj = obj.clip if isinstance(obj, RunSpec) else obj
    if isinstance(obj, ClipSpec):
        return obj.strategy
    words = str(obj).strip().lower().split()
    return words[0].partition(":")[0] if words else ""


def strategy_color(spec_or_label: RunResult | RunSpec | ClipSpec | str) -> str:
    """The one hue of a strategy, from a result, spec, clip spec, strategy name or label such as 'value:5'."""
    return STRATEGY_COLORS.get(_strategy(spec_or_label), _OTHER)


def _shade(hex_color: str, rank: int, n: int) -> str:
    """Same hue, lightness spread over n variants (rank 0 darkest)."""
    if n <= 1:
        return hex_color
    h, light, s = colorsys.rgb_to_hls(*(int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)))
    light = min(0.78, max(0.18, light + (rank / (n - 1) - 0.5) * min(0.45, 0.15 * (n - 1))))
    return "#" + "".join(f"{round(c * 255):02x}" for c in colorsys.hls_to_rgb(h, light, s))


def run_colors(results: Sequence[RunResult]) -> list[str]:
    """One colour per run: its strategy's hue, darker to lighter by threshold, lr and seed within the strategy."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, res in enumerate(results):
        groups[res.spec.clip.strategy].append(i)
    out = [""] * len(results)
    for strat, idx in groups.items():
        sp = {i: results[i].spec for i in idx}
        ranked = sorted(idx, key=lambda i: (sp[i].clip.threshold or 0.0, sp[i].optim.lr, sp[i].seed, i))
        for rank, i in enumerate(ranked):
            out[i] = _shade(strategy_color(strat), rank, len(idx))
    return out


def _rgba(hex_color: str, alpha: float) -> str:
    return "rgba({},{},{},{})".format(*(int(hex_color[i : i + 2], 16) for i in (1, 3, 5)), alpha)


# ---- non-finite values and shared trace builders ------------------------------------------------------
def _fmt(v: float) -> str:
    return f"{v:.6g}" if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))


def _ok(v: float, log: bool) -> bool:
    return math.isfinite(v) and (v > 0 or not log)


def _diverged_text(res: RunResult) -> str:
    return f"diverged at epoch {res.diverged[0]}, step {res.diverged[1]}" if res.diverged else ""


def _edges(values: Sequence[float], log: bool) -> tuple[float, float, float]:
    """(top, bottom, pad): marker rows just outside the plottable values; pad multiplies (log) or adds."""
    ok = [v for v in values if _ok(v, log)]
    if not ok:
        return (10.0, 0.1, 3.0) if log else (1.0, 0.0, 0.1)
    hi, lo = max(ok), min(ok)
    if log:
        pad = max(hi / lo, 10.0) ** 0.08
        return hi * pad, lo / pad, pad
    pad = 0.08 * (hi - lo) or 0.1 * abs(hi) or 0.1
    return hi + pad, lo - pad, pad


def _line(xs, ys, name: str, color: str, hover: str, log: bool = False, dash: str = "solid", **kw) -> go.Scatter:
    """A run's line; values the axis cannot show become gaps (their markers come from _bad_points)."""
    y = [v if _ok(v, log) else None for v in ys]
    kw.setdefault("legendgroup", name)
    kw.setdefault("mode", "lines+markers")
    line = dict(color=color, width=kw.pop("width", 3), dash=dash, shape=kw.pop("shape", "linear"))
    return go.Scatter(x=list(xs), y=y, name=name, line=line, hovertemplate=hover + "<extra></extra>", **kw)


def _marks(xs, ys, hover, text=None, symbol: Any = "x", group: str = "", pos: str = "middle right") -> go.Scatter:
    """Red markers for non-finite, diverged or off-axis values; the hover says what and where."""
    marker = dict(symbol=symbol, size=16, color=NONFINITE_COLOR, line=dict(width=1, color="white"))
    mode = "markers+text" if text else "markers"
    return go.Scatter(x=xs, y=ys, mode=mode, text=text, textposition=pos, marker=marker, hovertext=hover, name=group,
                      hoverinfo="text", legendgroup=group, showlegend=False, cliponaxis=False,
                      textfont=dict(color=NONFINITE_COLOR, size=_FONT))  # fmt: skip


def _in_colour(mark: go.Scatter, color: str | None) -> go.Scatter:
    """A marker in its run's colour, outlined in black (a grey 'none' still reads as a marker); red if None."""
    if color:
        mark.marker.color, mark.marker.line = color, dict(width=1.5, color="black")
        mark.textfont.color = color
    return mark


def _bad_points(
    xs, ys, log: bool, top: float, bottom: float, res: RunResult, what: str, group: str = "", color: str | None = None
):
    """Markers at the plot's edge for the values an axis cannot show (in the run's colour when given: a class
    reads a red-orange x as the value run's), or None when there are none."""
    bad = [(x, v) for x, v in zip(xs, ys, strict=True) if not _ok(v, log)]
    if not bad:
        return None
    note = f" ({_diverged_text(res)})" if res.diverged else ""
    low = [v == -math.inf or math.isfinite(v) for _, v in bad]  # -inf, and 0/negative on a log axis
    why = [" (not shown on a log axis)" if math.isfinite(v) else note for _, v in bad]
    hover = [f"{res.label}<br>epoch {x}: {what} = {_fmt(v)}{w}" for (x, v), w in zip(bad, why, strict=True)]
    sym = ["x" if not math.isfinite(v) else "triangle-down" for _, v in bad]
    return _in_colour(_marks([x for x, _ in bad], [bottom if lw else top for lw in low], hover, symbol=sym, group=group),
                      color)  # fmt: skip


def _div_marker(
    res: RunResult, y: float, group: str, text: str = "", pos: str = "middle right", color: str | None = None
) -> go.Scatter:
    """An x at the epoch the run diverged, at height y, optionally labelled; in the run's colour when given
    (red otherwise), outlined in black so a grey 'none' still reads as a marker."""
    mark = _marks([res.diverged[0]], [y], [f"{res.label}: {_diverged_text(res)}"], [text] if text else None,
                  group=group, pos=pos)  # fmt: skip
    return _in_colour(mark, color)


# one line under each chart: what you are looking at, for a class that has not read the docs
CAPTIONS = {
    "loss": "Loss per epoch, one colour per strategy: solid = training, dashed = validation; ✕ = the run diverged "
    "(its loss became inf or NaN) there.",
    "seeds": "Median over the seeds (line) and the middle half of them (band, IQR); ✕ = a seed diverged. One seed can "
    "mislead: this is the spread.",
    "Norms": "Each column is an epoch, each row a range of gradient norms ‖g‖; colour = how many steps fell there. "
    "Dashed: the clip threshold. Top row: steps whose norm was inf or NaN.",
    "One epoch": "How many steps of one epoch had each gradient norm, all runs overlaid (log bins).",
    "Layers": "Mean gradient norm of each weight and bias tensor per epoch, before clipping (dotted: biases).",
    "Clip rate": "How often the clip changed the gradient: share of steps (top) and, for value clipping, of elements.",
    "Values": "Every gradient element's value, before clipping (grey outline) and after (bars); value clipping piles "
    "the clipped ones up at ±c (dark bar).",
}


# ---- layout -----------------------------------------------------------------------------------------
# a horizontal legend at the bottom of the figure (below the x-axis title: plotly grows the margin to fit it),
# so a chart at half a projector's width (~450 px) keeps its full width for the plot
LEGEND_BOTTOM = dict(orientation="h", x=0, xanchor="left", y=0, yref="container", yanchor="bottom")


def _style(fig: go.Figure, title: str, height: int, uirevision: str) -> go.Figure:
    """Projector-readable: large fonts, short title, legend below the plot, zoom kept across live updates."""
    fig.update_layout(
        template="plotly_white",
        title=dict(text=title, font=dict(size=_FONT + 4)),
        height=height,
        font=dict(size=_FONT),
        hoverlabel=dict(font=dict(size=_FONT)),
        legend=dict(font=dict(size=_FONT - 2), itemwidth=30, **LEGEND_BOTTOM),  # 30: the narrowest symbol plotly allows
        margin=dict(l=80, r=30, t=120 if fig.layout.annotations else 90, b=10),
        uirevision=uirevision,
    )
    return fig


def _subtitle(fig: go.Figure, text: str) -> None:
    """A line under the title in the non-finite colour (e.g. which runs have no panel, and why), the top margin
    grown to fit it over two-line panel titles."""
    fig.update_layout(title_subtitle=dict(text=text, font=dict(size=_FONT, color=NONFINITE_COLOR)))
    fig.update_layout(margin_t=(fig.layout.margin.t or 90) + 30, height=(fig.layout.height or 450) + 30)


def empty_figure(message: str, height: int = 400) -> go.Figure:
    """A blank figure with a centred message (before any run exists), wrapped to fit a half-width column
    (plotly does not wrap annotations: one long line was clipped at both ends)."""
    fig = go.Figure()
    font = dict(size=_FONT + 6, color="#555555")
    text = "<br>".join(textwrap.wrap(message, 26)) or message
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=font)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _style(fig, "", height, "empty")


def _subplots(results: Sequence[RunResult], max_cols: int, **kw) -> tuple[go.Figure, int, int]:
    """Small multiples, one panel per run, titles in the run's colour (with its divergence), small tick labels."""
    cols = max(1, min(len(results), max_cols))
    rows = -(-len(results) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[r.label for r in results], **kw)
    for ann, res, c in zip(fig.layout.annotations, results, run_colors(results), strict=True):
        ann.text = res.label + (f"<br>✕ ep {res.diverged[0]}" if res.diverged else "")  # short: panels can be narrow
        ann.font = dict(color=c, size=_FONT)
    fig.update_xaxes(tickfont=dict(size=_SMALL))
    fig.update_yaxes(tickfont=dict(size=_SMALL))
    return fig, rows, cols


def _x_title(fig: go.Figure, text: str, rows: int, cols: int) -> None:
    """One x-axis title under the middle panel of the bottom row (one per panel would overlap at half width)."""
    fig.update_xaxes(title=text, row=rows, col=(cols + 1) // 2)


def _note(fig: go.Figure, k: int, text: str, color: str = "#555555", **at) -> None:
    """A message in the middle of panel k (1-based, at its row and col), e.g. 'no epochs yet'."""
    # a panel without traces has no drawn axes: the note would land elsewhere, and a shared y-axis would lose its ticks
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", showlegend=False, hoverinfo="skip"), **at)
    ref = "" if k == 1 else str(k)
    fig.add_annotation(text=text, x=0.5, y=0.5, xref=f"x{ref} domain", yref=f"y{ref} domain", showarrow=False,
                       font=dict(color=color, size=_SMALL))  # fmt: skip


def _epoch_axis(results: Sequence[RunResult], max_ticks: int = 8, fixed: bool = True) -> dict[str, Any]:
    """Whole-number epoch ticks, at most max_ticks; fixed: the range starts at 0 (or just before epoch 1)."""
    last = max((r.epoch for res in results for r in res.records), default=1)
    dtick = next((d for d in (1, 2, 5, 10, 20, 50, 100, 200, 500) if d >= last / max_ticks), 1000)
    axis = dict(title="epoch", dtick=dtick, tick0=0)
    if fixed:  # autorange would stretch to fit a 'diverged' label's text (the axis started at -10)
        pad = max(0.25, 0.03 * last)  # room for a marker at either end
        axis["range"] = [0 if last > 5 else 1 - pad, last + pad]
    return axis


def _no_records(results: Sequence[RunResult]) -> bool:
    return not any(r.records for r in results)


# ---- (a) loss curves --------------------------------------------------------------------------------
def _smooth(ys: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased; non-finite values pass through."""
    out, last, n = [], 0.0, 0
    for v in ys:
        if not math.isfinite(v) or weight <= 0:
            out.append(v)
            continue
        last, n = weight * last + (1 - weight) * v, n + 1
        out.append(last / (1 - weight**n))
    return out


def loss_curves(
    results: Sequence[RunResult],
    which: Sequence[str] = ("train", "val"),
    log_y: bool = True,
    height: int = 480,
    x: str = "epoch",
    smoothing: float = 0.0,
) -> go.Figure:
    """Train (solid) and validation (dashed) loss, all runs overlaid; divergences marked in the run's colour.

    x: 'epoch' or 'step' (epoch x steps per epoch, the optimizer steps taken by its end); smoothing in [0, 1): an
    exponential moving average as in TensorBoard (the raw values stay in the hover)."""
    if _no_records(results):
        return empty_figure("no epochs yet: start a run to see its loss curves", height)
    steps = {id(res): len(res.records[0].grad_norm_pre) or 1 for res in results if res.records}
    scale = (lambda res: steps.get(id(res), 1)) if x == "step" else (lambda res: 1)
    series = [
        (
            res,
            c,
            kind,
            [r.epoch * scale(res) for r in res.records],
            [float(getattr(r, f"{kind}_loss")) for r in res.records],
        )
        for res, c in zip(results, run_colors(results), strict=True)
        for kind in which
    ]
    top, bottom, pad = _edges([v for *_, ys in series for v in ys], log_y)
    fig = go.Figure()
    many = max(len(xs) for *_, xs, _ in series) > 15  # markers on every point hide the dashes
    for res, c, kind, xs, ys in series:
        hover = f"{res.label}<br>{x} %{{x}}<br>{kind} loss = %{{customdata:.6g}}" + (" (raw)" if smoothing else "")
        dash = {"train": "solid", "val": "dash"}.get(kind, "dot")
        first = kind == which[0]  # one legend entry per run (the style entries below say which line is which)
        name = res.label if first else f"{res.label} {kind}"
        fig.add_trace(_line(xs, _smooth(ys, smoothing), name, c, hover, log_y, dash, legendgroup=res.label,
                            showlegend=first, customdata=ys, mode="lines" if many else "lines+markers"))  # fmt: skip
        bad = _bad_points(xs, ys, log_y, top, bottom, res, f"{kind} loss", res.label, color=c)
        if bad:
            fig.add_trace(bad)
    for kind in which if len(which) > 1 else ():  # legend entries for the line styles, in black
        dash = {"train": "solid", "val": "dash"}.get(kind, "dot")
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"{kind} loss", legendgroup=f"_{kind}",
                                 line=dict(color="black", width=2, dash=dash), hoverinfo="skip"))  # fmt: skip
    last = max(xs[-1] for *_, xs, _ in series if xs)
    colors = dict(zip((id(r) for r in results), run_colors(results), strict=True))
    # one label per strategy, not per run: 5 seeds x 3 strategies would stack 15 labels (the hover keeps each run)
    by_clip: dict[str, list[RunResult]] = defaultdict(list)
    for res in results:
        by_clip[res.spec.clip.label].append(res)
    for i, (clip, runs) in enumerate((k, v) for k, v in by_clip.items() if any(r.diverged for r in v)):
        y = top * pad**i if log_y else top + pad * i  # stagger the labels of strategies that diverge together
        div = sorted((r for r in runs if r.diverged), key=lambda r: r.diverged)
        at = [r.diverged[0] * scale(r) for r in div]
        if len(runs) == 1:
            text = f"{div[0].label} {_diverged_text(div[0])}"
        else:
            first, final = div[0].diverged[0], div[-1].diverged[0]
            when = f"epoch {first}" if first == final else f"epochs {first}–{final}"
            text = f"{clip}: {len(div)}/{len(runs)} diverged, {when}"
        pos = "middle right" if at[0] <= (last + 1) / 2 else "middle left"
        mark = _div_marker(div[0], y, div[0].label, text, pos, colors[id(div[0])])
        mark.x, mark.y = at, [y] * len(div)
        mark.text = [text] + [""] * (len(div) - 1)
        mark.hovertext = [f"{r.label}: {_diverged_text(r)}" for r in div]
        if len(div) > 1:  # each seed's x in its own shade
            mark.marker.color = [colors[id(r)] for r in div]
        fig.add_trace(mark)
    if x == "step":
        fig.update_xaxes(title="optimizer step", rangemode="tozero")
    else:
        fig.update_xaxes(**_epoch_axis(results))
    fig.update_yaxes(title="loss (log scale)" if log_y else "loss", type="log" if log_y else "linear")
    if log_y and top / bottom >= 10:  # powers of ten only: no '2 5 2 5' minor labels
        fig.update_yaxes(dtick=1, exponentformat="power" if top / bottom > 1e6 else "none")
    title = "Loss: train solid, val dashed" if set(which) == {"train", "val"} else f"Loss: {', '.join(which)}"
    title += f", smoothed {smoothing:g}" if smoothing else ""
    return _style(fig, title, height, f"loss:{log_y}:{x}")


# ---- (d) per-layer norms ----------------------------------------------------------------------------
def layer_norms(results: Sequence[RunResult], height: int | None = None, post: bool = False) -> go.Figure:
    """Mean pre-clip gradient norm of each parameter tensor per epoch: one panel per run, colour by depth.

    The records hold per-layer norms before clipping only, so post=True says so in the title instead of silently
    showing the same picture. The y range fits the runs that did not diverge: a diverged run's norms beyond it
    (1e36 and the like) are triangles at the edge whose hover gives the value, and non-finite ones are x marks."""
    if _no_records(results):
        return empty_figure("no epochs yet", height or 400)
    names = list(dict.fromkeys(n for res in results for r in res.records for n in r.layer_norms))
    layers = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))
    palette = sample_colorscale("Viridis", [0.85 * i / max(1, len(layers) - 1) for i in range(len(layers))])

    def values(runs):
        return [float(v) for res in runs for r in res.records for v in r.layer_norms.values()]

    calm = [res for res in results if not res.diverged]
    scale = [v for v in values(calm) if _ok(v, True)] or values(results)
    top, bottom, pad = _edges(scale, True)
    off_scale = False
    fig, n_rows, n_cols = _subplots(results, 3, shared_xaxes="all", shared_yaxes="all", horizontal_spacing=0.04)
    for k, res in enumerate(results):
        at = dict(row=k // n_cols + 1, col=k % n_cols + 1)
        xs = [r.epoch for r in res.records]
        for name in names:
            ys = [float(r.layer_norms.get(name, math.nan)) for r in res.records]
            color, dash = palette[layers.index(name.rsplit(".", 1)[0])], "dot" if name.endswith("bias") else "solid"
            hover = f"{res.label}<br>{name}<br>epoch %{{x}}: ‖g‖ = %{{y:.6g}}"
            shown = [v if bottom <= v <= top else math.nan for v in ys]  # NaN: a gap in the line
            fig.add_trace(_line(xs, shown, name, color, hover, True, dash, showlegend=k == 0), **at)
            bad = _bad_points(xs, ys, True, top, bottom, res, f"‖g[{name}]‖", name)
            if bad:
                fig.add_trace(bad, **at)
            out = [(x, v) for x, v in zip(xs, ys, strict=True) if _ok(v, True) and not bottom <= v <= top]
            if out:  # finite but beyond the range of the calm runs: a triangle at the edge, the value on hover
                off_scale = True
                why = f" ({_diverged_text(res)})" if res.diverged else ""
                hov = [f"{res.label}<br>epoch {x}: ‖g[{name}]‖ = {_fmt(v)}, off scale{why}" for x, v in out]
                sym = ["triangle-up" if v > top else "triangle-down" for _, v in out]
                fig.add_trace(_marks([x for x, _ in out], [top if v > top else bottom for _, v in out], hov,
                                     symbol=sym, group=name), **at)  # fmt: skip
    y_range = [math.log10(bottom / pad), math.log10(top * pad)]
    fig.update_yaxes(type="log", exponentformat="e", range=y_range)
    if y_range[1] - y_range[0] > 1.5:  # one label per decade: no 2s and 5s in small panels
        fig.update_yaxes(dtick=1)
    fig.update_yaxes(title="mean ‖g‖ per tensor", col=1)
    fig.update_xaxes(_epoch_axis(results, max(3, 8 // n_cols)) | {"title": None})
    _x_title(fig, "epoch", n_rows, n_cols)
    title = "Layer norms, pre-clip (post not recorded)" if post else "Gradient norm per layer"
    _style(fig, title, height or max(420, 320 * n_rows), f"layers:{post}")
    if off_scale:  # under the title (an annotation there overprinted the panel titles)
        _subtitle(fig, "▲ off scale: a diverged run's norms (hover for the value)")
    return fig


# ---- (e) clip rate ----------------------------------------------------------------------------------
def clip_rate(results: Sequence[RunResult], height: int | None = None) -> go.Figure:
    """Fraction of steps clipped per epoch (all runs), and fraction of gradient elements clipped (value clipping)."""
    if _no_records(results):
        return empty_figure("no epochs yet", height or 400)
    panels = [("clip_rate", "steps clipped", list(results))]
    value_runs = [r for r in results if r.spec.clip.strategy == "value"]
    if value_runs:
        panels.append(("elem_clip_frac", "gradient elements clipped (value clipping)", value_runs))
    titles = [p[1] for p in panels]
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.14, subplot_titles=titles)
    color = dict(zip((id(r) for r in results), run_colors(results), strict=True))
    for row, (field, what, runs) in enumerate(panels, start=1):
        for res in runs:
            xs, ys = [r.epoch for r in res.records], [float(getattr(r, field)) for r in res.records]
            hover = f"{res.label}<br>epoch %{{x}}: {what} = %{{y:.4%}}"
            fig.add_trace(_line(xs, ys, res.label, color[id(res)], hover, showlegend=row == 1), row=row, col=1)
            bad = _bad_points(xs, ys, False, 1.08, -0.04, res, what, res.label)
            if bad:
                fig.add_trace(bad, row=row, col=1)
    fig.update_yaxes(range=[-0.04, 1.12], tickformat=".0%", title="fraction")
    fig.update_xaxes(**_epoch_axis(results))
    if len(panels) > 1:  # shared x: the title once, under the bottom panel
        fig.update_xaxes(title=None, row=1)
    return _style(fig, "How often the clip acts", height or 300 + 200 * len(panels), "clip_rate")


# ---- (f) gradient element values --------------------------------------------------------------------
_V_MIN = float(np.abs(VALUE_EDGES[VALUE_EDGES != 0]).min())  # smallest nonzero |edge|: linear inside, log outside


def _symlog(v: Any) -> np.ndarray | float:
    """Symmetric log position: linear for |v| < m (the smallest nonzero edge, at ±1), sign * (log10(|v|/m) + 1) out.

    An array for an array, a plain float for a scalar (a 0-d array is neither to most callers)."""
    v = np.asarray(v, dtype=float)
    a = np.abs(v)
    out = np.array(v / _V_MIN)  # linear part (a copy, also for a scalar); NaN stays NaN
    big = a >= _V_MIN  # log10 only where it is defined and > 0, so no divide-by-zero or invalid-value warnings
    out[big] = np.sign(v[big]) * (np.log10(a[big] / _V_MIN) + 1)
    return out if out.ndim else float(out)


_VU = _symlog(VALUE_EDGES)
_V_LEFT = np.concatenate([[_VU[0] - 0.5], _VU])  # bins in position units: below, the VALUE_EDGES bins, above
_V_RIGHT = np.concatenate([_VU, [_VU[-1] + 0.5]])
_V_NAMES = [f"{a:.3g} to {b:.3g}" for a, b in zip(VALUE_EDGES[:-1], VALUE_EDGES[1:], strict=True)]
_V_NAMES = [f"≤ {VALUE_EDGES[0]:.3g} (incl. -inf)", *_V_NAMES, f"≥ {VALUE_EDGES[-1]:.3g} (incl. +inf)"]
_V_TICKS = [-100.0, 0.0, 100.0]  # real values, few enough for ~150 px panels; ±c gets its own labelled line
_PILE = "#222222"  # the pile-up at ±c: its own colour in every run's panel


def _value_counts(recs, post: bool) -> np.ndarray | None:
    hists = [h for r in recs if len(h := r.value_hist_post if post else r.value_hist_pre) == len(VALUE_EDGES) + 2]
    return np.sum(hists, axis=0) if hists else None


def value_histogram(
    results: Sequence[RunResult],
    epoch: int | None = None,
    post: bool = True,
    height: int | None = None,
    both: bool = True,
) -> go.Figure:
    """Gradient element values on symmetric log bins, one epoch (or all), one panel per run on shared axes.

    both: before clipping (grey outline) and after (bars in the run's colour) in the same panel; the bar where value
    clipping piles the clipped elements up at ±c is drawn in its own colour and says what fraction was clipped.
    Otherwise only post- (or pre-) clip bars."""
    if _no_records(results):
        return empty_figure("no epochs yet", height or 400)
    # a run with nothing finite to draw (diverged before this epoch, or only NaN) gets a line of text, not a panel
    panels, notes = [], []
    for res, c in zip(results, run_colors(results), strict=True):
        recs = [r for r in res.records if epoch is None or r.epoch == epoch]
        cnt = _value_counts(recs, post or both)
        if cnt is not None and cnt[:-1].sum() > 0:
            panels.append((res, c, recs, cnt))
            continue
        why = "no value histogram recorded" if recs and cnt is None else "no finite values"
        why = why if recs else f"no record for epoch {epoch}"
        notes.append(f"{res.label}: {'diverged at epoch ' + str(res.diverged[0]) + ' — ' if res.diverged else ''}{why}")
    if not panels:
        return empty_figure("; ".join(notes), height or 400)
    # at most 2 panels a row: at half a 1280 px projector 3 were ~80 px wide each
    fig, n_rows, n_cols = _subplots([p[0] for p in panels], 2, shared_yaxes="all", shared_xaxes="all",
                                    horizontal_spacing=0.05)  # fmt: skip
    x_nan = float(_VU[-1]) + 2.5
    mids, widths = (_V_LEFT + _V_RIGHT) / 2, _V_RIGHT - _V_LEFT
    legend_done: set[str] = set()

    def entry(name: str) -> dict[str, Any]:  # one legend entry per kind of bar, not per panel
        first = name not in legend_done
        legend_done.add(name)
        return dict(name=name, legendgroup=name, showlegend=first and both)

    for k, (res, c, recs, cnt) in enumerate(panels):
        at = dict(row=k // n_cols + 1, col=k % n_cols + 1)
        thr = res.spec.clip.threshold
        has_c = res.spec.clip.strategy == "value" and thr is not None and math.isfinite(thr) and thr > 0
        piles = has_c and (post or both)  # the pile-up is in the post-clip counts
        # the bins holding ±c: after value clipping every clipped element sits there
        pile_bins = (
            {int(np.searchsorted(VALUE_EDGES, sign * thr, side="right")) for sign in (-1, 1)} if piles else set()
        )
        hover = f"{res.label}<br>{'after' if post or both else 'before'} clipping: %{{y}} elements in %{{customdata}}"
        colors = [_PILE if i in pile_bins else c for i in range(len(mids))]
        fig.add_trace(go.Bar(x=mids, width=widths, y=[v if v > 0 else None for v in cnt[:-1]], marker_color=colors,
                             marker_line_width=0, customdata=_V_NAMES, hovertemplate=hover + "<extra></extra>",
                             **entry("after clipping" if both else res.label)), **at)  # fmt: skip
        if both:
            pre = _value_counts(recs, False)
            if pre is not None:  # the same elements before clipping: a grey step outline over the bars
                xs = np.repeat(np.concatenate([_V_LEFT[:1], _V_RIGHT]), 2)[1:-1]
                ys = np.repeat(pre[:-1], 2).astype(float)
                ys[ys <= 0] = np.nan
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#555555", width=2),
                                         hoverinfo="skip", **entry("before clipping")), **at)  # fmt: skip
        if has_c and not piles:  # pre-clip only: the threshold lines, no pile
            for sign in (-1, 1):
                fig.add_vline(x=float(sign * np.clip(_symlog(thr), 1, _VU[-1])), line=dict(color=_PILE, dash="dot"),
                              **at)  # fmt: skip
        if piles and pile_bins:
            frac = float(np.mean([r.elem_clip_frac for r in recs])) if recs else math.nan
            top = max(cnt[i] for i in pile_bins)
            # the bins holding ±c are ~2 px wide at half a projector: drawn again, wider, in front, so the pile shows
            pos = [float(np.sign(VALUE_EDGES[i]) * _symlog(thr)) for i in sorted(pile_bins)]
            fig.add_trace(go.Bar(x=pos, y=[cnt[i] or None for i in sorted(pile_bins)], width=1.2, marker_color=_PILE,
                                 customdata=[_V_NAMES[i] for i in sorted(pile_bins)],  # width 1.2: ~4 px at least
                                 hovertemplate=f"{res.label}<br>after clipping: %{{y}} elements in %{{customdata}}, "
                                 f"the clipped ones at ±{thr:g}<extra></extra>", **entry("piled up at ±c")), **at)  # fmt: skip
            ref = "" if k == 0 else str(k + 1)
            fig.add_annotation(x=float(_symlog(thr)), y=math.log10(top) if top > 0 else 0, xref=f"x{ref}",
                               yref=f"y{ref}", text=f"{frac:.1%} clipped", showarrow=True,
                               arrowhead=2, ax=-45, ay=-30, font=dict(size=_SMALL, color=_PILE))  # fmt: skip
            for sign, txt in ((-1, "-c"), (1, f"c = {thr:g}")):
                x = float(sign * np.clip(_symlog(thr), 1, _VU[-1]))
                fig.add_vline(x=x, line=dict(color=_PILE, dash="dot", width=1.5), annotation_text=txt,
                              annotation_position="bottom left" if sign < 0 else "bottom right", **at)  # fmt: skip
        if cnt[-1] > 0:
            n = int(cnt[-1])
            mark = _marks([x_nan], [n], [f"{res.label}: {n} NaN elements"], [f"{n} NaN"], pos="top center")
            fig.add_trace(mark, **at)
    ticks = [float(_symlog(t)) for t in _V_TICKS] + [x_nan]
    fig.update_xaxes(tickvals=ticks, ticktext=[f"{t:g}" for t in _V_TICKS] + ["NaN"], tickangle=0)
    fig.update_xaxes(range=[_V_LEFT[0] - 0.2, x_nan + 0.6])
    _x_title(fig, "element value (symlog: linear near 0)", n_rows, n_cols)
    fig.update_yaxes(type="log", exponentformat="e", autorange=True)  # else a fixed x range freezes y at [0.1, 1e4]
    # one label per decade (no 2s and 5s in small panels), every other decade past 1e4 elements
    fig.update_yaxes(dtick=2 if max(p[3].max() for p in panels) > 1e4 else 1)
    fig.update_yaxes(title="elements", col=1)
    fig.update_layout(barmode="overlay")
    when = "all epochs" if epoch is None else f"epoch {epoch}"
    what = "before | after clip" if both else ("post" if post else "pre") + "-clip"
    height = max(height or 420, 320 * n_rows) if n_rows > 1 else height or 420  # a second row gets its own height
    _style(fig, f"Values: {what}, {when}", height, f"values:{post}:{both}")
    if notes:  # under the title, in the diverged colour: which runs have no panel, and why
        _subtitle(fig, "; ".join(notes))
    return fig


# ---- seeds ------------------------------------------------------------------------------------------
def seed_band(
    results: Sequence[RunResult], metric: str = "val_loss", log_y: bool | None = None, height: int = 480
) -> go.Figure:
    """Median line and interquartile band over runs that differ only by seed; diverged seeds counted and marked."""
    if _no_records(results):
        return empty_figure("no epochs yet", height)
    log_y = metric.endswith("loss") if log_y is None else log_y
    groups = seed_groups(results)
    lrs = {key.optim.lr for key in groups}
    colors = run_colors([runs[0] for runs in groups.values()])
    top, bottom, _ = _edges([float(getattr(r, metric)) for res in results for r in res.records], log_y)
    fig = go.Figure()
    for (key, runs), c in zip(groups.items(), colors, strict=True):
        bad = [r for r in runs if r.diverged or any(not _ok(float(getattr(x, metric)), log_y) for x in r.records)]
        name = key.clip.label + (f" lr={key.optim.lr:g}" if len(lrs) > 1 else "")
        name += f" ({len(bad)}/{len(runs)} seeds diverged)" if bad else f" ({len(runs)} seeds)"
        epochs = sorted({r.epoch for res in runs for r in res.records})
        per = [[float(getattr(r, metric)) for res in runs for r in res.records if r.epoch == e] for e in epochs]
        per = [[v for v in vs if _ok(v, log_y)] for vs in per]
        q = np.array([np.percentile(vs, [25, 50, 75]) if vs else [np.nan] * 3 for vs in per]).reshape(-1, 3).T
        n_ok = [f"{len(vs)}/{len(runs)} finite" for vs in per]
        iqr = [f"IQR [{_fmt(a)}, {_fmt(b)}], {n}" for a, b, n in zip(q[0], q[2], n_ok, strict=True)]
        fig.add_trace(_line(epochs, q[2], f"{name} q75", c, "", log_y, mode="lines", width=1, hoverinfo="skip",
                            showlegend=False, legendgroup=name))  # fmt: skip
        fig.add_trace(_line(epochs, q[0], f"{name} q25", c, "", log_y, mode="lines", width=1, hoverinfo="skip",
                            showlegend=False, legendgroup=name, fill="tonexty", fillcolor=_rgba(c, 0.4)))  # fmt: skip
        hover = f"{name}<br>epoch %{{x}}: median {metric} = %{{y:.6g}}<br>%{{customdata}}"
        fig.add_trace(_line(epochs, q[1], name, c, hover, log_y, customdata=iqr))
        for res in bad:
            ys = [float(getattr(r, metric)) for r in res.records]
            mark = _bad_points([r.epoch for r in res.records], ys, log_y, top, bottom, res, metric, name, color=c)
            # diverged with a finite metric: mark where it stopped
            fig.add_trace(mark or _div_marker(res, top, name, color=c))
    fig.update_xaxes(**_epoch_axis(results))
    fig.update_yaxes(title=f"{metric} (median, IQR band)", type="log" if log_y else "linear")
    return _style(fig, f"Spread over seeds: {metric}", height, f"seeds:{metric}:{log_y}")


def seed_groups(results: Sequence[RunResult]) -> dict[RunSpec, list[RunResult]]:
    """Runs that differ only by seed, keyed by their spec with seed 0 (insertion order kept)."""
    groups: dict[RunSpec, list[RunResult]] = defaultdict(list)
    for res in results:
        groups[replace(res.spec, seed=0, label="")].append(res)
    return groups


def pool_seeds(results: Sequence[RunResult]) -> list[RunResult]:
    """One result per seed group whose records pool its seeds (gradient views per strategy, not per run): every
    seed's step norms and value counts, the mean layer norms and clip rates, the median losses (an epoch only some
    seeds reached pools those); its label says how many seeds and how many diverged."""
    out = []
    for key, runs in seed_groups(results).items():
        if len(runs) == 1:
            out.append(runs[0])
            continue
        n_div = sum(r.diverged is not None for r in runs)
        label = f"{runs[0].spec.clip.label} ×{len(runs)}" + (f" ({n_div}✕)" if n_div else "")  # short: panel titles
        recs = []
        for e in sorted({r.epoch for res in runs for r in res.records}):
            at = [r for res in runs for r in res.records if r.epoch == e]
            hists = {k: [list(getattr(r, k)) for r in at if len(getattr(r, k)) == len(VALUE_EDGES) + 2]
                     for k in ("value_hist_pre", "value_hist_post")}  # fmt: skip
            names = dict.fromkeys(n for r in at for n in r.layer_norms)
            recs.append(replace(
                at[0], label=label, diverged=None,
                grad_norm_pre=[v for r in at for v in r.grad_norm_pre],  # every seed's steps
                grad_norm_post=[v for r in at for v in r.grad_norm_post],
                value_hist_pre=[int(v) for v in np.sum(hists["value_hist_pre"], axis=0)] if hists["value_hist_pre"] else [],
                value_hist_post=[int(v) for v in np.sum(hists["value_hist_post"], axis=0)] if hists["value_hist_post"] else [],
                layer_norms={n: float(np.mean([r.layer_norms.get(n, math.nan) for r in at])) for n in names},
                clip_rate=float(np.mean([r.clip_rate for r in at])),
                elem_clip_frac=float(np.mean([r.elem_clip_frac for r in at])),
                train_loss=float(np.median([r.train_loss for r in at])),
                val_loss=float(np.median([r.val_loss for r in at])),
            ))  # fmt: skip
        out.append(RunResult(replace(key, seed=runs[0].spec.seed, label=label), recs))
    return out


def seed_table(results: Sequence[RunResult], metric: str = "val_loss") -> pd.DataFrame:
    """Compact status, one row per seed group: median final metric, its IQR, diverged k/n (diverged seeds left
    out of the median and counted, as in sweep_report.summarize)."""
    rows = []
    for runs in seed_groups(results).values():
        finals = [float(getattr(r.final, metric)) if r.final else math.nan for r in runs]
        ok = [v for v, r in zip(finals, runs, strict=True) if math.isfinite(v) and not r.diverged]
        q = np.percentile(ok, [25, 50, 75]) if ok else [math.nan] * 3
        epoch = max((r.final.epoch for r in runs if r.final), default=0)
        rows.append({"strategy": runs[0].spec.clip.label, "seeds": len(runs), f"median final {metric}": q[1],
                     "IQR": f"{q[0]:.3g} – {q[2]:.3g}" if ok else "–",
                     "diverged": f"{len(runs) - len(ok)}/{len(runs)}", "epoch": epoch})  # fmt: skip
    return pd.DataFrame(rows)


# ---- table ------------------------------------------------------------------------------------------
def _best(values: Sequence[float]) -> float:
    ok = [v for v in values if math.isfinite(v)]
    return min(ok) if ok else math.nan


def runs_table(results: Sequence[RunResult]) -> pd.DataFrame:
    """One row per run: its settings (SETTING_COLUMNS), final and best losses, and where it diverged."""
    rows = []
    for res in results:
        s, recs = res.spec, res.records
        d, m, o = s.data, s.model, s.optim
        tr, va = [float(r.train_loss) for r in recs], [float(r.val_loss) for r in recs]
        settings = [s.clip.strategy, s.clip.threshold, o.name, o.lr, o.momentum, o.batch_size, o.epochs, s.seed]
        settings += [d.name, d.n_samples, d.noise, d.scale_x, d.scale_y, m.kind, m.width, m.depth, m.activation]
        settings += [m.init, m.init_scale]
        rows.append({"run": res.label, **dict(zip(SETTING_COLUMNS, settings, strict=True)), "epochs_done": len(recs),
                     "final_train": tr[-1] if tr else math.nan, "final_val": va[-1] if va else math.nan,
                     "best_train": _best(tr), "best_val": _best(va), "diverged": _diverged_text(res)})  # fmt: skip
    columns = ["run", *SETTING_COLUMNS, "epochs_done", "final_train", "final_val", "best_train", "best_val", "diverged"]
    return pd.DataFrame(rows, columns=columns)


def differing_columns(df: pd.DataFrame) -> list[str]:
    """The setting columns whose values differ between runs (NaN and None count as one value)."""
    return [c for c in SETTING_COLUMNS if c in df.columns and df[c].astype(str).nunique() > 1]


# ---- projector --------------------------------------------------------------------------------------
PROJECTOR_FONT = 16  # px: the smallest text a class reads off a 1280x720 projector


def for_projector(fig: go.Figure, size: int = PROJECTOR_FONT) -> go.Figure:
    """A copy of fig whose every text (ticks, axis titles, legend, annotations, colour bars) is >= size px."""
    out = go.Figure(fig)
    out.update_layout(
        font=dict(size=size + 1), hoverlabel=dict(font=dict(size=size)), legend=dict(font=dict(size=size))
    )
    if out.layout.title and out.layout.title.text:
        out.update_layout(title=dict(font=dict(size=size + 4)))
    # small multiples: a label past its panel's edge ('100' of one, '0' of the next) is hidden, not overprinted
    out.update_xaxes(tickfont=dict(size=size), title_font=dict(size=size + 1), ticklabeloverflow="hide past domain")
    out.update_yaxes(tickfont=dict(size=size), title_font=dict(size=size + 1))
    for ann in out.layout.annotations:
        ann.font = dict(
            color=ann.font.color if ann.font else None, size=max(size, (ann.font.size or 0) if ann.font else 0)
        )
    for trace in out.data:
        if getattr(trace, "textfont", None) is not None and trace.textfont.size:
            trace.textfont.size = max(size, trace.textfont.size)
        if getattr(trace, "colorbar", None) is not None:
            trace.colorbar.tickfont = dict(size=size)
            trace.colorbar.title.font = dict(size=size)
    if out.layout.coloraxis and out.layout.coloraxis.colorbar:
        out.layout.coloraxis.colorbar.tickfont = dict(size=size)
        out.layout.coloraxis.colorbar.title.font = dict(size=size)
    return out


_NORM_CHARTS = ("epoch_histogram", "norm_distribution", "norm_distribution_grid")


def __getattr__(name: str) -> Any:
    """charts.norm_distribution etc.: the gradient-norm charts live in norm_charts, which imports the helpers above
    (looked up on first use, so either module can be imported first)."""
    if name in _NORM_CHARTS:
        from . import norm_charts

        return getattr(norm_charts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
