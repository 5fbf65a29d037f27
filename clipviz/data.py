"""Dataset registry: the Keras tutorial's regression, sklearn's bundled sets, the adding problem, a user CSV.

Every dataset is split by position (first rows train, the rest validate, no shuffling, as the tutorial does)
and optionally standardised with train statistics only. Bad input is always a ConfigError with a human message.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from typing import IO

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_diabetes, make_friedman1, make_regression
from sklearn.preprocessing import StandardScaler

from clipviz.config import Caps, ConfigError, DataSpec, check_data, data_width, split_point
from clipviz.text import path_kind, quote, shorten

MAX_ABS_VALUE = 1e30  # float32 tops out at 3.4e38; beyond this the first squared error overflows anyway
_MB = 1024 * 1024
_DELIMITERS = (",", ";", "\t", "|")
_MISSING = {"", "nan", "na", "n/a", "null", "none", "-", "?", "#n/a"}
_DELIM_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe", " ": "space"}


@dataclass(frozen=True)
class Dataset:
    x_train: torch.Tensor  # [N, F] float32 (tabular) or [N, T, F] float32 (sequence task)
    y_train: torch.Tensor  # [N] float32
    x_val: torch.Tensor
    y_val: torch.Tensor
    feature_names: tuple[str, ...]
    target_name: str
    description: str  # one line for the UI
    y_train_raw: np.ndarray  # train targets before any scaling (the lesson draws their histogram)


def input_dim(spec: DataSpec) -> int:
    """Features per step the model sees; for a CSV only its header is read."""
    check_data(spec)
    if spec.name == "csv":
        names = _read_header(_need_path(spec))[0]
        _resolve_target(names, spec.target)
        return len(names) - 1
    return data_width(spec)


def load_dataset(spec: DataSpec, caps: Caps | None = None) -> Dataset:
    """Build, split and (optionally) standardise the dataset the spec names."""
    caps = caps or Caps.from_env()
    check_data(spec, caps)
    if spec.name == "csv":
        table = read_csv_table(_need_path(spec), caps)
        target = _resolve_target(list(table.columns), spec.target)
        y = table[target].to_numpy(dtype=np.float64)
        if np.all(y == y[0]):
            raise ConfigError(
                f"target column {quote(target)} is constant (every row is {y[0]:g}): there is nothing to learn"
            )
        x = table.drop(columns=[target]).to_numpy(dtype=np.float64)
        names, target_name = tuple(str(c) for c in table.columns if c != target), target
        what = f"{os.path.basename(spec.csv_path)}: {len(y):,} rows, {x.shape[1]} features, target {quote(target)}"
    else:
        try:
            x, y, names, target_name, what = _BUILDERS[spec.name](spec)
        except ValueError as exc:  # e.g. a random_state numpy rejects
            raise ConfigError(f"cannot build the {spec.name} dataset: {exc}") from exc
    n_train = split_point(len(y), spec.train_fraction)
    x_tr, x_va, y_tr, y_va = x[:n_train], x[n_train:], y[:n_train], y[n_train:]
    y_raw = y_tr.copy()
    if spec.scale_x:
        x_tr, x_va = _standardise(x_tr, x_va)
    if spec.scale_y:
        y_tr, y_va = (a[:, 0] for a in _standardise(y_tr[:, None], y_va[:, None]))
    scaled = [s for s, on in (("inputs", spec.scale_x), ("target", spec.scale_y)) if on]
    what += f" ({n_train:,} train / {len(y) - n_train:,} validation)"
    what += f", {' and '.join(scaled)} standardised" if scaled else ""
    return Dataset(_tensor(x_tr), _tensor(y_tr), _tensor(x_va), _tensor(y_va), names, target_name, what, y_raw)


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))  # a copy: pandas may hand out read-only arrays


def _standardise(train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit on train only; sequences [N, T, F] are scaled per channel. Zero-variance columns get scale 1."""
    scaler = StandardScaler().fit(train.reshape(-1, train.shape[-1]))
    return tuple(scaler.transform(a.reshape(-1, a.shape[-1])).reshape(a.shape) for a in (train, val))


def _generated(s: DataSpec):
    """The Keras tutorial's make_regression call exactly, or make_friedman1 with the same arguments."""
    make = make_regression if s.name == "regression" else make_friedman1
    x, y = make(n_samples=s.n_samples, n_features=s.n_features, noise=s.noise, random_state=s.random_state)
    what = f"{make.__name__}: {s.n_samples:,} rows, {s.n_features} features, noise {s.noise:g}"
    return x, y, tuple(f"x{i}" for i in range(s.n_features)), "y", what


def _diabetes(s: DataSpec):
    d = load_diabetes()  # bundled with sklearn, no network
    what = f"load_diabetes: {len(d.target)} rows, {d.data.shape[1]} features, pre-scaled by sklearn"
    return d.data, d.target, tuple(d.feature_names), "progression", what


def _adding(s: DataSpec):
    """The adding problem (Hochreiter & Schmidhuber 1997; Pascanu et al. 2013): y = sum of the two marked values."""
    rng = np.random.default_rng(s.random_state)
    n, t = s.n_samples, s.seq_len
    values = rng.uniform(0.0, 1.0, size=(n, t))  # [N, T]
    first = rng.integers(0, t // 2, size=n)  # one marker in the first half
    second = rng.integers(t // 2, t, size=n)  # one in the second half
    markers = np.zeros((n, t))
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1)  # [N, T, 2]
    y = values[rows, first] + values[rows, second]
    return x, y, ("value", "marker"), "sum", f"adding problem: {n:,} sequences of length {t}"


_BUILDERS = {"regression": _generated, "diabetes": _diabetes, "friedman1": _generated, "adding": _adding}


# ---------------------------------------------------------------- csv


def _need_path(spec: DataSpec) -> str:
    if not spec.csv_path:
        raise ConfigError("the csv dataset needs a file: upload one first")
    return spec.csv_path


def _resolve_target(columns: list[str], target: str | None) -> str:
    if target is None or str(target).strip() == "":
        return columns[-1]
    target = str(target)
    for c in columns:
        if c == target or c == target.strip():
            return c
    folded = [c for c in columns if c.lower() == target.strip().lower()]
    if len(folded) == 1:
        return folded[0]
    shown = ", ".join(shorten(c, 40) for c in columns[:20]) + (
        f" and {len(columns) - 20:,} more" if len(columns) > 20 else ""
    )
    raise ConfigError(f"target column {quote(target)} is not in the file; available columns: {shown}")


def _read_bytes(source: str | bytes | os.PathLike | IO, max_bytes: int, cap_mb: int | None = None) -> bytes:
    """At most max_bytes + 1 raw bytes of a path (str/PathLike), bytes or file object; over cap_mb is refused."""
    cap = math.inf if cap_mb is None else cap_mb * _MB
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            what = path_kind(os.stat(path).st_mode)  # stat, never open: reading a FIFO would block
        except FileNotFoundError:
            raise ConfigError(f"no such file: {quote(path)}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read {quote(path)}: {exc.strerror or exc}") from None
        if what is not None:
            raise ConfigError(f"{quote(path)} is {what}, not a CSV file")
        try:
            size, raw = os.path.getsize(path), b""
            if size <= cap:  # don't read what the cap refuses anyway
                with open(path, "rb") as fh:
                    raw = fh.read(max_bytes + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read {quote(path)}: {exc.strerror or exc}") from exc
    elif isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
        size = len(raw)
    else:
        data = source.read(max_bytes + 1)
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        size = getattr(source, "size", None)  # streamlit's UploadedFile knows its size
        size = size if isinstance(size, int) else len(raw)
    if size > cap:
        raise ConfigError(f"the file is {size / _MB:.1f} MB, over the cap max_upload_mb={cap_mb}")
    return raw[: max_bytes + 1]


def _decode(raw: bytes) -> str:
    if b"\0" in raw:
        raise ConfigError("this is not a text CSV file (it contains binary NUL bytes); save it as CSV UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if any(b < 32 and b not in (9, 10, 13) for b in raw[:65536]):
            raise ConfigError(
                f"this is not a text CSV file (byte 0x{raw[exc.start]:02x} at position {exc.start} is binary); "
                "save it as CSV UTF-8"
            ) from None
        return raw.decode("latin-1")  # a legacy-encoded text file: accents in names are harmless


def _sniff(lines: list[str]) -> str:
    """The delimiter whose count is the same on every sampled line (most per line wins); ',' when unsure."""
    sample = lines[:50]
    best, best_key = ",", (False, 0)
    for d in (*_DELIMITERS, " "):
        counts = [(" ".join(ln.split()) if d == " " else ln).count(d) for ln in sample]
        if counts[0] == 0 or (d == " " and best_key[1] > 0):
            continue
        key = (all(c == counts[0] for c in counts), counts[0])
        if key > best_key:
            best, best_key = d, key
    return best


def _split_lines(text: str) -> tuple[list[str], list[int]]:
    """Non-blank lines, stripped, and their 1-based line numbers in the file (for messages)."""
    raw_lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # not splitlines: \x85 is a character
    kept = [(i + 1, ln.strip()) for i, ln in enumerate(raw_lines) if ln.strip()]
    return [ln for _, ln in kept], [n for n, _ in kept]


def _csv_rows(lines: list[str], delim: str, line_no: list[int]) -> list[list[str]]:
    """csv rows of already split lines, one row per line; csv's own errors become ConfigErrors with the line.

    The lines were split on newlines first (for line numbers), so a quoted cell holding a line break would
    silently join two lines ("2<newline>5" read as 25): refused, as is a cell over csv's field size limit.
    """
    reader = csv.reader(lines, delimiter=delim, skipinitialspace=True)
    rows = []
    try:
        for row in reader:
            if reader.line_num != len(rows) + 1:
                raise ConfigError(
                    f"line {line_no[len(rows)]} has a quoted cell that spans several lines; "
                    "numbers cannot contain line breaks: remove the quotes or the line break"
                )
            rows.append(row)
    except csv.Error as exc:
        where = line_no[min(len(rows), len(line_no) - 1)]
        if "field larger than field limit" in str(exc):
            raise ConfigError(
                f"line {where} has a cell longer than {csv.field_size_limit():,} characters: not a numeric CSV"
            ) from None
        raise ConfigError(f"line {where} is not valid CSV: {shorten(exc)}") from None
    return rows


def _parse_header(line: str, delim: str) -> list[str]:
    names = [c.strip() for c in _csv_rows([line], delim, [1])[0]]
    for i, name in enumerate(names):
        if not name:
            raise ConfigError(
                f"column {i + 1} has no name; every column needs a header "
                "(a pandas index column? save with df.to_csv(path, index=False))"
            )
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(
                f"duplicated column name {quote(name)} (columns {seen[name] + 1} and {i + 1}); rename one"
            )
        seen[name] = i
    if all(_is_number(n) for n in names):  # a header-less file would silently lose its first row
        raise ConfigError(f"the first row ({shorten(line, 60)}) is numbers, not column names: add a header row")
    return names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_header(
    source: str | bytes | os.PathLike | IO, raw: bytes | None = None
) -> tuple[list[str], str, list[str], list[int]]:
    """Column names, delimiter and the non-blank lines, from the whole file or (for a path) its first 64 KiB."""
    if raw is None:
        raw = _read_bytes(source, 65536)
        if len(raw) > 65536:  # keep whole lines only
            raw = raw[: raw.rfind(b"\n", 0, 65536) + 1] or raw[:65536]
    lines, line_no = _split_lines(_decode(raw))
    if not lines:
        raise ConfigError("the file is empty")
    delim = _sniff(lines)
    names = _parse_header(lines[0], delim)
    if len(names) < 2:
        raise ConfigError(
            f"the file has a single column ({quote(names[0])}); it needs the target plus at least one feature column "
            f"(delimiters tried: {', '.join(_DELIM_NAMES[d] for d in _DELIMITERS)})"
        )
    return names, delim, lines, line_no


def read_csv_table(source: str | bytes | os.PathLike | IO, caps: Caps | None = None) -> pd.DataFrame:
    """A validated all-numeric table (float64) from a path (str/PathLike), raw bytes or a file object.

    The delimiter (comma, semicolon, tab, pipe, spaces) is sniffed; every problem is a ConfigError naming
    the column and line (the header is line 1).
    """
    caps = caps or Caps.from_env()
    limit = caps.max_upload_mb * _MB
    names, delim, lines, line_no = _read_header(source, _read_bytes(source, limit, caps.max_upload_mb))
    rows = _csv_rows(lines[1:], delim, line_no[1:])
    if not rows:
        raise ConfigError(f"the file has a header ({len(names)} columns) but no data rows")
    if len(rows) < 2:
        raise ConfigError("the file has only 1 data row; at least 2 are needed (one to train, one to validate)")
    if len(rows) > caps.max_rows:
        raise ConfigError(f"the file has {len(rows):,} rows, over the cap max_rows={caps.max_rows:,}")
    if len(names) - 1 > caps.max_features:
        raise ConfigError(
            f"the file has {len(names) - 1:,} feature columns, over the cap max_features={caps.max_features:,}"
        )
    for i, row in enumerate(rows):
        if len(row) != len(names):
            raise ConfigError(
                f"line {line_no[i + 1]} has {len(row)} values but the header has {len(names)} columns "
                f"({_DELIM_NAMES[delim]}-separated)"
            )
    cells = pd.DataFrame(rows, columns=names, dtype=str).apply(lambda s: s.str.strip())
    return pd.DataFrame({c: _numeric_column(c, cells[c], delim, line_no[1:]) for c in names})


def _numeric_column(name: str, s: pd.Series, delim: str, line_no: list[int]) -> np.ndarray:
    missing = s.str.lower().isin(_MISSING).to_numpy()
    values = pd.to_numeric(s.where(~missing), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values) & ~missing
    if bad.any() and delim != ",":  # decimal commas, as European spreadsheets write them with ';'
        alt = pd.to_numeric(s.where(~missing).str.replace(",", ".", regex=False), errors="coerce").to_numpy(float)
        if not (np.isnan(alt) & ~missing).any():
            values, bad = alt, np.zeros_like(bad)
    problems = (
        (bad, "non-numeric value{s}, e.g. {v} on line {line}; every cell must be a number"),
        (missing, "empty or missing (NaN) cell{s}, first on line {line}; fill or drop those rows"),
        (
            ~(np.abs(values) <= MAX_ABS_VALUE),
            "value{s} that training in float32 cannot use (infinite or |x| > 1e30), e.g. {v} on line {line}",
        ),
    )
    for mask, text in problems:
        if mask.any():
            count, i = int(mask.sum()), int(np.argmax(mask))
            plural = "s" if count > 1 else ""
            raise ConfigError(
                f"column {quote(name)} has {count:,} " + text.format(s=plural, v=quote(s.iloc[i]), line=line_no[i])
            )
    return values
