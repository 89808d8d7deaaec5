"""Predictions of a trained model over a PanelStore: the one prediction loop of training, tuning and the bundle.

A batch is one trading day (the GAT branch needs the day's whole cross-section); the frame is assembled once from
index arrays at the end, not row by row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
import polars as pl
import torch

from gogooku3.core import columns as C
from gogooku3.core.errors import DataError
from gogooku3.data.panel import PanelDayDataset, PanelStore

if TYPE_CHECKING:
    from gogooku3.model.atft_gat_fan import ATFTConfig


def quantile_col(h: int, level: float) -> str:
    """Column of a quantile forecast: pred_{h}d_q10 for level 0.1 (percent, two digits)."""
    return f"{C.pred(h)}_q{round(100 * float(level)):02d}"


EXPLAIN_COL = "vsn_weights"  # per row: the variable-selection weight of every feature (manifest order)


class _SelectionWeights:
    """Captures the per-sample variable-selection weights [N, F] of every VariableSelection module of a model
    (each ensemble member's) through forward hooks; `take()` returns their mean over members, or None when the
    modules' output has no per-sample weights."""

    def __init__(self, model: torch.nn.Module):
        from gogooku3.model.tft import VariableSelection

        self.seen: list[torch.Tensor] = []
        self.hooks = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, VariableSelection)]

    def _hook(self, module, args, out) -> None:
        w = out[1] if isinstance(out, tuple) and len(out) > 1 and torch.is_tensor(out[1]) else None
        if w is not None and w.dim() >= 2:
            self.seen.append(w.reshape(w.shape[0], -1, w.shape[-1]).mean(dim=1).float())

    def take(self) -> np.ndarray | None:
        w = torch.stack(self.seen).mean(dim=0).cpu().numpy() if self.seen else None
        self.seen = []
        return w

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


@torch.no_grad()
def predict_panel(
    model: torch.nn.Module,
    panel: PanelStore,
    days: Sequence[int] | np.ndarray,
    *,
    window: int,
    min_window_frac: float | None = None,
    valid: np.ndarray | None = None,
    dataset: PanelDayDataset | None = None,
    targets: bool = True,
    quantiles: bool = False,
    explain: bool = False,
) -> pl.DataFrame:
    """Date, Code, pred_{h}d (and target_{h}d when `targets`) for every stock with a valid window on each of
    `days` (panel day indices), sorted by Date, Code. `valid` ([D, N]: a data module's `window_ok`) or else
    `min_window_frac` (`train.min_window_frac`, as the model was trained with: `panel.window_valid`) is required;
    `dataset` (e.g. a GPU-resident one) may be passed to reuse a data module's.

    With `quantiles`, also the model's quantile forecasts `pred_{h}d_q{pct}` for each level of `model.cfg.quantiles`
    (the heads' output, in the units of the training target: the day's rank-gauss or z-scored return, see
    `train.loss.target_transform`). With `explain`, also `vsn_weights`: the row's variable-selection weights over the
    panel's features (the mean over ensemble members); the model's per-feature batch mean `feature_weights` when it
    exposes no per-sample weights (every row of a day then carries the same list)."""
    if valid is None:
        if min_window_frac is None:
            raise ValueError("predict_panel needs `valid` or `min_window_frac` (train.min_window_frac)")
        valid = panel.window_valid(window, min_window_frac)
    ds = dataset or PanelDayDataset(panel, window)
    model.eval()
    device = next(model.parameters()).device
    cfg = cast("ATFTConfig", model.cfg)  # any network of model.zoo or its ensemble: each carries horizons, quantiles
    horizons = list(cfg.horizons)
    levels = list(cfg.quantiles) if quantiles else []
    hook = _SelectionWeights(model) if explain else None
    day_ix, stock_ix, preds, quants, weights = [], [], [], [], []
    try:
        for d in np.asarray(days, dtype=np.int64):
            idx = np.flatnonzero(valid[d])
            if not len(idx):
                continue
            b = {k: v.to(device) for k, v in ds[(int(d), idx)].items() if torch.is_tensor(v)}
            res = model(b["x"], b["sector"], b["segment"], b["returns"], b["returns_valid"])
            preds.append(res["point"].float().cpu().numpy())
            if levels:
                if "quantiles" not in res:
                    raise DataError("predict: the model has no quantile heads (model.quantiles is empty)")
                quants.append(res["quantiles"].float().cpu().numpy())  # [n, H, Q]
            if hook is not None:
                w = hook.take()
                if w is None or w.shape[0] != len(idx):
                    mean = res.get("feature_weights")
                    if mean is None:
                        raise DataError("predict: the model exposes no variable-selection weights to explain")
                    w = np.broadcast_to(mean.float().cpu().numpy(), (len(idx), mean.shape[-1]))
                weights.append(np.asarray(w, dtype=np.float32))
            day_ix.append(np.full(len(idx), d, dtype=np.int64))
            stock_ix.append(idx)
    finally:
        if hook is not None:
            hook.close()
    if not preds:
        raise DataError(
            f"predict: no stock has a {window}-day window on any of the {len(days)} requested day(s); "
            "lower model.window or train.min_window_frac, or predict later dates"
        )
    d, i, p = np.concatenate(day_ix), np.concatenate(stock_ix), np.concatenate(preds)
    cols: dict[str, pl.Series] = {
        C.DATE: pl.Series(C.DATE, panel.dates, dtype=pl.Date).gather(d),
        C.CODE: pl.Series(C.CODE, panel.codes, dtype=pl.String).gather(i),
        **{C.pred(h): pl.Series(C.pred(h), p[:, j], dtype=pl.Float32) for j, h in enumerate(horizons)},
    }
    if levels:
        qa = np.concatenate(quants)
        for j, h in enumerate(horizons):
            for k, lv in enumerate(levels):
                cols[quantile_col(h, lv)] = pl.Series(quantile_col(h, lv), qa[:, j, k], dtype=pl.Float32)
    if hook is not None:
        cols[EXPLAIN_COL] = pl.Series(
            EXPLAIN_COL, np.concatenate(weights), dtype=pl.Array(pl.Float32, weights[0].shape[1])
        )
    if targets:
        y = np.asarray(panel.targets)[d, i] if panel.targets.shape[-1] else np.full((len(d), 0), np.nan)
        for j, h in enumerate(panel.horizons):
            cols[C.target(h)] = pl.Series(C.target(h), y[:, j], dtype=pl.Float32, nan_to_null=True)
    return pl.DataFrame(cols).sort(C.DATE, C.CODE)
