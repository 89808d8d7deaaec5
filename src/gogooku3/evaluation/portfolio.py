"""Cost-aware long/short backtest of a predictions file (Date, Code, pred_{h}d, target_{h}d).

Timing. ``target_{h}d`` at Date t is AdjC(t+lag+h)/AdjC(t+lag) − 1 with lag = ``labels.entry_lag``: the signal is
known after the close of t and the position is entered at the close of e = t+lag and closed at the close of
x = t+lag+h (sessions of the dataset's calendar). A rebalance on signal date t earns Σ w·r with r the name's
realised return over [e, x] (below).

Universe (point in time). On signal date t a name is eligible when it has a prediction on t and (optionally) passes
the price/liquidity filter on t's values; nothing after t is read, so the universe on t is the same whether or not
later rows exist.

Realised return r of a held name. ``target_{h}d(t)`` when the label exists; otherwise, from the dataset's prices
(`Market`, an adjusted price index): a name with no row on the entry session is *unfilled* (r = 0, weight 0); a name
that has no row on x but trades later was *suspended* and realises its return at the next available close; a name
that never trades again was *delisted* and realises the return to its last available close (a delisting return).
Without prices a missing label realises 0 and is counted *unpriced*. Each case is counted in ``positions``.

Schedule. Rebalances fall every h-th session of the dataset's calendar from the first prediction date (h = 1: every
session), so a missing date does not shift the schedule; a scheduled date without predictions is skipped and counted
(``n_missing_dates``), as is one whose exit session lies beyond the data (``n_unrealised_dates``) and one with fewer
than ``min_names`` eligible names (``n_skipped_dates``).

Book. Long the top ``long_fraction`` and short the bottom ``short_fraction`` of the eligible names by prediction
(higher prediction → long; no sign-inversion switch). Leg sizes are floor(fraction · N); ties are broken by Code.
Weights are equal within a leg or proportional to |pred − day's median pred| (``weighting: score``); each leg sums to
1 in gross (long +1, short −1: dollar-neutral, gross exposure 2, returns per unit of capital). ``method:
mean_variance`` instead solves a dollar-neutral mean-variance problem with the cross-sectionally z-scored predictions
as expected returns and a diagonal risk model from a trailing-volatility column (see `_mean_variance_weights`).

Trading realism (the *realistic* backtest; the *ideal* one applies none of it; both are always computed and reported
side by side, ``realism`` picks the headline: auto = realistic for J-Quants data, ideal for synthetic/files):

- ``borrow_only``: a name is shorted only when it is loan-eligible (貸借銘柄, margin_interest IssType "2") as known
  on t; the short leg is filled from the next names in rank order (``mean_variance``: such shorts are dropped).
- ``price_limits``: no new long entry at a limit-up entry close, no new short entry at a limit-down one (a name held
  on the same side at the previous rebalance is not a new entry); the order is skipped (the weight stays cash) and
  counted. Limits come from the J-Quants flags ``UL``/``LL`` when the dataset has them, else from the TSE daily
  price-limit table (`price_limit`) applied to the previous close in the entry day's share basis.
- ``lot_size`` with ``capital``: shares = floor(|w| · capital / (Close_e · lot)) · lot at the entry close
  (Close in the day's own share basis), w = ±shares · Close_e / capital; a name whose one lot exceeds its weight is
  skipped and counted.

Per period: gross = Σ w·r, long = Σ_{long} w·r, short = Σ_{short} |w|·r (gross = long − short), turnover = Σ|w_t −
w_{t−1}| over the union of names with w_{t−1} the previous rebalance's weights (the first rebalance counts the full
build, 2.0). Costs, both always computed (``cost_model`` picks the one in ``net``): **flat** = cost_bps · 1e-4 ·
turnover; **spread_impact** = Σ_i |Δw_i| · ((commission_bps + half_spread_bps) · 1e-4 + impact_coef · σ_i ·
√(|Δw_i| · capital / ADV_i)) with σ_i the daily volatility (``vol_column`` / √252) and ADV_i the yen average daily
volume (volume_ma_20 · Close, else dollar_volume) on t, a missing value taking the day's median (without any ADV
only commission + half-spread is charged, reported as such). net = gross − cost.

Summary over the n periods of net returns r, with P = periods_per_year / h periods a year:
ann_return = mean(r)·P; ann_vol = std(r)·√P; **sharpe = mean(r)/std(r)·√P** (the project's only Sharpe; √252 on
daily net returns for h = 1); sortino = mean(r)/√mean(min(r,0)²)·√P; cagr = Π(1+r)^(P/n) − 1; max_drawdown = min over
t of equity_t / max_{s≤t} equity_s − 1 on the compounded net equity starting at 1 (a negative fraction); calmar =
cagr / |max_drawdown|; win_rate = share of periods with net > 0 (the backtest's hit rate); avg_turnover = mean
turnover; sharpe_tstat = the Newey–West t-stat of mean(r) (`metrics.mean_tstat`, non-overlapping periods so the
bandwidth rule's h = 1; ``tstat_method``, ``hac_lag``). Benchmarks: long-only equal-weight top quantile vs
equal-weight universe of the eligible names (realised returns as above).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError, SchemaError, rows_hint
from gogooku3.evaluation import metrics
from gogooku3.core.io import timestamp, write_json, write_parquet
from gogooku3.config.schema import PortfolioSettings

log = logging.getLogger(__name__)

UNIVERSE_COLUMNS = ("Close", "dollar_volume", "volume_ma_20")
MARKET_COLUMNS = ("Close", "returns_1d", "UL", "LL", "volume_ma_20", "dollar_volume", "is_borrowable")
REALISM = ("auto", "ideal", "realistic")
COST_MODELS = ("flat", "spread_impact")
STATUSES = ("normal", "suspended", "delisted", "unfilled", "unpriced")
BORROWABLE_ISS_TYPE = "2"   # J-Quants margin_interest IssType: 1 信用銘柄 (margin only), 2 貸借銘柄 (loan-eligible)

# TSE daily price limits (yen) by the base price (the previous close): below BOUNDS[i] the limit is LIMITS[i];
# from the last bound on, LIMITS[-1] (JPX "Daily Price Limits" table).
LIMIT_BOUNDS = (100, 200, 500, 700, 1_000, 1_500, 2_000, 3_000, 5_000, 7_000, 10_000, 15_000, 20_000, 30_000, 50_000,
                70_000, 100_000, 150_000, 200_000, 300_000, 500_000, 700_000, 1_000_000, 1_500_000, 2_000_000,
                3_000_000, 5_000_000, 7_000_000, 10_000_000, 15_000_000, 20_000_000, 30_000_000, 50_000_000)
LIMITS = (30, 50, 80, 100, 150, 300, 400, 500, 700, 1_000, 1_500, 3_000, 4_000, 5_000, 7_000, 10_000, 15_000, 30_000,
          40_000, 50_000, 70_000, 100_000, 150_000, 300_000, 400_000, 500_000, 700_000, 1_000_000, 1_500_000,
          3_000_000, 4_000_000, 5_000_000, 7_000_000, 10_000_000)
LIMIT_TOL = 1e-4   # a close within this relative distance of the limit price is at the limit


@dataclass
class BacktestConfig(PortfolioSettings):
    """The `portfolio` group's settings (`settings.PortfolioSettings`, documented in conf/portfolio/default.yaml) with
    the backtest's own construction from any config form and its consistency checks."""

    @classmethod
    def from_any(cls, cfg: Any = None, **overrides: Any) -> BacktestConfig:
        """From None, a BacktestConfig, a mapping / DictConfig of portfolio keys, or a full config (uses .portfolio)."""
        if isinstance(cfg, BacktestConfig):
            base = asdict(cfg)
        elif cfg is None:
            base = {}
        else:
            d = dict(cfg.get("portfolio", cfg)) if hasattr(cfg, "get") else dict(cfg)
            names = {f.name for f in fields(cls)}
            base = {k: v for k, v in d.items() if k in names}
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


# ---- what the backtest knows besides the predictions --------------------------------------------------------------
@dataclass
class Market:
    """The dataset's sessions and, per (Date, Code) row of the dataset, what trading needs.

    `rows` columns (each optional but Date, Code): px (adjusted price index: ratios are split-correct returns), close
    (Close in the day's own share basis), limit_up / limit_down (Boolean, at that close), borrowable (Boolean, known
    on that date), adv (yen), vol (daily σ). `sources` says where each came from (or why it is unavailable).
    """

    sessions: list[dt.date]
    rows: pl.DataFrame
    entry_lag: int = 1
    sources: dict[str, str | None] = field(default_factory=dict)

    def has(self, col: str) -> bool:
        return col in self.rows.columns


def price_limit(ref: pl.Expr) -> pl.Expr:
    """The TSE daily price limit (yen) for a base price `ref` (yen): LIMITS by the LIMIT_BOUNDS band."""
    idx = pl.lit(pl.Series(LIMIT_BOUNDS, dtype=pl.Float64)).search_sorted(ref.cast(pl.Float64), side="right")
    return pl.lit(pl.Series(LIMITS, dtype=pl.Float64)).gather(idx)


def _flag(col: str, dtype: pl.DataType) -> pl.Expr:
    """A J-Quants style 0/1 flag column (string, integer or Boolean) as Boolean."""
    if dtype == pl.Boolean:
        return pl.col(col)
    if dtype in (pl.String, pl.Utf8):
        return pl.col(col).str.strip_chars().str.to_lowercase().is_in(["1", "true"])
    return pl.col(col).cast(pl.Float64) == 1.0


def market_from_frame(df: pl.DataFrame, sessions: list[dt.date] | None = None, entry_lag: int = 1,
                      vol_column: str = "volatility_20d", borrow: pl.DataFrame | None = None) -> Market:
    """A `Market` from dataset rows (Date, Code and any of Close, returns_1d, UL, LL, volume_ma_20, dollar_volume,
    is_borrowable, `vol_column`); `sessions` default to the frame's dates; `borrow` (Date, Code, borrowable)
    replaces the dataset's is_borrowable."""
    cols = set(df.columns)
    d = df.with_columns(pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String)).sort(C.CODE, C.DATE)
    out: list[pl.Expr] = []
    src: dict[str, str | None] = {}
    if "returns_1d" in cols:
        # an adjusted price index from the row-to-row adjusted return (split-correct; the base cancels in ratios)
        out.append((1.0 + pl.col("returns_1d").cast(pl.Float64).fill_nan(None).fill_null(0.0))
                   .cum_prod().over(C.CODE).alias("px"))
        src["prices"] = "returns_1d (adjusted)"
    elif "Close" in cols:
        out.append(pl.col("Close").cast(pl.Float64).alias("px"))
        src["prices"] = "Close (not split-adjusted unless the source's is)"
        log.warning("backtest: the dataset has no returns_1d; carried returns use Close, which a split would distort")
    else:
        src["prices"] = None
    if "Close" in cols:
        out.append(pl.col("Close").cast(pl.Float64).alias("close"))
    if "UL" in cols and "LL" in cols:
        out += [_flag("UL", df.schema["UL"]).alias("limit_up"), _flag("LL", df.schema["LL"]).alias("limit_down")]
        src["price_limits"] = "UL/LL flags"
    elif "Close" in cols and "returns_1d" in cols:
        close = pl.col("Close").cast(pl.Float64)
        ref = close / (1.0 + pl.col("returns_1d").cast(pl.Float64))   # previous close in today's share basis
        lim = price_limit(ref)
        out += [(close >= ref + lim - LIMIT_TOL * ref).fill_null(False).alias("limit_up"),
                (close <= ref - lim + LIMIT_TOL * ref).fill_null(False).alias("limit_down")]
        src["price_limits"] = "TSE price-limit table"
    else:
        src["price_limits"] = None
    if "volume_ma_20" in cols and "Close" in cols:
        out.append((pl.col("volume_ma_20").cast(pl.Float64) * pl.col("Close").cast(pl.Float64)).alias("adv"))
    elif "dollar_volume" in cols:
        out.append(pl.col("dollar_volume").cast(pl.Float64).alias("adv"))
    src["adv"] = "volume_ma_20 x Close" if "volume_ma_20" in cols and "Close" in cols else (
        "dollar_volume" if "dollar_volume" in cols else None)
    if vol_column in cols:
        out.append((pl.col(vol_column).cast(pl.Float64) / math.sqrt(252)).alias("vol"))
    if borrow is None and "is_borrowable" in cols:
        out.append((pl.col("is_borrowable").cast(pl.Float64) == 1.0).fill_null(False).alias("borrowable"))
        src["borrow"] = "dataset is_borrowable"
    rows = d.select(C.DATE, C.CODE, *out)
    if borrow is not None:
        rows = rows.join(borrow.select(C.DATE, C.CODE, "borrowable"), on=[C.DATE, C.CODE], how="left").with_columns(
            pl.col("borrowable").fill_null(False))
        src["borrow"] = "margin_interest.IssType"
    src.setdefault("borrow", None)
    sess = sorted(set(d[C.DATE].to_list())) if sessions is None else sorted(sessions)
    return Market(sess, rows, int(entry_lag), src)


def borrowable_from_margin(margin: pl.LazyFrame, keys: pl.DataFrame, sessions: list[dt.date],
                           pub_lag_sessions: int = 3) -> pl.DataFrame | None:
    """Date, Code, borrowable for `keys`: IssType == "2" in the latest margin_interest row effective by Date (from the
    session after PubDate; without PubDate, `pub_lag_sessions` sessions after the week's Date, as the builder does).
    None when the table has no IssType."""
    schema = margin.collect_schema()
    if "IssType" not in schema or C.CODE not in schema or C.DATE not in schema:
        return None
    sess = pl.Series("s", sessions, dtype=pl.Date)
    pub = pl.col("PubDate").cast(pl.Date) if "PubDate" in schema else pl.lit(None, pl.Date)
    mi = margin.select(pl.col(C.CODE).cast(pl.String), pl.col(C.DATE).cast(pl.Date).alias("_week"),
                       pub.alias("_pub"), pl.col("IssType").cast(pl.String).alias("_iss")).collect()
    n = len(sessions)
    after_pub = pl.lit(sess).search_sorted(pl.col("_pub"), side="right")
    on_week = pl.lit(sess).search_sorted(pl.col("_week"), side="left") + pub_lag_sessions
    pos = pl.when(pl.col("_pub").is_not_null()).then(after_pub).otherwise(on_week)
    mi = (mi.with_columns(_pos=pos).filter(pl.col("_pos") < n)
          .with_columns(_eff=pl.lit(sess).gather(pl.col("_pos").cast(pl.Int64)))
          .sort("_eff").select(C.CODE, "_eff", "_iss"))
    k = keys.select(pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String)).unique().sort(C.DATE)
    j = k.join_asof(mi, left_on=C.DATE, right_on="_eff", by=C.CODE, strategy="backward", check_sortedness=False)
    return j.select(C.DATE, C.CODE, borrowable=(pl.col("_iss") == BORROWABLE_ISS_TYPE).fill_null(False))


def load_market(dataset_path: str | Path, codes: pl.Series | list[str], start: dt.date, entry_lag: int = 1,
                raw_dir: str | Path | None = None, vol_column: str = "volatility_20d") -> Market:
    """The `Market` of the dataset's rows of `codes` from `start` on (sessions: every dataset date from `start`),
    borrowability from `<raw_dir>/margin_interest` (IssType, point in time) when present, else the dataset's flag."""
    path = Path(dataset_path)
    lf = pl.scan_parquet(path)
    schema = lf.collect_schema()
    want = [c for c in (*MARKET_COLUMNS, vol_column) if c in schema]
    lf = lf.filter(pl.col(C.DATE).cast(pl.Date) >= start)
    sessions = lf.select(pl.col(C.DATE).cast(pl.Date).unique()).collect()[C.DATE].sort().to_list()
    codes = pl.Series(C.CODE, list(codes), dtype=pl.String).unique()
    df = (lf.select(C.DATE, C.CODE, *dict.fromkeys(want))
          .with_columns(pl.col(C.CODE).cast(pl.String))
          .filter(pl.col(C.CODE).is_in(codes.implode())).collect())
    borrow = None
    if raw_dir is not None:
        from gogooku3.sources.schema import scan_table

        mi = scan_table(raw_dir, "margin_interest")
        if mi is not None:
            borrow = borrowable_from_margin(mi, df.select(C.DATE, C.CODE), sessions)
    return market_from_frame(df, sessions, entry_lag, vol_column, borrow)


@dataclass
class BacktestResult:
    """`daily`: one row per rebalance (Date, n, n_long, n_short, long, short, gross, turnover, cost_flat,
    cost_spread_impact, cost, net, equity, drawdown, top_quantile, universe); `summary`: the figures of the module
    docstring; `quantiles`: quantile, mean_return; `positions`: Date, Code, side, w, r, status."""

    daily: pl.DataFrame
    summary: dict
    quantiles: pl.DataFrame
    config: dict = field(default_factory=dict)
    positions: pl.DataFrame | None = None

    def to_dict(self) -> dict:
        return {"summary": self.summary, "config": self.config,
                "quantile_returns": self.quantiles.to_dicts()}


def _check_input(preds: pl.DataFrame, pred: str, target: str) -> None:
    missing = [c for c in ("Date", "Code", pred, target) if c not in preds.columns]
    if missing:
        raise SchemaError(f"predictions: missing column(s) {', '.join(missing)}; need Date, Code, {pred}, {target}")
    if preds.height == 0:
        raise DataError("predictions: no rows")
    dup = preds.group_by("Date", "Code").len().filter(pl.col("len") > 1)
    if dup.height:
        raise DataError(f"predictions: {dup.height} duplicate (Date, Code) rows, e.g. "
                        + rows_hint(f"{r['Date']} {r['Code']}" for r in dup.head(5).iter_rows(named=True)))
    empty = (preds.group_by("Date").agg(k=pl.col(pred).cast(pl.Float64).fill_nan(None).count())
             .filter(pl.col("k") == 0).sort("Date"))
    if empty.height:
        raise DataError(f"predictions: {empty.height} day(s) without any {pred} value: "
                        + rows_hint(empty["Date"].to_list()))


def universe_filter(columns: list[str], c: BacktestConfig) -> pl.Expr:
    """The price / liquidity filter as a boolean expression (ConfigError when a needed column is absent)."""
    cond = pl.lit(True)
    if c.min_price > 0:
        if "Close" not in columns:
            raise ConfigError("portfolio.min_price > 0 needs a Close column (in the predictions or the dataset)")
        cond &= pl.col("Close") >= c.min_price
    if c.min_adv > 0:
        if "volume_ma_20" in columns and "Close" in columns:
            adv = pl.col("volume_ma_20") * pl.col("Close")
        elif "dollar_volume" in columns:
            adv = pl.col("dollar_volume")
        else:
            raise ConfigError("portfolio.min_adv > 0 needs volume_ma_20 and Close, or dollar_volume "
                              "(in the predictions or the dataset)")
        cond &= adv >= c.min_adv
    return cond


def eligible(preds: pl.DataFrame, horizon: int, cfg: Any = None, market: Market | None = None) -> pl.DataFrame:
    """The universe: Date, Code, p, y (the label, possibly null) and the market's values on Date of the rows that
    have a prediction and pass the price/liquidity filter. Reads nothing dated after each row's Date."""
    c = BacktestConfig.from_any(cfg, horizon=int(horizon))
    pred, target = C.pred(c.horizon), C.target(c.horizon)
    if c.method == "mean_variance" and c.vol_column not in preds.columns:
        raise ConfigError(f"portfolio.method=mean_variance needs the {c.vol_column} column "
                          "(in the predictions or the dataset)")
    cond = pl.col("p").is_not_null() & universe_filter(preds.columns, c)
    extra = [c.vol_column] if c.method == "mean_variance" else []
    el = (preds.lazy()
          .with_columns(pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String),
                        p=pl.col(pred).cast(pl.Float64).fill_nan(None),
                        y=pl.col(target).cast(pl.Float64).fill_nan(None))
          .filter(cond.fill_null(False)).select(C.DATE, C.CODE, "p", "y", *extra).collect())
    if market is not None:
        at_t = [k for k in ("borrowable", "adv", "vol") if market.has(k)]
        if at_t:
            el = el.join(market.rows.select(C.DATE, C.CODE, *at_t), on=[C.DATE, C.CODE], how="left")
    return el.sort(C.DATE, C.CODE)


def rebalance_schedule(pred_dates: list[dt.date], sessions: list[dt.date], every: int) -> list[dt.date]:
    """Every `every`-th session of `sessions` from the first prediction date through the last (counted in sessions,
    so a date missing from the predictions does not shift the schedule)."""
    first, last = min(pred_dates), max(pred_dates)
    if first not in set(sessions):
        raise DataError(f"predictions: date {first} is not a session of the dataset's calendar")
    i0 = sessions.index(first)
    return [d for d in sessions[i0::every] if d <= last]


def _sessions_frame(market: Market, dates: list[dt.date], h: int) -> pl.DataFrame:
    """Date, e (entry session), x (exit session) per signal date (null past the calendar's end)."""
    s = market.sessions
    pos = {d: i for i, d in enumerate(s)}
    lag, n = market.entry_lag, len(s)
    rows = [(d, s[pos[d] + lag] if pos[d] + lag < n else None, s[pos[d] + lag + h] if pos[d] + lag + h < n else None)
            for d in dates]
    return pl.DataFrame(rows, schema={C.DATE: pl.Date, "e": pl.Date, "x": pl.Date}, orient="row")


def _ranked_legs(el: pl.DataFrame, c: BacktestConfig, borrow: bool) -> tuple[pl.DataFrame, int]:
    """Date, Code, p, side: the top floor(long_fraction·N) long, the bottom floor(short_fraction·N) short (N = the
    day's eligible names; ties by Code); with `borrow`, shorts only among borrowable names, the leg filled from the
    next names in rank order. Also how many non-borrowable names the short leg passed over."""
    n = pl.len().over(C.DATE).cast(pl.Float64)
    n_long, n_short = (n * c.long_fraction).floor(), (n * c.short_fraction).floor()
    lf = el.lazy().sort(C.DATE, C.CODE).with_columns(
        r_desc=pl.col("p").rank("ordinal", descending=True).over(C.DATE),
        r_asc=pl.col("p").rank("ordinal").over(C.DATE), n_long=n_long, n_short=n_short)
    lf = lf.with_columns(is_long=pl.col("r_desc") <= pl.col("n_long"))
    passed = 0
    if borrow:
        ok = (~pl.col("is_long")) & pl.col("borrowable").fill_null(False)
        lf = lf.with_columns(r_short=pl.when(ok).then(pl.col("p")).otherwise(None)
                             .rank("ordinal").over(C.DATE))
        passed = int(lf.filter((pl.col("r_asc") <= pl.col("n_short")) & ~pl.col("is_long")
                               & ~pl.col("borrowable").fill_null(False)).select(pl.len()).collect().item())
    else:
        lf = lf.with_columns(r_short=pl.when(~pl.col("is_long")).then(pl.col("r_asc")).otherwise(None))
    side = (pl.when(pl.col("is_long")).then(1).when(pl.col("r_short") <= pl.col("n_short")).then(-1).otherwise(0)
            .cast(pl.Int8))
    out = lf.with_columns(side=side).filter(pl.col("side") != 0).select(C.DATE, C.CODE, "p", "side").collect()
    return out, passed


def side_expr(pred: str, long_fraction: float, short_fraction: float) -> pl.Expr:
    """Per day: 1 for the top floor(long_fraction·N) by `pred`, −1 for the bottom floor(short_fraction·N), else 0.

    N counts the day's rows, so pass only eligible rows with a prediction, sorted by (Date, Code): ordinal
    ranks then break ties by Code.
    """
    n = pl.len().over("Date").cast(pl.Float64)
    r_desc = pl.col(pred).rank("ordinal", descending=True).over("Date")
    r_asc = pl.col(pred).rank("ordinal").over("Date")
    return (pl.when(r_desc <= (n * long_fraction).floor()).then(1)
            .when(r_asc <= (n * short_fraction).floor()).then(-1).otherwise(0).cast(pl.Int8))


def _leg_weights(legs: pl.DataFrame, c: BacktestConfig) -> pl.DataFrame:
    """Date, Code, side, w: equal or |p − day's median p| weights, each leg summing to 1 in gross."""
    raw = pl.lit(1.0) if c.weighting == "equal" else (pl.col("p") - pl.col("med")).abs()
    med = pl.col("p").median().over(C.DATE)
    lf = legs.lazy().with_columns(med=med).with_columns(raw=raw).with_columns(
        leg_sum=pl.col("raw").sum().over(C.DATE, "side"), leg_n=pl.len().over(C.DATE, "side"))
    share = pl.when(pl.col("leg_sum") > 0).then(pl.col("raw") / pl.col("leg_sum")).otherwise(1.0 / pl.col("leg_n"))
    return lf.with_columns(w=share * pl.col("side")).select(C.DATE, C.CODE, "side", "w").collect()


def _mean_variance_weights(el: pl.DataFrame, c: BacktestConfig) -> pl.DataFrame:
    """Per date: the dollar-neutral mean-variance portfolio with a diagonal risk model, scaled to gross 2.

    Maximising μ'w − (γ/2)·Σ σ_i² w_i² subject to Σw = 0 gives w ∝ (μ − λ)/σ² with λ = Σ(μ/σ²)/Σ(1/σ²); μ is the
    day's z-scored prediction and σ the trailing-volatility column (known at t). Scaling to gross 2 makes γ drop
    out. The per-name cap |w_i| ≤ max_weight is then applied approximately: clip and renormalise each leg, five
    passes (exact when the cap is loose; a leg with fewer than 1/max_weight names cannot honour it).
    """
    g = el.lazy().drop_nulls(c.vol_column).filter(pl.col(c.vol_column) > 0).with_columns(
        mu=(pl.col("p") - pl.col("p").mean().over("Date")) / pl.col("p").std().over("Date"),
        inv_var=1.0 / pl.col(c.vol_column).cast(pl.Float64).pow(2))
    # dollar-neutral unconstrained solution: w ∝ inv_var·(μ − λ), λ = Σ inv_var·μ / Σ inv_var
    lam = (pl.col("inv_var") * pl.col("mu")).sum().over("Date") / pl.col("inv_var").sum().over("Date")
    g = g.with_columns(raw=pl.col("inv_var") * (pl.col("mu") - lam))
    g = g.with_columns(side=pl.col("raw").sign().cast(pl.Int8)).filter(pl.col("side") != 0)
    leg = pl.col("raw").abs() / pl.col("raw").abs().sum().over("Date", "side")
    g = g.with_columns(a=leg)
    for _ in range(5):
        g = g.with_columns(a=pl.col("a").clip(upper_bound=c.max_weight)).with_columns(
            a=pl.col("a") / pl.col("a").sum().over("Date", "side"))
    return g.with_columns(w=pl.col("a") * pl.col("side")).select("Date", "Code", "side", "w").collect()


def _new_entry_skips(book: pl.DataFrame, reb: list[dt.date]) -> pl.DataFrame:
    """book (Date, Code, side, w, limited) -> the same with `held`: False for a new entry whose order hit the limit.

    A name is held on rebalance k when it is in the book on k and either its order filled (not limited) or it was
    held on the same side at k − 1: within each run of consecutive rebalances on one side, held from the first
    unlimited one on.
    """
    k = pl.DataFrame({C.DATE: reb, "k": list(range(len(reb)))}, schema={C.DATE: pl.Date, "k": pl.Int64})
    b = book.join(k, on=C.DATE).sort(C.CODE, "k")
    brk = ((pl.col("k") - pl.col("k").shift(1) != 1) | (pl.col("side") != pl.col("side").shift(1))).fill_null(True)
    b = b.with_columns(run=brk.cum_sum().over(C.CODE))
    held = (~pl.col("limited")).cast(pl.Int8).cum_max().over(C.CODE, "run") == 1
    return b.with_columns(held=held).drop("k", "run")


def _turnover(w: pl.DataFrame, reb: list[dt.date]) -> pl.DataFrame:
    """Date, Code, dw = w_k − w_{k−1} over the union of names of consecutive rebalances k (the first: the build)."""
    days = pl.DataFrame({C.DATE: reb, "k": list(range(len(reb)))}, schema={C.DATE: pl.Date, "k": pl.Int64})
    wk = w.join(days, on=C.DATE).select("k", C.CODE, "w")
    prev = wk.with_columns(k=pl.col("k") + 1).rename({"w": "w_prev"})
    j = wk.join(prev, on=["k", C.CODE], how="full", coalesce=True).filter(pl.col("k") < days.height)
    return (j.join(days, on="k").select(C.DATE, C.CODE,
                                        dw=pl.col("w").fill_null(0.0) - pl.col("w_prev").fill_null(0.0)))


def _realise(rows: pl.DataFrame, market: Market | None, h: int) -> pl.DataFrame:
    """rows (Date, Code, y, ...) + r (realised return over [entry, exit]) and status (see the module docstring)."""
    if market is None or not market.has("px"):
        return rows.with_columns(r=pl.col("y").fill_null(0.0),
                                 status=pl.when(pl.col("y").is_not_null()).then(pl.lit("normal"))
                                 .otherwise(pl.lit("unpriced")))
    ex = _sessions_frame(market, rows[C.DATE].unique().to_list(), h)
    px = market.rows.select(C.DATE, C.CODE, "px").drop_nulls("px").sort(C.DATE)
    d = (rows.join(ex, on=C.DATE, how="left")
         .join(px.rename({C.DATE: "e", "px": "px_e"}), on=["e", C.CODE], how="left"))
    d = d.with_row_index("_i").sort("x")
    nxt = d.join_asof(px.rename({"px": "px_next", C.DATE: "_dn"}), left_on="x", right_on="_dn", by=C.CODE,
                      strategy="forward", check_sortedness=False)
    last = d.join_asof(px.rename({"px": "px_last", C.DATE: "_dl"}), left_on="x", right_on="_dl", by=C.CODE,
                       strategy="backward", allow_exact_matches=False, check_sortedness=False)
    d = (nxt.join(last.select("_i", "px_last", "_dl"), on="_i").sort("_i"))
    status = (pl.when(pl.col("y").is_not_null()).then(pl.lit("normal"))
              .when(pl.col("x").is_null()).then(pl.lit("unpriced"))   # exit beyond the calendar: unknown
              .when(pl.col("px_e").is_null()).then(pl.lit("unfilled"))
              .when(pl.col("px_next").is_not_null()).then(pl.lit("suspended"))
              .otherwise(pl.lit("delisted")))
    r = (pl.when(pl.col("status") == "normal").then(pl.col("y"))
         .when(pl.col("status") == "suspended").then(pl.col("px_next") / pl.col("px_e") - 1.0)
         .when(pl.col("status") == "delisted").then(pl.col("px_last") / pl.col("px_e") - 1.0)
         .otherwise(0.0))
    return d.with_columns(status=status).with_columns(r=r).drop("_i", "px_next", "px_last", "_dn", "_dl", "px_e")


def _cost_spread_impact(dw: pl.DataFrame, el: pl.DataFrame, c: BacktestConfig) -> tuple[pl.DataFrame, str]:
    """Date, cost_spread_impact per rebalance, and what it charged ("commission+spread+impact" or without impact)."""
    fixed = (c.commission_bps + c.half_spread_bps) * 1e-4
    if "adv" not in el.columns:
        out = dw.group_by(C.DATE).agg(cost_spread_impact=pl.col("dw").abs().sum() * fixed)
        return out, "commission + half-spread (no ADV for the impact)"
    info = el.select(C.DATE, C.CODE, "adv", *(["vol"] if "vol" in el.columns else []))
    d = dw.join(info, on=[C.DATE, C.CODE], how="left")
    med = lambda col: pl.col(col).fill_null(pl.col(col).median().over(C.DATE))  # noqa: E731
    vol = med("vol").fill_null(0.02) if "vol" in el.columns else pl.lit(0.02)
    adv = med("adv")
    traded = pl.col("dw").abs()
    impact = c.impact_coef * vol * (traded * c.capital / adv).sqrt()
    cost = traded * (fixed + pl.when(adv > 0).then(impact).otherwise(0.0))
    out = d.group_by(C.DATE).agg(cost_spread_impact=cost.sum())
    how = "commission + half-spread + sqrt impact (σ " + ("from " + c.vol_column if "vol" in el.columns
                                                          else "0.02 a day") + ")"
    return out, how


def _summary(daily: pl.DataFrame, c: BacktestConfig, col: str = "net") -> dict:
    ppy = c.periods_per_year / c.horizon
    r = daily[col].cast(pl.Float64)
    n = r.len()
    mean = r.mean() if n else float("nan")
    std = r.std() if n > 1 else float("nan")
    down = math.sqrt((r.clip(upper_bound=0.0) ** 2).mean()) if n else float("nan")
    eq = (1.0 + r).cum_prod()
    dd = eq / pl.concat([pl.Series([1.0]), eq]).cum_max().slice(1) - 1.0
    max_dd = float(dd.min()) if n else float("nan")
    cagr = float(eq[-1] ** (ppy / n) - 1.0) if n and eq[-1] > 0 else float("nan")
    t = metrics.mean_tstat(r, 1)  # non-overlapping periods

    def ratio(a, b):
        return float(a / b) if b and math.isfinite(b) and b > 0 else float("nan")

    return {"ann_return": float(mean * ppy) if n else float("nan"),
            "ann_vol": float(std * math.sqrt(ppy)) if n > 1 else float("nan"),
            "sharpe": ratio(mean, std) * math.sqrt(ppy), "sharpe_tstat": t["tstat"],
            "sharpe_tstat_naive": t["tstat_naive"], "tstat_method": t["tstat_method"], "hac_lag": t["hac_lag"],
            "sortino": ratio(mean, down) * math.sqrt(ppy),
            "cagr": cagr, "max_drawdown": max_dd, "calmar": ratio(cagr, abs(max_dd)),
            "win_rate": float((r > 0).mean()) if n else float("nan"),
            "total_return": float(eq[-1] - 1.0) if n else float("nan")}


def backtest(preds: pl.DataFrame, horizon: int | None = None, cfg: Any = None, *, market: Market | None = None,
             realistic: bool = False, **overrides: Any) -> BacktestResult:
    """Backtest `pred_{h}d` (see the module docstring for every definition): the ideal book, or with `realistic` the
    one that trades as the market allows. `market` (the dataset's sessions and prices) gives the calendar, the
    realised returns of names that stop trading and the realism inputs; without it the predictions' dates are taken
    as consecutive sessions, a missing label realises 0 and every realism rule is unavailable."""
    if horizon is not None:
        overrides["horizon"] = int(horizon)
    c = BacktestConfig.from_any(cfg, **overrides)
    h = int(c.horizon)
    pred, target = C.pred(h), C.target(h)
    _check_input(preds, pred, target)
    el = eligible(preds, h, c, market)
    if el.height == 0:
        raise DataError(f"predictions: no row has a {pred} value that passes the filters")

    # ---- schedule in sessions of the dataset's calendar ------------------------------------------------------------
    pred_dates = preds[C.DATE].cast(pl.Date).unique().sort().to_list()
    sessions = market.sessions if market is not None else pred_dates
    sched = rebalance_schedule(pred_dates, sessions, h)
    have = set(el[C.DATE].unique().to_list())
    missing = [d for d in sched if d not in have]
    if missing:
        log.warning("backtest: %d scheduled rebalance date(s) without eligible predictions skipped: %s",
                    len(missing), rows_hint(missing))
    sched = [d for d in sched if d in have]
    # realised: some label of the date exists, or (with the calendar) its exit session lies within the data
    labelled = set(el.filter(pl.col("y").is_not_null())[C.DATE].unique().to_list())
    if market is not None:
        pos = {d: i for i, d in enumerate(market.sessions)}
        last = len(market.sessions) - 1
        labelled |= {d for d in sched if pos[d] + market.entry_lag + h <= last}
    realised = [d for d in sched if d in labelled]
    unrealised = [d for d in sched if d not in set(realised)]
    el = el.filter(pl.col(C.DATE).is_in(pl.Series(realised, dtype=pl.Date).implode()))
    counts = el.group_by(C.DATE).len()
    small = counts.filter(pl.col("len") < c.min_names)
    if small.height:
        log.warning("backtest: %d rebalance date(s) with fewer than %d eligible names skipped: %s",
                    small.height, c.min_names, rows_hint(small.sort(C.DATE)[C.DATE].to_list()))
        el = el.join(small.select(C.DATE), on=C.DATE, how="anti")
    if el.height == 0:
        raise DataError(f"predictions: no rebalance date has {c.min_names} or more eligible names and a realised "
                        f"{h}-day period")
    reb = el[C.DATE].unique().sort().to_list()

    # ---- the book: what is known on t, then what the entry close allows ----------------------------------------
    realism = _realism_inputs(market, c, realistic)
    if c.method == "long_short":
        legs, passed = _ranked_legs(el, c, realism["borrow"]["applied"])
        book = _leg_weights(legs, c)
    else:
        book, passed = _mean_variance_weights(el, c), 0
        if realism["borrow"]["applied"]:
            ok = el.select(C.DATE, C.CODE, "borrowable")
            book = book.join(ok, on=[C.DATE, C.CODE], how="left")
            passed = book.filter((pl.col("side") == -1) & ~pl.col("borrowable").fill_null(False)).height
            book = book.filter((pl.col("side") == 1) | pl.col("borrowable").fill_null(False)).drop("borrowable")
    realism["borrow"]["short_names_passed_over"] = passed
    book = _execute(book, el, market, c, realism, reb, h)

    # ---- realised returns (carrying names that stop trading) ------------------------------------------------------
    real = _realise(el.select(C.DATE, C.CODE, "p", "y"), market, h)
    pos_ = book.join(real.select(C.DATE, C.CODE, "r", "status"), on=[C.DATE, C.CODE], how="left")
    pos_ = pos_.with_columns(w=pl.when(pl.col("status") == "unfilled").then(0.0).otherwise(pl.col("w")))
    legs_ = pos_.group_by(C.DATE).agg(
        n_long=(pl.col("side") == 1).sum().cast(pl.UInt32), n_short=(pl.col("side") == -1).sum().cast(pl.UInt32),
        long=(pl.col("w") * pl.col("r")).filter(pl.col("side") == 1).sum(),
        short=(-pl.col("w") * pl.col("r")).filter(pl.col("side") == -1).sum())
    q = int(c.quantiles)
    bench = (real.lazy().with_columns(bucket=metrics.bucket_expr("p", q).over(C.DATE))
             .group_by(C.DATE).agg(n=pl.len().cast(pl.UInt32),
                                   top_quantile=pl.col("r").filter(pl.col("bucket") == q).mean(),
                                   universe=pl.col("r").mean()).collect())

    # ---- turnover and both cost models ----------------------------------------------------------------------------
    dw = _turnover(pos_.select(C.DATE, C.CODE, "w"), reb)
    turn = dw.group_by(C.DATE).agg(turnover=pl.col("dw").abs().sum())
    impact, impact_how = _cost_spread_impact(dw, el, c)
    daily = (bench.join(legs_, on=C.DATE, how="inner").join(turn, on=C.DATE, how="left")
             .join(impact, on=C.DATE, how="left").sort(C.DATE)
             .with_columns(pl.col("turnover").fill_null(0.0), pl.col("cost_spread_impact").fill_null(0.0))
             .with_columns(gross=pl.col("long") - pl.col("short"), cost_flat=pl.col("turnover") * c.cost_bps * 1e-4)
             .with_columns(cost=pl.col(f"cost_{c.cost_model}"))
             .with_columns(net=pl.col("gross") - pl.col("cost"))
             .with_columns(equity=(1.0 + pl.col("net")).cum_prod())
             .with_columns(drawdown=pl.col("equity") / pl.max_horizontal(pl.col("equity").cum_max(), 1.0) - 1.0)
             .select(C.DATE, "n", "n_long", "n_short", "long", "short", "gross", "turnover", "cost_flat",
                     "cost_spread_impact", "cost", "net", "equity", "drawdown", "top_quantile", "universe"))
    if daily.height == 0:
        raise DataError("predictions: no rebalance date produced both a long and a short leg")

    summary = _summary(daily, c)
    gross = _summary(daily, c, "gross")
    summary.update({f"{k}_gross": v for k, v in gross.items() if k in ("ann_return", "sharpe", "max_drawdown")})
    by_cost = {}
    for m in COST_MODELS:
        s = _summary(daily.with_columns(net=pl.col("gross") - pl.col(f"cost_{m}")), c)
        by_cost[m] = {"sharpe": s["sharpe"], "ann_return": s["ann_return"], "max_drawdown": s["max_drawdown"],
                      "total_cost": float(daily[f"cost_{m}"].sum())}
    by_cost["spread_impact"]["charged"] = impact_how
    top, uni = _summary(daily, c, "top_quantile"), _summary(daily, c, "universe")
    status = pos_.group_by("status").len()
    positions = {s: int(status.filter(pl.col("status") == s)["len"].sum()) for s in STATUSES}
    summary.update({
        "avg_turnover": float(daily["turnover"].mean()), "total_cost": float(daily["cost"].sum()),
        "cost_model": c.cost_model, "by_cost_model": by_cost,
        "avg_long_return": float(daily["long"].mean()), "avg_short_return": float(daily["short"].mean()),
        "avg_names_long": float(daily["n_long"].mean()), "avg_names_short": float(daily["n_short"].mean()),
        "top_quantile_ann_return": top["ann_return"], "top_quantile_sharpe": top["sharpe"],
        "universe_ann_return": uni["ann_return"], "universe_sharpe": uni["sharpe"],
        "top_minus_universe_ann": top["ann_return"] - uni["ann_return"],
        "n_periods": daily.height, "n_skipped_dates": small.height, "n_missing_dates": len(missing),
        "n_unrealised_dates": len(unrealised), "horizon": h, "rebalance_every": h,
        "calendar": "dataset sessions" if market is not None else "prediction dates",
        "periods_per_year": c.periods_per_year / h, "mode": "realistic" if realistic else "ideal",
        "positions": {"total": pos_.height, **positions}, "realism": realism,
        "start": daily[C.DATE].min(), "end": daily[C.DATE].max(),
        "rows": preds.height, "rows_eligible": el.height,
    })
    quant = metrics.quantile_returns(real.select(C.DATE, "p", "r"), "p", "r", q)
    return BacktestResult(daily=daily, summary=summary, quantiles=quant, config=asdict(c),
                          positions=pos_.select(C.DATE, C.CODE, "side", "w", "r", "status").sort(C.DATE, C.CODE))


def _realism_inputs(market: Market | None, c: BacktestConfig, realistic: bool) -> dict:
    """Per rule: enabled (asked for), available (the data to apply it exists), applied, source."""
    src = market.sources if market is not None else {}

    def rule(enabled: bool, col_ok: bool, source: str | None) -> dict:
        return {"enabled": bool(realistic and enabled), "available": bool(col_ok),
                "applied": bool(realistic and enabled and col_ok), "source": source if col_ok else None}

    has = (lambda k: market is not None and market.has(k))  # noqa: E731
    return {"borrow": rule(c.borrow_only, has("borrowable"), src.get("borrow")),
            "price_limits": rule(c.price_limits, has("limit_up") and has("limit_down"), src.get("price_limits")),
            "round_lots": rule(c.lot_size > 0, has("close"), "Close at the entry session"),
            "capital": c.capital, "lot_size": c.lot_size}


def _execute(book: pl.DataFrame, el: pl.DataFrame, market: Market | None, c: BacktestConfig, realism: dict,
             reb: list[dt.date], h: int) -> pl.DataFrame:
    """The realistic rules that act at the entry close (price limits, round lots); counts go into `realism`."""
    lim, lots = realism["price_limits"], realism["round_lots"]
    lim.update(skipped_long=0, skipped_short=0)
    lots.update(skipped=0)
    if not (lim["applied"] or lots["applied"]):
        return book
    ex = _sessions_frame(market, reb, h).select(C.DATE, "e")
    cols = [k for k in ("close", "limit_up", "limit_down") if market.has(k)]
    at_e = market.rows.select(pl.col(C.DATE).alias("e"), C.CODE, *cols)
    b = book.join(ex, on=C.DATE, how="left").join(at_e, on=["e", C.CODE], how="left")
    if lim["applied"]:
        limited = (((pl.col("side") == 1) & pl.col("limit_up").fill_null(False))
                   | ((pl.col("side") == -1) & pl.col("limit_down").fill_null(False)))
        b = _new_entry_skips(b.with_columns(limited=limited), reb)
        skipped = b.filter(~pl.col("held"))
        lim.update(skipped_long=int((skipped["side"] == 1).sum()), skipped_short=int((skipped["side"] == -1).sum()))
        b = b.filter(pl.col("held")).drop("limited", "held")
    if lots["applied"]:
        lot_value = pl.col("close") * c.lot_size
        shares = ((pl.col("w").abs() * c.capital / lot_value).floor() * c.lot_size)
        b = b.with_columns(shares=shares)
        # no entry close: left as it is (the name is unfilled when realised); one lot above the weight: skipped
        too_big = pl.col("close").is_not_null() & (pl.col("shares") < c.lot_size)
        lots["skipped"] = int(b.filter(too_big).height)
        b = b.filter(~too_big).with_columns(
            w=pl.when(pl.col("close").is_not_null())
            .then(pl.col("side").cast(pl.Float64) * pl.col("shares") * pl.col("close") / c.capital)
            .otherwise(pl.col("w")))
        lots["avg_gross_invested"] = float(b.group_by(C.DATE).agg(g=pl.col("w").abs().sum())["g"].mean() or 0.0)
    return b.select(C.DATE, C.CODE, "side", "w")


def backtest_both(preds: pl.DataFrame, cfg: Any = None, market: Market | None = None, source: str = "",
                  **overrides: Any) -> tuple[dict[str, BacktestResult], str]:
    """The ideal and the realistic backtest of the same predictions, and which one is the headline
    (`BacktestConfig.headline(source)`)."""
    c = BacktestConfig.from_any(cfg, **overrides)
    out = {"ideal": backtest(preds, cfg=c, market=market), "realistic": backtest(preds, cfg=c, market=market,
                                                                                 realistic=True)}
    return out, c.headline(source)


def data_source(cfg: Any, dataset: Path | None) -> str:
    """The dataset's source: its manifest's `source` when recorded, else the config's `data.source`."""
    if dataset is not None and dataset.exists():
        from gogooku3.features.manifest import manifest_path

        mp = manifest_path(dataset)
        if mp.exists():
            from gogooku3.core.io import read_json

            src = str(read_json(mp).get("source") or "")
            if src:
                return src
    data = cfg.get("data") if hasattr(cfg, "get") else None
    return str(data.get("source", "")) if data is not None else ""


def market_for(cfg: Any, preds: pl.DataFrame, dataset: Path | None, vol_column: str = "volatility_20d"
               ) -> Market | None:
    """`load_market` for the predictions' codes from their first date, with the entry lag of the dataset's manifest
    and borrowability from `paths.raw_dir`; None when the dataset does not exist."""
    if dataset is None or not dataset.exists():
        return None
    from gogooku3.features.manifest import FeatureManifest, manifest_path

    lag = FeatureManifest.load(manifest_path(dataset)).entry_lag if manifest_path(dataset).exists() else int(
        cfg.labels.entry_lag)
    raw = cfg.paths.get("raw_dir") if "paths" in cfg else None
    start = preds[C.DATE].cast(pl.Date).min()
    return load_market(dataset, preds[C.CODE].cast(pl.String).unique(), start, lag, raw, vol_column)


def attach_dataset_columns(preds: pl.DataFrame, dataset_path: str | Path, columns: tuple[str, ...] = UNIVERSE_COLUMNS,
                           check_keys: bool = True) -> pl.DataFrame:
    """Join the dataset's `columns` (those it has and `preds` lacks) onto `preds` by (Date, Code).

    With `check_keys`, every (Date, Code) of `preds` must exist in the dataset (DataError naming a few otherwise).
    """
    path = Path(dataset_path)
    lf = pl.scan_parquet(path)
    schema = lf.collect_schema()
    for col in ("Date", "Code"):
        if col not in schema:
            raise SchemaError(f"{path}: missing column {col}")
    want = [c for c in dict.fromkeys(columns) if c in schema and c not in preds.columns]
    keys = preds.select("Date", "Code").with_columns(pl.col("Code").cast(pl.String), pl.col("Date").cast(pl.Date))
    lo, hi = keys["Date"].min(), keys["Date"].max()
    ds = (lf.filter(pl.col("Date").is_between(lo, hi)).select("Date", "Code", *want)
          .join(keys.lazy(), on=["Date", "Code"], how="semi").collect())
    if check_keys:
        unknown = keys.join(ds.select("Date", "Code"), on=["Date", "Code"], how="anti")
        if unknown.height:
            known_dates = set(ds["Date"].unique().to_list())
            bad_dates = sorted(set(unknown["Date"].to_list()) - known_dates)
            detail = (f"dates not in the dataset: {rows_hint(bad_dates)}" if bad_dates else
                      "e.g. " + rows_hint(f"{r['Date']} {r['Code']}" for r in unknown.head(5).iter_rows(named=True)))
            raise DataError(f"predictions: {unknown.height} (Date, Code) row(s) unknown to {path}; {detail}")
    if not want:
        return preds
    out = preds.with_columns(pl.col("Code").cast(pl.String), pl.col("Date").cast(pl.Date))
    return out.join(ds, on=["Date", "Code"], how="left")


def _read_predictions(path: Path) -> pl.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: predictions file not found")
    try:
        return pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - polars raises several types for corrupt files
        raise DataError(f"{path}: cannot read predictions parquet ({type(e).__name__})") from e


def run_backtest(cfg: Any, predictions_path: str | Path) -> dict:
    """`gogooku3 backtest --predictions PATH`: the ideal and the realistic backtest; writes
    output/portfolio/report_<ts>.json (`summary` = the headline one, both under `ideal` / `realistic`) + the
    headline's daily parquet.

    Checks the predictions' (Date, Code) against `paths.dataset` when it exists and takes the filter columns, the
    calendar and the prices from it. Nothing is written unless every check passes.
    """
    path = Path(predictions_path)
    preds = _read_predictions(path)
    c = BacktestConfig.from_any(cfg)
    _check_input(preds, C.pred(c.horizon), C.target(c.horizon))
    dataset = Path(cfg.paths.dataset) if "paths" in cfg else None
    vol_cols = (c.vol_column,) if c.method == "mean_variance" else ()
    if dataset is not None and dataset.exists():
        preds = attach_dataset_columns(preds, dataset, UNIVERSE_COLUMNS + vol_cols)
    elif dataset is not None:
        log.warning("backtest: dataset %s not found; (Date, Code) not checked against it, no prices for names that "
                    "stop trading, no realism inputs", dataset)
    market = market_for(cfg, preds, dataset, c.vol_column)
    both, headline = backtest_both(preds, c, market, data_source(cfg, dataset))
    res = both[headline]
    ts = timestamp()
    out_dir = Path(cfg.paths.output_dir) / "portfolio"
    daily_path = out_dir / f"daily_returns_{ts}.parquet"
    report_path = out_dir / f"report_{ts}.json"
    report = {"input": str(path), "rows": preds.height, "days": preds["Date"].n_unique(),
              "dataset": str(dataset) if dataset is not None else None, **res.to_dict(), "headline": headline,
              "ideal": both["ideal"].summary, "realistic": both["realistic"].summary,
              "daily_path": str(daily_path), "report_path": str(report_path)}
    write_parquet(res.daily, daily_path)
    write_json(report_path, report)
    s = res.summary
    log.info("backtest h=%dd (%s): Sharpe %.3f (net, sqrt(%g); ideal %.3f, realistic %.3f), ann return %.2f%%, "
             "max DD %.2f%%, avg turnover %.2f -> %s", c.horizon, headline, s["sharpe"], s["periods_per_year"],
             both["ideal"].summary["sharpe"], both["realistic"].summary["sharpe"], 100 * s["ann_return"],
             100 * s["max_drawdown"], s["avg_turnover"], report_path)
    return report


def summary_for_report(res: BacktestResult) -> Mapping[str, Any]:
    """The subset of a backtest summary shown in run reports."""
    keys = ("sharpe", "sharpe_tstat", "tstat_method", "hac_lag", "ann_return", "ann_vol", "sortino", "max_drawdown",
            "calmar", "win_rate", "avg_turnover", "sharpe_gross", "top_quantile_ann_return", "universe_ann_return",
            "n_periods", "positions", "by_cost_model")
    return {k: res.summary.get(k) for k in keys}


# ---- tear-sheet figures -----------------------------------------------------------------------------------------
def rolling_sharpe(daily: pl.DataFrame, window: int, c: BacktestConfig, col: str = "net") -> pl.DataFrame:
    """Date, sharpe: the Sharpe of the module docstring over the trailing `window` periods of `daily[col]` (null
    until `window` periods exist)."""
    ppy = c.periods_per_year / c.horizon
    r = pl.col(col).cast(pl.Float64)
    sd = r.rolling_std(window, min_samples=window)
    return daily.sort(C.DATE).select(
        C.DATE, sharpe=pl.when(sd > 0).then(r.rolling_mean(window, min_samples=window) / sd * math.sqrt(ppy)))


def topix_closes(raw_dir: str | Path | None) -> pl.DataFrame | None:
    """Date, close of the raw `topix` table (J-Quants indices; the synthetic market writes one too), or None."""
    if raw_dir is None:
        return None
    from gogooku3.sources.schema import scan_table

    lf = scan_table(raw_dir, "topix")
    if lf is None or "C" not in lf.collect_schema():
        return None
    return (lf.select(pl.col(C.DATE).cast(pl.Date), close=pl.col("C").cast(pl.Float64)).drop_nulls()
            .unique(C.DATE).sort(C.DATE).collect())


def benchmark_returns(res: BacktestResult, market: Market | None, topix: pl.DataFrame | None) -> pl.DataFrame:
    """Per rebalance of a backtest: Date, strategy (net), equal_weight (the eligible universe's equal-weight realised
    return over the same entry/exit closes) and topix (TOPIX close at exit / close at entry − 1; null without the
    index table or the dataset's calendar)."""
    d = res.daily.select(C.DATE, strategy=pl.col("net"), equal_weight=pl.col("universe"))
    if topix is None or market is None:
        return d.with_columns(topix=pl.lit(None, dtype=pl.Float64))
    ex = _sessions_frame(market, d[C.DATE].to_list(), int(res.summary["horizon"]))
    px = topix.select(C.DATE, "close")
    ex = (ex.join(px.rename({C.DATE: "e", "close": "ce"}), on="e", how="left")
          .join(px.rename({C.DATE: "x", "close": "cx"}), on="x", how="left")
          .select(C.DATE, topix=pl.col("cx") / pl.col("ce") - 1.0))
    return d.join(ex, on=C.DATE, how="left")


def relative_figures(strategy: pl.Series, benchmark: pl.Series, periods_per_year: float) -> dict:
    """Benchmark-relative figures of per-period returns on the periods both have: beta = cov(s, b) / var(b);
    alpha = (mean(s) − beta · mean(b)) · P (annualised OLS intercept); tracking_error = std(s − b) · √P;
    information_ratio = mean(s − b) · P / tracking_error; correlation; active_return = mean(s − b) · P; n."""
    j = pl.DataFrame({"s": strategy.cast(pl.Float64), "b": benchmark.cast(pl.Float64)}).drop_nulls().drop_nans()
    n, P = j.height, float(periods_per_year)
    nan = float("nan")
    if n < 3:
        return {"alpha": nan, "beta": nan, "tracking_error": nan, "information_ratio": nan, "correlation": nan,
                "active_return": nan, "n": n}
    s, b = j["s"], j["b"]
    var_b = float(b.var())
    beta = float(pl.cov(s, b, eager=True).item()) / var_b if var_b > 0 else nan
    active = s - b
    te = float(active.std()) * math.sqrt(P)
    act = float(active.mean()) * P
    return {"alpha": (float(s.mean()) - beta * float(b.mean())) * P if math.isfinite(beta) else nan, "beta": beta,
            "tracking_error": te, "information_ratio": act / te if te > 0 else nan,
            "correlation": float(j.select(pl.corr("s", "b")).item()), "active_return": act, "n": n}
