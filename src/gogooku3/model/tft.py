"""Temporal Fusion Transformer blocks (Lim et al. 2021), written for one trading day's [N, L, ...] batch.

Per-feature work is batched: the variable-selection network embeds all F features with one matmul and never
materialises an [N, L, F, H] tensor (the embeddings are linear, so the softmax-weighted sum of embeddings equals
a matmul of the weighted inputs with the stacked embedding matrices).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Dropout):
    """nn.Dropout whose CPU mask comes from one uniform draw (ATen's CPU bernoulli_ path is ~1.7x slower);
    on GPU the fused native kernel is used."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or self.p >= 1.0 or x.device.type != "cpu":
            return super().forward(x)
        return x * (torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p))


class GLU(nn.Module):
    """Gated linear unit: σ(W4 x) ⊙ (W5 x), as one Linear producing both halves."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.0):
        super().__init__()
        self.drop = Dropout(dropout)
        self.fc = nn.Linear(d_in, 2 * d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.glu(self.fc(self.drop(x)), dim=-1)


class GateAddNorm(nn.Module):
    """LayerNorm(skip + GLU(x)) — TFT's gated skip connection."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.0):
        super().__init__()
        self.glu = GLU(d_in, d_out, dropout)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.norm(skip + self.glu(x))


class GRN(nn.Module):
    """Gated residual network: LayerNorm(skip(a) + GLU(W1 ELU(W2 a + W3 c)))."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0, d_context: int | None = None):
        super().__init__()
        self.fc2 = nn.Linear(d_in, d_hidden)
        self.ctx = nn.Linear(d_context, d_hidden, bias=False) if d_context else None
        self.fc1 = nn.Linear(d_hidden, d_hidden)
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()
        self.gate = GateAddNorm(d_hidden, d_out, dropout)

    def forward(self, a: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc2(a)
        if self.ctx is not None and c is not None:
            h = h + self.ctx(c)
        h = self.fc1(F.elu(h))
        return self.gate(h, self.skip(a))


class StaticEncoder(nn.Module):
    """Sector and market-segment embeddings -> the four static contexts c_s, c_e, c_h, c_c."""

    def __init__(self, n_sectors: int, n_segments: int, hidden: int, dropout: float):
        super().__init__()
        self.sector = nn.Embedding(n_sectors, hidden)
        self.segment = nn.Embedding(n_segments, hidden)
        self.grns = nn.ModuleList(GRN(hidden, hidden, hidden, dropout) for _ in range(4))

    def forward(self, sector: torch.Tensor, segment: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = self.sector(sector) + self.segment(segment)
        return tuple(g(s) for g in self.grns)  # c_selection, c_enrichment, c_h, c_c


class VariableSelection(nn.Module):
    """TFT variable selection over all F features at once, with the weights chosen **once per window**.

    weights[n, :] = softmax(GRN(summary_n, c_s)), where summary_n = (last value, window mean, window std) of
    every feature; embedding_f(x) = x · W[f] + b[f]; output_t = Σ_f weights_f · embedding_f(x_{t,f}), one matmul.
    A per-time-step selector GRN (F -> F at every one of the L steps) was ~40 % of the model's FLOPs; selecting
    from a window summary keeps the static conditioning and the per-stock softmax at 1/L of that cost.
    """

    def __init__(self, n_features: int, hidden: int, dropout: float, init_gain: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_features, hidden) / math.sqrt(n_features) * 2.0)
        self.bias = nn.Parameter(torch.zeros(n_features, hidden))
        self.selector = GRN(3 * n_features, hidden, n_features, dropout, d_context=hidden)
        # The selector ends in a LayerNorm, so its logits have unit spread at init and the first weights favour
        # features at random; a small initial gain starts every seed from a near-uniform selection.
        nn.init.constant_(self.selector.gate.norm.weight, init_gain)
        self.post = GRN(hidden, hidden, hidden, dropout)

    def forward(self, x: torch.Tensor, c_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, L, F], c_s [N, H] -> (selected [N, L, H], weights [N, 1, F] shared by all L steps)."""
        mean = x.mean(dim=1)
        std = (x.square().mean(dim=1) - mean.square()).clamp_min(0.0).sqrt()  # ATen's std_mean here is ~30x slower
        summary = torch.cat([x[:, -1], mean, std], dim=-1)  # [N, 3F]
        w = torch.softmax(self.selector(summary, c_s), dim=-1)  # [N, F]
        sel = torch.matmul(x * w[:, None, :], self.weight) + (w @ self.bias)[:, None, :]
        return self.post(sel), w[:, None, :]


class InterpretableMultiHeadAttention(nn.Module):
    """Multi-head attention with one value projection shared by all heads and head outputs averaged (TFT)."""

    def __init__(self, hidden: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.d_head = n_heads, hidden // n_heads
        self.q = nn.Linear(hidden, self.d_head * n_heads)
        self.k = nn.Linear(hidden, self.d_head * n_heads)
        self.v = nn.Linear(hidden, self.d_head)
        self.out = nn.Linear(self.d_head, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, causal: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """q [N, Lq, H] are the *last* Lq positions of kv [N, L, H]; causal masks keys after each query."""
        n, lq, _ = q.shape
        lk = kv.shape[1]
        qh = self.q(q).view(n, lq, self.n_heads, self.d_head).transpose(1, 2)  # [N, h, Lq, d]
        kh = self.k(kv).view(n, lk, self.n_heads, self.d_head).transpose(1, 2)
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(self.d_head)  # [N, h, Lq, Lk]
        if causal and lq > 1:
            qpos = torch.arange(lk - lq, lk, device=q.device)[:, None]
            future = torch.arange(lk, device=q.device)[None, :] > qpos
            scores = scores.masked_fill(future, float("-inf"))
        attn = self.drop(torch.softmax(scores, dim=-1))
        v = self.v(kv)  # [N, Lk, d] shared across heads
        out = (attn @ v[:, None]).mean(dim=1)  # [N, Lq, d]
        return self.out(out), attn.mean(dim=1)


class TemporalFusion(nn.Module):
    """LSTM encoder -> gated skip -> static enrichment -> causal attention -> position-wise GRN; last step out.

    Only the last step is read out, so attention is evaluated for the last query only; with a causal mask this is
    exactly the last row of full causal self-attention, at 1/L of the cost.
    """

    def __init__(self, hidden: int, n_heads: int, lstm_layers: int, dropout: float):
        super().__init__()
        self.lstm_layers = lstm_layers
        self.lstm = nn.LSTM(
            hidden, hidden, num_layers=lstm_layers, batch_first=True, dropout=dropout if lstm_layers > 1 else 0.0
        )
        self.post_lstm = GateAddNorm(hidden, hidden, dropout)
        self.enrich = GRN(hidden, hidden, hidden, dropout, d_context=hidden)
        self.attn = InterpretableMultiHeadAttention(hidden, n_heads, dropout)
        self.post_attn = GateAddNorm(hidden, hidden, dropout)
        self.pos_ff = GRN(hidden, hidden, hidden, dropout)
        self.pre_out = GateAddNorm(hidden, hidden, 0.0)
        for name, p in self.lstm.named_parameters():
            if "weight_ih" in name:
                nn.init.xavier_uniform_(p)
            elif "weight_hh" in name:
                nn.init.orthogonal_(p)
            elif "bias" in name:
                nn.init.zeros_(p)
                p.data[hidden : 2 * hidden] = 1.0  # forget gate

    def forward(self, x: torch.Tensor, c_e: torch.Tensor, c_h: torch.Tensor, c_c: torch.Tensor) -> torch.Tensor:
        """x [N, L, H]; contexts [N, H] -> [N, H] (the last step)."""
        h0 = c_h[None].expand(self.lstm_layers, -1, -1).contiguous()
        c0 = c_c[None].expand(self.lstm_layers, -1, -1).contiguous()
        lstm_out, _ = self.lstm(x, (h0, c0))
        temporal = self.post_lstm(lstm_out, x)  # [N, L, H]
        enriched = self.enrich(temporal, c_e[:, None, :])
        last = enriched[:, -1:, :]
        a, _ = self.attn(last, enriched, causal=True)
        a = self.post_attn(a, last)
        out = self.pre_out(self.pos_ff(a), temporal[:, -1:, :])
        return out[:, 0, :]


def market_state(returns: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The day's market state from the raw 1-day return window [N, L] of its stocks (point in time: the window ends
    on the day): a vector of `MarketContext.N_STATE` scale-free or log-scaled figures, clipped to ±5 —
    log market volatility (EWM half-life 10, last 20, whole window), market return over 1/5/20/L days in units of
    its volatility, log cross-sectional dispersion (last 5 days, and relative to the window) and breadth."""
    r = returns.float()
    v = torch.isfinite(r) if valid is None else (valid & torch.isfinite(r))
    r = torch.where(v, r, torch.zeros_like(r))
    vf = v.float()
    cnt = vf.sum(0).clamp_min(1.0)  # [L] stocks per day
    m = r.sum(0) / cnt  # [L] equal-weighted market return
    L = m.shape[0]
    eps = 1e-6
    age = torch.arange(L - 1, -1, -1, device=r.device, dtype=r.dtype)
    w = 0.5 ** (age / 10.0)
    vol_ewm = ((w * m.square()).sum() / w.sum()).sqrt()
    k20 = min(20, L)
    vol20 = m[-k20:].square().mean().sqrt()
    vol = m.square().mean().sqrt()
    disp = ((r.square().sum(0) / cnt - m.square()).clamp_min(0.0)).sqrt()  # [L] cross-sectional std
    k5 = min(5, L)
    breadth = ((r > 0).float() * vf).sum(0) / cnt  # [L] share of rising stocks

    def log_ratio(a: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
        return torch.log((a + eps) / (b + eps))

    def ret(k: int) -> torch.Tensor:
        return m[-k:].sum() / (vol * math.sqrt(k) + eps)

    state = torch.stack(
        [
            log_ratio(vol_ewm, 0.01),
            log_ratio(vol20, 0.01),
            log_ratio(vol, 0.01),
            log_ratio(vol_ewm, vol),
            ret(1),
            ret(k5),
            ret(k20),
            ret(L),
            log_ratio(disp[-k5:].mean(), 0.02),
            log_ratio(disp[-k5:].mean(), disp.mean()),
            4.0 * (breadth[-k5:].mean() - 0.5),
            4.0 * (breadth[-1] - 0.5),
        ]
    )
    return state.clamp(-5.0, 5.0)


class MarketContext(nn.Module):
    """FiLM conditioning of the temporal output on the day's market state: h ⊙ (1 + γ) + β with (γ, β) from a
    small MLP of `market_state`. The last layer starts at zero, so an untrained context is the identity."""

    N_STATE = 12

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(self.N_STATE, hidden), nn.ELU(), Dropout(dropout), nn.Linear(hidden, 2 * hidden)
        )
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, h: torch.Tensor, returns: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """h [N, H]; returns, valid [N, L] (one day's stocks) -> [N, H]."""
        gamma, beta = self.net(market_state(returns, valid).to(h.dtype)).chunk(2, dim=-1)
        return h * (1.0 + gamma) + beta
