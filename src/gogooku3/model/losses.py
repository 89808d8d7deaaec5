"""The multi-horizon loss on one day's cross-section.

Per horizon h: targets standardised over the day's stocks that have a label (missing labels are masked out, never
zero-filled) — z-score, or rank-gauss (the day's ranks mapped to normal quantiles, robust to fat tails and to
high-volatility names dominating the day) — then Huber(ŷ, z) + λ_q · pinball(quantiles, z) + λ_ic · (1 − Pearson(ŷ, z));
horizons combined with normalised weights. Horizons with fewer than `min_stocks` labels that day are skipped.
Skipping is a weight, not a branch: every horizon is computed on masked tensors (means over the mask, `torch.where`
for the rest), so the forward never reads a value back to the host (no `.item()`, no boolean indexing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def zscore(y: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cross-sectional z-score of y over mask (entries outside mask are 0 and must stay masked)."""
    n = mask.sum().clamp(min=1)
    y0 = torch.where(mask, y, torch.zeros_like(y))
    mean = y0.sum() / n
    var = (torch.where(mask, y - mean, torch.zeros_like(y)) ** 2).sum() / n
    return torch.where(mask, (y - mean) / (var.sqrt() + eps), torch.zeros_like(y))


def rank_gauss(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-sectional ranks of y over mask mapped to standard-normal quantiles (0 outside mask)."""
    n = mask.sum().clamp(min=1)
    order = torch.argsort(torch.where(mask, y, torch.full_like(y, float("inf"))))
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(y.numel(), device=y.device)
    u = (ranks.to(y.dtype) + 0.5) / n
    return torch.where(mask, torch.special.ndtri(u.clamp(max=1 - 1e-6)), torch.zeros_like(y))


TARGET_TRANSFORMS = {"zscore": zscore, "rank_gauss": rank_gauss}


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm() + eps)


def pinball(q: torch.Tensor, y: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """q [n, Q], y [n], levels [Q] -> mean pinball loss."""
    diff = y[:, None] - q
    return torch.maximum(levels * diff, (levels - 1) * diff).mean()


def _masked_mean(v: torch.Tensor, mask: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Mean of v over mask (n = mask's count, >= 1); entries outside mask never reach the result or its gradient."""
    return torch.where(mask, v, torch.zeros_like(v)).sum() / n


def masked_pearson(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, n: torch.Tensor, eps: float = 1e-8):
    """`pearson(a[mask], b[mask])` without the boolean index (no host sync)."""
    zero = torch.zeros_like(a)
    a = torch.where(mask, a - _masked_mean(a, mask, n), zero)
    b = torch.where(mask, b - _masked_mean(b, mask, n), zero)
    return (a * b).sum() / (a.norm() * b.norm() + eps)


class MultiHorizonLoss(torch.nn.Module):
    weights: torch.Tensor  # buffers (registered in __init__)
    levels: torch.Tensor

    def __init__(
        self,
        horizons: Sequence[int],
        weights: Sequence[float] | None = None,
        quantiles: Sequence[float] = (),
        huber_delta: float = 1.0,
        lambda_q: float = 0.25,
        lambda_ic: float = 0.5,
        min_stocks: int = 5,
        target_transform: str = "rank_gauss",
    ):
        super().__init__()
        if target_transform not in TARGET_TRANSFORMS:
            raise ValueError(
                f"target_transform must be one of {', '.join(TARGET_TRANSFORMS)}, got {target_transform!r}"
            )
        self.standardise = TARGET_TRANSFORMS[target_transform]
        w = torch.tensor(list(weights) if weights is not None else [1.0] * len(horizons), dtype=torch.float32)
        if len(w) != len(horizons):
            raise ValueError(f"{len(w)} horizon weights for {len(horizons)} horizons")
        self.register_buffer("weights", w / w.sum())
        self.register_buffer("levels", torch.tensor(list(quantiles), dtype=torch.float32))
        self.horizons = list(horizons)
        self.huber_delta, self.lambda_q, self.lambda_ic, self.min_stocks = huber_delta, lambda_q, lambda_ic, min_stocks

    def forward(self, out: dict[str, torch.Tensor], y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """out['point'] [N, nH] (+ 'quantiles' [N, nH, Q]); y [N, nH] raw targets, NaN = missing.

        `parts` holds every horizon's loss, 0 on a day the horizon is skipped."""
        point = out["point"].float()
        quant = out.get("quantiles")
        use_q = quant is not None and self.lambda_q > 0 and self.levels.numel() > 0
        total = point.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        wsum = point.new_zeros(())
        for j, h in enumerate(self.horizons):
            mask = torch.isfinite(y[:, j])
            count = mask.sum()
            active = count >= self.min_stocks
            n = count.clamp(min=1).to(point.dtype)
            z = self.standardise(y[:, j].float(), mask)  # 0 outside mask
            p = torch.where(mask, point[:, j], torch.zeros_like(z))
            loss = _masked_mean(F.huber_loss(p, z, delta=self.huber_delta, reduction="none"), mask, n)
            if self.lambda_ic > 0:
                loss = loss + self.lambda_ic * (1.0 - masked_pearson(p, z, mask, n))
            if use_q and quant is not None:
                q = torch.where(mask[:, None], quant[:, j].float(), torch.zeros_like(quant[:, j].float()))
                diff = z[:, None] - q
                pin = torch.maximum(self.levels * diff, (self.levels - 1) * diff).sum(dim=1)
                loss = loss + self.lambda_q * _masked_mean(pin, mask, n) / self.levels.numel()
            loss = torch.where(active, loss, torch.zeros_like(loss))
            parts[f"loss_{h}d"] = loss.detach()
            w = torch.where(active, self.weights[j], torch.zeros_like(self.weights[j]))
            total = total + w * loss
            wsum = wsum + w
        # no labelled horizon today: zero loss that keeps the graph (point.sum() * 0, as a branch would give)
        return torch.where(wsum > 0, total / wsum.clamp(min=1e-12), point.sum() * 0.0), parts
