"""ATFT-GAT-FAN: one trading day's stocks in, per-horizon return predictions out.

x [N, L, F] (cross-sectionally normalised features), sector [N], segment [N], raw returns [N, L]
  │ 1. input norm (FAN | RevIN | none) ─────────────── summary of the removed component ──┐
  │ 2. variable selection (softmax weights once per window: GRN(window summary, static ctx))│
  │ 3. temporal fusion (LSTM from static state, enrichment, causal attention) -> last step  │
  ▼                                                                                         ▼
  h = temporal + norm summary
  │ 3b. market context (model.market_context=film): h ← h ⊙ (1 + γ(c)) + β(c), c = the day's market state
  │     computed from the raw return window (point in time: days d-L+1..d only)
  │ 4. GAT over the day's correlation graph, fused as h + g ⊙ gat(h)          (model.gat)
  ▼ 5. heads per horizon: point + monotone quantiles
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from gogooku3.model.fan import make_input_norm
from gogooku3.model.gat import GraphBranch, day_graph
from gogooku3.model.heads import MultiHorizonHeads
from gogooku3.model.tft import (
    MarketContext,
    StaticEncoder,
    TemporalFusion,
    VariableSelection,
)


@dataclass(kw_only=True)
class ATFTConfig:
    """Model hyper-parameters, every one required: the values come from the `model` config group (conf/model/*.yaml,
    `from_dict(cfg.model + n_features, horizons)`) or a bundle's model_config; n_features and horizons come from the
    data (the dataset's manifest)."""

    n_features: int
    window: int
    horizons: tuple[int, ...]
    hidden: int
    n_heads: int
    lstm_layers: int
    dropout: float
    norm: str  # fan | revin | none
    fan_topk: int
    gat: bool
    gat_heads: tuple[int, int]
    gat_dropout: float
    quantiles: tuple[float, ...]
    head_hidden: int
    n_sectors: int
    n_segments: int
    vsn_init_gain: float  # initial gain of the variable-selection logits (small: near-uniform start)
    market_context: str  # none | film: FiLM of the temporal output from the day's market state
    graph: dict  # FinancialGraphBuilder settings (model.graph)

    MODEL_GROUP_ONLY = ("name", "expected_params")  # keys of the model config group that are not model fields

    @classmethod
    def from_dict(cls, d: dict) -> ATFTConfig:
        """From `cfg.model` (plus n_features, horizons) or a bundle's model_config; an unknown key is a
        ConfigError (the model group's `name` and `expected_params` are dropped)."""
        from gogooku3.config.schema import unknown_key_error

        names = [f.name for f in fields(cls)]
        d = {k: v for k, v in d.items() if k not in cls.MODEL_GROUP_ONLY}
        for k in d:
            if k not in names:
                raise unknown_key_error("model", str(k), names)
        missing = [n for n in names if n not in d]
        if missing:
            from gogooku3.core.errors import ConfigError

            raise ConfigError(
                f"model.{missing[0]}: required key missing (ATFTConfig takes every key of the model "
                f"group plus n_features and horizons; missing: {', '.join(missing)})"
            )
        for k in ("horizons", "gat_heads", "quantiles"):
            if k in d:
                d[k] = tuple(d[k])
        if "graph" in d:
            d["graph"] = dict(d["graph"])
        return cls(**d)

    @classmethod
    def packaged(cls, **keys) -> ATFTConfig:
        """The packaged default model option's values (conf/model, composed: model=small) with `keys` (n_features and
        horizons at least) on top: for building a model outside a run, the values still read from the YAML."""
        from gogooku3.config.compose import packaged_group

        return cls.from_dict({**packaged_group("model"), **keys})

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("horizons", "gat_heads", "quantiles"):
            d[k] = list(d[k])
        return d


class ATFTGATFAN(nn.Module):
    def __init__(self, cfg: ATFTConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden
        self.input_norm = make_input_norm(cfg.norm, cfg.n_features, cfg.window, H, cfg.fan_topk)
        self.static = StaticEncoder(cfg.n_sectors, cfg.n_segments, H, cfg.dropout)
        self.vsn = VariableSelection(cfg.n_features, H, cfg.dropout, cfg.vsn_init_gain)
        self.temporal = TemporalFusion(H, cfg.n_heads, cfg.lstm_layers, cfg.dropout)
        if cfg.market_context not in ("none", "film"):
            raise ValueError(f"model.market_context must be none or film, got {cfg.market_context!r}")
        self.context = MarketContext(H, cfg.dropout) if cfg.market_context == "film" else None
        self.graph = GraphBranch(H, tuple(cfg.gat_heads), cfg.gat_dropout) if cfg.gat else None
        self.heads = MultiHorizonHeads(H, cfg.head_hidden, len(cfg.horizons), len(cfg.quantiles), cfg.dropout)
        self._graph_builder = None

    @property
    def graph_builder(self):
        if self._graph_builder is None:
            from gogooku3.data.graph import FinancialGraphBuilder

            self._graph_builder = FinancialGraphBuilder(**self.cfg.graph)
        return self._graph_builder

    def forward(
        self,
        x: torch.Tensor,
        sector: torch.Tensor,
        segment: torch.Tensor,
        returns: torch.Tensor | None = None,
        returns_valid: torch.Tensor | None = None,
        edges: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """x [N, L, F]; sector, segment [N] long; returns [N, L] raw 1-day returns (needed when model.gat).

        Returns point [N, nH], quantiles [N, nH, Q] (when configured) and feature_weights [F] (mean VSN weight).
        """
        c_s, c_e, c_h, c_c = self.static(sector, segment)
        x, norm_summary = self.input_norm(x)
        sel, weights = self.vsn(x, c_s)
        h = self.temporal(sel, c_e, c_h, c_c) + norm_summary
        if self.context is not None:
            if returns is None:
                raise ValueError("model.market_context=film needs the raw return window (returns=[N, L])")
            h = self.context(h, returns, returns_valid)
        if self.graph is not None:
            if edges is None:
                if returns is None:
                    raise ValueError("model.gat=true needs the raw return window (returns=[N, L])")
                edges = day_graph(self.graph_builder, returns, returns_valid, sector, segment)
            h = self.graph(h, *edges)
        point, quantiles = self.heads(h)
        out = {"point": point, "feature_weights": weights.mean(dim=(0, 1))}
        if quantiles is not None:
            out["quantiles"] = quantiles
        return out

    def get_num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def estimate_flops_per_sample(self) -> float:
        """Training FLOPs per (stock, day) sample: 3 × forward, forward ≈ 2 × params applied per use.

        Weights applied at every window step (feature embedding, post-selection GRN, LSTM, gated skip, static
        enrichment, attention keys/values) count L times; the rest (static encoder, selector on the window
        summary, last-step blocks, GAT, heads) once; attention adds 2·L·H for the last query.
        """
        L, H, F = self.cfg.window, self.cfg.hidden, self.cfg.n_features
        t = self.temporal

        def n(*mods: nn.Module) -> int:
            return sum(p.numel() for m in mods for p in m.parameters())

        ctx = t.enrich.ctx
        assert ctx is not None  # the static enrichment always has its context projection
        per_step = F * H + n(self.vsn.post, t.lstm, t.post_lstm, t.enrich, t.attn.k, t.attn.v) - n(ctx)
        once = self.get_num_params() - per_step
        fwd = 2.0 * (per_step * L + once) + 4.0 * L * H
        return 3.0 * fwd
