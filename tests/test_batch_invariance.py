"""The batch invariant: a run trained in any job equals the same run trained alone.

Every strategy (two thresholds, or two seeds for none, in one job), every pair of strategies, all seven
together and all seven twice interleaved (so groups are not contiguous and the Clipper gathers and
scatters them), with SGD and Adam on `tutorial-scaled` and an RNN on the adding task: 1e-6 relative at
epoch 1 and 1e-4 over 3 epochs, for losses and every step's pre- and post-clip norm. Not bitwise: the RNN's
bmm rounds a K=1 batch differently (measured up to ~1e-6), so the scaled preset keeps rounding from growing.
"""

from __future__ import annotations

import functools
import itertools
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from clipviz import clipping
from clipviz.__main__ import main
from clipviz.config import PRESETS, STRATEGIES, ClipSpec, RunSpec
from clipviz.data import load_dataset
from clipviz.engine import train
from clipviz.records import RunResult

# thresholds that make every rule fire on these setups (checked below), and a second one for a two-run group
THRESHOLDS = {"value": 0.1, "norm": 0.5, "tensor-norm": 0.3, "agc": 0.01, "autoclip": 10.0, "zclip": 1.0}
SECOND = {"value": 0.3, "norm": 2.0, "tensor-norm": 1.0, "agc": 0.05, "autoclip": 50.0, "zclip": 2.0}
EPOCHS = 3


def _setups() -> dict[str, RunSpec]:
    scaled = PRESETS["tutorial-scaled"]
    scaled = replace(scaled, optim=replace(scaled.optim, epochs=EPOCHS))
    rnn = PRESETS["adding-rnn"]  # a tame, small copy: the preset is built to explode
    rnn = replace(
        rnn,
        data=replace(rnn.data, n_samples=256, seq_len=10),
        model=replace(rnn.model, init_scale=1.0),
        optim=replace(rnn.optim, lr=0.01, epochs=EPOCHS),
    )
    return {"sgd": scaled, "adam": replace(scaled, optim=replace(scaled.optim, name="adam", lr=0.001)), "rnn": rnn}


SETUPS = _setups()


def _run(setup: str, strategy: str, second: bool = False) -> RunSpec:
    """A run of the setup; `second`: the other threshold (for none, seed 2)."""
    if strategy == "none":
        return replace(SETUPS[setup], clip=ClipSpec("none"), seed=2 if second else 1, label=f"none{second:d}")
    t = (SECOND if second else THRESHOLDS)[strategy]
    return replace(SETUPS[setup], clip=ClipSpec(strategy, t), label=f"{strategy}:{t:g}")


@functools.cache
def _dataset(setup: str):
    return load_dataset(SETUPS[setup].data)


@functools.cache
def _alone(run: RunSpec) -> RunResult:
    return train([run], device="cpu", dataset=_dataset(_setup_of(run)))[0]


def _setup_of(run: RunSpec) -> str:
    return next(k for k, s in SETUPS.items() if s.data == run.data and s.optim.name == run.optim.name)


def _series(r: RunResult, epochs: int) -> dict[str, np.ndarray]:
    recs = r.records[:epochs]
    return {
        "train_loss": np.array([e.train_loss for e in recs]),
        "val_loss": np.array([e.val_loss for e in recs]),
        "grad_norm_pre": np.array([v for e in recs for v in e.grad_norm_pre]),
        "grad_norm_post": np.array([v for e in recs for v in e.grad_norm_post]),
    }


def max_rel_diff(batched: RunResult, alone: RunResult, epochs: int) -> float:
    """Largest relative difference over losses and per-step norms of the first `epochs` epochs."""
    a, b = _series(batched, epochs), _series(alone, epochs)
    return max(float(np.max(np.abs(a[k] - b[k]) / np.abs(b[k]))) for k in a)


def _jobs() -> list[tuple[str, list[tuple[str, bool]]]]:
    singles = [(f"single-{s}", [(s, False), (s, True)]) for s in STRATEGIES]
    pairs = [(f"pair-{a}+{b}", [(a, False), (b, False)]) for a, b in itertools.combinations(STRATEGIES, 2)]
    seven = [(s, False) for s in STRATEGIES]
    interleaved = [(s, i == 1) for i in range(2) for s in STRATEGIES]  # each group's rows apart: gather/scatter
    return singles + pairs + [("all-seven", seven), ("all-seven-twice-interleaved", interleaved)]


JOBS = _jobs()


@pytest.mark.parametrize("setup", SETUPS)
def test_thresholds_make_every_rule_fire(setup):
    """Otherwise a rule could leak its neutral value unseen: the invariant below would test nothing.

    ZClip is the exception: its 25-step warm-up sets the mean from the early, large norms, and on these
    smoothly converging 3-epoch runs no later norm rises above it (measured: 0 clips at z = 0.5 to 2.5).
    test_clipper_groups_equal_each_run_alone feeds it spikes instead, so it fires there.
    """
    for s in STRATEGIES[1:]:
        for second in (False, True):
            r = _alone(_run(setup, s, second))
            assert r.diverged is None and len(r.records) == EPOCHS, r.label
            if s != "zclip":
                assert np.mean([e.clip_rate for e in r.records]) > 0.05, (setup, r.label)


@pytest.mark.parametrize("job", [name for name, _ in JOBS])
@pytest.mark.parametrize("setup", SETUPS)
def test_each_run_in_a_batch_equals_the_run_alone(setup, job):
    members = dict(JOBS)[job]
    runs = [_run(setup, s, second) for s, second in members]
    got = train(runs, device="cpu", dataset=_dataset(setup))
    for r, run in zip(got, runs, strict=True):
        alone = _alone(run)
        assert r.diverged == alone.diverged is None, (r.label, r.diverged)
        assert len(r.records) == EPOCHS
        a1, b1 = _series(r, 1), _series(alone, 1)
        for k in a1:
            np.testing.assert_allclose(a1[k], b1[k], rtol=1e-6, atol=0, err_msg=f"{r.label} {k} epoch 1")
        a, b = _series(r, EPOCHS), _series(alone, EPOCHS)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=0, err_msg=f"{r.label} {k} {EPOCHS} epochs")


def test_clipper_groups_equal_each_run_alone():
    """The Clipper alone: 14 runs (two per strategy, interleaved) on 80 steps of spiky gradients, with a NaN,
    an inf and an all-zero gradient in some runs, clip each run exactly as a one-run Clipper of its own does."""
    lay = clipping.Layout([(25, 20), (25,), (1, 25), (1,)])
    names = [s for _ in range(2) for s in STRATEGIES]
    thr = [0.0 if s == "none" else (THRESHOLDS if i < 7 else SECOND)[s] for i, s in enumerate(names)]
    thr = torch.tensor(thr)
    mixed = clipping.Clipper(names, thr, lay)
    alone = [clipping.Clipper([s], thr[i : i + 1], lay) for i, s in enumerate(names)]
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(len(names), lay.numel, generator=gen) * 0.3
    fired = torch.zeros(len(names), dtype=torch.bool)
    for step in range(80):
        spike = 30.0 if step in (40, 55, 56, 70) else 1.0  # after ZClip's 25-step warm-up
        g = torch.randn(len(names), lay.numel, generator=gen) * spike / (1 + step / 20)
        if step == 30:
            g[3, 5] = float("nan")  # tensor-norm run: one tensor non-finite
        if step == 33:
            g[12, 0] = float("inf")  # zclip run (second threshold)
        if step == 36:
            g[2] = 0.0  # a norm run with a zero gradient
        got = g.clone()
        stats = mixed(got, w)
        fired |= stats.clipped
        for i, one in enumerate(alone):
            gi = g[i : i + 1].clone()
            si = one(gi, w[i : i + 1])
            assert torch.equal(got[i], gi[0]) or torch.allclose(got[i], gi[0], rtol=1e-6, atol=0, equal_nan=True)
            for field, a, b in zip(stats._fields, stats, si, strict=True):
                torch.testing.assert_close(a[i], b[0], rtol=1e-12, atol=0, equal_nan=True, msg=f"{names[i]} {field}")
    assert fired.tolist() == [s != "none" for s in names]  # every rule clipped something


def _cli_json(tmp_path, name: str, clips: list[str]) -> dict:
    out = tmp_path / f"{name}.json"
    argv = ["run", "--preset", "tutorial-scaled", "--epochs", "3", "--quiet", "--device", "cpu", "--out", str(out)]
    assert main(argv + [a for c in clips for a in ("--clip", c)]) == 0
    return json.loads(out.read_text())


def test_cli_all_seven_strategies_give_each_run_its_losses_alone(tmp_path):
    """`python -m clipviz run --preset tutorial-scaled --epochs 3` with every strategy (registry defaults)."""
    out = tmp_path / "all.json"
    cmd = [sys.executable, "-m", "clipviz", "run", "--preset", "tutorial-scaled", "--epochs", "3", "--quiet"]
    cmd += [a for s in STRATEGIES for a in ("--clip", s)] + ["--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "diverged" not in proc.stdout, proc.stdout
    together = json.loads(out.read_text())["runs"]
    assert [r["spec"]["clip"]["strategy"] for r in together] == list(STRATEGIES)
    for r in together:
        alone = _cli_json(tmp_path, r["spec"]["clip"]["strategy"], [r["spec"]["clip"]["strategy"]])["runs"][0]
        assert alone["label"] == r["label"] and r["diverged"] is None and len(r["epochs"]) == 3
        for key in ("train_loss", "val_loss"):
            np.testing.assert_allclose(r["epochs"][-1][key], alone["epochs"][-1][key], rtol=1e-4, err_msg=r["label"])
