"""The cliff: Pascanu et al. 2013's one-unit recurrent net, its loss surface and gradient descent across it.

x_t = w·σ(x_{t-1}) + b, x_0 = 0.5, loss (σ(x_T) - 0.7)² with T = 50 (arXiv:1211.5063, sec. 2.3, Fig. 6).
Where x_T switches from one attractor to the other the surface has a wall: the gradient there is huge,
a plain step throws (w, b) far away, a clipped step has bounded length and stays beside the wall.
Engine style: the whole (w, b) grid in one batched torch pass; the descents of all strategies in lockstep.
No streamlit, no plotly: plain arrays out (the view draws them).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

X0, TARGET, T = 0.5, 0.7, 50  # Pascanu et al.'s Fig. 6: x_0 = .5, target σ(x_50) = 0.7
# the lesson's descent: from just above the valley, plain GD reaches the wall on its 3rd step and is thrown onto
# the far plateau (loss 0.09, gradient ~0: it never comes back); clipped at 0.1, value and norm stay beside it
START, LR, STEPS = (4.0, -2.5), 1.0, 50
CLIPS = (("none", None), ("value", 0.1), ("norm", 0.1))
VALLEY = 0.01  # loss below this: in the valley (the target is met to within 0.1)


def unroll(w: torch.Tensor, b: torch.Tensor, steps: int = T) -> torch.Tensor:
    """σ(x_T) for any broadcastable w, b: the recurrence run `steps` times, elementwise (batched over the grid)."""
    x = torch.full(torch.broadcast_shapes(w.shape, b.shape), X0, dtype=w.dtype)
    for _ in range(steps):
        x = w * torch.sigmoid(x) + b
    return torch.sigmoid(x)


def loss(w: torch.Tensor, b: torch.Tensor, steps: int = T) -> torch.Tensor:
    """(σ(x_T) - 0.7)², elementwise."""
    return (unroll(w, b, steps) - TARGET) ** 2


@dataclass(frozen=True)
class Surface:
    """The loss over a (w, b) grid, and the size of its gradient (where the wall is)."""

    w: np.ndarray  # [n_w] grid values of the recurrent weight (x axis)
    b: np.ndarray  # [n_b] grid values of the bias (y axis)
    loss: np.ndarray  # [n_b, n_w] loss at each (w, b)
    grad_norm: np.ndarray  # [n_b, n_w] ‖∇loss‖ at each point: huge on the wall


@functools.lru_cache(maxsize=8)
def surface(w_range=(1.0, 8.0), b_range=(-5.0, 3.0), n: int = 161, steps: int = T) -> Surface:
    """The loss surface on an n x n grid: one batched forward and backward pass for all n² points (cached)."""
    w = torch.linspace(*w_range, n, dtype=torch.float64)
    b = torch.linspace(*b_range, n, dtype=torch.float64)
    ww, bb = torch.meshgrid(w, b, indexing="xy")  # [n_b, n_w] each
    ww, bb = ww.clone().requires_grad_(True), bb.clone().requires_grad_(True)
    out = loss(ww, bb, steps)
    out.sum().backward()  # points are independent: the sum's gradient is each point's own gradient
    g = torch.sqrt(ww.grad**2 + bb.grad**2)
    return Surface(w.numpy(), b.numpy(), out.detach().numpy(), g.numpy())


@dataclass(frozen=True)
class Descent:
    """Gradient-descent paths of several clipping strategies, all from the same start, step by step."""

    labels: tuple[str, ...]  # [K] e.g. ('none', 'value:0.5', 'norm:0.5')
    path: np.ndarray  # [steps + 1, K, 2] (w, b) before each step and after the last
    loss: np.ndarray  # [steps + 1, K] loss at each point of the path
    grad_pre: np.ndarray  # [steps, K, 2] the gradient at each step, before clipping
    grad_post: np.ndarray  # [steps, K, 2] the gradient the step used, after clipping
    lr: float  # the step size: (w, b) -= lr * grad_post


def _clip(p: torch.Tensor, strategy: str, threshold: float | None) -> None:
    """Clip p.grad in place with PyTorch's own functions: one strategy, one run."""
    if strategy == "value":
        torch.nn.utils.clip_grad_value_([p], threshold)
    elif strategy == "norm":
        torch.nn.utils.clip_grad_norm_([p], threshold)
    elif strategy != "none":
        raise ValueError(f"the cliff draws none, value and norm clipping, not {strategy!r}")


def descend(
    start: tuple[float, float] = START,
    lr: float = LR,
    steps: int = STEPS,
    clips: tuple[tuple[str, float | None], ...] = CLIPS,
) -> Descent:
    """Plain gradient descent on the cliff, one run per (strategy, threshold), all from `start`, in lockstep.

    A run whose (w, b) or gradient becomes non-finite stays where it was (its later steps are zero)."""
    k = len(clips)
    params = [torch.tensor(start, dtype=torch.float64, requires_grad=True) for _ in clips]  # K leaves of [2]
    path, losses, pre, post = [], [], [], []
    for _ in range(steps + 1):
        stacked = torch.stack(params)  # [K, 2]: one batched forward for every run
        ls = loss(stacked[:, 0], stacked[:, 1])
        path.append(stacked.detach().numpy().copy())
        losses.append(ls.detach().numpy().copy())
        if len(path) > steps:
            break
        ls.sum().backward()  # runs are independent: each leaf gets its own run's gradient
        g_pre = torch.stack([p.grad.clone() for p in params])
        with torch.no_grad():
            for p, (strategy, thr) in zip(params, clips, strict=True):
                if not torch.isfinite(p.grad).all():
                    p.grad.zero_()  # a non-finite gradient: this run stops here (shown, not hidden)
                _clip(p, strategy, thr)
            g_post = torch.stack([p.grad.clone() for p in params])
            for p in params:
                p -= lr * p.grad
                p.grad = None
        pre.append(g_pre.numpy())
        post.append(g_post.numpy())
    labels = tuple(s if t is None else f"{s}:{t:g}" for s, t in clips)
    return Descent(labels, np.array(path), np.array(losses), np.array(pre).reshape(-1, k, 2),
                   np.array(post).reshape(-1, k, 2), lr)  # fmt: skip


@dataclass(frozen=True)
class PathSummary:
    """One descent up to a step, in words a teacher can read out."""

    label: str  # 'none', 'value:0.1', ...
    loss: float  # loss at that step
    biggest: float  # length of the largest step taken so far
    biggest_at: int  # which step (1-based) that was
    left_valley: bool  # was in the valley (loss < VALLEY) and is now far out of it (loss > 5 x VALLEY)


def summarize(d: Descent, step: int) -> list[PathSummary]:
    """Where each run stands after `step` steps (0 = the start)."""
    step = max(0, min(step, len(d.path) - 1))
    lengths = np.linalg.norm(np.diff(d.path[: step + 1], axis=0), axis=2)  # [step, K]
    out = []
    for k, label in enumerate(d.labels):
        seen = d.loss[: step + 1, k]
        big = int(np.argmax(lengths[:, k])) if step else 0
        left = bool((seen < VALLEY).any() and seen[-1] > 5 * VALLEY)
        out.append(PathSummary(label, float(seen[-1]), float(lengths[big, k]) if step else 0.0, big + 1, left))
    return out
