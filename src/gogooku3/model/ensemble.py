"""A seed ensemble of one network's members (ATFT-GAT-FAN or a zoo network): same config and data, different seeds,
outputs averaged.

ATFT-GAT-FAN members share the day's correlation graph (built once per batch).
The mean of monotone quantiles is monotone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from gogooku3.model.atft_gat_fan import ATFTGATFAN, ATFTConfig
from gogooku3.model.gat import day_graph


class ATFTEnsemble(nn.Module):
    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.cfg: Any = members[0].cfg  # ATFTConfig, or a zoo network's NetConfig (no graph)

    @classmethod
    def from_config(cls, cfg: ATFTConfig, n: int) -> ATFTEnsemble:
        return cls([ATFTGATFAN(cfg) for _ in range(n)])

    def forward(
        self,
        x: torch.Tensor,
        sector: torch.Tensor,
        segment: torch.Tensor,
        returns: torch.Tensor | None = None,
        returns_valid: torch.Tensor | None = None,
        edges: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        if edges is None and getattr(self.cfg, "gat", False):
            if returns is None:
                raise ValueError("model.gat=true needs the raw return window (returns=[N, L])")
            edges = day_graph(cast(ATFTGATFAN, self.members[0]).graph_builder, returns, returns_valid, sector, segment)
        outs = [m(x, sector, segment, returns, returns_valid, edges) for m in self.members]
        return {k: self.average([o[k] for o in outs]) for k in outs[0]}

    @staticmethod
    def average(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The ensemble's output from its members' outputs: their mean (the one definition, also used for members
        that predicted in worker processes)."""
        return torch.stack(list(outputs)).mean(dim=0)

    def get_num_params(self) -> int:
        return sum(cast(Any, m).get_num_params() for m in self.members)

    def estimate_flops_per_sample(self) -> float:
        return sum(cast(Any, m).estimate_flops_per_sample() for m in self.members)
