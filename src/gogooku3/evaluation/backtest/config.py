"""The backtest's settings: `BacktestConfig` (the `portfolio` config group) from any config form, checked."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from gogooku3.config.compose import packaged_group
from gogooku3.config.schema import PortfolioSettings, Settings
from gogooku3.core.errors import ConfigError

REALISM = ("auto", "ideal", "realistic")
COST_MODELS = ("flat", "spread_impact")


@dataclass
class BacktestConfig(PortfolioSettings):
    """The `portfolio` group's settings (`settings.PortfolioSettings`, documented in conf/portfolio/default.yaml) with
    the backtest's own construction from any config form and its consistency checks."""

    @classmethod
    def from_any(cls, cfg: Any = None, **overrides: Any) -> BacktestConfig:
        """From None, a BacktestConfig, the `portfolio` settings or a mapping of portfolio keys, or the whole
        `Settings` (uses .portfolio). Keys a mapping leaves out (all of them for None) take the packaged YAML's values
        (conf/portfolio)."""
        if isinstance(cfg, BacktestConfig):
            base = asdict(cfg)
        else:
            base = packaged_group("portfolio")
            if cfg is not None:
                node = cfg.portfolio if isinstance(cfg, Settings) else cfg
                d = asdict(node) if isinstance(node, PortfolioSettings) else dict(node)
                names = {f.name for f in fields(cls)}
                base.update({k: v for k, v in d.items() if k in names})
        base.update(overrides)
        out = cls(**base)
        out.validate()
        return out

    def validate(self) -> None:
        if self.method not in ("long_short", "mean_variance"):
            raise ConfigError(f"portfolio.method must be long_short or mean_variance, got {self.method!r}")
        if self.weighting not in ("equal", "score"):
            raise ConfigError(f"portfolio.weighting must be equal or score, got {self.weighting!r}")
        if not (0 < self.long_fraction <= 0.5 and 0 < self.short_fraction <= 0.5):
            raise ConfigError("portfolio.long_fraction and short_fraction must be in (0, 0.5]")
        if self.cost_bps < 0 or self.min_price < 0 or self.min_adv < 0:
            raise ConfigError("portfolio.cost_bps, min_price and min_adv must be >= 0")
        if int(self.horizon) < 1 or int(self.quantiles) < 2 or int(self.min_names) < 2:
            raise ConfigError("portfolio.horizon >= 1, quantiles >= 2 and min_names >= 2 are required")
        ppy = self.periods_per_year
        if ppy != "auto" and not (isinstance(ppy, (int, float)) and not isinstance(ppy, bool) and ppy > 0):
            raise ConfigError(f"portfolio.periods_per_year must be auto or a number > 0, got {ppy!r}")
        if not 0 < self.max_weight <= 1:
            raise ConfigError("portfolio.max_weight must be in (0, 1]")
        if self.realism not in REALISM:
            raise ConfigError(f"portfolio.realism must be one of {', '.join(REALISM)}, got {self.realism!r}")
        if self.cost_model not in COST_MODELS:
            raise ConfigError(f"portfolio.cost_model must be flat or spread_impact, got {self.cost_model!r}")
        if self.capital <= 0 or int(self.lot_size) < 0:
            raise ConfigError("portfolio.capital must be > 0 and portfolio.lot_size >= 0")
        if min(self.commission_bps, self.half_spread_bps, self.impact_coef) < 0:
            raise ConfigError("portfolio.commission_bps, half_spread_bps and impact_coef must be >= 0")

    def headline(self, source: str) -> str:
        """'realistic' or 'ideal': `realism`, with auto = realistic for J-Quants data (`source`), else ideal."""
        if self.realism != "auto":
            return self.realism
        return "realistic" if str(source) == "jquants" else "ideal"
