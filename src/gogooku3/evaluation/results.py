"""Typed results of a training run: what `train` writes to `RUN/metrics.json` and what `report` reads back.

Each run records the dataset and the LightGBM baseline run it used (paths and fingerprints), so a report reads the
run's own inputs field by field, never "the newest file" of a folder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from gogooku3.core.errors import DataError
from gogooku3.core.io import read_json, write_json


@dataclass
class DatasetRef:
    """The dataset a run trained on, and the facts its manifest fixed."""

    path: str
    fingerprint: str
    manifest_fingerprint: str
    n_features: int
    horizons: list[int]
    entry_lag: int
    calendar: str = ""


@dataclass
class BaselineRef:
    """The LightGBM baseline run (content-addressed under `<output_dir>/baselines/`) a training run compared to."""

    directory: str | None
    fingerprint: str
    reused: bool            # True: fitted by an earlier `safe` (or `train`) on the same data, split and params
    safe_report: str | None = None


@dataclass
class ModelInfo:
    name: str
    n_params: int               # all members together
    members: int
    n_params_per_member: int
    expected_params: int        # `model.expected_params` of the config
    flops_per_sample: float


@dataclass
class FoldResult:
    """One walk-forward fold: dates, per-member training facts and test metrics (`metrics.evaluate` dicts)."""

    fold: dict[str, Any]
    fit_range: list[str] | None
    val_range: list[str] | None
    test_range: list[str] | None
    model_test: dict[str, Any]
    baseline_test: dict[str, Any] | None
    epochs: list[int]                     # per member
    best_val_rank_ic: float | None        # members' mean of their best validation RankIC (first horizon)
    members_best_val_rank_ic: list[float | None]
    weights: list[dict[str, Any]]         # per member: best epoch or top-k average, with validation scores
    best_checkpoint: list[str | None]
    train_seconds: float
    throughput: list[dict[str, float]] = field(default_factory=list)
    collapse_events: list[dict[str, Any]] = field(default_factory=list)
    oracle_test: dict[str, Any] | None = None  # the oracle on the same rows (synthetic market only)
    combined_test: dict[str, Any] | None = None  # the model + LightGBM blend on the same rows (train.blend)
    blend_weights: dict[str, float] | None = None  # per horizon: the blend's weight on the model (chosen on val)
    model_vs_baseline: dict[str, Any] | None = None     # per horizon: paired daily RankIC, this fold's rows
    combined_vs_baseline: dict[str, Any] | None = None
    members_test_rank_ic: list[dict[str, float]] | None = None  # per member (seed): test RankIC per horizon, same rows


@dataclass
class TrainResult:
    run_dir: str
    created: str
    dataset: DatasetRef
    baseline: BaselineRef | None
    model: ModelInfo
    horizons: list[int]
    folds: list[FoldResult]
    val: dict[str, Any]                    # pooled over the folds' validation days
    test: dict[str, Any]                   # pooled over the folds' test days, on the rows every predictor scored
    baseline_test: dict[str, Any] | None   # the same rows
    model_vs_baseline: dict[str, Any]      # per horizon: `metrics.paired_comparison` of daily RankIC (same rows)
    samples_per_sec: float | None
    mfu: float | None
    collapse: dict[str, float]             # std of the test predictions per horizon (0 = collapsed)
    panel: dict[str, Any]                  # fingerprint, shape [days, stocks, features]
    durations_s: dict[str, float]
    peak_rss_mb: float
    peak_gpu_mb: float | None = None
    oracle_test: dict[str, Any] | None = None  # the synthetic market's oracle on the same rows (None: no oracle)
    comparison_rows: dict[str, Any] = field(default_factory=dict)  # `metrics.align_rows`: rows kept, excluded, why
    predictor: str = "model"                   # the product's predictor: model | combined (model + LightGBM blend)
    blend: dict[str, Any] | None = None        # method, grid and per fold the weights and validation curves
    combined_val: dict[str, Any] | None = None   # the blend on the folds' validation days (optimistic: chosen there)
    combined_test: dict[str, Any] | None = None  # the blend pooled over the folds' test days, same rows as `test`
    combined_vs_baseline: dict[str, Any] = field(default_factory=dict)  # per horizon, paired daily RankIC (HAC t)
    combined_vs_model: dict[str, Any] = field(default_factory=dict)
    combined_vs_oracle: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> list[int | list[int]]:
        """Per fold: the epochs trained (a list per member for an ensemble)."""
        return [f.epochs[0] if len(f.epochs) == 1 else f.epochs for f in self.folds]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epochs": self.epochs}

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TrainResult:
        d = read_json(path)
        try:
            return cls(**{**_known(cls, d), "dataset": DatasetRef(**_known(DatasetRef, d["dataset"])),
                          "baseline": None if d["baseline"] is None else BaselineRef(**_known(BaselineRef,
                                                                                             d["baseline"])),
                          "model": ModelInfo(**_known(ModelInfo, d["model"])),
                          "folds": [FoldResult(**_known(FoldResult, f)) for f in d["folds"]]})
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}: not a training result of this version ({e}); re-run `gogooku3 train`") from e


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class SafeSummary:
    """What a run report shows of the safe report behind its baseline: the data it processed, features dropped."""

    path: str
    samples: int
    dates: int
    stocks: int
    features: int
    dropped_features: dict[str, Any]
    split_method: str
    folds: int
    embargo_days: int

    @classmethod
    def from_report(cls, path: str | Path) -> SafeSummary:
        d = read_json(path)
        try:
            fr = d["final_report"]
            data, safety = fr["pipeline_summary"]["data_processed"], fr["safety_validation"]
            return cls(str(path), int(data["samples"]), int(data["dates"]), int(data["stocks"]),
                       int(data["features"]), dict(safety["dropped_features"]), str(safety["split_method"]),
                       int(safety["walk_forward_splits"]), int(safety["embargo_days"]))
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}: not a safe report of this version ({e}); re-run `gogooku3 safe`") from e

    def rows(self) -> dict[str, Any]:
        """(figure, value) pairs for the report's data table."""
        return {"rows": self.samples, "dates": self.dates, "stocks": self.stocks, "features used": self.features,
                "features dropped": ", ".join(f"{k} ({v})" for k, v in self.dropped_features.items()) or "none",
                "split": f"{self.split_method}, {self.folds} folds, embargo {self.embargo_days} sessions"}
