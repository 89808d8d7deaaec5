"""Quarterly statements (1Q/2Q/3Q/FY) with disclosure dates/times, and the surprise that drives earnings drift.

Each stock has a fiscal year (most end in March) and running full-year forecasts (FOP/FNP/FEPS). At every
quarter a surprise z (unit-variance Student-t) revises the forecasts by `REVISION * z * |forecast|`
(observable as the change of FNP between two statements; at FY the actual vs the last forecast).
The statement becomes effective on its disclosure session when disclosed before the close (15:00 JST, 15:30
from 2024-11-05), else on the next session; there the price reacts and the drift starts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import polars as pl

from gogooku3.sources.synthetic.market import student_t
from gogooku3.sources.synthetic.params import SynthParams
from gogooku3.sources.synthetic.universe import Universe

REVISION = 0.08
DISC_TIMES = ("11:30:00", "13:00:00", "14:00:00", "15:00:00", "15:30:00", "16:00:00", "17:00:00")
DISC_TIME_SHARES = (0.07, 0.06, 0.07, 0.40, 0.25, 0.10, 0.05)
CLOSE_EXTENDED_FROM = dt.date(2024, 11, 5)  # TSE close moved from 15:00 to 15:30


def close_time(date: np.ndarray) -> np.ndarray:
    """TSE closing time ("HH:MM:SS") for each date (datetime64[D])."""
    return np.where(date >= np.datetime64(CLOSE_EXTENDED_FROM), "15:30:00", "15:00:00")


@dataclass
class Statements:
    table: pl.DataFrame
    earn_z: np.ndarray  # float [n_days, n_stocks]: surprise z on its effective session, else 0


def _month_end(months: np.ndarray) -> np.ndarray:
    """Last day of each month, months counted from 1970-01 (datetime64[M] integers)."""
    return (months.astype("datetime64[M]") + 1).astype("datetime64[D]") - 1


def make_statements(
    p: SynthParams, u: Universe, sessions: np.ndarray, adj_k: np.ndarray, rng: np.random.Generator
) -> Statements:
    """`sessions`: datetime64[D] of the output span; `adj_k`: cumulative AdjFactor [n_days, n_stocks]."""
    n, d = u.n, len(sessions)
    earn_z = np.zeros((d, n))
    start_m = sessions[0].astype("datetime64[M]").astype(np.int64) - 6
    end_m = sessions[-1].astype("datetime64[M]").astype(np.int64)
    fy_m0 = u.fy_end_month - 1  # 0-based month of the fiscal year end
    qm = start_m + (fy_m0 - start_m) % 3  # first quarter end month >= start_m, per stock

    cap0 = u.shares * u.price0
    sales = cap0 * np.exp(np.log(0.9) + 0.5 * rng.standard_normal(n)) * np.where(u.segment == 2, 0.4, 1.0)
    margin = np.clip(rng.normal(0.07, 0.05, n), -0.15, 0.35)
    f_sales, f_op = sales.copy(), sales * margin
    f_np = 0.65 * f_op
    eq_fy = cap0 * u.book_to_price
    eq_ratio = np.clip(rng.normal(0.45, 0.12, n), 0.1, 0.85)
    rows: list[dict[str, np.ndarray]] = []
    while True:
        live = qm <= end_m
        if not live.any():
            break
        z = student_t(rng, p.t_df, n)
        noise = rng.standard_normal((3, n))
        offs = rng.integers(30, 46, n) + 5 * ((qm - fy_m0) % 12 == 0)  # FY results come a little later
        times = rng.choice(len(DISC_TIMES), size=n, p=DISC_TIME_SHARES)
        flags = rng.random(n)
        q = ((qm - fy_m0) % 12) // 3  # 1, 2, 3; 0 = FY
        is_fy = q == 0
        qn = np.where(is_fy, 4, q)
        # forecast revisions (quarters) / actual vs forecast (FY)
        d_np = REVISION * z * np.maximum(np.abs(f_np), 0.004 * f_sales)
        d_op = REVISION * z * np.maximum(np.abs(f_op), 0.004 * f_sales)
        f_np_new, f_op_new = f_np + d_np, f_op + d_op
        f_sales_new = f_sales * (1 + 0.02 * z)
        np_cum = np.where(is_fy, f_np_new, f_np_new * qn / 4 * (1 + 0.05 * noise[0]))
        op_cum = np.where(is_fy, f_op_new, f_op_new * qn / 4 * (1 + 0.05 * noise[0]))
        sales_cum = np.where(is_fy, f_sales_new, f_sales_new * qn / 4 * (1 + 0.02 * noise[1]))
        growth = rng.normal(0.03, 0.06, n)
        nxt_sales = f_sales_new * (1 + growth)
        nxt_op = op_cum * (1 + growth) + 0.02 * noise[2] * nxt_sales
        nxt_np = 0.65 * nxt_op
        f_sales = np.where(is_fy, nxt_sales, f_sales_new)
        f_op = np.where(is_fy, nxt_op, f_op_new)
        f_np = np.where(is_fy, nxt_np, f_np_new)

        q_end = _month_end(qm)
        disc = q_end + offs.astype("timedelta64[D]")
        di = np.searchsorted(sessions, disc, side="left")
        in_span = live & (di < d) & (disc >= sessions[0])
        di_c = np.minimum(di, d - 1)
        listed = in_span & (di_c >= u.first) & (di_c <= u.last)
        disc_date = sessions[di_c]
        time_s = np.array(DISC_TIMES)[times]
        eff = di_c + (time_s >= close_time(disc_date))
        hit = listed & (eff <= u.last)
        earn_z[eff[hit], np.flatnonzero(hit)] = z[hit]

        shout = u.shares * adj_k[di_c, np.arange(n)]
        eq = eq_fy + 0.9 * np.where(is_fy, 0.0, np_cum)
        f_eps = f_np / shout
        div = np.maximum(0.0, np.round(0.3 * f_eps, 1))
        eq_fy = np.where(is_fy, eq_fy + np_cum - div * shout * 0.5, eq_fy)
        fy_start_m = qm - 3 * qn + 1
        if listed.any():
            idx = np.flatnonzero(listed)
            rows.append(
                {
                    "DiscDate": disc_date[idx],
                    "DiscTime": time_s[idx],
                    "Code": u.codes[idx],
                    "CurPerType": np.array(["FY", "1Q", "2Q", "3Q"])[q[idx]],
                    "CurFYSt": fy_start_m[idx].astype("datetime64[M]").astype("datetime64[D]"),
                    "CurFYEn": _month_end(fy_start_m[idx] + 11),
                    "Sales": sales_cum[idx],
                    "OP": op_cum[idx],
                    "NP": np_cum[idx],
                    "EPS": (np_cum / shout)[idx],
                    "Eq": eq[idx],
                    "TA": (eq / eq_ratio)[idx],
                    "FOP": f_op[idx],
                    "FNP": f_np[idx],
                    "FEPS": f_eps[idx],
                    "FDivAnn": div[idx],
                    "ShOut": shout[idx],
                    "ChgAcEst": np.where(flags[idx] < 0.01, "true", "false"),
                    "RetroRst": np.where(flags[idx] > 0.995, "true", "false"),
                }
            )
        qm = qm + 3
    cols = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]} if rows else None
    if cols is None:
        table = pl.DataFrame(schema={"DiscDate": pl.Date, "Code": pl.Utf8})
    else:
        table = (
            pl.DataFrame(cols)
            .with_columns(pl.col("DiscDate", "CurFYSt", "CurFYEn").cast(pl.Date))
            .sort("DiscDate", "Code")
        )
    return Statements(table=table, earn_z=earn_z)
