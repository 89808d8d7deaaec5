"""MLflow tracking (opt-in: `train.mlflow=true` with `pip install -e ".[tracking]"`, the full `mlflow` package).

One tracking store for all runs (`paths.mlflow_uri`; null = `sqlite:///<paths.runs_dir>/mlflow.db`, artifacts in
`<paths.runs_dir>/mlartifacts`), one MLflow run per training run, tagged with its run directory, the git commit,
the dataset fingerprint, the data source and the product predictor. `train` logs the composed config once as
params, the per-epoch curves (`curve/<member>/<name>`, one point per epoch, averaged over folds), every predictor's
test and validation scores (`test/<predictor>/rank_ic_<h>d`, ...; the product is the tag `product`) and the paired
tests against the reference; `report` adds each predictor's headline backtest (`backtest/<predictor>/<figure>`),
the report checks and `report.html` (the tear sheet) as an artifact to the same MLflow run.
Open the store with `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from gogooku3.config.compose import path, to_dict

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)
EXPERIMENT = "gogooku3"
# MLflow's limits (mlflow.utils.validation): 6000 characters a param value, 100 params and 1000 metrics a call
MAX_VALUE = 6000
BATCH_PARAMS = 100
BATCH_METRICS = 1000
# pooled figures per predictor and horizon: MLflow name -> `metrics.evaluate` key
POOLED = {
    "rank_ic": "rank_ic_mean",
    "rank_ic_tstat": "rank_ic_tstat",
    "rank_ic_p_value": "rank_ic_p_value",
    "rank_icir": "rank_icir",
    "ic": "ic_mean",
    "icir": "icir",
    "hit_rate": "hit_rate",
    "top_bottom_spread": "top_bottom_spread",
}
PAIRED = {"rank_ic_diff": "mean_diff", "t_stat": "t_stat", "p_value": "p_value", "win_share": "win_share"}


def _mlflow(cfg: Settings):
    if not cfg.train.mlflow:
        return None
    try:
        import mlflow
    except ImportError:
        log.warning('train.mlflow=true but mlflow is not installed (pip install -e ".[tracking]"); not tracking')
        return None
    runs = path(cfg, "paths.runs_dir").resolve()
    runs.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.paths.mlflow_uri or f"sqlite:///{runs / 'mlflow.db'}")
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=(runs / "mlartifacts").as_uri())
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    return {prefix[:-1]: d}


def _number(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
        return float(v)
    return None


def _key(name: str) -> str:
    """MLflow metric names allow alphanumerics, _ - . / and spaces."""
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in name)


def params(cfg: Settings) -> dict[str, str]:
    """The composed config (secrets blanked by `to_dict`) flattened once: one param per leaf, lists as JSON."""
    out: dict[str, str] = {}
    for k, v in _flat(to_dict(cfg)).items():
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        out[k] = text[:MAX_VALUE]
    return out


def scores(comparison: dict[str, Any], split: str, fields: dict[str, str] = POOLED) -> dict[str, float]:
    """Every predictor's pooled figures (`<split>/<predictor>/<name>_<h>d`) and the paired tests of each predictor
    against the reference (`<split>/<a>_vs_<reference>/<name>_<h>d`), once each."""
    out: dict[str, float] = {}
    for name, by_h in (comparison.get("pooled") or {}).items():
        for h, ev in by_h.items():
            for short, src in fields.items():
                if (v := _number(ev.get(src))) is not None:
                    out[f"{split}/{name}/{short}_{h}d"] = v
    ref = comparison.get("reference")
    for pair, by_h in (comparison.get("paired") or {}).items():
        if ref is None or not pair.endswith(f"_vs_{ref}"):
            continue
        for h, p in by_h.items():
            for short, src in PAIRED.items():
                if (v := _number(p.get(src))) is not None:
                    out[f"{split}/{pair}/{short}_{h}d"] = v
    return out


def curves(run_dir: Path) -> dict[int, dict[str, float]]:
    """Per epoch, the per-epoch figures of `logs/**/metrics.csv` (`curve/<member>/<name>`), averaged over folds."""
    out: dict[int, dict[str, float]] = {}
    for csv in sorted(Path(run_dir).glob("logs/**/metrics.csv")):
        member = csv.parent.name if csv.parent.name.startswith("member") else "member0"
        df = pl.read_csv(csv, infer_schema_length=None, null_values=["", "nan", "NaN"])
        num = [c for c, t in df.schema.items() if t.is_numeric() and c not in ("epoch", "step")]
        rows = df.filter(pl.col("epoch").is_not_null()).group_by("epoch").agg(pl.col(num).mean()).sort("epoch")
        for row in rows.iter_rows(named=True):
            step = out.setdefault(int(row["epoch"]), {})
            for k, v in row.items():
                if k != "epoch" and (x := _number(v)) is not None:
                    step[_key(f"curve/{member}/{k}")] = x
    return out


def run_facts(result: dict[str, Any]) -> dict[str, float]:
    """Throughput and resources of the run (`run/...`)."""
    facts = {
        "run/samples_per_sec": result.get("samples_per_sec"),
        "run/mfu": result.get("mfu"),
        "run/peak_rss_mb": result.get("peak_rss_mb"),
        "run/peak_gpu_mb": result.get("peak_gpu_mb"),
        "run/seconds": sum((result.get("durations_s") or {}).values()) or None,
        "run/n_params": (result.get("model") or {}).get("n_params"),
    }
    return {k: x for k, v in facts.items() if (x := _number(v)) is not None}


def git_commit() -> str:
    """The commit of the checkout this package runs from (`+dirty` with uncommitted changes to tracked files);
    `unknown` outside a git checkout."""
    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(  # --no-optional-locks: never write the index of a checkout others work in
            ["git", "--no-optional-locks", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def tags(cfg: Settings, run_dir: Path, result: dict[str, Any]) -> dict[str, str]:
    from gogooku3.evaluation.backtest.market import data_source

    dataset = result.get("dataset") or {}
    return {
        "run_dir": str(Path(run_dir).resolve()),
        "git_commit": git_commit(),
        "dataset_fingerprint": str(dataset.get("fingerprint", "")),
        "dataset_path": str(dataset.get("path", "")),
        "data_source": data_source(cfg, Path(dataset["path"]) if dataset.get("path") else None),
        "product": str(result.get("product")),
        "predictors": ",".join(result.get("predictors") or []),
    }


def _log_metrics(mlflow: Any, metrics: dict[str, float], step: int = 0) -> None:
    keys = list(metrics)
    for i in range(0, len(keys), BATCH_METRICS):
        mlflow.log_metrics({k: metrics[k] for k in keys[i : i + BATCH_METRICS]}, step=step)


def log_training(cfg: Settings, run_dir: Path, result: dict[str, Any]) -> str | None:
    """Start the run's MLflow run: tags, params (the composed config, once), per-epoch curves, every predictor's
    test and validation scores and the paired tests against the reference. Returns its id."""
    mlflow = _mlflow(cfg)
    if mlflow is None:
        return None
    with mlflow.start_run(run_name=Path(run_dir).name, tags=tags(cfg, run_dir, result)) as run:
        p = params(cfg)
        keys = list(p)
        for i in range(0, len(keys), BATCH_PARAMS):
            mlflow.log_params({k: p[k] for k in keys[i : i + BATCH_PARAMS]})
        for epoch, figures in curves(Path(run_dir)).items():
            _log_metrics(mlflow, figures, step=epoch)
        _log_metrics(
            mlflow,
            scores(result.get("comparison") or {}, "test")
            | scores(result.get("comparison_val") or {}, "val", {"rank_ic": "rank_ic_mean"})
            | run_facts(result),
        )
        for name in ("metrics.json", "comparison.json", "config.yaml"):
            if (Path(run_dir) / name).exists():
                mlflow.log_artifact(str(Path(run_dir) / name))
        log.info("mlflow: run %s in %s", run.info.run_id, mlflow.get_tracking_uri())
        return run.info.run_id


def backtest_figures(report: dict[str, Any]) -> dict[str, float]:
    """Each predictor's headline backtest (`backtest/<predictor>/<figure>`) and the report checks (`checks/...`)."""
    out: dict[str, float] = {}
    for name, bt in (report.get("backtest") or {}).items():
        for k, v in ((bt or {}).get("summary") or {}).items():
            if (x := _number(v)) is not None:
                out[_key(f"backtest/{name}/{k}")] = x
    for k, v in (report.get("checks") or {}).items():
        if (x := _number(v)) is not None:
            out[_key(f"checks/{k}")] = x
    return out


def log_report(cfg: Settings, run_dir: Path, report: dict[str, Any], html: Path) -> str | None:
    """Add the report's backtest and check figures and `report.html` (the tear sheet) to the training run's MLflow
    run."""
    mlflow = _mlflow(cfg)
    if mlflow is None:
        return None
    tag = str(Path(run_dir).resolve())
    found = mlflow.search_runs(
        experiment_names=[EXPERIMENT], filter_string=f"tags.run_dir = '{tag}'", output_format="list"
    )
    kwargs = {"run_id": found[0].info.run_id} if found else {"run_name": Path(run_dir).name, "tags": {"run_dir": tag}}
    with mlflow.start_run(**kwargs) as run:
        _log_metrics(mlflow, backtest_figures(report))
        mlflow.log_artifact(str(html))
        return run.info.run_id
