"""Batched models: K runs' parameters stacked on a leading dim, forward by bmm.

Per run, tensors keep PyTorch's layout (Linear weight [out, in], bias [out]) so a
run's slice drops straight into an nn.Module, which is how the tests check us.
DESIGN.md: bmm/baddbmm measured 2-3x faster than torch.func.vmap here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .config import ModelSpec

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leaky_relu": nn.functional.leaky_relu,
    "gelu": nn.functional.gelu,
    "linear": lambda x: x,
}


def param_names(model: ModelSpec) -> list[str]:
    """Names of one run's parameter tensors, in the order the engine keeps them."""
    if model.kind == "rnn":
        return ["rnn.weight_ih", "rnn.weight_hh", "rnn.bias_ih", "rnn.bias_hh", "out.weight", "out.bias"]
    names = []
    for i in range(model.depth):
        names += [f"hidden{i + 1}.weight", f"hidden{i + 1}.bias"]
    return names + ["out.weight", "out.bias"]


def _init_weight(w: Tensor, how: str, gen: torch.Generator) -> None:
    # library initialisers with an explicit generator, so a seed gives the same weights on any device
    if how == "he_uniform":  # Keras he_uniform: U(-sqrt(6/fan_in), +sqrt(6/fan_in))
        nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=gen)
    elif how == "he_normal":
        nn.init.kaiming_normal_(w, nonlinearity="relu", generator=gen)
    elif how == "glorot_uniform":  # Keras' default: U(-sqrt(6/(fan_in+fan_out)), ...)
        nn.init.xavier_uniform_(w, generator=gen)
    elif how == "glorot_normal":
        nn.init.xavier_normal_(w, generator=gen)
    elif how == "torch_default":  # what nn.Linear.reset_parameters does
        nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
    else:
        raise ValueError(f"unknown init {how!r}")


def init_params(model: ModelSpec, n_in: int, seed: int) -> list[Tensor]:
    """One run's initial parameters (CPU float32), a pure function of (model, n_in, seed).

    Hidden weights use model.init times model.init_scale; the output layer uses
    glorot_uniform, Keras' Dense default; biases start at zero as in Keras
    (torch_default also draws biases like nn.Linear).
    """
    gen = torch.Generator().manual_seed(seed)
    w = model.width
    if model.kind == "rnn":
        shapes = [(w, n_in), (w, w), (w,), (w,), (1, w), (1,)]
    else:
        sizes = [n_in] + [w] * model.depth + [1]
        shapes = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            shapes += [(b, a), (b,)]
    params = [torch.zeros(s) for s in shapes]
    weights = [p for p in params if p.dim() == 2]
    for i, p in enumerate(weights):
        is_out = i == len(weights) - 1
        _init_weight(p, "glorot_uniform" if is_out else model.init, gen)
        if not is_out:
            p.mul_(model.init_scale)
    if model.init == "torch_default":
        for wt, b in zip(params[0::2], params[1::2]):
            if model.kind != "rnn" and b.dim() == 1:
                bound = 1 / math.sqrt(wt.shape[1])
                b.uniform_(-bound, bound, generator=gen)
    return params


def forward(model: ModelSpec, params: list[Tensor], x: Tensor) -> Tensor:
    """Predictions [K, B] for inputs x: [B, F] shared by all runs or [K, B, F] (rnn: [.., B, T, F])."""
    if model.kind == "rnn":
        return _forward_rnn(params, x)
    act = _ACTIVATIONS[model.activation]
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers):
        w, b = params[2 * i], params[2 * i + 1]  # [K, out, in], [K, out]
        if h.dim() == 2:  # a batch shared by all runs: an expanded view, not K copies
            h = h.expand(w.shape[0], -1, -1)
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))  # [K, B, out]
        if i < n_layers - 1:
            h = act(h)
    return h.squeeze(-1)


def _forward_rnn(params: list[Tensor], x: Tensor) -> Tensor:
    """Elman RNN, h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), read out from the last h."""
    w_ih, w_hh, b_ih, b_hh, w_out, b_out = params
    k = w_ih.shape[0]
    # input projections for all steps at once: [K, B, T, H]
    xp = torch.matmul(x, w_ih.transpose(1, 2).unsqueeze(1)) + (b_ih + b_hh)[:, None, None, :]
    h = torch.zeros(k, xp.shape[1], w_hh.shape[1], dtype=xp.dtype, device=xp.device)
    w_hh_t = w_hh.transpose(1, 2)
    for t in range(xp.shape[2]):
        h = torch.tanh(torch.baddbmm(xp[:, :, t], h, w_hh_t))  # [K, B, H]
    return torch.baddbmm(b_out.unsqueeze(1), h, w_out.transpose(1, 2)).squeeze(-1)


class ReferenceModel(nn.Module):
    """A plain single-run nn.Module with the same maths: the test oracle and benchmark baseline."""

    def __init__(self, model: ModelSpec, params: list[Tensor]):
        super().__init__()
        self.spec = model
        if model.kind == "rnn":
            self.rnn = nn.RNN(params[0].shape[1], model.width, batch_first=True, nonlinearity="tanh")
            self.out = nn.Linear(model.width, 1)
            mods = [self.rnn.weight_ih_l0, self.rnn.weight_hh_l0, self.rnn.bias_ih_l0, self.rnn.bias_hh_l0]
            mods += [self.out.weight, self.out.bias]
        else:
            sizes = [params[0].shape[1]] + [model.width] * model.depth + [1]
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
            mods = [t for lin in self.layers for t in (lin.weight, lin.bias)]
        with torch.no_grad():
            for dst, src in zip(mods, params):
                dst.copy_(src)

    def forward(self, x: Tensor) -> Tensor:
        if self.spec.kind == "rnn":
            _, h = self.rnn(x)
            return self.out(h[-1]).squeeze(-1)
        act = _ACTIVATIONS[self.spec.activation]
        for i, lin in enumerate(self.layers):
            x = lin(x)
            if i < len(self.layers) - 1:
                x = act(x)
        return x.squeeze(-1)
