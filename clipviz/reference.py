"""The plain single-run loop: nn.Module + torch.optim + torch.nn.utils.clip_grad_*.

This is what a user would write by hand. It is the batched engine's test oracle
(same seed -> same weights, same minibatch order, same numbers to ~1e-6) and the
baseline the benchmarks compare against. It is deliberately simple: one run, one
.item() per step, no recording beyond losses and the pre-clip norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import clipping
from .config import RunSpec
from .data import Dataset, load_dataset
from .engine import epoch_order, shuffle_generator
from .models import ReferenceModel, init_params
from .optim import reference_optimizer


@dataclass
class ReferenceResult:
    train_loss: list[float] = field(default_factory=list)  # per epoch, mean of step losses
    val_loss: list[float] = field(default_factory=list)  # per epoch
    grad_norm_pre: list[float] = field(default_factory=list)  # per step, all epochs


def _clip_fn(spec: RunSpec):
    c = spec.clip
    if c.strategy == "none":
        return None
    if c.strategy == "value":  # torch returns nothing here, so measure the norm first, as the engine records it
        return lambda ps: (
            torch.nn.utils.get_total_norm([p.grad for p in ps]),
            torch.nn.utils.clip_grad_value_(ps, c.threshold),
        )[0]
    if c.strategy == "norm":
        return lambda ps: torch.nn.utils.clip_grad_norm_(ps, c.threshold)
    # torch has no per-tensor, AGC, AutoClip or ZClip: use clipviz's drop-in versions
    if c.strategy == "tensor-norm":
        return lambda ps: clipping.clip_grad_norm_per_tensor_(ps, c.threshold).norm()
    if c.strategy == "agc":
        return lambda ps: clipping.adaptive_grad_clip_(ps, c.threshold)
    if c.strategy == "autoclip":
        return clipping.AutoClip(percentile=c.threshold)
    return clipping.ZClip(z_thresh=c.threshold)


def train_reference(spec: RunSpec, epochs: int | None = None, dataset: Dataset | None = None) -> ReferenceResult:
    """Train one run the plain way for `epochs` (default: the spec's)."""
    ds = dataset if dataset is not None else load_dataset(spec.data)
    model = ReferenceModel(spec.model, init_params(spec.model, ds.x_train.shape[-1], spec.seed))
    opt = reference_optimizer(spec.optim, model.parameters())
    clip = _clip_fn(spec)
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
            norm = clip(params) if clip else torch.nn.utils.get_total_norm([p.grad for p in params])
            opt.step()
            total += loss.item()
            steps += 1
            out.grad_norm_pre.append(float(norm))
        out.train_loss.append(total / steps)
        with torch.no_grad():
            out.val_loss.append(torch.nn.functional.mse_loss(model(ds.x_val), ds.y_val).item())
    return out
