"""Value ranges of the typed config: every command refuses a bad value at load with one line naming the key."""

from __future__ import annotations

import pytest

from gogooku3.config import schema as S
from gogooku3.config.compose import load_config
from gogooku3.core.errors import ConfigError


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.max_epochs=0", "train.max_epochs: must be >= 1, got 0"),
        ("train.min_epochs=9", "train.min_epochs: must be <= train.max_epochs (4), got 9"),
        (
            "train.limit_train_batches=0",
            ("train.limit_train_batches: must be an int >= 1 (batches) or a float in (0, 1] (a share of them), got 0"),
        ),
        (
            "train.limit_train_batches=1.5",
            (
                "train.limit_train_batches: must be an int >= 1 (batches) or a float in "
                "(0, 1] (a share of them), got 1.5"
            ),
        ),
        ("train.ema_decay=1", "train.ema_decay: must be in [0, 1), got 1"),
        ("train.cv.folds=0", "train.cv.folds: must be null, 'all' or an int >= 1, got 0"),
        ("train.normalizer.method=minmax", "train.normalizer.method: must be one of robust_z|rank_gauss, got 'minmax'"),
        ("baseline.normalize.clip=0", "baseline.normalize.clip: must be > 0, got 0"),
        (
            "train.loss.horizon_weights={1:4,5:-2}",
            (
                "train.loss.horizon_weights: must be null, a list or a {horizon: "
                "weight} map of weights >= 0, got {1: 4, 5: -2, 10: 1, 20: 1}"
            ),
        ),
        ("train.panel_cache_keep=0", "train.panel_cache_keep: must be >= 1, got 0"),
        ("model.quantiles=[0.1,1.0]", "model.quantiles: must be a list of values in (0, 1), got [0.1, 1.0]"),
        ("model.graph.k=0", "model.graph.k: must be >= 1, got 0"),
        ("labels.horizons=[]", "labels.horizons: must be a non-empty list of values >= 1, got []"),
        ("labels.entry_lag=-1", "labels.entry_lag: must be >= 0, got -1"),
        ("split.val_days=0", "split.val_days: must be >= 1, got 0"),
        ("portfolio.long_fraction=0.7", "portfolio.long_fraction: must be in (0, 0.5], got 0.7"),
        ("portfolio.weighting=max", "portfolio.weighting: must be one of equal|score, got 'max'"),
        ("hpo.n_trials=0", "hpo.n_trials: must be >= 1, got 0"),
        ("trainer.num_threads=0", "trainer.num_threads: must be >= 1, got 0"),
        ("seed=-3", "seed: must be >= 0, got -3"),
        (
            "run.steps=[data,fit]",
            (
                "run.steps: must be a list of values one of data|build|safe|train|backtest|"
                "report|predict, got ['data', 'fit']"
            ),
        ),
        ("train.resume=1", "train.resume: expected bool | str, got 1"),
    ],
)
def test_out_of_range_value_is_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config([override])
    assert str(e.value) == message


def test_ranges_accept_every_packaged_option_and_lower_case_log_level():
    for option in (
        [],
        ["data=jquants"],
        ["data=files"],
        ["split=purged_kfold"],
        ["model=full"],
        ["trainer=gpu"],
        ["trainer=ddp"],
        ["log_level=debug"],
        ["train.resume=runs/20260101_000000"],
        ["train.limit_train_batches=0.5"],
        ["train.cv.folds=all"],
        ["train.panel_cache_keep=null"],
    ):
        load_config(option)


def test_allowed_values_are_the_modules_own():
    from gogooku3.data import normalize
    from gogooku3.model import losses
    from gogooku3.pipelines import full
    from gogooku3.sources.synthetic import params

    assert set(S.NORMALIZER_METHODS) == set(normalize.METHODS) and set(S.DAY_LEVEL) == set(normalize.DAY_LEVEL)
    assert S.RANGES[S.NormalizerSettings]["day_level_window"][1] == f">= {normalize.DAY_LEVEL_MIN_DAYS}"
    assert set(S.LOSS_TARGET_TRANSFORMS) == set(losses.TARGET_TRANSFORMS)
    assert S.RUN_STEPS == full.STEPS
    assert S.RANGES[S.SyntheticDataSettings]["n_stocks"][1] == f"in [5, {params.MAX_STOCKS}]"
