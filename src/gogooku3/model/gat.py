"""The cross-sectional GAT branch: a correlation graph over one day's stocks and two GATv2 layers.

The graph comes from the batch's own raw return window through the shared `FinancialGraphBuilder`
(data up to day d only). Edge attributes: (ρ, same sector, same segment). Self-loops are added explicitly with
attributes (1, 1, 1) so a day with no surviving edge still works.

On a GPU (`builder.is_sync_free(device)`) the graph has a fixed shape and is built without waiting for the device:
N·S edge slots (S = min(k, N - 1)) + N self-loops, where a slot without an edge is the edge (N, N) with attributes 0
into an extra sink node N. `GraphBranch` always runs on the N nodes plus that isolated sink (its output is dropped),
so the real nodes see exactly the edges of the compact graph.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch_geometric.nn import GATv2Conv


def day_graph(
    builder, returns: torch.Tensor, valid: torch.Tensor | None, sector: torch.Tensor, segment: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """returns [N, L] raw, valid [N, L] bool -> (edge_index [2, E+N], edge_attr [E+N, 3]) with self-loops.

    Sync-free path (`builder.is_sync_free(returns.device)`): E = N·S fixed, slots without an edge are (N, N) with
    attributes (0, 0, 0), i.e. they only reach the sink node N that `GraphBranch` appends; else E = the compact edge
    count of `builder.edges` (one host round-trip)."""
    n = returns.shape[0]
    dev = returns.device
    no_autocast = (
        torch.autocast(device_type=dev.type, enabled=False)
        if torch.amp.is_autocast_available(dev.type)
        else contextlib.nullcontext()
    )  # e.g. "meta" (the sync-free test runs it there)
    with torch.no_grad(), no_autocast:
        r = torch.nan_to_num(returns.float()).T.contiguous()  # [T, N]
        m = None if valid is None else valid.T.contiguous()
        loops = torch.arange(n, device=dev)
        if getattr(builder, "is_sync_free", lambda _d: False)(dev):
            nbr, ok, rho = builder.edges_slots(r, m)  # [N, S] each
            rows = loops[:, None].expand_as(nbr)
            same_sec = (sector[:, None] == sector[nbr]) & ok
            same_seg = (segment[:, None] == segment[nbr]) & ok
            sink = torch.full_like(nbr, n)
            ei = torch.stack([torch.where(ok, rows, sink).reshape(-1), torch.where(ok, nbr, sink).reshape(-1)])
            ew = torch.where(ok, rho.float(), torch.zeros((), device=dev)).reshape(-1)
            attr = torch.stack([ew, same_sec.reshape(-1).float(), same_seg.reshape(-1).float()], dim=1)
        else:
            ei, ew = builder.edges(r, m)
            ei = ei.to(dev).long()
            ew = ew.to(dev).float()
            same_sec = (sector[ei[0]] == sector[ei[1]]).float()
            same_seg = (segment[ei[0]] == segment[ei[1]]).float()
            attr = torch.stack([ew, same_sec, same_seg], dim=1)
        edge_index = torch.cat([ei, torch.stack([loops, loops])], dim=1)
        attr = torch.cat([attr, returns.new_ones(n, 3).float()], dim=0)
    return edge_index, attr


class GraphBranch(nn.Module):
    """Two GATv2Conv layers (heads 4 then 2, edge_dim=3), each with a residual projection and LayerNorm,
    fused into the temporal representation as h + g ⊙ gat(h)."""

    def __init__(self, hidden: int, heads: tuple[int, ...] = (4, 2), dropout: float = 0.1):
        super().__init__()
        h1, h2 = heads
        self.conv1 = GATv2Conv(hidden, hidden, heads=h1, concat=True, dropout=dropout, edge_dim=3, add_self_loops=False)
        self.res1 = nn.Linear(hidden, hidden * h1, bias=False)
        self.norm1 = nn.LayerNorm(hidden * h1)
        self.conv2 = GATv2Conv(
            hidden * h1, hidden, heads=h2, concat=False, dropout=dropout, edge_dim=3, add_self_loops=False
        )
        self.norm2 = nn.LayerNorm(hidden)
        self.gate = nn.Linear(2 * hidden, hidden)
        self.act = nn.ELU()

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        """h [N, H]; edges over nodes 0..N (node N: the sink of `day_graph`'s empty slots, appended here as a zero
        row and dropped from the output; with a compact graph it is isolated and changes nothing)."""
        n = h.shape[0]
        edge_attr = edge_attr.to(h.dtype)
        h = torch.cat([h, h.new_zeros(1, h.shape[1])])
        z = self.act(self.norm1(self.conv1(h, edge_index, edge_attr) + self.res1(h)))
        z = self.norm2(self.conv2(z, edge_index, edge_attr) + h)
        g = torch.sigmoid(self.gate(torch.cat([h, z], dim=-1)))
        return (h + g * z)[:n]
