"""The Cliff tab: Pascanu et al. 2013's loss surface with the descents of none, value and norm clipping on it.

`cliff_figure` is pure (arrays -> plotly figure). `render_cliff` draws the controls outside a fragment (a click
reruns the page, which switches polling on or off) and the picture inside `st.fragment(run_every=...)`, which
advances one step per tick while playing, like the Compare tab's live view.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from .. import cliff
from .charts import strategy_color

SPEEDS = {"slow": 1.0, "normal": 0.4, "fast": 0.15}  # seconds per step while playing
VIEW_W, VIEW_B = (2.5, 6.5), (-3.5, 2.5)  # the part of the surface the descents cross: paths large on a projector
WALL = 0.4  # ‖∇loss‖ above this marks the wall (the top 1% of the grid; elsewhere the surface is nearly flat)
_FONT = 16


def _arrow(fig: go.Figure, x0: float, y0: float, dx: float, dy: float, color: str, dash: bool, box) -> bool:
    """An arrow from (x0, y0) by (dx, dy), cut at the plot's edge; True when it was cut."""
    (x_lo, x_hi), (y_lo, y_hi) = box
    scale = 1.0
    for v, d, lo, hi in ((x0, dx, x_lo, x_hi), (y0, dy, y_lo, y_hi)):
        if d > 0 and v + d > hi:
            scale = min(scale, (hi - v) / d)
        elif d < 0 and v + d < lo:
            scale = min(scale, (lo - v) / d)
    scale = max(scale, 0.0)
    if math.hypot(dx, dy) * scale < 1e-9:
        return scale < 1.0
    fig.add_annotation(x=x0 + dx * scale, y=y0 + dy * scale, ax=x0, ay=y0, xref="x", yref="y", axref="x",
                       ayref="y", showarrow=True, arrowhead=2, arrowsize=1.3, arrowwidth=4 if dash else 2.5,
                       arrowcolor=color, opacity=0.55 if dash else 1.0, text="")  # fmt: skip
    return scale < 1.0


def cliff_figure(surf: cliff.Surface, d: cliff.Descent, step: int, height: int = 560) -> go.Figure:
    """Loss heatmap over (w, b), each strategy's path up to `step`, and that step's update before/after clipping."""
    step = max(0, min(step, len(d.path) - 1))
    fig = go.Figure()
    z = np.log10(np.maximum(surf.loss, 1e-6)).astype(np.float32)  # float32: the figure is resent every step
    grey = [[0, "#2b2b2b"], [0.55, "#9c9c9c"], [1, "#f7f7f7"]]  # valley dark, the two plateaus apart on a projector
    fig.add_trace(go.Heatmap(x=surf.w, y=surf.b, z=z, colorscale=grey, zmin=-3, zmax=-0.3, showscale=True,
                             colorbar=dict(title="loss", tickvals=[-3, -2, -1, np.log10(0.5)], thickness=14,
                                           ticktext=["0.001", "0.01", "0.1", "0.5"]),
                             hovertemplate="w %{x:.2f}, b %{y:.2f}<br>log10 loss %{z:.2f}<extra></extra>"))  # fmt: skip
    # the wall: on a grid it is a few cells wide, so mark those cells rather than contour a level set
    steep = np.argwhere(surf.grad_norm > WALL)
    fig.add_trace(go.Scatter(x=surf.w[steep[:, 1]], y=surf.b[steep[:, 0]], mode="markers", hoverinfo="skip",
                             marker=dict(symbol="square", size=5, color="#8e44ad", opacity=0.8),
                             name=f"the wall: ‖∇loss‖ > {WALL:g}"))  # fmt: skip
    box = ((float(surf.w[0]), float(surf.w[-1])), (float(surf.b[0]), float(surf.b[-1])))
    cut = []
    for k, label in enumerate(d.labels):
        color = strategy_color(label)
        xs, ys = d.path[: step + 1, k, 0], d.path[: step + 1, k, 1]
        hover = [f"{label}<br>step {t}: w {x:.3f}, b {y:.3f}, loss {d.loss[t, k]:.4g}" for t, (x, y) in
                 enumerate(zip(xs, ys, strict=True))]  # fmt: skip
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=label, line=dict(color=color, width=3),
                                 marker=dict(size=[7] * step + [15], color=color, line=dict(color="white", width=1)),
                                 hovertext=hover, hoverinfo="text", cliponaxis=True))  # fmt: skip
        if step < len(d.grad_pre):  # the update this step will make: before (faint, thick) and after clipping
            x0, y0 = d.path[step, k]
            pre, post = -d.lr * d.grad_pre[step, k], -d.lr * d.grad_post[step, k]
            if label != "none" and not np.allclose(pre, post):
                if _arrow(fig, x0, y0, *pre, color, True, box):
                    cut.append(f"{label}: unclipped step {np.linalg.norm(pre):.3g} long, cut at the edge")
            if _arrow(fig, x0, y0, *post, color, False, box):
                cut.append(f"{label}: step {np.linalg.norm(post):.3g} long, cut at the edge")
    fig.add_trace(go.Scatter(x=[d.path[0, 0, 0]], y=[d.path[0, 0, 1]], mode="markers+text", text=["start"],
                             textposition="bottom center", marker=dict(symbol="star", size=18, color="black"),
                             showlegend=False, hoverinfo="skip"))  # fmt: skip
    title = f"The cliff: x_t = w·σ(x_t−1) + b, loss (σ(x_50) − 0.7)², step {step}/{len(d.path) - 1}"
    fig.update_layout(
        template="plotly_white",
        title=dict(text=title, font=dict(size=_FONT + 2)),
        height=height,
        font=dict(size=_FONT),
        legend=dict(orientation="h", x=0, y=0, yref="container", yanchor="bottom", font=dict(size=_FONT)),
        margin=dict(l=70, r=10, t=50, b=10),
        uirevision="cliff",
    )
    fig.update_xaxes(title="recurrent weight w", range=list(box[0]), tickfont=dict(size=_FONT))
    fig.update_yaxes(title="bias b", range=list(box[1]), tickfont=dict(size=_FONT))
    if cut:
        fig.add_annotation(text="; ".join(cut), x=0, y=1.0, xref="paper", yref="paper", xanchor="left",
                           yanchor="bottom", showarrow=False, font=dict(size=_FONT - 2, color="#555555"))  # fmt: skip
    return fig


def status_lines(d: cliff.Descent, step: int) -> list[str]:
    """One line per strategy: its loss now, its biggest step so far, and whether it left the valley."""
    lines = []
    for s in cliff.summarize(d, step):
        if not step:
            lines.append(f"`{s.label}`: loss {s.loss:.3g} at the start")
            continue
        verdict = "**thrown out of the valley**" if s.left_valley else "stays by the valley"
        lines.append(f"`{s.label}`: loss {s.loss:.3g}, biggest step {s.biggest:.3g} (step {s.biggest_at}): {verdict}")
    return lines


# ---- streamlit --------------------------------------------------------------------------------------
@st.cache_data(show_spinner="computing the loss surface (one batched pass over the grid)")
def _surface() -> cliff.Surface:
    return cliff.surface(
        VIEW_W, VIEW_B, n=121
    )  # ~0.06 px of w per cell at 1440 px: finer only costs bytes per animation step


@st.cache_data
def _descent() -> cliff.Descent:
    return cliff.descend()


def _play() -> None:
    st.session_state.cliff_play = not st.session_state.get("cliff_play", False)
    if st.session_state.cliff_play and st.session_state.get("cliff_step", 0) >= cliff.STEPS:
        st.session_state.cliff_step = 0  # play again from the start


def _step(delta: int) -> None:
    st.session_state.cliff_play = False
    st.session_state.cliff_step = max(0, min(cliff.STEPS, st.session_state.get("cliff_step", 0) + delta))


def _picture(d: cliff.Descent, height: int) -> None:
    step = st.session_state.get("cliff_step", 0)
    playing = st.session_state.get("cliff_play", False)
    left, right = st.columns([2.6, 1])
    with left:
        st.plotly_chart(cliff_figure(_surface(), d, step, height), key="cliff_chart")
    with right:
        with st.container(key="cliff_progress"):
            st.progress(step / cliff.STEPS, text=f"step {step}/{cliff.STEPS} · {'playing' if playing else 'paused'}")
        with st.container(key="cliff_status"):
            st.markdown("  \n".join(status_lines(d, step)))
        lr, (w0, b0) = cliff.LR, cliff.START
        thr = ", ".join(f"{s} at {t:g}" for s, t in cliff.CLIPS if t is not None)
        st.caption(
            "Grey: the loss (darker is lower); purple: the wall, where the gradient is huge. Each line is a plain "
            f"gradient descent (learning rate {lr:g}) from the star at w = {w0:g}, b = {b0:g}; clipping {thr} with "
            "torch.nn.utils.clip_grad_value_ / clip_grad_norm_. The arrows at each head are this step's update: "
            "faint = before clipping, solid = after."
        )
    if playing:
        if step < cliff.STEPS:
            st.session_state.cliff_step = step + 1  # drawn on the next tick
        else:
            st.session_state.cliff_play = False
            st.rerun(scope="app")  # the end: switch polling off


def render_cliff(classroom: bool = False) -> None:
    """The Cliff tab: controls, then the animated picture (a fragment that reruns itself while playing)."""
    d = _descent()
    playing = st.session_state.get("cliff_play", False)
    c = st.columns([1, 1, 1, 1, 2], vertical_alignment="bottom")
    c[0].button("Pause" if playing else "Play", key="cliff_play_btn", type="primary", on_click=_play,
                icon=":material/pause:" if playing else ":material/play_arrow:")  # fmt: skip
    c[1].button("Step", key="cliff_step_btn", icon=":material/skip_next:", on_click=_step, args=(1,))
    c[2].button("Back", key="cliff_back_btn", icon=":material/skip_previous:", on_click=_step, args=(-1,))
    c[3].button("Reset", key="cliff_reset_btn", icon=":material/replay:", on_click=_step, args=(-cliff.STEPS,))
    speed = c[4].select_slider("Speed", list(SPEEDS), value="normal", key="cliff_speed")
    height = 420 if classroom else 540  # the whole picture above the fold at 1280x720 / 1440x900
    st.fragment(run_every=SPEEDS[speed] if playing else None)(_picture)(d, height)
