"""`gogooku3 bench`: the model zoo fitted on the same folds once per seed, and one table of it.

For each seed of `bench.seeds`, one `train` run (`CompleteATFTTrainingPipeline`: the same plans, panel, features and
early-stopping rule for every predictor) whose config is the command's own composed again with, on top,
`bench.overrides`, `seed=<seed>`, `predictors.fit=<bench.models>` and `train.cv.folds=<bench.folds>`, on the dataset
version pinned at the start (a rebuild meanwhile changes nothing); then the ideal and realistic backtests of every
predictor of that run on the rows all of them predicted (`pipelines.full.backtest_run`). `evaluation.bench`
aggregates the runs.

    <paths.bench_dir>/<timestamp>/
        config.yaml               the command's config
        seed<s>/<run>/            seed s's training run (predictions/, comparison.json, metrics.json, portfolio/)
        bench.json, bench.md, bench.png
    <paths.bench_dir>/last -> <timestamp>      moved once every file of the bench is written

Setting `seed` at composition (not on the typed config) makes every `${seed}` follow it: `train.seed`, the networks'
init and day shuffling, and any predictor entry that interpolates it. A predictor whose fit does not read the seed
is fitted once only where the code proves it: LightGBM's runs live in a content-addressed store
(`predictors.lightgbm`: data, split, params with its own `baseline.params.seed`), so the first run fits it and the
next ones find the same fingerprint (bench.json lists it per seed); every other predictor is refitted per seed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gogooku3.config.compose import dotted_leaves, load_config, path, to_dict, to_yaml, with_values
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.core.io import check_last_link, new_run_dir, point_last, write_text
from gogooku3.evaluation import bench as B
from gogooku3.predictors import DEEP

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)

# Keys the bench sets on every run itself: bench.overrides may not set them too.
OWN_KEYS = ("seed", "predictors.fit", "train.cv.folds", "paths.runs_dir", "paths.dataset")
ORACLE_CLASS = "OraclePredictor"


def _value(v: Any) -> str:
    """A value in Hydra's override grammar: strings quoted, lists and maps recursively."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_value(x)}" for k, x in v.items()) + "}"
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_overrides(cfg: Settings, seed: int, runs_dir: Path, dataset: Path) -> list[str]:
    """The overrides a seed's run adds to the command's: `bench.overrides`, then the bench's own keys (OWN_KEYS)."""
    bc = cfg.bench
    extra = dotted_leaves(bc.overrides)
    own = [k for k in extra if k in OWN_KEYS or k.startswith("bench.")]
    if own:
        raise ConfigError(
            f"bench.overrides: {', '.join(own)} is set by the bench itself (bench.seeds, bench.models, bench.folds, "
            f"paths.bench_dir, the pinned dataset); set it there"
        )
    return [
        *[f"{k}={_value(v)}" for k, v in extra.items()],
        f"seed={seed}",
        f"predictors.fit={_value(list(bc.models))}",
        f"train.cv.folds={_value(bc.folds)}",
        f"paths.runs_dir={_value(str(runs_dir))}",
        f"paths.dataset={_value(str(dataset))}",
    ]


def check_models(cfg: Settings) -> str | None:
    """Refuse a bench whose models cannot be compared (ConfigError); returns the oracle's name among them, if any."""
    pc, models = cfg.predictors, list(cfg.bench.models)
    unknown = [m for m in models if m not in pc.zoo]
    if unknown:
        raise ConfigError(f"bench.models: {', '.join(unknown)} not in predictors.zoo ({', '.join(pc.zoo)})")
    need = {"predictors.product": pc.product, "predictors.reference": pc.reference, "the deep model": DEEP}
    missing = [f"{v} ({k})" for k, v in need.items() if v not in models]
    if missing:
        raise ConfigError(f"bench.models ({', '.join(models)}) must include {', '.join(missing)}")
    return next((m for m in models if str(pc.zoo[m].get("_target_", "")).endswith(ORACLE_CLASS)), None)


def _single_process(cfg: Settings) -> None:
    tr = cfg.trainer
    devices = tr.devices
    many = (isinstance(devices, list) and len(devices) > 1) or str(devices) == "-1"
    many |= isinstance(devices, (int, str)) and str(devices).isdigit() and int(devices) > 1
    if "ddp" in tr.strategy.lower() or tr.num_nodes > 1 or many:
        raise ConfigError(
            "gogooku3 bench runs each seed's training in one process (trainer=cpu or trainer=gpu with devices=1)"
        )


def run_bench(cfg: Settings, overrides: Sequence[str] = (), config_dirs: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Bench `cfg.bench.models` over `cfg.bench.seeds` (`cfg` = `load_config(overrides, config_dirs)`: the command's
    config, which every seed's run composes again with its own keys on top); returns the bench.json dict and the
    folder's files."""
    from gogooku3.features.published import pin

    t_all = time.perf_counter()
    _single_process(cfg)
    oracle = check_models(cfg)
    dataset = pin(path(cfg, "paths.dataset"))
    if not dataset.exists():
        raise DataError(
            f"{dataset}: no built dataset (paths.dataset); `gogooku3 bench` fits the zoo on one: run `gogooku3 data "
            f"synth` (or data fetch / data import), `gogooku3 data build` and `gogooku3 safe` first"
        )
    bench_dir = path(cfg, "paths.bench_dir")
    check_last_link(bench_dir)
    # every seed's config composed (and checked) before the first minute of training
    probe = bench_dir / "<timestamp>"
    for s in cfg.bench.seeds:
        check_models(load_config([*overrides, *run_overrides(cfg, s, probe, dataset)], config_dirs))
    root = new_run_dir(bench_dir)
    write_text(root / "config.yaml", to_yaml(cfg))
    log.info(
        "bench: %s over seeds %s, %s -> %s",
        ", ".join(cfg.bench.models),
        ", ".join(map(str, cfg.bench.seeds)),
        B.folds_text(cfg.bench.folds),
        root,
    )
    runs = [_seed_run(cfg, s, root, dataset, overrides, config_dirs) for s in cfg.bench.seeds]
    wall = round(time.perf_counter() - t_all, 1)
    bench = B.aggregate(
        runs,
        models=list(cfg.bench.models),
        oracle=oracle,
        settings={**to_dict(cfg.bench), "overrides": list(overrides), "wall_s": wall, "folder": str(root)},
    )
    files = B.write(bench, root, cfg.report.dpi)
    point_last(bench_dir, root)
    log.info("bench: %d seed runs in %.0f s -> %s", len(runs), wall, files["md"])
    headers, rows = B.table(bench)
    for r in [headers, *rows]:
        log.info("bench: %s", " | ".join(r))
    return {"bench": bench, "dir": root, "files": files}


def _seed_run(
    cfg: Settings, seed: int, root: Path, dataset: Path, overrides: Sequence[str], config_dirs: Sequence[str | Path]
) -> B.SeedRun:
    """One seed: its training run, then the backtests of every predictor of the run (written under the run)."""
    from gogooku3.pipelines.atft import CompleteATFTTrainingPipeline
    from gogooku3.pipelines.full import backtest_run

    t0 = time.perf_counter()
    scfg = load_config([*overrides, *run_overrides(cfg, seed, root / f"seed{seed}", dataset)], config_dirs)
    log.info("bench: seed %d: training %s", seed, ", ".join(scfg.predictors.fit))
    res = CompleteATFTTrainingPipeline(scfg).run()
    run_dir = Path(res["run_dir"])
    backtests = backtest_run(with_values(scfg, {"paths.output_dir": str(run_dir)}), run_dir)
    wall = time.perf_counter() - t0
    log.info("bench: seed %d done in %.0f s (%s)", seed, wall, run_dir)
    return B.SeedRun(seed, run_dir, backtests, wall)
