"""Metrics on torch tensors, on the training device: the validation loop's daily RankIC without a copy to the host.

Each is the definition of its `metrics` twin (same ranks, same correlation), tested against it.
"""

from __future__ import annotations

import torch


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """0-based ranks with ties sharing their average rank (as `gogooku3.evaluation.metrics` ranks)."""
    xs, order = x.sort()
    _, inverse, counts = torch.unique_consecutive(xs, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0)
    avg = (ends - counts + ends - 1).float() / 2
    ranks = torch.empty_like(avg[inverse])
    ranks[order] = avg[inverse]
    return ranks


def rank_ic(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One day's RankIC on device, for the validation loop: the definition of `gogooku3.evaluation.metrics.daily_ic`
    (Pearson correlation of average ranks), tested against it."""
    rp, ry = average_ranks(pred.float()), average_ranks(y.float())
    rp, ry = rp - rp.mean(), ry - ry.mean()
    return (rp * ry).sum() / (rp.norm() * ry.norm() + 1e-12)
