"""Charts: records -> figures. Properties: every run drawn, non-finite values shown as markers, colours fixed per
strategy, figures serialise (no NaN crash), empty and partial inputs handled."""

import json
import math
import warnings
from dataclasses import replace

import numpy as np
import plotly.graph_objects as go
import pytest

from clipviz.config import TUTORIAL, ClipSpec, OptimSpec, RunSpec
from clipviz.records import NORM_EDGES, VALUE_EDGES, EpochRecord, RunResult, norm_bins
from clipviz.ui import charts

INF, NAN = math.inf, math.nan
N_VALUE = len(VALUE_EDGES) + 2


def _rec(epoch, train, val, norms=(1.0, 2.0, 3.0), *, label="run", diverged=None, clip=0.5, vhist=None):
    post = [min(n, 1.0) if math.isfinite(n) else n for n in norms]
    hist = vhist if vhist is not None else [0] * 20 + [5, 10, 5] + [0] * (N_VALUE - 23)
    return EpochRecord(
        run=0,
        label=label,
        epoch=epoch,
        train_loss=train,
        val_loss=val,
        grad_norm_pre=list(norms),
        grad_norm_post=post,
        layer_norms={"hidden1.weight": norms[0], "hidden1.bias": norms[0] / 2, "out.weight": norms[-1]},
        clip_rate=clip,
        elem_clip_frac=clip / 2,
        value_hist_pre=list(hist),
        value_hist_post=list(hist),
        diverged=diverged,
    )


def _run(strategy="none", threshold=None, losses=(100.0, 50.0, 20.0), seed=1, lr=0.01, **kw):
    spec = RunSpec(clip=ClipSpec(strategy, threshold), seed=seed, optim=OptimSpec(lr=lr, epochs=3))
    spec = replace(spec, label=kw.pop("label", ""))
    recs = [_rec(e, v, v * 1.1, label=spec.name, **kw) for e, v in enumerate(losses, start=1)]
    return RunResult(spec, recs)


def _diverged():
    """The tutorial's 'none' run: inf/NaN loss and norms at epoch 1, step 8, then no more records."""
    spec = RunSpec(clip=ClipSpec("none"), optim=OptimSpec(epochs=3))
    rec = _rec(1, INF, NAN, (400.0, 2e3, 1e9, INF, NAN), label="none", diverged=(1, 8))
    rec.value_hist_pre[-1] = 4388  # NaN elements
    return RunResult(spec, [rec])


@pytest.fixture
def tutorial():
    return [_diverged(), _run("value", 5.0, (900.0, 500.0, 300.0)), _run("norm", 1.0, (2e4, 1.9e4, 1.8e4))]


def _strict_json(fig: go.Figure) -> dict:
    """The figure as JSON that a browser can parse: no NaN/Infinity tokens anywhere."""

    def bad(token):
        raise AssertionError(f"non-JSON token {token} in figure")

    fig.to_html(include_plotlyjs=False)
    return json.loads(fig.to_json(), parse_constant=bad)


def _texts(fig: go.Figure) -> str:
    """Every human-readable string: trace names, text, hover text, annotations."""
    parts = []
    for t in fig.data:
        for attr in ("name", "text", "hovertext", "hovertemplate"):
            v = getattr(t, attr, None)
            parts.append(" ".join(map(str, np.ravel(v))) if isinstance(v, (list, tuple, np.ndarray)) else str(v))
    parts += [a.text for a in fig.layout.annotations]
    return "\n".join(parts)


def _all_figures(results):
    return {
        "loss": charts.loss_curves(results),
        "loss_lin": charts.loss_curves(results, which=("val",), log_y=False),
        "grid": charts.norm_distribution_grid(results),
        "grid_post": charts.norm_distribution_grid(results, post=True),
        "epoch1": charts.epoch_histogram(results, 1),
        "epoch3": charts.epoch_histogram(results, 3, post=True),
        "layers": charts.layer_norms(results),
        "clip": charts.clip_rate(results),
        "values": charts.value_histogram(results),
        "values1": charts.value_histogram(results, epoch=1, post=False),
        "seeds": charts.seed_band(results),
    } | {f"dist{i}": charts.norm_distribution(r) for i, r in enumerate(results)}


def test_every_figure_serialises_with_nan_and_inf(tutorial):
    for name, fig in _all_figures(tutorial).items():
        assert isinstance(fig, go.Figure), name
        _strict_json(fig)
        assert fig.layout.uirevision, f"{name}: zoom would reset on every live update"


@pytest.mark.parametrize("results", [[], [RunResult(RunSpec())]], ids=["no runs", "run without epochs"])
def test_empty_inputs_give_a_message_not_an_error(results):
    for name, fig in _all_figures(results).items():
        _strict_json(fig)
        assert fig.layout.annotations, f"{name} shows nothing to explain the empty chart"
    assert charts.runs_table(results).shape[0] == len(results)


def test_loss_curves_mark_divergence_and_nonfinite_points(tutorial):
    fig = charts.loss_curves(tutorial)
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert len(lines) == 2 * len(tutorial)  # train and val for every run, the diverged one included
    assert {t.line.dash for t in lines} == {"solid", "dash"}
    labels = [t for t in fig.data if t.text and any("diverged at epoch 1, step 8" in s for s in t.text)]
    assert len(labels) == 1 and labels[0].text[0] == "none diverged at epoch 1, step 8"
    # inf train loss and NaN val loss: drawn as red x markers above every finite value, not dropped
    marks = [t for t in fig.data if t.mode == "markers"]
    hovers = " ".join(h for t in marks for h in t.hovertext)
    assert "train loss = inf (diverged at epoch 1, step 8)" in hovers and "val loss = nan" in hovers
    finite = [y for t in lines for y in t.y if y is not None]
    assert all(y > max(finite) for t in marks for y in t.y)
    assert fig.layout.yaxis.type == "log"


def test_log_axis_marks_zero_and_negative_values():
    fig = charts.loss_curves([_run("value", 1.0, (10.0, 0.0, -1.0))], which=("train",))
    (mark,) = [t for t in fig.data if t.mode == "markers"]
    assert list(mark.x) == [2, 3] and all(y < 10.0 for y in mark.y)
    assert "not shown on a log axis" in mark.hovertext[0]
    lin = charts.loss_curves([_run("value", 1.0, (10.0, 0.0, -1.0))], which=("train",), log_y=False)
    assert [t for t in lin.data if t.mode == "lines+markers"][0].y == (10.0, 0.0, -1.0)


def test_strategy_colours_are_fixed_and_shared_across_figures(tutorial):
    assert len(set(charts.STRATEGY_COLORS.values())) == len(charts.STRATEGY_COLORS) == 7
    for res in tutorial:
        c = charts.strategy_color(res.spec.clip.strategy)
        assert charts.strategy_color(res) == charts.strategy_color(res.spec) == charts.strategy_color(res.label) == c
    assert charts.strategy_color("tensor-norm:1 seed=3") == charts.STRATEGY_COLORS["tensor-norm"]
    expected = {r.label: charts.strategy_color(r) for r in tutorial}
    loss = {t.legendgroup: t.line.color for t in charts.loss_curves(tutorial).data if t.mode == "lines+markers"}
    clip = {t.name: t.line.color for t in charts.clip_rate(tutorial).data if t.mode == "lines+markers"}
    hist = {t.name: t.line.color for t in charts.epoch_histogram(tutorial, 2).data if t.mode == "lines"}
    assert loss == expected and clip == expected
    assert hist["value:5"] == expected["value:5"] and hist["norm:1"] == expected["norm:1"]
    titles = {a.text.split("<br>")[0]: a.font.color for a in charts.value_histogram(tutorial).layout.annotations}
    assert all(titles[k] == v for k, v in expected.items())


def test_runs_of_one_strategy_share_hue_but_differ_in_lightness():
    runs = [_run("norm", t) for t in (0.1, 1.0, 10.0)] + [_run("value", 5.0)]
    colors = charts.run_colors(runs)
    assert len(set(colors)) == 4 and colors[3] == charts.STRATEGY_COLORS["value"]
    hues = [charts.colorsys.rgb_to_hls(*(int(c[i : i + 2], 16) / 255 for i in (1, 3, 5)))[0] for c in colors[:3]]
    assert max(hues) - min(hues) < 0.02


def test_norm_distribution_heatmap_counts_threshold_and_nonfinite_row(tutorial):
    fig = charts.norm_distribution(tutorial[2])
    (hm,) = [t for t in fig.data if isinstance(t, go.Heatmap)]
    assert list(hm.x) == [1, 2, 3]
    assert np.nansum(hm.z) == 3 * 3  # every step of every epoch counted once (NaN: an empty cell)
    assert any(s.type == "line" and s.y0 == pytest.approx(0.0) for s in fig.layout.shapes)  # norm clip at 1
    assert "non-finite" in fig.layout.yaxis.ticktext
    div = charts.norm_distribution(tutorial[0])
    (hm,) = [t for t in div.data if isinstance(t, go.Heatmap)]
    assert list(hm.z[-1]) == [2]  # inf and NaN norms land in the top 'non-finite' row
    assert np.nansum(hm.z) == 5
    (mark,) = [t for t in div.data if isinstance(t, go.Scatter)]
    assert mark.text == ("2",) and "diverged at epoch 1, step 8" in mark.hovertext[0]
    assert not [s for s in div.layout.shapes if s.type == "line"]  # 'none' has no threshold line
    custom = charts.norm_distribution(tutorial[1], threshold=5.0)
    assert any(s.y0 == pytest.approx(math.log10(5.0)) for s in custom.layout.shapes)


def test_norm_grid_shares_axes_one_column_per_run(tutorial):
    fig = charts.norm_distribution_grid(tutorial)
    heatmaps = [t for t in fig.data if isinstance(t, go.Heatmap)]
    # the same norm span in every column (a global-norm run's rows differ only by its own '= c' row)
    assert len(heatmaps) == 3 and len({(h.y[0], h.y[-1]) for h in heatmaps}) == 1
    assert fig.layout.yaxis2.matches == "y"  # same norm axis in every column
    # the epoch axis: each panel as wide as the epochs its run trained (a run that diverged in epoch 1 gets a narrow
    # one, at least 35% of a full panel), so an epoch has the same width in every panel that is not clamped
    assert list(fig.layout.xaxis3.range) == [0.5, 3.5] and list(fig.layout.xaxis2.range) == [0.5, 3.5]
    d1, d3 = (fig.layout[f"xaxis{k}"].domain for k in ("", "3"))
    assert (d1[1] - d1[0]) < 0.5 * (d3[1] - d3[0])
    assert all(h.coloraxis == "coloraxis" for h in heatmaps)  # one colour scale for all runs


def test_epoch_histogram_overlays_runs_and_explains_missing_ones(tutorial):
    fig = charts.epoch_histogram(tutorial, 2)
    steps = [t for t in fig.data if t.line.shape == "hv"]
    assert [t.name for t in steps] == ["value:5", "norm:1"]
    assert all(sum(t.y[:-1]) == 3 for t in steps)  # 3 steps each, on the shared log bins
    missing = [t for t in fig.data if t.name not in ("value:5", "norm:1")]  # a short legend entry, detail on hover
    assert [t.name for t in missing] == ["none (diverged ep 1)"]
    (note,) = [a for a in fig.layout.annotations if "no record for epoch 2" in a.text]
    assert "none: diverged at epoch 1, step 8" in note.hovertext
    assert fig.layout.xaxis.type == "log"
    first = charts.epoch_histogram(tutorial, 1)
    assert any(t.text and t.text[0] == "2 non-finite" for t in first.data)
    assert not [a for a in first.layout.annotations if "no record" in a.text]


def test_layer_norms_one_panel_per_run_one_colour_per_layer(tutorial):
    fig = charts.layer_norms(tutorial)
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert len(lines) == 3 * 3  # 3 tensors x 3 runs
    assert sum(bool(t.showlegend) for t in lines) == 3  # each layer in the legend once
    colour = {t.name: t.line.color for t in lines}
    assert colour["hidden1.weight"] == colour["hidden1.bias"] != colour["out.weight"]
    assert fig.layout.yaxis.type == "log"
    assert "epoch 1: ‖g[out.weight]‖ = nan (diverged at epoch 1, step 8)" in _texts(fig)  # a marker, not a gap


def test_clip_rate_adds_element_panel_for_value_clipping(tutorial):
    fig = charts.clip_rate(tutorial)
    assert [a.text for a in fig.layout.annotations][1].startswith("gradient elements clipped")
    elem = [t for t in fig.data if t.xaxis == "x2" and t.mode == "lines+markers"]
    assert [t.name for t in elem] == ["value:5"] and list(elem[0].y) == [0.25] * 3
    only_norm = charts.clip_rate([tutorial[2]])
    assert len(only_norm.layout.annotations) == 1


def test_value_histogram_marks_clip_value_and_nan(tutorial):
    fig = charts.value_histogram(tutorial, post=False, both=False)
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert len(bars) == 3 and all(len(b.y) == N_VALUE - 1 for b in bars)
    assert sum(v or 0 for v in bars[1].y) == 3 * 20  # summed over the 3 epochs
    vlines = sorted(s.x0 for s in fig.layout.shapes if s.type == "line")
    assert vlines == pytest.approx([-charts._symlog(5.0), charts._symlog(5.0)])  # ±c of the value run only
    assert any(t.text and t.text[0] == "4388 NaN" for t in fig.data)
    later = charts.value_histogram(tutorial, epoch=3)
    assert "none: diverged at epoch 1 — no record for epoch 3" in later.layout.title.subtitle.text


def test_seed_band_groups_seeds_and_counts_divergence():
    ok = [_run("value", 5.0, (10.0 * s, 5.0 * s, 2.0 * s), seed=s) for s in (1, 2, 3)]
    bad = [_run("value", 5.0, (40.0, INF), seed=s, diverged=None) for s in (4, 5)]
    for r in bad:
        r.records[-1].diverged = (2, 3)
    norm = [_run("norm", 1.0, (30.0, 20.0, 10.0), seed=s) for s in (1, 2)]
    fig = charts.seed_band(ok + bad + norm)
    medians = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in medians] == ["value:5 (2/5 seeds diverged)", "norm:1 (2 seeds)"]
    assert medians[0].y[2] == pytest.approx(np.median([4.0, 2.0, 6.0]) * 1.1)  # finite seeds only, val_loss
    bands = [t for t in fig.data if t.fill == "tonexty"]
    assert len(bands) == 2
    marks = [t for t in fig.data if t.mode == "markers"]
    assert len(marks) == 2  # one x per diverged seed, in its strategy's colour (a red-orange x read as value's)
    assert {t.marker.color for t in marks} == {medians[0].line.color}
    assert "diverged at epoch 2, step 3" in _texts(fig)


def test_runs_table_and_differing_columns(tutorial):
    df = charts.runs_table(tutorial)
    assert list(df["run"]) == ["none", "value:5", "norm:1"]
    assert df.loc[0, "diverged"] == "diverged at epoch 1, step 8" and df.loc[1, "diverged"] == ""
    assert math.isinf(df.loc[0, "final_train"]) and math.isnan(df.loc[0, "best_train"])
    assert df.loc[1, "best_val"] == pytest.approx(330.0)
    assert charts.differing_columns(df) == ["strategy", "threshold"]
    seeds = charts.runs_table([_run("norm", 1.0, seed=s, lr=lr) for s, lr in ((1, 0.1), (2, 0.1), (3, 0.01))])
    assert charts.differing_columns(seeds) == ["lr", "seed"]


def test_runs_of_different_lengths_and_nan_only_run():
    short = _run("value", 5.0, (10.0,))
    nan_only = RunResult(RunSpec(clip=ClipSpec("zclip", 2.5)), [_rec(e, NAN, NAN, (NAN, NAN)) for e in (1, 2)])
    results = [short, _run("norm", 1.0, (1.0, 2.0, 3.0, 4.0)), nan_only]
    for fig in _all_figures(results).values():
        _strict_json(fig)
    loss = charts.loss_curves(results)
    nan_marks = [t for t in loss.data if t.mode == "markers" and t.legendgroup == nan_only.label]
    assert sum(len(t.x) for t in nan_marks) == 4  # 2 epochs x train/val, all NaN, all shown
    assert list(charts.norm_distribution(nan_only).data[0].z[-1]) == [2, 2]


def test_norm_edges_assumption():
    # the heatmap's rows are a quarter decade each: below, the NORM_EDGES bins, above
    assert np.allclose(np.diff(np.log10(NORM_EDGES)), 0.25)


def test_empty_figure_message():
    fig = charts.empty_figure("start a run")
    assert fig.layout.annotations[0].text == "start a run" and not fig.data


def test_real_engine_output():
    from clipviz import engine
    from clipviz.config import TUTORIAL_CLIPS, with_clips

    spec = replace(TUTORIAL, optim=replace(TUTORIAL.optim, epochs=3))
    results = engine.train(with_clips(spec, TUTORIAL_CLIPS), device="cpu")
    with warnings.catch_warnings():  # e.g. numpy's 'divide by zero in log10': none may fire in normal use
        warnings.simplefilter("error")
        figs = _all_figures(results)
        for fig in figs.values():
            _strict_json(fig)
    text = _texts(charts.loss_curves(results))
    assert results[0].diverged is not None  # the unclipped tutorial explodes in epoch 1 (seed 1: step 8)
    assert "none diverged at epoch" in text
    assert len(charts.runs_table(results)) == 3


def test_symlog_is_silent_on_zero_and_nonfinite():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = charts._symlog([0.0, -0.0, 1e-30, NAN, INF, -INF, -5.0])
    assert got[:3] == pytest.approx([0.0, 0.0, 1e-30 / charts._V_MIN]) and math.isnan(got[3])
    assert list(got[4:6]) == [INF, -INF] and got[6] == pytest.approx(-charts._symlog(5.0))


# ---- fits half a 1280 px projector (~450 px wide) ----------------------------------------------------
def test_titles_are_short_and_legends_sit_below_the_plot(tutorial):
    for name, fig in _all_figures(tutorial).items():
        assert len(fig.layout.title.text) <= 40, f"{name}: title cut off at ~450 px: {fig.layout.title.text!r}"
        leg = fig.layout.legend
        assert (leg.orientation, leg.yref, leg.y, leg.yanchor) == ("h", "container", 0, "bottom"), name


def test_loss_legend_has_one_entry_per_run(tutorial):
    fig = charts.loss_curves(tutorial)
    # one entry per run, then one per line style (black): a legend a class can read with 3 or 15 runs
    names = [t.name for t in fig.data if t.showlegend is not False]
    assert names == ["none", "value:5", "norm:1", "train loss", "val loss"]
    styles = {t.name: (t.line.dash, t.line.color) for t in fig.data if t.name in ("train loss", "val loss")}
    assert styles == {"train loss": ("solid", "black"), "val loss": ("dash", "black")}
    assert charts.loss_curves(tutorial, which=("val",)).layout.title.text == "Loss: val"


def test_epoch_legend_of_a_missing_run_is_short(tutorial):
    fig = charts.epoch_histogram([*tutorial, _run("zclip", 2.5, (1.0,))], 2)
    assert [t.name for t in fig.data if t.mode == "lines" and t.x == (None,)] == ["none (diverged ep 1)",
                                                                                  "zclip:2.5 (no epoch 2)"]  # fmt: skip
    assert all(len(t.name) <= 25 for t in fig.data if t.showlegend is not False)


@pytest.mark.parametrize("epochs", [3, 40])
def test_epoch_axis_starts_near_zero_and_keeps_the_last_epoch(epochs):
    losses = tuple(100.0 / e for e in range(1, epochs + 1))
    late = _run("none", None, losses[:-1] + (INF,), label="late")
    late.records[-1].diverged = (epochs, 5)  # labelled to the left of its marker: autorange used to reach -10
    results = [late, _run("norm", 1.0, losses)]
    for name, fig in {
        "loss": charts.loss_curves(results),
        "layers": charts.layer_norms(results),
        "clip": charts.clip_rate(results),
        "seeds": charts.seed_band(results),
    }.items():
        lo, hi = fig.layout.xaxis.range
        assert (lo == 0 if epochs > 5 else 0.5 <= lo < 1) and epochs < hi <= epochs * 1.1 + 0.5, name
        assert fig.layout.xaxis.dtick >= epochs / 8, name


def test_small_multiples_have_few_small_ticks_and_one_x_title(tutorial):
    six = [_run("value", t, (900.0, 500.0, 300.0)) for t in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)]
    for name, fig in {
        "grid": charts.norm_distribution_grid(tutorial),
        "layers": charts.layer_norms(six),
        "values": charts.value_histogram(six),
    }.items():
        axes = [fig.layout[k] for k in fig.layout if k.startswith("xaxis")]
        assert len(axes) in (3, 6), name
        assert sum(bool(a.title.text) for a in axes) == 1, f"{name}: one x title per panel overlaps at half width"
        assert all(a.tickfont.size < 16 for a in axes), name
    assert len(charts.value_histogram(six).layout.xaxis.tickvals) <= 4
    # a log y shared by panels must autorange (with the x range fixed, plotly.js froze it at [0.1, 1e4]), or have
    # its range set (layers: from the runs that did not diverge)
    assert charts.layer_norms(tutorial).layout.yaxis.range is not None
    assert charts.value_histogram(tutorial).layout.yaxis.autorange is True


def test_empty_panel_keeps_its_axes(tutorial):
    fig = charts.norm_distribution_grid([_run("norm", 1.0), RunResult(tutorial[0].spec, [])])
    assert any(t.xaxis == "x2" and t.yaxis == "y2" for t in fig.data)  # else plotly drops the axes the note sits on
    (note,) = [a for a in fig.layout.annotations if a.text == "no epochs yet"]
    assert note.xref == "x2 domain"


def test_values_a_run_with_nothing_finite_gets_a_note_not_a_panel(tutorial):
    fig = charts.value_histogram(tutorial, epoch=3)  # 'none' diverged in epoch 1
    assert [a.text for a in fig.layout.annotations if a.text in ("none", "value:5", "norm:1")] == ["value:5", "norm:1"]
    assert fig.layout.title.subtitle.text == "none: diverged at epoch 1 — no record for epoch 3"
    assert fig.layout.title.subtitle.font.size >= 16
    nan_only = _diverged()
    nan_only.records[0].value_hist_post = [0] * (N_VALUE - 1) + [4388]
    nan_only.records[0].value_hist_pre = list(nan_only.records[0].value_hist_post)
    fig = charts.value_histogram([nan_only, tutorial[1]], epoch=1)
    assert fig.layout.title.subtitle.text == "none: diverged at epoch 1 — no finite values"
    alone = charts.value_histogram([nan_only], epoch=1)  # nothing to draw at all: the message, no empty axes
    assert "no finite values" in alone.layout.annotations[0].text.replace("<br>", " ")
    assert charts.value_histogram(tutorial, epoch=1).layout.title.subtitle.text is None  # epoch 1 has values


def test_values_panels_use_the_width_two_a_row():
    three = [_run("value", 5.0), _run("norm", 1.0), _run("tensor-norm", 1.0)]
    fig = charts.value_histogram(three, height=380)
    left, right = fig.layout.xaxis.domain
    assert right - left > 0.4  # two panels a row, not three (~80 px each at half a 1280 px projector)
    assert fig.layout.xaxis3.domain == fig.layout.xaxis.domain  # the third starts a second row...
    assert fig.layout.height >= 2 * 320  # ...with a height of its own
    two = charts.value_histogram(three[:2], height=380)
    assert two.layout.height == 380 and two.layout.xaxis.domain[1] > 0.4


def test_loss_chart_marks_divergence_in_the_runs_colour_and_ticks_decades(tutorial):
    fig = charts.loss_curves(tutorial)
    none = next(t for t in fig.data if t.text and "diverged" in t.text[0])
    assert none.marker.color == charts.strategy_color("none") == none.textfont.color
    assert fig.layout.yaxis.dtick == 1  # powers of ten only on the log axis


def test_loss_chart_steps_axis_and_smoothing(tutorial):
    raw = charts.loss_curves(tutorial)
    fig = charts.loss_curves(tutorial, x="step", smoothing=0.6)
    line = next(t for t in fig.data if t.name == "value:5")
    steps = len(tutorial[1].records[0].grad_norm_pre)
    assert list(line.x) == [r.epoch * steps for r in tutorial[1].records]
    assert list(line.customdata) == [r.train_loss for r in tutorial[1].records]  # raw values in the hover
    assert line.y[0] == pytest.approx(line.customdata[0])  # debiased: the first point is the raw value
    assert line.y != next(t for t in raw.data if t.name == "value:5").y
    assert fig.layout.xaxis.title.text == "optimizer step"


def test_projector_copy_has_every_text_at_16px_or_more(tutorial):
    for fig in (
        charts.loss_curves(tutorial),
        charts.norm_distribution_grid(tutorial),
        charts.value_histogram(tutorial),
    ):
        big = charts.for_projector(fig)
        axes = [big.layout[k] for k in big.layout if k.startswith(("xaxis", "yaxis"))]
        assert axes and all(a.tickfont.size >= 16 for a in axes)
        assert all(a.font.size >= 16 for a in big.layout.annotations)
        assert big.layout.legend.font.size >= 16
        if big.layout.coloraxis.colorbar.title.text:
            assert big.layout.coloraxis.colorbar.title.font.size >= 16
        assert fig.layout.font.size == 16 and fig is not big  # the original is untouched


def test_values_before_and_after_share_a_panel_and_the_pile_up_has_its_own_colour(tutorial):
    fig = charts.value_histogram(tutorial)
    value = tutorial[1]  # value:5
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    outlines = [t for t in fig.data if t.name == "before clipping"]
    piles = [t for t in bars if t.name == "piled up at ±c"]
    bars = [t for t in bars if t.name != "piled up at ±c"]
    assert len(bars) == 3 and len(outlines) == 3  # after (bars) and before (outline) in every run's panel
    assert len(piles) == 1 and list(piles[0].x) == pytest.approx([-charts._symlog(5.0), charts._symlog(5.0)])
    assert bars[1].xaxis == outlines[1].xaxis  # the same axes: one picture
    pile = [i for i, col in enumerate(bars[1].marker.color) if col == charts._PILE]
    edges = charts.VALUE_EDGES
    assert [(edges[i - 1], edges[i]) for i in pile] == [(-8.0, -4.0), (4.0, 8.0)]  # the bins holding ±5
    assert not any(col == charts._PILE for col in bars[2].marker.color)  # norm clipping piles nothing up
    frac = np.mean([r.elem_clip_frac for r in value.records])
    assert any(a.text == f"{frac:.1%} clipped" for a in fig.layout.annotations)
    ticks = list(zip(fig.layout.xaxis.tickvals, fig.layout.xaxis.ticktext, strict=True))
    assert [t for _, t in ticks] == ["-100", "0", "100", "NaN"]  # real values, not positions
    assert ticks[2][0] == pytest.approx(charts._symlog(100.0))
    assert [t.name for t in fig.data if t.showlegend] == ["after clipping", "before clipping", "piled up at ±c"]


def test_seeds_pool_into_one_norm_panel_and_one_table_row_per_strategy():
    value = [_run("value", 5.0, (10.0 * s, 5.0 * s, 2.0 * s), seed=s) for s in (1, 2, 3, 4, 5)]
    value[4].records[-1].diverged = (3, 2)
    value[4].records[-1].val_loss = INF
    norm = [_run("norm", 1.0, (30.0, 20.0, 10.0 + s), seed=s) for s in (1, 2, 3, 4, 5)]
    pooled = charts.pool_seeds(value + norm)
    assert [p.label for p in pooled] == ["value:5 ×5 (1✕)", "norm:1 ×5"]
    per_step = len(value[0].records[0].grad_norm_pre)
    assert all(len(r.grad_norm_pre) == 5 * per_step for r in pooled[1].records)
    hist = np.sum([r.records[0].value_hist_post for r in norm], axis=0)
    assert pooled[1].records[0].value_hist_post == list(hist)  # value counts summed over the seeds
    assert len(charts.value_histogram(pooled).data) < len(charts.value_histogram(value + norm).data)
    fig = charts.norm_distribution_grid(pooled)
    assert len([t for t in fig.data if isinstance(t, go.Heatmap)]) == 2  # panels per strategy, not per run
    table = charts.seed_table(value + norm)
    assert list(table["strategy"]) == ["value:5", "norm:1"] and list(table["diverged"]) == ["1/5", "0/5"]
    finals = sorted(2.2 * s for s in (1, 2, 3, 4))  # val = 1.1 x train; the diverged seed is left out
    assert table["median final val_loss"][0] == pytest.approx(np.median(finals))
    band = charts.seed_band(value + norm)
    assert len([t for t in band.data if t.showlegend is not False and t.name]) == 2  # one legend entry per strategy


@pytest.mark.parametrize("c", [1.0, 3.0, 0.01])
def test_clipped_norms_land_on_one_row_labelled_c(c):
    # what global-norm clipping leaves: c * g / (g + 1e-6) (torch's epsilon), rounded to float32
    pre = np.logspace(np.log10(c) + 0.01, np.log10(c) + 6, 50)
    post = (np.float32(c) * (pre / (pre + 1e-6))).astype(np.float32).astype(float)
    assert np.all(np.abs(post / c - 1) < 1e-4)
    bins = norm_bins(c)
    counts = bins.counts(post)
    assert np.flatnonzero(counts).tolist() == [bins.at_c]  # every clipped norm on one row...
    assert bins.labels[bins.at_c].startswith(f"‖g‖ = {c:g}")  # ...labelled '= c'
    near = bins.counts([c * 0.97, c * 1.03])  # unclipped norms near c are not counted as clipped
    assert near[bins.at_c] == 0 and near.sum() == 2
    assert np.all(np.diff(bins.display) >= 0.12)  # every row drawn at least an eighth of a decade high
    # on the fixed quarter-decade bins, c = 1 is a bin edge: values within 1 +- 3e-8 split over two rows
    split = norm_bins().counts(1.0 + np.linspace(-3e-8, 3e-8, 7))
    assert np.count_nonzero(split) == 2


def test_norm_charts_put_the_clipped_steps_on_one_bar_with_the_threshold_in_range():
    norms = (1.0 - 3e-8, 1.0, 1.0 + 3e-8, 0.5)  # three clipped steps, one unclipped
    run = _run("norm", 1.0, norms=norms)
    for rec in run.records:
        rec.grad_norm_post = list(norms)
    (hm,) = [t for t in charts.norm_distribution(run, post=True).data if isinstance(t, go.Heatmap)]
    rows = [np.nansum(row) for row in hm.z]  # NaN: an empty cell
    assert sorted(r for r in rows if r) == [3, 9]  # 3 epochs x (3 clipped on one row, 1 elsewhere)
    assert "= 1" in charts.norm_distribution(run, post=True).layout.yaxis.ticktext
    fig = charts.epoch_histogram([run], 1, post=True)
    (step,) = [t for t in fig.data if t.line.shape == "hv"]
    assert sorted(v for v in step.y[:-1] if v) == [1, 3]
    assert [a.text for a in fig.layout.annotations if a.text.startswith("=")] == ["= 1"]
    # pre-clip norms far above the threshold: the threshold line stays on the chart
    big = _run("norm", 1.0, norms=(50.0, 80.0, 120.0))
    fig = charts.epoch_histogram([big, _run("none", norms=(50.0, 80.0))], 1)
    (line,) = [s for s in fig.layout.shapes if s.type == "line"]
    lo, hi = fig.layout.xaxis.range  # log10 units
    assert line.x0 == 1.0 and lo <= 0.0 <= hi and hi >= math.log10(120.0)


def test_layer_axis_fits_the_calm_runs_and_marks_a_diverged_runs_norms(tutorial):
    blown = _diverged()
    blown.records[0].layer_norms = {"hidden1.weight": 1e36, "hidden1.bias": NAN, "out.weight": INF}
    fig = charts.layer_norms([blown, *tutorial[1:]])
    lo, hi = fig.layout.yaxis.range  # log10; the calm runs' layer norms are 0.5 .. 3
    assert -1 < lo < math.log10(0.5) and math.log10(3.0) < hi < 1.5
    assert all(fig.layout[f"yaxis{k}"].matches == "y" for k in ("2", "3"))
    text = _texts(fig)
    assert "‖g[hidden1.weight]‖ = 1e+36, off scale (diverged at epoch 1, step 8)" in text  # shown, labelled
    assert "‖g[hidden1.bias]‖ = nan" in text and "‖g[out.weight]‖ = inf" in text
    assert "off scale" in fig.layout.title.subtitle.text
    assert "✕ ep 1" in fig.layout.annotations[0].text  # the diverged run's panel says so
    assert "post not recorded" in charts.layer_norms(tutorial, post=True).layout.title.text
    assert "post" not in charts.layer_norms(tutorial).layout.title.text
    _strict_json(fig)


def test_loss_chart_labels_divergence_once_per_strategy_with_many_seeds():
    def seeds(strategy, threshold, n_div):
        runs = []
        for seed in range(1, 6):
            run = _run(strategy, threshold, seed=seed, label=f"{strategy} seed {seed}")
            if seed <= n_div:  # diverged in epoch seed: inf from there on, no later records
                run.records = run.records[:seed]
                run.records[-1] = replace(run.records[-1], train_loss=INF, val_loss=NAN, diverged=(seed, 3))
            runs.append(run)
        return runs

    results = seeds("none", None, 5) + seeds("value", 5.0, 2) + seeds("norm", 1.0, 0)
    fig = charts.loss_curves(results)
    labels = [s for t in fig.data if t.text for s in t.text if s]
    assert labels == ["none: 5/5 diverged, epochs 1–5", "value:5: 2/5 diverged, epochs 1–2"]
    marks = [t for t in fig.data if t.text and any(t.text)]
    assert [len(t.x) for t in marks] == [5, 2]  # every diverged seed still has its x (and its own hover)
    assert len({t.y[0] for t in marks}) == 2  # the two labels on different rows
    hovers = [h for t in marks for h in t.hovertext]
    assert hovers[0] == "none seed 1: diverged at epoch 1, step 3" and hovers[-1].startswith("value seed 2: diverged")
