"""`SynthParams`: every knob of the synthetic TSE market (read from `cfg.data.*` and `cfg.seed`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gogooku3.core.errors import ConfigError

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

MAX_STOCKS = 8000  # unique 4-digit codes 1301..9997 (+ check digit "0")


@dataclass(frozen=True)
class SynthParams:
    """Size, seed and effect strengths of the simulated market. Daily units unless said otherwise."""

    n_stocks: int = 500
    n_days: int = 750
    end_date: str = "2025-12-30"
    seed: int = 42
    signal_strength: float = 1.0  # scales the planted alpha; 0 -> pure noise canary
    burn_in: int = 60  # hidden sessions simulated before the first date (vol/volume states settle)
    # ---- risk model ---------------------------------------------------------------------------
    market_vol: float = 0.010  # unconditional daily vol of the market factor
    market_drift: float = 0.0002  # daily expected log return of the market factor
    sector_vol: float = 0.006
    style_vol: float = 0.003  # size and value factors
    beta_sd: float = 0.3  # cross-sectional sd of the market betas (around 1, clipped to [0.2, 2])
    idio_vol: float = 0.018  # median idiosyncratic daily vol (small caps and Growth higher)
    garch_alpha: float = 0.08
    garch_beta: float = 0.90
    t_df: float = 5.0  # Student-t degrees of freedom of all innovations (truncated at +-8 sd)
    # ---- planted effects (coefficients at signal_strength 1; persistence = AR(1) decay per day) -
    reversal_coef: float = 0.05  # alpha -= coef * sector-relative return of t, decaying
    reversal_decay: float = 0.80
    momentum_coef: float = 0.004  # alpha += coef * excess log return over [t-120, t-5], calm markets only
    momentum_window: int = 120
    momentum_skip: int = 5
    calm_vol: float = 0.010  # market is calm when its EWM realised vol (halflife ~10d) is below this
    leadlag_coef: float = 0.055  # alpha += coef * (sector cap-weighted return - market return), small caps more
    leadlag_decay: float = 0.85
    volume_coef: float = 0.0009  # alpha += coef * clip(abnormal log volume, 0, 3) * sign(excess return)
    volume_decay: float = 0.85
    earnings_coef: float = 0.0018  # alpha += coef * statement surprise z (post-earnings drift)
    earnings_decay: float = 0.95
    earnings_jump: float = 1.5  # announcement-day return reaction, in idiosyncratic sd per unit z
    # ---- corporate events ----------------------------------------------------------------------
    split_share: float = 0.03  # share of stocks with a split (at least one when n_stocks >= 5)
    ipo_share: float = 0.05  # share of stocks listed after the first date
    delist_share: float = 0.03  # share of stocks delisted before the last date
    suspensions_per_stock: float = 1.5  # mean number of missing-day gaps (1-3 sessions each) per stock

    def __post_init__(self) -> None:
        if not 5 <= self.n_stocks <= MAX_STOCKS:
            raise ConfigError(f"data.n_stocks must be in [5, {MAX_STOCKS}], got {self.n_stocks}")
        if self.n_days < 30:
            raise ConfigError(f"data.n_days must be >= 30, got {self.n_days}")
        if self.signal_strength < 0:
            raise ConfigError(f"data.signal_strength must be >= 0, got {self.signal_strength}")
        if self.garch_alpha + self.garch_beta >= 1:
            raise ConfigError("data.garch_alpha + data.garch_beta must be < 1")
        if self.beta_sd < 0:
            raise ConfigError(f"data.beta_sd must be >= 0, got {self.beta_sd}")
        if self.t_df <= 2:
            raise ConfigError(f"data.t_df must be > 2, got {self.t_df}")
        if self.momentum_skip >= self.momentum_window:
            raise ConfigError("data.momentum_skip must be smaller than data.momentum_window")

    @classmethod
    def from_config(cls, cfg: Settings) -> SynthParams:
        """Build from the config: the `cfg.data` keys that name a field, plus `cfg.seed`."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k in names}
        kwargs["seed"] = cfg.seed
        return cls(**kwargs)

    def replace(self, **changes: Any) -> SynthParams:
        return dataclasses.replace(self, **changes)
