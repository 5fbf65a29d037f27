"""The plain single-run loop: nn.Module + torch.optim + torch.nn.utils.clip_grad_*.

This is what a user would write by hand. It is the batched engine's test oracle
(same seed -> same weights, same minibatch order, same numbers to ~1e-6) and the
baseline the benchmarks compare against. It is deliberately simple: one run, one
.item() per step, no recording beyond losses and the pre-clip norm.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .config import RunSpec
from .data import Dataset, load_dataset
from .engine import epoch_order, shuffle_generator
from .models import ReferenceModel, init_params
from .optim import reference_optimizer
from .strategies import REGISTRY


@dataclass
class ReferenceResult:
    train_loss: list[float] = field(default_factory=list)  # per epoch, mean of step losses
    val_loss: list[float] = field(default_factory=list)  # per epoch
    grad_norm_pre: list[float] = field(default_factory=list)  # per step, all epochs


def clip_step(spec: RunSpec) -> Callable[[list[torch.Tensor]], object] | None:
    """The registry's plain-PyTorch call for the run's strategy, as `clip(params)` (None for no clipping).

    torch.nn.utils.clip_grad_value_ / clip_grad_norm_ where torch has the rule, clipviz's drop-ins for
    the rest; the exported script calls the same function (`Strategy.export_lines`).
    """
    s = REGISTRY[spec.clip.strategy]
    if not s.call:
        return None
    fn = getattr(importlib.import_module(s.module), s.attr)
    kw = {s.arg: spec.clip.threshold}
    return fn(**kw) if s.stateful else lambda ps: fn(ps, **kw)


def train_reference(spec: RunSpec, epochs: int | None = None, dataset: Dataset | None = None) -> ReferenceResult:
    """Train one run the plain way for `epochs` (default: the spec's)."""
    ds = dataset if dataset is not None else load_dataset(spec.data)
    model = ReferenceModel(spec.model, init_params(spec.model, ds.x_train.shape[-1], spec.seed))
    opt = reference_optimizer(spec.optim, model.parameters())
    clip = clip_step(spec)
    gen = shuffle_generator(spec.seed)
    out = ReferenceResult()
    n, bs = ds.x_train.shape[0], spec.optim.batch_size
    params = list(model.parameters())
    for _ in range(epochs or spec.optim.epochs):
        order = epoch_order(gen, n)
        total, steps = 0.0, 0
        for lo in range(0, n, bs):
            idx = order[lo : lo + bs]
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(ds.x_train[idx]), ds.y_train[idx])
            loss.backward()
            # the pre-clip norm, measured the same way for every strategy (clip_grad_value_ returns none)
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            if clip:
                clip(params)
            opt.step()
            total += loss.item()
            steps += 1
            out.grad_norm_pre.append(float(norm))
        out.train_loss.append(total / steps)
        with torch.no_grad():
            out.val_loss.append(torch.nn.functional.mse_loss(model(ds.x_val), ds.y_val).item())
    return out
