"""The strategy registry: every entry is complete, and every place that lists strategies derives from it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from clipviz import clipping, config, reference, strategies, sweep
from clipviz.__main__ import build_parser
from clipviz.config import ClipSpec, ConfigError, RunSpec
from clipviz.strategies import REGISTRY
from clipviz.ui import charts, controls, export


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_entry_has_a_rule_range_colour_export_and_reference_line(name):
    s = REGISTRY[name]
    assert s.name == name and s.title
    assert issubclass(clipping.RULES[name], clipping._Rule)
    assert re.fullmatch(r"#[0-9a-f]{6}", s.colour) and strategies.colour(name) == s.colour
    clip = ClipSpec.parse(name)  # the registry default
    imp, setup, line = s.export_lines(clip.threshold)
    compile("\n".join([imp, setup, line]), name, "exec")  # export lines are python
    if name == "none":
        assert reference.clip_step(RunSpec(clip=clip)) is None and line.startswith("#")
        return
    assert s.formula and s.reference and s.same_as and s.threshold_meaning
    lo, hi = s.slider
    assert 0 < lo <= s.default <= hi
    slo, shi, count = s.sweep
    assert 0 < slo <= s.default <= shi and count >= 2
    assert "model.parameters()" in line and s.same_as in line  # the export says which library call it is
    assert callable(reference.clip_step(RunSpec(clip=clip)))  # the reference loop resolves the same call


def test_derived_tables_match_the_registry():
    names = tuple(REGISTRY)
    assert config.STRATEGIES == names and list(clipping.RULES) == list(names)
    assert config.THRESHOLD_MEANING == {n: (s.threshold_meaning, s.default) for n, s in REGISTRY.items()}
    assert controls.THRESHOLD_RANGES == {n: s.slider for n, s in REGISTRY.items() if n != "none"}
    assert {n: (r.lo, r.hi, r.count) for n, r in sweep.DEFAULT_RANGES.items()} == {
        n: s.sweep for n, s in REGISTRY.items() if n != "none"
    }
    assert charts.STRATEGY_COLORS == {n: s.colour for n, s in REGISTRY.items()}
    assert len(set(charts.STRATEGY_COLORS.values())) == len(names)
    assert charts.strategy_color("bogus:1") == strategies.OTHER_COLOUR
    assert clipping.STRATEGY_INFO is REGISTRY
    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for n, s in REGISTRY.items():
        assert (f"{n}:{s.default:g}" if s.default else n) in " ".join(run_help.split())


def test_aliases_and_bounds_come_from_the_registry():
    assert ClipSpec.parse("global-norm:2") == ClipSpec("norm", 2.0)
    assert ClipSpec.parse("Per-Tensor-Norm") == ClipSpec("tensor-norm", 1.0)
    with pytest.raises(ConfigError, match=r"autoclip percentile p must be in \(0, 100\]"):
        ClipSpec.parse("autoclip:150")


def test_exported_code_names_the_torch_call_of_each_strategy():
    for name, s in REGISTRY.items():
        if name == "none":
            continue
        code = export.code_snippet(RunSpec(clip=ClipSpec.parse(name)))
        assert f"# {s.title}: same as {s.same_as}" in code
        assert s.attr in code


def test_the_registry_module_imports_no_torch():
    tree = ast.parse(Path(strategies.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] in ("torch", "streamlit", "plotly", "numpy")}, imported
