"""Caps are checked against the real data: a CSV's width, not the n_features default; data checks live in one place."""

from __future__ import annotations

from dataclasses import replace

import pytest

from clipviz.config import (
    TUTORIAL,
    Caps,
    ClipSpec,
    ConfigError,
    DataSpec,
    ModelSpec,
    RunSpec,
    param_count,
    validate_run,
    validate_runs,
)
from clipviz.data import input_dim, load_dataset
from clipviz.engine import Engine
from clipviz.ui import controls

CAPS = Caps()


@pytest.fixture
def wide_csv(tmp_path):
    """1,000 feature columns and a target, 12 rows."""
    path = tmp_path / "wide.csv"
    header = ",".join(f"f{i}" for i in range(1000)) + ",y"
    rows = [",".join(str((i * 7 + j) % 11) for j in range(1001)) for i in range(12)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def _wide_run(path: str) -> RunSpec:
    return RunSpec(
        data=DataSpec(name="csv", csv_path=path), model=ModelSpec(width=1024, depth=2), clip=ClipSpec("none")
    )


def test_a_wide_csv_is_refused_on_its_real_width(wide_csv):
    run = _wide_run(wide_csv)
    assert input_dim(run.data) == 1000
    # the numbers: the n_features default (20) guessed 1.07M parameters; the real model has 2.08M
    assert param_count(run.model, run.data.n_features) < CAPS.max_params < param_count(run.model, 1000) == 2_075_649
    with pytest.raises(ConfigError, match=r"2,075,649 parameters \(1,000 inputs\), over the cap max_params=2,000,000"):
        validate_runs([run], CAPS, n_in=1000)
    with pytest.raises(ConfigError, match="max_params"):  # the engine checks once the file is read
        Engine([run], device="cpu", caps=CAPS)
    narrow = replace(run, model=ModelSpec(width=512, depth=2))
    assert len(Engine([narrow], device="cpu", caps=CAPS).runs) == 1  # under the cap: it builds


def test_the_dashboard_refuses_it_before_training(wide_csv):
    values = dict.fromkeys(controls.widget_table(CAPS))
    values |= {k: w.default for k, w in controls.widget_table(CAPS).items()}
    values |= {"dataset": "csv", "width": 1024, "depth": 2, "strategies": ["none"], "csv_target": None}
    with pytest.raises(ConfigError, match="max_params"):
        controls.build_runs(values, wide_csv, CAPS)
    assert controls.build_runs(values | {"width": 512}, wide_csv, CAPS)


def test_total_params_cap_uses_the_real_width(wide_csv):
    runs = [replace(_wide_run(wide_csv), model=ModelSpec(width=256, depth=1), seed=s) for s in range(1, 81)]
    validate_runs(runs, CAPS)  # the spec alone cannot tell a CSV's width: deferred
    with pytest.raises(ConfigError, match="max_total_params"):
        validate_runs(runs, CAPS, n_in=1000)  # 80 x 256,513 = 20.5M, over the 20M cap
    validate_runs(runs[:70], CAPS, n_in=1000)  # 18.0M: under it


@pytest.mark.parametrize(
    "data, needle",
    [
        (DataSpec(n_samples=200_000), "over the cap max_rows=100,000"),
        (DataSpec(n_features=5_000), "over the cap max_features=1,000"),
        (DataSpec(name="adding", seq_len=600), "over the cap max_seq_len=500"),
        (DataSpec(n_samples=3), "at least 4"),
        (DataSpec(n_samples=4, train_fraction=0.2), "at least 5 rows are needed"),
        (DataSpec(train_fraction=0.99), "train fraction"),
        (DataSpec(noise=float("nan")), "noise"),
        (DataSpec(random_state=2**32), "random_state"),
        (DataSpec(name="friedman1", n_features=4), "at least 5 features"),
        (DataSpec(name="csv"), "upload one first"),
        (DataSpec(name="mnist"), "unknown dataset"),
    ],
)
def test_the_engine_path_and_the_loader_say_the_same(data, needle):
    """One set of data checks: validating a run and loading its data give the same message."""
    spec = replace(TUTORIAL, data=data)
    with pytest.raises(ConfigError) as from_validation:
        validate_run(spec, CAPS)
    with pytest.raises(ConfigError) as from_loader:
        load_dataset(data, CAPS)
    assert str(from_validation.value) == str(from_loader.value)
    assert needle in str(from_loader.value)
