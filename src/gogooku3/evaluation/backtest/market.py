"""What a backtest reads besides the predictions: the dataset's calendar, prices and trading inputs (`Market`),
the TSE price-limit table, borrowability from margin_interest, and the dataset columns joined onto predictions."""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import DataError, SchemaError, rows_hint
from gogooku3.core.scalars import as_date
from gogooku3.core.tse_ticks import TICK_BOUNDS, TICKS

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)

UNIVERSE_COLUMNS = (C.CLOSE, C.DOLLAR_VOLUME, C.VOLUME_MA_20)
MARKET_COLUMNS = (
    C.CLOSE,
    C.OPEN,
    C.HIGH,
    C.LOW,
    C.RETURNS_1D,
    "UL",
    "LL",
    C.VOLUME_MA_20,
    C.DOLLAR_VOLUME,
    "is_borrowable",
)
BORROWABLE_ISS_TYPE = "2"  # J-Quants margin_interest IssType: 1 信用銘柄 (margin only), 2 貸借銘柄 (loan-eligible)

# TSE daily price limits (yen) by the base price (the previous close): below BOUNDS[i] the limit is LIMITS[i];
# from the last bound on, LIMITS[-1] (JPX "Daily Price Limits" table).
LIMIT_BOUNDS = (
    100,
    200,
    500,
    700,
    1_000,
    1_500,
    2_000,
    3_000,
    5_000,
    7_000,
    10_000,
    15_000,
    20_000,
    30_000,
    50_000,
    70_000,
    100_000,
    150_000,
    200_000,
    300_000,
    500_000,
    700_000,
    1_000_000,
    1_500_000,
    2_000_000,
    3_000_000,
    5_000_000,
    7_000_000,
    10_000_000,
    15_000_000,
    20_000_000,
    30_000_000,
    50_000_000,
)
LIMITS = (
    30,
    50,
    80,
    100,
    150,
    300,
    400,
    500,
    700,
    1_000,
    1_500,
    3_000,
    4_000,
    5_000,
    7_000,
    10_000,
    15_000,
    30_000,
    40_000,
    50_000,
    70_000,
    100_000,
    150_000,
    300_000,
    400_000,
    500_000,
    700_000,
    1_000_000,
    1_500_000,
    3_000_000,
    4_000_000,
    5_000_000,
    7_000_000,
    10_000_000,
)
LIMIT_TOL = 1e-4  # a close within this relative distance of the limit price is at the limit

CS_K = 3.0 - 2.0 * math.sqrt(2.0)  # Corwin-Schultz (2012) constant 3 - 2*sqrt(2)


@dataclass
class Market:
    """The dataset's sessions and, per (Date, Code) row of the dataset, what trading needs.

    `rows` columns (each optional but Date, Code): px (adjusted price index: ratios are split-correct returns), close
    (Close in the day's own share basis), limit_up / limit_down (Boolean, at that close), borrowable (Boolean, known
    on that date), adv (yen), vol (daily σ), half_spread (relative half bid-ask spread known at that close: the
    Corwin-Schultz estimate, floored at half a tick; `half_spread_from_hlc`). `sources` says where each came from (or
    why it is unavailable).
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


def tick_size(price: pl.Expr) -> pl.Expr:
    """The TSE tick (yen) at `price` (yen): `core.tse_ticks` (table 01; a bound itself is in the lower band)."""
    idx = pl.lit(pl.Series(TICK_BOUNDS, dtype=pl.Float64)).search_sorted(price.cast(pl.Float64), side="left")
    return pl.lit(pl.Series(TICKS, dtype=pl.Float64)).gather(idx)


def corwin_schultz(h0: pl.Expr, l0: pl.Expr, h1: pl.Expr, l1: pl.Expr) -> pl.Expr:
    """The Corwin-Schultz (2012, J. Finance 67(2), eq. 14) full relative spread S from two consecutive days' highs and
    lows: β = ln(H0/L0)² + ln(H1/L1)², γ = ln(max(H0,H1)/min(L0,L1))², α = (√(2β) − √β)/(3 − 2√2) − √(γ/(3 − 2√2)),
    S = 2(e^α − 1)/(1 + e^α) (negative where the range is all volatility: clip the average, not each day)."""
    beta = (h0 / l0).log().pow(2) + (h1 / l1).log().pow(2)
    gamma = (pl.max_horizontal(h0, h1) / pl.min_horizontal(l0, l1)).log().pow(2)
    alpha = ((2.0 * beta).sqrt() - beta.sqrt()) / CS_K - (gamma / CS_K).sqrt()
    return 2.0 * (alpha.exp() - 1.0) / (1.0 + alpha.exp())


def half_spread_from_hlc(window: int, with_open: bool = False) -> pl.Expr:
    """Per row of a (Code, Date)-sorted frame with High, Low, Close (day basis), returns_1d and, `with_open`, Open:
    half the mean of the last `window` two-day Corwin-Schultz estimates (pairs ending on the row, so known at its
    close), the mean clipped at 0, floored at half a tick of the Close (`tick_size`). Averaging before clipping:
    clipping each noisy two-day estimate at 0 first biased the estimate up 4x on a 5 bps spread (synthetic market,
    est 22 vs 5 bps). The previous day is put into today's share basis with the split-correct previous close
    Close/(1 + returns_1d). Overnight moves widen the two-day range only: with Open, today's high and low are shifted
    by the whole overnight gap (previous close / Open; synthetic market: medians within 5 % of the planted Standard
    and Growth spreads, 40 and 30 bps, vs 35 % of them without); without Open, as Corwin-Schultz (2012, §III.B) do,
    only a day whose low is above the previous close (high below it) is shifted by the gap."""
    close = pl.col(C.CLOSE).cast(pl.Float64)
    prev_c = close / (1.0 + pl.col(C.RETURNS_1D).cast(pl.Float64).fill_null(0.0))
    k = prev_c / close.shift(1).over(C.CODE)  # previous day's basis -> today's
    h0 = pl.col(C.HIGH).cast(pl.Float64).shift(1).over(C.CODE) * k
    l0 = pl.col(C.LOW).cast(pl.Float64).shift(1).over(C.CODE) * k
    h1, l1 = pl.col(C.HIGH).cast(pl.Float64), pl.col(C.LOW).cast(pl.Float64)
    if with_open:  # the whole overnight move removed: day 1 continues from the previous close
        g = prev_c / pl.col(C.OPEN).cast(pl.Float64)
        s = corwin_schultz(h0, l0, h1 * g, l1 * g)
    else:
        gap = pl.when(l1 > prev_c).then(l1 - prev_c).when(h1 < prev_c).then(h1 - prev_c).otherwise(0.0)
        s = corwin_schultz(h0, l0, h1 - gap, l1 - gap)
    est = s.rolling_mean(window, min_samples=max(1, window // 2)).over(C.CODE).clip(lower_bound=0.0) / 2.0
    floor = tick_size(close) / (2.0 * close)
    return pl.max_horizontal(est, floor)


def _flag(col: str, dtype: pl.DataType) -> pl.Expr:
    """A J-Quants style 0/1 flag column (string, integer or Boolean) as Boolean."""
    if dtype == pl.Boolean:
        return pl.col(col)
    if dtype in (pl.String, pl.Utf8):
        return pl.col(col).str.strip_chars().str.to_lowercase().is_in(["1", "true"])
    return pl.col(col).cast(pl.Float64) == 1.0


def market_from_frame(
    df: pl.DataFrame,
    sessions: list[dt.date] | None = None,
    entry_lag: int = 1,
    vol_column: str = C.VOLATILITY_20D,
    borrow: pl.DataFrame | None = None,
    spread_window: int = 21,
) -> Market:
    """A `Market` from dataset rows (Date, Code and any of Close, High, Low, returns_1d, UL, LL, volume_ma_20,
    dollar_volume, is_borrowable, `vol_column`); `sessions` default to the frame's dates; `borrow` (Date, Code,
    borrowable) replaces the dataset's is_borrowable; `spread_window` sessions of Corwin-Schultz estimates make the
    half-spread (without High/Low: the tick floor alone, from Close)."""
    cols = set(df.columns)
    d = df.with_columns(pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String)).sort(C.CODE, C.DATE)
    out: list[pl.Expr] = []
    src: dict[str, str | None] = {}
    if C.RETURNS_1D in cols:
        # an adjusted price index from the row-to-row adjusted return (split-correct; the base cancels in ratios)
        out.append(
            (1.0 + pl.col(C.RETURNS_1D).cast(pl.Float64).fill_nan(None).fill_null(0.0))
            .cum_prod()
            .over(C.CODE)
            .alias("px")
        )
        src["prices"] = "returns_1d (adjusted)"
    elif C.CLOSE in cols:
        out.append(pl.col(C.CLOSE).cast(pl.Float64).alias("px"))
        src["prices"] = "Close (not split-adjusted unless the source's is)"
        log.warning("backtest: the dataset has no returns_1d; carried returns use Close, which a split would distort")
    else:
        src["prices"] = None
    if C.CLOSE in cols:
        out.append(pl.col(C.CLOSE).cast(pl.Float64).alias("close"))
    if "UL" in cols and "LL" in cols:
        out += [_flag("UL", df.schema["UL"]).alias("limit_up"), _flag("LL", df.schema["LL"]).alias("limit_down")]
        src["price_limits"] = "UL/LL flags"
    elif C.CLOSE in cols and C.RETURNS_1D in cols:
        close = pl.col(C.CLOSE).cast(pl.Float64)
        ref = close / (1.0 + pl.col(C.RETURNS_1D).cast(pl.Float64))  # previous close in today's share basis
        lim = price_limit(ref)
        out += [
            (close >= ref + lim - LIMIT_TOL * ref).fill_null(False).alias("limit_up"),
            (close <= ref - lim + LIMIT_TOL * ref).fill_null(False).alias("limit_down"),
        ]
        src["price_limits"] = "TSE price-limit table"
    else:
        src["price_limits"] = None
    if C.VOLUME_MA_20 in cols and C.CLOSE in cols:
        out.append((pl.col(C.VOLUME_MA_20).cast(pl.Float64) * pl.col(C.CLOSE).cast(pl.Float64)).alias("adv"))
    elif C.DOLLAR_VOLUME in cols:
        out.append(pl.col(C.DOLLAR_VOLUME).cast(pl.Float64).alias("adv"))
    src["adv"] = (
        "volume_ma_20 x Close"
        if C.VOLUME_MA_20 in cols and C.CLOSE in cols
        else (C.DOLLAR_VOLUME if C.DOLLAR_VOLUME in cols else None)
    )
    if vol_column in cols:
        out.append((pl.col(vol_column).cast(pl.Float64) / math.sqrt(252)).alias("vol"))
    if {C.HIGH, C.LOW, C.CLOSE, C.RETURNS_1D} <= cols:
        out.append(half_spread_from_hlc(int(spread_window), C.OPEN in cols).alias("half_spread"))
        src["half_spread"] = f"Corwin-Schultz over {int(spread_window)} sessions, floored at half a TSE tick"
    elif C.CLOSE in cols:
        out.append((tick_size(pl.col(C.CLOSE)) / (2.0 * pl.col(C.CLOSE).cast(pl.Float64))).alias("half_spread"))
        src["half_spread"] = "half a TSE tick (no High/Low for Corwin-Schultz)"
    else:
        src["half_spread"] = None
    if borrow is None and "is_borrowable" in cols:
        out.append((pl.col("is_borrowable").cast(pl.Float64) == 1.0).fill_null(False).alias("borrowable"))
        src["borrow"] = "dataset is_borrowable"
    rows = d.select(C.DATE, C.CODE, *out)
    if borrow is not None:
        rows = rows.join(borrow.select(C.DATE, C.CODE, "borrowable"), on=[C.DATE, C.CODE], how="left").with_columns(
            pl.col("borrowable").fill_null(False)
        )
        src["borrow"] = "margin_interest.IssType"
    src.setdefault("borrow", None)
    sess = sorted(set(d[C.DATE].to_list())) if sessions is None else sorted(sessions)
    return Market(sess, rows, int(entry_lag), src)


def borrowable_from_margin(
    margin: pl.LazyFrame, keys: pl.DataFrame, sessions: list[dt.date], pub_lag_sessions: int = 3
) -> pl.DataFrame | None:
    """Date, Code, borrowable for `keys`: IssType == "2" in the latest margin_interest row effective by Date (from the
    session after PubDate; without PubDate, `pub_lag_sessions` sessions after the week's Date, as the builder does).
    None when the table has no IssType."""
    schema = margin.collect_schema()
    if "IssType" not in schema or C.CODE not in schema or C.DATE not in schema:
        return None
    sess = pl.Series("s", sessions, dtype=pl.Date)
    pub = pl.col("PubDate").cast(pl.Date) if "PubDate" in schema else pl.lit(None, pl.Date)
    mi = margin.select(
        pl.col(C.CODE).cast(pl.String),
        pl.col(C.DATE).cast(pl.Date).alias("_week"),
        pub.alias("_pub"),
        pl.col("IssType").cast(pl.String).alias("_iss"),
    ).collect()
    n = len(sessions)
    after_pub = pl.lit(sess).search_sorted(pl.col("_pub"), side="right")
    on_week = pl.lit(sess).search_sorted(pl.col("_week"), side="left") + pub_lag_sessions
    pos = pl.when(pl.col("_pub").is_not_null()).then(after_pub).otherwise(on_week)
    mi = (
        mi.with_columns(_pos=pos)
        .filter(pl.col("_pos") < n)
        .with_columns(_eff=pl.lit(sess).gather(pl.col("_pos").cast(pl.Int64)))
        .sort("_eff")
        .select(C.CODE, "_eff", "_iss")
    )
    k = keys.select(pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String)).unique().sort(C.DATE)
    j = k.join_asof(mi, left_on=C.DATE, right_on="_eff", by=C.CODE, strategy="backward", check_sortedness=False)
    return j.select(C.DATE, C.CODE, borrowable=(pl.col("_iss") == BORROWABLE_ISS_TYPE).fill_null(False))


def load_market(
    dataset_path: str | Path,
    codes: pl.Series | list[str],
    start: dt.date,
    entry_lag: int = 1,
    raw_dir: str | Path | None = None,
    vol_column: str = C.VOLATILITY_20D,
    spread_window: int = 21,
) -> Market:
    """The `Market` of the dataset's rows of `codes` from `start` on (sessions: every dataset date from `start`),
    borrowability from `<raw_dir>/margin_interest` (IssType, point in time) when present, else the dataset's flag."""
    path = Path(dataset_path)
    lf = pl.scan_parquet(path)
    schema = lf.collect_schema()
    want = [c for c in (*MARKET_COLUMNS, vol_column) if c in schema]
    lf = lf.filter(pl.col(C.DATE).cast(pl.Date) >= start)
    sessions = lf.select(pl.col(C.DATE).cast(pl.Date).unique()).collect()[C.DATE].sort().to_list()
    codes = pl.Series(C.CODE, list(codes), dtype=pl.String).unique()
    df = (
        lf.select(C.DATE, C.CODE, *dict.fromkeys(want))
        .with_columns(pl.col(C.CODE).cast(pl.String))
        .filter(pl.col(C.CODE).is_in(codes.implode()))
        .collect()
    )
    borrow = None
    if raw_dir is not None:
        from gogooku3.sources.schema import scan_table

        mi = scan_table(raw_dir, "margin_interest")
        if mi is not None:
            borrow = borrowable_from_margin(mi, df.select(C.DATE, C.CODE), sessions)
    return market_from_frame(df, sessions, entry_lag, vol_column, borrow, spread_window)


def sessions_frame(market: Market, dates: list[dt.date], h: int) -> pl.DataFrame:
    """Date, e (entry session), x (exit session) per signal date (null past the calendar's end)."""
    s = market.sessions
    pos = {d: i for i, d in enumerate(s)}
    lag, n = market.entry_lag, len(s)
    rows = [
        (d, s[pos[d] + lag] if pos[d] + lag < n else None, s[pos[d] + lag + h] if pos[d] + lag + h < n else None)
        for d in dates
    ]
    return pl.DataFrame(rows, schema={C.DATE: pl.Date, "e": pl.Date, "x": pl.Date}, orient="row")


def data_source(cfg: Settings, dataset: Path | None) -> str:
    """The dataset's source: its manifest's `source` when recorded, else the config's `data.source`."""
    if dataset is not None and dataset.exists():
        from gogooku3.features.manifest import manifest_path

        mp = manifest_path(dataset)
        if mp.exists():
            from gogooku3.core.io import read_json

            src = str(read_json(mp).get("source") or "")
            if src:
                return src
    return cfg.data.source


def market_for(cfg: Settings, preds: pl.DataFrame, dataset: Path | None, vol_column: str) -> Market | None:
    """`load_market` for the predictions' codes from their first date, with the entry lag of the dataset's manifest
    and borrowability from `paths.raw_dir`; None when the dataset does not exist."""
    if dataset is None or not dataset.exists():
        return None
    from gogooku3.features.manifest import FeatureManifest

    lag = FeatureManifest.for_dataset(dataset).entry_lag  # a fact of the dataset (labels.* is build-only)
    raw = cfg.paths.raw_dir
    start = as_date(preds[C.DATE].cast(pl.Date).min())
    codes = preds[C.CODE].cast(pl.String).unique()
    return load_market(dataset, codes, start, lag, raw, vol_column, cfg.portfolio.spread_window)


def attach_dataset_columns(
    preds: pl.DataFrame, dataset_path: str | Path, columns: tuple[str, ...] = UNIVERSE_COLUMNS, check_keys: bool = True
) -> pl.DataFrame:
    """Join the dataset's `columns` (those it has and `preds` lacks) onto `preds` by (Date, Code).

    With `check_keys`, every (Date, Code) of `preds` must exist in the dataset (DataError naming a few otherwise).
    """
    path = Path(dataset_path)
    lf = pl.scan_parquet(path)
    schema = lf.collect_schema()
    for col in (C.DATE, C.CODE):
        if col not in schema:
            raise SchemaError(f"{path}: missing column {col}")
    want = [c for c in dict.fromkeys(columns) if c in schema and c not in preds.columns]
    keys = preds.select(C.DATE, C.CODE).with_columns(pl.col(C.CODE).cast(pl.String), pl.col(C.DATE).cast(pl.Date))
    lo, hi = keys[C.DATE].min(), keys[C.DATE].max()
    ds = (
        lf.filter(pl.col(C.DATE).is_between(lo, hi))
        .select(C.DATE, C.CODE, *want)
        .join(keys.lazy(), on=[C.DATE, C.CODE], how="semi")
        .collect()
    )
    if check_keys:
        unknown = keys.join(ds.select(C.DATE, C.CODE), on=[C.DATE, C.CODE], how="anti")
        if unknown.height:
            known_dates = set(ds[C.DATE].unique().to_list())
            bad_dates = sorted(set(unknown[C.DATE].to_list()) - known_dates)
            detail = (
                f"dates not in the dataset: {rows_hint(bad_dates)}"
                if bad_dates
                else "e.g. " + rows_hint(f"{r[C.DATE]} {r[C.CODE]}" for r in unknown.head(5).iter_rows(named=True))
            )
            raise DataError(f"predictions: {unknown.height} (Date, Code) row(s) unknown to {path}; {detail}")
    if not want:
        return preds
    out = preds.with_columns(pl.col(C.CODE).cast(pl.String), pl.col(C.DATE).cast(pl.Date))
    return out.join(ds, on=[C.DATE, C.CODE], how="left")
