"""MLflow tracking (optional: `train.mlflow=true` with `mlflow` or `mlflow-skinny` installed).

One tracking store for all runs (`paths.mlflow_uri`; null = `sqlite:///<paths.runs_dir>/mlflow.db`, artifacts in
`<paths.runs_dir>/mlartifacts`), one MLflow run per
training run, tagged with its run directory: `train` logs the config as params, the per-epoch curves of
`logs/**/metrics.csv` and the test figures; `report` adds the backtest and report figures and `report.html` as
an artifact to the same MLflow run.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from gogooku3.config.compose import path, to_dict

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)
EXPERIMENT = "gogooku3"


def _mlflow(cfg: Settings):
    if not cfg.train.mlflow:
        return None
    try:
        import mlflow
    except ImportError:
        log.warning("train.mlflow=true but mlflow is not installed (pip install mlflow-skinny); not tracking")
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


def _numbers(d: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in _flat(d).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def _key(name: str) -> str:
    """MLflow metric names allow alphanumerics, _ - . / and spaces."""
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in name)


def log_training(cfg: Settings, run_dir: Path, result: dict[str, Any]) -> str | None:
    """Start the run's MLflow run: params (the composed config), per-epoch curves, the product predictor's test figures
    (`test.*`), every predictor's (`test.<name>.*`) and the paired tests. Returns its id."""
    mlflow = _mlflow(cfg)
    if mlflow is None:
        return None
    with mlflow.start_run(run_name=Path(run_dir).name, tags={"run_dir": str(Path(run_dir).resolve())}) as run:
        params = {k: str(v)[:500] for k, v in _flat(to_dict(cfg)).items()}
        keys = list(params)
        for i in range(0, len(keys), 100):  # MLflow takes at most 100 params per call
            mlflow.log_params({k: params[k] for k in keys[i : i + 100]})
        for csv in sorted(Path(run_dir).glob("logs/**/metrics.csv")):
            member = csv.parent.name if csv.parent.name.startswith("member") else ""
            df = pl.read_csv(csv, infer_schema_length=None, null_values=["", "nan", "NaN"])
            num = [c for c, t in df.schema.items() if t.is_numeric() and c not in ("epoch", "step")]
            for row in (
                df.filter(pl.col("epoch").is_not_null())
                .group_by("epoch")
                .agg(pl.col(num).mean())
                .sort("epoch")
                .iter_rows(named=True)
            ):
                mlflow.log_metrics(
                    {
                        _key(f"{member}/{k}" if member else k): float(v)
                        for k, v in row.items()
                        if k != "epoch" and v is not None and math.isfinite(v)
                    },
                    step=int(row["epoch"]),
                )
        comp = result.get("comparison") or {}
        figures = {f"test.{k}": v for k, v in _numbers(result.get("test") or {}).items()}  # the product predictor
        for name, ev in (comp.get("pooled") or {}).items():  # every predictor, on the same rows
            figures |= {f"test.{name}.{k}": v for k, v in _numbers(ev).items()}
        for pair, by_h in (comp.get("paired") or {}).items():
            figures |= {
                f"paired.{pair}.{h}.{k}": v
                for h, p in by_h.items()
                for k, v in p.items()
                if k in ("mean_diff", "t_stat", "p_value")
            }
        mlflow.set_tag("product", str(result.get("product")))
        mlflow.log_metrics({_key(k): v for k, v in figures.items()})
        mlflow.log_artifact(str(Path(run_dir) / "metrics.json"))
        log.info("mlflow: run %s in %s", run.info.run_id, mlflow.get_tracking_uri())
        return run.info.run_id


def log_report(cfg: Settings, run_dir: Path, report: dict[str, Any], html: Path) -> str | None:
    """Add the report's backtest and check figures and `report.html` to the training run's MLflow run."""
    mlflow = _mlflow(cfg)
    if mlflow is None:
        return None
    tag = str(Path(run_dir).resolve())
    found = mlflow.search_runs(
        experiment_names=[EXPERIMENT], filter_string=f"tags.run_dir = '{tag}'", output_format="list"
    )
    kwargs = {"run_id": found[0].info.run_id} if found else {"run_name": Path(run_dir).name, "tags": {"run_dir": tag}}
    with mlflow.start_run(**kwargs) as run:
        figures = {
            f"backtest.{k}": v for k, v in _numbers(report.get("backtest") or {}).items() if ".per_year." not in k
        }
        figures |= {f"checks.{k}": v for k, v in _numbers(report.get("checks") or {}).items()}
        mlflow.log_metrics({_key(k): v for k, v in figures.items()})
        mlflow.log_artifact(str(html))
        return run.info.run_id
