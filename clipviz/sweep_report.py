"""Reading a sweep's answer: medians and IQR over seeds, recommended ranges, heuristics, and the sweep file.

Diverged seeds are excluded from a point's median and counted (`summarize`). Files use records.py's
encoding of NaN/inf (strings "nan", "inf", "-inf" plus a "nonfinite" list), so they are strict JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .config import ConfigError, RunSpec, param_count
from .records import decode_nonfinite, encode_nonfinite
from .sweep import AUTOCLIP_P, METRICS, PASCANU_FACTORS, RunSummary, SweepResult, SweepSpec


# ---- reading the answer -------------------------------------------------------------------------
@dataclass(frozen=True)
class Stat:
    """Median and interquartile range over a point's seeds. Diverged seeds are counted, not averaged."""

    median: float  # over the seeds that did not diverge; nan if all did
    q1: float  # 25th percentile (numpy's linear interpolation), same seeds
    q3: float  # 75th percentile
    n: int  # seeds trained
    n_diverged: int  # seeds flagged diverged or with a non-finite value


def summarize(values: Sequence[float], diverged: Sequence[bool] | None = None) -> Stat:
    """Median/IQR of `values`, leaving out seeds that diverged (flagged, or a nan/inf value) and counting them."""
    v = np.asarray(values, dtype=float)
    bad = ~np.isfinite(v)
    if diverged is not None:
        bad |= np.asarray(diverged, dtype=bool)
    ok = v[~bad]
    if ok.size == 0:
        return Stat(math.nan, math.nan, math.nan, int(v.size), int(bad.sum()))
    q1, med, q3 = np.percentile(ok, [25, 50, 75])
    return Stat(float(med), float(q1), float(q3), int(v.size), int(bad.sum()))


def _value(s: RunSummary, metric: str) -> float:
    if metric not in METRICS:
        raise ConfigError(f"unknown sweep metric {metric!r}; choose from {', '.join(METRICS)}")
    return getattr(s, metric)


def summary_rows(result: SweepResult, metric: str = "final_val") -> list[dict[str, Any]]:
    """One row per (strategy, threshold, axis value): the Stat over seeds plus the median clip rate."""
    groups: dict[tuple, list[RunSummary]] = {}
    for s in result.runs:
        p = result.point_of(s)
        groups.setdefault((p.strategy, p.threshold, p.axis_value), []).append(s)
    order = {s: i for i, s in enumerate(("none", *result.sweep.strategies))}
    rows = []
    for (strat, thr, a), runs in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][2] or 0, kv[0][1] or 0)
    ):
        st = summarize([_value(r, metric) for r in runs], [r.diverged is not None for r in runs])
        rows.append(
            {
                "strategy": strat,
                "threshold": thr,
                "axis_value": a,
                **asdict(st),
                "clip_rate": float(np.median([r.clip_rate for r in runs])),
            }
        )
    return rows


def pick_axis(result: SweepResult, axis_value: float | None) -> float | None:
    """The second-axis value the 1-D views use: the one given, else the base setup's (or the nearest)."""
    sw = result.sweep
    if not sw.axis:
        return None
    if axis_value is not None:
        return axis_value
    base = sw.base.optim.lr if sw.axis == "lr" else sw.base.optim.batch_size
    return min(sw.axis_values, key=lambda v: abs(math.log(v / base)))


@dataclass(frozen=True)
class Recommendation:
    strategy: str
    low: float | None  # recommended threshold range; None when no threshold trained every seed
    high: float | None
    best: float | None  # threshold with the lowest median among those where no seed diverged
    best_value: float  # that median
    reason: str  # in words: why this range, what happens either side


def recommend(
    result: SweepResult, metric: str = "final_val", axis_value: float | None = None, tolerance: float = 2.0
) -> list[Recommendation]:
    """Per strategy: the widest contiguous threshold band around the best where every seed trained and the
    median `metric` is within `tolerance` x the best median."""
    a = pick_axis(result, axis_value)
    rows = [r for r in summary_rows(result, metric) if r["axis_value"] == a and r["strategy"] != "none"]
    out = []
    for strat in result.sweep.strategies:
        rs = sorted((r for r in rows if r["strategy"] == strat), key=lambda r: r["threshold"])
        stable = [r for r in rs if r["n_diverged"] == 0 and math.isfinite(r["median"])]
        if not stable:
            why = "no threshold trained every seed" if rs else "no results yet"
            out.append(Recommendation(strat, None, None, None, math.nan, why))
            continue
        best = min(stable, key=lambda r: r["median"])
        good = [r in stable and r["median"] <= tolerance * best["median"] for r in rs]
        i = j = rs.index(best)
        while i > 0 and good[i - 1]:
            i -= 1
        while j < len(rs) - 1 and good[j + 1]:
            j += 1
        lo, hi = rs[i]["threshold"], rs[j]["threshold"]
        what = METRICS[metric]
        reason = (
            f"{lo:g} to {hi:g}: every seed trained and the median {what} is within {tolerance:g}x "
            f"of the best ({best['median']:.3g} at {best['threshold']:g})"
        )
        for side, k in (("below", i - 1), ("above", j + 1)):
            if 0 <= k < len(rs):
                r = rs[k]
                if r["n_diverged"]:
                    reason += f"; {side}, {r['n_diverged']}/{r['n']} seeds diverge at {r['threshold']:g}"
                else:
                    reason += f"; {side}, {r['median']:.3g} at {r['threshold']:g}"
                    reason += " (trains slowly)" if side == "below" else ""
        out.append(Recommendation(strat, lo, hi, best["threshold"], best["median"], reason))
    return out


@dataclass(frozen=True)
class Heuristic:
    name: str  # rule of thumb and its source
    strategy: str  # the strategy whose threshold it suggests
    low: float
    high: float
    reason: str


def _trained_source(result: SweepResult, a: float | None) -> tuple[list[RunSummary], str]:
    """The runs whose gradient norms the rules of thumb read: runs that train, never diverging ones.

    The unclipped runs when every seed of them trained; else the runs of the best point (lowest median metric,
    every seed trained) of the recommendations, preferring norm clipping. Their pre-clip norms are measured
    along a trajectory that trains, which is what 'the average norm over many updates' means."""
    at_a = [s for s in result.runs if result.point_of(s).axis_value == a]
    none = [s for s in at_a if s.spec.clip.strategy == "none"]
    if none and all(s.diverged is None and math.isfinite(s.norm_median) for s in none):
        return none, f"{len(none)} unclipped runs"
    recs = [r for r in recommend(result, "final_val", a) if r.best is not None]
    if not recs:
        return [], ""
    best = min(recs, key=lambda r: (r.strategy != "norm", r.best_value))
    runs = [s for s in at_a if s.spec.clip.strategy == best.strategy and s.spec.clip.threshold == best.best]
    runs = [s for s in runs if s.diverged is None and math.isfinite(s.norm_median)]
    why = f"{len(none)}/{len(none)} unclipped runs diverged: " if none and all(s.diverged for s in none) else ""
    return runs, f"{why}the {len(runs)} seeds of {best.strategy}:{best.best:g}, the best setup that trained"


def heuristics(result: SweepResult, axis_value: float | None = None) -> list[Heuristic]:
    """Classic threshold rules, computed from the pre-clip norms of runs that train (`_trained_source`).

    Pascanu et al. 2013 (arXiv:1211.5063, sec. 3.2): "look at statistics on the average norm over a sufficiently
    large number of updates"; the ICML 2013 text adds "values from half to ten times this average can still yield
    convergence" (the arXiv text instead calls training "not very sensitive" to the threshold). We use the median
    norm over every step (robust to the spikes clipping is for).
    AutoClip (Seetharaman et al. 2020, arXiv:2007.14469): the p-th (10th) percentile of the norm history.
    Value clipping has no classic rule; norm/sqrt(P) is the per-element size if all P elements were equal.
    """
    a = pick_axis(result, axis_value)
    runs, source = _trained_source(result, a)
    if not runs:
        return []
    m = float(np.median([s.norm_median for s in runs]))
    p10 = float(np.median([s.norm_p10 for s in runs]))
    src = f"median pre-clip norm {m:.3g} over every step of {source}"
    lo, hi = PASCANU_FACTORS
    from .data import input_dim

    root_p = math.sqrt(param_count(result.sweep.base.model, input_dim(result.sweep.base.data)))
    out = [
        Heuristic("Pascanu et al. 2013 (ICML text): 0.5-10x the average norm", "norm", lo * m, hi * m, src),
        Heuristic(
            f"AutoClip: {AUTOCLIP_P:g}th percentile of the norm history",
            "norm",
            p10,
            p10,
            f"{AUTOCLIP_P:g}th percentile of the pre-clip norms of {source} (AutoClip adapts it while training)",
        ),
        Heuristic(
            "per-element size: 0.5-10x norm/sqrt(P)",
            "value",
            lo * m / root_p,
            hi * m / root_p,
            f"the typical norm spread evenly over P={root_p**2:.0f} parameters (a rough conversion, no paper)",
        ),
    ]
    return [h for h in out if h.strategy in result.sweep.strategies]


def best_thresholds(result: SweepResult, metric: str = "final_val", axis_value: float | None = None) -> str:
    """The CLI's summary: the best threshold per strategy, the recommended range, and the classic rules."""
    a = pick_axis(result, axis_value)
    rows = [r for r in summary_rows(result, metric) if r["axis_value"] == a]
    table = [("strategy", "best threshold", f"median {metric} [IQR]", "diverged", "recommended range")]
    for r in rows:
        if r["strategy"] == "none":
            iqr = f"{_g(r['median'])} [{_g(r['q1'])}, {_g(r['q3'])}]"
            table.append(("none", "-", iqr, f"{r['n_diverged']}/{r['n']} seeds", "-"))
    recs = recommend(result, metric, a)
    for rec in recs:
        n_div = sum(r["n_diverged"] for r in rows if r["strategy"] == rec.strategy)
        n_all = sum(r["n"] for r in rows if r["strategy"] == rec.strategy)
        best = [r for r in rows if r["strategy"] == rec.strategy and r["threshold"] == rec.best]
        iqr = f"{_g(best[0]['median'])} [{_g(best[0]['q1'])}, {_g(best[0]['q3'])}]" if best else "-"
        rng = f"{rec.low:g} to {rec.high:g}" if rec.low is not None else "none"
        table.append((rec.strategy, "-" if rec.best is None else f"{rec.best:g}", iqr, f"{n_div}/{n_all} runs", rng))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    if a is not None:
        lines.insert(0, f"at {result.sweep.axis}={a:g}")
    lines += [f"{rec.strategy}: {rec.reason}" for rec in recs]
    lines += [
        f"heuristic, {h.name}: {h.strategy} {h.low:.3g} to {h.high:.3g} ({h.reason})" for h in heuristics(result, a)
    ]
    if not result.complete:
        lines.append(f"(partial: {len(result.runs)} of {len(result.sweep.points())} runs trained)")
    return "\n".join(lines)


def _g(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


# ---- files --------------------------------------------------------------------------------------
SCHEMA_VERSION = 1


def _run_dict(s: RunSummary) -> dict[str, Any]:
    d = {k: v for k, v in asdict(s).items() if k != "spec"}
    d["diverged"] = None if s.diverged is None else {"epoch": s.diverged[0], "step": s.diverged[1]}
    nonfinite = sorted(k for k, v in d.items() if encode_nonfinite(v) != v)
    return {"label": s.spec.name, "spec": s.spec.to_dict(), **encode_nonfinite(d), "nonfinite": nonfinite}


def to_json(result: SweepResult, metric: str = "final_val") -> dict[str, Any]:
    """The sweep document: spec, one entry per run, and the summary/recommendations as computed here."""
    return {
        "schema": SCHEMA_VERSION,
        "kind": "sweep",
        "sweep": result.sweep.to_dict(),
        "complete": result.complete,
        "elapsed": result.elapsed,
        "runs": [_run_dict(s) for s in result.runs],
        "summary": {m: encode_nonfinite(summary_rows(result, m)) for m in METRICS},
        "recommendations": encode_nonfinite([asdict(r) for r in recommend(result, metric)]),
        "heuristics": encode_nonfinite([asdict(h) for h in heuristics(result)]),
    }


def dumps(result: SweepResult) -> str:
    import json

    return json.dumps(to_json(result), allow_nan=False)  # strict JSON: any reader accepts it


def loads(text: str | bytes) -> SweepResult:
    """Read a sweep document back; malformed input is a ConfigError."""
    import json

    try:
        doc = json.loads(text)
        res = SweepResult(SweepSpec.from_dict(doc["sweep"]), complete=bool(doc["complete"]))
        res.elapsed = float(doc.get("elapsed", 0.0))
        for r in doc["runs"]:
            div = r.get("diverged")
            kw = {
                k: decode_nonfinite(r[k])
                for k in ("epochs", "final_train", "final_val", "best_val", "best_epoch", "clip_rate")
            }
            kw |= {k: decode_nonfinite(r.get(k, "nan")) for k in ("norm_median", "norm_p10")}  # older files: nan
            res.runs.append(
                RunSummary(
                    RunSpec.from_dict(r["spec"]),
                    diverged=None if not div else (int(div["epoch"]), int(div["step"])),
                    val_curve=decode_nonfinite(r["val_curve"]),
                    early_norms=decode_nonfinite(r["early_norms"]),
                    **kw,
                )
            )
        return res
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"not a valid clipviz sweep file: {type(exc).__name__}: {exc}") from exc


def to_frame(result: SweepResult):
    """Tidy table, one row per run (NaN/inf kept): the CSV export."""
    import pandas as pd

    rows = []
    for s in result.runs:
        p = result.point_of(s)
        rows.append(
            {
                "strategy": p.strategy,
                "threshold": p.threshold,
                "lr": s.spec.optim.lr,
                "batch_size": s.spec.optim.batch_size,
                "seed": p.seed,
                "epochs": s.epochs,
                "final_train": s.final_train,
                "final_val": s.final_val,
                "best_val": s.best_val,
                "best_epoch": s.best_epoch,
                "clip_rate": s.clip_rate,
                "diverged_epoch": s.diverged[0] if s.diverged else None,
                "diverged_step": s.diverged[1] if s.diverged else None,
                "early_norm_median": float(np.median(s.early_norms)) if s.early_norms else math.nan,
            }
        )
    return pd.DataFrame(rows)
