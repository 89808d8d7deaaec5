"""Capacity: the realistic book's net Sharpe at several capitals (`portfolio.capacity_capitals`), so a reader sees
where market impact and the participation cap eat the edge."""

from __future__ import annotations

from typing import Any

import polars as pl

from gogooku3.evaluation.backtest.config import BacktestConfig
from gogooku3.evaluation.backtest.engine import backtest
from gogooku3.evaluation.backtest.market import Market


def capacity(
    preds: pl.DataFrame, cfg: Any = None, market: Market | None = None, capitals: list[float] | None = None
) -> list[dict]:
    """Per capital (yen per unit of leg weight; default `capacity_capitals`): the realistic backtest's net Sharpe,
    annual return, gross Sharpe, the TSE cost parts (totals, units of capital) and the fill counts."""
    c = BacktestConfig.from_any(cfg)
    return [
        capacity_row(float(cap), backtest(preds, cfg=c, market=market, realistic=True, capital=float(cap)).summary)
        for cap in (capitals if capitals is not None else c.capacity_capitals)
    ]


def capacity_row(capital: float, s: dict[str, Any]) -> dict:
    """One capacity row from the summary of the realistic backtest at `capital`."""
    fills = s["realism"].get("fills", {})
    return {
        "capital": capital,
        "sharpe": s["sharpe"],
        "ann_return": s["ann_return"],
        "sharpe_gross": s["sharpe_gross"],
        "costs": s["realism"].get("costs", {}),
        "unfilled_orders": fills.get("unfilled_orders", {}),
        "filled_share_of_traded": fills.get("filled_share_of_traded"),
    }
