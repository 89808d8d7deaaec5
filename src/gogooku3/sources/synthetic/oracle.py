"""The oracle: E[target_{h}d(t) | everything known at the close of t], from the known alpha dynamics.

target_{h}d(t) = AdjC(t+lag+h) / AdjC(t+lag) - 1 = exp(r(t+lag+1) + ... + r(t+lag+h)) - 1 and E[exp(r(s+1))] =
exp(alpha(s) + mu) given the state at s (the simulator compensates the variance, see `market`). Hence

    oracle_h(t) ~= exp(sum_{k=lag}^{lag+h-1} E[alpha(t+k) | F_t] + h*mu) - 1

Approximations (all second order at realistic sizes, documented here once):
- E[exp(X)] is closed with the conditional-lognormal moment; the variance of the future alpha path itself
  (alpha sd ~0.2 % vs return sd ~2 %) is ignored.
- The expected alpha path is propagated with future innovations at their mean (certainty equivalence):
  exact for the linear reversal and momentum feedback (expected excess return = alpha - cap-weighted alpha
  of the market or sector),
  and for the lead-lag feedback (expected sector return = cap-weighted alpha of the sector); approximate for the
  nonlinear parts: the regime gate is frozen at its value at t, and the volume-shock input
  E[clip(abnormal volume, 0, 3) * sign(excess)] is taken as E[clip(...)] * sqrt(2/pi) * E[excess] / sd, with
  the sd of the excess return from today's idiosyncratic GARCH sd and the sector factor (small-signal
  expansion of E[sign]); future earnings surprises have mean 0 (exact).
- Stocks listed at t are assumed to stay listed (delistings are not announced in the data).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from gogooku3.sources.synthetic.market import Paths
from gogooku3.sources.synthetic.params import SynthParams

CHUNK_ROWS = 64  # sessions per block: keeps the propagation's working set in cache


def _rows_back(x: np.ndarray, a: int, b: int, j: int) -> np.ndarray:
    """x[t - j] for t in [a, b) (zeros where t - j < 0)."""
    lo, hi = a - j, b - j
    if lo >= 0:
        return x[lo:hi]
    out = np.zeros((b - a, x.shape[1]), dtype=x.dtype)
    if hi > 0:
        out[-lo:] = x[:hi]
    return out


def oracle_expectations(
    p: SynthParams,
    paths: Paths,
    caps: np.ndarray,
    sector: np.ndarray,
    lag_w: np.ndarray,
    horizons: tuple[int, ...],
    entry_lag: int,
) -> dict[int, np.ndarray]:
    """{h: oracle_h [n_days, n_stocks] float32} for every session and stock (masking happens later)."""
    d, n = paths.alpha.shape
    onehot = np.zeros((n, int(sector.max()) + 1), dtype=np.float32)
    onehot[np.arange(n), sector] = 1.0
    cum = paths.cum_excess.astype(np.float32)
    out = {h: np.empty((d, n), dtype=np.float32) for h in horizons}
    for a in range(0, d, CHUNK_ROWS):
        b = min(d, a + CHUNK_ROWS)
        block = _propagate(
            p, paths, caps[a:b], cum, a, b, sector, onehot, lag_w.astype(np.float32), horizons, entry_lag
        )
        for h in horizons:
            out[h][a:b] = block[h]
    return out


def _propagate(
    p: SynthParams,
    paths: Paths,
    caps: np.ndarray,
    cum: np.ndarray,
    a: int,
    b: int,
    sector: np.ndarray,
    onehot: np.ndarray,
    lag_w: np.ndarray,
    horizons: tuple[int, ...],
    entry_lag: int,
) -> dict[int, np.ndarray]:
    """Expected alpha path for sessions [a, b), summed over each horizon's label window."""
    f32 = np.float32
    s = f32(p.signal_strength)
    obf = paths.observed[a:b].astype(np.float32)
    capw = (caps * obf).astype(np.float32)
    w = capw / np.maximum(capw.sum(axis=1, keepdims=True), f32(1e-30))
    sec_den = np.maximum(capw @ onehot, f32(1e-30))
    sd = np.sqrt(paths.sigma[a:b] ** 2 + f32(p.sector_vol**2))
    vs_gain = f32(p.volume_coef * paths.abnormal_pos_mean * np.sqrt(2.0 / np.pi)) / sd
    gate = paths.calm[a:b].astype(np.float32)[:, None] * f32(p.momentum_coef)
    rev, ll, vs, ped = (x[a:b].copy() for x in (paths.rev, paths.leadlag, paths.volshock, paths.earnings))
    cum_t = cum[a:b]
    alpha = paths.alpha[a:b]
    ends = {entry_lag + h - 1: h for h in horizons}  # step k closing each horizon's label window
    sums: dict[int, np.ndarray] = {}
    acc = alpha.copy() if entry_lag == 0 else np.zeros_like(alpha)  # sum of alpha over steps lag..k

    def add(k: int, x: np.ndarray) -> None:
        nonlocal acc
        if k >= entry_lag and k > 0:
            acc = acc + x
        if k in ends:
            sums[ends[k]] = acc

    add(0, alpha)
    cum_future: deque[np.ndarray] = deque(maxlen=p.momentum_skip + 1)  # sum of expected excess, steps 1..k
    running = np.zeros_like(alpha)
    for k in range(1, entry_lag + max(horizons)):
        mkt = (alpha * w).sum(axis=1, keepdims=True)
        sec = ((alpha * capw) @ onehot / sec_den)[:, sector]
        x = obf * (alpha - mkt)
        running = running + x
        cum_future.append(running)
        rev = f32(p.reversal_decay) * rev - f32(p.reversal_coef) * obf * (alpha - sec)
        ll = f32(p.leadlag_decay) * ll + f32(p.leadlag_coef) * lag_w * obf * (sec - mkt)
        vs = f32(p.volume_decay) * vs + vs_gain * x
        ped = f32(p.earnings_decay) * ped
        j = k - p.momentum_skip  # momentum window end relative to t
        c_end = _rows_back(cum, a, b, -j) if j <= 0 else cum_t + cum_future[-1 - p.momentum_skip]
        mom = c_end - _rows_back(cum, a, b, p.momentum_window - k)
        alpha = s * (rev + ll + vs + ped + gate * mom)
        add(k, alpha)
    return {h: np.expm1(sums[h] + f32(h * p.market_drift)) for h in horizons}
