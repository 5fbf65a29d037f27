"""The lockstep engine: the tutorial story, the reference oracle, fairness and repeatability."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import replace
from statistics import median

import numpy as np
import pytest
import torch

from clipviz.config import PRESETS, TUTORIAL, TUTORIAL_CLIPS, ClipSpec, ConfigError, ModelSpec, OptimSpec, with_clips
from clipviz.data import load_dataset
from clipviz.engine import Engine, train
from clipviz.records import VALUE_EDGES, group_records
from clipviz.reference import train_reference


def _epochs(spec, n):
    return replace(spec, optim=replace(spec.optim, epochs=n))


@pytest.fixture(scope="module")
def tutorial_story():
    """The article's three runs for seeds 1-5: 15 runs in one lockstep job, 100 epochs."""
    runs = with_clips(TUTORIAL, TUTORIAL_CLIPS, seeds=(1, 2, 3, 4, 5))
    return train(runs, device="cpu")


def _by_strategy(results, strategy):
    return [r for r in results if r.spec.clip.strategy == strategy]


def test_no_clipping_explodes_in_epoch_one(tutorial_story):
    for r in _by_strategy(tutorial_story, "none"):
        assert r.diverged is not None and r.diverged[0] == 1, r.label
        assert 2 <= r.diverged[1] <= 16  # measured: around step 8-10 of 16
        assert len(r.records) == 1
        last = r.records[-1]
        assert not math.isfinite(last.train_loss) or not all(map(math.isfinite, last.grad_norm_pre))


@pytest.mark.parametrize("strategy", ["value", "norm"])
def test_clipping_trains_the_tutorial(tutorial_story, strategy):
    runs = _by_strategy(tutorial_story, strategy)
    assert len(runs) == 5
    finals = []
    for r in runs:
        assert r.diverged is None, r.label
        assert len(r.records) == 100
        assert all(math.isfinite(e.train_loss) and math.isfinite(e.val_loss) for e in r.records)
        finals.append(r.final.val_loss)
    # the target's variance is ~23,000; the article reports 10.0 (value) and 27.4 (norm)
    assert max(finals) < 500, finals
    assert median(finals) < 100, finals


def test_records_show_what_the_clips_did(tutorial_story):
    norm_runs = _by_strategy(tutorial_story, "norm")
    rate = np.mean([e.clip_rate for r in norm_runs for e in r.records])
    pre = np.median([v for r in norm_runs for e in r.records for v in e.grad_norm_pre])
    post = max(v for r in norm_runs for e in r.records for v in e.grad_norm_post)
    assert rate > 0.95  # global norm 1 fires on nearly every step...
    assert pre > 50  # ...because the pre-clip norm sits far above it
    assert post <= 1.0 + 1e-5
    value_runs = _by_strategy(tutorial_story, "value")
    frac = np.mean([e.elem_clip_frac for r in value_runs for e in r.records])
    assert 0.01 < frac < 0.5  # value clipping trims a minority of elements
    lo, hi = VALUE_EDGES[:-1], VALUE_EDGES[1:]
    outside = (lo > 5) | (hi <= -5)  # bins wholly beyond +-5
    for r in value_runs:
        post = np.asarray(r.records[-1].value_hist_post)  # [below, bins..., above, NaN]
        assert post[1:-2][outside].sum() == 0 and post[0] == post[-2] == post[-1] == 0
        pre = np.asarray(r.records[0].value_hist_pre)
        assert pre[1:-2][outside].sum() > 0  # ...while the raw gradient did reach past them


ORACLE_CASES = [
    ("tutorial", "value:5", "sgd"),
    ("tutorial", "norm:1", "sgd"),
    ("tutorial-scaled", "none", "sgd"),
    ("tutorial", "tensor-norm:1", "sgd"),
    ("tutorial", "agc:0.01", "sgd"),
    ("tutorial-scaled", "autoclip:10", "sgd"),
    ("tutorial-scaled", "zclip:2.5", "sgd"),
    ("tutorial-scaled", "norm:1", "adam"),
    ("tutorial-scaled", "value:0.5", "rmsprop"),
    ("adding-rnn", "norm:1", "sgd"),
]


@pytest.mark.parametrize("preset,clip,opt", ORACLE_CASES)
def test_batched_run_equals_plain_torch_loop(preset, clip, opt):
    """Reference oracle: nn.Module + torch.optim + torch.nn.utils.clip_grad_* on the same seed."""
    base = PRESETS[preset]
    if preset == "adding-rnn":
        # the preset is built to explode (init x3, lr 0.05): chaos would amplify rounding; use a tame copy
        base = replace(
            base, data=replace(base.data, n_samples=256, seq_len=10), model=replace(base.model, init_scale=1.0)
        )
        base = replace(base, optim=replace(base.optim, lr=0.01))
    base = replace(base, optim=replace(base.optim, name=opt, epochs=3, lr=0.001 if opt != "sgd" else base.optim.lr))
    clip = ClipSpec.parse(clip)
    # run it beside two other setups so batching, grouping and the per-run lr are exercised
    runs = with_clips(base, [ClipSpec("value", 1.0), clip, ClipSpec("norm", 3.0)])
    runs[2] = replace(runs[2], optim=replace(runs[2].optim, lr=base.optim.lr / 2))
    ds = load_dataset(base.data)
    got = train(runs, device="cpu", dataset=ds)[1]
    ref = train_reference(runs[1], dataset=ds)
    assert got.diverged is None
    # value clipping on the unscaled tutorial is chaotic (DESIGN.md: a 1e-12 perturbation changes epoch-10 loss
    # by ~30%), so float rounding that differs between CPUs grows past any fixed tolerance after epoch 1:
    # compare that case over its first epoch only; every other case over all three
    n = 1 if (preset, clip.strategy) == ("tutorial", "value") else len(ref.train_loss)
    steps = len(got.records[0].grad_norm_pre) * n
    np.testing.assert_allclose([e.train_loss for e in got.records][:n], ref.train_loss[:n], rtol=2e-5)
    np.testing.assert_allclose([e.val_loss for e in got.records][:n], ref.val_loss[:n], rtol=2e-5)
    pre = [v for e in got.records for v in e.grad_norm_pre]
    np.testing.assert_allclose(pre[:steps], ref.grad_norm_pre[:steps], rtol=2e-5)


def test_first_epoch_matches_reference_to_1e6():
    """Before chaos amplifies rounding, the batched value/norm runs agree with torch to ~1e-6."""
    ds = load_dataset(TUTORIAL.data)
    runs = with_clips(_epochs(TUTORIAL, 1), [ClipSpec("value", 5.0), ClipSpec("norm", 1.0)])
    got = train(runs, device="cpu", dataset=ds)
    for res, spec in zip(got, runs):
        ref = train_reference(spec, dataset=ds)
        np.testing.assert_allclose(res.records[0].grad_norm_pre, ref.grad_norm_pre, rtol=1e-6)
        np.testing.assert_allclose(res.records[0].val_loss, ref.val_loss[0], rtol=1e-6)


def test_runs_start_identical_and_share_minibatch_order():
    runs = with_clips(_epochs(TUTORIAL, 2), [ClipSpec("value", 5.0), ClipSpec("norm", 1.0), ClipSpec("value", 5.0)])
    eng = Engine(runs, device="cpu")
    for p in eng.params:
        assert torch.equal(p[0], p[1]) and torch.equal(p[0], p[2])
    res = list(eng)
    a, c = [r for r in res if r.run == 0], [r for r in res if r.run == 2]
    # same init + same order + same clip -> bit-identical, although a different run sat between them
    assert [r.grad_norm_pre for r in a] == [r.grad_norm_pre for r in c]
    # a different seed gives different weights
    eng2 = Engine(with_clips(_epochs(TUTORIAL, 1), [ClipSpec("value", 5.0)], seeds=(1, 2)), device="cpu")
    assert not torch.equal(eng2.params[0][0], eng2.params[0][1])


def test_same_seed_is_bit_for_bit_repeatable():
    runs = with_clips(_epochs(TUTORIAL, 3), TUTORIAL_CLIPS, seeds=(3, 4))
    a, b = train(runs, device="cpu"), train(runs, device="cpu")
    for x, y in zip(a, b):
        for r in x.records + y.records:
            r.wall_time = 0.0  # the one field that may differ
        assert [r.to_json_dict() for r in x.records] == [r.to_json_dict() for r in y.records]


def test_diverged_run_freezes_and_others_are_unaffected():
    base = _epochs(TUTORIAL, 3)
    alone = train(with_clips(base, [ClipSpec("norm", 1.0)]), device="cpu")[0]
    beside = train(with_clips(base, [ClipSpec("none"), ClipSpec("norm", 1.0)]), device="cpu")
    assert beside[0].diverged is not None and len(beside[0].records) == 1
    np.testing.assert_allclose([e.val_loss for e in beside[1].records], [e.val_loss for e in alone.records], rtol=1e-6)


def test_stop_event_ends_between_epochs():
    stop = threading.Event()
    eng = Engine(with_clips(_epochs(TUTORIAL, 50), [ClipSpec("norm", 1.0)]), device="cpu", stop=stop)
    seen = []
    for rec in eng:
        seen.append(rec.epoch)
        if rec.epoch == 2:
            stop.set()
    assert seen == [1, 2]


def test_recording_off_gives_same_losses():
    runs = with_clips(_epochs(TUTORIAL, 2), TUTORIAL_CLIPS)
    on, off = train(runs, device="cpu"), train(runs, device="cpu", record=False)
    light = train(runs, device="cpu", histograms=False)
    lean = train(runs, device="cpu", histograms=False, detail=False)  # what a sweep asks for
    for a, b, c, d in zip(on, off, light, lean, strict=True):
        assert [e.val_loss for e in a.records] == [e.val_loss for e in b.records] == [e.val_loss for e in c.records]
        assert [e.val_loss for e in a.records] == [e.val_loss for e in d.records]
        assert a.diverged == b.diverged == c.diverged == d.diverged
        for ea, ec, ed in zip(a.records, c.records, d.records, strict=True):  # NaN == NaN here
            np.testing.assert_array_equal(ea.grad_norm_pre, ec.grad_norm_pre)
            np.testing.assert_array_equal(ea.grad_norm_pre, ed.grad_norm_pre)
            assert (ea.clip_rate, ea.elem_clip_frac) == (ed.clip_rate, ed.elem_clip_frac)
            assert ea.grad_norm_post and ea.layer_norms and not ed.grad_norm_post and not ed.layer_norms
            # per-tensor norms: from the histogram buffer once an epoch (a), or measured every step (c): the same bits
            assert list(ea.layer_norms) == list(ec.layer_norms)
            np.testing.assert_array_equal(list(ea.layer_norms.values()), list(ec.layer_norms.values()))
            np.testing.assert_array_equal(ea.grad_norm_post, ec.grad_norm_post)
        assert a.records[0].value_hist_pre and not c.records[0].value_hist_pre


def test_deep_narrow_net_explodes_without_clipping_and_trains_with_it():
    res = train(with_clips(PRESETS["deep-mlp"], [ClipSpec("none"), ClipSpec("norm", 1.0)]), device="cpu")
    assert res[0].diverged is not None
    assert res[1].diverged is None and math.isfinite(res[1].final.val_loss)


def test_engine_rejects_bad_setups():
    with pytest.raises(ConfigError, match="share"):
        Engine([TUTORIAL, replace(TUTORIAL, model=ModelSpec(width=8))], device="cpu")
    with pytest.raises(ConfigError, match="learning rate"):
        Engine([replace(TUTORIAL, optim=OptimSpec(lr=-1.0))], device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            Engine([TUTORIAL], device="cuda")


def test_tutorial_init_is_keras_he_uniform_then_glorot():
    """Keras he_uniform draws U(-sqrt(6/fan_in), +); Dense's default glorot_uniform U(-sqrt(6/(in+out)), +)."""
    from clipviz.models import init_params

    w1, b1, w2, b2 = init_params(TUTORIAL.model, 20, seed=1)
    he, glorot = math.sqrt(6 / 20), math.sqrt(6 / (25 + 1))
    assert w1.shape == (25, 20) and w2.shape == (1, 25)
    assert w1.abs().max() <= he and w1.abs().max() > 0.95 * he  # 500 draws reach near the bound
    assert abs(float(w1.std()) - he / math.sqrt(3)) < 0.05  # std of U(-a, a) is a/sqrt(3)
    assert w2.abs().max() <= glorot
    assert not b1.any() and not b2.any()  # Keras biases start at zero


def test_value_bins_match_the_edges():
    """The bit-twiddled bin of every special and ordinary value equals a search on records.VALUE_EDGES."""
    from clipviz.engine import value_bins

    edges = np.asarray(VALUE_EDGES)
    specials = [0.0, -0.0, math.inf, -math.inf, 1e-30, -1e-30, 2.0**-14, -(2.0**-14), 2.0**14, -(2.0**14), 3e38]
    x = torch.tensor(
        specials + list(np.random.default_rng(0).standard_normal(2000) * 10.0 ** np.arange(-6, 6).repeat(167)[:2000])
    )
    x = x.float()
    got = value_bins(torch.cat([x, torch.tensor([math.nan])])).numpy()
    v = x.double().numpy()
    # bins closed toward zero on both sides: positive v in [e_i, e_i+1) -> 31 + i ..., mirrored for negative v
    pos = 30 + np.searchsorted(edges[edges > 0], np.abs(v), side="right")
    neg = 29 - np.searchsorted(edges[edges > 0], np.abs(v), side="right")
    want = np.where(np.signbit(v), neg, pos)
    np.testing.assert_array_equal(got[:-1], want)
    assert got[-1] == len(VALUE_EDGES) + 1  # NaN: the last bin


def test_compile_falls_back_to_eager_with_a_note_where_it_cannot_compile(monkeypatch):
    """--compile is off by default; where a setup cannot compile, the engine says why and trains eagerly."""
    from clipviz import engine as engine_mod

    base = _epochs(TUTORIAL, 1)
    assert Engine(with_clips(base, [ClipSpec("norm", 1.0)]), device="cpu").compile_note is None
    adam = replace(base, optim=replace(base.optim, name="adam", lr=0.001))
    autoclip = with_clips(base, [ClipSpec("autoclip", 10.0)])
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    for runs, why in (
        (with_clips(adam, [ClipSpec("norm", 1.0)]), "SGD and RMSprop"),
        (autoclip, "stateless clipping"),
        (with_clips(base, [ClipSpec("norm", 1.0)]), "no C++ compiler"),
    ):
        eng = Engine(runs, device="cpu", compile=True)
        assert why in eng.compile_note and "eagerly" in eng.compile_note
        eager = train(runs, device="cpu")
        assert [r.val_loss for r in eng] == [r.val_loss for r in eager[0].records]  # trained, eagerly
    assert "MLP" in engine_mod.compile_unsupported("rnn", {"sgd"}, {"norm"})


def _rnn_exploding():
    """The adding task's RNN, small, with lr 1.0: without clipping, seeds 1 and 2 diverge in epochs 3 and 4
    (measured), and norm clipping trains."""
    rnn = PRESETS["adding-rnn"]
    return replace(rnn, data=replace(rnn.data, n_samples=256), optim=replace(rnn.optim, epochs=6, lr=1.0))


COMPACT_CASES = {
    # one seed: the seed group's width d goes 3 -> 2 when 'none' leaves
    "tutorial-3way": with_clips(_epochs(TUTORIAL, 6), TUTORIAL_CLIPS),
    # two seeds, runs interleaved by the caller: 'none' leaves from the middle of the caller's order
    "tutorial-mixed": with_clips(
        _epochs(TUTORIAL, 6), [ClipSpec("value", 5.0), ClipSpec("none"), ClipSpec("norm", 1.0)], seeds=(1, 2)
    ),
    # stateful rules losing some of their rows (autoclip at the 100th percentile never clips below the max,
    # zclip at z = 1000 never fires): their histories are cut to the live rows
    "stateful": with_clips(
        _epochs(TUTORIAL, 6),
        [ClipSpec("autoclip", 10.0), ClipSpec("autoclip", 100.0), ClipSpec("zclip", 2.0), ClipSpec("zclip", 1000.0)],
        seeds=(1, 2),
    ),
    "rnn": with_clips(_rnn_exploding(), [ClipSpec("none"), ClipSpec("norm", 1.0)], seeds=(1, 2)),
    # width 5: the seed group's first-layer GEMMs go from 15 to 10 rows, where this machine's BLAS rounds
    # differently (grouped.keeps_bits), so the runs stay in the batch, frozen (on another BLAS they may leave)
    "narrow": with_clips(replace(_epochs(TUTORIAL, 3), model=replace(TUTORIAL.model, width=5)), TUTORIAL_CLIPS),
}


@pytest.mark.parametrize("refuse", [False, True])
@pytest.mark.parametrize("case", COMPACT_CASES)
def test_dropping_diverged_runs_changes_no_live_run(case, refuse, monkeypatch):
    """Diverged runs leave the batch after the epoch they are reported in, where the smaller batch's GEMMs
    keep every live run's bits (refuse: as if they did not); every record of every run, dead or alive, is
    bit-for-bit the one the batch gives with the frozen runs kept in it (compact=False)."""
    from clipviz import engine as engine_mod

    if refuse:
        monkeypatch.setattr(engine_mod, "keeps_bits", lambda *args: False)
    runs = COMPACT_CASES[case]
    ds = load_dataset(runs[0].data)
    eng = Engine(runs, device="cpu", dataset=ds)
    recs = list(eng)
    kept = Engine(runs, device="cpu", dataset=ds, compact=False)
    ref = list(kept)
    dead = {r.run for r in recs if r.diverged}
    assert dead and len(dead) < len(runs), "the case must have runs that diverge and runs that do not"
    compacted = len(eng.perm) == len(runs) - len(dead)
    assert compacted == (eng._refused is None) and len(kept.perm) == len(runs)
    if case == "rnn" or (not refuse and case != "narrow"):  # the RNN has no grouped GEMMs to check
        assert compacted
    for r in recs + ref:
        r.wall_time = 0.0
    assert [r.to_json_dict() for r in recs] == [r.to_json_dict() for r in ref]
    for a, b in zip(eng.params, kept.params, strict=True):  # a diverged run's parameters as it left
        assert torch.equal(a, b)


def test_histogram_buffer_size_changes_no_record(monkeypatch):
    """Gradients binned (and their per-tensor norms measured) a few steps at a time, not the epoch at once:
    every record is the same, bit for bit."""
    from clipviz import engine as engine_mod

    runs = with_clips(_epochs(TUTORIAL, 2), TUTORIAL_CLIPS)
    whole = train(runs, device="cpu")
    monkeypatch.setattr(engine_mod, "HIST_CHUNK", 3 * 3 * 551 + 1)  # 3 steps of 3 runs x 551 parameters
    eng = Engine(runs, device="cpu")
    assert eng.hist_buf.shape[1] == 3 < eng.steps_per_epoch
    chunked = group_records(runs, list(eng))
    for a, b in zip(whole, chunked, strict=True):
        for r in a.records + b.records:
            r.wall_time = 0.0
        assert [json.dumps(r.to_json_dict()) for r in a.records] == [json.dumps(r.to_json_dict()) for r in b.records]
