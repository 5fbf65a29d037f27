"""Sweep results -> plotly figures. Pure: a SweepResult in, a figure out; no widgets, no training.

Non-finite values never reach plotly: a median over seeds that all diverged is drawn as a marker at the
top of the plot, never as a NaN point, so every figure serialises (`fig.to_json()`).
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from clipviz.sweep import METRICS, SweepResult
from clipviz.sweep_report import pick_axis, recommend, summary_rows
from clipviz.ui.charts import NONFINITE_COLOR, strategy_color


def _num(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _empty(title: str, note: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=note, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False, height=360)
    return fig


def _title(result: SweepResult, text: str, axis_value: float | None) -> str:
    a = pick_axis(result, axis_value)
    return text if a is None else f"{text} ({result.sweep.axis}={a:g})"


def loss_vs_threshold(result: SweepResult, metric: str = "final_val", axis_value: float | None = None) -> go.Figure:
    """Median `metric` over seeds vs threshold, one line per strategy, IQR band, diverged points marked and counted."""
    a = pick_axis(result, axis_value)
    rows = [r for r in summary_rows(result, metric) if r["axis_value"] == a]
    title = _title(result, f"{METRICS[metric]} vs threshold: median over seeds, band = interquartile range", a)
    if not rows:
        return _empty(title, "no results yet")
    finite = [v for r in rows for v in (r["q3"], r["median"]) if _num(v)]
    top = max(finite) * 3 if finite else 1.0  # where 'every seed diverged' markers sit
    fig = go.Figure()
    for strat in result.sweep.strategies:
        rs = sorted((r for r in rows if r["strategy"] == strat), key=lambda r: r["threshold"])
        if not rs:
            continue
        color, x = strategy_color(strat), [r["threshold"] for r in rs]
        fig.add_scatter(
            x=x,
            y=[_num(r["q1"]) for r in rs],
            mode="lines",
            line_width=0,
            showlegend=False,
            legendgroup=strat,
            hoverinfo="skip",
            connectgaps=False,
        )
        fig.add_scatter(
            x=x,
            y=[_num(r["q3"]) for r in rs],
            mode="lines",
            line_width=0,
            fill="tonexty",
            fillcolor=_rgba(color, 0.18),
            showlegend=False,
            legendgroup=strat,
            hoverinfo="skip",
        )
        fig.add_scatter(
            x=x,
            y=[_num(r["median"]) for r in rs],
            mode="lines+markers",
            name=strat,
            legendgroup=strat,
            line_color=color,
            customdata=[[r["q1"], r["q3"], r["n_diverged"], r["n"]] for r in rs],
            hovertemplate=strat + " %{x:.4g}: median %{y:.4g} [IQR %{customdata[0]:.3g}, %{customdata[1]:.3g}], "
            "%{customdata[2]}/%{customdata[3]} diverged<extra></extra>",
        )
        bad = [r for r in rs if r["n_diverged"]]
        if bad:
            fig.add_scatter(
                x=[r["threshold"] for r in bad],
                y=[_num(r["median"]) or top for r in bad],
                mode="markers+text",
                marker=dict(symbol="x", size=11, color=NONFINITE_COLOR, line=dict(width=1, color=color)),
                text=[f"{r['n_diverged']}/{r['n']}" for r in bad],
                textposition="top center",
                textfont_color=NONFINITE_COLOR,
                name=f"{strat}: diverged seeds ({sum(r['n_diverged'] for r in bad)})",
                legendgroup=strat,
                hovertemplate=strat + " %{x:.4g}: %{text} seeds diverged<extra></extra>",
            )
    for r in rows:
        if r["strategy"] != "none":
            continue
        if _num(r["median"]):
            fig.add_hline(
                y=r["median"],
                line_dash="dash",
                line_color=strategy_color("none"),
                annotation_text=f"no clipping: {r['median']:.3g} ({r['n_diverged']}/{r['n']} diverged)",
            )
        else:
            fig.add_annotation(
                text=f"no clipping: {r['n_diverged']}/{r['n']} seeds diverged",
                showarrow=False,
                x=0.01,
                y=0.99,
                xref="paper",
                yref="paper",
                xanchor="left",
                font_color=NONFINITE_COLOR,
            )
    fig.update_layout(title=title, height=440, legend_title_text="strategy", hovermode="closest")
    fig.update_xaxes(type="log", title="threshold (log)")
    fig.update_yaxes(type="log", title=f"{METRICS[metric]} (log)")
    return fig


def clip_rate_vs_threshold(result: SweepResult, axis_value: float | None = None) -> go.Figure:
    """Fraction of steps the clip fired (median over seeds): where clipping stops doing anything."""
    a = pick_axis(result, axis_value)
    rows = [r for r in summary_rows(result) if r["axis_value"] == a and r["strategy"] != "none"]
    title = _title(result, "clip rate vs threshold: fraction of steps clipped", a)
    if not rows:
        return _empty(title, "no results yet")
    fig = go.Figure()
    for strat in result.sweep.strategies:
        rs = sorted((r for r in rows if r["strategy"] == strat), key=lambda r: r["threshold"])
        fig.add_scatter(
            x=[r["threshold"] for r in rs],
            y=[_num(r["clip_rate"]) for r in rs],
            mode="lines+markers",
            name=strat,
            line_color=strategy_color(strat),
        )
    fig.update_layout(title=title, height=360, hovermode="x unified")
    fig.update_xaxes(type="log", title="threshold (log)")
    fig.update_yaxes(range=[-0.03, 1.03], title="fraction of steps clipped", tickformat=".0%")
    return fig


def stability_map(result: SweepResult, metric: str = "final_val") -> go.Figure:
    """Second axis x threshold, colour = log10 median `metric`; x where any seed diverged. One panel per strategy,
    with the no-clipping column at the left of each: how far clipping widens the range that trains."""
    sw = result.sweep
    title = f"stability map: log10 median {METRICS[metric]}, x = some seed diverged"
    if not sw.axis:
        return _empty(title, "sweep a second axis (learning rate or batch size) to see the stability map")
    rows = summary_rows(result, metric)
    if not rows:
        return _empty(title, "no results yet")
    ys = [f"{a:g}" for a in sw.axis_values]
    fig = make_subplots(
        rows=1, cols=len(sw.strategies), shared_yaxes=True, subplot_titles=sw.strategies, horizontal_spacing=0.04
    )
    base = {r["axis_value"]: r for r in rows if r["strategy"] == "none"}
    for col, (strat, ts) in enumerate(sw.thresholds, 1):
        xs = ["none"] + [f"{t:g}" for t in ts]
        cell = {(r["threshold"], r["axis_value"]): r for r in rows if r["strategy"] == strat}
        z, text, mx, my = [], [], [], []
        for a, ylab in zip(sw.axis_values, ys, strict=True):
            line = [base.get(a)] + [cell.get((t, a)) for t in ts]
            z.append([math.log10(r["median"]) if r and _num(r["median"]) and r["median"] > 0 else None for r in line])
            text.append(
                ["not run" if r is None else f"{r['median']:.3g}, {r['n_diverged']}/{r['n']} diverged" for r in line]
            )
            for xlab, r in zip(xs, line, strict=True):
                if r and r["n_diverged"]:
                    mx.append(xlab)
                    my.append(ylab)
        fig.add_heatmap(
            x=xs,
            y=ys,
            z=z,
            text=text,
            coloraxis="coloraxis",
            row=1,
            col=col,
            xgap=1,
            ygap=1,
            hovertemplate=f"{strat} %{{x}}, {sw.axis} %{{y}}: %{{text}}<extra></extra>",
        )
        fig.add_scatter(
            x=mx,
            y=my,
            mode="markers",
            marker=dict(symbol="x", color=NONFINITE_COLOR, size=9),
            showlegend=col == 1,
            name="some seed diverged",
            row=1,
            col=col,
            hoverinfo="skip",
        )
        fig.update_xaxes(title="threshold", type="category", row=1, col=col)
    fig.update_yaxes(title=sw.axis.replace("_", " "), type="category", row=1, col=1)
    fig.update_layout(title=title, height=460, coloraxis=dict(colorscale="Viridis", colorbar_title="log10"))
    return fig


def recommendation_rows(result: SweepResult, metric: str = "final_val") -> list[dict[str, str]]:
    """The recommendations as table rows for st.dataframe."""
    return [
        {
            "strategy": r.strategy,
            "recommended": "-" if r.low is None else f"{r.low:g} to {r.high:g}",
            "best": "-" if r.best is None else f"{r.best:g}",
            "why": r.reason,
        }
        for r in recommend(result, metric)
    ]
