"""The cliff: the batched surface against a per-point oracle, the clipped descents against torch.nn.utils, and
the lesson's story (plain descent is thrown out of the valley, clipped descents are not)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipviz import cliff
from clipviz.ui.cliff_view import cliff_figure, status_lines


def _loss_scalar(w: float, b: float) -> float:
    """The paper's recurrence in plain Python floats: the oracle for the batched grid."""
    x = cliff.X0
    for _ in range(cliff.T):
        x = w / (1 + math.exp(-x)) + b
    return (1 / (1 + math.exp(-x)) - cliff.TARGET) ** 2


@pytest.fixture(scope="module")
def surf():
    return cliff.surface(n=41)


@pytest.fixture(scope="module")
def descent():
    return cliff.descend()


def test_batched_surface_matches_a_per_point_loop(surf):
    rng = np.random.default_rng(0)
    for i, j in rng.integers(0, 41, size=(12, 2)):
        assert surf.loss[i, j] == pytest.approx(_loss_scalar(surf.w[j], surf.b[i]), rel=1e-9, abs=1e-12)


def test_surface_gradient_matches_autograd_at_single_points(surf):
    for i, j in ((3, 5), (20, 20), (35, 10)):
        w = torch.tensor(surf.w[j], dtype=torch.float64, requires_grad=True)
        b = torch.tensor(surf.b[i], dtype=torch.float64, requires_grad=True)
        cliff.loss(w, b).backward()
        assert surf.grad_norm[i, j] == pytest.approx(math.hypot(w.grad.item(), b.grad.item()), rel=1e-9, abs=1e-15)


def test_surface_has_a_wall(surf):
    # the cliff: most of the surface is nearly flat, a thin band is steep
    g = surf.grad_norm
    assert np.median(g) < 0.1 and g.max() > 3


def test_clipped_gradients_obey_their_rule(descent):
    pre, post = descent.grad_pre, descent.grad_post
    k = {label: i for i, label in enumerate(descent.labels)}
    np.testing.assert_array_equal(pre[:, k["none"]], post[:, k["none"]])
    assert np.abs(post[:, k["value:0.1"]]).max() <= 0.1 + 1e-12
    norms = np.linalg.norm(post[:, k["norm:0.1"]], axis=1)
    assert norms.max() <= 0.1 * (1 + 1e-6)
    big = np.linalg.norm(pre[:, k["norm:0.1"]], axis=1) > 0.2
    assert big.any() and np.allclose(norms[big], 0.1, rtol=1e-5)  # clipped steps have exactly the threshold's length


def test_descent_matches_a_plain_single_run_loop(descent):
    # oracle: one parameter vector, torch.nn.utils.clip_grad_norm_, torch.optim.SGD
    p = torch.tensor(cliff.START, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([p], lr=cliff.LR)
    k = descent.labels.index("norm:0.1")
    for t in range(10):
        np.testing.assert_allclose(p.detach().numpy(), descent.path[t, k], rtol=1e-12)
        opt.zero_grad()
        cliff.loss(p[0], p[1]).backward()
        torch.nn.utils.clip_grad_norm_([p], 0.1)
        opt.step()


def test_plain_descent_leaves_the_valley_and_clipped_ones_do_not(descent):
    end = {s.label: s for s in cliff.summarize(descent, cliff.STEPS)}
    assert end["none"].left_valley and end["none"].biggest > 2 and end["none"].loss > 0.05
    for label in ("value:0.1", "norm:0.1"):
        assert not end[label].left_valley and end[label].loss < cliff.VALLEY, end[label]
        assert end[label].biggest <= 0.1 * math.sqrt(2) * cliff.LR + 1e-9  # a clipped step is bounded


def test_figure_draws_every_step_and_survives_nan(surf, descent):
    for step in (0, 3, cliff.STEPS, cliff.STEPS + 5):
        fig = cliff_figure(surf, descent, step)
        names = [t.name for t in fig.data]
        assert {"none", "value:0.1", "norm:0.1"} <= set(names)
    bad = cliff.Descent(descent.labels, np.full_like(descent.path, np.nan), np.full_like(descent.loss, np.nan),
                        descent.grad_pre * np.nan, descent.grad_post * np.nan, descent.lr)  # fmt: skip
    cliff_figure(surf, bad, 4)
    assert len(status_lines(bad, 4)) == 3


def test_status_says_who_left(descent):
    lines = status_lines(descent, cliff.STEPS)
    assert "thrown out of the valley" in lines[0] and all("stays by the valley" in x for x in lines[1:])
