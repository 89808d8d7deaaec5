"""Financial statements (spec §1.4, 17 features) and the shares-based volume columns.

Effective date: the disclosure day itself when it is a trading session and the statement came out before that
session's close (15:00 JST; 15:30 from 2024-11-05; 11:30 on half days), otherwise the next trading session; no time
→ the next session. Statements are attached with an as-of backward join by Code, so a row sees only statements
effective on or before its Date. YoY compares with the same quarter of the previous fiscal year as it was known at
the disclosure; revisions compare with the stock's previous disclosure.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.calendar import TradingCalendar
from gogooku3.features.common import EPS, Block, c, div, flag, narrow, per_code

NUMS = ("Sales", "OP", "NP", "EPS", "Eq", "TA", "FOP", "FNP", "FEPS", "FDivAnn", "ShOut")
TRUE_WORDS = ["true", "1", "yes", "y", "t"]
RATIOS = (
    "stmt_yoy_sales",
    "stmt_yoy_op",
    "stmt_yoy_np",
    "stmt_opm",
    "stmt_npm",
    "stmt_progress_op",
    "stmt_progress_np",
    "stmt_rev_fore_op",
    "stmt_rev_fore_np",
    "stmt_rev_fore_eps",
    "stmt_rev_div_fore",
    "stmt_roe",
    "stmt_roa",
)
FEATURES = (*RATIOS, "stmt_change_in_est", "stmt_nc_flag", "stmt_imp_statement", "stmt_days_since_statement")


def _time(s: str) -> dt.time:
    return dt.time.fromisoformat(s if s.count(":") == 2 else f"{s}:00")


def _parse_time(col: str) -> pl.Expr:
    s = c(col).cast(pl.Utf8).str.strip_chars()
    return pl.coalesce(s.str.to_time("%H:%M:%S", strict=False), s.str.to_time("%H:%M", strict=False))


def effective_dates(st: pl.DataFrame, cal: TradingCalendar, s: dict) -> pl.Series:
    """Effective session of each statement (null when past the calendar's end)."""
    close = pl.lit(_time(s["close_time"]))
    for since, t in sorted((str(k), v) for k, v in s["close_time_changes"].items()):
        close = pl.when(c("DiscDate") >= dt.date.fromisoformat(since)).then(pl.lit(_time(t))).otherwise(close)
    if cal.half_days:
        close = (
            pl.when(c("DiscDate").is_in(sorted(cal.half_days)))
            .then(pl.lit(_time(s["half_day_close_time"])))
            .otherwise(close)
        )
    t = _parse_time("DiscTime") if "DiscTime" in st.columns else pl.lit(None, pl.Time)
    frame = pl.DataFrame(
        {"DiscDate": st["DiscDate"], "_sess": cal.is_session(st["DiscDate"]), "_next": cal.next_after(st["DiscDate"])}
    )
    if "DiscTime" in st.columns:
        frame = frame.with_columns(st["DiscTime"])
    same_day = c("_sess") & (t < close).fill_null(False)
    return frame.select(pl.when(same_day).then(c("DiscDate")).otherwise(c("_next")).alias("_eff")).to_series()


def shares_net(cols) -> pl.Expr:
    """`_shout`: issued shares net of treasury stock (ShOut − TrShFY, J-Quants) where the statement reports it, else
    the issued shares: the count market cap and turnover rate are computed on."""
    if "TrShFY" not in cols:
        return c("ShOut").alias("_shout")
    net = c("ShOut") - c("TrShFY").cast(pl.Float64)
    return pl.when(c("TrShFY").is_not_null() & (net > 0)).then(net).otherwise(c("ShOut")).alias("_shout")


def statement_table(st: pl.DataFrame, cal: TradingCalendar, s: dict) -> pl.DataFrame:
    """One row per (Code, effective date) with the statement features computed at disclosure."""
    st = st.with_columns(
        [c(x).cast(pl.Float64) if x in st.columns else pl.lit(None, pl.Float64).alias(x) for x in NUMS]
    )
    for x in ("CurPerType", "DiscTime", "ChgAcEst", "RetroRst"):
        if x not in st.columns:
            st = st.with_columns(pl.lit(None, pl.Utf8).alias(x))
    for x in ("CurFYSt", "CurFYEn"):
        if x not in st.columns:
            st = st.with_columns(pl.lit(None, pl.Date).alias(x))
    st = st.with_columns(effective_dates(st, cal, s).alias("_eff"))
    ts = c("DiscDate").cast(pl.Datetime("us")) + pl.coalesce(_parse_time("DiscTime"), pl.lit(dt.time(23, 59, 59))).cast(
        pl.Duration("us")
    )
    per = c("CurPerType").cast(pl.Utf8).str.to_uppercase().str.strip_chars()
    st = (
        st.with_columns(
            ts.alias("_ts"),
            per.replace_strict(
                {"1Q": 1, "2Q": 2, "3Q": 3, "4Q": 4, "FY": 4}, default=None, return_dtype=pl.Int32
            ).alias("_q"),
            pl.coalesce(c("CurFYSt").dt.year(), c("CurFYEn").dt.year() - 1).cast(pl.Int32).alias("_fy"),
        )
        .filter(c("_eff").is_not_null())
        .sort(C.CODE, "_ts")
    )
    prev = st.select(
        C.CODE, "_q", (c("_fy") + 1).alias("_fy"), "_ts", *[c(x).alias(f"_p{x}") for x in ("Sales", "OP", "NP")]
    )
    prev = prev.filter(c("_q").is_not_null() & c("_fy").is_not_null()).sort(C.CODE, "_q", "_fy", "_ts")
    st = (
        st.sort(C.CODE, "_q", "_fy", "_ts")
        .join_asof(prev, on="_ts", by=[C.CODE, "_q", "_fy"], strategy="backward", check_sortedness=False)
        .sort(C.CODE, "_ts")
    )

    def yoy(x: str) -> pl.Expr:
        return (c(x) - c(f"_p{x}")) / (c(f"_p{x}").abs() + EPS)

    def rev(x: str) -> pl.Expr:
        p = per_code(c(x).shift(1))
        return (c(x) - p) / (p.abs() + EPS)

    truthy = lambda x: c(x).cast(pl.Utf8).str.to_lowercase().str.strip_chars().is_in(TRUE_WORDS)
    feats = {
        "stmt_yoy_sales": yoy("Sales"),
        "stmt_yoy_op": yoy("OP"),
        "stmt_yoy_np": yoy("NP"),
        "stmt_opm": div(c("OP"), c("Sales")),
        "stmt_npm": div(c("NP"), c("Sales")),
        "stmt_progress_op": div(c("OP"), c("FOP")),
        "stmt_progress_np": div(c("NP"), c("FNP")),
        "stmt_rev_fore_op": rev("FOP"),
        "stmt_rev_fore_np": rev("FNP"),
        "stmt_rev_fore_eps": rev("FEPS"),
        "stmt_rev_div_fore": rev("FDivAnn"),
        "stmt_roe": div(c("NP"), c("Eq")),
        "stmt_roa": div(c("NP"), c("TA")),
    }
    clip = s["ratio_clip"]
    out = st.with_columns(
        *[(e.clip(-clip, clip) if clip else e).alias(n) for n, e in feats.items()],
        flag(truthy("ChgAcEst")).alias("_chg"),
        flag(truthy("RetroRst")).alias("_nc"),
    )
    # the latest disclosure wins when several become effective on the same session
    out = out.unique([C.CODE, "_eff"], keep="last", maintain_order=True).select(
        C.CODE, c("_eff").alias("_st_eff"), *RATIOS, "_chg", "_nc", shares_net(out.columns)
    )
    return narrow(out, RATIOS).sort(C.CODE, "_st_eff")


def attach(
    lf: pl.LazyFrame, st: pl.DataFrame | None, cal: TradingCalendar, s: dict, enabled: bool
) -> tuple[pl.LazyFrame, Block]:
    b = Block("statements")
    if st is None:
        b.skip("no statements table")
        return lf, b
    table = statement_table(st, cal, s)
    lf = lf.join_asof(
        table.lazy(), left_on=C.DATE, right_on="_st_eff", by=C.CODE, strategy="backward", check_sortedness=False
    )
    if not enabled:
        return lf, b
    days = (c(C.DATE) - c("_st_eff")).dt.total_days()
    for n in RATIOS:
        b.add(n, c(n))
    b.add("stmt_change_in_est", flag(c("_chg") == 1), is_flag=True)
    b.add("stmt_nc_flag", flag(c("_nc") == 1), is_flag=True)
    b.add("stmt_imp_statement", flag(c(C.DATE) == c("_st_eff")), is_flag=True)
    b.add("stmt_days_since_statement", days.cast(pl.Float64))
    b.add("_stmt_fresh", (days >= 0) & (days <= s["stale_days"]))
    return lf, b


def shares_block(avail: set[str]) -> Block:
    """shares_outstanding (as-of ShOut net of treasury shares TrShFY where reported, carried across later splits),
    turnover_rate and market_cap (raw C × shares)."""
    b = Block("volume")
    # cumulative split factor up to each row (known at t): shares reported before a split are scaled by it
    cf = per_code(c("_AF").fill_null(1.0).cum_prod()) if "_AF" in avail else pl.lit(1.0)
    b.add("_cf", cf)
    b.next_stage()
    first = c("_st_eff").is_not_null() & (c("_st_eff") != per_code(c("_st_eff").shift(1))).fill_null(True)
    b.add("_cf_at_stmt", per_code(pl.when(first).then(c("_cf")).forward_fill()))
    b.next_stage()
    b.add("shares_outstanding", c("_shout") * c("_cf_at_stmt") / c("_cf"))
    b.next_stage()
    # raw price/volume, i.e. the day's basis (without raw C the adjusted close: `_kp` is then 1)
    px = c("_RawC") if "_RawC" in avail else c(C.CLOSE) * c("_kp")
    vo = c("_RawVo") if "_RawVo" in avail else (c(C.VOLUME) * c("_kv") if C.VOLUME in avail else None)
    if vo is None:
        b.skip("turnover_rate needs Vo/AdjVo")
    else:
        b.add("turnover_rate", div(vo, c("shares_outstanding")))
    b.add("market_cap", px * c("shares_outstanding"))
    return b
