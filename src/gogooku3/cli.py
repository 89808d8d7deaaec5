"""The `gogooku3` command line. Each command is thin: compose the config, call the library, report.

Trailing `key=value` words are Hydra overrides, e.g. `gogooku3 data synth data.n_stocks=100 seed=7`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from gogooku3.config import load_config
from gogooku3.errors import Gogooku3Error
from gogooku3.logs import setup_logging

log = logging.getLogger("gogooku3")
OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}


def fail(e: Gogooku3Error) -> typer.Exit:
    """Report a Gogooku3Error as one line `error: ...` on stderr (the traceback only at DEBUG); exit code 2."""
    log.debug("error", exc_info=e)
    typer.echo("error: " + " ".join(str(e).split()), err=True)
    return typer.Exit(2)


class _Group(TyperGroup):
    """The command group: any Gogooku3Error of a (sub)command ends as one line and exit code 2, also under
    Typer's CliRunner."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except Gogooku3Error as e:
            raise fail(e) from None


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True,
                  help="gogooku3: point-in-time JP equity datasets, ATFT-GAT-FAN training and honest backtests.")
data_app = typer.Typer(no_args_is_help=True, help="Raw data sources and the ML dataset builder.")
app.add_typer(data_app, name="data")
cache_app = typer.Typer(no_args_is_help=True, help="Caches under paths.cache_dir.")
app.add_typer(cache_app, name="cache")


def _cfg(ctx: typer.Context):
    cfg = load_config(ctx.args)
    setup_logging(str(cfg.get("log_level", "INFO")).upper())
    return cfg


@data_app.command("synth", context_settings=OVERRIDES)
def data_synth(ctx: typer.Context) -> None:
    """Write the synthetic TSE market (all raw tables + the oracle file)."""
    cfg = _cfg(ctx)
    from gogooku3.sources.synthetic import synthesize

    synthesize(cfg)


@data_app.command("fetch", context_settings=OVERRIDES)
def data_fetch(ctx: typer.Context) -> None:
    """Fetch raw tables from the J-Quants API V2 (needs JQUANTS_API_KEY or data.api_key)."""
    cfg = _cfg(ctx)
    from gogooku3.sources.jquants import fetch

    fetch(cfg)


@data_app.command("import", context_settings=OVERRIDES)
def data_import(ctx: typer.Context,
                path: Path = typer.Argument(..., help="CSV or parquet file in long format (Date, Code, prices).")) -> None:
    """Import a user's own price file as raw tables (column mapping in the `data=files` config)."""
    cfg = _cfg(ctx)
    from gogooku3.sources.files import import_files

    import_files(cfg, path)


@data_app.command("build", context_settings=OVERRIDES)
def data_build(ctx: typer.Context) -> None:
    """Build the ML dataset (features, targets, manifest, coverage report) from the raw tables."""
    cfg = _cfg(ctx)
    from gogooku3.features.builder import build_dataset

    build_dataset(cfg)


@app.command("safe", context_settings=OVERRIDES)
def safe(ctx: typer.Context) -> None:
    """SafeTrainingPipeline: validate, split, normalize, LightGBM baseline (stored for `train`), graph, report."""
    cfg = _cfg(ctx)
    from gogooku3.pipelines.safe import SafeTrainingPipeline

    SafeTrainingPipeline(cfg).run()


@app.command("train", context_settings=OVERRIDES)
def train(ctx: typer.Context) -> None:
    """Train ATFT-GAT-FAN (Lightning) and write runs/<timestamp>/ with predictions, metrics and a bundle."""
    cfg = _cfg(ctx)
    from gogooku3.pipelines.atft import CompleteATFTTrainingPipeline

    CompleteATFTTrainingPipeline(cfg).run()


@app.command("tune", context_settings=OVERRIDES)
def tune(ctx: typer.Context) -> None:
    """Optuna search (TPE + median pruning) over ATFT-GAT-FAN hyper-parameters; writes output/optuna/<study>_best.yaml."""
    cfg = _cfg(ctx)
    from gogooku3.pipelines.tune import tune as run_tune

    run_tune(cfg)


@app.command("backtest", context_settings=OVERRIDES)
def backtest(ctx: typer.Context,
             predictions: Path = typer.Option(..., "--predictions", help="Parquet with Date, Code, pred_{h}d, target_{h}d.")) -> None:
    """Cost-aware long/short backtest of a predictions file."""
    cfg = _cfg(ctx)
    from gogooku3.evaluation.portfolio import run_backtest

    run_backtest(cfg, predictions)


@app.command("report", context_settings=OVERRIDES)
def report(ctx: typer.Context,
           run: Path = typer.Option(Path("runs/last"), "--run", help="Training run directory.")) -> None:
    """JSON + self-contained HTML report of a training run."""
    cfg = _cfg(ctx)
    from gogooku3.evaluation.report import build_report

    build_report(cfg, run)


@app.command("predict", context_settings=OVERRIDES)
def predict(ctx: typer.Context,
            run: Path = typer.Option(Path("runs/last"), "--run", help="Training run directory with the model bundle."),
            date: Optional[str] = typer.Option(None, "--date", help="YYYY-MM-DD; default: the dataset's latest date.")) -> None:
    """Ranked next-day scores per stock with long/short lists."""
    cfg = _cfg(ctx)
    from gogooku3.pipelines.predict import predict as run_predict

    run_predict(cfg, run, date)


@cache_app.command("clean", context_settings=OVERRIDES)
def cache_clean(ctx: typer.Context,
                keep: int | None = typer.Option(None, "--keep", min=0,
                                                   help="Panels to keep, newest first (default: train.panel_cache_keep; "
                                                        "0 removes every panel).")) -> None:
    """Bound the PanelStore cache (<paths.cache_dir>/panels): remove killed conversions' leftovers and old panels."""
    cfg = _cfg(ctx)
    from gogooku3.config import path
    from gogooku3.panel import clean_cache

    root = path(cfg, "paths.cache_dir")
    removed = clean_cache(root, cfg.train.panel_cache_keep if keep is None else keep)
    log.info("cache clean: removed %d folder(s) under %s", len(removed), root / "panels")


@app.command("run", context_settings=OVERRIDES)
def run(ctx: typer.Context) -> None:
    """The full pipeline: synth (or existing raw data) -> build -> safe -> train -> backtest -> report."""
    cfg = _cfg(ctx)
    from gogooku3.pipelines.full import FullTrainingPipeline

    FullTrainingPipeline(cfg).run()


def main() -> None:
    try:
        app()
    except Gogooku3Error as e:  # raised outside a command (the group handles those)
        fail(e)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
