"""The one date splitter: walk-forward (expanding or sliding) and purged K-fold, with purge and embargo.

Folds are cut on **dates** (the dataset's trading sessions), never on rows, and every distance is counted in
trading days (positions in the sorted session list). A training date t has the label window
[t, t + entry_lag + h_max]; it is *purged* when that window reaches a test date. The *embargo* widens the
excluded gap to `embargo_days` sessions on the test side(s) (k-fold: on both sides, López de Prado), so
`embargo_days` must be at least `h_max + entry_lag`.

Purged K-fold also trains on dates *after* a test block, and a feature of date t looks back over sessions
[t − L, t] (L = the longest feature look-back: a 252-session z-score, a 200-span EMA, a 52-week flow z-score...).
A training date t after the block with t − L ≤ the block's last session therefore carries test-block information
in its features. Such dates are purged too (`Fold.lookback_purged` counts those the label purge and embargo left):
training resumes L + 1 sessions after the block. L comes from the dataset's manifest
(`FeatureManifest.max_lookback`); when it is unknown, purged K-fold is refused with a ConfigError (walk-forward
never trains after its test block and needs no look-back). The deep model reads a window of `model.window` = W
sessions [t − W + 1, t] of those features, so a sample of date t reads sessions back to t − W + 1 − L: with the
`input_window` W the purge after the block widens to L + W − 1 sessions (training resumes L + W sessions after it).
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from gogooku3.config.schema import SplitSettings, WalkForwardSplitSettings, typed
from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError, LeakageError

log = logging.getLogger(__name__)

DEFAULT_EMBARGO_DAYS = 20


@dataclass
class Fold:
    """One train/test split on dates. `purged` counts label-crossing training dates removed; `embargoed`
    counts the further dates the embargo removed."""

    index: int
    train_dates: list[dt.date]
    test_dates: list[dt.date]
    purged: int = 0
    embargo_days: int = 0
    embargoed: int = 0
    gaps: dict[str, int | None] = field(default_factory=dict)  # trading days between train and test on each side
    feature_lookback: int | None = None  # k-fold: the features' longest look-back in sessions (walk-forward: None)
    lookback_purged: int = 0  # k-fold: training dates after the block purged for it beyond the embargo
    input_window: int = 1  # k-fold: the model's input window W (sessions); the purge after the block is L + W - 1

    @property
    def reach(self) -> int | None:
        """Sessions a training sample of date t reads back (features' look-back + input window - 1; None without
        a look-back)."""
        return None if self.feature_lookback is None else self.feature_lookback + self.input_window - 1

    @property
    def train_range(self) -> tuple[dt.date, dt.date]:
        return self.train_dates[0], self.train_dates[-1]

    @property
    def test_range(self) -> tuple[dt.date, dt.date]:
        return self.test_dates[0], self.test_dates[-1]

    def train_segments(self) -> list[tuple[dt.date, dt.date]]:
        """Contiguous training spans (two for a middle k-fold test block)."""
        segs: list[tuple[dt.date, dt.date]] = []
        test_lo, test_hi = self.test_range
        before = [d for d in self.train_dates if d < test_lo]
        after = [d for d in self.train_dates if d > test_hi]
        for part in (before, after):
            if part:
                segs.append((part[0], part[-1]))
        return segs

    def to_dict(self) -> dict[str, Any]:
        overlap = len(set(self.train_dates) & set(self.test_dates))
        return {
            "index": self.index,
            "train_start": self.train_dates[0].isoformat(),
            "train_end": self.train_dates[-1].isoformat(),
            "train_segments": [[a.isoformat(), b.isoformat()] for a, b in self.train_segments()],
            "test_start": self.test_dates[0].isoformat(),
            "test_end": self.test_dates[-1].isoformat(),
            "n_train_dates": len(self.train_dates),
            "n_test_dates": len(self.test_dates),
            "purged": self.purged,
            "embargoed": self.embargoed,
            "embargo_days": self.embargo_days,
            "gap_before_test": self.gaps.get("before"),
            "gap_after_test": self.gaps.get("after"),
            "overlapping_dates": overlap,
            "feature_lookback": self.feature_lookback,
            "lookback_purged": self.lookback_purged,
            "input_window": self.input_window,
        }


def _sessions(dates: Iterable[dt.date] | pl.Series) -> list[dt.date]:
    s = dates if isinstance(dates, pl.Series) else pl.Series(C.DATE, list(dates))
    return s.cast(pl.Date).drop_nulls().unique().sort().to_list()


def label_gap(horizons: Sequence[int], entry_lag: int) -> int:
    """Sessions from a date t to the end of its longest label window, t + entry_lag + h_max: the one place the label
    gap is computed (purge, embargo, inner-validation gaps, stacking blocks, incremental builds). A dataset's gap is
    `FeatureManifest.label_gap`; this form serves callers that hold only the horizons and the lag."""
    return max((int(h) for h in horizons), default=0) + int(entry_lag)


def resolve_embargo(embargo_days: int | None, horizons: Sequence[int], entry_lag: int) -> int:
    """The embargo in trading days: `None` -> max(20, h_max + lag); an explicit value below h_max + lag is an error."""
    need = label_gap(horizons, entry_lag)
    if embargo_days is None:
        return max(DEFAULT_EMBARGO_DAYS, need)
    emb = int(embargo_days)
    if emb < need:
        raise ConfigError(
            f"split.embargo_days={emb} is shorter than max horizon + entry_lag = {need} trading days; "
            f"labels of the last training dates would overlap the test span"
        )
    return emb


class _BaseSplitter:
    method = "base"

    def __init__(self, n_splits: int, horizons: Sequence[int], entry_lag: int, embargo_days: int | None) -> None:
        if int(n_splits) < 1:
            raise ConfigError(f"split.n_splits must be >= 1, got {n_splits}")
        self.n_splits = int(n_splits)
        self.horizons = [int(h) for h in horizons] or [1]
        self.entry_lag = int(entry_lag)
        self.label_span = label_gap(self.horizons, self.entry_lag)  # t + lag + h_max: sessions a label reaches ahead
        self.embargo_days = resolve_embargo(embargo_days, self.horizons, self.entry_lag)

    def _fold(
        self,
        index: int,
        sessions: list[dt.date],
        test_lo: int,
        test_hi: int,
        candidates: np.ndarray,
        lookback: int | None = None,
        input_window: int = 1,
    ) -> Fold:
        """Build a fold from test positions [test_lo, test_hi] and candidate training positions; with `lookback`,
        training positions after the block whose inputs [t − input_window + 1 − lookback, t] reach it are purged as
        well."""
        pos = candidates
        before = pos[pos < test_lo]
        after = pos[pos > test_hi]
        # Purge: label window reaches the test span (before); for dates after the test block, the test labels
        # (ending test_hi + label_span) overlap their label windows.
        purge_before = before >= test_lo - self.label_span
        purge_after = after <= test_hi + self.label_span
        emb_before = before >= test_lo - self.embargo_days
        emb_after = after <= test_hi + self.embargo_days
        reach = None if lookback is None else lookback + input_window - 1
        look_after = after <= test_hi + reach if reach is not None else np.zeros(after.shape, bool)
        drop_after = emb_after | look_after
        keep = np.concatenate([before[~emb_before], after[~drop_after]])
        purged = int(purge_before.sum() + purge_after.sum())
        embargoed = int((emb_before & ~purge_before).sum() + (emb_after & ~purge_after).sum())
        kb = before[~emb_before]
        ka = after[~drop_after]
        gaps = {
            "before": int(test_lo - kb.max() - 1) if kb.size else None,
            "after": int(ka.min() - test_hi - 1) if ka.size else None,
        }
        return Fold(
            index,
            [sessions[i] for i in np.sort(keep)],
            sessions[test_lo : test_hi + 1],
            purged,
            self.embargo_days,
            embargoed,
            gaps,
            lookback,
            int((look_after & ~emb_after).sum()),
            input_window,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "n_splits": self.n_splits,
            "embargo_days": self.embargo_days,
            "label_span_days": self.label_span,
        }


MIN_FIT_DAYS = 60  # sessions a proposed first training span holds beyond the label span: 40 validate, 20 fit


class WalkForwardSplitter(_BaseSplitter):
    """Walk-forward folds laid out backwards from the last date: fold i tests `test_days` sessions, the last
    fold ends on the last date. Training is expanding (from the first date) or sliding (`train_days` long),
    ending `embargo_days` sessions before the test block."""

    method = "walk_forward"

    def __init__(
        self,
        *,
        n_splits: int,
        horizons: Sequence[int],
        entry_lag: int,
        embargo_days: int | None,
        mode: str,
        min_train_days: int,
        test_days: int | None,
        train_days: int | None,
        holdout_days: int = 0,
    ) -> None:
        super().__init__(n_splits, horizons, entry_lag, embargo_days)
        self.holdout_days = int(holdout_days)  # only sizes the proposals: the held-out slice is cut by `inner_slices`
        if mode not in ("expanding", "sliding"):
            raise ConfigError(f"split.mode must be 'expanding' or 'sliding', got '{mode}'")
        self.mode = mode
        self.min_train_days = int(min_train_days)
        if self.min_train_days < 1:
            raise ConfigError(f"split.min_train_days must be >= 1, got {min_train_days}")
        self.test_days = None if test_days is None else int(test_days)
        if self.test_days is not None and self.test_days < 1:
            raise ConfigError(f"split.test_days must be >= 1, got {test_days}")
        self.train_days = None if train_days is None else int(train_days)

    def required_dates(self, test_days: int | None = None) -> int:
        return self.min_train_days + self.embargo_days + self.n_splits * (test_days or self.test_days or 1)

    def split(self, dates: Iterable[dt.date] | pl.Series) -> list[Fold]:
        sessions = _sessions(dates)
        n = len(sessions)
        test_days = self.test_days or (n - self.min_train_days - self.embargo_days) // self.n_splits
        if test_days < 1 or n < self.required_dates(test_days):
            raise DataError(
                f"too few dates for {self.n_splits} walk-forward folds: have {n} trading days, need at least "
                f"{self.required_dates(max(test_days, 1))} (split.min_train_days {self.min_train_days} + embargo "
                f"{self.embargo_days} + {self.n_splits} x test_days {max(test_days, 1)}); {self._proposal(n)}"
            )
        train_len = self.train_days or self.min_train_days
        folds = []
        for i in range(self.n_splits):
            test_lo = n - (self.n_splits - i) * test_days
            test_hi = test_lo + test_days - 1
            lo = 0 if self.mode == "expanding" else max(0, test_lo - self.embargo_days - train_len)
            folds.append(self._fold(i, sessions, test_lo, test_hi, np.arange(lo, test_lo)))
        check_folds(folds, sessions, require_forward=True)
        return folds

    def _proposal(self, n: int) -> str:
        """Split keys that fit `n` sessions (checked against `required_dates`): first a shorter first training span
        (half of what the embargo leaves, at least `MIN_FIT_DAYS` + the label span so the inner validation slice
        fits, the rest in the same number of test blocks), then fewer folds."""
        avail, k = n - self.embargo_days, self.n_splits
        hold = self.holdout_days + self.label_span if self.holdout_days else 0
        need = MIN_FIT_DAYS + self.label_span + hold
        held = f", the {self.holdout_days}-session held-out slice (split.holdout_days) after a second gap"
        held = held if hold else ""
        short = (
            f"add dates, or shorten labels.horizons (a first training span needs about {need} sessions: "
            f"the {MIN_FIT_DAYS - 20}-session inner validation slice of the default split.val_days, its "
            f"{self.label_span}-session label gap{held} and 20 to fit)"
        )
        if avail < 2:
            return (
                f"the embargo alone takes {self.embargo_days} sessions (split.embargo_days, at least max "
                f"labels.horizons + labels.entry_lag): {short}"
            )
        out = []
        goal = max(avail // 2, need)
        keep_t = self.test_days is not None and avail - k * self.test_days >= goal
        t = self.test_days if keep_t and self.test_days is not None else (avail - goal) // k
        if t >= 1:
            m = avail - k * t
            keys = f"split.min_train_days={m}" + ("" if keep_t or self.test_days is None else f" split.test_days={t}")
            out.append(f"{keys} ({k} test block(s) of {t} sessions after {m} training sessions)")
        rest = avail - self.min_train_days
        if k > 1 and rest >= 1 and self.min_train_days >= need:
            k2 = min(k - 1, max(1, rest // (self.test_days or 20)))
            if self.test_days is None or k2 * self.test_days <= rest:
                out.append(
                    f"split.n_splits={k2} (keeps split.min_train_days={self.min_train_days}; test blocks of "
                    f"{self.test_days or rest // k2} sessions)"
                )
        return "set " + ", or ".join(out) if out else short

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "mode": self.mode,
            "min_train_days": self.min_train_days,
            "test_days": self.test_days,
            "train_days": self.train_days,
        }


class PurgedKFoldSplitter(_BaseSplitter):
    """K contiguous test blocks; training = every other date, purged and embargoed on both sides of the block, and
    purged after the block for the features' look-back (`feature_lookback` sessions; required) plus the model's
    input window (`input_window` sessions: L + W - 1 in all, see the module docstring)."""

    method = "purged_kfold"

    def __init__(
        self,
        *,
        n_splits: int,
        horizons: Sequence[int],
        entry_lag: int,
        embargo_days: int | None,
        min_train_days: int,
        feature_lookback: int | None,
        input_window: int = 1,
    ) -> None:
        super().__init__(n_splits, horizons, entry_lag, embargo_days)
        if self.n_splits < 2:
            raise ConfigError(f"purged k-fold needs split.n_splits >= 2, got {n_splits}")
        if feature_lookback is None:
            raise ConfigError(
                "split=purged_kfold: training dates after a test block carry features whose look-back "
                "reaches into it, and the dataset's manifest records no feature look-back to purge "
                "them; use split=walk_forward (or a dataset whose manifest has `lookback`)"
            )
        if int(feature_lookback) < 0:
            raise ConfigError(f"feature look-back must be >= 0 sessions, got {feature_lookback}")
        self.feature_lookback = int(feature_lookback)
        if int(input_window) < 1:
            raise ConfigError(f"model.window must be >= 1 session, got {input_window}")
        self.input_window = int(input_window)
        self.min_train_days = int(min_train_days)

    def split(self, dates: Iterable[dt.date] | pl.Series) -> list[Fold]:
        sessions = _sessions(dates)
        n = len(sessions)
        need = self.n_splits * max(1, self.embargo_days) + max(self.min_train_days, 1)
        if n < need:
            raise DataError(
                f"too few dates for {self.n_splits} purged k-folds: have {n} trading days, need at least {need}"
            )
        bounds = np.linspace(0, n, self.n_splits + 1).round().astype(int)
        folds = []
        allpos = np.arange(n)
        for i in range(self.n_splits):
            test_lo, test_hi = int(bounds[i]), int(bounds[i + 1]) - 1
            cand = allpos[(allpos < test_lo) | (allpos > test_hi)]
            fold = self._fold(i, sessions, test_lo, test_hi, cand, self.feature_lookback, self.input_window)
            if len(fold.train_dates) < self.min_train_days:
                raise DataError(
                    f"purged k-fold {i}: only {len(fold.train_dates)} training dates after purge, "
                    f"embargo and the {self.feature_lookback}-session feature look-back + {self.input_window}-session "
                    f"input window (need {self.min_train_days}); use fewer folds, a shorter embargo or "
                    "split=walk_forward"
                )
            folds.append(fold)
        check_folds(folds, sessions)
        return folds

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "min_train_days": self.min_train_days,
            "feature_lookback": self.feature_lookback,
            "input_window": self.input_window,
        }


def make_splitter(
    split_cfg: Any,
    horizons: Sequence[int],
    entry_lag: int,
    feature_lookback: int | None = None,
    input_window: int = 1,
) -> WalkForwardSplitter | PurgedKFoldSplitter:
    """The splitter named by `split.method` (`walk_forward` | `purged_kfold`) with its config keys (every key of
    that option, as in its YAML; checked by the schema); purged K-fold needs `feature_lookback` (the manifest's
    `max_lookback`) and is refused without it, and purges the model's `input_window` (`model.window`) as well."""
    k = typed(split_cfg, SplitSettings, "split")
    if isinstance(k, WalkForwardSplitSettings):
        return WalkForwardSplitter(
            n_splits=k.n_splits,
            horizons=horizons,
            entry_lag=entry_lag,
            embargo_days=k.embargo_days,
            mode=k.mode,
            min_train_days=k.min_train_days,
            test_days=k.test_days,
            train_days=k.train_days,
            holdout_days=k.holdout_days,
        )
    return PurgedKFoldSplitter(
        n_splits=k.n_splits,
        horizons=horizons,
        entry_lag=entry_lag,
        embargo_days=k.embargo_days,
        min_train_days=k.min_train_days,
        feature_lookback=feature_lookback,
        input_window=input_window,
    )


def chosen_folds(folds: Sequence[Fold], which: int | str | None) -> list[Fold]:
    """The folds `train.cv.folds` selects: None the last, "all" (or k >= len) every fold, k the last k."""
    if which is None:
        return list(folds[-1:])
    if str(which) == "all":
        return list(folds)
    k = int(which)
    if k < 1:
        raise ConfigError(f"train.cv.folds={which}: must be null, 'all' or a positive number of folds")
    return list(folds[-k:])


def inner_validation(
    train_dates: Sequence[dt.date], val_days: int, gap_days: int
) -> tuple[list[dt.date], list[dt.date]]:
    """Cut a validation slice from the end of a training span: the last `val_days` dates validate, the
    `gap_days` dates before them are dropped (labels of the fit dates must not reach the validation span),
    the rest fit. For a k-fold training set with two segments the slice comes from its overall end."""
    dates = sorted(train_dates)
    val_days, gap_days = int(val_days), int(gap_days)
    if val_days < 1 or gap_days < 0:
        raise ConfigError(f"inner validation needs val_days >= 1 and gap_days >= 0, got {val_days}, {gap_days}")
    if len(dates) < val_days + gap_days + 1:
        raise DataError(
            f"training span of {len(dates)} dates is too short for a {val_days}-day validation slice "
            f"with a {gap_days}-day gap"
        )
    return dates[: len(dates) - val_days - gap_days], dates[len(dates) - val_days :]


def inner_holdout(
    train_dates: Sequence[dt.date], val_days: int, gap_days: int, holdout_days: int
) -> tuple[list[dt.date], list[dt.date], list[dt.date]]:
    """(fit, val, holdout): the last `holdout_days` dates are held out, `gap_days` before them dropped, and the rest
    cut by `inner_validation` (fit | gap | val). No model early-stops or selects on the held-out dates, so a choice
    made there (blend weights) sees predictions no selection has tuned. `holdout_days=0`: no held-out slice."""
    dates = sorted(train_dates)
    hold, gap = int(holdout_days), int(gap_days)
    if hold < 0:
        raise ConfigError(f"split.holdout_days must be >= 0, got {holdout_days}")
    if hold == 0:
        return (*inner_validation(dates, val_days, gap), [])
    if len(dates) < hold + gap + int(val_days) + gap + 1:
        raise DataError(
            f"training span of {len(dates)} dates is too short for a {val_days}-day validation slice and a "
            f"{hold}-day held-out slice, each after a {gap}-day gap; lower split.holdout_days or split.val_days"
        )
    fit, val = inner_validation(dates[: len(dates) - hold - gap], val_days, gap)
    return fit, val, dates[len(dates) - hold :]


def check_folds(
    folds: Sequence[Fold], dates: Iterable[dt.date] | pl.Series | None = None, require_forward: bool = False
) -> dict[str, Any]:
    """Prove the folds are leak-free; raise LeakageError otherwise.

    Checks: no date in both train and test; test blocks disjoint across folds (and moving forward for
    walk-forward); given the session list, every training date is at least `embargo_days` sessions away
    from its fold's test block, and (with a `feature_lookback` L) every training date after the block more than L.
    """
    if not folds:
        raise LeakageError("no folds to check")
    sessions = _sessions(dates) if dates is not None else None
    pos = {d: i for i, d in enumerate(sessions)} if sessions is not None else None
    min_gap: int | None = None
    for f in folds:
        if not f.train_dates or not f.test_dates:
            raise LeakageError(
                f"fold {f.index}: empty train ({len(f.train_dates)}) or test ({len(f.test_dates)}) dates"
            )
        both = sorted(set(f.train_dates) & set(f.test_dates))
        if both:
            raise LeakageError(f"fold {f.index}: {len(both)} date(s) in both train and test, e.g. {both[0]}")
        if pos is not None:
            lo, hi = pos[f.test_dates[0]], pos[f.test_dates[-1]]
            tp = np.array([pos[d] for d in f.train_dates])
            dist = np.where(tp < lo, lo - tp - 1, tp - hi - 1)
            if ((tp >= lo) & (tp <= hi)).any():
                raise LeakageError(f"fold {f.index}: training dates inside the test block")
            g = int(dist.min())
            if g < f.embargo_days:
                bad = f.train_dates[int(dist.argmin())]
                raise LeakageError(
                    f"fold {f.index}: training date {bad} is {g} trading days from the test block, "
                    f"embargo is {f.embargo_days}"
                )
            after = tp > hi
            reach = f.reach
            if reach is not None and after.any() and int(dist[after].min()) < reach:
                bad = f.train_dates[int(np.flatnonzero(after)[dist[after].argmin()])]
                raise LeakageError(
                    f"fold {f.index}: training date {bad} after the test block is within the "
                    f"{f.feature_lookback}-session feature look-back + {f.input_window}-session input window of it"
                )
            min_gap = g if min_gap is None else min(min_gap, g)
    for a, b in itertools.pairwise(folds):
        if set(a.test_dates) & set(b.test_dates):
            raise LeakageError(f"folds {a.index} and {b.index}: test blocks overlap")
        if require_forward and not b.test_dates[0] > a.test_dates[-1]:
            raise LeakageError(f"fold {b.index}: walk-forward test block does not move forward")
    return {"n_folds": len(folds), "overlaps_detected": 0, "min_gap_trading_days": min_gap}


def fold_table(folds: Sequence[Fold]) -> list[dict[str, Any]]:
    return [f.to_dict() for f in folds]
