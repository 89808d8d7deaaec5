"""The typed config: one dataclass per config group, built and checked by `typed`.

`Settings.from_cfg(cfg)` converts a composed config into dataclasses and rejects unknown keys (with a did-you-mean),
values of the wrong type and missing required keys, each with one line naming the dotted key. `load_config` runs it
once and returns the `Settings`, the object every command and library function receives, so a bad key fails at
load time and the code reads typed attributes (no casts).

Why this module rather than OmegaConf structured configs or pydantic: the `data` and `split` groups are tagged
unions (chosen by `source` / `method`), values are checked against Literals and ranges, and an unknown key gets a
did-you-mean naming the dotted key; structured configs support none of the three (no Union of dataclasses), and
pydantic would add a dependency for what this one module does.

The dataclasses carry types and ranges only: no field has a default, so every key is required and the packaged
YAML (conf/<group>/*.yaml) is the one source of values (tests/unit/test_settings.py checks that every YAML leaf is
a field and every field is set by its group's YAML). Optional keys are Optional types set to null in the YAML. A
group with options whose keys differ (`data`, `split`) has one dataclass per option, chosen by its `source` /
`method` key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union

from gogooku3.core.errors import ConfigError

MISSING = "???"  # OmegaConf's mandatory-value marker


# ---- paths --------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class PathsSettings:
    raw_dir: str
    oracle_dir: str
    cache_dir: str
    output_dir: str
    runs_dir: str
    bench_dir: str
    dataset: str
    keep_datasets: int
    mlflow_uri: str | None


# ---- data (one dataclass per option, chosen by `source`) ------------------------------------------------------
@dataclass(kw_only=True)
class SyntheticDataSettings:
    source: Literal["synthetic"]
    n_stocks: int
    n_days: int
    end_date: str
    signal_strength: float
    burn_in: int
    market_vol: float
    market_drift: float
    sector_vol: float
    style_vol: float
    beta_sd: float
    idio_vol: float
    garch_alpha: float
    garch_beta: float
    t_df: float
    reversal_coef: float
    reversal_decay: float
    momentum_coef: float
    momentum_window: int
    momentum_skip: int
    calm_vol: float
    leadlag_coef: float
    leadlag_decay: float
    volume_coef: float
    volume_decay: float
    earnings_coef: float
    earnings_decay: float
    earnings_jump: float
    split_share: float
    ipo_share: float
    delist_share: float
    suspensions_per_stock: float


@dataclass(kw_only=True)
class JQuantsDataSettings:
    source: Literal["jquants"]
    api_key: str | None
    base_url: str
    plan: str
    requests_per_minute: int | None
    tables: list[str] | None
    start_date: str | None
    end_date: str | None
    statements_days: str
    refresh_days: int
    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float
    retry_after_max_s: float
    timeout_s: float
    progress: bool


@dataclass(kw_only=True)
class FileColumnsSettings:
    date: str | None
    code: str | None
    close: str | None
    adj_close: str | None
    open: str | None
    high: str | None
    low: str | None
    volume: str | None
    turnover: str | None
    adj_factor: str | None
    adj_open: str | None
    adj_high: str | None
    adj_low: str | None
    adj_volume: str | None
    sector: str | None
    sector17: str | None
    market: str | None
    name: str | None


@dataclass(kw_only=True)
class FilesDataSettings:
    source: Literal["files"]
    format: str
    separator: str
    null_values: list[str]
    date_format: str | None
    calendar: str
    extra_columns: str | list[str]
    adjust_splits: str
    decimal_comma: bool
    allow_columns: list[str]
    ohlc_tolerance: float
    bad_ticks: str
    tick_jump: float
    columns: FileColumnsSettings
    path: str | None  # the file `gogooku3 run data=files` imports (pipelines/full.py)


DataSettings = SyntheticDataSettings | JQuantsDataSettings | FilesDataSettings


# ---- features -----------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class FeatureGroupsSettings:
    ohlcv: bool
    returns: bool
    volatility: bool
    moving_averages: bool
    price_position: bool
    volume: bool
    technicals: bool
    market: bool
    cross: bool
    flows: bool
    statements: bool
    margin: bool
    sector: bool
    quality: bool
    flags: bool
    user: bool


@dataclass(kw_only=True)
class FeatureWindowsSettings:
    returns: list[int]
    log_returns: list[int]
    volatility: list[int]
    parkinson: int
    sma: list[int]
    ema: list[int]
    volume_ma: list[int]


@dataclass(kw_only=True)
class TechnicalsSettings:
    rsi: list[int]
    macd: list[int]
    atr: int
    adx: int
    stoch: int
    bb_window: int
    bb_k: float


@dataclass(kw_only=True)
class MarketFeaturesSettings:
    z_window: int
    big_move_window: int
    proxy: str


@dataclass(kw_only=True)
class CrossFeaturesSettings:
    beta_window: int
    beta_fallback_window: int
    beta_lag: int
    stability_window: int


@dataclass(kw_only=True)
class FlowFeaturesSettings:
    z_window: int
    mom_window: int
    shock_z: float
    stale_days: int
    fallback_section: str


@dataclass(kw_only=True)
class StatementFeaturesSettings:
    close_time: str
    close_time_changes: dict[str, str]
    half_day_close_time: str
    stale_days: int
    ratio_clip: float | None


@dataclass(kw_only=True)
class MarginFeaturesSettings:
    z_window: int
    adv_window: int
    pub_lag_sessions: int
    stale_days: int


@dataclass(kw_only=True)
class SectorFeaturesSettings:
    min_count: int


@dataclass(kw_only=True)
class QualityFeaturesSettings:
    risk_adjusted: bool
    sharpe_horizons: list[int]
    smart_money: bool
    outlier_flags: bool
    sigma_threshold: float
    use_cross_sectional_quantiles: bool
    high_quantile: float
    low_quantile: float
    excess_returns: bool
    vol_window: int


@dataclass(kw_only=True)
class FlagFeaturesSettings:
    maturity: dict[str, int]
    halt_days: list[str]


@dataclass(kw_only=True)
class UserFeaturesSettings:
    max_abs_rankic: float
    max_share_of_days: float
    min_stocks: int
    max_days: int
    allow: list[str]


@dataclass(kw_only=True)
class FeaturesSettings:
    groups: FeatureGroupsSettings
    windows: FeatureWindowsSettings
    technicals: TechnicalsSettings
    market: MarketFeaturesSettings
    cross: CrossFeaturesSettings
    flows: FlowFeaturesSettings
    statements: StatementFeaturesSettings
    margin: MarginFeaturesSettings
    sector: SectorFeaturesSettings
    quality: QualityFeaturesSettings
    flags: FlagFeaturesSettings
    user: UserFeaturesSettings
    sections: dict[str, str]
    calendar_exchange: str
    chunk_rows: int


# ---- labels, split ------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class LabelsSettings:
    horizons: list[int]
    entry_lag: int


@dataclass(kw_only=True)
class WalkForwardSplitSettings:
    method: Literal["walk_forward"]
    mode: str
    n_splits: int
    min_train_days: int
    test_days: int | None
    train_days: int | None
    embargo_days: int | None
    val_days: int
    holdout_days: int


@dataclass(kw_only=True)
class PurgedKFoldSplitSettings:
    method: Literal["purged_kfold"]
    n_splits: int
    min_train_days: int
    embargo_days: int | None
    val_days: int
    holdout_days: int


SplitSettings = WalkForwardSplitSettings | PurgedKFoldSplitSettings

_OPTIONS: dict[str, dict[str, type]] = {  # first entry: the default option
    "data": {"synthetic": SyntheticDataSettings, "jquants": JQuantsDataSettings, "files": FilesDataSettings},
    "split": {"walk_forward": WalkForwardSplitSettings, "purged_kfold": PurgedKFoldSplitSettings},
}


# ---- shared nodes -------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class NormalizerSettings:
    """`train.normalizer` and `baseline.normalize` (CrossSectionalNormalizer)."""

    method: str
    clip: float
    day_level: str
    day_level_window: int


@dataclass(kw_only=True)
class GraphSettings:
    """`model.graph`: FinancialGraphBuilder settings."""

    window: int
    method: str
    halflife: float
    shrinkage: float
    threshold: float
    k: int
    min_obs: int


# ---- safe, baseline -----------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class SafeValidationSettings:
    min_features: int
    max_null_share: float
    null_action: str
    max_abs_target: float
    max_listed: int


@dataclass(kw_only=True)
class SafeGraphSettings(GraphSettings):
    """`safe.graph`: the graph statistics of the report (GraphSettings plus the switch and node count)."""

    enabled: bool
    n_nodes: int


@dataclass(kw_only=True)
class SafeSettings:
    dataset: str | None
    start_date: str | None
    end_date: str | None
    experiment_name: str
    baseline_folds: str
    validation: SafeValidationSettings
    graph: SafeGraphSettings


@dataclass(kw_only=True)
class BaselineSettings:
    enabled: bool
    horizons: list[int] | None
    workers: int | Literal["auto"]
    num_boost_round: int
    early_stopping_rounds: int
    target_transform: str
    top_features: int
    max_fit_rows: int | None
    normalize: NormalizerSettings
    params: dict[str, Any]  # passed to LightGBM as is


# ---- model, train, trainer ----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ModelSettings:
    """The model group: its name and reference size plus the ATFTConfig fields set by config (the rest,
    n_features and horizons, come from the data)."""

    name: str
    expected_params: int
    window: int
    hidden: int
    n_heads: int
    lstm_layers: int
    dropout: float
    vsn_init_gain: float
    market_context: str
    norm: str
    fan_topk: int
    gat: bool
    gat_heads: tuple[int, int]
    gat_dropout: float
    quantiles: tuple[float, ...]
    head_hidden: int
    n_sectors: int
    n_segments: int
    graph: GraphSettings


@dataclass(kw_only=True)
class LossSettings:
    huber_delta: float
    lambda_q: float
    lambda_ic: float
    horizon_weights: dict[int, float] | list[float] | None
    target_transform: str
    min_stocks: int


@dataclass(kw_only=True)
class PredictorsSettings:
    """The predictors group: which predictors train fits and compares, the product and the reference. Each `zoo`
    entry is `_target_` (the Predictor class) plus that class's constructor keys, checked by the class."""

    product: str
    reference: str
    fit: list[str]
    zoo: dict[str, dict[str, Any]]


@dataclass(kw_only=True)
class NeutralSettings:
    """The neutral group: the exposures predictions and labels are residualised against per day
    (`gogooku3.evaluation.neutral`) and whether the models train on residualised labels."""

    sector: str | None
    log: list[str]
    linear: list[str]
    min_sector_size: int
    min_stocks: int
    targets: bool


@dataclass(kw_only=True)
class StackSettings:
    enabled: bool
    blocks: int
    min_fit_days: int


@dataclass(kw_only=True)
class CVSettings:
    folds: int | Literal["all"] | None


@dataclass(kw_only=True)
class RawInputsSettings:
    """`train.raw_inputs`: the raw price/volume channels of `load_panel(inputs="raw")` (`data.raw_inputs`)."""

    channels: list[str]
    volume_window: int


@dataclass(kw_only=True)
class TrainSettings:
    max_epochs: int
    min_epochs: int
    lr: float
    weight_decay: float
    warmup_steps: int
    min_lr_ratio: float
    grad_clip: float
    accumulate_grad_batches: int
    patience: int
    save_top_k: int
    average_top_k: int
    limit_train_batches: int | float | None
    limit_val_batches: int | float | None
    max_stocks_per_day: int
    min_stocks_per_day: int
    min_window_frac: float
    seed: int  # ${seed} in the YAML
    ensemble: int
    compile: bool
    ema_decay: float | None
    swa: bool
    collapse_ratio: float
    collapse_stop: bool
    resume: bool | str
    force_convert: bool
    panel_cache_keep: int | None
    mlflow: bool
    gpu_resident_max_frac: float
    normalizer: NormalizerSettings
    returns_col: str
    raw_inputs: RawInputsSettings
    loss: LossSettings
    stack: StackSettings
    cv: CVSettings


@dataclass(kw_only=True)
class TrainerSettings:
    """Lightning trainer (trainer=cpu|gpu|ddp)."""

    accelerator: str
    devices: int | str | list[int]
    strategy: str
    num_nodes: int
    precision: str | int
    peak_tflops: float | None
    progress_bar: bool
    num_threads: int | None  # null: torch's default
    member_workers: int | Literal["auto"]  # processes training ensemble members side by side


# ---- portfolio, report, predict -----------------------------------------------------------------------------
@dataclass(kw_only=True)
class PortfolioSettings:
    method: str
    horizon: int
    long_fraction: float
    short_fraction: float
    weighting: str
    cost_bps: float
    min_names: int
    min_price: float
    min_adv: float
    quantiles: int
    periods_per_year: float | Literal["auto"]  # auto: the data calendar's sessions a year
    vol_column: str
    max_weight: float
    realism: Literal["auto", "ideal", "realistic"]
    cost_model: Literal["flat", "spread_impact"]
    borrow_only: bool
    price_limits: bool
    capital: float
    lot_size: int
    commission_bps: float
    half_spread_bps: float
    impact_coef: float
    spread_window: int
    participation_cap: float
    borrow_fee_annual: float
    capacity_capitals: list[float]


@dataclass(kw_only=True)
class ReportSettings:
    rolling_window: int
    top_features: int
    dpi: int
    target_sharpe: float
    target_params: int
    param_tolerance: float
    rolling_sharpe_days: int
    sector_column: str
    benchmark: Literal["auto", "topix", "equal_weight"]


@dataclass(kw_only=True)
class PredictSettings:
    horizon: int
    log_top: int
    output_subdir: str
    quantiles: list[float]
    explain_top: int


# ---- hpo ----------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class PrunerSettings:
    enabled: bool
    n_startup_trials: int
    n_warmup_steps: int


@dataclass(kw_only=True)
class HpoParamSettings:
    """One entry of `hpo.space` (checked against the config by pipelines.tune.check_space)."""

    param: str
    type: str
    low: int | float | None
    high: int | float | None
    log: bool
    step: int | float | None
    choices: list[Any] | None


@dataclass(kw_only=True)
class HpoSettings:
    study_name: str
    storage: str | None
    n_trials: int
    max_total_trials: int | None
    timeout_s: float | None
    seed: int  # ${seed} in the YAML
    n_startup_trials: int
    folds: int
    max_epochs: int
    patience: int
    limit_train_batches: int | float | None
    keep_trial_dirs: bool
    pruner: PrunerSettings
    space: dict[str, HpoParamSettings | None]  # `+hpo.space.x={param: ..., type: ..., ...}` adds one (every key)


# ---- bench --------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class BenchSettings:
    """`gogooku3 bench` (bench=default|quick): the models every seed's run fits, the seeds, folds and overrides."""

    models: list[str]
    seeds: list[int]
    folds: int | Literal["all"] | None  # train.cv.folds of every run
    overrides: dict[str, Any]  # nested like the config; applied to every run as key=value overrides


# ---- top level ----------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class RunSettings:
    steps: list[str]


@dataclass(kw_only=True)
class Settings:
    """The whole config, one attribute per group (`Settings.from_cfg(load_config())` is the packaged default)."""

    paths: PathsSettings
    data: DataSettings
    features: FeaturesSettings
    labels: LabelsSettings
    split: SplitSettings
    safe: SafeSettings
    baseline: BaselineSettings
    predictors: PredictorsSettings
    neutral: NeutralSettings
    model: ModelSettings
    train: TrainSettings
    trainer: TrainerSettings
    portfolio: PortfolioSettings
    report: ReportSettings
    predict: PredictSettings
    hpo: HpoSettings
    bench: BenchSettings
    seed: int
    log_level: str
    run: RunSettings

    @classmethod
    def from_cfg(cls, cfg: Any) -> Settings:
        """Typed, checked copy of a composed config (interpolations resolved); raises ConfigError."""
        return typed(cfg, cls, "")


# ---- value ranges -------------------------------------------------------------------------------------------
# Checked by `typed` after the types, so every command refuses a bad value at load time with one line naming the
# key, what is allowed and the value given ("train.lr: must be > 0, got -1"). null (where allowed) is not checked.
Check = tuple[Callable[[Any], bool], str]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
NORMALIZER_METHODS = ("robust_z", "rank_gauss")  # gogooku3.data.normalize.METHODS
DAY_LEVEL = ("time_z", "zero")  # gogooku3.data.normalize.DAY_LEVEL
LOSS_TARGET_TRANSFORMS = ("zscore", "rank_gauss")  # gogooku3.model.losses.TARGET_TRANSFORMS
RUN_STEPS = ("data", "build", "safe", "train", "backtest", "report", "predict")  # pipelines.full.STEPS
RAW_CHANNELS = ("close", "open", "high", "low", "vwap", "volume")  # gogooku3.data.raw_inputs.CHANNELS


def _ge(lo: float) -> Check:
    return (lambda v: v >= lo), f">= {lo}"


def _gt(lo: float) -> Check:
    return (lambda v: v > lo), f"> {lo}"


def _within(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Check:
    def ok(v: Any) -> bool:
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return ok, f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _one_of(*options: str, fold_case: bool = False) -> Check:
    return (lambda v: (str(v).upper() if fold_case else v) in options), f"one of {'|'.join(options)}"


def _each(check: Check, non_empty: bool = False) -> Check:
    ok, text = check
    return (
        (lambda v: (len(v) > 0 or not non_empty) and all(ok(x) for x in v)),
        f"a {'non-empty ' if non_empty else ''}list of values {text}",
    )


_BATCHES: Check = (
    (lambda v: v >= 1 if isinstance(v, int) else 0 < v <= 1),
    "an int >= 1 (batches) or a float in (0, 1] (a share of them)",
)
_SHARE = _within(0, 1)
_DROPOUT = _within(0, 1, hi_open=True)

RANGES: dict[type, dict[str, Check]] = {
    NeutralSettings: {"min_sector_size": _ge(1), "min_stocks": _ge(2)},
    SyntheticDataSettings: {
        "n_stocks": _within(5, 8000),
        "n_days": _ge(30),
        "signal_strength": _ge(0),
        "beta_sd": _ge(0),
        "burn_in": _ge(0),
        "t_df": _gt(2),
        "split_share": _SHARE,
        "ipo_share": _SHARE,
        "delist_share": _SHARE,
        "suspensions_per_stock": _ge(0),
        "momentum_window": _ge(1),
        "momentum_skip": _ge(0),
    },
    JQuantsDataSettings: {
        "requests_per_minute": _ge(1),
        "refresh_days": _ge(0),
        "max_attempts": _ge(1),
        "backoff_base_s": _ge(0),
        "backoff_max_s": _ge(0),
        "retry_after_max_s": _ge(0),
        "timeout_s": _gt(0),
    },
    FilesDataSettings: {
        "separator": ((lambda v: len(v) == 1), "a single character such as ',' ';' or '\\t'"),
        "format": _one_of("auto", "csv", "parquet"),
        "ohlc_tolerance": _within(0, 1),
        "bad_ticks": _one_of("refuse", "warn", "off"),
        "tick_jump": _gt(1),
    },
    PathsSettings: {"keep_datasets": _ge(1)},
    FeaturesSettings: {"chunk_rows": _ge(0)},
    UserFeaturesSettings: {
        "max_abs_rankic": _within(0, 1),
        "max_share_of_days": _SHARE,
        "min_stocks": _ge(3),
        "max_days": _ge(20),
    },
    LabelsSettings: {"horizons": _each(_ge(1), non_empty=True), "entry_lag": _ge(0)},
    WalkForwardSplitSettings: {
        "mode": _one_of("expanding", "sliding"),
        "n_splits": _ge(1),
        "min_train_days": _ge(1),
        "test_days": _ge(1),
        "train_days": _ge(1),
        "embargo_days": _ge(0),
        "val_days": _ge(1),
        "holdout_days": _ge(0),
    },
    PurgedKFoldSplitSettings: {
        "n_splits": _ge(2),
        "min_train_days": _ge(1),
        "embargo_days": _ge(0),
        "val_days": _ge(1),
        "holdout_days": _ge(0),
    },
    NormalizerSettings: {
        "method": _one_of(*NORMALIZER_METHODS),
        "clip": _gt(0),
        "day_level": _one_of(*DAY_LEVEL),
        "day_level_window": _ge(20),
    },
    GraphSettings: {
        "window": _ge(2),
        "method": _one_of("ewm", "pearson"),
        "halflife": _gt(0),
        "shrinkage": _within(0, 1, hi_open=True),
        "threshold": _SHARE,
        "k": _ge(1),
        "min_obs": _ge(2),
    },
    SafeSettings: {"baseline_folds": _one_of("train", "all")},
    SafeValidationSettings: {
        "min_features": _ge(0),
        "max_null_share": _SHARE,
        "null_action": _one_of("drop", "error"),
        "max_abs_target": _gt(0),
        "max_listed": _ge(0),
    },
    BaselineSettings: {
        "horizons": _each(_ge(1), non_empty=True),
        "num_boost_round": _ge(1),
        "workers": ((lambda v: v == "auto" or v >= 1), "'auto' or an int >= 1"),
        "early_stopping_rounds": _ge(1),
        "top_features": _ge(0),
        "max_fit_rows": _ge(1),
    },
    ModelSettings: {
        "window": _ge(1),
        "hidden": _ge(1),
        "n_heads": _ge(1),
        "lstm_layers": _ge(1),
        "dropout": _DROPOUT,
        "vsn_init_gain": _gt(0),
        "market_context": _one_of("none", "film"),
        "norm": _one_of("fan", "revin", "none"),
        "fan_topk": _ge(1),
        "gat_heads": _each(_ge(1)),
        "gat_dropout": _DROPOUT,
        "quantiles": _each(_within(0, 1, True, True)),
        "head_hidden": _ge(1),
        "n_sectors": _ge(1),
        "n_segments": _ge(1),
        "expected_params": _ge(0),
    },
    LossSettings: {
        "huber_delta": _gt(0),
        "lambda_q": _ge(0),
        "lambda_ic": _ge(0),
        "horizon_weights": (
            (lambda v: all(w >= 0 for w in (v.values() if isinstance(v, dict) else v))),
            "null, a list or a {horizon: weight} map of weights >= 0",
        ),
        "target_transform": _one_of(*LOSS_TARGET_TRANSFORMS),
        "min_stocks": _ge(2),
    },
    PredictorsSettings: {
        "product": _one_of("atft", "blend", "mlp", "gru", "lstm"),  # a network on the features panel can be served
        "zoo": ((lambda v: all("_target_" in e for e in v.values())), "entries with a _target_"),
    },
    StackSettings: {"blocks": _ge(2), "min_fit_days": _ge(1)},
    RawInputsSettings: {"channels": _each(_one_of(*RAW_CHANNELS), non_empty=True), "volume_window": _ge(2)},
    CVSettings: {"folds": ((lambda v: v == "all" or v >= 1), "null, 'all' or an int >= 1")},
    TrainSettings: {
        "max_epochs": _ge(1),
        "min_epochs": _ge(0),
        "lr": _gt(0),
        "weight_decay": _ge(0),
        "warmup_steps": _ge(0),
        "min_lr_ratio": _SHARE,
        "grad_clip": _ge(0),
        "accumulate_grad_batches": _ge(1),
        "patience": _ge(1),
        "save_top_k": _ge(1),
        "average_top_k": _ge(1),
        "limit_train_batches": _BATCHES,
        "limit_val_batches": _BATCHES,
        "max_stocks_per_day": _ge(2),
        "min_stocks_per_day": _ge(2),
        "min_window_frac": _within(0, 1, lo_open=True),
        "seed": _ge(0),
        "ensemble": _ge(1),
        "ema_decay": _DROPOUT,
        "collapse_ratio": _ge(0),
        "gpu_resident_max_frac": _SHARE,
        "panel_cache_keep": _ge(1),
    },
    TrainerSettings: {
        "num_nodes": _ge(1),
        "peak_tflops": _gt(0),
        "num_threads": _ge(1),
        "member_workers": ((lambda v: v == "auto" or v >= 1), "'auto' or an int >= 1"),
    },
    PortfolioSettings: {
        "method": _one_of("long_short", "mean_variance"),
        "horizon": _ge(1),
        "long_fraction": _within(0, 0.5, lo_open=True),
        "short_fraction": _within(0, 0.5, lo_open=True),
        "weighting": _one_of("equal", "score"),
        "cost_bps": _ge(0),
        "min_names": _ge(2),
        "min_price": _ge(0),
        "min_adv": _ge(0),
        "quantiles": _ge(2),
        "periods_per_year": ((lambda v: v == "auto" or v > 0), "'auto' or a number > 0"),
        "max_weight": _within(0, 1, lo_open=True),
        "capital": _gt(0),
        "lot_size": _ge(0),
        "commission_bps": _ge(0),
        "half_spread_bps": _ge(0),
        "impact_coef": _ge(0),
        "spread_window": _ge(1),
        "participation_cap": _within(0, 1, lo_open=True),
        "borrow_fee_annual": _ge(0),
        "capacity_capitals": _each(_gt(0)),
    },
    ReportSettings: {
        "rolling_window": _ge(1),
        "top_features": _ge(1),
        "dpi": _ge(1),
        "param_tolerance": _ge(0),
        "rolling_sharpe_days": _ge(2),
    },
    PredictSettings: {
        "horizon": _ge(1),
        "log_top": _ge(0),
        "quantiles": _each(_within(0, 1, True, True)),
        "explain_top": _ge(0),
        "output_subdir": ((lambda v: v.strip() != ""), "a folder name"),
    },
    PrunerSettings: {"n_startup_trials": _ge(0), "n_warmup_steps": _ge(0)},
    HpoSettings: {
        "n_trials": _ge(1),
        "max_total_trials": _ge(1),
        "timeout_s": _gt(0),
        "seed": _ge(0),
        "n_startup_trials": _ge(0),
        "folds": _ge(1),
        "max_epochs": _ge(1),
        "patience": _ge(1),
        "limit_train_batches": _BATCHES,
    },
    RunSettings: {"steps": _each(_one_of(*RUN_STEPS))},
    BenchSettings: {
        "models": ((lambda v: len(v) > 0 and len(set(v)) == len(v)), "a non-empty list of distinct predictor names"),
        "seeds": (
            (lambda v: len(v) > 0 and len(set(v)) == len(v) and min(v) >= 0),
            "a non-empty list of distinct seeds >= 0",
        ),
        "folds": ((lambda v: v == "all" or v >= 1), "null, 'all' or an int >= 1"),
    },
    Settings: {"seed": _ge(0), "log_level": _one_of(*LOG_LEVELS, fold_case=True)},
}

# (key, other key, relation, holds): `key` must stand in `relation` to `other` of the same node.
RELATIONS: dict[type, list[tuple[str, str, str, Callable[[Any, Any], bool]]]] = {
    TrainSettings: [("min_epochs", "max_epochs", "<=", lambda a, b: a <= b)],
    ModelSettings: [("n_heads", "hidden", "a divisor of", lambda a, b: b % a == 0)],
    SyntheticDataSettings: [("momentum_skip", "momentum_window", "<", lambda a, b: a < b)],
}


def check_ranges(cls: type, values: dict[str, Any], where: str, given: dict[str, Any] | None = None) -> None:
    """Raise ConfigError for the first of `values` (converted field values of the dataclass `cls`) outside its range
    (`RANGES`, `RELATIONS`); `given` holds the values as written (shown in the message)."""
    given = given or {}
    for c in cls.__mro__:
        for name, (ok, allowed) in RANGES.get(c, {}).items():
            v = values.get(name)
            if v is not None and not ok(v):
                raise ConfigError(f"{_join(where, name)}: must be {allowed}, got {given.get(name, v)!r}")
        for name, other, relation, holds in RELATIONS.get(c, []):
            a, b = values.get(name), values.get(other)
            if a is not None and b is not None and not holds(a, b):
                raise ConfigError(
                    f"{_join(where, name)}: must be {relation} {_join(where, other)} ({b!r}), "
                    f"got {given.get(name, a)!r}"
                )


# ---- conversion ---------------------------------------------------------------------------------------------
def _plain(node: Any) -> Any:
    """A DictConfig/ListConfig as plain containers with interpolations resolved; anything else as is."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - plain dicts need no omegaconf
        return node
    if dataclasses.is_dataclass(node) and not isinstance(node, type):  # a Settings node: checked again as a copy
        return dataclasses.asdict(node)
    if isinstance(node, (DictConfig, ListConfig)):
        from omegaconf.errors import OmegaConfBaseException

        try:
            return OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
        except OmegaConfBaseException as e:
            raise ConfigError(f"config: {str(e).splitlines()[0]}") from e
    return node


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def unknown_key_error(where: str, key: str, known: list[str], option: str = "") -> ConfigError:
    """ConfigError for an unknown key, suggesting the closest known one: 'train.lrr: unknown key; did you mean
    'train.lr'? (keys of train: ...)'. `option` names the group option whose keys these are (data=jquants)."""
    parent = (where or "the config") + (f" ({option})" if option else "")
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"; did you mean '{_join(where, close[0])}'?" if close else ""
    return ConfigError(f"{_join(where, key)}: unknown key{hint} (keys of {parent}: {', '.join(known)})")


def typed(node: Any, cls: Any, where: str) -> Any:
    """Convert a config node (DictConfig or plain containers) into `cls` (a dataclass or a type annotation),
    recursively. Rejects unknown keys (with the closest known key), values of the wrong type and missing required
    keys with a ConfigError naming the dotted key; `where` is the node's dotted path ('' at the top).

    ints are accepted for float fields, null only where the annotation is Optional, lists become lists or tuples
    as annotated; a Union of dataclasses is resolved by their shared Literal field (data.source, split.method)."""
    return _convert(_plain(node), cls, where)


def _fail(where: str, tp: Any, value: Any, hint: str = "") -> ConfigError:
    got = "null" if value is None else repr(value)
    return ConfigError(f"{where or 'config'}: expected {_type_name(tp)}, got {got}{hint}")


def _convert(value: Any, tp: Any, where: str) -> Any:
    if isinstance(value, str) and value == MISSING:
        raise ConfigError(f"{where}: no value set (??? in the config); give one with {where}=...")
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        return _convert_union(value, tp, args, where)
    if value is None:
        raise _fail(where, tp, None, " (this key cannot be null)")
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}: unknown value {value!r}{hint} (one of {'|'.join(map(str, args))})")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(where, tp, value)
        if origin is list:
            return [_convert(v, args[0] if args else Any, f"{where}[{i}]") for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values ({_type_name(tp)}), got {value!r}")
        return tuple(_convert(v, args[i] if args else Any, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, tp, value)
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, f"{where} key {k!r}"): _convert(v, vt, _join(where, k)) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        hint = f"; quote it: {where}='{value}'" if isinstance(value, (int, float)) else ""
        raise _fail(where, tp, value, hint)
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _fail(where, tp, value)


def _shape(tp: Any) -> str:
    """Which container a type expects: dict, list or scalar."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) or origin is dict or tp is dict:
        return "dict"
    if origin in (list, tuple) or tp in (list, tuple):
        return "list"
    return "scalar"


def _convert_union(value: Any, tp: Any, args: tuple, where: str) -> Any:
    options = [a for a in args if a is not type(None)]
    if value is None:
        if len(options) < len(args):
            return None
        raise _fail(where, tp, None, " (this key cannot be null)")
    if len(options) > 1 and isinstance(value, dict) and all(dataclasses.is_dataclass(a) for a in options):
        return _convert_tagged(value, options, where)
    shape = "dict" if isinstance(value, dict) else "list" if isinstance(value, (list, tuple)) else "scalar"
    same = [a for a in options if _shape(a) == shape]
    if len(same) == 1 and shape != "scalar":
        return _convert(value, same[0], where)  # one candidate: its own, more precise error
    for a in same:
        try:
            return _convert(value, a, where)
        except ConfigError:
            continue
    raise _fail(where, tp, value)


def _convert_tagged(value: dict, options: list, where: str) -> Any:
    """A Union of dataclasses told apart by a shared Literal field (the option's `source` or `method`)."""
    tags = [
        n
        for n, t in _hints(options[0]).items()
        if typing.get_origin(t) is Literal and all(typing.get_origin(_hints(o).get(n)) is Literal for o in options)
    ]
    if not tags:
        raise TypeError(f"{where}: a Union of dataclasses needs a shared Literal field")
    tag = tags[0]
    by_tag = {typing.get_args(_hints(o)[tag])[0]: o for o in options}
    if tag not in value:
        raise ConfigError(f"{_join(where, tag)}: required (one of {'|'.join(map(str, by_tag))})")
    cls = by_tag.get(value[tag])
    if cls is None:
        close = difflib.get_close_matches(str(value[tag]), [str(t) for t in by_tag], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"{_join(where, tag)}: unknown value {value[tag]!r}{hint} (one of {'|'.join(map(str, by_tag))})"
        )
    own = {f.name for f in dataclasses.fields(cls)}
    for k in value:
        other = [t for t, o in by_tag.items() if k not in own and k in {f.name for f in dataclasses.fields(o)}]
        if other:
            raise ConfigError(
                f"{_join(where, k)}: not a key of {where}={value[tag]} (it belongs to {where}="
                f"{other[0]}); choose an option with {where}=<name>, not {_join(where, tag)}=<name>"
            )
    return _convert_dataclass(value, cls, where, f"{where}={value[tag]}" if where in _OPTIONS else "")


def _convert_dataclass(value: Any, cls: type, where: str, option: str = "") -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of {cls.__name__} keys, got {value!r}")
    hints = _hints(cls)
    fs = [f for f in dataclasses.fields(cls) if f.init]
    known = [f.name for f in fs]
    for k in value:
        if k not in known:
            raise unknown_key_error(where, str(k), known, option)
    missing = [
        f.name
        for f in fs
        if f.name not in value and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        more = f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise ConfigError(
            f"{_join(where, missing[0])}: required key missing; give it with +{_join(where, missing[0])}=...{more}"
        )
    kwargs = {}
    # A node's own values are converted and range-checked before its sub-groups, so `seed=-3` is reported as
    # `seed`, not as the `train.seed` that interpolates it.
    leaves = [f for f in fs if _shape(hints[f.name]) != "dict"]
    for group in (leaves, [f for f in fs if f not in leaves]):
        for f in group:
            if f.name in value:
                kwargs[f.name] = _convert(value[f.name], hints[f.name], _join(where, f.name))
        if group is leaves:
            check_ranges(cls, {k: v for k, v in kwargs.items()}, where, value)
    out = cls(**kwargs)
    check_ranges(cls, {f.name: getattr(out, f.name) for f in fs}, where, value)
    return out


# ---- schema look-up (for Hydra's own override errors) --------------------------------------------------------
def check_key(key: str, options: dict[str, str] | None = None) -> ConfigError | None:
    """The unknown-key error for a dotted key that is not in the Settings schema, else None. `options` maps a
    group to its chosen option (data -> jquants) so that `data.*` keys are looked up in that option's class."""
    tp: Any = Settings
    where = ""
    parts = key.split(".")
    for i, part in enumerate(parts):
        option = ""
        if where in _OPTIONS:
            by_name = _OPTIONS[where]
            name = (options or {}).get(where) or next(iter(by_name))
            tp, option = by_name.get(name), f"{where}={name}"
        elif typing.get_origin(tp) in (Union, types.UnionType):
            dcs = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
            tp = dcs[0] if len(dcs) == 1 else None
        if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            return None  # below a dict, list or scalar: any key may be valid
        hints = _hints(tp)
        if part not in hints:
            moved = ".".join(parts[i:])
            if where and len(parts) - i > 1 and check_key(moved, options) is None:
                return ConfigError(f"{key}: unknown key; did you mean '{moved}'? ({part} is a config group)")
            return unknown_key_error(where, part, [f.name for f in dataclasses.fields(tp)], option)
        tp, where = hints[part], _join(where, part)
    return None
