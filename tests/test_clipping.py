"""clipviz.clipping: oracles (torch, Keras, optax, official ZClip / AutoClip code), properties, non-finite."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from clipviz import clipping as C
from clipviz import dropins as D
from clipviz.config import STRATEGIES

SHAPES = [(25, 20), (25,), (1, 25), (1,)]  # the tutorial MLP, PyTorch layout: weight [out, in], bias [out]
STATEFUL = ("autoclip", "zclip")
SMALL = {"none": 1.0, "value": 0.05, "norm": 1.0, "tensor-norm": 0.5, "agc": 0.01, "autoclip": 10.0, "zclip": 2.5}
HUGE = {"none": 1.0, "value": 1e30, "norm": 1e30, "tensor-norm": 1e30, "agc": 1e30, "autoclip": 100.0, "zclip": 1e30}


def _batch(k: int, seed: int, scale: float | torch.Tensor = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    s = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)  # [K] or [1]: one scale per run
    return [torch.randn((k, *shape), generator=gen) * s.reshape(-1, *([1] * len(shape))) for shape in SHAPES]


def _clone(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.clone() for t in ts]


def _norm64(ts: list[torch.Tensor]) -> torch.Tensor:  # [K] global norm, float64, as an independent oracle
    return torch.cat([t.reshape(t.shape[0], -1).double() for t in ts], 1).norm(dim=1)


def _model(seed: int, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(20, 25), nn.ReLU(), nn.Linear(25, 1))
    for p in m.parameters():
        p.grad = torch.randn_like(p) * scale
    return m


def _twin(seed: int, scale: float = 1.0) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    a, b = _model(seed, scale), _model(seed, scale)
    return list(a.parameters()), list(b.parameters())


def _run(strategy: str, thr: list[float], steps: list[list[torch.Tensor]], params: list[torch.Tensor]):
    """Feed a sequence of steps to one clipper; returns (clipper, [(before, after, stats)])."""
    clipper = C.make_clipper(strategy, torch.tensor(thr))
    out = []
    for grads in steps:
        before = _clone(grads)
        out.append((before, grads, clipper(grads, params)))
    return clipper, out


def _steady(k: int, n: int, seed: int = 0) -> list[list[torch.Tensor]]:
    """n steps of norms that wobble by +-20% around sqrt(551)."""
    gen = torch.Generator().manual_seed(seed + 1000)
    return [_batch(k, seed + i, 0.8 + 0.4 * torch.rand(k, generator=gen)) for i in range(n)]


def _scenario(strategy: str, k: int, thr: list[float]):
    """The clipper after a history (stateful ones), then one last step where every other run spikes 20x."""
    params = _batch(k, 99)
    warm = _steady(k, 30) if strategy in STATEFUL else []
    clipper, _ = _run(strategy, thr, warm, params)
    last = _batch(k, 7, torch.tensor([20.0 if i % 2 == 0 else 1.0 for i in range(k)]))
    before = _clone(last)
    return clipper, before, last, clipper(last, params), params


# ---- reference oracles -------------------------------------------------------------------------
@pytest.mark.parametrize("max_norm", [0.1, 1.0, 1e3])
def test_clip_grad_norm_matches_torch(max_norm):
    ours, ref = _twin(0, 3.0)
    n_ours = D.clip_grad_norm_(ours, max_norm)
    n_ref = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    torch.testing.assert_close(n_ours, n_ref, rtol=1e-6, atol=0)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("clip_value", [0.01, 1.0, 100.0])
def test_clip_grad_value_matches_torch(clip_value):
    ours, ref = _twin(1, 3.0)
    n_ref = torch.nn.utils.get_total_norm([p.grad for p in ref])
    n_ours = D.clip_grad_value_(ours, clip_value)
    torch.nn.utils.clip_grad_value_(ref, clip_value)
    torch.testing.assert_close(n_ours, n_ref, rtol=1e-6, atol=0)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a.grad, b.grad)


def test_dropins_skip_params_without_grad_and_raise_like_torch():
    ps = list(_model(2).parameters())
    ps[1].grad = None
    expected = _norm64([p.grad.unsqueeze(0) for p in ps if p.grad is not None])[0].float()
    torch.testing.assert_close(D.clip_grad_norm_(ps, 1e9), expected, rtol=1e-6, atol=0)
    assert D.clip_grad_norm_per_tensor_(ps, 1e9).shape == (3,)
    ps[0].grad[0, 0] = math.nan
    kept = [p.grad.clone() for p in ps if p.grad is not None]
    with pytest.raises(RuntimeError):
        D.clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)
    for a, b in zip([p.grad for p in ps if p.grad is not None], kept, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0)


def _dropin(strategy: str, thr: float):
    if strategy == "autoclip":
        return D.AutoClip(percentile=thr)
    if strategy == "zclip":
        return D.ZClip(z_thresh=thr)
    fn = {
        "none": lambda ps, t: None,
        "value": D.clip_grad_value_,
        "norm": D.clip_grad_norm_,
        "tensor-norm": D.clip_grad_norm_per_tensor_,
        "agc": D.adaptive_grad_clip_,
    }[strategy]
    return lambda ps: fn(ps, thr)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batched_equals_independent_dropin_calls(strategy):
    """K=5 runs with their own thresholds == 5 single-model calls: runs do not leak into each other."""
    thr = [SMALL[strategy] * f for f in (0.3, 1.0, 3.0, 10.0, 1e6)]
    if strategy == "autoclip":
        thr = [1.0, 10.0, 50.0, 90.0, 100.0]
    params = _batch(5, 99)
    steps = _steady(5, 40)
    for i, s in enumerate(steps[26:]):  # spikes after zclip's warm-up
        for g in s:
            g[i % 5] *= 10.0
    clipper = C.make_clipper(strategy, torch.tensor(thr))
    models = [[nn.Parameter(p[i].clone()) for p in params] for i in range(5)]
    singles = [_dropin(strategy, t) for t in thr]
    for grads in steps:
        for i in range(5):
            for p, g in zip(models[i], grads, strict=True):
                p.grad = g[i].clone()
            singles[i](models[i])
        stats = clipper(grads, params)
        for i in range(5):
            for p, g in zip(models[i], grads, strict=True):
                torch.testing.assert_close(p.grad, g[i], rtol=1e-6, atol=1e-12)
        assert stats.pre_norm.shape == (5,) and stats.tensor_norms.shape == (5, 4)


def test_tensor_norm_matches_keras3_formula():
    c = [0.5, 5.0, 1e3]
    grads = _batch(3, 3, 2.0)
    grads[1][2].zero_()  # a zero tensor stays zero (Keras has no epsilon)
    ref = [g.double().numpy() for g in grads]
    C.make_clipper("tensor-norm", torch.tensor(c))(grads, [])
    for g, r in zip(grads, ref, strict=True):
        for k in range(3):
            expected = r[k] * c[k] / max(np.sqrt(np.sum(np.square(r[k]))), c[k])  # keras clip_by_norm
            np.testing.assert_allclose(g[k].numpy(), expected, rtol=1e-6, atol=1e-12)


def _optax_unitwise_norm(x: np.ndarray) -> np.ndarray:  # PyTorch layout: a unit is a row; 1-D is one unit
    return (
        np.sqrt(np.sum(np.square(x), axis=tuple(range(1, x.ndim)), keepdims=True))
        if x.ndim >= 2
        else (np.sqrt(np.sum(np.square(x))))
    )


def test_agc_matches_optax_formula():
    lam, eps = [0.01, 0.1, 1e6], 1e-3
    grads, params = _batch(3, 4, 0.05), _batch(3, 5)
    params[0][0, 3].zero_()  # a dead unit: max_norm uses eps
    ref_g, ref_p = [g.double().numpy() for g in grads], [p.double().numpy() for p in params]
    stats = C.make_clipper("agc", torch.tensor(lam))(grads, params)
    for g, rg, rp in zip(grads, ref_g, ref_p, strict=True):
        for k in range(3):
            g_norm, p_norm = _optax_unitwise_norm(rg[k]), _optax_unitwise_norm(rp[k])
            max_norm = lam[k] * np.maximum(p_norm, eps)
            expected = np.where(g_norm < max_norm, rg[k], rg[k] * (max_norm / np.maximum(g_norm, 1e-6)))
            np.testing.assert_allclose(g[k].numpy(), expected, rtol=1e-6, atol=1e-12)
    assert stats.clipped.tolist() == [True, True, False]


# ---- properties --------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_huge_threshold_changes_nothing(strategy):
    """autoclip p=100 clips at the running max: with norms below the first one, nothing changes after step 0,
    and step 0 (the norm is its own max) is scaled by ||g|| / (||g|| + 1e-6), torch's epsilon."""
    k, steps = 3, _steady(3, 35)
    if strategy == "autoclip":
        base = _batch(k, 0)
        steps = [[g / (1 + 0.01 * i) for g in base] for i in range(35)]  # every norm below the first
    else:
        for g in steps[-1]:
            g *= 50.0  # a spike
    _, out = _run(strategy, [HUGE[strategy]] * k, steps, _batch(k, 99))
    for step, (before, after, _) in enumerate(out):
        for b, a in zip(before, after, strict=True):
            if strategy == "autoclip" and step == 0:
                torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
            else:
                assert torch.equal(a, b)


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "none"])
def test_after_clip_within_threshold(strategy):
    thr = [SMALL[strategy]] * 4
    clipper, before, after, stats, params = _scenario(strategy, 4, thr)
    assert stats.clipped.any()
    if strategy == "value":
        assert max(g.abs().max() for g in after) <= thr[0]
    elif strategy == "tensor-norm":
        assert (torch.stack([g.reshape(4, -1).double().norm(dim=1) for g in after], 1) <= thr[0] * (1 + 1e-6)).all()
    elif strategy == "agc":
        for g, p in zip(after, params, strict=True):
            dims = tuple(range(2, g.ndim)) if g.ndim >= 3 else tuple(range(1, g.ndim))
            limit = thr[0] * p.double().norm(dim=dims).clamp(min=1e-3)
            assert (g.double().norm(dim=dims) <= limit * (1 + 1e-6)).all()
    else:
        limit = torch.tensor(thr, dtype=torch.float64) if strategy == "norm" else clipper.threshold.double()
        assert (_norm64(after) <= limit * (1 + 1e-6)).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_clipping_twice_equals_once(strategy):
    """Norm rules are idempotent up to rounding (global norm: up to torch's 1e-6 epsilon, ~1e-6 relative)."""
    if strategy in STATEFUL:
        pytest.skip("stateful: a second call is a new step whose norm enters the history / EMA, by design")
    grads = _batch(4, 8, torch.tensor([0.1, 1.0, 10.0, 100.0]))
    clipper = C.make_clipper(strategy, torch.full((4,), SMALL[strategy]))
    clipper(grads, _batch(4, 99))
    once = _clone(grads)
    clipper(grads, _batch(4, 99))
    for a, b in zip(grads, once, strict=True):
        if strategy == "value":
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=2e-6, atol=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_zero_gradients_stay_zero(strategy):
    steps = [[torch.zeros(3, *s) for s in SHAPES] for _ in range(30)]
    _, out = _run(strategy, [SMALL[strategy]] * 3, steps, _batch(3, 99))
    for _, after, stats in out:
        assert all(torch.equal(g, torch.zeros_like(g)) for g in after)
        assert (stats.pre_norm == 0).all() and (stats.post_norm == 0).all()
        assert not stats.clipped.any() and (stats.frac_elements == 0).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_stats_are_what_happened(strategy):
    """pre / per-tensor / post norms match a float64 recount; clipped and frac_elements match what changed."""
    k = 6
    thr = [SMALL[strategy] * f for f in (0.5, 1, 2, 1e6, 1, 3)]
    if strategy == "autoclip":
        thr = [5.0, 10.0, 50.0, 100.0, 30.0, 70.0]
    _, before, after, stats, _ = _scenario(strategy, k, thr)
    assert stats.pre_norm.dtype == stats.post_norm.dtype == stats.frac_elements.dtype == torch.float32
    assert stats.clipped.dtype == torch.bool and stats.tensor_norms.shape == (k, len(SHAPES))
    torch.testing.assert_close(stats.pre_norm.double(), _norm64(before), rtol=1e-6, atol=0)
    per_tensor = torch.stack([g.reshape(k, -1).double().norm(dim=1) for g in before], 1)
    torch.testing.assert_close(stats.tensor_norms.double(), per_tensor, rtol=1e-6, atol=0)
    torch.testing.assert_close(stats.post_norm.double(), _norm64(after), rtol=1e-5, atol=0)
    changed = torch.cat(
        [(a != b).reshape(k, -1) for a, b in zip(after, before, strict=True)], 1
    )  # randn: no exact zeros
    assert torch.equal(stats.clipped, changed.any(1))
    torch.testing.assert_close(stats.frac_elements, changed.float().mean(1))
    if strategy != "none":
        assert stats.clipped.any() and not stats.clipped.all()


# ---- non-finite --------------------------------------------------------------------------------
def test_overflowing_norm_is_clipped_where_torch_zeroes():
    """Finite float32 gradients near 1e20: the sum of squares overflows float32. We clip; torch zeroes."""
    ours, ref = _twin(3, 1e20)
    n_ref = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    assert math.isinf(n_ref) and all((p.grad == 0).all() for p in ref)  # torch: norm inf, update silently gone
    n_ours = D.clip_grad_norm_(ours, 1.0)
    expected = _norm64([p.grad.unsqueeze(0) for p in _model(3, 1e20).parameters()])[0]
    assert math.isfinite(n_ours) and n_ours.double() == pytest.approx(expected.item(), rel=1e-6)
    post = _norm64([p.grad.unsqueeze(0) for p in ours])[0]
    assert 0.999 < post <= 1.0 + 1e-6


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s not in ("none", "value")])
def test_overflowing_norm_is_clipped_by_every_norm_rule(strategy):
    clipper, *_ = _scenario(strategy, 2, [SMALL[strategy]] * 2)
    spike = _batch(2, 11, 1e20)
    stats = clipper(spike, _batch(2, 99))
    assert torch.isfinite(stats.pre_norm).all() and stats.clipped.all()
    assert torch.isfinite(_norm64(spike)).all() and (_norm64(spike) < 1e3).all() and (_norm64(spike) > 0).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nan_and_inf_gradients_are_never_zeroed(strategy):
    """Run 0 finite, run 1 has one NaN, run 2 one +inf (in the first weight). See the module docstring."""
    clipper, _, _, _, params = _scenario(strategy, 3, [SMALL[strategy]] * 3)
    grads = _batch(3, 12, 20.0)
    grads[0][1, 0, 0], grads[0][2, 0, 0] = math.nan, math.inf
    before = _clone(grads)
    stats = clipper(grads, params)
    assert math.isnan(stats.pre_norm[1]) and math.isinf(stats.pre_norm[2]) and math.isfinite(stats.pre_norm[0])
    assert math.isnan(grads[0][1, 0, 0])  # NaN stays NaN everywhere
    if strategy == "value":
        assert grads[0][2, 0, 0] == SMALL["value"]  # torch.clamp: inf -> c
    else:
        assert math.isinf(grads[0][2, 0, 0])
    for k in (1, 2):
        for g, b in zip(grads, before, strict=True):
            assert not (g[k] == 0).all()
            if strategy in ("none", "norm", "autoclip", "zclip"):  # the whole run is left as it was
                torch.testing.assert_close(g[k], b[k], rtol=0, atol=0, equal_nan=True)
    if strategy in ("tensor-norm", "agc"):  # only the tensor / unit holding the NaN is left, the rest is clipped
        torch.testing.assert_close(grads[0][1, 0], before[0][1, 0], rtol=0, atol=0, equal_nan=True)
        assert not torch.equal(grads[2][1], before[2][1])
    if strategy != "none":
        assert stats.clipped[0]


@pytest.mark.parametrize("strategy", STATEFUL)
def test_a_nonfinite_step_does_not_poison_the_state(strategy):
    """After warm-up, a NaN/inf step leaves the history/EMA as if it had not happened."""
    params = _batch(2, 99)
    steps = _steady(2, 40)
    for g in steps[35]:
        g *= 10.0  # a spike both must clip the same way
    bad = _batch(2, 13)
    bad[0][0, 0, 0], bad[0][1, 0, 0] = math.nan, math.inf
    a = C.make_clipper(strategy, torch.full((2,), SMALL[strategy]))
    b = C.make_clipper(strategy, torch.full((2,), SMALL[strategy]))
    for i, s in enumerate(steps):
        if i == 30:
            a(bad, params)
        sa, sb = a(_clone(s), params), b(_clone(s), params)
        assert torch.equal(sa.post_norm, sb.post_norm) and torch.equal(a.threshold, b.threshold)
        assert strategy != "zclip" or bool(sa.clipped.all()) == (i == 35)


def test_zclip_warmup_ignores_nonfinite_norms():
    steps = _steady(1, 25)
    steps[3][0][0, 0, 0] = math.inf
    z = C.make_clipper("zclip", torch.tensor([2.5]))
    norms = [float(z(s, []).pre_norm[0]) for s in steps]
    finite = np.array([n for n in norms if math.isfinite(n)], dtype=np.float64)
    assert z.mean[0].item() == pytest.approx(finite.mean(), rel=1e-6)
    assert z.var[0].item() == pytest.approx(finite.var(), rel=1e-5)


# ---- stateful strategies against their reference code -------------------------------------------
def test_autoclip_threshold_is_np_percentile_of_history():
    ps = [5.0, 10.0, 50.0, 90.0, 100.0]
    clipper = C.AutoClipState(torch.tensor(ps), history=7)  # small ring: exercises eviction
    hist: list[list[float]] = [[] for _ in ps]
    for i, s in enumerate(_steady(5, 30)):
        if i == 12:
            s[0][2, 0, 0] = math.nan  # skipped, not recorded
        norms = _norm64(s)
        clipper(s, [])
        for k, p in enumerate(ps):
            if math.isfinite(norms[k]):
                hist[k] = (hist[k] + [norms[k].item()])[-7:]
            assert clipper.threshold[k].item() == pytest.approx(np.percentile(hist[k], p), rel=1e-6)


def test_autoclip_dropin_matches_pseeth_reference():
    """pseeth/autoclip: history.append(norm); clip_grad_norm_(params, np.percentile(history, p))."""
    ours, ref = _model(5), _model(5)
    auto, history = D.AutoClip(percentile=25.0), []
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        scale = float(torch.rand((), generator=gen) * 3)
        for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=gen) * scale
            b.grad = a.grad.clone()
        auto(ours.parameters())
        history.append(torch.nn.utils.get_total_norm([p.grad for p in ref.parameters()]).item())
        torch.nn.utils.clip_grad_norm_(ref.parameters(), float(np.percentile(history, 25.0)))
        for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-9)
    assert auto.threshold.item() == pytest.approx(np.percentile(history, 25.0), rel=1e-6)


class _OfficialZClip:
    """bluorion-com/ZClip zclip/zclip.py, zscore mode, adaptive_scaling, max_grad_norm=None, on plain floats."""

    def __init__(self, alpha=0.97, z_thresh=2.5, eps=1e-6, warmup_steps=25):
        self.alpha, self.z, self.eps, self.warmup = alpha, z_thresh, eps, warmup_steps
        self.buffer, self.mean, self.var = [], None, None

    def step(self, norm: float) -> float:  # -> the clipping coefficient
        if self.mean is None:
            self.buffer.append(norm)
            if len(self.buffer) >= self.warmup:
                self.mean = sum(self.buffer) / len(self.buffer)
                self.var = sum((x - self.mean) ** 2 for x in self.buffer) / len(self.buffer)
            return 1.0
        std = self.var**0.5
        z = (norm - self.mean) / (std + self.eps)
        clip = self.mean + (self.z * std) / (z / self.z) if z > self.z else None
        coef = clip / (norm + 1e-6) if clip is not None and norm > clip else 1.0
        x = clip if clip is not None else norm
        self.mean = self.alpha * self.mean + (1 - self.alpha) * x
        self.var = self.alpha * self.var + (1 - self.alpha) * (x - self.mean) ** 2
        return coef


def test_zclip_matches_official_code_and_skips_warmup():
    steps = _steady(1, 60)
    for i in (10, 30, 31, 45):  # a spike in warm-up (not clipped) and some after
        for g in steps[i]:
            g *= 8.0
    zc, official = D.ZClip(), _OfficialZClip()
    model = _model(0)
    for i, s in enumerate(steps):
        for p, g in zip(model.parameters(), s, strict=True):
            p.grad = g[0].clone()
        norm = float(_norm64(s)[0])
        coef = official.step(norm)
        zc(model.parameters())
        post = float(_norm64([p.grad.unsqueeze(0) for p in model.parameters()])[0])
        assert post == pytest.approx(norm * coef, rel=1e-6)
        assert (coef < 1.0) == (i in (30, 31, 45)), i  # never during warm-up; the spikes after it
    assert zc.threshold.item() == math.inf  # the last step was not clipped


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: checks the batched path never syncs")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batched_path_never_syncs_with_the_host(strategy):
    dev = torch.device("cuda")
    clipper = C.make_clipper(strategy, torch.full((4,), SMALL[strategy], device=dev))
    params = [p.to(dev) for p in _batch(4, 99)]
    clipper([g.to(dev) for g in _batch(4, 0)], params)  # first call builds cached constants
    steps = [[g.to(dev) for g in s] for s in _steady(4, 30)]
    torch.cuda.set_sync_debug_mode("error")
    try:
        for s in steps:
            clipper(s, params)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---- registry ----------------------------------------------------------------------------------
def test_registry_covers_every_strategy():
    assert list(C.STRATEGY_INFO) == list(STRATEGIES)
    for name, info in C.STRATEGY_INFO.items():
        assert info.name == name and info.title and info.formula
        assert name == "none" or (info.reference and info.same_as and info.default is not None)
        C.make_clipper(name, torch.ones(2))(_batch(2, 0), _batch(2, 1))
    assert [n for n, i in C.STRATEGY_INFO.items() if i.stateful] == list(STATEFUL)
    with pytest.raises(ValueError):
        C.make_clipper("clipnorm", torch.ones(1))
