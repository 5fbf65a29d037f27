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
    shows: str = "compare"  # the tab 'Try it' switches to (its result is there): a key of render_lesson's tabs


_NONE, _VALUE, _NORM = TUTORIAL_CLIPS
# where this run of the Keras tutorial comes from, and why its numbers differ from the article's
ARTICLE = {"value": (9.5, 10.0), "norm": (5.1, 27.4)}  # the article's train / test MSE, one Keras run each
# clipviz's 5-seed medians [IQR] of the final train / val MSE, seeds 1-5, 100 epochs: `python -m clipviz run
# --seeds 5`. tests/test_lesson.py retrains them and fails when the engine stops reproducing them.
MEDIANS_5_SEEDS = {
    "value": ((60.33, 58.27, 75.59), (45.36, 38.97, 51.17)),  # (median, q1, q3) train, then val
    "norm": ((2.593, 2.146, 3.662), (16.50, 13.57, 17.52)),
}
_WHY_DIFFERENT = (
    "Why not the article's numbers? The article shows **one** Keras run; here each figure is the median of "
    "**5 seeds** (initial weights and minibatch order), because value-clipped training on this data is chaotic "
    "(a 1e-12 nudge changes the final MSE by up to 2×). Keras and PyTorch also differ in the details: weight "
    "initialisation draws, minibatch shuffling, float rounding."
)


def _med(name: str, k: int) -> str:
    m, q1, q3 = MEDIANS_5_SEEDS[name][k]
    return f"{m:.3g} (IQR {q1:.3g}–{q3:.3g})"


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
        "Clamp every gradient element to [-5, 5]. Training now converges. The article reports train / test MSE "
        f"**{ARTICLE['value'][0]} / {ARTICLE['value'][1]}**; the median of 5 seeds here is train "
        f"**{_med('value', 0)}**, validation **{_med('value', 1)}**. Look at the *Values* chart: the clipped "
        "elements pile up at ±5, and the direction of the gradient changes (each element is clipped on its own).  \n"
        + _WHY_DIFFERENT), ("value",), TUTORIAL, (_NONE, _VALUE)),
    Step("4 · Norm clipping (global norm 1)", (
        "Rescale the whole gradient so its L2 norm is at most 1: the direction is kept, only the step shrinks. "
        f"The article reports train / test MSE **{ARTICLE['norm'][0]} / {ARTICLE['norm'][1]}** (better fit, worse "
        f"test than value clipping). Over 5 seeds here norm clipping is better on **both**: train "
        f"**{_med('norm', 0)}**, validation **{_med('norm', 1)}**, against {_med('value', 1)} for value clipping. "
        "The norm heatmaps show norms in the thousands and a threshold of 1: **every step is clipped**, so each "
        "update is lr·g/‖g‖, a step of fixed length lr·c = 0.01 whatever ‖g‖ is. That is *normalized gradient "
        "descent* (momentum then adds up these unit steps), not just a smaller learning rate: the step no longer "
        "shrinks as the gradient does near a minimum.  \n" + _WHY_DIFFERENT),
        ("norm",), TUTORIAL, TUTORIAL_CLIPS),
    Step("5 · Per-tensor norm, and the Keras clipnorm trap", (
        "Per-tensor clipping gives each weight matrix and bias its own norm budget. **The trap:** the tutorial "
        "used standalone Keras (≤ 2.3), whose `clipnorm` rescaled all gradients by their **one global norm** "
        "(`keras/optimizers.py`: `norm = K.sqrt(sum([K.sum(K.square(g)) for g in grads]))`). In **tf.keras 2.x** "
        "(`optimizer_v2`) and in **Keras 3**, `clipnorm` clips **each variable separately** "
        "(`clip_by_norm(g, clipnorm)` per gradient); the global version is `global_clipnorm` (tf.keras 2.4 and "
        "later, Keras 3). The same line of code means two different algorithms depending on the Keras version: "
        "compare them here (*norm* = old `clipnorm` = `global_clipnorm`; *tensor-norm* = new `clipnorm`)."),
        ("norm", "tensor-norm"), TUTORIAL, (_NORM, ClipSpec("tensor-norm", 1.0))),
    Step("6 · The real fix: scale the target", (
        "Clipping treats the symptom. Standardising the target (subtract the train mean, divide by the std) "
        "makes the first gradients small: **all three runs train, even without clipping**. Toggle *Scale the "
        "target* in the sidebar any time: it is one click."), spec=PRESETS["tutorial-scaled"]),
    Step("7 · Choosing a threshold", (
        "Pascanu et al. (2013, §3.2) say: *\"One good heuristic for setting this threshold is to look at statistics "
        "on the average norm over a sufficiently large number of updates.\"* The ICML 2013 text goes on: *\"In our "
        "experience values from half to ten times this average can still yield convergence, though convergence "
        "speed can be affected.\"* (the arXiv version instead says training is *\"not very sensitive\"* to the "
        "threshold). So: train once **without clipping on scaled data** (Try it below), read the typical norm off "
        "the *Norms* heatmap, and start from a threshold of that order. Too small and every step is clipped "
        "(normalized gradient descent, step 4); too large and nothing is. The **Sweep** tab trains dozens of "
        "thresholds at once; its rules of thumb are computed from runs that train. Press **5 seeds** on the "
        "toolbar before trusting one number."), spec=PRESETS["tutorial-scaled"], clips=(_NONE,)),
    Step("8 · The cliff", (
        "Why clipping works, in Pascanu et al.'s own picture (their Fig. 6): a one-unit recurrent net "
        "x_t = w·σ(x_{t−1}) + b, x_0 = 0.5, with the loss (σ(x_50) − 0.7)². Its loss surface over (w, b) is "
        "flat almost everywhere, with a **wall** where x_50 jumps from one attractor to another. A plain gradient "
        "step on the wall is enormous and throws the parameters out of the valley; a clipped step has bounded "
        "length and lands back beside the wall. *Try it* plays the three descents on the surface, step by step."),
        try_label="Show the cliff", shows="cliff"),
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


def _try(i: int, tab: str | None) -> None:
    s = STEPS[i]
    if s.spec is not None:
        controls.load_setup(s.spec, s.clips, s.n_seeds, start=i > 0)  # n_seeds > 1: a one-off
    if s.shows == "cliff":
        st.session_state.cliff_play = True  # the cliff view starts its animation from step 0
        st.session_state.cliff_step = 0
    if tab is not None and i > 0:  # step 1 only loads a setup: stay on the lesson
        st.session_state.tab = tab  # st.tabs(key="tab"): show the result where it appears


def render_lesson(get_target: Callable[[], tuple[np.ndarray, str] | None], tabs: dict[str, str] | None = None) -> None:
    """Draw the chosen step; get_target() -> (raw train target, its name) of the current setup, for step 1;
    tabs: {"compare": label, "cliff": label} of the page's tabs, so 'Try it' can switch to its result."""
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
    if step.spec is not None or step.shows != "compare":
        what = "loads this setup into the sidebar controls" + (" and trains it" if i and step.spec else "")
        st.button(step.try_label, key=f"try_{i}", type="primary", on_click=_try,
                  args=(i, (tabs or {}).get(step.shows)), help=what)  # fmt: skip
    prev, _, nxt = st.columns([1, 4, 1])
    if i > 0:
        prev.button("← Previous", key="lesson_prev", on_click=_go, args=(titles[i - 1],))
    if i < len(STEPS) - 1:
        nxt.button("Next →", key="lesson_next", on_click=_go, args=(titles[i + 1],))


def _go(title: str) -> None:
    st.session_state.lesson_step = title
