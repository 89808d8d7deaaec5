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
    reused: bool  # True: fitted by an earlier `safe` (or `train`) on the same data, split and params
    safe_report: str | None = None


@dataclass
class ModelInfo:
    name: str
    n_params: int  # all members together
    members: int
    n_params_per_member: int
    expected_params: int  # `model.expected_params` of the config
    flops_per_sample: float


@dataclass
class FoldResult:
    """One walk-forward fold: its dates and what each predictor recorded of its fit there (`Fitted.facts`)."""

    fold: dict[str, Any]
    fit_range: list[str] | None
    val_range: list[str] | None
    test_range: list[str] | None
    predictors: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> facts
    members_test_rank_ic: list[dict[str, float]] | None = None  # per ATFT member (seed): own test RankIC, same rows


@dataclass
class TrainResult:
    """A training run: the predictors fitted on the same plans, their facts per fold and one comparison (test and
    validation, `evaluation.compare.Comparison` dicts). `product` is the predictor the bundle serves."""

    run_dir: str
    created: str
    dataset: DatasetRef
    baseline: BaselineRef | None
    model: ModelInfo | None  # the deep model (ATFT-GAT-FAN), when it was fitted
    horizons: list[int]
    product: str
    predictors: list[str]  # fitted, in fit order (predictions under RUN/predictions/<name>/)
    folds: list[FoldResult]
    comparison: dict[str, Any]  # test days of every fold, identical rows
    comparison_val: dict[str, Any]  # validation days (optimistic for what was chosen there)
    samples_per_sec: float | None
    mfu: float | None
    collapse: dict[str, float]  # std of the deep model's test predictions per horizon (0 = collapsed)
    panel: dict[str, Any]  # fingerprint, shape [days, stocks, features]
    durations_s: dict[str, float]
    peak_rss_mb: float
    peak_gpu_mb: float | None = None

    @property
    def test(self) -> dict[str, Any]:
        """The product predictor's pooled test metrics per horizon."""
        return (self.comparison.get("pooled") or {}).get(self.product, {})

    def pooled(self, name: str) -> dict[str, Any] | None:
        return self.comparison["pooled"].get(name)

    @property
    def epochs(self) -> list[int | list[int]]:
        """Per fold: the deep model's epochs trained (a list per member for an ensemble)."""
        out = []
        for f in self.folds:
            e = (f.predictors.get("atft") or {}).get("epochs") or []
            out.append(e[0] if len(e) == 1 else e)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epochs": self.epochs, "test": self.test}

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TrainResult:
        d = read_json(path)
        try:
            return cls(
                **{
                    **_known(cls, d),
                    "dataset": DatasetRef(**_known(DatasetRef, d["dataset"])),
                    "baseline": None if d["baseline"] is None else BaselineRef(**_known(BaselineRef, d["baseline"])),
                    "model": None if d["model"] is None else ModelInfo(**_known(ModelInfo, d["model"])),
                    "folds": [FoldResult(**_known(FoldResult, f)) for f in d["folds"]],
                }
            )
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
            return cls(
                str(path),
                int(data["samples"]),
                int(data["dates"]),
                int(data["stocks"]),
                int(data["features"]),
                dict(safety["dropped_features"]),
                str(safety["split_method"]),
                int(safety["walk_forward_splits"]),
                int(safety["embargo_days"]),
            )
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}: not a safe report of this version ({e}); re-run `gogooku3 safe`") from e

    def rows(self) -> dict[str, Any]:
        """(figure, value) pairs for the report's data table."""
        return {
            "rows": self.samples,
            "dates": self.dates,
            "stocks": self.stocks,
            "features used": self.features,
            "features dropped": ", ".join(f"{k} ({v})" for k, v in self.dropped_features.items()) or "none",
            "split": f"{self.split_method}, {self.folds} folds, embargo {self.embargo_days} sessions",
        }


def run_predictions(run_dir: str | Path, kind: str = "test") -> dict[str, Path]:
    """A training run's prediction files, name -> RUN/predictions/<name>/<kind>.parquet, the product predictor first
    (the run's comparison.json names it)."""
    run = Path(run_dir)
    folder = run / "predictions"
    files = {p.name: p / f"{kind}.parquet" for p in sorted(folder.glob("*")) if (p / f"{kind}.parquet").is_file()}
    if not files:
        raise DataError(f"{folder}/<predictor>/{kind}.parquet: none found (is {run} a training run directory?)")
    product = read_json(run / "comparison.json").get("product") if (run / "comparison.json").exists() else None
    return {n: files[n] for n in [product, *files] if n in files}
