"""The non-finite catalogue: setups that blow up in every way still train, chart, export and print."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_regression

from clipviz.__main__ import summary_table
from clipviz.config import TUTORIAL, ClipSpec, DataSpec, ModelSpec, OptimSpec, with_clips
from clipviz.engine import train
from clipviz.records import dumps, loads, to_frame
from clipviz.ui import charts

CLIPS = [ClipSpec("none"), ClipSpec("value", 5.0), ClipSpec("norm", 1.0), ClipSpec("agc", 0.01)]


def _catalogue(tmp_path):
    big = tmp_path / "big_targets.csv"
    x, y = make_regression(n_samples=200, n_features=5, noise=0.1, random_state=3)
    df = pd.DataFrame(x, columns=[f"x{i}" for i in range(5)])
    df["y"] = y * 1e6
    df.to_csv(big, index=False)
    return {
        "lr 10": replace(TUTORIAL, optim=replace(TUTORIAL.optim, lr=10.0, epochs=3)),
        "depth 30 relu": replace(
            TUTORIAL, model=ModelSpec(width=16, depth=30, activation="relu"), optim=OptimSpec(epochs=3)
        ),
        "he init x10": replace(TUTORIAL, model=replace(TUTORIAL.model, init_scale=10.0), optim=OptimSpec(epochs=3)),
        "targets x1e6": replace(TUTORIAL, data=DataSpec(name="csv", csv_path=str(big)), optim=OptimSpec(epochs=3)),
    }


def _strict(text: str, where: str):
    """json.loads that fails on NaN/Infinity tokens, which browsers' JSON.parse rejects."""

    def reject(token):
        pytest.fail(f"{where}: {token} in JSON")

    return json.loads(text, parse_constant=reject)


def _all_figures(results):
    figs = [
        charts.loss_curves(results),
        charts.norm_distribution_grid(results),
        charts.norm_distribution_grid(results, post=True),
        charts.epoch_histogram(results, 1),
        charts.layer_norms(results),
        charts.clip_rate(results),
        charts.value_histogram(results),
        charts.seed_band(results),
    ]
    figs += [charts.norm_distribution(r) for r in results]
    return figs


def test_every_blow_up_renders_exports_and_prints(tmp_path):
    kinds = set()
    for name, base in _catalogue(tmp_path).items():
        results = train(with_clips(base, CLIPS), device="cpu")
        none = results[0]
        assert none.diverged is not None, f"{name}: the unclipped run should blow up"
        recs = [e for r in results for e in r.records]
        for e in recs:
            kinds |= {"inf loss" for v in (e.train_loss, e.val_loss) if math.isinf(v)}
            kinds |= {"nan loss" for v in (e.train_loss, e.val_loss) if math.isnan(v)}
            kinds |= {"inf norm" for v in e.grad_norm_pre if math.isinf(v)}
            kinds |= {"nan norm" for v in e.grad_norm_pre if math.isnan(v)}
            kinds |= {"nan grads" for _ in [0] if e.value_hist_pre and e.value_hist_pre[-1] > 0}
        # every chart renders to strict JSON (no NaN/Infinity tokens) and HTML, and labels the divergence
        for fig in _all_figures(results):
            _strict(fig.to_json(), f"{name} figure")
            assert fig.to_html(include_plotlyjs=False)
        loss_fig = charts.loss_curves(results).to_json()
        assert "diverged at epoch" in loss_fig, name
        table = charts.runs_table(results)
        assert len(table) == len(CLIPS)
        # exports round-trip with the non-finite values intact
        text = dumps(results)
        _strict(text, f"{name} export")
        back = loads(text)
        for a, b in zip(results, back, strict=True):
            assert a.diverged == b.diverged
            np.testing.assert_array_equal(
                [e.train_loss for e in a.records], [e.train_loss for e in b.records]
            )  # NaN == NaN here: assert_array_equal treats NaNs as equal
        frame = to_frame(results)
        csv = tmp_path / f"{name.replace(' ', '_')}.csv"
        frame.to_csv(csv, index=False)
        again = pd.read_csv(csv)
        assert again["train_loss_finite"].dtype == bool and not again["train_loss_finite"].all()
        printed = summary_table(results)
        assert "diverged at epoch" in printed, name
    # between them, the catalogue produces the blow-ups the UI must label (float32 norm overflow: next test)
    assert {"inf loss", "nan norm", "nan grads"} <= kinds, kinds


def test_float32_norm_overflow_is_still_clipped():
    """Two hidden layers with init x1e5: finite float32 gradients whose squared sum overflows float32."""
    spec = replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=1))
    spec = replace(spec, model=replace(spec.model, depth=2, init_scale=1e5))
    res = train(with_clips(spec, [ClipSpec("norm", 1.0)]), device="cpu")[0]
    pre = np.asarray(res.records[0].grad_norm_pre)
    post = np.asarray(res.records[0].grad_norm_post)
    finite = np.isfinite(pre)
    assert finite[0] and pre[0] > np.sqrt(np.finfo(np.float32).max)  # the sum of squares overflows float32
    assert (post[finite] <= 1.0 + 1e-5).all() and res.diverged is None
