"""The model zoo's simpler networks beside ATFT-GAT-FAN, after Qlib's benchmark baselines (MLP, GRU, LSTM).

Same call and output as `ATFTGATFAN.forward`: x [N, L, F] (one day's stocks, their input windows) in; point [N, nH],
quantiles [N, nH, Q] (when `quantiles` is not empty; the same `heads.MultiHorizonHeads`) and feature_weights [F] out.

    mlp   the last step of the window only (the features of day d): `layers` × (Linear, GELU, dropout) -> heads
    gru   nn.GRU / nn.LSTM over the whole window (`layers` stacked, dropout between them) -> last hidden state
    lstm  -> dropout -> heads

No sector/segment embedding and no graph: the networks see the features alone, as Qlib's baselines do.
`feature_weights` is the share of each feature in the input layer's weights (the L2 norm of its column of the first
Linear / the first recurrent layer's input matrix, normalised to sum 1): a gradient-free proxy, not a per-sample
selection like ATFT's variable-selection weights.

`build_model(model_cfg)` builds any network of the zoo from one model-config dict: its `arch` key is
`atft_gat_fan` | `mlp` | `gru` | `lstm`; a dict without `arch` is ATFT-GAT-FAN (every bundle and checkpoint saved
before the zoo).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, cast

import torch
from torch import nn

from gogooku3.core.errors import ConfigError
from gogooku3.model.atft_gat_fan import ATFTGATFAN, ATFTConfig
from gogooku3.model.ensemble import ATFTEnsemble
from gogooku3.model.heads import MultiHorizonHeads

ATFT = "atft_gat_fan"
ARCHS = (ATFT, "mlp", "gru", "lstm")


@dataclass(kw_only=True)
class NetConfig:
    """A zoo network's hyper-parameters, every one required (the `predictors.zoo` entry's keys plus n_features and
    horizons from the data)."""

    arch: str  # mlp | gru | lstm
    n_features: int
    window: int  # L: days of the input window the data gives (the MLP reads its last day only)
    horizons: tuple[int, ...]
    hidden: int
    layers: int
    dropout: float
    head_hidden: int
    quantiles: tuple[float, ...]

    @classmethod
    def keys(cls) -> list[str]:
        """The keys a `predictors.zoo` entry sets (the rest come from the data)."""
        return [f.name for f in fields(cls) if f.name not in ("arch", "n_features", "horizons")]

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "model") -> NetConfig:
        """From a complete model-config dict; an unknown or missing key is a ConfigError naming `where.<key>`."""
        names = [f.name for f in fields(cls)]
        unknown = [k for k in d if k not in names]
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key for a {d.get('arch')} network (known: {names})")
        missing = [n for n in names if n not in d]
        if missing:
            raise ConfigError(f"{where}.{missing[0]}: required key missing (missing: {', '.join(missing)})")
        if d["arch"] not in ARCHS[1:]:
            raise ConfigError(f"{where}.arch={d['arch']!r}: one of {', '.join(ARCHS)}")
        out = dict(d)
        out["horizons"] = tuple(int(h) for h in d["horizons"])
        out["quantiles"] = tuple(float(q) for q in d["quantiles"])
        for k in ("n_features", "window", "hidden", "layers", "head_hidden"):
            if int(out[k]) < 1:
                raise ConfigError(f"{where}.{k}={out[k]}: must be >= 1")
        if not 0.0 <= float(out["dropout"]) < 1.0:
            raise ConfigError(f"{where}.dropout={out['dropout']}: must be in [0, 1)")
        return cls(**out)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["horizons"], d["quantiles"] = list(self.horizons), list(self.quantiles)
        return d


class ZooNet(nn.Module):
    """The base of the zoo's networks: `encode` x [N, L, F] -> h [N, hidden]; the heads and outputs are shared."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        self.heads = MultiHorizonHeads(cfg.hidden, cfg.head_hidden, len(cfg.horizons), len(cfg.quantiles), cfg.dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def input_weight(self) -> torch.Tensor:
        """The first layer's weight matrix [*, F] (its columns are the features)."""
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        sector: torch.Tensor,
        segment: torch.Tensor,
        returns: torch.Tensor | None = None,
        returns_valid: torch.Tensor | None = None,
        edges: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """x [N, L, F]; sector, segment, returns, edges: accepted for the common signature, unused."""
        h = self.encode(torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0))
        point, quantiles = self.heads(h)
        out = {"point": point, "feature_weights": self.feature_weights()}
        if quantiles is not None:
            out["quantiles"] = quantiles
        return out

    @torch.no_grad()
    def feature_weights(self) -> torch.Tensor:
        norms = self.input_weight().detach().float().norm(dim=0)
        return norms / norms.sum().clamp_min(1e-12)

    def get_num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def steps_per_sample(self) -> int:
        """How many window steps the network reads (its per-step weights are applied that many times)."""
        return 1

    def per_step_params(self) -> int:
        return 0

    def estimate_flops_per_sample(self) -> float:
        """Training FLOPs per (stock, day) sample: 3 × forward, forward ≈ 2 × params applied per use (recurrent
        weights once per window step)."""
        per_step = self.per_step_params()
        once = self.get_num_params() - per_step
        return 3.0 * 2.0 * (per_step * self.steps_per_sample() + once)


class MLPNet(ZooNet):
    """Per-day cross-section: the features of day d (the window's last step) through `layers` dense layers."""

    def __init__(self, cfg: NetConfig):
        super().__init__(cfg)
        dims = [cfg.n_features] + [cfg.hidden] * cfg.layers
        blocks: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            blocks += [nn.Linear(a, b), nn.GELU(), nn.Dropout(cfg.dropout)]
        self.body = nn.Sequential(*blocks)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x[:, -1, :])

    def input_weight(self) -> torch.Tensor:
        return cast(nn.Linear, self.body[0]).weight


class RNNNet(ZooNet):
    """GRU or LSTM over the whole window; the last step's hidden state of the top layer -> dropout -> heads."""

    def __init__(self, cfg: NetConfig):
        super().__init__(cfg)
        rnn = nn.GRU if cfg.arch == "gru" else nn.LSTM
        self.rnn = rnn(
            cfg.n_features,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.drop(out[:, -1, :])

    def input_weight(self) -> torch.Tensor:
        return cast(torch.Tensor, self.rnn.weight_ih_l0)

    def steps_per_sample(self) -> int:
        return self.cfg.window

    def per_step_params(self) -> int:
        return sum(p.numel() for p in self.rnn.parameters())


class NetEnsemble(ATFTEnsemble):
    """A seed ensemble of zoo networks: `ATFTEnsemble`'s forward, mean and counts, without a day graph."""

    def __init__(self, members: Sequence[ZooNet]):
        super().__init__(members)
        self.cfg: NetConfig = members[0].cfg


Network = ATFTGATFAN | ATFTEnsemble | ZooNet | NetEnsemble  # what training, inference and the bundle hold

NETS: dict[str, type[ZooNet]] = {"mlp": MLPNet, "gru": RNNNet, "lstm": RNNNet}


def arch_of(model_cfg: dict[str, Any]) -> str:
    return str(model_cfg.get("arch", ATFT))


def build_model(model_cfg: dict[str, Any], members: int = 1) -> Network:
    """The network a model-config dict describes (`arch`; none: ATFT-GAT-FAN), an ensemble of `members` when > 1."""
    arch = arch_of(model_cfg)
    if arch == ATFT:
        acfg = ATFTConfig.from_dict({k: v for k, v in model_cfg.items() if k != "arch"})
        return ATFTEnsemble.from_config(acfg, members) if members > 1 else ATFTGATFAN(acfg)
    if arch not in NETS:
        raise ConfigError(f"model.arch={arch!r}: one of {', '.join(ARCHS)}")
    ncfg = NetConfig.from_dict(model_cfg)
    nets = [NETS[arch](ncfg) for _ in range(members)]
    return NetEnsemble(nets) if members > 1 else nets[0]


def ensemble_of(models: Sequence[nn.Module]) -> Network:
    """One model's members as the fold's model: the model itself for one, else their ensemble."""
    if len(models) == 1:
        return cast(Network, models[0])
    if all(isinstance(m, ATFTGATFAN) for m in models):
        return ATFTEnsemble([cast(ATFTGATFAN, m) for m in models])
    return NetEnsemble([cast(ZooNet, m) for m in models])


def n_members(model: nn.Module) -> int:
    members = getattr(model, "members", None)
    return len(members) if isinstance(members, nn.ModuleList) else 1
