"""The CLI end to end: the tutorial command, its JSON/CSV, and bad flags."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from clipviz.__main__ import main
from clipviz.records import loads


def test_tutorial_command_end_to_end(tmp_path, capsys):
    out, csv = tmp_path / "results.json", tmp_path / "results.csv"
    argv = ["run", "--preset", "tutorial", "--clip", "none", "--clip", "value:5", "--clip", "norm:1"]
    argv += ["--epochs", "5", "--out", str(out), "--csv", str(csv)]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "epoch 5/5" in printed.err  # the progress bar
    table = printed.out
    assert "diverged at epoch 1, step" in table
    assert table.count("trained 5 epochs") == 2
    doc = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert [r["label"] for r in doc["runs"]] == ["none", "value:5", "norm:1"]
    none, value, norm = doc["runs"]
    assert none["diverged"]["epoch"] == 1 and isinstance(none["diverged"]["step"], int)
    assert value["diverged"] is None and len(value["epochs"]) == 5
    assert value["spec"]["clip"] == {"strategy": "value", "threshold": 5.0}
    first = none["epochs"][0]
    assert first["nonfinite"], "the exploding run must flag its non-finite fields"
    assert {"epoch", "train_loss", "val_loss", "grad_norm_pre", "grad_norm_post", "clip_rate"} <= set(first)
    # the file loads back into the same runs
    back = loads(out.read_text())
    assert back[2].records[-1].val_loss == norm["epochs"][-1]["val_loss"]
    df = pd.read_csv(csv)
    assert set(df["label"]) == {"none", "value:5", "norm:1"}
    assert len(df) == 1 + 5 + 5


def test_seeds_and_strategies(tmp_path, capsys):
    argv = ["run", "--clip", "tensor-norm:1", "--clip", "agc:0.01", "--clip", "autoclip:10", "--clip", "zclip:2.5"]
    assert main(argv + ["--epochs", "2", "--seeds", "2", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "zclip:2.5 seed=2" in table and "agc:0.01 seed=1" in table


@pytest.mark.parametrize(
    "argv,message",
    [
        (["run", "--clip", "bogus:1"], "unknown clipping strategy"),
        (["run", "--clip", "value:-1"], "positive finite"),
        (["run", "--clip", "norm:abc"], "not a number"),
        (["run", "--clip", "autoclip:150"], "percentile"),
        (["run", "--epochs", "0"], "must be positive"),
        (["run", "--lr", "nan"], "not finite"),
        (["run", "--lr", "-0.1"], "learning rate"),
        (["run", "--epochs", "100000"], "max_epochs"),
        (["run", "--preset", "nope"], "invalid choice"),
        (["run", "--data-csv", "/nonexistent/file.csv"], "file"),
        (["walk"], "invalid choice"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors leave through exit(2)
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clipviz: error:"), err
    assert message in lines[0]
    assert "Traceback" not in err


def test_python_m_clipviz_reports_bad_input_without_a_traceback():
    """The real entry point, in a fresh interpreter: exit code 2 and one line."""
    proc = subprocess.run(
        [sys.executable, "-m", "clipviz", "run", "--clip", "value:-1"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "clipviz: error: value clipping needs a positive finite clip value c, got -1.0"
