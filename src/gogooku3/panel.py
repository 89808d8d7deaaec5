"""PanelStore (dataset -> dense day × stock × feature arrays), day batches, and the Lightning DataModule.

A training sample is stock i's window `features[d-L+1 : d+1, i, :]`; a batch is one trading day (all stocks with
a valid window that day, capped by sampling). Conversion is vectorised (dense-rank indices + one scatter).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gogooku3 import columns as C
from gogooku3.errors import DataError
from gogooku3.io import (
    STALE_TMP_NO_OWNER_S,
    fingerprint,
    read_json,
    stale_temp,
    temp_owner,
    write_json,
)
from gogooku3.normalize import CrossSectionalNormalizer

log = logging.getLogger(__name__)

PANEL_VERSION = 1
ARRAYS = ("features", "mask", "targets", "returns", "sector", "segment")


@dataclass
class PanelStore:
    features: np.ndarray          # [D, N, F] float32, normalised per day, nulls -> 0
    mask: np.ndarray              # [D, N] bool, row exists
    targets: np.ndarray           # [D, N, H] float32, NaN where missing
    returns: np.ndarray           # [D, N] float32 raw (un-normalised) 1-day returns, NaN where missing
    sector: np.ndarray            # [D, N] int16 S33 id (0 = unknown)
    segment: np.ndarray           # [D, N] int16 Section id (0 = unknown)
    codes: list[str]
    dates: list[dt.date]
    feature_names: list[str]
    horizons: list[int]
    sector_vocab: list[str] = field(default_factory=list)    # id k+1 <-> sector_vocab[k]
    segment_vocab: list[str] = field(default_factory=list)
    normalizer: dict = field(default_factory=dict)
    fingerprint: str = ""

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_frame(cls, df: pl.DataFrame | pl.LazyFrame, features: Sequence[str], horizons: Sequence[int] = (),
                   normalizer: CrossSectionalNormalizer | dict | None = None, returns_col: str = "returns_1d",
                   sector_vocab: Sequence[str] | None = None, segment_vocab: Sequence[str] | None = None,
                   fingerprint_: str = "") -> PanelStore:
        """Direct mode: an in-memory frame (Code, Date, [Section, S33], features, targets) -> dense panel."""
        lf = df.lazy()
        schema = lf.collect_schema()
        features = list(features)
        missing = [c for c in ["Code", "Date", *features] if c not in schema]
        if missing:
            raise DataError(f"panel: dataset lacks {len(missing)} column(s), e.g. {', '.join(missing[:5])}")
        norm = (normalizer if isinstance(normalizer, CrossSectionalNormalizer)
                else CrossSectionalNormalizer.from_dict(normalizer or {}))
        targets = [C.target(h) for h in horizons]
        tcols = [pl.col(t).cast(pl.Float32) if t in schema else pl.lit(None, pl.Float32).alias(t) for t in targets]
        ret = (pl.col(returns_col).cast(pl.Float32) if returns_col in schema else pl.lit(None, pl.Float32))
        seg = pl.col("Section").cast(pl.Utf8) if "Section" in schema else pl.lit(None, pl.Utf8)
        sec = pl.col("S33").cast(pl.Utf8) if "S33" in schema else pl.lit(None, pl.Utf8)
        base = (lf.select(pl.col("Code").cast(pl.Utf8), pl.col("Date").cast(pl.Date), *features, *tcols,
                          ret.alias("__ret"), seg.alias("__seg"), sec.alias("__sec"))
                .unique(subset=["Code", "Date"], keep="last").collect())
        if base.height == 0:
            raise DataError("panel: the dataset has no rows")
        # Per-day statistics only (the pooled fallback scale is used only where a day's MAD and std are both 0,
        # i.e. where every value equals the median and z = 0), so fitting on the whole frame is leak-free. The fit
        # also finds the day-level features: a property of how a column is made (one value per day), not a value;
        # their day_level=time_z scores use trailing sessions only.
        if not hasattr(norm, "features_"):
            norm.fit(base, features)
            if norm.day_level_:
                log.info("panel: %d day-level feature(s) (one value per day, e.g. %s) %s", len(norm.day_level_),
                         ", ".join(norm.day_level_[:3]), "as trailing time z-scores" if norm.day_level == "time_z"
                         else "normalise to 0 across stocks, so the model does not see them (day_level=zero)")
        base = norm.transform(base)
        codes = base.get_column("Code").unique().sort()
        dates = base.get_column("Date").unique().sort()
        sec_vocab = list(sector_vocab) if sector_vocab is not None else \
            base.get_column("__sec").drop_nulls().unique().sort().to_list()
        seg_vocab = list(segment_vocab) if segment_vocab is not None else \
            base.get_column("__seg").drop_nulls().unique().sort().to_list()
        idx = base.select(
            (pl.col("Date").rank("dense") - 1).cast(pl.Int64).alias("d"),
            (pl.col("Code").rank("dense") - 1).cast(pl.Int64).alias("i"),
            _vocab_id("__sec", sec_vocab), _vocab_id("__seg", seg_vocab))
        d, i = idx["d"].to_numpy(), idx["i"].to_numpy()
        D, N, F, H = dates.len(), codes.len(), len(features), len(targets)
        feats = np.zeros((D, N, F), dtype=np.float32)
        feats[d, i] = (base.select([pl.col(c).cast(pl.Float32).fill_nan(None).fill_null(0.0) for c in features])
                       .to_numpy().astype(np.float32, copy=False))
        mask = np.zeros((D, N), dtype=bool)
        mask[d, i] = True
        tg = np.full((D, N, H), np.nan, dtype=np.float32)
        if H:
            tg[d, i] = base.select(targets).to_numpy().astype(np.float32)
        rets = np.full((D, N), np.nan, dtype=np.float32)
        rets[d, i] = base.get_column("__ret").to_numpy().astype(np.float32)
        sector = np.zeros((D, N), dtype=np.int16)
        sector[d, i] = idx["__sec"].to_numpy()
        segment = np.zeros((D, N), dtype=np.int16)
        segment[d, i] = idx["__seg"].to_numpy()
        return cls(feats, mask, tg, rets, sector, segment, codes.to_list(), dates.to_list(), features,
                   list(horizons), sec_vocab, seg_vocab, norm.to_dict(), fingerprint_)

    @classmethod
    def build(cls, dataset: str | Path, features: Sequence[str], horizons: Sequence[int], cache_dir: str | Path,
              normalizer: dict, manifest_fingerprint: str, dataset_fingerprint: str,
              returns_col: str = "returns_1d", force: bool = False) -> PanelStore:
        """File mode: convert once into `<cache_dir>/panels/<fingerprint>/` (memory-mapped .npy), reuse after."""
        fp = fingerprint(PANEL_VERSION, dataset_fingerprint, manifest_fingerprint, normalizer, list(features),
                         list(horizons), returns_col)
        root = Path(cache_dir) / "panels" / fp
        if root.joinpath("panel.json").exists() and not force:
            log.info("panel: reusing %s", root)
            return cls.load(root)
        cols = ["Code", "Date", "Section", "S33", returns_col, *features, *[C.target(h) for h in horizons]]
        lf = pl.scan_parquet(dataset)
        have = lf.collect_schema()
        lf = lf.select(list(dict.fromkeys(c for c in cols if c in have)))
        panel = cls.from_frame(lf, features, horizons, dict(normalizer), returns_col, fingerprint_=fp)
        panel.save(root)
        log.info("panel: converted %s -> %s (%d days x %d stocks x %d features)", dataset, root,
                 *panel.features.shape)
        return panel

    # ---- persistence ----------------------------------------------------------------------------------
    def save(self, root: str | Path) -> Path:
        """Write the arrays into `.<root>.<host>-<pid>.tmp/`, then rename it onto `root` (replacing an old one)."""
        root = Path(root)
        tmp = root.with_name(f".{root.name}.{temp_owner()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for name in ARRAYS:
                np.save(tmp / f"{name}.npy", getattr(self, name))
            write_json(tmp / "panel.json", self.metadata())
            shutil.rmtree(root, ignore_errors=True)
            try:
                tmp.rename(root)
            except OSError:
                if not (root / "panel.json").exists():
                    raise
                log.info("panel: %s was written by another process meanwhile; keeping it", root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return root

    def metadata(self) -> dict[str, Any]:
        return {"version": PANEL_VERSION, "codes": self.codes, "dates": [d.isoformat() for d in self.dates],
                "feature_names": self.feature_names, "horizons": self.horizons, "sector_vocab": self.sector_vocab,
                "segment_vocab": self.segment_vocab, "normalizer": self.normalizer, "fingerprint": self.fingerprint,
                "shape": list(self.features.shape)}

    @classmethod
    def load(cls, root: str | Path, mmap: bool = True) -> PanelStore:
        root = Path(root)
        meta = read_json(root / "panel.json")
        arrs = {n: np.load(root / f"{n}.npy", mmap_mode="r" if mmap else None) for n in ARRAYS}
        return cls(**arrs, codes=meta["codes"], dates=[dt.date.fromisoformat(d) for d in meta["dates"]],
                   feature_names=meta["feature_names"], horizons=meta["horizons"],
                   sector_vocab=meta["sector_vocab"], segment_vocab=meta["segment_vocab"],
                   normalizer=meta["normalizer"], fingerprint=meta["fingerprint"])

    # ---- queries --------------------------------------------------------------------------------------
    @property
    def n_days(self) -> int:
        return self.features.shape[0]

    def day_index(self, dates: Sequence[dt.date]) -> np.ndarray:
        pos = {d: k for k, d in enumerate(self.dates)}
        return np.array(sorted(pos[d] for d in dates if d in pos), dtype=np.int64)

    def window_valid(self, window: int, min_window_frac: float = 1.0) -> np.ndarray:
        """[D, N] bool: row present on d, d >= L-1, and >= ceil(frac·L) rows present in [d-L+1, d]."""
        m = np.asarray(self.mask)
        cs = np.concatenate([np.zeros((1, m.shape[1]), np.int32), np.cumsum(m, axis=0, dtype=np.int32)])
        count = np.zeros_like(cs[1:])
        count[window - 1:] = cs[window:] - cs[:-window] if window <= m.shape[0] else 0
        need = math.ceil(min_window_frac * window)
        ok = m & (count >= need)
        ok[: window - 1] = False
        return ok

    def label_valid(self, horizon_pos: int = 0) -> np.ndarray:
        return np.isfinite(np.asarray(self.targets[..., horizon_pos])) if self.targets.shape[-1] else \
            np.zeros(self.mask.shape, bool)


_PANEL_TMP = re.compile(r"\.(?P<fp>[0-9a-f]+)(?:\.(?P<host>[0-9A-Za-z-]+)-(?P<pid>\d+))?\.tmp")


def clean_cache(cache_dir: str | Path, keep: int | None, protect: Sequence[str] = ()) -> list[Path]:
    """Bound `<cache_dir>/panels/`: remove the temp folders of killed conversions, incomplete panels, and all but
    the `keep` newest complete panels (None: keep every panel; `protect`: fingerprints never removed, such as the
    panel in use). Returns the removed folders."""
    panels = Path(cache_dir) / "panels"
    if not panels.is_dir():
        return []
    now, removed, complete = time.time(), [], []
    for d in panels.iterdir():
        if not d.is_dir() or d.name in protect:
            continue
        m = _PANEL_TMP.fullmatch(d.name)
        if m is not None:
            if stale_temp(m["host"], m["pid"], now - d.stat().st_mtime):
                removed.append(d)
        elif (d / "panel.json").is_file():
            complete.append(d)
        elif now - d.stat().st_mtime > STALE_TMP_NO_OWNER_S:  # a folder a killed older version left half-written
            removed.append(d)
    if keep is not None:
        complete.sort(key=lambda d: (d / "panel.json").stat().st_mtime, reverse=True)
        kept = sum((panels / fp / "panel.json").is_file() for fp in set(protect))
        removed += complete[max(0, int(keep) - kept):]
    for d in removed:
        shutil.rmtree(d, ignore_errors=True)
        log.info("panel cache: removed %s", d)
    return removed


class DayBatchSampler(Sampler):
    """Yields (day, stock indices): one batch per trading day with >= min_stocks valid stocks.

    Days are shuffled each epoch (seed + epoch), sharded across ranks (equal count per rank), and a day with
    more than `max_stocks` valid stocks is subsampled.
    """

    def __init__(self, valid: np.ndarray, days: Sequence[int], max_stocks: int = 2048, shuffle: bool = True,
                 seed: int = 0, min_stocks: int = 2, rank: int = 0, world_size: int = 1):
        self.valid = valid
        self.days = [int(d) for d in days if int(valid[d].sum()) >= min_stocks]
        self.max_stocks, self.shuffle, self.seed = int(max_stocks), shuffle, int(seed)
        self.rank, self.world_size, self.epoch = rank, max(1, world_size), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.days) // self.world_size if self.world_size > 1 else len(self.days)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        order = np.array(self.days, dtype=np.int64)
        if self.shuffle:
            order = rng.permutation(order)
        if self.world_size > 1:
            order = order[: len(self) * self.world_size][self.rank::self.world_size]
        for d in order:
            idx = np.flatnonzero(self.valid[d])
            if len(idx) > self.max_stocks:
                idx = np.sort(rng.choice(idx, self.max_stocks, replace=False))
            yield int(d), idx


class PanelDayDataset(Dataset):
    """Gathers one day batch by tensor indexing: x = features[d-L+1:d+1, idx, :] -> [n, L, F]."""

    def __init__(self, panel: PanelStore, window: int):
        self.panel, self.window = panel, window
        self.tensors: dict[str, torch.Tensor] | None = None  # set by to_device (GPU-resident panel)

    def to_device(self, device: torch.device) -> None:
        p = self.panel
        self.tensors = {n: torch.as_tensor(np.asarray(getattr(p, n))).to(device) for n in ARRAYS}

    def __len__(self) -> int:
        return self.panel.n_days

    def __getitem__(self, item: tuple[int, np.ndarray]) -> dict[str, Any]:
        d, idx = item
        lo = d - self.window + 1
        if self.tensors is not None:
            t = self.tensors
            ii = torch.as_tensor(idx, device=t["features"].device)
            x, m = t["features"][lo:d + 1, ii], t["mask"][lo:d + 1, ii]
            r, y = t["returns"][lo:d + 1, ii], t["targets"][d, ii]
            sec, seg = t["sector"][d, ii], t["segment"][d, ii]
        else:
            p = self.panel
            x = torch.from_numpy(np.ascontiguousarray(p.features[lo:d + 1][:, idx]))
            m = torch.from_numpy(np.ascontiguousarray(p.mask[lo:d + 1][:, idx]))
            r = torch.from_numpy(np.ascontiguousarray(p.returns[lo:d + 1][:, idx]))
            y = torch.from_numpy(np.ascontiguousarray(p.targets[d][idx]))
            sec = torch.from_numpy(np.ascontiguousarray(p.sector[d][idx]))
            seg = torch.from_numpy(np.ascontiguousarray(p.segment[d][idx]))
        r_ok = m & torch.isfinite(r)
        return {"x": x.permute(1, 0, 2), "returns": torch.where(r_ok, r, torch.zeros_like(r)).T,
                "returns_valid": r_ok.T, "y": y, "sector": sec.long(), "segment": seg.long(),
                "day": torch.tensor(d), "idx": torch.as_tensor(idx).long()}


class PanelDataModule(L.LightningDataModule):
    """Train / val / test day batches from one PanelStore and the shared splitter's dates."""

    def __init__(self, panel: PanelStore, fit_dates: Sequence[dt.date], val_dates: Sequence[dt.date],
                 test_dates: Sequence[dt.date] = (), window: int = 60, max_stocks: int = 2048,
                 min_window_frac: float = 1.0, min_stocks: int = 10, seed: int = 0):
        super().__init__()
        self.panel, self.window, self.max_stocks, self.min_stocks, self.seed = panel, window, max_stocks, min_stocks, seed
        self.fit_days = panel.day_index(fit_dates)
        self.val_days = panel.day_index(val_dates)
        self.test_days = panel.day_index(test_dates)
        self.window_ok = panel.window_valid(window, min_window_frac)
        self.labelled = self.window_ok & panel.label_valid(0)
        self.dataset = PanelDayDataset(panel, window)

    def _rank(self) -> tuple[int, int]:
        t = getattr(self, "trainer", None)
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _loader(self, valid: np.ndarray, days: np.ndarray, shuffle: bool, cap: int | None) -> DataLoader:
        rank, world = self._rank()
        sampler = DayBatchSampler(valid, days, cap or valid.shape[1], shuffle, self.seed, self.min_stocks,
                                  rank, world)
        return DataLoader(self.dataset, sampler=sampler, batch_size=None, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        if not len(self.fit_days):
            raise DataError("panel: no training days in the panel for this split")
        return self._loader(self.labelled, self.fit_days, True, self.max_stocks)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.labelled, self.val_days, False, None)

    def predict_loader(self, days: np.ndarray) -> DataLoader:
        """All stocks with a valid window (label or not), one batch per day, single process."""
        sampler = DayBatchSampler(self.window_ok, days, self.window_ok.shape[1], False, 0, 1)
        return DataLoader(self.dataset, sampler=sampler, batch_size=None, num_workers=0)


def _vocab_id(col: str, vocab: Sequence[str]) -> pl.Expr:
    mapping = {v: k + 1 for k, v in enumerate(vocab)}
    return pl.col(col).replace_strict(mapping, default=0, return_dtype=pl.Int16).fill_null(0).alias(col)
