"""The history of the adaptive rules, per run: AutoClip's percentile of past norms, ZClip's EMA z-score.

Each takes this step's global norms [K] (float64) and returns the norm limit [K] to clip at (inf = none);
`clipping.Clipper` applies it as a global-norm clip to the rule's own runs. Host-sync free: no `.item()`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from clipviz.clipping import ClipStats

_F64 = torch.float64  # norms and statistics in float64, as the clipping core keeps them


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
        self._j1 = self._j - 1  # (long - bool is not allowed, long + bool is)
        self._inf = torch.full((k, 1), math.inf, dtype=_F64, device=dev)
        self.threshold = torch.full((k,), math.inf, device=dev)

    def update(self, gn: Tensor) -> Tensor:
        """Take this step's global norms [K] (float64); return the norm limit c_t [K] (float64, inf = none)."""
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
        m = self._j1[: s.shape[1]] + (j <= ins)  # [K, w] = j - (j > ins): source index in s without `old`
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
        return thr

    def __call__(self, grads: list[Tensor], params: list[Tensor]) -> ClipStats:
        """Clip per-tensor [K, ...] grads in place (make_clipper's interface), through the flat core."""
        from clipviz.clipping import _list_call  # at call time: clipping imports this module

        return _list_call(self, grads, params, "autoclip")


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

    def update(self, gn: Tensor) -> Tensor:
        """Take this step's global norms [K] (float64); return the norm limit [K] (float64, inf = none)."""
        if self.step < self.warmup_steps:  # host-side step count, not a tensor value
            self.buf[:, self.step] = gn
            self.step += 1
            if self.step == self.warmup_steps:  # initialise from the finite warm-up norms only
                fin = torch.isfinite(self.buf)
                n = fin.sum(1)
                self.mean = torch.where(fin, self.buf, 0.0).sum(1) / n
                self.var = torch.where(fin, self.buf - self.mean.unsqueeze(1), 0.0).square().sum(1) / n
            return torch.full_like(gn, math.inf)
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
        return thr

    def __call__(self, grads: list[Tensor], params: list[Tensor]) -> ClipStats:
        """Clip per-tensor [K, ...] grads in place (make_clipper's interface), through the flat core."""
        from clipviz.clipping import _list_call  # at call time: clipping imports this module

        return _list_call(self, grads, params, "zclip")
