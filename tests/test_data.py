"""Dataset registry: the tutorial's data exactly, the sequence task's properties, the CSV error catalogue."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes, make_friedman1, make_regression

from clipviz.config import Caps, ConfigError, DataSpec
from clipviz.data import Dataset, input_dim, load_dataset, read_csv_table

CAPS = Caps()
TUTORIAL = DataSpec()


def _csv(tmp_path, content: str | bytes, name: str = "data.csv") -> str:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


# ---------------------------------------------------------------- tutorial regression


def test_tutorial_regression_is_make_regression_sliced():
    d = load_dataset(TUTORIAL, CAPS)
    x, y = make_regression(n_samples=1000, n_features=20, noise=0.1, random_state=1)
    assert isinstance(d, Dataset)
    assert d.x_train.shape == (500, 20) and d.x_val.shape == (500, 20)
    assert d.y_train.shape == (500,) and d.y_val.shape == (500,)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.float32
    # unscaled and unshuffled by default: the first 500 rows train
    torch.testing.assert_close(d.x_train, torch.tensor(x[:500], dtype=torch.float32))
    torch.testing.assert_close(d.y_val, torch.tensor(y[500:], dtype=torch.float32))
    np.testing.assert_array_equal(d.y_train_raw, y[:500])
    assert d.feature_names == tuple(f"x{i}" for i in range(20))
    assert "make_regression" in d.description and "500 train / 500 validation" in d.description
    # the tutorial's targets are large: this is why unclipped SGD explodes
    assert 15_000 < y.var() < 30_000 and 15_000 < float(d.y_train.var()) < 30_000
    assert input_dim(TUTORIAL) == 20


def test_scale_y_uses_train_statistics_only():
    d = load_dataset(replace(TUTORIAL, scale_y=True), CAPS)
    y = d.y_train.double()
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std(unbiased=False)) - 1) < 1e-5
    yv = d.y_val.double()
    assert abs(float(yv.mean())) > 1e-3 and abs(float(yv.std(unbiased=False)) - 1) > 1e-3
    _, raw = make_regression(n_samples=1000, n_features=20, noise=0.1, random_state=1)
    mu, sd = raw[:500].mean(), raw[:500].std()
    np.testing.assert_allclose(d.y_val.numpy(), (raw[500:] - mu) / sd, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(d.y_train_raw, raw[:500])  # raw stays raw
    assert "target standardised" in d.description
    # inputs untouched unless asked
    torch.testing.assert_close(d.x_train, load_dataset(TUTORIAL, CAPS).x_train)


def test_scale_x_standardises_inputs_with_train_stats():
    d = load_dataset(replace(TUTORIAL, scale_x=True), CAPS)
    x = d.x_train.double()
    assert torch.allclose(x.mean(0), torch.zeros(20, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(20, dtype=torch.float64), atol=1e-5)
    assert not torch.allclose(d.x_val.double().mean(0), torch.zeros(20, dtype=torch.float64), atol=1e-3)


def test_constant_feature_scales_without_nan(tmp_path):
    path = _csv(tmp_path, "c,a,y\n" + "".join(f"7,{i},{i * i % 5}\n" for i in range(10)))
    d = load_dataset(DataSpec(name="csv", csv_path=path, scale_x=True, scale_y=True), CAPS)
    for t in (d.x_train, d.x_val, d.y_train, d.y_val):
        assert torch.isfinite(t).all()
    assert torch.all(d.x_train[:, 0] == 0)


# ---------------------------------------------------------------- other built-in datasets


def test_diabetes_and_friedman1_shapes_and_determinism():
    d = load_dataset(DataSpec(name="diabetes"), CAPS)
    ref = load_diabetes()
    assert d.x_train.shape == (221, 10) and d.x_val.shape == (221, 10)
    assert d.feature_names == tuple(ref.feature_names)
    np.testing.assert_array_equal(d.y_train_raw, ref.target[:221])
    assert input_dim(DataSpec(name="diabetes")) == 10

    spec = DataSpec(name="friedman1", n_samples=300, n_features=7, noise=0.5, random_state=3, train_fraction=0.8)
    f = load_dataset(spec, CAPS)
    assert f.x_train.shape == (240, 7) and f.x_val.shape == (60, 7)
    x, y = make_friedman1(n_samples=300, n_features=7, noise=0.5, random_state=3)
    torch.testing.assert_close(f.x_val, torch.tensor(x[240:], dtype=torch.float32))
    torch.testing.assert_close(load_dataset(spec, CAPS).y_train, f.y_train)
    with pytest.raises(ConfigError, match="at least 5 features"):
        load_dataset(replace(spec, n_features=4), CAPS)


def test_adding_problem_properties():
    spec = DataSpec(name="adding", n_samples=400, seq_len=17, random_state=5)
    d = load_dataset(spec, CAPS)
    assert d.x_train.shape == (200, 17, 2) and d.x_val.shape == (200, 17, 2) and d.y_train.shape == (200,)
    assert input_dim(spec) == 2
    x = torch.cat([d.x_train, d.x_val])
    y = torch.cat([d.y_train, d.y_val])
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(markers.unique().tolist()) == {0.0, 1.0}
    half = 17 // 2
    assert (markers[:, :half].sum(1) == 1).all() and (markers[:, half:].sum(1) == 1).all()
    torch.testing.assert_close(y, (values * markers).sum(1))
    again = load_dataset(spec, CAPS)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_val, d.y_val)
    other = load_dataset(replace(spec, random_state=6), CAPS)
    assert not torch.equal(other.x_train, d.x_train)


def test_adding_scaled_per_channel():
    d = load_dataset(DataSpec(name="adding", n_samples=200, seq_len=10, scale_x=True), CAPS)
    flat = d.x_train.reshape(-1, 2).double()
    assert torch.allclose(flat.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(flat.std(0, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize(
    "spec, needle",
    [
        (DataSpec(n_samples=200_000), "max_rows=100,000"),
        (DataSpec(n_features=5_000), "max_features=1,000"),
        (DataSpec(name="adding", seq_len=600), "max_seq_len=500"),
    ],
)
def test_caps_name_the_cap(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        load_dataset(spec, CAPS)


@pytest.mark.parametrize(
    "spec, needle",
    [
        (DataSpec(name="mnist"), "unknown dataset"),
        (DataSpec(n_samples=4, train_fraction=0.2), "at least 5 rows"),
        (DataSpec(n_samples=0), "n_samples"),
        (DataSpec(noise=-1.0), "noise"),
        (DataSpec(train_fraction=1.0), "train fraction"),
        (DataSpec(name="csv"), "upload one first"),
        (DataSpec(name="csv", csv_path="/nonexistent/x.csv"), "no such file"),
    ],
)
def test_bad_specs_are_config_errors(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        load_dataset(spec, CAPS)


# ---------------------------------------------------------------- good CSVs


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_good_csv_any_delimiter(tmp_path, sep):
    rows = [["a", "b", "y"]] + [[str(i), str(i * 0.5), str(i % 3)] for i in range(10)]
    path = _csv(tmp_path, "\n".join(sep.join(r) for r in rows) + "\n")
    table = read_csv_table(path, CAPS)
    assert list(table.columns) == ["a", "b", "y"] and table.shape == (10, 3)
    assert table.dtypes.tolist() == [np.float64] * 3
    d = load_dataset(DataSpec(name="csv", csv_path=path), CAPS)  # default target: the last column
    assert d.target_name == "y" and d.feature_names == ("a", "b")
    assert d.x_train.shape == (5, 2) and d.x_val.shape == (5, 2)
    np.testing.assert_array_equal(d.y_train_raw, [0, 1, 2, 0, 1])
    assert input_dim(DataSpec(name="csv", csv_path=path)) == 2


def test_csv_chosen_target_and_sources(tmp_path):
    text = "price,rooms,area\n100,2,50\n200,3,80\n150,2,60\n300,4,120\n"
    path = _csv(tmp_path, text)
    d = load_dataset(DataSpec(name="csv", csv_path=path, target="price"), CAPS)
    assert d.target_name == "price" and d.feature_names == ("rooms", "area")
    np.testing.assert_array_equal(d.y_train_raw, [100, 200])
    torch.testing.assert_close(d.x_val, torch.tensor([[2.0, 60.0], [4.0, 120.0]]))
    assert "data.csv" in d.description and "price" in d.description
    # bytes, binary and text file objects read the same
    for src in (text.encode(), io.BytesIO(text.encode()), io.StringIO(text)):
        assert read_csv_table(src, CAPS).equals(read_csv_table(path, CAPS))


def test_csv_tolerates_bom_crlf_blank_lines_decimal_commas_and_latin1(tmp_path):
    t = read_csv_table(b"\xef\xbb\xbfa, b ,y\r\n1, 2,3\r\n\r\n4,5 ,6\r\n", CAPS)
    assert list(t.columns) == ["a", "b", "y"] and t.to_numpy().tolist() == [[1, 2, 3], [4, 5, 6]]
    t = read_csv_table(b"a;b;y\n1,5;2;3\n2;-3,25;4\n", CAPS)
    assert t["a"].tolist() == [1.5, 2.0] and t["b"].tolist() == [2.0, -3.25]
    t = read_csv_table("temp\u00e9;y\n1;2\n3;4\n".encode("latin-1"), CAPS)
    assert list(t.columns) == ["temp\u00e9", "y"]


# ---------------------------------------------------------------- the CSV error catalogue

BAD_CSVS = {
    "empty file": (b"", "the file is empty"),
    "whitespace only": (b"\n \n\n", "the file is empty"),
    "header only": (b"a,b,y\n", "no data rows"),
    "one row": (b"a,b,y\n1,2,3\n", "at least 2 are needed"),
    "non-numeric": (b"a,b,y\n1,2,3\n4,abc,6\n", "column 'b' has 1 non-numeric value, e.g. 'abc' on line 3"),
    "empty cell": (b"a,b,y\n1,,3\n4,5,6\n", "column 'b' has 1 empty or missing"),
    "nan cell": (b"a,b,y\n1,2,3\n4,5,NaN\n7,8,9\n", "column 'y' has 1 empty or missing (NaN) cell, first on line 3"),
    "inf": (b"a,b,y\n1,inf,3\n4,5,6\n", "column 'b' has 1 value that training in float32 cannot use"),
    "huge": (b"a,b,y\n1,2,3\n4,1e308,6\n", "|x| > 1e30"),
    "overflowing": (b"a,b,y\n1,2,3\n4,-1e999,6\n", "on line 3"),
    "duplicate names": (b"a,b,a,y\n1,2,3,4\n5,6,7,8\n", "duplicated column name 'a' (columns 1 and 3)"),
    "unnamed column": (b",a,y\n0,1,2\n1,3,4\n", "column 1 has no name"),
    "no header": (b"1,2,3\n4,5,6\n", "add a header row"),
    "binary NUL": (b"PK\x03\x04\x00\x00binary\x00stuff", "not a text CSV file"),
    "binary png": (b"\x89PNG\r\n\x1a\n\xff\xfe\xfd", "not a text CSV file"),
    "single column": (b"y\n1\n2\n3\n", "single column ('y')"),
    "ragged row": (b"a,b,y\n1,2,3\n4,5,6,7\n", "line 3 has 4 values but the header has 3 columns"),
}


@pytest.mark.parametrize("content, needle", BAD_CSVS.values(), ids=BAD_CSVS.keys())
def test_bad_csv_messages(tmp_path, content, needle):
    path = _csv(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        read_csv_table(path, CAPS)
    assert needle in str(info.value)
    with pytest.raises(ConfigError):  # the dataset loader surfaces the same error
        load_dataset(DataSpec(name="csv", csv_path=path), CAPS)


def test_csv_constant_target_and_missing_target(tmp_path):
    path = _csv(tmp_path, "a,b,y\n1,2,5\n3,4,5\n6,7,5\n")
    with pytest.raises(ConfigError, match="target column 'y' is constant"):
        load_dataset(DataSpec(name="csv", csv_path=path), CAPS)
    with pytest.raises(ConfigError, match="'z' is not in the file; available columns: a, b, y"):
        load_dataset(DataSpec(name="csv", csv_path=path, target="z"), CAPS)
    with pytest.raises(ConfigError, match="available columns"):
        input_dim(DataSpec(name="csv", csv_path=path, target="z"))


def test_csv_too_few_rows_for_the_split(tmp_path):
    path = _csv(tmp_path, "a,y\n1,2\n3,4\n5,7\n")
    with pytest.raises(ConfigError, match="at least 10 rows are needed"):
        load_dataset(DataSpec(name="csv", csv_path=path, train_fraction=0.1), CAPS)


def test_csv_caps(tmp_path):
    small = Caps(max_rows=5, max_features=2, max_upload_mb=1)
    rows = _csv(tmp_path, "a,y\n" + "".join(f"{i},{i}\n" for i in range(8)), "rows.csv")
    with pytest.raises(ConfigError, match=r"the file has 8 rows, over the cap max_rows=5"):
        read_csv_table(rows, small)
    wide = _csv(tmp_path, "a,b,c,y\n1,2,3,4\n5,6,7,8\n", "wide.csv")
    with pytest.raises(ConfigError, match=r"3 feature columns, over the cap max_features=2"):
        read_csv_table(wide, small)
    big_text = "a,y\n" + "123456789,987654321\n" * 60_000  # ~1.2 MB
    big = _csv(tmp_path, big_text, "big.csv")
    for src in (big, big_text.encode(), io.BytesIO(big_text.encode())):
        with pytest.raises(ConfigError, match=r"MB, over the cap max_upload_mb=1"):
            read_csv_table(src, small)
    with pytest.raises(ConfigError, match="max_upload_mb"):
        load_dataset(DataSpec(name="csv", csv_path=big), small)


def test_input_dim_reads_only_the_header_of_a_long_file(tmp_path):
    path = _csv(tmp_path, "a;b;c;y\n" + "1;2;3;4\n5;6;7;9\n" * 10_000)  # ~160 KB, past the 64 KiB peek
    assert input_dim(DataSpec(name="csv", csv_path=path)) == 3
    assert input_dim(DataSpec(name="csv", csv_path=path, target="b")) == 3


def test_mangled_csvs_raise_only_config_errors():
    """Property: whatever bytes arrive, the answer is a table or a ConfigError, never a traceback."""
    rng = np.random.default_rng(0)
    good = b'a,b,"c d",y\n1,2.5,-3e2,4\n5,6,7,8\n9,10,11,12.5\n'
    alphabet = np.frombuffer(b',;\t|"\n\r .-e+0123456789abcnNaAiI\x00\xff\xc3', dtype=np.uint8)
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rng.integers(1, 6)):
            pos = int(rng.integers(0, len(data)))
            op = rng.integers(0, 3)
            if op == 0:
                data[pos] = int(rng.choice(alphabet))
            elif op == 1:
                data.insert(pos, int(rng.choice(alphabet)))
            else:
                del data[pos]
        try:
            table = read_csv_table(bytes(data), CAPS)
        except ConfigError:
            continue
        assert np.isfinite(table.to_numpy()).all() and table.shape[1] >= 2 and len(table) >= 2
