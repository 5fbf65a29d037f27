"""Batched optimizers over [K, ...] parameters, with a learning rate per run.

Why not torch.optim: it takes one scalar lr per parameter group, and our K runs
live in one tensor per layer, each run with its own lr (threshold sweeps vary it)
and its own alive flag (a diverged run freezes). The update rules below follow
torch.optim's single-tensor code line for line; tests check them against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import OptimSpec


def _per_run(v: Tensor, like: Tensor) -> Tensor:
    """[K] -> [K, 1, ...] broadcastable against a [K, ...] tensor."""
    return v.view(-1, *([1] * (like.dim() - 1)))


class BatchedOptimizer:
    """SGD (momentum), Adam or RMSprop with torch.optim's defaults, lr and momentum per run."""

    def __init__(self, name: str, params: list[Tensor], lr: Tensor, momentum: Tensor):
        self.name = name
        self.params = params
        self.lr = [_per_run(lr, p) for p in params]  # [K, 1, ...] each
        self.momentum = [_per_run(momentum, p) for p in params]
        self.state = [torch.zeros_like(p, requires_grad=False) for p in params]
        self.state2 = [torch.zeros_like(p, requires_grad=False) for p in params] if name == "adam" else None
        self.t = 0

    @torch.no_grad()
    def step(self, grads: list[Tensor], alive: Tensor) -> None:
        """One update; runs with alive False keep their parameters (grads of dead runs must be finite)."""
        self.t += 1
        live = [_per_run(alive.to(p.dtype), p) for p in self.params]
        if self.name == "sgd":
            # torch.optim.SGD: buf = m*buf + g (buf starts as g, equal to 0*m + g); p -= lr*buf
            for buf, m, g in zip(self.state, self.momentum, grads):
                buf.mul_(m).add_(g)
            steps = self.state
            scale = [lr * a for lr, a in zip(self.lr, live)]
            for p, s, c in zip(self.params, steps, scale):
                p.sub_(s * c)
        elif self.name == "adam":
            b1, b2, eps = 0.9, 0.999, 1e-8
            bc1, bc2_sqrt = 1 - b1**self.t, (1 - b2**self.t) ** 0.5
            for p, m, v, g, lr, a in zip(self.params, self.state, self.state2, grads, self.lr, live):
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v.sqrt() / bc2_sqrt).add_(eps)
                p.sub_(m / denom * (lr * a / bc1))
        elif self.name == "rmsprop":
            alpha, eps = 0.99, 1e-8
            for p, v, g, lr, a in zip(self.params, self.state, grads, self.lr, live):
                v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
                p.sub_(g / v.sqrt().add_(eps) * (lr * a))
        else:
            raise ValueError(f"unknown optimizer {self.name!r}")


def make_optimizer(specs: list[OptimSpec], params: list[Tensor]) -> BatchedOptimizer:
    dev = params[0].device
    lr = torch.tensor([o.lr for o in specs], dtype=torch.float32, device=dev)
    mom = torch.tensor([o.momentum if o.name == "sgd" else 0.0 for o in specs], dtype=torch.float32, device=dev)
    return BatchedOptimizer(specs[0].name, params, lr, mom)


def reference_optimizer(spec: OptimSpec, params) -> torch.optim.Optimizer:
    """The torch.optim optimizer our batched one must match, for the reference loop."""
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr)
    return torch.optim.RMSprop(params, lr=spec.lr)
