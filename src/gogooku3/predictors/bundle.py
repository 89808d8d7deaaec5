"""The model bundle: weights (safetensors) + everything needed to predict on new data, checked by fingerprint.

`bundle/model.safetensors` and `bundle/bundle.json` (model config, number of ensemble members, feature manifest,
normaliser settings, dataset fingerprint, horizons, window, sector/segment vocabularies, `product`: the predictor
it serves). When the product is the blend (`predictors.product=blend`), bundle.json also holds the blend (method,
weight per horizon, the LightGBM input normalisation) and the last fold's LightGBM boosters lie beside it as
`bundle/lgbm_{h}d.txt`: `predict_product` needs nothing outside the bundle.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch
from safetensors.torch import load_file, save_file

from gogooku3.core import columns as C
from gogooku3.core.errors import DataError, Gogooku3Error, load_reason
from gogooku3.core.io import read_json, to_json
from gogooku3.core.stores import mark, new_owned_dir, owned, publish_dir, temp_dir_for
from gogooku3.features.manifest import FeatureManifest
from gogooku3.model.zoo import Network, build_model, n_members

log = logging.getLogger(__name__)


@dataclass
class Bundle:
    model: Network
    meta: dict[str, Any]
    root: Path | None = None  # the bundle folder it was loaded from

    @property
    def horizons(self) -> list[int]:
        return list(self.meta["horizons"])

    @property
    def features(self) -> list[str]:
        return [f["name"] for f in self.meta["manifest"]["features"]]


def save_bundle(
    out: str | Path,
    model: Network,
    manifest: FeatureManifest | dict,
    normalizer: dict,
    dataset_fingerprint: str,
    sector_vocab: Sequence[str],
    segment_vocab: Sequence[str],
    extra: dict | None,
    min_window_frac: float,
    returns_col: str,
    blend: dict | None = None,
) -> Path:
    """Write the bundle into the folder `out` (RUN/bundle); `min_window_frac` and `returns_col` are the run's `train.*`
    values (predict rebuilds the panel with them); `blend` (`BlendFitted.save`) names booster files that are copied
    in. Published whole: written into a marked temp folder beside `out` and swapped onto it in one step
    (`core.stores.publish_dir`), so a reader (or a crash) never sees a bundle with weights but no bundle.json, or one
    of two runs mixed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_owned_dir(temp_dir_for(out), "bundle")
    try:
        if blend is not None:
            files = {}
            for h, src in blend["boosters"].items():
                files[h] = f"lgbm_{int(h)}d.txt"
                shutil.copyfile(src, tmp / files[h])
            blend = {**blend, "boosters": files}
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        man = manifest.to_dict() if isinstance(manifest, FeatureManifest) else dict(manifest)
        (tmp / "bundle.json").write_text(
            to_json(
                {
                    "model_config": model.cfg.to_dict(),
                    "members": n_members(model),
                    "manifest": man,
                    "manifest_fingerprint": man["fingerprint"],
                    "normalizer": normalizer,
                    "dataset_fingerprint": dataset_fingerprint,
                    "horizons": list(model.cfg.horizons),
                    "window": model.cfg.window,
                    "sector_vocab": list(sector_vocab),
                    "segment_vocab": list(segment_vocab),
                    "min_window_frac": min_window_frac,
                    "returns_col": returns_col,
                    "n_params": model.get_num_params(),
                    "blend": blend,
                    **(extra or {}),
                }
            )
            + "\n",
            encoding="utf-8",
        )
        if out.is_dir() and not owned(out) and (out / "bundle.json").exists():
            mark(out, "bundle")  # the bundle of a run saved before folders carried the marker: this run's own
        publish_dir(tmp, out, "publish bundle")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_bundle(run_dir: str | Path, dataset: str | Path | None = None) -> Bundle:
    """Load `<run_dir>/bundle`; with `dataset`, fail with DataError if its manifest differs from the bundle's."""
    root = Path(run_dir) / "bundle"
    if not Path(run_dir).is_dir():
        raise DataError(
            f"{run_dir}: no model bundle (no such run); train first with `gogooku3 train` or name a run with --run"
        )
    if not (root / "bundle.json").exists():
        raise DataError(
            f"{run_dir}: the run is incomplete, no model bundle (bundle/bundle.json: its training did not finish); "
            f"train again or name a finished run with --run"
        )
    meta = read_json(root / "bundle.json")
    _check_meta(meta, root / "bundle.json")
    if dataset is not None:
        check_manifest(meta, FeatureManifest.for_dataset(dataset), dataset)
    try:
        model = build_model(dict(meta["model_config"]), int(meta.get("members", 1)))  # no `arch`: ATFT-GAT-FAN
    except (Gogooku3Error, TypeError, ValueError, KeyError, RuntimeError) as e:
        raise DataError(
            f"{root / 'bundle.json'}: model_config does not describe a model ({load_reason(e)}); the "
            f"bundle was edited or is damaged: retrain, or restore it"
        ) from e
    state, weights = _read_weights(root)
    _check_weights(model, state, weights)
    model.load_state_dict(state)
    model.eval()
    return Bundle(model, meta, root)


BUNDLE_KEYS = (
    "model_config",
    "manifest",
    "manifest_fingerprint",
    "normalizer",
    "horizons",
    "window",
    "sector_vocab",
    "segment_vocab",
    "min_window_frac",
    "returns_col",
)


def _check_meta(meta: Any, where: Path) -> None:
    """bundle.json holds every key `load_bundle` and prediction read."""
    if not isinstance(meta, dict):
        raise DataError(f"{where}: not a bundle description (a JSON object is expected); retrain, or restore it")
    missing = [k for k in BUNDLE_KEYS if k not in meta]
    if not isinstance(meta.get("manifest", {}), dict) or "features" not in meta.get("manifest", {}):
        missing.append("manifest.features")
    if missing:
        raise DataError(
            f"{where}: lacks {', '.join(missing)}; the bundle was edited or is damaged: retrain, or restore it"
        )


def _read_weights(root: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The bundle's weights (model.safetensors, else a weights-only model.pt); DataError when missing or unreadable."""
    st, pt = root / "model.safetensors", root / "model.pt"
    path = st if st.exists() or not pt.exists() else pt
    if not path.is_file():
        raise DataError(f"{st}: missing (the bundle has bundle.json but no weights); retrain, or restore the file")
    try:
        state = load_file(str(path)) if path == st else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors / unpickling raise many types for truncated or crafted files
        raise DataError(
            f"{path}: cannot read the weights ({load_reason(e)}); the file is truncated, damaged or "
            f"holds more than tensors: retrain, or restore it"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: not a map of tensors; retrain, or restore the file")
    return state, path


def _check_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """The weights fit the model bundle.json describes: same names, same shapes."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    problems = [
        f"size mismatch for {k}: {list(have[k])} in the file, {list(want[k])} in bundle.json's model"
        for k in want
        if k in have and have[k] != want[k]
    ]
    problems += [f"missing {k}" for k in want if k not in have]
    problems += [f"unexpected {k}" for k in have if k not in want]
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(
            f"{path}: weights do not fit bundle.json's model: {problems[0]}{more}; the bundle was edited "
            f"or mixed with another run's: retrain, or restore it"
        )


def check_manifest(meta: dict, manifest: FeatureManifest, source: Any) -> None:
    if manifest.fingerprint != meta["manifest_fingerprint"]:
        raise DataError(
            f"{source}: feature manifest fingerprint {manifest.fingerprint} does not match the model "
            f"bundle's {meta['manifest_fingerprint']} (features changed; retrain or use the matching dataset)"
        )


@torch.no_grad()
def predict_for_dates(
    bundle: Bundle,
    df_or_path: pl.DataFrame | pl.LazyFrame | str | Path,
    dates: Sequence[dt.date | str],
    *,
    quantiles: bool = False,
    explain: bool = False,
) -> pl.DataFrame:
    """Predictions for every stock with a valid window on each date: DataFrame[Date, Code, pred_{h}d] (plus the
    quantile forecasts / per-stock variable-selection weights with `quantiles` / `explain`), from
    `inference.predict_panel` over a panel of just the sessions the windows need."""
    from gogooku3.data.normalize import CrossSectionalNormalizer
    from gogooku3.data.panel import PanelStore
    from gogooku3.training.inference import predict_panel

    if bundle.meta.get("stack"):
        raise DataError(
            f"{bundle.root or 'bundle'}: its model reads stacked LightGBM inputs "
            f"({', '.join(bundle.meta['stack']['inputs'])}; train.stack.enabled), which `predict` cannot "
            "rebuild for new dates; train with train.stack.enabled=false for a bundle that predicts"
        )
    if isinstance(df_or_path, (str, Path)):
        check_manifest(bundle.meta, FeatureManifest.for_dataset(df_or_path), df_or_path)
        lf = pl.scan_parquet(df_or_path)
    else:
        lf = df_or_path.lazy()
    want = sorted({d if isinstance(d, dt.date) else dt.date.fromisoformat(str(d)) for d in dates})
    if not want:
        raise DataError("predict_for_dates: no dates given")
    L = int(bundle.meta["window"])
    all_dates = lf.select(pl.col(C.DATE).cast(pl.Date).unique().sort()).collect().get_column(C.DATE).to_list()
    pos = [k for k, d in enumerate(all_dates) if d in set(want)]
    if not pos:
        raise DataError(
            f"predict_for_dates: none of {len(want)} date(s) is in the dataset "
            f"(it covers {all_dates[0] if all_dates else '-'} .. {all_dates[-1] if all_dates else '-'})"
        )
    history = CrossSectionalNormalizer.from_dict(bundle.meta["normalizer"]).history_days  # day-level time z-scores
    lo = all_dates[max(0, min(pos) - L + 1 - history)]
    hi = all_dates[max(pos)]
    feats = bundle.features
    schema = lf.collect_schema()
    meta_cols = [c for c in (C.CODE, C.DATE, C.SECTION, C.S33) if c in schema]
    ret_col = bundle.meta["returns_col"]
    cols = list(dict.fromkeys([*meta_cols, ret_col, *feats]))
    sub = lf.select([c for c in cols if c in schema]).filter(pl.col(C.DATE).cast(pl.Date).is_between(lo, hi))
    panel = PanelStore.from_frame(
        sub, feats, [], bundle.meta["normalizer"], ret_col, bundle.meta["sector_vocab"], bundle.meta["segment_vocab"]
    )
    return predict_panel(
        bundle.model,
        panel,
        panel.day_index(want),
        window=L,
        min_window_frac=float(bundle.meta["min_window_frac"]),
        targets=False,
        quantiles=quantiles,
        explain=explain,
    )


def predict_product(
    bundle: Bundle,
    df_or_path: pl.DataFrame | pl.LazyFrame | str | Path,
    dates: Sequence[dt.date | str],
    *,
    quantiles: bool = False,
    explain: bool = False,
) -> pl.DataFrame:
    """The bundle's product predictor on each date (`bundle.json` "product"): the network's predictions blended with
    the stored LightGBM boosters (`predictors.blend.combine` with the stored weights) when the product is a blend,
    else the network's. The network runs once; its quantile / explain columns (`quantiles`, `explain`) come from
    that same pass."""
    import lightgbm as lgb

    from gogooku3.predictors.blend import combine
    from gogooku3.predictors.lgbm import predict_spec

    net = predict_for_dates(bundle, df_or_path, dates, quantiles=quantiles, explain=explain)
    spec = bundle.meta.get("blend")
    if not spec:
        return net
    if bundle.root is None:
        raise DataError(
            "predict: the bundle was not loaded from a folder (load_bundle); its LightGBM boosters cannot be found"
        )
    boosters = {}
    for h, name in spec["boosters"].items():
        path = bundle.root / name
        if not path.is_file():
            raise DataError(f"{path}: the bundle's LightGBM booster is missing; retrain, or restore the file")
        boosters[h] = lgb.Booster(model_file=str(path))
    lf = pl.scan_parquet(df_or_path) if isinstance(df_or_path, (str, Path)) else df_or_path.lazy()
    preds = [C.pred(h) for h in bundle.horizons]
    days = sorted(net.get_column(C.DATE).unique().to_list())
    base = predict_spec(spec, boosters, lf, days) if boosters else net.select(C.DATE, C.CODE)
    weights = {int(h): float(w) for h, w in spec["weights"].items()}
    blended = combine(net.select(C.DATE, C.CODE, *preds), base, weights, str(spec["method"]))
    extra = [c for c in net.columns if c not in {C.DATE, C.CODE, *preds}]
    return blended.join(net.select(C.DATE, C.CODE, *extra), on=[C.DATE, C.CODE], how="left") if extra else blended
