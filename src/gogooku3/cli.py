"""The `gogooku3` command line. Each command is thin: compose the config, call the library, report.

Trailing `key=value` words are Hydra overrides, e.g. `gogooku3 data synth data.n_stocks=100 seed=7`;
`--config-dir DIR` (before or after the command) adds a user config directory (`DIR/experiment/my_exp.yaml` ->
`experiment=my_exp`). Each command's help names the config groups it reads and shows example overrides.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from gogooku3.config.compose import load_config
from gogooku3.config.schema import Settings
from gogooku3.core.errors import ConfigError, DataError, Gogooku3Error
from gogooku3.core.logs import setup_logging

log = logging.getLogger("gogooku3")
OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}


def fail(e: Gogooku3Error) -> typer.Exit:
    """Report a Gogooku3Error as one line `error: ...` on stderr, secrets blanked (`redact_text`; the traceback
    only at DEBUG); exit code 2."""
    from gogooku3.config.compose import redact_text

    log.debug("error", exc_info=e)
    typer.echo("error: " + redact_text(" ".join(str(e).split())), err=True)
    return typer.Exit(2)


# A file system that refuses a write (read-only, permissions, full): the user's to fix, so one line, not a traceback.
_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EISDIR, errno.ENOTDIR}


def _os_error(e: OSError) -> Gogooku3Error:
    where = e.filename if e.filename is not None else "a file"
    return DataError(f"{where}: {e.strerror or type(e).__name__}; free or fix that location and retry")


class _Group(TyperGroup):
    """The command group: any Gogooku3Error of a (sub)command ends as one line and exit code 2, also under
    Typer's CliRunner."""

    def invoke(self, ctx: Any) -> Any:  # ctx: the click Context (Typer's vendored click in recent Typer versions)
        try:
            return super().invoke(ctx)
        except Gogooku3Error as e:
            raise fail(e) from None
        except OSError as e:
            if e.errno not in _WRITE_ERRNOS:
                raise
            raise fail(_os_error(e)) from None


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help="gogooku3: point-in-time JP equity datasets, ATFT-GAT-FAN training and honest backtests.\n\n"
    "Every command takes trailing Hydra overrides (group=option, a.b=value, experiment=NAME); "
    "`gogooku3 config groups` lists the groups, `gogooku3 config show ...` the composed config.",
)
data_app = typer.Typer(no_args_is_help=True, help="Raw data sources and the ML dataset builder.")
app.add_typer(data_app, name="data")
cache_app = typer.Typer(no_args_is_help=True, help="Caches under paths.cache_dir.")
app.add_typer(cache_app, name="cache")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the composed Hydra config and its groups.")
app.add_typer(config_app, name="config")


@app.callback()
def _main(
    ctx: typer.Context,
    config_dir: list[Path] = typer.Option(
        [],
        "--config-dir",
        "-C",
        help="User config directory searched before the packaged groups (repeatable): DIR/experiment/x.yaml "
        "is `experiment=x`, DIR/model/y.yaml is `model=y`.",
    ),
    show_cfg: str | None = typer.Option(None, "--cfg", "-c", hidden=True),
    multirun: bool = typer.Option(False, "--multirun", "-m", hidden=True),
) -> None:
    ctx.obj = {"config_dirs": list(config_dir), "cfg": show_cfg, "multirun": multirun}


def _split_config_dirs(args: list[str]) -> tuple[list[str], list[str]]:
    """`--config-dir DIR` / `--config-dir=DIR` / `-C DIR` given after the command, and the other arguments."""
    dirs, rest, it = [], [], iter(args)
    for a in it:
        if a in ("--config-dir", "-C"):
            d = next(it, None)
            if d is None:
                raise ConfigError(f"{a}: needs a directory")
            dirs.append(d)
        elif a.startswith("--config-dir="):
            dirs.append(a.split("=", 1)[1])
        else:
            rest.append(a)
    return dirs, rest


def config_dirs(ctx: typer.Context) -> tuple[list[str], list[str]]:
    """The user config directories (global option and after the command) and the Hydra overrides of `ctx`."""
    root = ctx.find_root().obj or {}
    late, overrides = _split_config_dirs(list(ctx.args))
    return [str(d) for d in root.get("config_dirs", [])] + late, overrides


def _cfg(ctx: typer.Context, data: str | None = None) -> Settings:
    """The typed config of the command's overrides; `data` (files | jquants): the data option the command reads,
    composed in (as `data=<option>`) unless the overrides choose one."""
    dirs, overrides = config_dirs(ctx)
    if data is not None and not any(o.lstrip("+").partition("=")[0] == "data" for o in overrides):
        overrides = [f"data={data}", *overrides]
    overrides = _hydra_flags(ctx, dirs, overrides)
    cfg = load_config(overrides, config_dirs=dirs)
    setup_logging(cfg.log_level.upper())
    return cfg


def _hydra_flags(ctx: typer.Context, dirs: list[str], overrides: list[str]) -> list[str]:
    """Hydra's own flags among the arguments: `--cfg job|all` (`-c`) prints the composed config (as `config show`)
    and ends the command; `-m/--multirun` is refused in one line. The other arguments are returned."""
    root = ctx.find_root().obj or {}
    show, multirun, rest, it = root.get("cfg"), bool(root.get("multirun")), [], iter(overrides)
    for a in it:
        if a in ("--cfg", "-c"):
            show = next(it, "")
        elif a.startswith("--cfg="):
            show = a.split("=", 1)[1]
        elif a in ("-m", "--multirun"):
            multirun = True
        else:
            rest.append(a)
    if multirun:
        raise ConfigError(
            "-m/--multirun: gogooku3 runs no Hydra sweeps; run one command per value (for lr in 1e-3 3e-3; do "
            "gogooku3 train train.lr=$lr; done) or search with `gogooku3 tune`"
        )
    if show is not None:
        if show not in ("job", "all"):
            raise ConfigError(
                f"--cfg {show}: only --cfg job (or all) is supported, printing the composed config; "
                f"or use `gogooku3 config show <overrides>`"
            )
        from gogooku3.config.compose import compose_config, to_yaml

        typer.echo(to_yaml(compose_config(rest, config_dirs=dirs)), nl=False)
        raise typer.Exit(0)
    return rest


CUDA_INDEX = "https://download.pytorch.org/whl/<cuda tag>"  # as in the README: the tag from pytorch.org's selector


def _check_accelerator(cfg: Settings) -> None:
    """trainer.accelerator=gpu/cuda needs a torch that sees a CUDA device: refused at once, in one line, else."""
    if cfg.trainer.accelerator.lower() not in ("gpu", "cuda"):
        return
    import torch

    if torch.cuda.is_available():
        return
    version = torch.__version__.split("+")[0]
    why = (
        "is a CPU-only build"
        if torch.version.cuda is None
        else f"is a CUDA {torch.version.cuda} build but sees no GPU (check nvidia-smi, CUDA_VISIBLE_DEVICES)"
    )
    raise ConfigError(
        f"trainer.accelerator={cfg.trainer.accelerator}: the installed torch {version} {why}; install the CUDA build "
        f"(`.venv/bin/pip install torch=={version} --index-url {CUDA_INDEX}`, the tag from pytorch.org, see README) "
        f"or use trainer=cpu"
    )


def _preflight(cfg: Settings, command: str, experiment_dir: Path | None = None) -> None:
    """Refuse the command at once when a folder it writes is not writable or runs/last is a real folder."""
    from gogooku3.core.preflight import preflight

    preflight(cfg, command, experiment_dir)


def _help(summary: str, groups: str, *examples: str) -> str:
    """A command's help: what it does, the config groups it reads, example invocations."""
    ex = "\n\n".join(f"  gogooku3 {e}" for e in examples)
    return f"{summary}\n\nConfig groups read: {groups}.\n\nExamples:\n\n{ex}"


@data_app.command(
    "synth",
    context_settings=OVERRIDES,
    help=_help(
        "Write the synthetic TSE market (all raw tables + the oracle file).",
        "paths, data (data=synthetic), labels, seed",
        "data synth data.n_stocks=200 data.n_days=500",
        "data synth data.signal_strength=0 seed=7",
    ),
)
def data_synth(ctx: typer.Context) -> None:
    cfg = _cfg(ctx)
    from gogooku3.sources.synthetic import synthesize

    synthesize(cfg)


@data_app.command(
    "fetch",
    context_settings=OVERRIDES,
    help=_help(
        "Fetch raw tables from the J-Quants API V2 (needs JQUANTS_API_KEY or data.api_key).",
        "paths, data (data=jquants)",
        "data fetch data=jquants data.start_date=2020-01-01",
        "data fetch data=jquants data.plan=standard",
        "data fetch data=jquants 'data.tables=[daily_quotes,listed_info]'",
    ),
)
def data_fetch(ctx: typer.Context) -> None:
    cfg = _cfg(ctx, data="jquants")
    from gogooku3.sources.jquants import fetch

    fetch(cfg)


@data_app.command(
    "import",
    context_settings=OVERRIDES,
    help=_help(
        "Import a user's own price file as raw tables (column mapping in the `data=files` config).",
        "paths, data (data=files)",
        "data import prices.csv data=files data.calendar=XNYS",
        "data import px.csv data=files data.columns.close=adj_close",
        "data import eu.csv data=files data.separator=';' data.decimal_comma=true",
    ),
)
def data_import(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="CSV or parquet file in long format (Date, Code, prices)."),
) -> None:
    cfg = _cfg(ctx, data="files")
    from gogooku3.sources.files import import_files

    import_files(cfg, path)


@data_app.command(
    "build",
    context_settings=OVERRIDES,
    help=_help(
        "Build the ML dataset (features, targets, manifest, coverage report) from the raw tables. With --incremental, "
        "append the sessions added to the raw tables since the existing dataset (paths.dataset) was built, recomputing "
        "only the rows that can change (the new sessions and the last entry_lag + max(horizons) sessions, whose labels "
        "become known); refused when the dataset was built with another features/labels config or manifest, or when "
        "raw rows up to its end changed (--fallback-full: build in full instead). More quote rows than "
        "features.chunk_rows: built in chunks of codes with bounded memory (docs/scale.md).",
        "paths, data, features, labels",
        "data build labels.horizons=[1,5]",
        "data build features.groups.statements=false labels.entry_lag=2",
        "data build --incremental",
        "data build --incremental --fallback-full features.chunk_rows=500000",
    ),
)
def data_build(
    ctx: typer.Context,
    incremental: bool = typer.Option(
        False, "--incremental", help="Append the raw tables' new sessions to the existing dataset."
    ),
    fallback_full: bool = typer.Option(
        False, "--fallback-full", help="With --incremental: build in full where an update is refused."
    ),
) -> None:
    cfg = _cfg(ctx)
    if fallback_full and not incremental:
        raise ConfigError("--fallback-full: only with --incremental")
    _preflight(cfg, "build")
    if incremental:
        from gogooku3.features.incremental import update_dataset

        update_dataset(cfg, fallback_full=fallback_full)
    else:
        from gogooku3.features.builder import build_dataset

        build_dataset(cfg)


@data_app.command(
    "export",
    context_settings=OVERRIDES,
    help=_help(
        "Write the dataset (paths.dataset: a folder of monthly parquet files) as one parquet file sorted by (Code, "
        "Date), in runs of features.chunk_rows rows, replaced atomically.",
        "paths, features",
        "data export --to ml_dataset.parquet",
    ),
)
def data_export(
    ctx: typer.Context,
    to: Path = typer.Option(..., "--to", help="The parquet file to write."),
) -> None:
    from gogooku3.features.writer import export_dataset

    cfg = _cfg(ctx)
    export_dataset(cfg.paths.dataset, to, cfg.features.chunk_rows)


@app.command(
    "safe",
    context_settings=OVERRIDES,
    help=_help(
        "SafeTrainingPipeline: validate, split, normalize, LightGBM baseline (stored for `train`), graph, report.",
        "paths, labels, split, safe, baseline",
        "safe split=purged_kfold",
        "safe split.n_splits=5 baseline.num_boost_round=400",
        "safe safe.start_date=2023-01-01 safe.graph.enabled=false",
    ),
)
def safe(ctx: typer.Context) -> None:
    cfg = _cfg(ctx)
    _preflight(cfg, "safe")
    from gogooku3.pipelines.safe import SafeTrainingPipeline

    SafeTrainingPipeline(cfg).run()


@app.command(
    "train",
    context_settings=OVERRIDES,
    help=_help(
        "Train ATFT-GAT-FAN (Lightning) and write runs/<timestamp>/ with predictions, metrics and a bundle.",
        "paths, labels, split, baseline, model, train, trainer, experiment",
        "train model=full trainer=gpu",
        "train train.max_epochs=3 train.ensemble=1 model.gat=false",
        "--config-dir my_conf train experiment=my_exp",
        "train experiment=atft_gat_fan   (the study `gogooku3 tune` wrote)",
    ),
)
def train(ctx: typer.Context) -> None:
    cfg = _cfg(ctx)
    _check_accelerator(cfg)
    _preflight(cfg, "train")
    from gogooku3.pipelines.atft import CompleteATFTTrainingPipeline

    CompleteATFTTrainingPipeline(cfg).run()


@app.command(
    "tune",
    context_settings=OVERRIDES,
    short_help="Optuna search over ATFT-GAT-FAN hyper-parameters; the best trial becomes experiment=<study>.",
    help=_help(
        "Optuna search (TPE + median pruning) over ATFT-GAT-FAN hyper-parameters. Writes the best trial as an "
        "experiment, <first --config-dir or output/optuna>/experiment/<study>.yaml, so that `gogooku3 train "
        "experiment=<study>` trains with it, plus output/optuna/<study>_best.yaml and <study>_trials.json.",
        "paths, labels, split, model, train, trainer, hpo, experiment",
        "tune hpo.n_trials=30 hpo.study_name=wide",
        "tune hpo.space.lr.high=0.02 '~hpo.space.graph_k'",
        "--config-dir my_conf tune hpo.storage=postgresql://host/db",
        "--config-dir my_conf train experiment=atft_gat_fan   (afterwards: train with the best trial)",
    ),
)
def tune(ctx: typer.Context) -> None:
    cfg = _cfg(ctx)
    _check_accelerator(cfg)
    from gogooku3.pipelines.tune import tune as run_tune

    dirs, _ = config_dirs(ctx)
    _preflight(cfg, "tune", Path(dirs[0]) if dirs else None)
    run_tune(cfg, experiment_dir=Path(dirs[0]) if dirs else None)


@app.command(
    "bench",
    context_settings=OVERRIDES,
    short_help="The model zoo on the same folds, once per seed: one table (Markdown + JSON + chart).",
    help=_help(
        "Fit every model of bench.models on the same folds once per seed of bench.seeds (one `train` run each, "
        "bench.overrides on top), backtest each (the realistic book) and write one table, mean ± sd over seeds: "
        "RankIC per horizon, ICIR, HAC t, paired t vs the reference and the product, % of the oracle, net Sharpe, "
        "params, fit time (<paths.bench_dir>/<timestamp>/bench.{md,json,png}, <paths.bench_dir>/last; `report` "
        "shows it for runs on the same dataset). Needs a built dataset (data build; safe stores the LightGBM run).",
        "paths, labels, split, baseline, predictors, model, train, trainer, portfolio, bench",
        "bench",
        "bench bench=quick",
        "bench 'bench.models=[atft,lightgbm,ridge,mlp,gru,blend,oracle]' 'bench.seeds=[1,2,3,4,5]'",
        "bench bench.folds=1 +bench.overrides.train.max_epochs=2",
    ),
)
def bench(ctx: typer.Context) -> None:
    cfg = _cfg(ctx)
    _check_accelerator(cfg)
    _preflight(cfg, "bench")
    from gogooku3.pipelines.bench import run_bench

    dirs, overrides = config_dirs(ctx)
    run_bench(cfg, overrides, dirs)


@app.command(
    "backtest",
    context_settings=OVERRIDES,
    help=_help(
        "Cost-aware long/short backtest of a predictions file: the ideal and the realistic book side by side.",
        "paths, labels, portfolio",
        "backtest --predictions runs/last/predictions/blend/test.parquet portfolio.cost_bps=10",
        "backtest --predictions P portfolio.realism=realistic portfolio.cost_model=spread_impact",
        "backtest --predictions P portfolio.horizon=5 portfolio.long_fraction=0.1 portfolio.short_fraction=0.1",
    ),
)
def backtest(
    ctx: typer.Context,
    predictions: Path = typer.Option(..., "--predictions", help="Parquet with Date, Code, pred_{h}d, target_{h}d."),
) -> None:
    cfg = _cfg(ctx)
    from gogooku3.evaluation.backtest.run import run_backtest

    run_backtest(cfg, predictions)


@app.command(
    "report",
    context_settings=OVERRIDES,
    help=_help(
        "JSON + a one-page, self-contained HTML tear sheet of a training run (RUN/report.json, RUN/report.html).",
        "paths, labels, portfolio, report",
        "report --run runs/last report.rolling_sharpe_days=120",
        "report --run runs/20250101_000000 portfolio.cost_bps=10",
        "report --run runs/last report.dpi=120 portfolio.realism=realistic",
    ),
)
def report(
    ctx: typer.Context, run: Path = typer.Option(Path("runs/last"), "--run", help="Training run directory.")
) -> None:
    cfg = _cfg(ctx)
    from gogooku3.evaluation.export import run_config
    from gogooku3.evaluation.report import build_report

    build_report(run_config(run, cfg, config_dirs(ctx)[1]), run)


@app.command(
    "predict",
    context_settings=OVERRIDES,
    short_help="Ranked next-day scores, long/short lists, quantile forecasts and per-stock explanations.",
    help=_help(
        "Ranked next-day scores per stock with long/short lists, quantile forecasts (predict.quantiles) and the "
        "top variable-selection weights per stock (predict.explain_top): output/predictions/pred_<date>.* and "
        "explain_<date>.*.",
        "paths, portfolio, predict",
        "predict --run runs/last --date 2025-12-30",
        "predict predict.horizon=5 portfolio.long_fraction=0.1",
        "predict predict.quantiles=[0.1,0.5,0.9] predict.explain_top=10",
    ),
)
def predict(
    ctx: typer.Context,
    run: Path = typer.Option(Path("runs/last"), "--run", help="Training run directory with the model bundle."),
    date: str | None = typer.Option(None, "--date", help="YYYY-MM-DD; default: the dataset's latest date."),
) -> None:
    cfg = _cfg(ctx)
    _preflight(cfg, "predict")
    from gogooku3.pipelines.predict import predict as run_predict

    run_predict(cfg, run, date)


@cache_app.command(
    "clean",
    context_settings=OVERRIDES,
    help=_help(
        "Bound the PanelStore cache (<paths.cache_dir>/panels): remove killed conversions' leftovers, truncated or "
        "corrupted panels (checksums read) and old panels; only folders gogooku3 made (its .gogooku3 marker).",
        "paths, train",
        "cache clean --keep 2",
        "cache clean train.panel_cache_keep=1 paths.cache_dir=/scratch/cache",
    ),
)
def cache_clean(
    ctx: typer.Context,
    keep: int | None = typer.Option(
        None,
        "--keep",
        min=0,
        help="Panels to keep, newest first (default: train.panel_cache_keep; 0 removes every panel).",
    ),
) -> None:
    cfg = _cfg(ctx)
    from gogooku3.config.compose import path
    from gogooku3.data.panel import clean_cache

    root = path(cfg, "paths.cache_dir")
    removed = clean_cache(root, cfg.train.panel_cache_keep if keep is None else keep, verify=True)
    log.info("cache clean: removed %d folder(s) under %s", len(removed), root / "panels")


@app.command(
    "run",
    context_settings=OVERRIDES,
    help=_help(
        "The full pipeline: synth (or existing raw data) -> build -> safe -> train -> backtest -> report -> predict.",
        "all of them (run.steps picks the steps)",
        "run data.n_stocks=200 model=full train.max_epochs=3",
        "run 'run.steps=[train,backtest,report]' experiment=example",
        "run data=jquants trainer=gpu",
    ),
)
def run(ctx: typer.Context) -> None:
    cfg = _cfg(ctx)
    if "train" in cfg.run.steps:
        _check_accelerator(cfg)
    _preflight(cfg, "run")
    from gogooku3.pipelines.full import FullTrainingPipeline

    FullTrainingPipeline(cfg).run()


@config_app.command(
    "show",
    context_settings=OVERRIDES,
    help=_help(
        "Print the composed config as YAML (what Hydra's --cfg job shows), secrets blanked; "
        "checked like any command's.",
        "all of them",
        "config show model=full",
        "config show experiment=example train.lr=0.001",
        "--config-dir my_conf config show experiment=my_exp",
    ),
)
def config_show(ctx: typer.Context) -> None:
    dirs, overrides = config_dirs(ctx)
    from gogooku3.config.compose import compose_config, to_yaml

    typer.echo(to_yaml(compose_config(overrides, config_dirs=dirs)), nl=False)


@config_app.command(
    "groups",
    context_settings=OVERRIDES,
    help=_help(
        "List the config groups and their options (packaged, user --config-dir, tuned experiments); "
        "* marks the default.",
        "none",
        "config groups",
        "--config-dir my_conf config groups",
    ),
)
def config_groups(ctx: typer.Context) -> None:
    dirs, _ = config_dirs(ctx)
    from gogooku3.config.compose import default_groups, groups, search_dirs

    found = search_dirs(config_dirs=dirs)
    defaults = default_groups()
    for g, options in groups(found).items():
        marked = [f"{o}*" if defaults.get(g) == o else o for o in options]
        typer.echo(
            f"{g:<10} {' '.join(marked)}" + ("   (none by default)" if g in defaults and defaults[g] is None else "")
        )
    if found:
        typer.echo("searched: " + ", ".join(str(d) for d in found))


@app.command(
    "export",
    context_settings=OVERRIDES,
    short_help="A run's predictions as the frames alphalens or quantstats take.",
    help=_help(
        "Write a run's test predictions in the frames alphalens or quantstats take (parquet + CSV; neither package is "
        "needed to export; the run's saved config.yaml with key=value overrides on top): alphalens: date (the entry "
        "session), asset, factor, forward returns 1D/5D/..., group, and the prices; quantstats: date (the session "
        "each return is realised on), strategy (the headline backtest's net returns), benchmark (the universe's "
        "equal-weight return), topix.",
        "paths, labels, portfolio",
        "export --to alphalens --run runs/last",
        "export --to quantstats --run runs/last portfolio.realism=realistic",
    ),
)
def export(
    ctx: typer.Context,
    to: str = typer.Option(..., "--to", help="alphalens or quantstats."),
    run: Path = typer.Option(Path("runs/last"), "--run", help="Training run directory."),
    legacy_run: str | None = typer.Argument(None, hidden=True, help="Deprecated: use --run."),
) -> None:
    if legacy_run is not None and "=" in legacy_run:  # not a run: the first override, which the argument took
        ctx.args[:0], legacy_run = [legacy_run], None
    cfg = _cfg(ctx)
    from gogooku3.evaluation.export import export_run, run_config

    if legacy_run is not None:
        logging.getLogger(__name__).warning("export RUN is deprecated: use export --run RUN")
        run = Path(legacy_run)
    export_run(run_config(run, cfg, config_dirs(ctx)[1]), run, to)


def main() -> None:
    try:
        app()
    except Gogooku3Error as e:  # raised outside a command (the group handles those)
        fail(e)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
