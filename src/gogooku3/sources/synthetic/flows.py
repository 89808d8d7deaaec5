"""Weekly tables: investor_types (flows per market section) and margin_interest (per stock)."""

from __future__ import annotations

import numpy as np
import polars as pl

from gogooku3.sources.schema import FLOW_KINDS, INVESTORS
from gogooku3.sources.synthetic.universe import SEGMENTS, Universe

# share of a section's turnover per investor type (Prop + Brk = Tot; Brk = customers incl. unlisted types)
FLOW_SHARE = {"Frgn": 0.58, "Ind": 0.20, "Prop": 0.12, "TrstBnk": 0.03, "InvTr": 0.02}
FLOW_TREND = {"Frgn": 0.30, "Ind": -0.25, "Prop": 0.0, "TrstBnk": -0.05, "InvTr": 0.05}  # x weekly return


def weeks(sessions: pl.Series) -> pl.DataFrame:
    """One row per calendar week: first/last session index and the next week's 2nd and Thursday-ish sessions."""
    s = pl.DataFrame({"Date": sessions, "i": np.arange(len(sessions))})
    wk = (
        s.group_by(pl.col("Date").dt.truncate("1w").alias("Week"), maintain_order=True)
        .agg(pl.col("i").first().alias("first"), pl.col("i").last().alias("last"))
        .sort("Week")
    )
    monday = wk["Week"].to_numpy()
    ses = sessions.to_numpy()
    nxt_thu = np.searchsorted(ses, monday + np.timedelta64(10, "D"), side="left")  # next week's Thursday or later
    nxt_tue = np.searchsorted(ses, monday + np.timedelta64(8, "D"), side="left")  # next week's Tuesday or later
    return wk.with_columns(pl.Series("pub_flows", nxt_thu), pl.Series("pub_margin", nxt_tue))


def investor_types(
    u: Universe,
    quotes: pl.DataFrame,
    log_price: np.ndarray,
    observed: np.ndarray,
    sessions: pl.Series,
    rng: np.random.Generator,
) -> pl.DataFrame:
    wk = weeks(sessions)
    d = len(sessions)
    wk = wk.filter(pl.col("pub_flows") < d)
    seg_of = dict(zip(u.codes, np.array([s[1] for s in SEGMENTS])[u.segment], strict=True))
    turnover = (
        quotes.select("Date", "Va", pl.col("Code").replace_strict(seg_of).alias("Section"))
        .join(pl.DataFrame({"Date": sessions, "Week": sessions.dt.truncate("1w")}), on="Date")
        .group_by("Week", "Section")
        .agg(pl.col("Va").sum().alias("T"))
    )
    caps = u.shares * np.exp(log_price)
    out = []
    for seg, (_, name, _) in enumerate(SEGMENTS):
        member = (u.segment == seg)[None, :] & observed
        idx_f, idx_l = wk["first"].to_numpy(), wk["last"].to_numpy()
        prev = np.maximum(idx_f - 1, 0)
        cap_end = (caps[idx_l] * member[idx_l]).sum(axis=1)
        cap_start = (u.shares * np.exp(log_price[prev]) * member[idx_l]).sum(axis=1)
        wret = np.where(cap_start > 0, cap_end / np.maximum(cap_start, 1e-300) - 1.0, 0.0)
        frame = (
            wk.select("Week")
            .with_columns(pl.lit(name).alias("Section"))
            .join(turnover, on=["Week", "Section"], how="left")
            .with_columns(pl.col("T").fill_null(0.0))
        )
        tot = frame["T"].to_numpy()
        cols: dict[str, np.ndarray] = {}
        bal_sum = np.zeros(len(tot))
        for inv, share in FLOW_SHARE.items():
            bal = tot * (0.01 * rng.standard_normal(len(tot)) + FLOW_TREND[inv] * wret) * share
            cols[f"{inv}Sell"], cols[f"{inv}Buy"] = share * tot - bal / 2, share * tot + bal / 2
            if inv != "Prop":
                bal_sum += bal
        # Brk = customers (incl. types not listed) = everything but proprietary trading
        prop_bal = cols["PropBuy"] - cols["PropSell"]
        brk_share = 1.0 - FLOW_SHARE["Prop"]
        cols["BrkSell"], cols["BrkBuy"] = brk_share * tot + prop_bal / 2, brk_share * tot - prop_bal / 2
        cols["TotSell"], cols["TotBuy"] = tot, tot.copy()
        for inv in INVESTORS:
            cols[f"{inv}Tot"] = cols[f"{inv}Sell"] + cols[f"{inv}Buy"]
            cols[f"{inv}Bal"] = cols[f"{inv}Buy"] - cols[f"{inv}Sell"]
        out.append(
            pl.DataFrame(
                {
                    "PubDate": sessions.gather(wk["pub_flows"]),
                    "StDate": sessions.gather(wk["first"]),
                    "EnDate": sessions.gather(wk["last"]),
                    "Section": [name] * len(tot),
                    **{f"{i}{k}": cols[f"{i}{k}"] for i in INVESTORS for k in FLOW_KINDS},
                }
            )
        )
    return pl.concat(out).sort("Section", "PubDate")


def margin_interest(
    u: Universe,
    log_price: np.ndarray,
    observed: np.ndarray,
    adj_k: np.ndarray,
    sessions: pl.Series,
    rng: np.random.Generator,
) -> pl.DataFrame:
    """Weekly margin balances per stock at the week's last session, published the next week's Tuesday-ish."""
    wk = weeks(sessions).filter(pl.col("pub_margin") < len(sessions))
    last = wk["last"].to_numpy()
    n_w, n = len(last), u.n
    long_lvl = np.log(0.01 * np.exp(0.7 * rng.standard_normal(n)))
    short_lvl = np.log(0.003 * np.exp(0.8 * rng.standard_normal(n)))
    neg_share = np.clip(rng.normal(0.3, 0.1, n), 0.05, 0.9)
    iss = np.where(u.segment == 0, "2", np.where(rng.random(n) < 0.7, "1", "2"))
    la, sa = np.zeros(n), np.zeros(n)
    prev_p = log_price[np.maximum(wk["first"].to_numpy() - 1, 0)]
    vals = {c: np.zeros((n_w, n)) for c in ("LongVol", "ShrtVol")}
    for w in range(n_w):
        wret = log_price[last[w]] - prev_p[w]
        la = 0.9 * la + 0.15 * rng.standard_normal(n) - 1.5 * wret  # retail buys the dips on margin
        sa = 0.85 * sa + 0.2 * rng.standard_normal(n) + 1.0 * wret
        raw_shares = u.shares * adj_k[last[w]]
        vals["LongVol"][w] = np.round(raw_shares * np.exp(long_lvl + la) / 100) * 100
        vals["ShrtVol"][w] = np.round(raw_shares * np.exp(short_lvl + sa) / 100) * 100
    sel = observed[last].T  # stock-major
    wi = np.broadcast_to(np.arange(n_w)[None, :], sel.shape)[sel]
    ci = np.broadcast_to(np.arange(n)[:, None], sel.shape)[sel]
    long_v, short_v = vals["LongVol"][wi, ci], vals["ShrtVol"][wi, ci]
    long_neg = np.round(long_v * neg_share[ci] / 100) * 100
    short_neg = np.round(short_v * neg_share[ci] / 100) * 100
    return pl.DataFrame(
        {
            "PubDate": sessions.gather(wk["pub_margin"].to_numpy()[wi]),
            "Date": sessions.gather(last[wi]),
            "Code": u.codes[ci],
            "ShrtVol": short_v,
            "LongVol": long_v,
            "ShrtNegVol": short_neg,
            "LongNegVol": long_neg,
            "ShrtStdVol": short_v - short_neg,
            "LongStdVol": long_v - long_neg,
            "IssType": iss[ci],
        }
    )
