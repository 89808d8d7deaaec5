"""Per-horizon output heads: a point prediction and monotone quantiles."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HorizonHead(nn.Module):
    """MLP -> point [N] and quantiles [N, Q], monotone by construction: q_0, q_0 + cumsum(softplus(Δ))."""

    def __init__(self, hidden: int, head_hidden: int, n_quantiles: int, dropout: float):
        super().__init__()
        self.n_quantiles = n_quantiles
        self.mlp = nn.Sequential(nn.Linear(hidden, head_hidden), nn.GELU(), nn.Dropout(dropout))
        self.point = nn.Linear(head_hidden, 1)
        self.quant = nn.Linear(head_hidden, n_quantiles) if n_quantiles else None

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.mlp(h)
        point = self.point(z)[:, 0]
        if self.quant is None:
            return point, None
        raw = self.quant(z)
        if self.n_quantiles == 1:
            return point, raw
        q = torch.cat([raw[:, :1], raw[:, :1] + torch.cumsum(F.softplus(raw[:, 1:]), dim=-1)], dim=-1)
        return point, q


class MultiHorizonHeads(nn.Module):
    """One HorizonHead per horizon; returns point [N, nH] and quantiles [N, nH, Q] (or None)."""

    def __init__(self, hidden: int, head_hidden: int, n_horizons: int, n_quantiles: int, dropout: float):
        super().__init__()
        self.heads = nn.ModuleList(HorizonHead(hidden, head_hidden, n_quantiles, dropout) for _ in range(n_horizons))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        outs = [head(h) for head in self.heads]
        point = torch.stack([p for p, _ in outs], dim=1)
        quant = torch.stack([q for _, q in outs], dim=1) if outs[0][1] is not None else None
        return point, quant
