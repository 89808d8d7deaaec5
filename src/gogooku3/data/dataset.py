"""Opening a built dataset for training: `paths.dataset` resolved once and pinned for the run (`features.published`),
its manifest (the allow-list and the dataset's facts) checked against the config and against the parquet's content,
and its PanelStore (converted once, cached by fingerprint). Shared by `train` and `tune`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from gogooku3.config.compose import path, to_dict
from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.core.io import file_fingerprint
from gogooku3.data.panel import PanelStore
from gogooku3.data.raw_inputs import informative, raw_channels
from gogooku3.evaluation.neutral import with_neutral_targets
from gogooku3.evaluation.results import DatasetRef
from gogooku3.features.manifest import FeatureManifest
from gogooku3.features.published import dataset_files, pin

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

PINNED_ENV = "GOGOOKU3_PINNED_DATASET"  # the dataset version rank 0 of `train` reads, for its DDP ranks


def open_manifest(cfg: Settings, dataset: Path) -> FeatureManifest:
    """The manifest of `dataset` (which must exist): the allow-list and the dataset's facts (horizons, entry lag).
    A config whose build-only `labels` differ from the facts the dataset was built with is refused with one
    ConfigError line (`FeatureManifest.check_labels`): the one check `train`, `tune` and `safe` share."""
    if not dataset.exists():
        raise DataError(f"{dataset}: dataset not found; build it with `gogooku3 data build`")
    manifest = FeatureManifest.for_dataset(dataset)
    manifest.check_labels(cfg.labels, dataset)
    return manifest


def load_dataset(cfg: Settings, ddp_child: bool = False) -> tuple[Path, FeatureManifest, DatasetRef]:
    """The dataset (`paths.dataset` resolved and pinned: the version file every later read of the run uses, so a
    rebuild meanwhile changes nothing), its manifest (the allow-list) and the facts it fixes; the config must agree
    with them. A DDP rank Lightning starts later (`ddp_child`) takes the version rank 0 pinned."""
    given = os.environ.get(PINNED_ENV) if ddp_child else None
    dataset = pin(given or path(cfg, "paths.dataset"))
    if not ddp_child:
        os.environ[PINNED_ENV] = str(dataset)  # inherited by the ranks Lightning starts
    manifest = open_manifest(cfg, dataset)
    lf = pl.scan_parquet(dataset)
    manifest.check_frame(lf, dataset)
    missing = [C.target(h) for h in manifest.horizons if C.target(h) not in lf.collect_schema()]
    if missing:
        raise DataError(f"{dataset}: label column(s) {', '.join(missing)} of the manifest are missing")
    if not manifest.names:
        raise DataError(f"{dataset}: the manifest lists no features")
    ref = DatasetRef(
        str(dataset),
        file_fingerprint(dataset),
        manifest.fingerprint,
        len(manifest.names),
        list(manifest.horizons),
        manifest.entry_lag,
        manifest.calendar,
    )
    return dataset, manifest, ref


def load_panel(
    cfg: Settings, dataset: Path, manifest: FeatureManifest, ref: DatasetRef, inputs: str = "features"
) -> PanelStore:
    """The dataset's PanelStore (converted once, cached by fingerprint under `paths.cache_dir`). `inputs`: features
    (the manifest's engineered features) | raw (the price/volume channels of `data.raw_inputs` made from the
    manifest's columns, `train.raw_inputs`); the same codes, dates, targets, returns, sector and segment either way."""
    tc = cfg.train
    if inputs == "features":
        names, exprs = list(manifest.names), None
    elif inputs == "raw":
        lf, ri = pl.scan_parquet(dataset_files(dataset)), tc.raw_inputs
        allowed = [c for c in manifest.names if c in lf.collect_schema()]  # the allow-list's columns only
        exprs = informative(lf, raw_channels(allowed, ri.channels, ri.volume_window, dataset), dataset)
        names = list(exprs)
    else:
        raise ConfigError(f"load_panel: inputs={inputs!r}: one of features | raw")
    panel = PanelStore.build(
        dataset,
        names,
        manifest.horizons,
        path(cfg, "paths.cache_dir"),
        normalizer=to_dict(tc.normalizer),
        manifest_fingerprint=manifest.fingerprint,
        dataset_fingerprint=ref.fingerprint,
        returns_col=tc.returns_col,
        force=tc.force_convert,
        exprs=exprs,
    )
    return with_neutral_targets(cfg, dataset, panel)  # neutral.targets: residualised labels (evaluation.neutral)
