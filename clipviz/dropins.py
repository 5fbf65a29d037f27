"""Drop-in clippers for one PyTorch model: the batched rules of `clipviz.clipping` with K = 1.

Call them between `loss.backward()` and `opt.step()`, like `torch.nn.utils.clip_grad_norm_`; each returns the
norm it measured before clipping. The exported code and the reference loop use them where torch has no
equivalent (the registry, clipviz.strategies, names which).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from clipviz.clip_state import AutoClipState, ZClipState
from clipviz.clipping import _ListClipper, make_clipper


def _k1(parameters: Tensor | Iterable[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """[1, ...] views of the grads (in-place clipping writes through to p.grad) and of the params."""
    ps = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    ps = [p for p in ps if p.grad is not None]
    return [p.grad.unsqueeze(0) for p in ps], [p.detach().unsqueeze(0) for p in ps]


def _one(grads: list[Tensor], value: float) -> Tensor:
    return torch.tensor([value], dtype=torch.float32, device=grads[0].device)


def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float) -> Tensor:
    """Like torch.nn.utils.clip_grad_value_; returns the pre-clip global norm."""
    grads, ps = _k1(parameters)
    return make_clipper("value", _one(grads, clip_value))(grads, ps).pre_norm[0] if grads else torch.tensor(0.0)


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float, error_if_nonfinite: bool = False) -> Tensor:
    """Like torch.nn.utils.clip_grad_norm_ (L2); returns the pre-clip total norm. Overflow-safe, unlike torch."""
    grads, ps = _k1(parameters)
    if not grads:
        return torch.tensor(0.0)
    norm = make_clipper("norm", _one(grads, max_norm))(grads, ps).pre_norm[0]
    if error_if_nonfinite and not torch.isfinite(norm):  # grads were left unchanged, as torch does on raising
        raise RuntimeError(
            "The total norm of order 2.0 for gradients from `parameters` is non-finite, so it cannot be clipped. "
            "To disable this error and scale the gradients by the non-finite norm anyway, set "
            "`error_if_nonfinite=False`"
        )
    return norm


def clip_grad_norm_per_tensor_(parameters: Tensor | Iterable[Tensor], max_norm: float) -> Tensor:
    """Keras 3 clipnorm for a torch model; returns the 1-D pre-clip norms, one per tensor with a grad."""
    grads, ps = _k1(parameters)
    return make_clipper("tensor-norm", _one(grads, max_norm))(grads, ps).tensor_norms[0] if grads else torch.zeros(0)


def adaptive_grad_clip_(parameters: Tensor | Iterable[Tensor], clipping: float, eps: float = 1e-3) -> Tensor:
    """AGC (optax.adaptive_grad_clip) for a torch model; returns the pre-clip global norm."""
    grads, ps = _k1(parameters)
    return _ListClipper("agc", _one(grads, clipping), eps)(grads, ps).pre_norm[0] if grads else torch.tensor(0.0)


class _StatefulDropIn:
    _state: AutoClipState | ZClipState | None = None

    def _make(self, grads: list[Tensor]) -> AutoClipState | ZClipState:  # K=1 state on the grads' device
        raise NotImplementedError

    def __call__(self, parameters: Tensor | Iterable[Tensor]) -> Tensor:
        """Clip the grads in place; returns the pre-clip global norm."""
        grads, ps = _k1(parameters)
        if not grads:
            return torch.tensor(0.0)
        if self._state is None:
            self._state = self._make(grads)
        return self._state(grads, ps).pre_norm[0]

    @property
    def threshold(self) -> Tensor | None:
        """The clipping norm used on the last call (inf: no clip that step), or None before any call."""
        return None if self._state is None else self._state.threshold[0]


class AutoClip(_StatefulDropIn):
    """AutoClip for one model: `norm = autoclip(model.parameters())` between backward() and step()."""

    def __init__(self, percentile: float = 10.0, history: int = 1000):
        self.percentile, self.history = percentile, history

    def _make(self, grads: list[Tensor]) -> AutoClipState:
        return AutoClipState(_one(grads, self.percentile), self.history)


class ZClip(_StatefulDropIn):
    """ZClip for one model: `norm = zclip(model.parameters())` between backward() and step()."""

    def __init__(self, alpha: float = 0.97, z_thresh: float = 2.5, warmup_steps: int = 25, eps: float = 1e-6):
        self.alpha, self.z_thresh, self.warmup_steps, self.eps = alpha, z_thresh, warmup_steps, eps

    def _make(self, grads: list[Tensor]) -> ZClipState:
        return ZClipState(_one(grads, self.z_thresh), self.alpha, self.warmup_steps, self.eps)
