"""The day-by-day simulation: factor returns, GARCH volatility, volume and the planted alpha.

Log return of stock i over (t-1, t]:

    r = alpha(t-1) + mu + beta*f_mkt + gamma*f_sector + size*f_size + value*f_value + sigma_i(t)*eps
        + jump*z*idio_vol (announcement days) - v/2

where v is the conditional variance of the random part, so that E[exp(r)] = exp(alpha + mu) and alpha is the
expected excess simple return. Innovations are Student-t (df `t_df`), scaled to unit variance and truncated at
+-8 sd (which keeps exp-moments finite). `alpha(t)` is known at the close of t and is built only from what the
raw tables show: the stock's own returns, its sector's cap-weighted return, TOPIX volatility, volume and
statement surprises:

    rev      = 0.8*rev - c * (r_i - r_sector)                    short-term (intra-industry) reversal
    leadlag  = 0.85*ll + c * w_i * (r_sector - r_market)          small caps follow their sector a day late
    volshock = 0.85*vs + c * clip(abnormal log volume, 0, 3) * sign(r_i - r_market)
    earnings = 0.95*ped + c * z on the statement's effective session        post-earnings drift
    momentum = c * [log excess return over t-120..t-5] only while the market is calm (regime interaction)
    alpha    = signal_strength * (rev + leadlag + volshock + earnings + momentum)

(simple returns; sector and market returns are cap-weighted over the stocks listed on both days.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gogooku3.sources.synthetic.params import SynthParams
from gogooku3.sources.synthetic.universe import SECTORS33, Universe, listed_mask

CALM_HALFLIFE = 10.0  # days, EWM of squared market returns used by the regime gate
VOLUME_EMA = 0.9  # EMA weight of the running log-volume level behind "abnormal volume"


def student_t(rng: np.random.Generator, df: float, size) -> np.ndarray:
    """Unit-variance Student-t draws truncated at +-8 sd."""
    return np.clip(rng.standard_t(df, size) * np.sqrt((df - 2.0) / df), -8.0, 8.0)


@dataclass
class Paths:
    """Per-session arrays [n_days, n_stocks] of the output span (index 0 = first date)."""

    log_price: np.ndarray  # adjusted log close (current share basis)
    ret: np.ndarray  # log return over (t-1, t]
    sigma: np.ndarray  # idiosyncratic sd of day t (drives intraday ranges)
    log_volume: np.ndarray  # log volume on the current share basis (adjusted volume)
    alpha: np.ndarray  # expected excess return over (t, t+1], known at the close of t
    rev: np.ndarray  # effect states at the close of t (before signal_strength)
    leadlag: np.ndarray
    volshock: np.ndarray
    earnings: np.ndarray
    cum_excess: np.ndarray  # cumulative observed excess return (momentum input)
    calm: np.ndarray  # bool [n_days]: regime gate at the close of t
    observed: np.ndarray  # bool [n_days, n_stocks]: listed that day
    market_ret: np.ndarray  # [n_days] cap-weighted simple return of the listed universe
    abnormal_pos_mean: float  # E[clip(abnormal log volume, 0, 3)] over observed cells (oracle feedback)


def momentum(cum: np.ndarray, t: int, p: SynthParams) -> np.ndarray | float:
    """Excess log return over [t-window, t-skip] from the running sum history `cum` (zeros before 0)."""
    a, b = t - p.momentum_skip, t - p.momentum_window
    ca = cum[a] if a >= 0 else 0.0
    cb = cum[b] if b >= 0 else 0.0
    return ca - cb


def simulate_paths(
    p: SynthParams, u: Universe, earn_z: np.ndarray, rng: np.random.Generator, step: Callable[[int], None] | None = None
) -> Paths:
    """Run the market forward through `burn_in` hidden sessions and `n_days` observed ones."""
    n, d = u.n, p.n_days
    n_sec = len(SECTORS33)
    observed = listed_mask(u, d)
    out = {
        k: np.zeros((d, n), dtype=np.float32)
        for k in ("sigma", "log_volume", "alpha", "rev", "leadlag", "volshock", "earnings")
    }
    log_price = np.zeros((d, n))
    ret = np.zeros((d, n))
    cum_hist = np.zeros((d, n))
    calm_hist = np.zeros(d, dtype=bool)
    mret_hist = np.zeros(d)

    ga, gb = p.garch_alpha, p.garch_beta
    m2 = p.market_vol**2
    i2 = u.idio_vol**2
    style_var = (u.size_exp**2 + u.value_exp**2) * p.style_vol**2
    static_var = u.sector_beta**2 * p.sector_vol**2 + style_var
    eps_m_prev, eps_i_prev = 0.0, np.zeros(n)
    sm2, si2 = m2, i2.copy()
    logp = np.log(u.price0)
    base_lv = np.log(u.turnover * u.shares)
    vol_ar = np.zeros(n)
    lv_ema = base_lv.copy()
    mkt_var_ema = m2
    lam = 0.5 ** (1.0 / CALM_HALFLIFE)
    rev = np.zeros(n)
    ll = np.zeros(n)
    vs = np.zeros(n)
    ped = np.zeros(n)
    cum = np.zeros(n)
    alpha = np.zeros(n)
    ob_prev = np.zeros(n, dtype=bool)
    ab_sum, ab_cnt = 0.0, 0
    for step_i, t in enumerate(range(-p.burn_in, d)):
        eps_m = float(student_t(rng, p.t_df, 1)[0])
        eps_s = student_t(rng, p.t_df, n_sec)
        eps_style = rng.standard_normal(2)
        eps_i = student_t(rng, p.t_df, n)
        eta_v = rng.standard_normal(n)
        # GARCH(1,1) variances for today from yesterday's shocks
        sm2 = (1 - ga - gb) * m2 + ga * sm2 * eps_m_prev**2 + gb * sm2
        si2 = (1 - ga - gb) * i2 + ga * si2 * eps_i_prev**2 + gb * si2
        z = earn_z[t] if t >= 0 else np.zeros(n)
        jump_sd = p.earnings_jump * u.idio_vol
        var = u.beta**2 * sm2 + static_var + si2 + (z != 0) * jump_sd**2
        r = (
            alpha
            + p.market_drift
            + u.beta * np.sqrt(sm2) * eps_m
            + u.sector_beta * p.sector_vol * eps_s[u.sector]
            + p.style_vol * (u.size_exp * eps_style[0] + u.value_exp * eps_style[1])
            + np.sqrt(si2) * eps_i
            + jump_sd * z
            - 0.5 * var
        )
        cap_prev = u.shares * np.exp(logp)
        logp = logp + r
        ob = observed[t] if t >= 0 else np.zeros(n, dtype=bool)
        both = ob & ob_prev
        w = cap_prev * both if both.any() else cap_prev
        simple = np.expm1(r)
        r_mkt = float(w @ simple / w.sum())
        sec_w = np.bincount(u.sector, weights=w, minlength=n_sec)
        sec_r = np.bincount(u.sector, weights=w * simple, minlength=n_sec) / np.maximum(sec_w, 1e-300)
        sec_r = np.where(sec_w > 0, sec_r, r_mkt)
        mkt_var_ema = lam * mkt_var_ema + (1 - lam) * r_mkt**2
        calm = np.sqrt(mkt_var_ema) < p.calm_vol
        # volume: persistent level noise + |shock| + market activity + announcement bump
        vol_ar = 0.7 * vol_ar + 0.35 * eta_v
        lv = base_lv + 0.45 * (np.abs(eps_i) - 0.8) + 0.25 * (abs(eps_m) - 0.8) + vol_ar + 0.8 * (z != 0)
        abnormal = lv - lv_ema
        lv_ema = VOLUME_EMA * lv_ema + (1 - VOLUME_EMA) * lv
        # planted effects, from observed data only (unlisted stocks contribute nothing)
        # (a stock's first listed day has no observable return yet, hence `both`)
        excess = both * (simple - r_mkt)
        # reversal acts on the sector-relative return (it is an intra-industry effect; the sector part is
        # the lead-lag effect's input and would otherwise cancel it)
        rev = p.reversal_decay * rev - p.reversal_coef * both * (simple - sec_r[u.sector])
        ll = p.leadlag_decay * ll + both * p.leadlag_coef * u.lag_weight * (sec_r[u.sector] - r_mkt)
        ab_pos = np.clip(abnormal, 0.0, 3.0)
        vs = p.volume_decay * vs + both * p.volume_coef * ab_pos * np.sign(excess)
        ab_sum, ab_cnt = ab_sum + float(ab_pos[both].sum()), ab_cnt + int(both.sum())
        ped = p.earnings_decay * ped + p.earnings_coef * z
        cum = cum + excess
        if t >= 0:
            cum_hist[t] = cum
            mom = momentum(cum_hist, t, p)
            alpha = p.signal_strength * (rev + ll + vs + ped + calm * p.momentum_coef * mom)
            log_price[t], ret[t], calm_hist[t], mret_hist[t] = logp, r, calm, r_mkt
            for k, v in (
                ("sigma", np.sqrt(si2)),
                ("log_volume", lv),
                ("alpha", alpha),
                ("rev", rev),
                ("leadlag", ll),
                ("volshock", vs),
                ("earnings", ped),
            ):
                out[k][t] = v
        eps_m_prev, eps_i_prev, ob_prev = eps_m, eps_i, ob
        if step is not None:
            step(step_i)
    return Paths(
        log_price=log_price,
        ret=ret,
        cum_excess=cum_hist,
        calm=calm_hist,
        observed=observed,
        market_ret=mret_hist,
        abnormal_pos_mean=ab_sum / max(ab_cnt, 1),
        **out,
    )
