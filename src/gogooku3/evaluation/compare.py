"""The one scorer: any set of predictors on identical rows, scored pooled and per fold, each paired with a reference.

    compare(frames, horizons, folds, product, reference) -> Comparison
      frames   name -> Date, Code, pred_{h}d, target_{h}d (the targets are the dataset's, the same for every frame)
      1. `metrics.align_rows`: keep the (Date, Code) rows every predictor scored (what was dropped and why: `rows`)
      2. `metrics.evaluate` per predictor, pooled over every fold's days and per fold
      3. `metrics.paired_comparison` of daily RankIC: every predictor against `reference`, and `product` against
         every other predictor, pooled and per fold (`"{a}_vs_{b}"` -> horizon -> t-stat, p-value, ...)

`train`, `safe`, `tune` and `bench` call it; the report reads the stored `Comparison` (RUN/comparison.json) and only
adds backtests and figures. A predictor that lacks a horizon is scored on the horizons it has.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import DataError
from gogooku3.core.io import read_json, write_json
from gogooku3.evaluation import metrics


def horizons_of(df: pl.DataFrame, horizons: Sequence[int]) -> list[int]:
    """The horizons of `horizons` that `df` predicts and has labels for."""
    return [int(h) for h in horizons if C.pred(h) in df.columns and C.target(h) in df.columns]


@dataclass
class Comparison:
    """Scores of several predictors on identical rows (`metrics.evaluate` / `metrics.paired_comparison` dicts)."""

    horizons: list[int]
    product: str | None
    reference: str | None
    rows: dict[str, Any]  # `metrics.align_rows` accounting
    pooled: dict[str, dict[str, Any]]  # name -> horizon -> metrics
    paired: dict[str, dict[str, Any]]  # "a_vs_b" -> horizon -> paired daily RankIC
    per_fold: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # fold -> name -> ...
    paired_per_fold: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # fold -> "a_vs_b" -> ...

    @property
    def names(self) -> list[str]:
        return list(self.pooled)

    def rank_ic(self, name: str, h: int | str) -> float | None:
        ev = self.pooled.get(name, {}).get(str(h))
        return None if ev is None else ev["rank_ic_mean"]

    def pair(self, a: str, b: str) -> dict[str, Any]:
        return self.paired.get(f"{a}_vs_{b}", {})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Comparison:
        try:
            return cls(
                **{k: d[k] for k in ("horizons", "product", "reference", "rows", "pooled", "paired")},
                per_fold=dict(d.get("per_fold") or {}),
                paired_per_fold=dict(d.get("paired_per_fold") or {}),
            )
        except (KeyError, TypeError) as e:
            raise DataError(f"not a comparison of this version ({e}); re-run `gogooku3 train`") from e

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Comparison:
        return cls.from_dict(read_json(path))


def align(
    frames: Mapping[str, pl.DataFrame | None], horizons: Sequence[int]
) -> tuple[dict[str, pl.DataFrame], dict[str, Any]]:
    """Every frame restricted to the rows all of them scored (`metrics.align_rows`), and the row accounting."""
    return metrics.align_rows(frames, horizons)


def daily(frames: Mapping[str, pl.DataFrame], horizons: Sequence[int]) -> dict[str, dict[int, pl.DataFrame]]:
    """name -> horizon -> `metrics.daily_ic` (aligned frames in, the series every figure and test reads)."""
    return {
        n: {h: metrics.daily_ic(f, C.pred(h), C.target(h)) for h in horizons_of(f, horizons)} for n, f in frames.items()
    }


def _pairs(names: Sequence[str], product: str | None, reference: str | None) -> list[tuple[str, str]]:
    """(a, b) pairs to test: every predictor against the reference, then the product against every other one; each
    unordered pair once."""
    out = [(n, reference) for n in names if reference is not None and reference in names and n != reference]
    out += [
        (product, n)
        for n in names
        if product is not None and product in names and n != product and (n, product) not in out
    ]
    return list(dict.fromkeys(out))


def _scores(
    frames: Mapping[str, pl.DataFrame], horizons: Sequence[int], pairs: list[tuple[str, str]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    d = daily(frames, horizons)
    pooled = {n: metrics.evaluate(f, horizons_of(f, horizons)) for n, f in frames.items()}
    paired = {
        f"{a}_vs_{b}": {str(h): metrics.paired_comparison(d[a][h], d[b][h], horizon=h) for h in d[a] if h in d[b]}
        for a, b in pairs
    }
    return pooled, paired


def compare(
    frames: Mapping[str, pl.DataFrame | None],
    horizons: Sequence[int],
    folds: Mapping[int, Sequence[dt.date]] | None = None,
    *,
    product: str | None = None,
    reference: str | None = None,
) -> tuple[Comparison, dict[str, pl.DataFrame]]:
    """Score `frames` (None entries are skipped) on their common rows; `folds`: fold index -> its days, for the
    per-fold tables (omit for pooled only). Returns the Comparison and the aligned frames."""
    hs = [int(h) for h in horizons]
    aligned, rows = align(frames, hs)
    if not aligned:
        raise DataError("compare: no predictions to score")
    pairs = _pairs(list(aligned), product, reference)
    pooled, paired = _scores(aligned, hs, pairs)
    per_fold, paired_fold = {}, {}
    for k, days in (folds or {}).items():
        sel = pl.col(C.DATE).is_in(pl.Series(sorted(days), dtype=pl.Date).implode())
        part = {n: f.filter(sel) for n, f in aligned.items()}
        if any(f.height == 0 for f in part.values()):
            continue
        per_fold[str(k)], paired_fold[str(k)] = _scores(part, hs, pairs)
    comp = Comparison(
        hs,
        product if product in aligned else None,
        reference if reference in aligned else None,
        rows,
        pooled,
        paired,
        per_fold,
        paired_fold,
    )
    return comp, aligned


def mean_rank_ic(df: pl.DataFrame, horizons: Sequence[int]) -> dict[int, tuple[float, int]]:
    """horizon -> (mean daily RankIC, days scored) of one frame on its own rows (tuning objectives, seed spreads)."""
    out = {}
    for h in horizons_of(df, horizons):
        s = metrics.summarize_ic(metrics.daily_ic(df, C.pred(h), C.target(h)), h)
        out[h] = (float(s["rank_ic_mean"]), int(s["n_days"]))
    return out
