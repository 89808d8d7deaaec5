"""Input normalisers over each stock's window: FAN (Ye et al., NeurIPS 2024), RevIN, or none.

Each returns (residual [N, L, F] for the backbone, summary [N, H] that joins the final representation), so the
information removed from the input is not lost (the original's FAN/SAN variants zeroed or dropped it).
"""

from __future__ import annotations

import torch
from torch import nn


class FAN(nn.Module):
    """Frequency Adaptive Normalization: remove the top-K rFFT frequencies (by amplitude) per stock and feature.

    main = irfft(rfft(x) masked to its K largest-amplitude bins); the backbone sees x - main. The removed component
    is summarised over time by two learned temporal weightings per feature and projected to the hidden size.
    """

    def __init__(self, n_features: int, window: int, hidden: int, topk: int = 3):
        super().__init__()
        self.topk = max(1, min(topk, window // 2 + 1))
        self.time_proj = nn.Linear(window, 2)
        self.proj = nn.Linear(2 * n_features, hidden)

    def _main_ft(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, L, F] -> the top-K-frequency reconstruction laid out [N, F, L] (time last: contiguous FFT/top-k)."""
        xt = x.float().transpose(1, 2).contiguous()
        xf = torch.fft.rfft(xt, dim=-1)
        power = xf.real.square() + xf.imag.square()  # same order as |X|, without the sqrt
        return torch.fft.irfft(xf * self._top_mask(power), n=x.shape[1], dim=-1)

    def _top_mask(self, power: torch.Tensor) -> torch.Tensor:
        """Bool mask of the K largest bins along the last axis (exact ties keep every tied bin).

        K passes of amax: faster than topk + scatter on CPU for the small K used here."""
        kth = power.amax(dim=-1, keepdim=True)
        for _ in range(self.topk - 1):
            kth = power.masked_fill(power >= kth, float("-inf")).amax(dim=-1, keepdim=True)
        return power >= kth

    def main_component(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, L, F] -> the reconstruction from its top-K frequencies, [N, L, F]."""
        return self._main_ft(x).transpose(1, 2).to(x.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        main_t = self._main_ft(x)  # [N, F, L]
        summary = self.time_proj(main_t.to(x.dtype)).flatten(1)  # [N, 2F]
        return x - main_t.transpose(1, 2).to(x.dtype), self.proj(summary)


class RevIN(nn.Module):
    """Reversible instance normalisation: per stock and feature, z-score over the window with a learnable affine."""

    def __init__(self, n_features: int, hidden: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(n_features))
        self.beta = nn.Parameter(torch.zeros(n_features))
        self.proj = nn.Linear(2 * n_features, hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = x.mean(dim=1, keepdim=True)
        std = (x.var(dim=1, keepdim=True, unbiased=False) + self.eps).sqrt()
        y = (x - mean) / std * self.gamma + self.beta
        return y, self.proj(torch.cat([mean[:, 0], std[:, 0]], dim=-1))


class NoNorm(nn.Module):
    """Identity; contributes a zero summary."""

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x.new_zeros(x.shape[0], self.hidden)


def make_input_norm(kind: str, n_features: int, window: int, hidden: int, topk: int) -> nn.Module:
    if kind == "fan":
        return FAN(n_features, window, hidden, topk)
    if kind == "revin":
        return RevIN(n_features, hidden)
    if kind == "none":
        return NoNorm(hidden)
    from gogooku3.core.errors import ConfigError

    raise ConfigError(f"model.norm must be fan, revin or none, got '{kind}'")
