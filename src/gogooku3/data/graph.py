"""Correlation graphs between stocks from a trailing window of returns (torch-vectorised, CPU or GPU).

`FinancialGraphBuilder.edges(returns[T, N])` -> symmetric edges with |ρ| ≥ threshold and at most k per node,
chosen greedily by |ρ| (each round, every node with spare degree proposes its best remaining candidates;
mutually proposed pairs are accepted). Missing returns (NaN or mask=False) are handled pairwise-complete:
each pair's correlation uses only the days both stocks have, and pairs with fewer than `min_obs` such
days get ρ = 0.

Host synchronisation: the selection runs on fixed shapes ([N, M] candidates, M = min(4k, N - 1); [N, S] edge slots,
S = min(k, M)) with no `.item()`, boolean-mask indexing or `nonzero` inside the rounds. `select_slots` /
`edges_slots` return that fixed-shape result and never wait for the device (on a GPU the greedy rounds then run all
`max_rounds` times: a round after convergence changes nothing); `select` / `edges` compact it into an edge list
with one `nonzero` at the end. `sync_free=None` (default) picks by device: on the CPU, where a check costs nothing,
the rounds stop as soon as one accepts no pair and the correlation takes its complete-data shortcut after a check;
elsewhere every data-dependent branch becomes a `torch.where`. Both give the same edges.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError

if TYPE_CHECKING:  # polars only for the report helpers; the model path needs torch alone (GPU images)
    import polars as pl

log = logging.getLogger(__name__)


class FinancialGraphBuilder:
    def __init__(
        self,
        window: int = 60,
        method: str = "ewm",
        halflife: float = 20.0,
        shrinkage: float = 0.1,
        threshold: float = 0.3,
        k: int = 10,
        min_obs: int = 20,
        max_rounds: int = 32,
        sync_free: bool | None = None,
    ) -> None:
        if method not in ("ewm", "pearson"):
            raise ConfigError(f"graph.method must be 'ewm' or 'pearson', got '{method}'")
        if not 0.0 <= shrinkage < 1.0:
            raise ConfigError(f"graph.shrinkage must be in [0, 1), got {shrinkage}")
        if int(k) < 1 or int(window) < 2 or float(halflife) <= 0:
            raise ConfigError(f"graph needs k >= 1, window >= 2, halflife > 0 (got {k}, {window}, {halflife})")
        self.window = int(window)
        self.method = method
        self.halflife = float(halflife)
        self.shrinkage = float(shrinkage)
        self.threshold = float(threshold)
        self.k = int(k)
        self.min_obs = int(min_obs)
        self.max_rounds = int(max_rounds)
        self.sync_free = sync_free  # None: by device (not on the CPU, yes elsewhere); see the module docstring

    def is_sync_free(self, device: torch.device) -> bool:
        """Whether the fixed-shape, never-waiting path runs on `device` (`sync_free`, else: not on the CPU)."""
        return device.type != "cpu" if self.sync_free is None else bool(self.sync_free)

    # ---- correlation --------------------------------------------------------------------------------
    def _weights(self, t: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if self.method == "pearson":
            return torch.ones(t, device=device, dtype=dtype)
        age = torch.arange(t - 1, -1, -1, device=device, dtype=dtype)  # 0 for the most recent day
        return torch.exp(-math.log(2.0) / self.halflife * age)

    def correlation(self, returns: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[N, N] shrunk correlation over the last `window` rows of returns [T, N]; diagonal 1."""
        if returns.dim() != 2:
            raise DataError(f"graph: returns must be [T, N], got shape {tuple(returns.shape)}")
        x = returns[-self.window :]
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        x = x.to(dtype)
        valid = torch.isfinite(x)
        if mask is not None:
            valid = valid & mask[-self.window :].to(device=x.device, dtype=torch.bool)
        w = self._weights(x.shape[0], x.device, dtype)[:, None]
        if self.is_sync_free(x.device):  # both on the device; the choice stays there (no host round-trip)
            corr = torch.where(valid.all(), self._complete_corr(x, w), self._pairwise_corr(x, valid, w))
        elif bool(valid.all()):
            corr = self._complete_corr(x, w)
        else:
            corr = self._pairwise_corr(x, valid, w)
        corr = 0.5 * (corr + corr.T) * (1.0 - self.shrinkage)
        corr.fill_diagonal_(1.0)
        return corr

    def _complete_corr(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """No missing values: one weighted covariance matmul."""
        if x.shape[0] < self.min_obs:
            return torch.zeros((x.shape[1], x.shape[1]), dtype=x.dtype, device=x.device)
        w = w / w.sum()
        xc = x - (w * x).sum(0)
        cov = (w * xc).T @ xc
        sd = torch.sqrt(torch.diagonal(cov).clamp_min(0))
        denom = sd[:, None] * sd[None, :]
        corr = torch.where(denom > 1e-20, cov / denom.clamp_min(1e-30), torch.zeros_like(cov))
        return corr.clamp(-1.0, 1.0)

    def _pairwise_corr(self, x: torch.Tensor, valid: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Pairwise-complete weighted correlation: each pair uses only the days both stocks have."""
        dtype = x.dtype
        m = valid.to(dtype)
        x = torch.where(valid, x, torch.zeros((), dtype=dtype, device=x.device))
        # Centre each stock on its own weighted mean first (numerical stability); pairwise means follow below.
        wm = w * m
        own_mean = (wm * x).sum(0) / wm.sum(0).clamp_min(1e-12)
        xc = (x - own_mean) * m
        wx = w * xc
        s = wm.T @ m  # Σ w m_i m_j
        sx = wx.T @ m  # Σ w m_i m_j x_i
        sxx = (wx * xc).T @ m  # Σ w m_i m_j x_i²
        sxy = wx.T @ xc  # Σ w m_i m_j x_i x_j
        s_safe = s.clamp_min(1e-12)
        mean_i = sx / s_safe
        mean_j = mean_i.T
        cov = sxy / s_safe - mean_i * mean_j
        var_i = (sxx / s_safe - mean_i * mean_i).clamp_min(0)
        var_j = var_i.T
        denom = torch.sqrt(var_i * var_j)
        corr = torch.where(denom > 1e-20, cov / denom.clamp_min(1e-30), torch.zeros_like(cov))
        n_obs = m.T @ m
        return torch.where(n_obs >= self.min_obs, corr, torch.zeros_like(corr)).clamp(-1.0, 1.0)

    # ---- edges --------------------------------------------------------------------------------------
    def select_slots(self, corr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The selection on fixed shapes: (nbr [N, S] long, ok [N, S] bool), S = min(k, N - 1); node i's edges are
        (i, nbr[i, s]) for the slots with ok, in its candidate order (|ρ| descending). No host synchronisation
        when `is_sync_free(corr.device)`.

        Candidates are each node's top M = min(4k, N - 1) partners by |ρ| (`torch.topk`), alive when |ρ| ≥
        threshold. Then, round by round, every node with spare degree proposes its best `spare` live candidates
        (candidates whose node is also open) and mutually proposed pairs are accepted (the best live pair is always
        mutual, so every round with a live pair makes progress). A pair is mutual only when each is among the
        other's M candidates; a candidate that is not still takes one of its node's proposals. Mutuality is read
        through `rev[i, p]`, the position of i in the candidate list of nbr[i, p] (one scatter into an [N, N] table
        before the rounds).
        """
        n = corr.shape[0]
        dev = corr.device
        if n < 2:
            return (
                torch.zeros((n, 0), dtype=torch.long, device=dev),
                torch.zeros((n, 0), dtype=torch.bool, device=dev),
            )
        score = corr.abs().to(torch.float32)
        score.fill_diagonal_(-1.0)
        m = min(4 * self.k, n - 1)
        vals, nbr = torch.topk(score, m, dim=1)  # [N, M], sorted by |ρ| descending
        alive = vals >= self.threshold
        rank = torch.arange(m, device=dev)
        pos = torch.full((n, n), -1, dtype=torch.int32, device=dev)
        pos.scatter_(1, nbr, rank.to(torch.int32).expand(n, m))  # pos[i, j]: rank of j among i's candidates
        rev = pos.T.gather(1, nbr).long()  # rev[i, p] = pos[nbr[i, p], i]; -1: i not among them
        mutual_ok = rev >= 0
        back = (nbr * m + rev.clamp_min(0)).reshape(-1)  # flat index of (j, rank of i in j's list)
        accepted = torch.zeros((n, m), dtype=torch.bool, device=dev)
        cap = torch.full((n,), self.k, dtype=torch.long, device=dev)
        wait = not self.is_sync_free(dev)
        for _ in range(self.max_rounds):
            open_ = cap > 0
            live = alive & open_[:, None] & open_[nbr]
            prop = live & (live.cumsum(1) <= cap[:, None])
            acc = prop & mutual_ok & prop.reshape(-1)[back].view(n, m)
            if wait and not bool(acc.any()):  # CPU: stop early (a round without an accepted pair changes nothing)
                break
            accepted |= acc
            alive &= ~acc
            cap = cap - acc.sum(1)
        s = min(self.k, m)
        key = torch.where(accepted, m - rank, torch.zeros((), dtype=torch.long, device=dev))  # earlier = larger
        kv, kpos = torch.topk(key, s, dim=1)  # a node's accepted candidates first, in candidate order
        return nbr.gather(1, kpos), kv > 0

    def select(self, corr: torch.Tensor) -> torch.Tensor:
        """edge_index [2, E] (both directions): |ρ| ≥ threshold, ≤ k per node, greedy by |ρ|, no self loops; row
        by row, each row's edges in candidate order (`select_slots`, compacted by one `nonzero` at the end)."""
        nbr, ok = self.select_slots(corr)
        rows = torch.arange(nbr.shape[0], device=nbr.device)[:, None].expand_as(nbr)
        return torch.stack([rows[ok], nbr[ok]])

    def edges(
        self, returns: torch.Tensor, mask: torch.Tensor | None = None, corr: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(edge_index [2, E] long, edge_weight [E] = ρ) with both directions of every undirected edge."""
        c = self.correlation(returns, mask) if corr is None else corr
        edge_index = self.select(c)
        return edge_index, c[edge_index[0], edge_index[1]]

    def edges_slots(
        self, returns: torch.Tensor, mask: torch.Tensor | None = None, corr: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(nbr [N, S], ok [N, S], ρ [N, S]): `edges` on fixed shapes (`select_slots`); ρ is also given for the
        slots without an edge."""
        c = self.correlation(returns, mask) if corr is None else corr
        nbr, ok = self.select_slots(c)
        return nbr, ok, c.gather(1, nbr)


def graph_stats(edge_index: torch.Tensor, edge_weight: torch.Tensor, n_nodes: int) -> dict[str, Any]:
    """Nodes, undirected edges, average degree 2E/N, mean |ρ| over edges, isolated nodes, max degree."""
    directed = int(edge_index.shape[1])
    e = directed // 2
    deg = torch.bincount(edge_index[0].cpu(), minlength=n_nodes) if directed else torch.zeros(n_nodes, dtype=torch.long)
    return {
        "n_nodes": int(n_nodes),
        "n_edges": e,
        "avg_degree": (2.0 * e / n_nodes) if n_nodes else 0.0,
        "max_degree": int(deg.max()) if n_nodes else 0,
        "isolated_nodes": int((deg == 0).sum()),
        "mean_abs_rho": float(edge_weight.abs().mean()) if directed else None,
        "positive_edge_share": float((edge_weight > 0).float().mean()) if directed else None,
    }


def return_matrix(
    df: pl.DataFrame, codes: Sequence[str], end_date: Any, window: int, value_col: str = C.RETURNS_1D
) -> tuple[np.ndarray, list]:
    """[T, N] returns (NaN where missing) of `codes` over the last `window` dates ≤ end_date."""
    import polars as pl

    dates = df.filter(pl.col(C.DATE) <= end_date)[C.DATE].unique().sort().tail(window)
    sub = df.filter(pl.col(C.DATE).is_in(dates.implode()) & pl.col(C.CODE).is_in(list(codes))).select(
        C.DATE, C.CODE, pl.col(value_col).cast(pl.Float64)
    )
    wide = sub.pivot(on=C.CODE, index=C.DATE, values=value_col).sort(C.DATE)
    wide = pl.DataFrame({C.DATE: dates}).join(wide, on=C.DATE, how="left")
    cols = [pl.col(c) if c in wide.columns else pl.lit(None, dtype=pl.Float64).alias(c) for c in codes]
    mat = wide.select(cols).to_numpy().astype(np.float64)
    return np.where(np.isfinite(mat), mat, np.nan), dates.to_list()


# The report graph's node choice, in this order: the first size or liquidity column with values on the day, then
# traded value from Close × Volume, then (no size or liquidity data at all, e.g. a close-only file) every name with
# at least `min_obs` returns in the window, longest history first.
RANK_COLUMNS = (C.MARKET_CAP, C.DOLLAR_VOLUME, C.TURNOVER_VALUE)
HISTORY = "return_history"


def pick_nodes(
    df: pl.DataFrame,
    date: Any,
    n_nodes: int,
    window: int,
    min_obs: int,
    value_col: str = C.RETURNS_1D,
    rank_cols: Sequence[str] = RANK_COLUMNS,
) -> tuple[pl.DataFrame, str]:
    """The top-`n_nodes` rows of `date` by the first available size/liquidity measure (see RANK_COLUMNS) and
    which measure chose them; without any, the names with the most returns (≥ min_obs) in the trailing window."""
    import polars as pl

    day = df.filter(pl.col(C.DATE) == date)

    def have(col: str) -> bool:
        return col in day.columns and day[col].drop_nulls().len() > 0

    rank_col = next((c for c in rank_cols if have(c)), None)
    if rank_col is None and have(C.CLOSE) and have(C.VOLUME):
        day = day.with_columns((pl.col(C.CLOSE) * pl.col(C.VOLUME)).alias("close_x_volume"))
        rank_col = "close_x_volume"
    if rank_col is not None:
        return day.filter(pl.col(rank_col).is_not_null()).sort(rank_col, descending=True).head(n_nodes), rank_col
    dates = df.filter(pl.col(C.DATE) <= date)[C.DATE].unique().sort().tail(window)
    hist = (
        df.filter(pl.col(C.DATE).is_in(dates.implode()))
        .group_by(C.CODE)
        .agg(pl.col(value_col).cast(pl.Float64).fill_nan(None).count().alias("_n"))
    )
    ranked = (
        day.join(hist, on=C.CODE, how="inner")
        .filter(pl.col("_n") >= max(min_obs, 2))
        .sort(["_n", C.CODE], descending=[True, False])
        .head(n_nodes)
        .drop("_n")
    )
    if ranked.height == 0:
        raise DataError(
            f"graph: no name has {max(min_obs, 2)} values of '{value_col}' in the {len(dates)} dates up to "
            f"{date} (and none of {', '.join(rank_cols)}, Close × Volume to rank by); lower "
            f"safe.graph.min_obs or set safe.graph.enabled=false"
        )
    return ranked, HISTORY


def graph_snapshot(
    df: pl.DataFrame,
    builder: FinancialGraphBuilder,
    n_nodes: int,
    date: Any = None,
    value_col: str = C.RETURNS_1D,
    rank_cols: Sequence[str] = RANK_COLUMNS,
    sectors: str | None = C.S33,
) -> dict[str, Any]:
    """The report's graph: top-`n_nodes` stocks as of `date` (default: the last date) by `pick_nodes`' order
    (market cap, dollar volume, turnover, Close × Volume, else return history), a `builder.window`-day
    correlation graph and its statistics."""
    if value_col not in df.columns:
        raise DataError(f"graph: column '{value_col}' not in the dataset")
    date = date or df[C.DATE].max()
    top, rank_col = pick_nodes(df, date, n_nodes, builder.window, builder.min_obs, value_col, rank_cols)
    if rank_col == HISTORY:
        log.info(
            "graph: no size or liquidity column on %s; nodes = the %d names with the longest return history",
            date,
            top.height,
        )
    codes = top[C.CODE].to_list()
    mat, dates = return_matrix(df, codes, date, builder.window, value_col)
    ei, ew = builder.edges(torch.from_numpy(mat))
    stats = graph_stats(ei, ew, len(codes))
    if sectors and sectors in top.columns and ei.shape[1]:
        sec = np.array(top[sectors].to_list(), dtype=object)
        a, b = ei[0].numpy(), ei[1].numpy()
        stats["same_sector_edge_share"] = float(np.mean(sec[a] == sec[b]))
    stats.update(
        {
            "as_of": str(date),
            "ranked_by": rank_col,
            "window_days": len(dates),
            "method": builder.method,
            "threshold": builder.threshold,
            "k": builder.k,
            "shrinkage": builder.shrinkage,
        }
    )
    return stats
