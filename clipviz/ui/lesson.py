"""The lesson: the Keras tutorial's story in seven short steps, each with a 'Try it' that loads (and trains) it.

Steps are data (`STEPS`); `render_lesson` draws the chosen one. 'Try it' writes the setup into the
sidebar widgets from an on_click callback and asks the app to start training on the next rerun.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from ..clipping import STRATEGY_INFO
from ..config import PRESETS, TUTORIAL, TUTORIAL_CLIPS, ClipSpec, RunSpec
from . import controls


@dataclass(frozen=True)
class Step:
    title: str
    text: str  # markdown
    formulas: tuple[str, ...] = ()  # STRATEGY_INFO names whose formula to show
    spec: RunSpec | None = None  # what 'Try it' loads
    clips: tuple[ClipSpec, ...] = TUTORIAL_CLIPS
    n_seeds: int = 1
    try_label: str = "Try it"


_NONE, _VALUE, _NORM = TUTORIAL_CLIPS
STEPS = (
    Step("1 · The data", (
        "The tutorial regresses a target made by `make_regression(n_samples=1000, n_features=20, noise=0.1, "
        "random_state=1)`: 500 rows train, 500 validate. **The target is not scaled**: its values reach "
        "hundreds and its variance is about **23,000** (about 20,000 on the 500 training rows drawn below). "
        "The first squared errors are huge, and so are the first gradients."), spec=TUTORIAL, try_label="Load the tutorial setup (no training)"),
    Step("2 · No clipping: it explodes", (
        "An MLP (20 → 25 ReLU → 1), SGD with lr 0.01 and momentum 0.9, batch 32. Without clipping one huge "
        "gradient throws the weights far away, the next one is larger still: **the loss is inf (then NaN) "
        "within the first epoch**. The loss chart marks where: *diverged at epoch 1, step k*."),
        spec=TUTORIAL, clips=(_NONE,)),
    Step("3 · Value clipping (clipvalue=5)", (
        "Clamp every gradient element to [-5, 5]. Training now converges: the article reports train / test MSE "
        "**9.5 / 10.0**. Look at the *Values* chart: the clipped elements pile up at ±5, and the direction of "
        "the gradient changes (each element is clipped on its own)."), ("value",), TUTORIAL, (_NONE, _VALUE)),
    Step("4 · Norm clipping (global norm 1)", (
        "Rescale the whole gradient so its L2 norm is at most 1: the direction is kept, only the step shrinks. "
        "The article reports train / test MSE **5.1 / 27.4**: it fits the training set better but generalises "
        "worse here. The norm heatmaps show every step clipped: norms in the thousands, threshold 1."),
        ("norm",), TUTORIAL, TUTORIAL_CLIPS),
    Step("5 · Per-tensor norm, and the Keras clipnorm trap", (
        "Per-tensor clipping gives each weight matrix and bias its own norm budget. **The trap:** in old "
        "(standalone) Keras 2, `clipnorm` clipped the *global* norm; in **Keras 3, `clipnorm` clips each tensor "
        "separately**, and the global version is `global_clipnorm` (also in tf.keras). The same line of code "
        "means two different algorithms depending on the Keras version: compare them here."),
        ("norm", "tensor-norm"), TUTORIAL, (_NORM, ClipSpec("tensor-norm", 1.0))),
    Step("6 · The real fix: scale the target", (
        "Clipping treats the symptom. Standardising the target (subtract the train mean, divide by the std) "
        "makes the first gradients small: **all three runs train, even without clipping**. Toggle *Scale the "
        "target* in the sidebar any time: it is one click."), spec=PRESETS["tutorial-scaled"]),
    Step("7 · Choosing a threshold", (
        "Train once without clipping (on scaled data) and read the typical gradient norm off the heatmap; a "
        "threshold **a few times the typical unclipped norm** clips only the spikes. Too small and every step "
        "is clipped (it acts like a smaller learning rate); too large and nothing is. The **Sweep** tab trains "
        "dozens of thresholds at once. And value-clipped training here is chaotic: repeat with 5 seeds to see "
        "the spread before trusting one number."), spec=TUTORIAL, clips=(_VALUE, _NORM), n_seeds=5,
        try_label="Try it with 5 seeds"),
)  # fmt: skip


def target_figure(y: np.ndarray, name: str = "y") -> go.Figure:
    """Histogram and box plot of the raw train target (the lesson's first picture)."""
    y = np.asarray(y, dtype=float)
    y = y[np.isfinite(y)]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3], subplot_titles=("histogram", "box plot"))
    fig.add_trace(go.Histogram(x=y, nbinsx=40, marker_color="#0072b2", name=name), row=1, col=1)
    fig.add_trace(go.Box(y=y, marker_color="#0072b2", name=name, boxpoints="outliers"), row=1, col=2)
    var = float(np.var(y)) if y.size else float("nan")
    fig.update_layout(
        title=f"Train target {name!s}: variance {var:,.0f}, range [{y.min():,.0f}, {y.max():,.0f}]"
        if y.size
        else "no target values",
        showlegend=False,
        height=380,
        font=dict(size=16),
        margin=dict(l=40, r=20, t=70, b=40),
    )
    return fig


def _try(i: int) -> None:
    s = STEPS[i]
    controls.load_setup(s.spec, s.clips, s.n_seeds, start=i > 0)


def render_lesson(get_target: Callable[[], tuple[np.ndarray, str] | None]) -> None:
    """Draw the chosen step; get_target() -> (raw train target, its name) of the current setup, for step 1."""
    titles = [s.title for s in STEPS]
    pick = st.radio("Step", titles, horizontal=True, key="lesson_step", label_visibility="collapsed")
    i = titles.index(pick)
    step = STEPS[i]
    st.subheader(step.title)
    st.markdown(step.text)
    for name in step.formulas:
        info = STRATEGY_INFO[name]
        st.markdown(f"**{info.title}** — same as {info.same_as}. *{info.reference}*")
        st.latex(info.formula)
    if i == 0:
        target = get_target()
        if target is not None:
            st.plotly_chart(target_figure(*target), key="lesson_target")
        else:
            st.info("The current setup's data could not be loaded; fix the setup in the sidebar.")
    if step.spec is not None:
        st.button(step.try_label, key=f"try_{i}", type="primary", on_click=_try, args=(i,),
                  help="loads this setup into the sidebar controls" + (" and trains it" if i else ""))  # fmt: skip
    prev, _, nxt = st.columns([1, 4, 1])
    if i > 0:
        prev.button("← Previous", key="lesson_prev", on_click=_go, args=(titles[i - 1],))
    if i < len(STEPS) - 1:
        nxt.button("Next →", key="lesson_next", on_click=_go, args=(titles[i + 1],))


def _go(title: str) -> None:
    st.session_state.lesson_step = title
