"""The model bundle: weights (safetensors) + everything needed to predict on new data, checked by fingerprint.

`bundle/model.safetensors` and `bundle/bundle.json` (model config, number of ensemble members, feature manifest,
normaliser settings, dataset fingerprint, horizons, window, sector/segment vocabularies).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch
from safetensors.torch import load_file, save_file

from gogooku3.errors import DataError
from gogooku3.features.manifest import FeatureManifest
from gogooku3.io import atomic_path, read_json, write_json
from gogooku3.model.atft_gat_fan import ATFTGATFAN, ATFTConfig
from gogooku3.model.ensemble import ATFTEnsemble

log = logging.getLogger(__name__)


@dataclass
class Bundle:
    model: ATFTGATFAN | ATFTEnsemble
    meta: dict[str, Any]

    @property
    def horizons(self) -> list[int]:
        return list(self.meta["horizons"])

    @property
    def features(self) -> list[str]:
        return [f["name"] for f in self.meta["manifest"]["features"]]


def save_bundle(run_dir: str | Path, model: ATFTGATFAN | ATFTEnsemble, manifest: FeatureManifest | dict,
                normalizer: dict, dataset_fingerprint: str, sector_vocab: Sequence[str], segment_vocab: Sequence[str],
                extra: dict | None = None, min_window_frac: float = 1.0, returns_col: str = "returns_1d") -> Path:
    out = Path(run_dir) / "bundle"
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    man = manifest.to_dict() if isinstance(manifest, FeatureManifest) else dict(manifest)
    write_json(out / "bundle.json", {
        "model_config": model.cfg.to_dict(),
        "members": len(model.members) if isinstance(model, ATFTEnsemble) else 1,
        "manifest": man, "manifest_fingerprint": man["fingerprint"],
        "normalizer": normalizer, "dataset_fingerprint": dataset_fingerprint, "horizons": list(model.cfg.horizons),
        "window": model.cfg.window, "sector_vocab": list(sector_vocab), "segment_vocab": list(segment_vocab),
        "min_window_frac": min_window_frac, "returns_col": returns_col, "n_params": model.get_num_params(),
        **(extra or {})})
    return out


def load_bundle(run_dir: str | Path, dataset: str | Path | None = None) -> Bundle:
    """Load `<run_dir>/bundle`; with `dataset`, fail with DataError if its manifest differs from the bundle's."""
    root = Path(run_dir) / "bundle"
    if not (root / "bundle.json").exists():
        raise DataError(f"{run_dir}: no model bundle (bundle/bundle.json); train first with `gogooku3 train`")
    meta = read_json(root / "bundle.json")
    if dataset is not None:
        check_manifest(meta, FeatureManifest.for_dataset(dataset), dataset)
    cfg = ATFTConfig.from_dict(meta["model_config"])
    members = int(meta.get("members", 1))
    model = ATFTEnsemble.from_config(cfg, members) if members > 1 else ATFTGATFAN(cfg)
    if (root / "model.safetensors").exists():
        state = load_file(str(root / "model.safetensors"))
    else:
        state = torch.load(root / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return Bundle(model, meta)


def check_manifest(meta: dict, manifest: FeatureManifest, source: Any) -> None:
    if manifest.fingerprint != meta["manifest_fingerprint"]:
        raise DataError(f"{source}: feature manifest fingerprint {manifest.fingerprint} does not match the model "
                        f"bundle's {meta['manifest_fingerprint']} (features changed; retrain or use the matching dataset)")


@torch.no_grad()
def predict_for_dates(bundle: Bundle, df_or_path: pl.DataFrame | pl.LazyFrame | str | Path,
                      dates: Sequence[dt.date | str]) -> pl.DataFrame:
    """Predictions for every stock with a valid window on each date: DataFrame[Date, Code, pred_{h}d]
    (`inference.predict_panel` over a panel of just the sessions the windows need)."""
    from gogooku3.inference import predict_panel
    from gogooku3.normalize import CrossSectionalNormalizer
    from gogooku3.panel import PanelStore

    if isinstance(df_or_path, (str, Path)):
        check_manifest(bundle.meta, FeatureManifest.for_dataset(df_or_path), df_or_path)
        lf = pl.scan_parquet(df_or_path)
    else:
        lf = df_or_path.lazy()
    want = sorted({d if isinstance(d, dt.date) else dt.date.fromisoformat(str(d)) for d in dates})
    if not want:
        raise DataError("predict_for_dates: no dates given")
    L = int(bundle.meta["window"])
    all_dates = lf.select(pl.col("Date").cast(pl.Date).unique().sort()).collect().get_column("Date").to_list()
    pos = [k for k, d in enumerate(all_dates) if d in set(want)]
    if not pos:
        raise DataError(f"predict_for_dates: none of {len(want)} date(s) is in the dataset "
                        f"(it covers {all_dates[0] if all_dates else '-'} .. {all_dates[-1] if all_dates else '-'})")
    history = CrossSectionalNormalizer.from_dict(bundle.meta["normalizer"]).history_days  # day-level time z-scores
    lo = all_dates[max(0, min(pos) - L + 1 - history)]
    hi = all_dates[max(pos)]
    feats = bundle.features
    schema = lf.collect_schema()
    meta_cols = [c for c in ("Code", "Date", "Section", "S33") if c in schema]
    ret_col = bundle.meta["returns_col"]
    cols = list(dict.fromkeys([*meta_cols, ret_col, *feats]))
    sub = lf.select([c for c in cols if c in schema]).filter(pl.col("Date").cast(pl.Date).is_between(lo, hi))
    panel = PanelStore.from_frame(sub, feats, [], bundle.meta["normalizer"], ret_col,
                                  bundle.meta["sector_vocab"], bundle.meta["segment_vocab"])
    return predict_panel(bundle.model, panel, panel.day_index(want), window=L,
                         min_window_frac=float(bundle.meta["min_window_frac"]), targets=False)
