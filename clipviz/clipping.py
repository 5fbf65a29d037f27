"""The rules of every registry strategy (clipviz.strategies), batched over K runs on a flat [K, P] buffer.

Drop-ins for one model live in clipviz.dropins, AutoClip's and ZClip's history in clipviz.clip_state.

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

import copy
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from clipviz.clip_state import AutoClipState, ZClipState
from clipviz.strategies import NAMES as STRATEGIES
from clipviz.strategies import REGISTRY, Strategy

EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s epsilon: coef = max_norm / (total + 1e-6)
_F64 = torch.float64  # norms accumulate in float64: overflow-safe (1e20**2 overflows float32). CUDA/CPU only.


class ClipStats(NamedTuple):
    """What a clipper measured on one step, per run."""

    # norms and fractions are float64 from Clipper (the engine path), float32 from make_clipper and the drop-ins
    pre_norm: Tensor  # [K]: global L2 norm over all tensors before clipping
    tensor_norms: Tensor | None  # [K, L]: per-tensor L2 norm before clipping (None: detail or layer_norms False)
    post_norm: Tensor | None  # [K]: global L2 norm after clipping (None: Clipper(detail=False))
    clipped: Tensor  # [K] bool: the clip changed this run's gradient on this step
    frac_elements: Tensor  # [K]: fraction of gradient elements whose value the clip changed


# ---- layout: one run's tensors side by side in a flat [K, P] buffer ------------------------------
class Layout:
    """Where each of a run's parameter tensors sits in a flat [K, P] buffer.

    Every rule works on the flat buffer: elementwise work is one op over all K runs and all
    tensors, and per-tensor / per-unit norms are reductions over views of each tensor. On these tiny models
    the per-op overhead dominates, so this is what makes a K-run step cost about one run's step.
    """

    def __init__(self, shapes: Sequence[Sequence[int]], device: torch.device | str = "cpu"):
        self.shapes = tuple(tuple(int(d) for d in s) for s in shapes)
        self.sizes = [math.prod(s) for s in self.shapes]
        self.numel = sum(self.sizes)  # P
        n = len(self.shapes)
        # units (AGC): rows of a >=2-D tensor (weight [out, in]); a 1-D or scalar tensor is one unit (NFNets)
        unit_sizes = []
        for s, size in zip(self.shapes, self.sizes, strict=True):
            rows = s[0] if len(s) >= 2 else 1
            unit_sizes += [size // max(rows, 1)] * rows
        self.n_tensors, self.n_units = n, len(unit_sizes)
        self.seg = torch.repeat_interleave(torch.arange(n), torch.tensor(self.sizes)).to(device)  # [P]
        self.unit = torch.repeat_interleave(torch.arange(self.n_units), torch.tensor(unit_sizes)).to(device)  # [P]
        total = max(self.numel, 1)
        self.tensor_share = torch.tensor(self.sizes, dtype=_F64, device=device) / total  # [L]
        self.unit_share = torch.tensor(unit_sizes, dtype=_F64, device=device) / total  # [U]
        self.rows = [s[0] if len(s) >= 2 else 1 for s in self.shapes]  # units per tensor

    def split(self, flat: Tensor) -> list[Tensor]:
        """[K, P] -> views [K, *shape] per tensor (writes go through to flat)."""
        k = flat.shape[0]
        return [t.view(k, *s) for t, s in zip(flat.split(self.sizes, 1), self.shapes, strict=True)]

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """Per-tensor [K, ...] -> a new flat [K, P] tensor."""
        return torch.cat([t.reshape(t.shape[0], -1) for t in tensors], 1)

    def tensor_norms(self, x: Tensor) -> Tensor:
        """[K, P] -> [K, L] float64 L2 norm of each tensor, accumulated in float64 (no float32 overflow)."""
        return torch.stack([torch.linalg.vector_norm(p, dim=1, dtype=_F64) for p in x.split(self.sizes, 1)], 1)

    def unit_sums(self, x: Tensor) -> Tensor:
        """[K, P] -> [K, U] per-unit sums (AGC) over views of x.

        Not index_add_ (measured ~6x slower here at K=48) and not x @ onehot (inf * 0 = NaN would leak
        one unit's overflow into every other unit's norm).
        """
        parts = x.split(self.sizes, 1)
        return torch.cat([p.reshape(p.shape[0], r, -1).sum(2) for p, r in zip(parts, self.rows, strict=True)], 1)


# ---- the rules, each on the flat buffer: a factor per run / tensor / unit, or a clamp ------------
# Each takes the measured float64 norms and returns (factor, hit): hit marks what the rule changed.
def clip_by_value(g: Tensor, c: Tensor, neg_c: Tensor | None = None) -> Tensor:
    """g_j <- clamp(g_j, -c, c) elementwise, one c per run ([K, 1], inf = off); returns elements changed [K]
    (float32 counts, exact below 2^24 elements a run).

    Non-finite: +-inf become +-c and NaN stays NaN (torch.clamp), so NaN does not count as clipped.
    References: Mikolov (2012), PhD thesis; `torch.nn.utils.clip_grad_value_`, Keras `clipvalue`.
    """
    # |g| > c as 1.0 / 0.0 in place of |g| (NaN > c is false): a bool result and its sum took 3x longer here,
    # measured 134 vs 42 us at K=250 on the tutorial
    n_out = g.abs().gt_(c).sum(1)  # [K]
    # = g.clamp_(-c, c), the same bits (NaN stays NaN, +-inf -> +-c): clamp_ with per-run tensor bounds takes a
    # slow broadcast path, measured 7x slower here at K=125 than two in-place minimum/maximum
    torch.minimum(g, c, out=g)
    torch.maximum(g, -c if neg_c is None else neg_c, out=g)
    return n_out


def global_norm_factor(gn: Tensor, c: Tensor) -> Tensor:
    """min(1, c / (||g||_2 + 1e-6)) per run [K]; 1 where the norm is non-finite (never zero an update).

    References: Pascanu, Mikolov & Bengio (2013), On the difficulty of training recurrent neural networks;
    `torch.nn.utils.clip_grad_norm_` (same formula and epsilon), Keras `global_clipnorm`.
    """
    return torch.where(torch.isfinite(gn), (c / (gn + EPS)).clamp(max=1.0), 1.0)


def tensor_norm_factor(tn: Tensor, c: Tensor) -> Tensor:
    """c / max(||g_l||_2, c) per tensor [K, L] (no epsilon: a zero tensor stays zero); 1 where non-finite.

    References: Keras 3 `clipnorm` (`clip_by_norm` in keras/src/optimizers/base_optimizer.py), `tf.clip_by_norm`.
    """
    return torch.where(torch.isfinite(tn), c / torch.maximum(tn, c), 1.0)


def agc_factor(gu: Tensor, wu: Tensor, lam: Tensor, eps: float = 1e-3) -> Tensor:
    """Unit-wise: m_i = lambda * max(||W_i||, eps); factor m_i / max(||G_i||, 1e-6) where ||G_i|| > m_i, else 1.

    A unit is a row of a PyTorch weight `[out, in]`; a bias is one unit. optax triggers on `>=`; at equality
    its factor is 1, so `>` gives the same result. A non-finite unit norm scales nothing.
    References: Brock, De, Smith & Simonyan (2021), High-Performance Large-Scale Image Recognition Without
    Normalization (NFNets); optax `adaptive_grad_clip` / `unitwise_norm`.
    """
    max_norm = lam * wu.clamp(min=eps)
    hit = (gu > max_norm) & torch.isfinite(gu)
    return torch.where(hit, max_norm / gu.clamp(min=1e-6), 1.0)


# ---- one rule per registry entry, each on its own runs' rows only --------------------------------
# A rule gets its group's rows g [Kg, P] (clipped in place), w [Kg, P] (agc) and the pre-clip norms
# gn [Kg] / tn [Kg, L] (float64; tn is None unless the Clipper measures per-tensor norms), and returns
# (post_norm [Kg], or None when `detail` is off, clipped [Kg] bool, frac_elements [Kg] float64).
class _Rule:
    needs_params = False  # reads the parameters (agc)
    needs_tensor_norms = False  # reads tn (tensor-norm)

    def __init__(self, thresholds: Tensor, layout: Layout, state=None, agc_eps: float = 1e-3, detail: bool = True):
        self.thr, self.layout, self.detail = thresholds.reshape(-1).to(_F64), layout, detail  # [Kg]

    def __call__(self, g: Tensor, w: Tensor | None, gn: Tensor, tn: Tensor | None) -> tuple:
        raise NotImplementedError

    def _post(self, g: Tensor) -> Tensor | None:
        """The post-clip global norm, measured again (float64), when asked for."""
        return torch.linalg.vector_norm(g, dim=1, dtype=_F64) if self.detail else None

    def _global(self, g: Tensor, gn: Tensor, c: Tensor) -> tuple:
        """Scale each run by its global factor; one factor per run, so the norm scales with it."""
        f = global_norm_factor(gn, c)  # [Kg]
        g.mul_(f.float().unsqueeze(1))
        hit = (f < 1.0) & (gn > 0)  # a zero gradient scaled by 0 (autoclip's 0 threshold) did not change
        return (gn * f if self.detail else None), hit, hit.to(_F64)


class _NoClip(_Rule):
    def __init__(self, thresholds, layout, state=None, agc_eps: float = 1e-3, detail: bool = True):
        super().__init__(thresholds, layout, detail=detail)
        # built once: nothing changes, nothing is clipped (read-only results, copied into the engine's table)
        self.no = torch.zeros(self.thr.shape, dtype=torch.bool, device=self.thr.device)
        self.zero = torch.zeros_like(self.thr)

    def __call__(self, g, w, gn, tn):
        return (gn if self.detail else None), self.no, self.zero


class _Value(_Rule):
    def __init__(self, thresholds, layout, state=None, agc_eps: float = 1e-3, detail: bool = True):
        super().__init__(thresholds, layout, detail=detail)
        self.c = thresholds.reshape(-1, 1).float()  # [Kg, 1]: clamp bounds in the gradient's dtype
        self.neg_c = -self.c

    def __call__(self, g, w, gn, tn):
        n_out = clip_by_value(g, self.c, self.neg_c)
        return self._post(g), n_out > 0, n_out.to(_F64) / max(self.layout.numel, 1)


class _GlobalNorm(_Rule):
    def __call__(self, g, w, gn, tn):
        return self._global(g, gn, self.thr)


class _TensorNorm(_Rule):
    needs_tensor_norms = True

    def __call__(self, g, w, gn, tn):
        lay = self.layout
        f = tensor_norm_factor(tn, self.thr.unsqueeze(1))  # [Kg, L]
        g.mul_(f.float().index_select(1, lay.seg))
        hit = f < 1.0
        return self._post(g), hit.any(1), (hit * lay.tensor_share).sum(1)


class _AGC(_Rule):
    needs_params = True

    def __init__(self, thresholds, layout, state=None, agc_eps: float = 1e-3, detail: bool = True):
        super().__init__(thresholds, layout, detail=detail)
        self.eps = agc_eps

    def __call__(self, g, w, gn, tn):
        lay = self.layout
        gu = lay.unit_sums(g.to(_F64).square()).sqrt()  # [Kg, U]
        wu = lay.unit_sums(w.detach().to(_F64).square()).sqrt()
        f = agc_factor(gu, wu, self.thr.unsqueeze(1), self.eps)
        g.mul_(f.float().index_select(1, lay.unit))
        hit = f < 1.0
        return self._post(g), hit.any(1), (hit * lay.unit_share).sum(1)


class _Stateful(_Rule):
    """A dynamic global-norm limit from the group's own history (AutoClip, ZClip)."""

    kind: type

    def __init__(self, thresholds, layout, state=None, agc_eps: float = 1e-3, detail: bool = True):
        super().__init__(thresholds, layout, detail=detail)
        self.state = state if state is not None else self.kind(thresholds.reshape(-1))

    def __call__(self, g, w, gn, tn):
        return self._global(g, gn, self.state.update(gn))


class _AutoClip(_Stateful):
    kind = AutoClipState


class _ZClip(_Stateful):
    kind = ZClipState


RULES: dict[str, type[_Rule]] = {
    "none": _NoClip,
    "value": _Value,
    "norm": _GlobalNorm,
    "tensor-norm": _TensorNorm,
    "agc": _AGC,
    "autoclip": _AutoClip,
    "zclip": _ZClip,
}
assert list(RULES) == list(STRATEGIES), "every registry entry needs a rule, in registry order"


def _rows(idx: list[int], device: torch.device) -> slice | Tensor:
    """A group's rows: a slice (a view: in-place clipping writes through) when contiguous, else an index."""
    if idx == list(range(idx[0], idx[-1] + 1)):
        return slice(idx[0], idx[-1] + 1)
    return torch.tensor(idx, device=device)


class Clipper:
    """Clips a flat [K, P] gradient in place, each run by its own strategy and threshold.

    The runs are grouped by strategy once, when the Clipper is built; each group's rule sees only its own
    rows, so no strategy's neutral value (an infinite threshold, a factor of 1) ever reaches another
    strategy's run, and every run clips exactly as it would alone. Contiguous groups (the engine makes them
    so) are views of g and their stats are joined by one cat each; others are gathered, clipped and scattered
    back. detail=False skips what only the dashboard draws: the post-clip norm and the per-tensor norms
    (ClipStats.post_norm and .tensor_norms are then None; tensor-norm still measures its own). layer_norms=False
    skips the per-tensor norms alone (the engine measures them once an epoch, from its histogram buffer).
    """

    def __init__(
        self,
        strategies: Sequence[str],
        thresholds: Tensor,
        layout: Layout,
        states: dict | None = None,
        agc_eps: float = 1e-3,
        detail: bool = True,
        layer_norms: bool = True,
    ):
        unknown = set(strategies) - set(STRATEGIES)
        if unknown:
            raise ValueError(f"unknown clipping strategy {sorted(unknown)[0]!r}; choose from {', '.join(STRATEGIES)}")
        thr, dev = thresholds.reshape(-1), thresholds.device
        self.layout, self.k, self.detail = layout, len(strategies), detail
        self.strategies, self.thresholds, self.agc_eps = list(strategies), thr, agc_eps  # for subset()
        self.layer_norms = detail and layer_norms  # ClipStats.tensor_norms measured and returned
        self.groups: list[tuple[slice | Tensor, _Rule]] = []  # (rows, rule) per strategy present, by first row
        for name in sorted(set(strategies), key=list(strategies).index):
            rows = _rows([i for i, s in enumerate(strategies) if s == name], dev)
            rule = RULES[name](thr[rows], layout, state=(states or {}).get(name), agc_eps=agc_eps, detail=detail)
            self.groups.append((rows, rule))
        self.needs_params = any(rule.needs_params for _, rule in self.groups)
        self.tensor_norms = self.layer_norms or any(rule.needs_tensor_norms for _, rule in self.groups)
        # every group a slice, in row order: they tile 0..K, so the groups' stats concatenate in place
        self.tiled = all(isinstance(rows, slice) for rows, _ in self.groups)

    def subset(self, keep: Sequence[int]) -> Clipper:
        """The same clipper for the runs `keep` only (sorted row indices), each stateful rule's history carried over."""
        states, live = {}, set(keep)
        for name, (_, rule) in zip(dict.fromkeys(self.strategies), self.groups, strict=True):
            if isinstance(rule, _Stateful):
                idx = [i for i, s in enumerate(self.strategies) if s == name]  # the group's rows, in order
                local = [j for j, i in enumerate(idx) if i in live]
                if local:  # else the whole group left
                    states[name] = _state_rows(rule.state, torch.tensor(local, device=self.thresholds.device))
        strategies = [self.strategies[i] for i in keep]
        thr = self.thresholds[torch.tensor(list(keep), device=self.thresholds.device)]
        kw = dict(agc_eps=self.agc_eps, detail=self.detail, layer_norms=self.layer_norms)
        return Clipper(strategies, thr, self.layout, states, **kw)

    @torch.no_grad()
    def __call__(self, g: Tensor, w: Tensor | None = None) -> ClipStats:
        """g: [K, P] gradient (float32), clipped in place; w: [K, P] parameters (AGC only)."""
        # float64: finite 1e20 elements must not overflow the norm. One reduction over the whole row, the same in
        # every mode (per-tensor norms below are measured apart, only when asked for)
        gn = torch.linalg.vector_norm(g, dim=1, dtype=_F64)  # [K]
        tn = self.layout.tensor_norms(g) if self.tensor_norms else None  # [K, L] float64
        if len(self.groups) == 1:  # one strategy: its rule on the whole buffer
            post, clipped, frac = self.groups[0][1](g, w, gn, tn)
            return ClipStats(gn, tn if self.layer_norms else None, post, clipped, frac)
        outs = []
        for rows, rule in self.groups:
            gs = g[rows]  # a view for a slice, a copy for an index
            ws = w[rows] if rule.needs_params else None
            outs.append(rule(gs, ws, gn[rows], None if tn is None else tn[rows]))
            if isinstance(rows, Tensor):
                g.index_copy_(0, rows, gs)
        if self.tiled:
            post, clipped, frac = (torch.cat(parts) if parts[0] is not None else None for parts in zip(*outs))
        else:
            post = torch.empty_like(gn) if self.detail else None
            clipped, frac = torch.empty_like(gn, dtype=torch.bool), torch.empty_like(gn)
            for (rows, _), (p, c, f) in zip(self.groups, outs, strict=True):
                clipped[rows], frac[rows] = c, f
                if post is not None:
                    post[rows] = p
        return ClipStats(gn, tn if self.layer_norms else None, post, clipped, frac)  # float64: read back as such


# each stateful rule's per-run tensors (first dimension K); everything else in its state is shared by its runs
_PER_RUN = {AutoClipState: ("q", "ring", "sorted", "count", "_inf", "threshold"),
            ZClipState: ("z_thresh", "buf", "mean", "var", "threshold")}  # fmt: skip


def _state_rows(state, rows: Tensor):
    """A copy of a stateful rule's state for the runs `rows` only (the engine drops diverged runs)."""
    out = copy.copy(state)
    out.__dict__.pop("_core", None)  # make_clipper's flat core, built for the old K
    for name in _PER_RUN[type(state)]:
        setattr(out, name, getattr(state, name)[rows])
    return out


def _list_call(state, grads: list[Tensor], params: list[Tensor], strategy: str) -> ClipStats:
    """A stateful rule called on per-tensor grads: run it through a one-strategy Clipper sharing its state."""
    core = getattr(state, "_core", None)
    if core is None:
        lay = Layout([g.shape[1:] for g in grads], grads[0].device)
        k = grads[0].shape[0]
        core = state._core = Clipper([strategy] * k, torch.ones(k), lay, {strategy: state})
    return _apply(core, grads, params)


def _apply(core: Clipper, grads: list[Tensor], params: list[Tensor]) -> ClipStats:
    """Clip per-tensor [K, ...] grads in place through the flat core."""
    flat = core.layout.flatten(grads)
    stats = core(flat, core.layout.flatten(params) if core.needs_params else None)
    for g, v in zip(grads, core.layout.split(flat), strict=True):
        g.copy_(v)
    return ClipStats(*(t.float() if t.is_floating_point() else t for t in stats))


class _ListClipper:
    """make_clipper's result: per-tensor [K, ...] grads in, clipped in place through the flat core."""

    def __init__(self, strategy: str, thresholds: Tensor, agc_eps: float = 1e-3):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown clipping strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        self.strategy, self.thresholds, self.core, self.agc_eps = strategy, thresholds.reshape(-1), None, agc_eps

    def __call__(self, grads: list[Tensor], params: list[Tensor]) -> ClipStats:
        if self.core is None:  # the layout comes from the first grads seen
            lay = Layout([g.shape[1:] for g in grads], grads[0].device)
            self.core = Clipper([self.strategy] * self.thresholds.numel(), self.thresholds, lay, agc_eps=self.agc_eps)
        return _apply(self.core, grads, params)


# ---- registry: the metadata lives in clipviz.strategies (no torch) ------------------------------
StrategyInfo = Strategy
STRATEGY_INFO: dict[str, Strategy] = REGISTRY


def make_clipper(strategy: str, thresholds: Tensor) -> Callable[[list[Tensor], list[Tensor]], ClipStats]:
    """clipper(grads, params) -> ClipStats for K = thresholds.numel() runs of one strategy; clips grads in place.

    thresholds: [K] float32 on the grads' device, the strategy's one number per run (see STRATEGY_INFO).
    grads: float tensors [K, ...] (float32 expected; norms are taken in float64); params: same shapes, only
    agc reads them. Stateful clippers (autoclip, zclip) keep one history per run and expose `.threshold`,
    the norm limit they applied on the last step ([K] float32, inf = none). The engine uses `Clipper`
    directly on its flat buffer, with a strategy per run.
    """
    if strategy == "autoclip":
        return AutoClipState(thresholds.reshape(-1))
    if strategy == "zclip":
        return ZClipState(thresholds.reshape(-1))
    return _ListClipper(strategy, thresholds)
