"""The cross-section of the synthetic market: codes, TSE sectors, segments, sizes and corporate events."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gogooku3.sources.synthetic.params import SynthParams

# Real TSE 33-sector codes -> (TOPIX-17 sector code, short English name, rough count of listed companies).
SECTORS33: dict[str, tuple[str, str, int]] = {
    "0050": ("1", "Fishery Agriculture", 12),
    "1050": ("2", "Mining", 6),
    "2050": ("3", "Construction", 160),
    "3050": ("1", "Foods", 125),
    "3100": ("4", "Textiles", 50),
    "3150": ("4", "Pulp Paper", 25),
    "3200": ("4", "Chemicals", 210),
    "3250": ("5", "Pharmaceutical", 75),
    "3300": ("2", "Oil Coal", 9),
    "3350": ("6", "Rubber", 19),
    "3400": ("3", "Glass Ceramics", 57),
    "3450": ("7", "Iron Steel", 45),
    "3500": ("7", "Nonferrous Metals", 34),
    "3550": ("3", "Metal Products", 90),
    "3600": ("8", "Machinery", 230),
    "3650": ("9", "Electric Appliances", 240),
    "3700": ("6", "Transport Equipment", 90),
    "3750": ("9", "Precision Instruments", 50),
    "3800": ("10", "Other Products", 110),
    "4050": ("11", "Electric Power Gas", 24),
    "5050": ("12", "Land Transport", 65),
    "5100": ("12", "Marine", 13),
    "5150": ("12", "Air Transport", 5),
    "5200": ("12", "Warehousing", 40),
    "5250": ("10", "Information Comm", 600),
    "6050": ("13", "Wholesale", 310),
    "6100": ("14", "Retail", 350),
    "7050": ("15", "Banks", 80),
    "7100": ("16", "Securities", 40),
    "7150": ("16", "Insurance", 14),
    "7200": ("16", "Other Financing", 35),
    "8050": ("17", "Real Estate", 150),
    "9050": ("10", "Services", 550),
}
SEGMENTS = (("0111", "TSEPrime", 0.45), ("0112", "TSEStandard", 0.38), ("0113", "TSEGrowth", 0.17))
# Liquidity per segment (Prime, Standard, Growth), so that costs mean on the demo what they would on TSE data.
# JPX trading overviews: daily trading value of domestic common stocks ~JPY 5.07 trn on Prime (H1 FY2024; ~1,640
# companies -> mean ~JPY 3 bn a name), ~JPY 130-210 bn on Standard and ~JPY 160-210 bn on Growth (FY2020-FY2022;
# ~1,600 and ~590 companies -> means ~JPY 0.1 bn and ~0.3 bn). Against the segments' market caps that is a daily
# turnover ratio of ~0.5 % on Prime, ~0.5 % on Standard (skewed to a few names) and ~2 % on Growth. The medians
# below are NOT published figures: they are reasoned from those means and a long right tail (median ~1/5 of the mean),
# giving median ADV ~JPY 0.7 bn (Prime), ~JPY 25 M (Standard), ~JPY 100 M (Growth) with the caps above.
TURNOVER_MEDIAN = (0.005, 0.002, 0.011)  # median daily volume / shares outstanding per segment
TURNOVER_DISPERSION = 0.6  # lognormal sd of a stock's turnover ratio around its segment's median
# Relative half bid-ask spread of a segment's median-ADV stock, in basis points, scaling as ADV^-SPREAD_ADV_EXP and
# floored at half a tick (core.tse_ticks). Not a published JPX statistic: quoted spreads of liquid Prime names are a
# tick or two (~3-10 bps half-spread), Standard and Growth names ~20-80 bps (the ranges the cost model's review
# assumed; say so when citing them).
HALF_SPREAD_BPS = (5.0, 40.0, 30.0)
SPREAD_ADV_EXP = 0.4  # cross-sectional elasticity of the spread to ADV within a segment (assumed)
HALF_SPREAD_MAX = 0.03  # no synthetic half-spread above 3 %
FY_END_MONTHS = (3, 12, 9, 6, 2, 8)  # fiscal year end months (March dominates)
FY_END_SHARES = (0.68, 0.16, 0.05, 0.04, 0.04, 0.03)


@dataclass(frozen=True)
class Universe:
    """Static attributes (length n_stocks) and event schedules (session indices into the output span)."""

    codes: np.ndarray  # "13010"-style, sorted ascending
    s33: np.ndarray
    s17: np.ndarray
    sector: np.ndarray  # int index into SECTORS33
    mkt: np.ndarray  # "0111"/"0112"/"0113"
    segment: np.ndarray  # int 0/1/2 (Prime/Standard/Growth)
    shares: np.ndarray  # shares outstanding on the current (post all splits) basis
    price0: np.ndarray  # adjusted price at the start of the burn-in
    size_exp: np.ndarray  # standardised log market cap (size style exposure)
    value_exp: np.ndarray  # standardised log book-to-price (value style exposure)
    book_to_price: np.ndarray
    beta: np.ndarray
    sector_beta: np.ndarray
    idio_vol: np.ndarray
    lag_weight: np.ndarray  # peer lead-lag sensitivity (small caps follow their sector's leaders more)
    turnover: np.ndarray  # typical daily volume as a share of shares outstanding (TURNOVER_MEDIAN by segment)
    fy_end_month: np.ndarray
    first: np.ndarray  # first listed session index (0 unless IPO)
    last: np.ndarray  # last listed session index (n_days-1 unless delisted)
    split_day: np.ndarray  # ex-date session index, -1 when none
    split_factor: np.ndarray  # AdjFactor on the ex-date (1:2 split -> 0.5)
    suspended: np.ndarray  # bool [n_days, n_stocks]: row missing that day

    @property
    def n(self) -> int:
        return len(self.codes)


def _forced_count(share: float, n: int) -> int:
    return max(1, round(share * n)) if n >= 5 and share > 0 else 0


def make_universe(p: SynthParams, rng: np.random.Generator) -> Universe:
    n, d = p.n_stocks, p.n_days
    codes4 = np.sort(rng.choice(np.arange(1301, 9998), size=n, replace=False))
    codes = np.array([f"{c}0" for c in codes4])
    keys = list(SECTORS33)
    weights = np.array([SECTORS33[k][2] for k in keys], dtype=float)
    sector = rng.choice(len(keys), size=n, p=weights / weights.sum())
    if n >= len(keys):  # every sector present at least once
        sector[rng.choice(n, size=len(keys), replace=False)] = np.arange(len(keys))
    s33 = np.array(keys)[sector]
    s17 = np.array([SECTORS33[k][0] for k in keys])[sector]
    segment = rng.choice(3, size=n, p=[s[2] for s in SEGMENTS])
    if n >= 3:
        segment[rng.choice(n, size=3, replace=False)] = np.arange(3)
    mkt = np.array([s[0] for s in SEGMENTS])[segment]

    # Market cap in JPY: Prime ~ 1e11, Standard ~ 1e10, Growth ~ 8e9 (lognormal, wide).
    log_cap = np.array([np.log(1.2e11), np.log(1.2e10), np.log(9e9)])[segment] + rng.normal(0, 1.3, n)
    price0 = np.exp(np.clip(np.log(1500) + rng.normal(0, 0.9, n), np.log(80), np.log(40000)))
    shares = np.round(np.exp(log_cap) / price0 / 1000) * 1000 + 1000
    btp = np.exp(np.log(0.9) + 0.6 * rng.standard_normal(n) - 0.4 * (segment == 2))
    z = lambda x: (x - x.mean()) / (x.std() + 1e-12)
    size_exp, value_exp = z(log_cap), z(np.log(btp))
    size_pct = np.argsort(np.argsort(log_cap)) / max(n - 1, 1)
    idio = (
        p.idio_vol * np.exp(0.25 * rng.standard_normal(n)) * (1.4 - 0.6 * size_pct) * np.where(segment == 2, 1.35, 1.0)
    )

    first = np.zeros(n, dtype=np.int64)
    last = np.full(n, d - 1, dtype=np.int64)
    ipo = rng.choice(n, size=_forced_count(p.ipo_share, n), replace=False)
    first[ipo] = rng.integers(d // 10, d - d // 4, size=len(ipo))
    rest = np.setdiff1d(np.arange(n), ipo)
    delist = rng.choice(rest, size=min(len(rest), _forced_count(p.delist_share, n)), replace=False)
    last[delist] = rng.integers(d // 3, d - 10, size=len(delist))

    split_day = np.full(n, -1, dtype=np.int64)
    split_factor = np.ones(n)
    cand = np.flatnonzero(last - first > 40)
    sp = rng.choice(cand, size=min(len(cand), _forced_count(p.split_share, n)), replace=False)
    split_day[sp] = first[sp] + 10 + (rng.random(len(sp)) * (last[sp] - first[sp] - 20)).astype(np.int64)
    # 1:2, 1:3, 1:4, 1:5, 1:10 splits; a few 10:1 consolidations (AdjFactor 10).
    split_factor[sp] = rng.choice(
        [0.5, 1 / 3, 0.25, 0.2, 0.1, 10.0], size=len(sp), p=[0.45, 0.15, 0.12, 0.12, 0.1, 0.06]
    )
    suspended = np.zeros((d, n), dtype=bool)
    gaps = rng.poisson(p.suspensions_per_stock, n)
    for i in np.flatnonzero(gaps):
        span = last[i] - first[i]
        if span < 20:
            continue
        for _ in range(gaps[i]):
            start = first[i] + 1 + rng.integers(0, span - 5)
            suspended[start : start + rng.integers(1, 4), i] = True
    suspended[split_day[sp], sp] = False  # the ex-date row always exists

    fy = rng.choice(FY_END_MONTHS, size=n, p=FY_END_SHARES)
    return Universe(
        codes=codes,
        s33=s33,
        s17=s17,
        sector=sector,
        mkt=mkt,
        segment=segment,
        shares=shares,
        price0=price0,
        size_exp=size_exp,
        value_exp=value_exp,
        book_to_price=btp,
        beta=np.clip(rng.normal(1.0, p.beta_sd, n), 0.2, 2.0),
        sector_beta=np.clip(rng.normal(1.0, 0.3, n), 0.2, 2.0),
        idio_vol=idio,
        lag_weight=0.5 + (1.0 - size_pct),
        turnover=np.array(TURNOVER_MEDIAN)[segment] * np.exp(TURNOVER_DISPERSION * rng.standard_normal(n)),
        fy_end_month=fy,
        first=first,
        last=last,
        split_day=split_day,
        split_factor=split_factor,
        suspended=suspended,
    )


def base_half_spread(u: Universe) -> np.ndarray:
    """Per stock: the relative half-spread before the tick floor, HALF_SPREAD_BPS of its segment scaled by
    (ADV / the segment's median ADV)^-SPREAD_ADV_EXP, ADV = turnover x shares x the starting price (no draw)."""
    adv = u.turnover * u.shares * u.price0
    med = np.array([np.median(adv[u.segment == s]) if (u.segment == s).any() else 1.0 for s in range(3)])
    rel = adv / med[u.segment]
    return np.minimum(np.array(HALF_SPREAD_BPS)[u.segment] * 1e-4 * rel ** (-SPREAD_ADV_EXP), HALF_SPREAD_MAX)


def listed_mask(u: Universe, n_days: int) -> np.ndarray:
    """bool [n_days, n_stocks]: listed that session (IPO..delisting), suspensions included."""
    t = np.arange(n_days)[:, None]
    return (t >= u.first[None, :]) & (t <= u.last[None, :])


def cum_adj_factor(u: Universe, n_days: int) -> np.ndarray:
    """K[t, i] = prod_{s > t} AdjFactor(s): raw(t) = adjusted(t) / K, AdjVo = Vo / K."""
    k = np.ones((n_days, u.n))
    for i in np.flatnonzero(u.split_day >= 0):
        k[: u.split_day[i], i] = u.split_factor[i]
    return k
