"""Predictions of a trained model over a PanelStore: the one prediction loop of training, tuning and the bundle.

A batch is one trading day (the GAT branch needs the day's whole cross-section); the frame is assembled once from
index arrays at the end, not row by row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import torch

from gogooku3 import columns as C
from gogooku3.errors import DataError
from gogooku3.panel import PanelDayDataset, PanelStore


@torch.no_grad()
def predict_panel(model: torch.nn.Module, panel: PanelStore, days: Sequence[int] | np.ndarray, *, window: int,
                  min_window_frac: float = 1.0, valid: np.ndarray | None = None,
                  dataset: PanelDayDataset | None = None, targets: bool = True) -> pl.DataFrame:
    """Date, Code, pred_{h}d (and target_{h}d when `targets`) for every stock with a valid window on each of
    `days` (panel day indices), sorted by Date, Code. `valid` ([D, N], default `panel.window_valid`) and `dataset`
    (e.g. a GPU-resident one) may be passed to reuse a data module's."""
    valid = panel.window_valid(window, min_window_frac) if valid is None else valid
    ds = dataset or PanelDayDataset(panel, window)
    model.eval()
    device = next(model.parameters()).device
    horizons = list(model.cfg.horizons)
    day_ix, stock_ix, preds = [], [], []
    for d in np.asarray(days, dtype=np.int64):
        idx = np.flatnonzero(valid[d])
        if not len(idx):
            continue
        b = {k: v.to(device) for k, v in ds[(int(d), idx)].items() if torch.is_tensor(v)}
        out = model(b["x"], b["sector"], b["segment"], b["returns"], b["returns_valid"])["point"]
        preds.append(out.float().cpu().numpy())
        day_ix.append(np.full(len(idx), d, dtype=np.int64))
        stock_ix.append(idx)
    if not preds:
        raise DataError(f"predict: no stock has a {window}-day window on any of the {len(days)} requested day(s); "
                        "lower model.window or train.min_window_frac, or predict later dates")
    d, i, p = np.concatenate(day_ix), np.concatenate(stock_ix), np.concatenate(preds)
    cols: dict[str, pl.Series] = {
        C.DATE: pl.Series(C.DATE, panel.dates, dtype=pl.Date).gather(d),
        C.CODE: pl.Series(C.CODE, panel.codes, dtype=pl.String).gather(i),
        **{C.pred(h): pl.Series(C.pred(h), p[:, j], dtype=pl.Float32) for j, h in enumerate(horizons)}}
    if targets:
        y = np.asarray(panel.targets)[d, i] if panel.targets.shape[-1] else np.full((len(d), 0), np.nan)
        for j, h in enumerate(panel.horizons):
            cols[C.target(h)] = pl.Series(C.target(h), y[:, j], dtype=pl.Float32, nan_to_null=True)
    return pl.DataFrame(cols).sort(C.DATE, C.CODE)
