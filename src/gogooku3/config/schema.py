"""Typed view of the config: one dataclass per config group, built and checked by `typed`.

`Settings.from_cfg(cfg)` converts a composed config into dataclasses and rejects unknown keys (with a did-you-mean),
values of the wrong type and missing required keys, each with one line naming the dotted key. `load_config` runs it
once, so a bad key fails at load time.

Every default below equals the packaged YAML of the group's default option (tests/unit/test_settings.py checks
both the key sets and the values); the YAML stays the place where defaults are read and documented. A group with
options whose keys differ (`data`, `split`) has one dataclass per option, chosen by its `source` / `method` key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from gogooku3.core.errors import ConfigError

MISSING = "???"  # OmegaConf's mandatory-value marker


# ---- paths --------------------------------------------------------------------------------------------------
@dataclass
class PathsSettings:
    raw_dir: str = "data/raw"
    oracle_dir: str = "data/oracle"
    cache_dir: str = "data/cache"
    output_dir: str = "output"
    runs_dir: str = "runs"
    dataset: str = "output/ml_dataset_latest.parquet"
    mlflow_uri: str | None = None


# ---- data (one dataclass per option, chosen by `source`) ------------------------------------------------------
@dataclass
class SyntheticDataSettings:
    source: Literal["synthetic"] = "synthetic"
    n_stocks: int = 500
    n_days: int = 750
    end_date: str = "2025-12-30"
    signal_strength: float = 1.0
    burn_in: int = 60
    market_vol: float = 0.010
    market_drift: float = 0.0002
    sector_vol: float = 0.006
    style_vol: float = 0.003
    idio_vol: float = 0.018
    garch_alpha: float = 0.08
    garch_beta: float = 0.90
    t_df: float = 5.0
    reversal_coef: float = 0.05
    reversal_decay: float = 0.80
    momentum_coef: float = 0.004
    momentum_window: int = 120
    momentum_skip: int = 5
    calm_vol: float = 0.010
    leadlag_coef: float = 0.055
    leadlag_decay: float = 0.85
    volume_coef: float = 0.0009
    volume_decay: float = 0.85
    earnings_coef: float = 0.0018
    earnings_decay: float = 0.95
    earnings_jump: float = 1.5
    split_share: float = 0.03
    ipo_share: float = 0.05
    delist_share: float = 0.03
    suspensions_per_stock: float = 1.5


@dataclass
class JQuantsDataSettings:
    source: Literal["jquants"] = "jquants"
    api_key: str | None = None
    base_url: str = "https://api.jquants.com/v2"
    plan: str = "light"
    requests_per_minute: int | None = None
    tables: list[str] | None = None
    start_date: str | None = None
    end_date: str | None = None
    statements_days: str = "sessions"
    refresh_days: int = 3
    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 600.0
    timeout_s: float = 30.0
    progress: bool = True


@dataclass
class FileColumnsSettings:
    date: str | None = "Date"
    code: str | None = "Code"
    close: str | None = "Close"
    adj_close: str | None = None
    open: str | None = "Open"
    high: str | None = "High"
    low: str | None = "Low"
    volume: str | None = "Volume"
    turnover: str | None = None
    adj_factor: str | None = None
    adj_open: str | None = None
    adj_high: str | None = None
    adj_low: str | None = None
    adj_volume: str | None = None
    sector: str | None = None
    sector17: str | None = None
    market: str | None = None
    name: str | None = None


@dataclass
class FilesDataSettings:
    source: Literal["files"] = "files"
    format: str = "auto"
    separator: str = ","
    null_values: list[str] = field(default_factory=lambda: ["NA", "N/A", "NaN", "nan", "null", "NULL"])
    date_format: str | None = None
    calendar: str = "XTKS"
    extra_columns: str | list[str] = "all"
    adjust_splits: str = "warn"
    decimal_comma: bool = False
    columns: FileColumnsSettings = field(default_factory=FileColumnsSettings)
    # Not in conf/data/files.yaml yet: `gogooku3 run data=files` reads data.path (pipelines/full.py), so it is
    # accepted here (as `+data.path=...`) until the YAML gets `path: null`.
    path: str | None = None


DataSettings = SyntheticDataSettings | JQuantsDataSettings | FilesDataSettings


# ---- features -----------------------------------------------------------------------------------------------
@dataclass
class FeatureGroupsSettings:
    ohlcv: bool = True
    returns: bool = True
    volatility: bool = True
    moving_averages: bool = True
    price_position: bool = True
    volume: bool = True
    technicals: bool = True
    market: bool = True
    cross: bool = True
    flows: bool = True
    statements: bool = True
    margin: bool = True
    sector: bool = True
    quality: bool = True
    flags: bool = True
    user: bool = True


@dataclass
class FeatureWindowsSettings:
    returns: list[int] = field(default_factory=lambda: [1, 5, 10, 20, 60, 120])
    log_returns: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    volatility: list[int] = field(default_factory=lambda: [5, 10, 20, 60])
    parkinson: int = 20
    sma: list[int] = field(default_factory=lambda: [5, 10, 20, 60, 120])
    ema: list[int] = field(default_factory=lambda: [5, 10, 20, 60, 200])
    volume_ma: list[int] = field(default_factory=lambda: [5, 20])


@dataclass
class TechnicalsSettings:
    rsi: list[int] = field(default_factory=lambda: [2, 14])
    macd: list[int] = field(default_factory=lambda: [12, 26, 9])
    atr: int = 14
    adx: int = 14
    stoch: int = 14
    bb_window: int = 20
    bb_k: float = 2.0


@dataclass
class MarketFeaturesSettings:
    z_window: int = 252
    big_move_window: int = 60
    proxy: str = "auto"


@dataclass
class CrossFeaturesSettings:
    beta_window: int = 60
    beta_fallback_window: int = 20
    beta_lag: int = 1
    stability_window: int = 20


@dataclass
class FlowFeaturesSettings:
    z_window: int = 52
    mom_window: int = 4
    shock_z: float = 2.0
    stale_days: int = 14
    fallback_section: str = "AllMarket"


@dataclass
class StatementFeaturesSettings:
    close_time: str = "15:00"
    close_time_changes: dict[str, str] = field(default_factory=lambda: {"2024-11-05": "15:30"})
    half_day_close_time: str = "11:30"
    stale_days: int = 365
    ratio_clip: float | None = 10.0


@dataclass
class MarginFeaturesSettings:
    z_window: int = 52
    adv_window: int = 20
    pub_lag_sessions: int = 3
    stale_days: int = 21


@dataclass
class SectorFeaturesSettings:
    min_count: int = 3


@dataclass
class QualityFeaturesSettings:
    risk_adjusted: bool = True
    sharpe_horizons: list[int] = field(default_factory=lambda: [5, 10, 20])
    smart_money: bool = True
    outlier_flags: bool = True
    sigma_threshold: float = 2.0
    use_cross_sectional_quantiles: bool = True
    high_quantile: float = 0.8
    low_quantile: float = 0.2
    excess_returns: bool = True
    vol_window: int = 20


@dataclass
class FlagFeaturesSettings:
    maturity: dict[str, int] = field(default_factory=lambda: {
        "is_rsi2_valid": 5, "is_ema5_valid": 15, "is_ema10_valid": 30, "is_ema20_valid": 60, "is_ema200_valid": 200,
        "is_valid_ma": 60})
    halt_days: list[str] = field(default_factory=lambda: ["2020-10-01"])


@dataclass
class FeaturesSettings:
    groups: FeatureGroupsSettings = field(default_factory=FeatureGroupsSettings)
    windows: FeatureWindowsSettings = field(default_factory=FeatureWindowsSettings)
    technicals: TechnicalsSettings = field(default_factory=TechnicalsSettings)
    market: MarketFeaturesSettings = field(default_factory=MarketFeaturesSettings)
    cross: CrossFeaturesSettings = field(default_factory=CrossFeaturesSettings)
    flows: FlowFeaturesSettings = field(default_factory=FlowFeaturesSettings)
    statements: StatementFeaturesSettings = field(default_factory=StatementFeaturesSettings)
    margin: MarginFeaturesSettings = field(default_factory=MarginFeaturesSettings)
    sector: SectorFeaturesSettings = field(default_factory=SectorFeaturesSettings)
    quality: QualityFeaturesSettings = field(default_factory=QualityFeaturesSettings)
    flags: FlagFeaturesSettings = field(default_factory=FlagFeaturesSettings)
    sections: dict[str, str] = field(default_factory=lambda: {
        "0111": "TSEPrime", "0112": "TSEStandard", "0113": "TSEGrowth", "0101": "TSEPrime", "0102": "TSEStandard",
        "0106": "TSEStandard", "0104": "TSEGrowth", "0107": "TSEGrowth"})
    calendar_exchange: str = "XTKS"
    chunk_rows: int = 1_000_000


# ---- labels, split ------------------------------------------------------------------------------------------
@dataclass
class LabelsSettings:
    horizons: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    entry_lag: int = 1


@dataclass
class WalkForwardSplitSettings:
    method: Literal["walk_forward"] = "walk_forward"
    mode: str = "expanding"
    n_splits: int = 3
    min_train_days: int = 252
    test_days: int | None = None
    train_days: int | None = None
    embargo_days: int | None = None
    val_days: int = 40


@dataclass
class PurgedKFoldSplitSettings:
    method: Literal["purged_kfold"] = "purged_kfold"
    n_splits: int = 5
    min_train_days: int = 60
    embargo_days: int | None = None
    val_days: int = 40


SplitSettings = WalkForwardSplitSettings | PurgedKFoldSplitSettings

_OPTIONS: dict[str, dict[str, type]] = {  # first entry: the default option
    "data": {"synthetic": SyntheticDataSettings, "jquants": JQuantsDataSettings, "files": FilesDataSettings},
    "split": {"walk_forward": WalkForwardSplitSettings, "purged_kfold": PurgedKFoldSplitSettings}}


# ---- shared nodes -------------------------------------------------------------------------------------------
@dataclass
class NormalizerSettings:
    """`train.normalizer` and `baseline.normalize` (CrossSectionalNormalizer)."""

    method: str = "robust_z"
    clip: float = 5.0
    day_level: str = "zero"
    day_level_window: int = 252


@dataclass
class GraphSettings:
    """`model.graph`: FinancialGraphBuilder settings."""

    window: int = 60
    method: str = "ewm"
    halflife: float = 20.0
    shrinkage: float = 0.1
    threshold: float = 0.3
    k: int = 10
    min_obs: int = 20


# ---- safe, baseline -----------------------------------------------------------------------------------------
@dataclass
class SafeValidationSettings:
    min_features: int = 50
    max_null_share: float = 0.5
    null_action: str = "drop"
    max_abs_target: float = 1.0
    max_listed: int = 20


@dataclass
class SafeGraphSettings(GraphSettings):
    """`safe.graph`: the graph statistics of the report (GraphSettings plus the switch and node count)."""

    enabled: bool = True
    n_nodes: int = 50


@dataclass
class SafeSettings:
    dataset: str | None = None
    start_date: str | None = None
    end_date: str | None = None
    experiment_name: str = "safe"
    baseline_folds: str = "train"
    validation: SafeValidationSettings = field(default_factory=SafeValidationSettings)
    graph: SafeGraphSettings = field(default_factory=SafeGraphSettings)


def _lightgbm_params() -> dict[str, Any]:
    return {"objective": "regression", "metric": "l2", "boosting_type": "gbdt", "num_leaves": 31,
            "learning_rate": 0.05, "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 5,
            "min_data_in_leaf": 20, "lambda_l1": 0.1, "lambda_l2": 0.1, "max_bin": 63, "num_threads": 1, "seed": 42,
            "verbosity": -1}


@dataclass
class BaselineSettings:
    enabled: bool = True
    horizons: list[int] | None = None
    workers: int | Literal["auto"] = "auto"
    num_boost_round: int = 200
    early_stopping_rounds: int = 20
    target_transform: str = "rank"
    top_features: int = 20
    normalize: NormalizerSettings = field(default_factory=NormalizerSettings)
    params: dict[str, Any] = field(default_factory=_lightgbm_params)   # passed to LightGBM as is


# ---- model, train, trainer ----------------------------------------------------------------------------------
@dataclass
class ModelSettings:
    """The model group: its name and reference size plus the ATFTConfig fields set by config (the rest,
    n_features and horizons, come from the data). Defaults are model=small, as are ATFTConfig's."""

    name: str = "small"
    expected_params: int = 300000
    window: int = 60
    hidden: int = 48
    n_heads: int = 4
    lstm_layers: int = 1
    dropout: float = 0.1
    vsn_init_gain: float = 0.1
    market_context: str = "none"
    norm: str = "none"
    fan_topk: int = 3
    gat: bool = True
    gat_heads: tuple[int, int] = (4, 2)
    gat_dropout: float = 0.1
    quantiles: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    head_hidden: int = 32
    n_sectors: int = 64
    n_segments: int = 16
    graph: GraphSettings = field(default_factory=GraphSettings)


@dataclass
class LossSettings:
    huber_delta: float = 1.0
    lambda_q: float = 0.25
    lambda_ic: float = 0.5
    horizon_weights: dict[int, float] | list[float] | None = field(
        default_factory=lambda: {1: 4.0, 5: 2.0, 10: 1.0, 20: 1.0})
    target_transform: str = "rank_gauss"
    min_stocks: int = 5


@dataclass
class BlendSettings:
    enabled: bool = True
    method: str = "zscore"
    grid_step: float = 0.05


@dataclass
class StackSettings:
    enabled: bool = False
    blocks: int = 4
    min_fit_days: int = 60


@dataclass
class CVSettings:
    folds: int | Literal["all"] | None = None


@dataclass
class TrainSettings:
    max_epochs: int = 4
    min_epochs: int = 1
    lr: float = 3.0e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    accumulate_grad_batches: int = 1
    patience: int = 3
    save_top_k: int = 3
    average_top_k: int = 1
    limit_train_batches: int | float | None = 120
    limit_val_batches: int | float | None = None
    max_stocks_per_day: int = 2048
    min_stocks_per_day: int = 10
    min_window_frac: float = 0.9
    seed: int = 42                 # ${seed} in the YAML
    ensemble: int = 2
    compile: bool = False
    ema_decay: float | None = 0.99
    swa: bool = False
    collapse_ratio: float = 0.05
    collapse_stop: bool = False
    resume: bool | str = False
    force_convert: bool = False
    panel_cache_keep: int | None = 4
    mlflow: bool = False
    gpu_resident_max_frac: float = 0.5
    normalizer: NormalizerSettings = field(default_factory=NormalizerSettings)
    returns_col: str = "returns_1d"
    loss: LossSettings = field(default_factory=LossSettings)
    blend: BlendSettings = field(default_factory=BlendSettings)
    stack: StackSettings = field(default_factory=StackSettings)
    cv: CVSettings = field(default_factory=CVSettings)


@dataclass
class TrainerSettings:
    """Lightning trainer; defaults are trainer=cpu."""

    accelerator: str = "cpu"
    devices: int | str | list[int] = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | int = "32-true"
    peak_tflops: float | None = 0.15
    progress_bar: bool = True
    num_threads: int | None = 2    # absent from trainer/gpu.yaml (training.py then leaves torch's default)
    member_workers: int | Literal["auto"] = "auto"  # processes training ensemble members side by side


# ---- portfolio, report, predict -----------------------------------------------------------------------------
@dataclass
class PortfolioSettings:
    method: str = "long_short"
    horizon: int = 1
    long_fraction: float = 0.2
    short_fraction: float = 0.2
    weighting: str = "equal"
    cost_bps: float = 5.0
    min_names: int = 10
    min_price: float = 0.0
    min_adv: float = 0.0
    quantiles: int = 5
    periods_per_year: float = 252.0
    vol_column: str = "volatility_20d"
    max_weight: float = 0.1
    realism: Literal["auto", "ideal", "realistic"] = "auto"
    cost_model: Literal["flat", "spread_impact"] = "flat"
    borrow_only: bool = True
    price_limits: bool = True
    capital: float = 100_000_000.0
    lot_size: int = 100
    commission_bps: float = 1.0
    half_spread_bps: float = 3.0
    impact_coef: float = 1.0


@dataclass
class ReportSettings:
    rolling_window: int = 20
    top_features: int = 25
    dpi: int = 90
    target_sharpe: float = 0.849
    target_params: int = 5611803
    param_tolerance: float = 0.10
    rolling_sharpe_days: int = 60
    sector_column: str = "S33"
    benchmark: Literal["auto", "topix", "equal_weight"] = "auto"


@dataclass
class PredictSettings:
    horizon: int = 1
    log_top: int = 10
    output_subdir: str = "predictions"
    quantiles: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    explain_top: int = 5


# ---- hpo ----------------------------------------------------------------------------------------------------
@dataclass
class PrunerSettings:
    enabled: bool = True
    n_startup_trials: int = 2
    n_warmup_steps: int = 0


@dataclass
class HpoParamSettings:
    """One entry of `hpo.space` (checked against the config by pipelines.tune.check_space)."""

    param: str
    type: str
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list[Any] | None = None


def _hpo_space() -> dict[str, HpoParamSettings | None]:
    p = HpoParamSettings
    return {"lr": p("train.lr", "float", 3.0e-4, 1.0e-2, log=True),
            "hidden": p("model.hidden", "categorical", choices=[16, 32, 48, 64]),
            "dropout": p("model.dropout", "float", 0.0, 0.3),
            "lambda_q": p("train.loss.lambda_q", "float", 0.0, 1.0),
            "lambda_ic": p("train.loss.lambda_ic", "float", 0.0, 1.0),
            "huber_delta": p("train.loss.huber_delta", "float", 0.1, 3.0, log=True),
            "graph_k": p("model.graph.k", "int", 4, 20),
            "graph_threshold": p("model.graph.threshold", "float", 0.1, 0.6)}


@dataclass
class HpoSettings:
    study_name: str = "atft_gat_fan"
    storage: str | None = None
    n_trials: int = 20
    max_total_trials: int | None = None
    timeout_s: float | None = None
    seed: int = 42                 # ${seed} in the YAML
    n_startup_trials: int = 5
    folds: int = 1
    max_epochs: int = 4
    patience: int = 2
    limit_train_batches: int | float | None = None
    keep_trial_dirs: bool = False
    pruner: PrunerSettings = field(default_factory=PrunerSettings)
    space: dict[str, HpoParamSettings | None] = field(default_factory=_hpo_space)  # `+hpo.space.x=...` adds one


# ---- top level ----------------------------------------------------------------------------------------------
@dataclass
class RunSettings:
    steps: list[str] = field(
        default_factory=lambda: ["data", "build", "safe", "train", "backtest", "report", "predict"])


@dataclass
class Settings:
    """The whole config, one attribute per group; `Settings()` is the packaged default config."""

    paths: PathsSettings = field(default_factory=PathsSettings)
    data: DataSettings = field(default_factory=SyntheticDataSettings)
    features: FeaturesSettings = field(default_factory=FeaturesSettings)
    labels: LabelsSettings = field(default_factory=LabelsSettings)
    split: SplitSettings = field(default_factory=WalkForwardSplitSettings)
    safe: SafeSettings = field(default_factory=SafeSettings)
    baseline: BaselineSettings = field(default_factory=BaselineSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    portfolio: PortfolioSettings = field(default_factory=PortfolioSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    predict: PredictSettings = field(default_factory=PredictSettings)
    hpo: HpoSettings = field(default_factory=HpoSettings)
    seed: int = 42
    log_level: str = "INFO"
    run: RunSettings = field(default_factory=RunSettings)

    @classmethod
    def from_cfg(cls, cfg: Any) -> Settings:
        """Typed, checked copy of a composed config (interpolations resolved); raises ConfigError."""
        return typed(cfg, cls, "")


# ---- value ranges -------------------------------------------------------------------------------------------
# Checked by `typed` after the types, so every command refuses a bad value at load time with one line naming the
# key, what is allowed and the value given ("train.lr: must be > 0, got -1"). null (where allowed) is not checked.
Check = tuple[Callable[[Any], bool], str]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
NORMALIZER_METHODS = ("robust_z", "rank_gauss")        # gogooku3.data.normalize.METHODS
DAY_LEVEL = ("time_z", "zero")                          # gogooku3.data.normalize.DAY_LEVEL
LOSS_TARGET_TRANSFORMS = ("zscore", "rank_gauss")       # gogooku3.model.losses.TARGET_TRANSFORMS
RUN_STEPS = ("data", "build", "safe", "train", "backtest", "report", "predict")  # pipelines.full.STEPS


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
    return ((lambda v: (len(v) > 0 or not non_empty) and all(ok(x) for x in v)),
            f"a {'non-empty ' if non_empty else ''}list of values {text}")


_BATCHES: Check = ((lambda v: v >= 1 if isinstance(v, int) else 0 < v <= 1),
                   "an int >= 1 (batches) or a float in (0, 1] (a share of them)")
_SHARE = _within(0, 1)
_DROPOUT = _within(0, 1, hi_open=True)

RANGES: dict[type, dict[str, Check]] = {
    SyntheticDataSettings: {"n_stocks": _within(5, 8000), "n_days": _ge(30), "signal_strength": _ge(0),
                            "burn_in": _ge(0), "t_df": _gt(2), "split_share": _SHARE, "ipo_share": _SHARE,
                            "delist_share": _SHARE, "suspensions_per_stock": _ge(0), "momentum_window": _ge(1),
                            "momentum_skip": _ge(0)},
    JQuantsDataSettings: {"requests_per_minute": _ge(1), "refresh_days": _ge(0), "max_attempts": _ge(1),
                          "backoff_base_s": _ge(0), "backoff_max_s": _ge(0), "retry_after_max_s": _ge(0),
                          "timeout_s": _gt(0)},
    FilesDataSettings: {"separator": ((lambda v: len(v) == 1), "a single character such as ',' ';' or '\\t'"),
                        "format": _one_of("auto", "csv", "parquet")},
    FeaturesSettings: {"chunk_rows": _ge(0)},
    LabelsSettings: {"horizons": _each(_ge(1), non_empty=True), "entry_lag": _ge(0)},
    WalkForwardSplitSettings: {"mode": _one_of("expanding", "sliding"), "n_splits": _ge(1), "min_train_days": _ge(1),
                               "test_days": _ge(1), "train_days": _ge(1), "embargo_days": _ge(0), "val_days": _ge(1)},
    PurgedKFoldSplitSettings: {"n_splits": _ge(2), "min_train_days": _ge(1), "embargo_days": _ge(0),
                               "val_days": _ge(1)},
    NormalizerSettings: {"method": _one_of(*NORMALIZER_METHODS), "clip": _gt(0), "day_level": _one_of(*DAY_LEVEL),
                         "day_level_window": _ge(20)},
    GraphSettings: {"window": _ge(2), "method": _one_of("ewm", "pearson"), "halflife": _gt(0),
                    "shrinkage": _within(0, 1, hi_open=True), "threshold": _SHARE, "k": _ge(1), "min_obs": _ge(2)},
    SafeSettings: {"baseline_folds": _one_of("train", "all")},
    SafeValidationSettings: {"min_features": _ge(0), "max_null_share": _SHARE, "null_action": _one_of("drop", "error"),
                             "max_abs_target": _gt(0), "max_listed": _ge(0)},
    BaselineSettings: {"horizons": _each(_ge(1), non_empty=True), "num_boost_round": _ge(1),
                       "workers": ((lambda v: v == "auto" or v >= 1), "'auto' or an int >= 1"),
                       "early_stopping_rounds": _ge(1), "top_features": _ge(0)},
    ModelSettings: {"window": _ge(1), "hidden": _ge(1), "n_heads": _ge(1), "lstm_layers": _ge(1), "dropout": _DROPOUT,
                    "vsn_init_gain": _gt(0), "market_context": _one_of("none", "film"),
                    "norm": _one_of("fan", "revin", "none"), "fan_topk": _ge(1),
                    "gat_heads": _each(_ge(1)), "gat_dropout": _DROPOUT, "quantiles": _each(_within(0, 1, True, True)),
                    "head_hidden": _ge(1), "n_sectors": _ge(1), "n_segments": _ge(1), "expected_params": _ge(0)},
    LossSettings: {"huber_delta": _gt(0), "lambda_q": _ge(0), "lambda_ic": _ge(0),
                   "horizon_weights": ((lambda v: all(w >= 0 for w in (v.values() if isinstance(v, dict) else v))),
                                       "null, a list or a {horizon: weight} map of weights >= 0"),
                   "target_transform": _one_of(*LOSS_TARGET_TRANSFORMS), "min_stocks": _ge(2)},
    BlendSettings: {"method": _one_of("zscore", "rank"), "grid_step": _within(0, 1, lo_open=True)},
    StackSettings: {"blocks": _ge(2), "min_fit_days": _ge(1)},
    CVSettings: {"folds": ((lambda v: v == "all" or v >= 1), "null, 'all' or an int >= 1")},
    TrainSettings: {"max_epochs": _ge(1), "min_epochs": _ge(0), "lr": _gt(0), "weight_decay": _ge(0),
                    "warmup_steps": _ge(0), "min_lr_ratio": _SHARE, "grad_clip": _ge(0),
                    "accumulate_grad_batches": _ge(1), "patience": _ge(1), "save_top_k": _ge(1),
                    "average_top_k": _ge(1), "limit_train_batches": _BATCHES, "limit_val_batches": _BATCHES,
                    "max_stocks_per_day": _ge(2), "min_stocks_per_day": _ge(2),
                    "min_window_frac": _within(0, 1, lo_open=True), "seed": _ge(0), "ensemble": _ge(1),
                    "ema_decay": _DROPOUT, "collapse_ratio": _ge(0), "gpu_resident_max_frac": _SHARE,
                    "panel_cache_keep": _ge(1)},
    TrainerSettings: {"num_nodes": _ge(1), "peak_tflops": _gt(0), "num_threads": _ge(1),
                      "member_workers": ((lambda v: v == "auto" or v >= 1), "'auto' or an int >= 1")},
    PortfolioSettings: {"method": _one_of("long_short", "mean_variance"), "horizon": _ge(1),
                        "long_fraction": _within(0, 0.5, lo_open=True), "short_fraction": _within(0, 0.5, lo_open=True),
                        "weighting": _one_of("equal", "score"), "cost_bps": _ge(0), "min_names": _ge(2),
                        "min_price": _ge(0), "min_adv": _ge(0), "quantiles": _ge(2), "periods_per_year": _gt(0),
                        "max_weight": _within(0, 1, lo_open=True), "capital": _gt(0), "lot_size": _ge(0),
                        "commission_bps": _ge(0), "half_spread_bps": _ge(0), "impact_coef": _ge(0)},
    ReportSettings: {"rolling_window": _ge(1), "top_features": _ge(1), "dpi": _ge(1), "param_tolerance": _ge(0),
                     "rolling_sharpe_days": _ge(2)},
    PredictSettings: {"horizon": _ge(1), "log_top": _ge(0), "quantiles": _each(_within(0, 1, True, True)),
                      "explain_top": _ge(0),
                      "output_subdir": ((lambda v: v.strip() != ""), "a folder name")},
    PrunerSettings: {"n_startup_trials": _ge(0), "n_warmup_steps": _ge(0)},
    HpoSettings: {"n_trials": _ge(1), "max_total_trials": _ge(1), "timeout_s": _gt(0), "seed": _ge(0),
                  "n_startup_trials": _ge(0), "folds": _ge(1), "max_epochs": _ge(1), "patience": _ge(1),
                  "limit_train_batches": _BATCHES},
    RunSettings: {"steps": _each(_one_of(*RUN_STEPS))},
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
                raise ConfigError(f"{_join(where, name)}: must be {relation} {_join(where, other)} ({b!r}), "
                                  f"got {given.get(name, a)!r}")


# ---- conversion ---------------------------------------------------------------------------------------------
def _plain(node: Any) -> Any:
    """A DictConfig/ListConfig as plain containers with interpolations resolved; anything else as is."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - plain dicts need no omegaconf
        return node
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
    if dataclasses.is_dataclass(tp):
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
    tags = [n for n, t in _hints(options[0]).items() if typing.get_origin(t) is Literal
            and all(typing.get_origin(_hints(o).get(n)) is Literal for o in options)]
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
        raise ConfigError(f"{_join(where, tag)}: unknown value {value[tag]!r}{hint} "
                          f"(one of {'|'.join(map(str, by_tag))})")
    own = {f.name for f in dataclasses.fields(cls)}
    for k in value:
        other = [t for t, o in by_tag.items() if k not in own and k in {f.name for f in dataclasses.fields(o)}]
        if other:
            raise ConfigError(f"{_join(where, k)}: not a key of {where}={value[tag]} (it belongs to {where}="
                              f"{other[0]}); choose an option with {where}=<name>, not {_join(where, tag)}=<name>")
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
    kwargs = {}
    # A node's own values are converted and range-checked before its sub-groups, so `seed=-3` is reported as
    # `seed`, not as the `train.seed` that interpolates it.
    leaves = [f for f in fs if _shape(hints[f.name]) != "dict"]
    for group in (leaves, [f for f in fs if f not in leaves]):
        for f in group:
            if f.name in value:
                kwargs[f.name] = _convert(value[f.name], hints[f.name], _join(where, f.name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{_join(where, f.name)}: required key missing; give it with "
                                  f"+{_join(where, f.name)}=...")
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
        if not dataclasses.is_dataclass(tp):
            return None  # below a dict, list or scalar: any key may be valid
        hints = _hints(tp)
        if part not in hints:
            moved = ".".join(parts[i:])
            if where and len(parts) - i > 1 and check_key(moved, options) is None:
                return ConfigError(f"{key}: unknown key; did you mean '{moved}'? ({part} is a config group)")
            return unknown_key_error(where, part, [f.name for f in dataclasses.fields(tp)], option)
        tp, where = hints[part], _join(where, part)
    return None

