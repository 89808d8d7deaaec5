"""The cross-sectional GAT branch: a correlation graph over one day's stocks and two GATv2 layers.

The graph comes from the batch's own raw return window through the shared `FinancialGraphBuilder.edges`
(data up to day d only). Edge attributes: (ρ, same sector, same segment). Self-loops are added explicitly with
attributes (1, 1, 1) so a day with no surviving edge still works.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import GATv2Conv


def day_graph(builder, returns: torch.Tensor, valid: torch.Tensor | None, sector: torch.Tensor,
              segment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """returns [N, L] raw, valid [N, L] bool -> (edge_index [2, E+N], edge_attr [E+N, 3]) with self-loops."""
    n = returns.shape[0]
    with torch.no_grad(), torch.autocast(device_type=returns.device.type, enabled=False):
        r = torch.nan_to_num(returns.float()).T.contiguous()  # [T, N]
        ei, ew = builder.edges(r, None if valid is None else valid.T.contiguous())
        ei = ei.to(returns.device).long()
        ew = ew.to(returns.device).float()
        same_sec = (sector[ei[0]] == sector[ei[1]]).float()
        same_seg = (segment[ei[0]] == segment[ei[1]]).float()
        loops = torch.arange(n, device=returns.device)
        edge_index = torch.cat([ei, torch.stack([loops, loops])], dim=1)
        attr = torch.cat([torch.stack([ew, same_sec, same_seg], dim=1), returns.new_ones(n, 3).float()], dim=0)
    return edge_index, attr


class GraphBranch(nn.Module):
    """Two GATv2Conv layers (heads 4 then 2, edge_dim=3), each with a residual projection and LayerNorm,
    fused into the temporal representation as h + g ⊙ gat(h)."""

    def __init__(self, hidden: int, heads: tuple[int, int] = (4, 2), dropout: float = 0.1):
        super().__init__()
        h1, h2 = heads
        self.conv1 = GATv2Conv(hidden, hidden, heads=h1, concat=True, dropout=dropout, edge_dim=3,
                               add_self_loops=False)
        self.res1 = nn.Linear(hidden, hidden * h1, bias=False)
        self.norm1 = nn.LayerNorm(hidden * h1)
        self.conv2 = GATv2Conv(hidden * h1, hidden, heads=h2, concat=False, dropout=dropout, edge_dim=3,
                               add_self_loops=False)
        self.norm2 = nn.LayerNorm(hidden)
        self.gate = nn.Linear(2 * hidden, hidden)
        self.act = nn.ELU()

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        edge_attr = edge_attr.to(h.dtype)
        z = self.act(self.norm1(self.conv1(h, edge_index, edge_attr) + self.res1(h)))
        z = self.norm2(self.conv2(z, edge_index, edge_attr) + h)
        g = torch.sigmoid(self.gate(torch.cat([h, z], dim=-1)))
        return h + g * z
