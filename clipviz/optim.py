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


class BatchedOptimizer:
    """SGD (momentum), Adam or RMSprop with torch.optim's defaults on one flat [K, P] buffer, lr and momentum per run.

    Every update is in place on the flat buffer: one op per line below, whatever K and the model are.
    """

    def __init__(self, name: str, flat: Tensor, lr: Tensor, momentum: Tensor):
        self.name = name
        self.flat = flat  # [K, P] parameters (a leaf that may require grad: updated under no_grad)
        self.lr = lr.view(-1, 1)  # [K, 1]
        self.momenta = momentum.reshape(-1)  # [K], kept for subset()
        # one momentum for every run (the usual case) is a Python float: a scalar multiply is cheaper
        m = momentum.unique()
        self.momentum = float(m[0]) if m.numel() == 1 else momentum.view(-1, 1)
        self.state = torch.zeros_like(flat, requires_grad=False)
        self.state2 = torch.zeros_like(flat, requires_grad=False) if name == "adam" else None
        self.t = 0
        if name not in ("sgd", "adam", "rmsprop"):
            raise ValueError(f"unknown optimizer {name!r}")

    def subset(self, flat: Tensor, rows: Tensor) -> BatchedOptimizer:
        """The same optimizer for the runs `rows` only (their state carried over), stepping `flat` [len(rows), P]."""
        out = BatchedOptimizer(self.name, flat, self.lr.view(-1)[rows], self.momenta[rows])
        out.state = self.state[rows]
        out.state2 = self.state2[rows] if self.state2 is not None else None
        out.t = self.t
        return out

    @torch.no_grad()
    def step(self, g: Tensor, alive: Tensor | None) -> None:
        """One update with gradient g [K, P]; runs with alive False keep their parameters (g must be finite there).
        alive None: every run steps."""
        p = self.flat
        lr = self.lr if alive is None else self.lr * alive.unsqueeze(1)  # [K, 1]: 0 for a frozen run
        if self.name == "sgd":
            # torch.optim.SGD: buf = m*buf + g (buf starts as g, equal to 0*m + g); p -= lr*buf
            buf = self.state.mul_(self.momentum).add_(g)
            p.addcmul_(buf, lr, value=-1.0)
        elif self.name == "adam":
            self.t += 1  # adam's bias correction only (a counter torch.compile would guard on: sgd never moves it)
            b1, b2, eps = 0.9, 0.999, 1e-8
            bc1, bc2_sqrt = 1 - b1**self.t, (1 - b2**self.t) ** 0.5
            m, v = self.state, self.state2
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt).add_(eps)
            p.sub_(m / denom * (lr / bc1))
        else:  # rmsprop
            alpha, eps = 0.99, 1e-8
            v = self.state
            v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
            p.sub_(g / v.sqrt().add_(eps) * lr)


def make_optimizer(specs: list[OptimSpec], flat: Tensor) -> BatchedOptimizer:
    dev = flat.device
    lr = torch.tensor([o.lr for o in specs], dtype=torch.float32, device=dev)
    mom = torch.tensor([o.momentum if o.name == "sgd" else 0.0 for o in specs], dtype=torch.float32, device=dev)
    return BatchedOptimizer(specs[0].name, flat, lr, mom)


def reference_optimizer(spec: OptimSpec, params) -> torch.optim.Optimizer:
    """The torch.optim optimizer our batched one must match, for the reference loop."""
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr)
    return torch.optim.RMSprop(params, lr=spec.lr)
