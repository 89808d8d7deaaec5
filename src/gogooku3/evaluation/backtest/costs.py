"""Trading and what it costs: the idealised book's flat cost (`cost_flat`) and the realistic book's TSE cost model
(`cost_spread_impact`), with its fills (participation cap, price-limit locks, halts).

Interface of the TSE cost model (any book that trades once a session; the engine's overlapping cohorts are one):

``priced_at_entry(market, el, dates)`` -> mkt: Date, Code, at_e and the values that price a trade decided on Date
and executed at the close of its entry session e = Date + entry_lag: ``adv`` (yen ADV), ``vol`` (daily σ),
``half_spread`` (relative; Corwin-Schultz floored at half a tick, `market.half_spread_from_hlc`), ``limit_up`` /
``limit_down`` (the entry close is locked), ``at_e`` (the name has a row on e, i.e. it trades). Without a market:
el's adv/vol on Date and no at_e (every name trades).

``fill_trades(trades, growth, mkt, capital, c, limits)`` -> (filled, deviation, unfilled). trades: Date, Code, dw, the
signed change of weight (units of capital) the book wants on each Date; growth: Date, Code, g = P(Date)/P(previous
Date) of the names (null: 1), which defines the Dates taken, in order. The book actually held differs from the wanted
one by D (held − wanted, per name, units of capital); D drifts with the price (D·g) and each Date trades
``want = dw − D``, i.e. what the book wants plus the retry of everything not yet filled:

- a name with no row on e does not trade (halted or delisted): want stays unfilled;
- with ``limits``, a buy at a limit-up close or a sell at a limit-down close does not fill (no counterparty at the
  lock; exits included: a locked exit keeps the position, which earns until a later session fills it);
- the fill is capped at ``participation_cap`` · ADV yen (a missing ADV takes the Date's median; no ADV: no cap).

Then D ← D + fill − dw = −(want − fill). filled: Date, Code, dw (what traded); deviation: Date, Code, D after the
Date's trading (nonzero only); unfilled: Date, Code, dw (want − fill), reason ("halt", "limit" or "cap").

``session_costs(filled, shorts, mkt, capital, c)`` -> Date, commission, spread, impact, borrow, total (units of
capital): per fill |dw| · (commission_bps·1e-4 + half_spread + Y·σ·√(|dw|·capital / ADV)); per Date borrow =
borrow_fee_annual / sessions_per_year · (short gross held that session, `shorts`: Date, short). A missing half_spread
takes ``half_spread_bps``, a missing σ or ADV the Date's median (no σ column: 2 % a day; no ADV column: no impact).

``cost_spread_impact`` (the engine's call) adds, for the realistic book, the *opportunity cost* of what did not fill
(the implementation-shortfall term, Perold 1988): −Σ D·(g_next − 1) per Date, the P&L the held-but-unwanted (or
wanted-but-unheld) positions made on the next row. So net = the wanted book's gross − (explicit costs + opportunity
cost) is the P&L of the book actually held, and ``turnover``/gross stay the wanted book's.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.scalars import as_float
from gogooku3.evaluation.backtest.config import BacktestConfig
from gogooku3.evaluation.backtest.market import Market, sessions_frame
from gogooku3.evaluation.backtest.summary import annualisation

DEFAULT_VOL = 0.02  # daily σ charged when the data has no volatility column at all
PRICED = ("adv", "vol", "half_spread", "limit_up", "limit_down")


def weight_changes(w: pl.DataFrame, reb: list[dt.date]) -> pl.DataFrame:
    """Date, Code, dw = w_k − w_{k−1} over the union of names of consecutive rebalances k (the first: the build)."""
    days = pl.DataFrame({C.DATE: reb, "k": list(range(len(reb)))}, schema={C.DATE: pl.Date, "k": pl.Int64})
    wk = w.join(days, on=C.DATE).select("k", C.CODE, "w")
    prev = wk.with_columns(k=pl.col("k") + 1).rename({"w": "w_prev"})
    j = wk.join(prev, on=["k", C.CODE], how="full", coalesce=True).filter(pl.col("k") < days.height)
    return j.join(days, on="k").select(C.DATE, C.CODE, dw=pl.col("w").fill_null(0.0) - pl.col("w_prev").fill_null(0.0))


def cost_flat(c: BacktestConfig) -> pl.Expr:
    """The idealised book's cost per rebalance on the daily frame's ``turnover``: cost_bps · 1e-4 · turnover."""
    return pl.col("turnover") * c.cost_bps * 1e-4


def priced_at_entry(market: Market | None, el: pl.DataFrame, dates: list[dt.date]) -> pl.DataFrame:
    """Date, Code, at_e and the PRICED columns the data has, at the entry session of each Date (module docstring)."""
    if market is None:
        have = [k for k in ("adv", "vol") if k in el.columns]
        return el.select(C.DATE, C.CODE, *have)  # no at_e: every name trades
    ex = sessions_frame(market, dates, 0).select(C.DATE, "e")
    cols = [k for k in PRICED if market.has(k)]
    at = market.rows.select(pl.col(C.DATE).alias("e"), C.CODE, *cols).with_columns(at_e=pl.lit(True))
    return ex.join(at, on="e", how="inner").drop("e")


def _grid(frame: pl.DataFrame, col: str, di: dict, ci: dict, shape: tuple[int, int], fill) -> np.ndarray:
    """A dense [dates, codes] array of `frame[col]` (keys outside the grid ignored, missing cells `fill`)."""
    out = np.full(shape, fill, dtype=float if not isinstance(fill, bool) else bool)
    f = frame.filter(pl.col(C.DATE).is_in(list(di)) & pl.col(C.CODE).is_in(list(ci)))
    r = f[C.DATE].replace_strict(di, return_dtype=pl.Int64).to_numpy()
    k = f[C.CODE].replace_strict(ci, return_dtype=pl.Int64).to_numpy()
    vals = f[col].to_numpy()
    if isinstance(fill, bool):
        vals = np.asarray(f[col].fill_null(fill).to_numpy(), dtype=bool)
    out[r, k] = vals
    return out


def fill_trades(
    trades: pl.DataFrame, growth: pl.DataFrame, mkt: pl.DataFrame, capital: float, c: BacktestConfig, limits: bool
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(filled, deviation, unfilled) of `trades` over the Dates of `growth`, as the module docstring says."""
    dates = sorted(set(growth[C.DATE].to_list()) | set(trades[C.DATE].to_list()))
    codes = sorted(set(trades[C.CODE].to_list()))
    di, ci = {d: i for i, d in enumerate(dates)}, {x: i for i, x in enumerate(codes)}
    shape = (len(dates), len(codes))
    want_book = np.nan_to_num(_grid(trades, "dw", di, ci, shape, 0.0))
    g = np.nan_to_num(_grid(growth, "g", di, ci, shape, 1.0), nan=1.0)
    ok = _grid(mkt, "at_e", di, ci, shape, False) if "at_e" in mkt.columns else np.ones(shape, dtype=bool)
    cap = np.full(shape, np.inf)
    if "adv" in mkt.columns:
        adv = _grid(
            mkt.with_columns(pl.col("adv").fill_null(pl.col("adv").median().over(C.DATE))), "adv", di, ci, shape, np.nan
        )
        cap = np.where(np.isfinite(adv), c.participation_cap * np.maximum(adv, 0.0) / capital, np.inf)
    no = np.zeros(shape, dtype=bool)
    up = _grid(mkt, "limit_up", di, ci, shape, False) if limits and "limit_up" in mkt.columns else no
    dn = _grid(mkt, "limit_down", di, ci, shape, False) if limits and "limit_down" in mkt.columns else no
    fill, dev = np.zeros(shape), np.zeros(shape)
    reason = np.zeros(shape, dtype=np.int8)  # 0 filled, 1 halt, 2 limit, 3 cap
    d = np.zeros(len(codes))
    for k in range(len(dates)):
        want = want_book[k] - d * g[k]
        locked = ((want > 0) & up[k]) | ((want < 0) & dn[k])
        f = np.where(ok[k] & ~locked, np.clip(want, -cap[k], cap[k]), 0.0)
        reason[k] = np.select([~ok[k], locked, np.abs(f) < np.abs(want) - 1e-15], [1, 2, 3], 0)
        fill[k], d = f, -(want - f)
        dev[k] = d
    unf = -dev
    return (
        _frame(dates, codes, fill, np.abs(fill) > 0, "dw"),
        _frame(dates, codes, dev, np.abs(dev) > 1e-15, "D"),
        _frame(dates, codes, unf, (np.abs(unf) > 1e-15) & (reason > 0), "dw").with_columns(
            reason=pl.Series(np.array(["", "halt", "limit", "cap"])[reason[(np.abs(unf) > 1e-15) & (reason > 0)]])
        ),
    )


def _frame(dates: list, codes: list, a: np.ndarray, mask: np.ndarray, col: str) -> pl.DataFrame:
    """Date, Code, `col` of the cells of `a` [dates, codes] where `mask` (row-major order)."""
    r, k = np.nonzero(mask)
    return pl.DataFrame(
        {
            C.DATE: pl.Series(dates, dtype=pl.Date).gather(r),
            C.CODE: pl.Series(codes, dtype=pl.String).gather(k),
            col: a[r, k].astype(float),
        },
        schema={C.DATE: pl.Date, C.CODE: pl.String, col: pl.Float64},
    )


def session_costs(
    filled: pl.DataFrame,
    shorts: pl.DataFrame,
    mkt: pl.DataFrame,
    capital: float,
    c: BacktestConfig,
    sessions_per_year: float,
) -> tuple[pl.DataFrame, str]:
    """Date, commission, spread, impact, borrow, total (module docstring), and what was charged, in words."""
    med = lambda col: pl.col(col).fill_null(pl.col(col).median().over(C.DATE))
    have = [k for k in ("adv", "vol", "half_spread") if k in mkt.columns]
    d = filled.join(mkt.select(C.DATE, C.CODE, *have), on=[C.DATE, C.CODE], how="left")
    how = [f"commission {c.commission_bps:g} bps"]
    if "half_spread" in have:
        hs = pl.col("half_spread").fill_null(c.half_spread_bps * 1e-4)
        how.append("half-spread per name and day (Corwin-Schultz, tick floor)")
    else:
        hs = pl.lit(c.half_spread_bps * 1e-4)
        how.append(f"half-spread {c.half_spread_bps:g} bps")
    vol = med("vol").fill_null(DEFAULT_VOL) if "vol" in have else pl.lit(DEFAULT_VOL)
    traded = pl.col("dw").abs()
    if "adv" in have:
        adv = med("adv")
        impact = pl.when(adv > 0).then(c.impact_coef * vol * (traded * capital / adv).sqrt()).otherwise(0.0)
        how.append(f"sqrt impact Y={c.impact_coef:g}" + ("" if "vol" in have else f" (σ {DEFAULT_VOL:g} a day)"))
    else:
        impact = pl.lit(0.0)
        how.append("no impact (no ADV)")
    per = d.group_by(C.DATE).agg(
        commission=(traded * c.commission_bps * 1e-4).sum(), spread=(traded * hs).sum(), impact=(traded * impact).sum()
    )
    fee = c.borrow_fee_annual / sessions_per_year
    borrow = shorts.select(C.DATE, borrow=pl.col("short") * fee)
    how.append(f"borrow {100 * c.borrow_fee_annual:g} %/yr on the short gross")
    out = (
        per.join(borrow, on=C.DATE, how="full", coalesce=True)
        .with_columns(pl.col("commission", "spread", "impact", "borrow").fill_null(0.0))
        .with_columns(total=pl.sum_horizontal("commission", "spread", "impact", "borrow"))
        .sort(C.DATE)
    )
    return out, ", ".join(how)


def short_gross(pos_k: pl.DataFrame, k_of: pl.DataFrame, h: int, share: float) -> pl.DataFrame:
    """Date, short: the short gross the cohorts hold on each row (cohort formed on k: rows k … k + h − 1, `share` of
    the capital each, undrifted weights; pos_k: k, Code, side, w)."""
    s = pos_k.filter(pl.col("side") == -1).group_by("k").agg(s=pl.col("w").abs().sum() * share)
    live = pl.concat([s.with_columns(pl.col("k") + j) for j in range(h)]).group_by("k").agg(short=pl.col("s").sum())
    return live.join(k_of, on="k").select(C.DATE, "short")


def cost_spread_impact(
    trades: pl.DataFrame,
    pos_k: pl.DataFrame,
    prices: pl.DataFrame,
    k_of: pl.DataFrame,
    mkt: pl.DataFrame,
    c: BacktestConfig,
    *,
    h: int,
    share: float,
    realistic: bool,
    realism: dict,
) -> tuple[pl.DataFrame, str]:
    """Date, cost_spread_impact: the TSE model's cost per row of the book (module docstring), and what it charged.

    trades: Date, Code, dw (the wanted book's trades); pos_k: k, Code, side, w (the cohorts); prices: k, Code, P (the
    book's price index); k_of: Date, k; mkt: `priced_at_entry`. The realistic book's trades go through `fill_trades`
    (limit locks when realism's price_limits rule is applied) and pay the opportunity cost of what did not fill; the
    ideal book's (reported, not charged) trade as wanted. Totals of each part and the fill counts go into `realism`.
    """
    shorts = short_gross(pos_k, k_of, h, share)
    opportunity = pl.DataFrame(schema={C.DATE: pl.Date, "opportunity": pl.Float64})
    filled = trades
    if realistic:
        px = prices.join(k_of, on="k").sort(C.CODE, "k")
        growth = px.select(C.DATE, C.CODE, g=(pl.col("P") / pl.col("P").shift(1)).over(C.CODE))
        limits = bool(realism.get("price_limits", {}).get("applied"))
        filled, dev, unfilled = fill_trades(trades, growth, mkt, c.capital, c, limits)
        nxt = growth.with_columns(g=pl.col("g").shift(-1).over(C.CODE))  # the row after the trade
        opportunity = (
            dev.join(nxt, on=[C.DATE, C.CODE], how="left")
            .group_by(C.DATE)
            .agg(opportunity=(-pl.col("D") * (pl.col("g").fill_null(1.0) - 1.0)).sum())
        )
        realism["fills"] = {
            "participation_cap": c.participation_cap,
            "price_limit_locks": limits,
            "unfilled_orders": {k: int((unfilled["reason"] == k).sum()) for k in ("cap", "limit", "halt")},
            "avg_unfilled_gross": as_float(dev["D"].abs().sum()) / max(growth[C.DATE].n_unique(), 1),
            "filled_share_of_traded": as_float(filled["dw"].abs().sum())
            / max(as_float(trades["dw"].abs().sum()), 1e-300),
        }
    spy, _ = annualisation(c, k_of[C.DATE].to_list())
    costs, how = session_costs(filled, shorts, mkt, c.capital, c, spy)
    costs = (
        costs.join(opportunity, on=C.DATE, how="full", coalesce=True)
        .with_columns(
            pl.col("opportunity").fill_null(0.0),
            *(pl.col(k).fill_null(0.0) for k in ("commission", "spread", "impact", "borrow")),
        )
        .with_columns(total=pl.sum_horizontal("commission", "spread", "impact", "borrow", "opportunity"))
    )
    parts = ("commission", "spread", "impact", "borrow", "opportunity", "total")
    realism["costs"] = {k: float(costs[k].sum()) for k in parts}
    if realistic:
        how += ", opportunity cost of unfilled orders"
    return costs.select(C.DATE, cost_spread_impact=pl.col("total")), how
