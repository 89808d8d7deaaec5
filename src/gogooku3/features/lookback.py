"""How far back (in sessions) each feature group reads: the manifest's `lookback`, which purged K-fold needs to
purge training rows whose features cover a test block (`split.make_splitter`).

Finite windows count as their length; exponential smoothers as the sessions after which an observation's weight
has fallen below e^-6 (≈ 0.25 %): 3·span for an EWM with span s (α = 2/(s+1)), 6·n for Wilder's RMA (α = 1/n).
Weekly tables count 5 sessions a week plus their staleness limit; statements a stale limit plus the prior year a
YoY ratio compares with. `user` columns are the user's own, taken as known at their date (0).
"""

from __future__ import annotations

import math
from typing import Any

SESSIONS_PER_YEAR, SESSIONS_PER_WEEK = 245, 5


def _days(calendar_days: int) -> int:
    return math.ceil(calendar_days * SESSIONS_PER_YEAR / 365)


def group_lookbacks(f: dict[str, Any]) -> dict[str, int]:
    """{group: longest look-back in sessions} from the `features` config (a plain dict)."""
    w, t = f["windows"], f["technicals"]
    ema = 3 * max(w["ema"])
    returns = max(max(w["returns"]), max(w["log_returns"]))
    volatility = max(max(w["volatility"]), w["parkinson"]) + 1
    moving = max(max(w["sma"]), ema)
    technicals = max(
        6 * max(t["rsi"]), 3 * (t["macd"][1] + t["macd"][2]), 6 * t["atr"], 12 * t["adx"], t["stoch"], t["bb_window"]
    )
    statements = _days(int(f["statements"]["stale_days"])) + SESSIONS_PER_YEAR
    volume = max(max(w["volume_ma"]), statements)  # shares outstanding / market cap come from statements
    market = int(f["market"]["z_window"]) + max(returns, int(f["market"]["big_move_window"]))
    cx = f["cross"]
    cross = int(cx["beta_window"]) + int(cx["beta_lag"]) + int(cx["stability_window"])
    fl, mg, q = f["flows"], f["margin"], f["quality"]
    flows = SESSIONS_PER_WEEK * (int(fl["z_window"]) + int(fl["mom_window"])) + _days(int(fl["stale_days"]))
    margin = (
        SESSIONS_PER_WEEK * int(mg["z_window"])
        + _days(int(mg["stale_days"]))
        + int(mg["pub_lag_sessions"])
        + int(mg["adv_window"])
    )
    quality = 2 * int(q["vol_window"]) + max(int(h) for h in q["sharpe_horizons"]) + 5
    return {
        "ohlcv": 1,
        "returns": returns,
        "volatility": volatility,
        "moving_averages": moving,
        "price_position": moving,
        "volume": volume,
        "technicals": technicals,
        "market": market,
        "cross": max(cross, market),
        "flows": flows,
        "statements": statements,
        "margin": margin,
        "sector": max(volume, technicals, volatility),
        "flags": max(f["flags"]["maturity"].values()),
        "quality": max(quality, returns, volume),
        "user": 0,
    }
