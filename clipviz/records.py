"""What training produces: one EpochRecord per run per epoch, as plain data.

Also the fixed histogram bins (so histograms compare across runs and epochs) and
conversion to pandas and to JSON. NaN and inf are data here: JSON has no token for
them, so a non-finite float is written as the string "nan", "inf" or "-inf", and each
epoch lists the fields that held one under "nonfinite". Loading reverses both.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from .config import ConfigError, RunSpec

SCHEMA_VERSION = 1
# gradient-norm histograms: quarter-decade bins from 1e-4 to 1e8; plus below, above, non-finite
NORM_EDGES = np.logspace(-4, 8, 49)
# gradient element values: octave bins mirrored around zero, |v| in [2^e, 2^(e+1)) for e = -14..13, plus
# |v| < 2^-14 on either side of zero. Counts have len(VALUE_EDGES) + 2 = 61 entries:
# [v <= -2^14 (incl. -inf), bins..., v >= 2^14 (incl. +inf), NaN]. Bins are closed toward zero on both
# sides (mirror images), so -0.0 counts in the bin just below zero.
_POS = 2.0 ** np.arange(-14, 15)
VALUE_EDGES = np.concatenate([-_POS[::-1], [0.0], _POS])


@dataclass
class EpochRecord:
    run: int  # index of the run within its job
    label: str  # legend name, e.g. "value:5"
    epoch: int  # 1-based
    train_loss: float  # mean of this epoch's step losses (up to divergence); nan/inf kept
    val_loss: float  # validation loss after the epoch
    grad_norm_pre: list[float]  # global gradient L2 norm before clipping, one per step
    grad_norm_post: list[float]  # ... after clipping
    layer_norms: dict[str, float]  # per parameter tensor: mean pre-clip norm over the epoch's steps
    clip_rate: float  # fraction of steps the clip changed the gradient
    elem_clip_frac: float  # mean fraction of gradient elements the clip changed
    value_hist_pre: list[int] = field(default_factory=list)  # counts on VALUE_EDGES, all steps, before clipping
    value_hist_post: list[int] = field(default_factory=list)  # ... after clipping
    wall_time: float = 0.0  # seconds since the job started
    diverged: tuple[int, int] | None = None  # (epoch, step) of the run's first non-finite loss or norm

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        bad = sorted(k for k, v in d.items() if _has_nonfinite(v))
        d = {k: encode_nonfinite(v) for k, v in d.items()}
        d["diverged"] = None if self.diverged is None else {"epoch": self.diverged[0], "step": self.diverged[1]}
        d["nonfinite"] = bad
        return d

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> EpochRecord:
        names = {f.name for f in fields(cls)}
        kw = {k: decode_nonfinite(v) for k, v in d.items() if k in names}
        div = d.get("diverged")
        kw["diverged"] = None if not div else (int(div["epoch"]), int(div["step"]))
        return cls(**kw)


def _has_nonfinite(v: Any) -> bool:
    if isinstance(v, float):
        return not math.isfinite(v)
    if isinstance(v, dict):
        return any(_has_nonfinite(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return any(_has_nonfinite(x) for x in v)
    return False


def encode_nonfinite(v: Any) -> Any:
    """NaN/inf floats (also inside lists and dicts) -> "nan", "inf", "-inf": JSON has no token for them."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: encode_nonfinite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [encode_nonfinite(x) for x in v]
    return v


_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def decode_nonfinite(v: Any) -> Any:
    """The inverse of encode_nonfinite."""
    if isinstance(v, str) and v in _SPECIAL:
        return _SPECIAL[v]
    if isinstance(v, dict):
        return {k: decode_nonfinite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [decode_nonfinite(x) for x in v]
    return v


@dataclass
class RunResult:
    """One run's spec and all its records so far."""

    spec: RunSpec
    records: list[EpochRecord] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.spec.name

    @property
    def diverged(self) -> tuple[int, int] | None:
        return next((r.diverged for r in self.records if r.diverged), None)

    @property
    def final(self) -> EpochRecord | None:
        return self.records[-1] if self.records else None


def group_records(specs: list[RunSpec], records: list[EpochRecord]) -> list[RunResult]:
    results = [RunResult(s) for s in specs]
    for r in records:
        results[r.run].records.append(r)
    return results


# a norm within this distance of the clip threshold c counts as "= c": global-norm clipping leaves
# c * g / (g + 1e-6), i.e. c minus at most 1e-6 (clip_grad_norm_'s epsilon), and float32 rounds it by ~1e-7 * c
_AT_C_ABS, _AT_C_REL = 1e-6, 1e-6
_AT_C_HALF = 0.125  # half the height, in decades, at which the '= c' row is drawn (its true width is ~1e-6)


@dataclass(frozen=True)
class NormBins:
    """Rows of a gradient-norm histogram: quarter decades (NORM_EDGES), below and above them, and, given a clip
    threshold c, one row of its own for norms equal to c: every clipped norm lands on that one row instead of
    straddling a bin edge (c = 1 is an edge of NORM_EDGES)."""

    edges: np.ndarray  # [R - 1] ascending counting edges: row 0 is v < edges[0], row i is edges[i-1] <= v < edges[i]
    display: np.ndarray  # [R + 1] log10 boundaries of the rows as drawn (the '= c' row gets a visible height)
    labels: tuple[str, ...]  # [R] one per row, e.g. '‖g‖ in [0.1, 0.178)' or '‖g‖ = 1 (the clip threshold)'
    at_c: int | None  # index of the '= c' row; None without a threshold (or one outside NORM_EDGES)
    threshold: float | None  # c, when at_c is set

    def counts(self, values: list[float] | np.ndarray) -> np.ndarray:
        """[R + 1] counts: the R finite rows, then the non-finite norms (inf and NaN)."""
        v = np.asarray(values, dtype=float)
        finite = v[np.isfinite(v)]
        rows = np.bincount(np.searchsorted(self.edges, finite, side="right"), minlength=len(self.labels))
        return np.append(rows, v.size - finite.size)


def norm_bins(threshold: float | None = None) -> NormBins:
    """NormBins on NORM_EDGES; with a threshold c inside them, c gets its own row [c - tol, c + tol], and the grid
    edges within a quarter decade of c are dropped (no sliver rows next to it)."""
    logs = np.log10(NORM_EDGES)
    ok = threshold is not None and math.isfinite(threshold) and NORM_EDGES[0] < threshold < NORM_EDGES[-1]
    if not ok:
        display = np.concatenate([[logs[0] - 0.25], logs, [logs[-1] + 0.25]])
        labels = [f"‖g‖ in [{a:.3g}, {b:.3g})" for a, b in zip(NORM_EDGES[:-1], NORM_EDGES[1:], strict=True)]
        labels = [f"‖g‖ < {NORM_EDGES[0]:.3g}", *labels, f"‖g‖ ≥ {NORM_EDGES[-1]:.3g}"]
        return NormBins(NORM_EDGES.copy(), display, tuple(labels), None, None)
    c, lc = float(threshold), math.log10(threshold)
    tol = _AT_C_ABS + _AT_C_REL * c
    keep = np.abs(logs - lc) > 2 * _AT_C_HALF
    below, above = NORM_EDGES[keep & (logs < lc)], NORM_EDGES[keep & (logs > lc)]
    edges = np.concatenate([below, [c - tol, np.nextafter(c + tol, math.inf)], above])
    display = np.concatenate([[logs[0] - 0.25], np.log10(below), [lc - _AT_C_HALF, lc + _AT_C_HALF]])
    display = np.concatenate([display, np.log10(above), [logs[-1] + 0.25]])
    at_c = len(below) + 1
    labels = [f"‖g‖ in [{a:.3g}, {b:.3g})" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    labels = [f"‖g‖ < {edges[0]:.3g}", *labels, f"‖g‖ ≥ {edges[-1]:.3g}"]
    labels[at_c - 1] = f"‖g‖ in [{below[-1]:.3g}, {c:g})" if below.size else f"‖g‖ < {c:g}"
    labels[at_c] = f"‖g‖ = {c:g} (the clip threshold)"
    labels[at_c + 1] = f"‖g‖ in ({c:g}, {above[0]:.3g})" if above.size else f"‖g‖ > {c:g}"
    return NormBins(edges, display, tuple(labels), at_c, c)


def _shareable(spec: RunSpec) -> dict[str, Any]:
    """spec.to_dict() with a CSV's file name only: a downloaded or shared document must not carry the server's
    (or a user's) directory layout, e.g. the dashboard's saved-upload path."""
    d = spec.to_dict()
    if d["data"].get("csv_path"):
        d["data"]["csv_path"] = os.path.basename(d["data"]["csv_path"])
    return d


def to_json(results: list[RunResult]) -> dict[str, Any]:
    """The documented JSON document (README: 'JSON schema')."""
    return {
        "schema": SCHEMA_VERSION,
        "runs": [
            {
                "label": r.label,
                "spec": _shareable(r.spec),
                "diverged": None if r.diverged is None else {"epoch": r.diverged[0], "step": r.diverged[1]},
                "epochs": [rec.to_json_dict() for rec in r.records],
            }
            for r in results
        ],
    }


def dumps(results: list[RunResult]) -> str:
    # allow_nan=False: proves the document is strict JSON that any reader accepts
    return json.dumps(to_json(results), allow_nan=False)


def loads(text: str | bytes) -> list[RunResult]:
    """Parse a clipviz JSON document; malformed input is a ConfigError, never a traceback."""
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
            raise ConfigError("not a clipviz results file: no 'runs' list at the top level")
        out = []
        for run in doc["runs"]:
            res = RunResult(RunSpec.from_dict(run["spec"]))
            res.records = [EpochRecord.from_json_dict(e) for e in run["epochs"]]
            out.append(res)
        return out
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"not a valid clipviz results file: {type(exc).__name__}: {exc}") from exc


def to_frame(results: list[RunResult]) -> pd.DataFrame:
    """Tidy table, one row per run per epoch, scalar columns only (NaN/inf kept, plus *_finite flags)."""
    rows = []
    for i, res in enumerate(results):
        for r in res.records:
            pre = np.asarray(r.grad_norm_pre, dtype=float)
            rows.append(
                {
                    "run": i,
                    "label": res.label,
                    "strategy": res.spec.clip.strategy,
                    "threshold": res.spec.clip.threshold,
                    "lr": res.spec.optim.lr,
                    "seed": res.spec.seed,
                    "epoch": r.epoch,
                    "train_loss": r.train_loss,
                    "val_loss": r.val_loss,
                    "grad_norm_pre_median": float(np.median(pre)) if pre.size else math.nan,
                    "grad_norm_pre_max": float(pre.max()) if pre.size else math.nan,
                    "grad_norm_post_median": float(np.median(r.grad_norm_post)) if r.grad_norm_post else math.nan,
                    "clip_rate": r.clip_rate,
                    "elem_clip_frac": r.elem_clip_frac,
                    **{f"norm[{k}]": v for k, v in r.layer_norms.items()},
                    "wall_time": r.wall_time,
                    "diverged_epoch": r.diverged[0] if r.diverged else None,
                    "diverged_step": r.diverged[1] if r.diverged else None,
                }
            )
    df = pd.DataFrame(rows)
    if not df.empty:
        df["train_loss_finite"] = np.isfinite(df["train_loss"].astype(float))
        df["val_loss_finite"] = np.isfinite(df["val_loss"].astype(float))
    return df
