"""Every gradient clipping strategy, batched over K runs, in one registry; plus drop-ins for one model.

Batched layout: each tensor of `grads` / `params` is `[K, ...]`, per run the PyTorch layout
(weight `[out, in]`, bias `[out]`). `make_clipper(strategy, thresholds)` returns a callable
`clipper(grads, params) -> ClipStats` that clips `grads` in place with one threshold per run.
The batched path never syncs with the host (no `.item()`, no Python `if` on tensor values).

Non-finite rules (the engine marks a run diverged from `ClipStats.pre_norm`):
- Norms are accumulated in float64, so finite float32 gradients whose sum of squares overflows
  float32 (elements near 1e20) get a finite, correct norm and are clipped to the threshold.
  `torch.nn.utils.clip_grad_norm_` gets inf there and zeroes every gradient; this is the one place
  we differ from torch. `pre_norm` is inf/nan only when an element is inf/nan (or the true norm
  exceeds float32's max, ~3.4e38, which needs elements near 1e37: it is reported as inf but still clipped).
- A non-finite norm never scales anything, so it never silently zeroes an update: norm, autoclip and
  zclip leave a run with a non-finite global norm unchanged; tensor-norm leaves a tensor with a
  non-finite norm unchanged, agc a unit (the other tensors / units of the run are clipped as usual).
- value clipping is `torch.clamp`: +-inf become +-c, NaN stays NaN (NaN does not count as clipped).
- State: AutoClip appends only finite norms to its history; ZClip computes its warm-up mean/variance
  from the finite warm-up norms only and skips its EMA update on a step whose norm is non-finite.
  (A run with no finite norm in its whole warm-up has a NaN mean and never clips.)

Stats conventions: `clipped` is true when a scale factor < 1 was applied (or, for value, when an element
exceeded c); `frac_elements` counts every element of a scaled run / tensor / unit (exact zeros
included) and, for value, the elements with |g| > c. `post_norm` is derived from the pre-clip norms and
the applied factors (exact in real arithmetic); value clipping measures it again.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from clipviz.config import STRATEGIES, THRESHOLD_MEANING

EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s epsilon: coef = max_norm / (total + 1e-6)
_F64 = torch.float64  # norms accumulate in float64: overflow-safe (1e20**2 overflows float32). CUDA/CPU only.


class ClipStats(NamedTuple):
    """What a clipper measured on one step, per run."""

    pre_norm: Tensor  # [K] float32: global L2 norm over all tensors before clipping
    tensor_norms: Tensor  # [K, L] float32: per-tensor L2 norm before clipping
    post_norm: Tensor  # [K] float32: global L2 norm after clipping
    clipped: Tensor  # [K] bool: the clip changed this run's gradient on this step
    frac_elements: Tensor  # [K] float32: fraction of gradient elements whose value the clip changed


Clipper = Callable[[list[Tensor], list[Tensor]], ClipStats]


# ---- helpers -----------------------------------------------------------------------------------
def _norms64(grads: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(per-tensor [K, L], global [K]) L2 norms in float64."""
    tn = torch.stack([torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1, dtype=_F64) for g in grads], 1)
    return tn, torch.linalg.vector_norm(tn, dim=1)


def global_norms(grads: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(global [K], per-tensor [K, L]) float32 L2 norms, accumulated in float64 so they do not overflow."""
    tn, gn = _norms64(grads)
    return gn.float(), tn.float()


def _bcast(v: Tensor, g: Tensor) -> Tensor:
    """[K] or [K, U] factor -> broadcastable against g [K, ...]."""
    return v.reshape(v.shape + (1,) * (g.ndim - v.ndim))


def _numel(grads: list[Tensor]) -> int:
    return sum(g[0].numel() for g in grads) if grads else 0  # elements per run (shapes only: no sync)


@functools.lru_cache(maxsize=64)
def _weights(shapes: tuple[tuple[int, ...], ...], units: bool, device: torch.device) -> Tensor:
    """Each tensor's (units=False) or unit's (units=True) share of a run's elements, cached: built once per shape."""
    total = max(sum(math.prod(s) for s in shapes), 1)
    w = [[math.prod(s) / s[0]] * s[0] if units and len(s) >= 2 else [math.prod(s)] for s in shapes]
    return torch.tensor([x / total for ws in w for x in ws], dtype=torch.float32, device=device)


def _shapes(grads: list[Tensor]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(g.shape[1:]) for g in grads)


def _stats(tn: Tensor, gn: Tensor, post: Tensor, clipped: Tensor, frac: Tensor) -> ClipStats:
    return ClipStats(gn.float(), tn.float(), post.float(), clipped, frac.float())


def _scale_global(grads: list[Tensor], tn: Tensor, gn: Tensor, max_norm: Tensor) -> ClipStats:
    """Scale every tensor of run k by min(1, max_norm_k / (norm_k + 1e-6)), torch's formula; keep non-finite runs."""
    # per-run thresholds, so torch.nn.utils.clip_grad_norm_ (one float) cannot be called here
    coef = torch.where(torch.isfinite(gn), (max_norm / (gn + EPS)).clamp(max=1.0), 1.0).float()  # [K]
    torch._foreach_mul_(grads, [_bcast(coef, g) for g in grads])  # one dispatch for all tensors
    clipped = coef < 1.0
    return _stats(tn, gn, gn * coef, clipped, clipped)


# ---- the strategies ----------------------------------------------------------------------------
@torch.no_grad()
def clip_none(grads: list[Tensor], params: list[Tensor], thresholds: Tensor) -> ClipStats:
    """No clipping; still measures the norms."""
    tn, gn = _norms64(grads)
    no = torch.zeros_like(gn, dtype=torch.bool)
    return _stats(tn, gn, gn, no, no)


@torch.no_grad()
def clip_by_value(grads: list[Tensor], params: list[Tensor], thresholds: Tensor) -> ClipStats:
    """g_j <- clamp(g_j, -c, c) elementwise, one c per run.

    References: Mikolov (2012), PhD thesis; `torch.nn.utils.clip_grad_value_`, Keras `clipvalue`.
    """
    tn, gn = _norms64(grads)
    n_out = sum((g.abs() > _bcast(thresholds.to(g.dtype), g)).reshape(g.shape[0], -1).sum(1) for g in grads)  # [K]
    for g in grads:  # tensor bounds because c differs per run (clip_grad_value_ takes one float)
        c = _bcast(thresholds.to(g.dtype), g)
        g.clamp_(min=-c, max=c)
    _, post = _norms64(grads)
    return _stats(tn, gn, post, n_out > 0, n_out / max(_numel(grads), 1))


@torch.no_grad()
def clip_by_global_norm(grads: list[Tensor], params: list[Tensor], thresholds: Tensor) -> ClipStats:
    """g <- g * min(1, c / (||g||_2 + 1e-6)), one norm over all tensors of a run.

    References: Pascanu, Mikolov & Bengio (2013), On the difficulty of training recurrent neural networks;
    `torch.nn.utils.clip_grad_norm_` (same formula and epsilon), Keras `global_clipnorm`.
    """
    tn, gn = _norms64(grads)
    return _scale_global(grads, tn, gn, thresholds.to(_F64))


@torch.no_grad()
def clip_by_tensor_norm(grads: list[Tensor], params: list[Tensor], thresholds: Tensor) -> ClipStats:
    """g_l <- g_l * c / max(||g_l||_2, c) for each tensor l on its own (no epsilon: a zero tensor stays zero).

    References: Keras 3 `clipnorm` (`clip_by_norm` in keras/src/optimizers/base_optimizer.py), `tf.clip_by_norm`.
    """
    tn, gn = _norms64(grads)
    c = thresholds.to(_F64).unsqueeze(1)  # [K, 1]
    coef = torch.where(torch.isfinite(tn), c / torch.maximum(tn, c), 1.0).float()  # [K, L]
    torch._foreach_mul_(grads, [_bcast(coef[:, i], g) for i, g in enumerate(grads)])
    hit = coef < 1.0
    frac = (hit.float() * _weights(_shapes(grads), False, coef.device)).sum(1)
    return _stats(tn, gn, torch.linalg.vector_norm(tn * coef, dim=1), hit.any(1), frac)


def _units(x: Tensor) -> Tensor:
    """[K, U, n] view: rows of a >=2-D-per-run tensor are units; a 1-D-per-run tensor is one unit (NFNets)."""
    return x.reshape(x.shape[0], x.shape[1], -1) if x.ndim >= 3 else x.reshape(x.shape[0], 1, -1)


@torch.no_grad()
def adaptive_grad_clip(grads: list[Tensor], params: list[Tensor], thresholds: Tensor, eps: float = 1e-3) -> ClipStats:
    """Unit-wise: m_i = lambda * max(||W_i||, eps); if ||G_i|| > m_i then G_i <- G_i * m_i / max(||G_i||, 1e-6).

    A unit is a row of a PyTorch weight `[out, in]` (norm over all dims after `out`); a bias is one unit.
    optax triggers on `>=`; at equality its factor is 1, so `>` gives the same result.

    References: Brock, De, Smith & Simonyan (2021), High-Performance Large-Scale Image Recognition Without
    Normalization (NFNets); optax `adaptive_grad_clip` / `unitwise_norm`.
    """
    gu = [torch.linalg.vector_norm(_units(g), dim=2, dtype=_F64) for g in grads]  # L x [K, U_l]
    wu = torch.cat([torch.linalg.vector_norm(_units(p), dim=2, dtype=_F64) for p in params], 1)  # [K, U]
    g_u = torch.cat(gu, 1)  # [K, U]
    max_norm = thresholds.to(_F64).unsqueeze(1) * wu.clamp(min=eps)
    hit = (g_u > max_norm) & torch.isfinite(g_u)  # a non-finite unit norm scales nothing
    scale = torch.where(hit, max_norm / g_u.clamp(min=1e-6), 1.0)  # [K, U]
    scale32 = scale.float()
    parts = scale32.split([u.shape[1] for u in gu], 1)
    torch._foreach_mul_(grads, [_bcast(s if g.ndim >= 3 else s[:, 0], g) for s, g in zip(parts, grads)])
    hit = scale32 < 1.0
    frac = (hit.float() * _weights(_shapes(grads), True, hit.device)).sum(1)
    tn = torch.stack([torch.linalg.vector_norm(u, dim=1) for u in gu], 1)  # [K, L] from the unit norms
    gn = torch.linalg.vector_norm(g_u, dim=1)
    return _stats(tn, gn, torch.linalg.vector_norm(g_u * scale32, dim=1), hit.any(1), frac)


class AutoClipState:
    """AutoClip: append ||g|| to a bounded history, clip the global norm at its p-th percentile.

    c_t = percentile_p(finite norms so far, last `history` of them); g <- g * min(1, c_t / (||g|| + 1e-6)).
    The current norm enters the history before the percentile is taken, as in the reference code.
    `threshold` holds the last c_t per run ([K] float32; inf before a run's first finite norm).

    References: Seetharaman, Wichern, Pardo & Le Roux (2020), AutoClip: Adaptive Gradient Clipping for
    Source Separation Networks; github.com/pseeth/autoclip (np.percentile + clip_grad_norm_).
    """

    def __init__(self, thresholds: Tensor, history: int = 1000):
        k, dev = thresholds.numel(), thresholds.device
        self.q = thresholds.reshape(-1).to(_F64) / 100.0  # [K] percentile as a fraction
        self.size = history
        self.ring = torch.full((k, history), math.inf, dtype=_F64, device=dev)  # [K, H] norms in arrival order
        self.sorted = torch.full((k, 0), math.inf, dtype=_F64, device=dev)  # [K, w] same norms sorted, inf = empty
        self.count = torch.zeros(k, dtype=torch.long, device=dev)  # finite norms seen per run
        self._j = torch.arange(history, device=dev)
        self._inf = torch.full((k, 1), math.inf, dtype=_F64, device=dev)
        self.threshold = torch.full((k,), math.inf, device=dev)

    @torch.no_grad()
    def __call__(self, grads: list[Tensor], params: list[Tensor]) -> ClipStats:
        tn, gn = _norms64(grads)
        fin = torch.isfinite(gn)
        slot = (self.count % self.size).unsqueeze(1)  # [K, 1] ring-buffer position, per run
        old = self.ring.gather(1, slot)  # [K, 1] the norm it evicts (inf while the ring is not full)
        new = torch.where(fin, gn, old.squeeze(1)).unsqueeze(1)  # a non-finite norm re-inserts `old`: no change
        self.ring.scatter_(1, slot, new)
        self.count += fin
        # keep the history sorted by one delete + insert per step (gather over [K, w]): re-sorting
        # [250, 1000] every step costs ~3-30 ms on CPU, and torch.quantile cannot take one q per row
        s = self.sorted
        if s.shape[1] < self.size:  # grows one column per call (host-side shape), an empty slot = inf
            s = torch.cat([s, self._inf], 1)
        j = self._j[: s.shape[1]]  # [w]
        r = torch.searchsorted(s, old)  # [K, 1] where `old` sits
        ins = torch.searchsorted(s, new) - (old < new).long()  # [K, 1] where `new` goes once `old` is out
        m = j - (j > ins)  # [K, w] source index in s without `old` (long - bool -> long)
        src = (m + (m >= r)).clamp(max=s.shape[1] - 1)
        self.sorted = s = torch.where(j == ins, new, s.gather(1, src))
        # np.percentile's 'linear' method, per run: index (n - 1) q, interpolate between its neighbours
        last = (self.count.clamp(max=self.size) - 1).clamp(min=0)  # [K] index of the largest finite entry
        pos = self.q * last
        lo = pos.floor().long()
        a = s.gather(1, lo.unsqueeze(1)).squeeze(1)
        b = s.gather(1, torch.minimum(lo + 1, last).unsqueeze(1)).squeeze(1)
        thr = torch.where(self.count > 0, a + (b - a) * (pos - lo), math.inf)
        self.threshold = thr.float()
        return _scale_global(grads, tn, gn, thr)


class ZClipState:
    """ZClip (z-score mode, 'adaptive_scaling'): EMA mean/variance of ||g||, clip outliers.

    Warm-up: the first `warmup_steps` norms are not clipped; they initialise mu = mean, var = population
    variance. Then z = (||g|| - mu) / (sigma + eps); if z > z_t the norm is clipped to
    c = mu + z_t * sigma / (z / z_t), g <- g * c / (||g|| + 1e-6), and the EMA is updated with c instead
    of ||g||: mu <- a mu + (1 - a) x;  var <- a var + (1 - a) (x - mu_new)^2.
    Follows the official code with `max_grad_norm=None` and `clip_factor=1` (no extra fixed cap).
    `threshold` holds the last c per run ([K] float32; inf when nothing was clipped).

    References: Kumar, Owen, Chowdhury & Güra (2025), ZClip: Adaptive Spike Mitigation for LLM
    Pre-Training, arXiv:2504.02507; github.com/bluorion-com/ZClip, zclip/zclip.py.
    """

    def __init__(self, thresholds: Tensor, alpha: float = 0.97, warmup_steps: int = 25, eps: float = 1e-6):
        k, dev = thresholds.numel(), thresholds.device
        self.z_thresh = thresholds.reshape(-1).to(_F64)  # [K]
        self.alpha, self.warmup_steps, self.eps = alpha, warmup_steps, eps
        self.buf = torch.zeros(k, warmup_steps, dtype=_F64, device=dev)
        self.step = 0  # host-side counter: warm-up is the first `warmup_steps` calls, no tensor read needed
        self.mean = torch.zeros(k, dtype=_F64, device=dev)
        self.var = torch.zeros(k, dtype=_F64, device=dev)
        self.threshold = torch.full((k,), math.inf, device=dev)

    @torch.no_grad()
    def __call__(self, grads: list[Tensor], params: list[Tensor]) -> ClipStats:
        tn, gn = _norms64(grads)
        if self.step < self.warmup_steps:  # host-side step count, not a tensor value
            self.buf[:, self.step] = gn
            self.step += 1
            if self.step == self.warmup_steps:  # initialise from the finite warm-up norms only
                fin = torch.isfinite(self.buf)
                n = fin.sum(1)
                self.mean = torch.where(fin, self.buf, 0.0).sum(1) / n
                self.var = torch.where(fin, self.buf - self.mean.unsqueeze(1), 0.0).square().sum(1) / n
            return _scale_global(grads, tn, gn, torch.full_like(gn, math.inf))
        self.step += 1
        zt, std = self.z_thresh, self.var.sqrt()
        z = (gn - self.mean) / (std + self.eps)
        spike = (z > zt) & torch.isfinite(gn)
        thr = torch.where(spike, self.mean + zt * std / (z / zt), math.inf)
        eff = torch.where(spike, thr, gn)  # the EMA sees the clipped norm
        mean = self.alpha * self.mean + (1 - self.alpha) * eff
        var = self.alpha * self.var + (1 - self.alpha) * (eff - mean).square()
        ok = torch.isfinite(eff)  # a non-finite norm does not enter the EMA
        self.mean, self.var = torch.where(ok, mean, self.mean), torch.where(ok, var, self.var)
        self.threshold = thr.float()
        # official: coef = c / (||g|| + 1e-6) only when ||g|| > c; a spike always has ||g|| > c
        return _scale_global(grads, tn, gn, thr)


# ---- registry ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StrategyInfo:
    name: str  # key in config.STRATEGIES
    title: str  # as users know it
    formula: str  # LaTeX
    reference: str  # paper / library it comes from
    same_as: str  # library functions that compute the same thing
    threshold_meaning: str  # what the one number per run means
    default: float | None  # a sensible threshold
    stateful: bool  # the clipper keeps history: one per group of runs, never reused across jobs


def _info(name: str, title: str, formula: str, reference: str, same_as: str, stateful: bool = False) -> StrategyInfo:
    meaning, default = THRESHOLD_MEANING[name]
    return StrategyInfo(name, title, formula, reference, same_as, meaning, default, stateful)


_N = r"\lVert g\rVert_2"
STRATEGY_INFO: dict[str, StrategyInfo] = {
    i.name: i
    for i in (
        _info("none", "No clipping", r"g \leftarrow g", "", ""),
        _info(
            "value",
            "Value",
            r"g_j \leftarrow \min(\max(g_j, -c), c)",
            "Mikolov (2012), PhD thesis",
            "torch.nn.utils.clip_grad_value_, Keras clipvalue, optax.clip",
        ),
        _info(
            "norm",
            "Global norm",
            rf"g \leftarrow g \min\left(1, \frac{{c}}{{{_N} + 10^{{-6}}}}\right)",
            "Pascanu, Mikolov & Bengio (2013), On the difficulty of training recurrent neural networks",
            "torch.nn.utils.clip_grad_norm_, Keras global_clipnorm (and standalone Keras 2 clipnorm), "
            "optax.clip_by_global_norm",
        ),
        _info(
            "tensor-norm",
            "Per-tensor norm",
            r"g_l \leftarrow g_l \frac{c}{\max(\lVert g_l\rVert_2, c)}",
            "Keras 3 clip_by_norm (keras/src/optimizers/base_optimizer.py)",
            "Keras 3 clipnorm, tf.clip_by_norm per variable",
        ),
        _info(
            "agc",
            "Adaptive gradient clipping (AGC)",
            r"G_i \leftarrow G_i \frac{\lambda \max(\lVert W_i\rVert, 10^{-3})}{\max(\lVert G_i\rVert, 10^{-6})}"
            r"\ \text{if}\ \lVert G_i\rVert > \lambda \max(\lVert W_i\rVert, 10^{-3})",
            "Brock, De, Smith & Simonyan (2021), High-Performance Large-Scale Image Recognition Without "
            "Normalization (NFNets)",
            "optax.adaptive_grad_clip, timm adaptive_clip_grad",
        ),
        _info(
            "autoclip",
            "AutoClip",
            rf"c_t = \mathrm{{percentile}}_p(\lVert g_1\rVert, \dots, \lVert g_t\rVert),\ "
            rf"g \leftarrow g \min\left(1, \frac{{c_t}}{{{_N} + 10^{{-6}}}}\right)",
            "Seetharaman, Wichern, Pardo & Le Roux (2020), AutoClip: Adaptive Gradient Clipping for Source "
            "Separation Networks",
            "github.com/pseeth/autoclip",
            stateful=True,
        ),
        _info(
            "zclip",
            "ZClip",
            rf"z = \frac{{{_N} - \mu}}{{\sigma + \epsilon}},\ z > z_t:\ "
            rf"g \leftarrow g \frac{{\mu + z_t^2 \sigma / z}}{{{_N} + 10^{{-6}}}}",
            "Kumar, Owen, Chowdhury & Güra (2025), ZClip: Adaptive Spike Mitigation for LLM Pre-Training",
            "zclip.ZClip(mode='zscore', clip_option='adaptive_scaling', max_grad_norm=None)",
            stateful=True,
        ),
    )
}
_STATELESS = {
    "none": clip_none,
    "value": clip_by_value,
    "norm": clip_by_global_norm,
    "tensor-norm": clip_by_tensor_norm,
    "agc": adaptive_grad_clip,
}
assert set(STRATEGY_INFO) == set(STRATEGIES), "a strategy needs a registry line"


def make_clipper(strategy: str, thresholds: Tensor) -> Clipper:
    """clipper(grads, params) -> ClipStats for K = thresholds.numel() runs; clips grads in place.

    thresholds: [K] float32 on the grads' device, the strategy's one number per run (see STRATEGY_INFO).
    """
    thr = thresholds.reshape(-1)
    if strategy == "autoclip":
        return AutoClipState(thr)
    if strategy == "zclip":
        return ZClipState(thr)
    if strategy not in _STATELESS:
        raise ValueError(f"unknown clipping strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    fn = _STATELESS[strategy]
    return lambda grads, params: fn(grads, params, thr)


# ---- drop-ins for one model: the batched code with K = 1 ---------------------------------------
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
    return clip_by_value(grads, ps, _one(grads, clip_value)).pre_norm[0] if grads else torch.tensor(0.0)


def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor], max_norm: float, error_if_nonfinite: bool = False
) -> Tensor:
    """Like torch.nn.utils.clip_grad_norm_ (L2); returns the pre-clip total norm. Overflow-safe, unlike torch."""
    grads, ps = _k1(parameters)
    if not grads:
        return torch.tensor(0.0)
    norm = clip_by_global_norm(grads, ps, _one(grads, max_norm)).pre_norm[0]
    if error_if_nonfinite and not torch.isfinite(norm):  # grads were left unchanged, as torch does on raising
        raise RuntimeError(
            f"The total norm of order 2.0 for gradients from `parameters` is non-finite, so it cannot be clipped. "
            "To disable this error and scale the gradients by the non-finite norm anyway, set "
            "`error_if_nonfinite=False`"
        )
    return norm


def clip_grad_norm_per_tensor_(parameters: Tensor | Iterable[Tensor], max_norm: float) -> Tensor:
    """Keras 3 clipnorm for a torch model; returns the 1-D pre-clip norms, one per tensor with a grad."""
    grads, ps = _k1(parameters)
    return clip_by_tensor_norm(grads, ps, _one(grads, max_norm)).tensor_norms[0] if grads else torch.zeros(0)


def adaptive_grad_clip_(parameters: Tensor | Iterable[Tensor], clipping: float, eps: float = 1e-3) -> Tensor:
    """AGC (optax.adaptive_grad_clip) for a torch model; returns the pre-clip global norm."""
    grads, ps = _k1(parameters)
    return adaptive_grad_clip(grads, ps, _one(grads, clipping), eps).pre_norm[0] if grads else torch.tensor(0.0)


class AutoClip:
    """AutoClip for one model: `norm = autoclip(model.parameters())` between backward() and step()."""

    def __init__(self, percentile: float = 10.0, history: int = 1000):
        self.percentile, self.history = percentile, history
        self._state: AutoClipState | None = None

    def __call__(self, parameters: Tensor | Iterable[Tensor]) -> Tensor:
        grads, ps = _k1(parameters)
        if not grads:
            return torch.tensor(0.0)
        if self._state is None:
            self._state = AutoClipState(_one(grads, self.percentile), self.history)
        return self._state(grads, ps).pre_norm[0]

    @property
    def threshold(self) -> Tensor | None:
        """The clipping norm used on the last call (the percentile of the history), or None before any."""
        return None if self._state is None else self._state.threshold[0]


class ZClip:
    """ZClip for one model: `norm = zclip(model.parameters())` between backward() and step()."""

    def __init__(self, alpha: float = 0.97, z_thresh: float = 2.5, warmup_steps: int = 25, eps: float = 1e-6):
        self.alpha, self.z_thresh, self.warmup_steps, self.eps = alpha, z_thresh, warmup_steps, eps
        self._state: ZClipState | None = None

    def __call__(self, parameters: Tensor | Iterable[Tensor]) -> Tensor:
        grads, ps = _k1(parameters)
        if not grads:
            return torch.tensor(0.0)
        if self._state is None:
            self._state = ZClipState(_one(grads, self.z_thresh), self.alpha, self.warmup_steps, self.eps)
        return self._state(grads, ps).pre_norm[0]

    @property
    def threshold(self) -> Tensor | None:
        """The clipping norm used on the last call (inf: no clip that step), or None before any."""
        return None if self._state is None else self._state.threshold[0]
