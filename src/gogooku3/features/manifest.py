"""The feature manifest: the allow-list of feature columns every stage after the builder uses, and the single
source of the dataset's facts (horizons, entry lag, calendar, feature groups).

Saved beside the dataset as `<dataset stem>.manifest.json` (a built version's `data.manifest.json`, see
`features.published`), with the parquet's content fingerprint, which `for_dataset` checks. Labels (`target_*`) can
never be listed as features.
Later stages read horizons and the entry lag from here; a config that disagrees is a ConfigError
(`check_labels`), never a silently different purge or embargo.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError, LeakageError
from gogooku3.core.io import file_fingerprint, fingerprint, read_json, write_json
from gogooku3.data.split import label_gap as _label_gap
from gogooku3.features.published import resolve

if TYPE_CHECKING:
    from gogooku3.config.schema import LabelsSettings

TARGET_RE = re.compile(r"^(target|feat_ret|label|y)_")
META_COLUMNS = (C.CODE, C.DATE, C.SECTION, C.S33, C.S17)


def is_label_like(name: str) -> bool:
    return bool(TARGET_RE.match(name))


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    group: str
    dtype: str


@dataclass
class FeatureManifest:
    features: list[FeatureSpec]
    targets: list[str]
    meta_columns: list[str]
    horizons: list[int]
    entry_lag: int
    skipped_groups: dict[str, str] = field(default_factory=dict)  # group -> why it was not built
    calendar: str = ""  # the trading calendar the sessions (and so every lag and horizon) are counted in
    lookback: dict[str, int] = field(default_factory=dict)  # group -> longest look-back in sessions ({}: unknown)
    source: str = ""  # the raw data's source (synthetic | jquants | files; "": not recorded)
    notes: dict[str, str] = field(default_factory=dict)  # group -> how it was built, where not as usual (a proxy)
    dataset_fingerprint: str = ""  # content fingerprint of the parquet described ("": not recorded, a plain file)

    def __post_init__(self) -> None:
        leaked = [f.name for f in self.features if is_label_like(f.name) or f.name in self.targets]
        if leaked:
            raise LeakageError(f"label-like columns cannot be features: {', '.join(leaked)}")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for f in self.features:
            out.setdefault(f.group, []).append(f.name)
        return out

    @property
    def label_gap(self) -> int:
        """Sessions from a date t to the end of its longest label window (t + entry_lag + max horizon): how far
        apart fit labels and later dates must be (purge, embargo, inner validation, stacking, incremental builds)."""
        return _label_gap(self.horizons, self.entry_lag)

    @property
    def max_lookback(self) -> int | None:
        """The longest look-back (sessions) of any listed feature; None when a feature's group has no `lookback`."""
        groups = {f.group for f in self.features}
        if not groups or not groups <= set(self.lookback):
            return None
        return max(int(self.lookback[g]) for g in groups)

    @property
    def fingerprint(self) -> str:
        return fingerprint([(f.name, f.group, f.dtype) for f in self.features], self.targets, self.entry_lag)

    @classmethod
    def from_frame(
        cls,
        df: pl.DataFrame | pl.LazyFrame,
        groups: dict[str, str],
        horizons: list[int],
        entry_lag: int,
        skipped_groups: dict[str, str] | None = None,
        calendar: str = "",
        lookback: dict[str, int] | None = None,
        source: str = "",
        notes: dict[str, str] | None = None,
    ) -> FeatureManifest:
        """Manifest of `df`'s columns named in `groups` (column -> group), in the frame's column order."""
        schema = df.collect_schema() if isinstance(df, pl.LazyFrame) else df.schema
        feats = [FeatureSpec(c, groups[c], str(dt)) for c, dt in schema.items() if c in groups]
        return cls(
            feats,
            [C.target(h) for h in horizons if C.target(h) in schema],
            [c for c in META_COLUMNS if c in schema],
            list(horizons),
            entry_lag,
            dict(skipped_groups or {}),
            calendar,
            dict(lookback or {}),
            source,
            dict(notes or {}),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fingerprint"] = self.fingerprint
        d["n_features"] = len(self.features)
        return d

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> FeatureManifest:
        d = read_json(path)
        try:
            m = cls(
                [FeatureSpec(**f) for f in d["features"]],
                list(d["targets"]),
                list(d["meta_columns"]),
                list(d["horizons"]),
                int(d["entry_lag"]),
                dict(d["skipped_groups"]),
                str(d.get("calendar", "")),
                {str(k): int(v) for k, v in (d.get("lookback") or {}).items()},
                str(d.get("source", "")),
                {str(k): str(v) for k, v in (d.get("notes") or {}).items()},
                str(d.get("dataset_fingerprint") or ""),
            )
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}: not a feature manifest ({e})") from e
        if d.get("fingerprint") and d["fingerprint"] != m.fingerprint:
            raise DataError(f"{path}: manifest fingerprint does not match its contents (edited by hand?)")
        return m

    @classmethod
    def for_dataset(cls, dataset_path: str | Path) -> FeatureManifest:
        """The manifest of the dataset at `dataset_path` (a published name is resolved to its version first; a
        reader that also opens the parquet passes the path `features.published.pin` gave it), checked against the
        parquet's content where it records the fingerprint."""
        data = resolve(dataset_path)
        p = manifest_path(data)
        if not p.exists():
            raise DataError(
                f"{dataset_path}: no feature manifest beside it ({p.name}); rebuild with `gogooku3 data build`"
            )
        m = cls.load(p)
        if m.dataset_fingerprint and data.exists() and file_fingerprint(data) != m.dataset_fingerprint:
            raise DataError(
                f"{data}: its content (fingerprint {file_fingerprint(data)}) is not the data its manifest "
                f"{p.name} describes ({m.dataset_fingerprint}); rebuild with `gogooku3 data build`"
            )
        return m

    def check_labels(self, labels_cfg: LabelsSettings, source: str | Path = "dataset") -> None:
        """The config's `labels.horizons` / `labels.entry_lag` must be the ones the dataset was built with."""
        want_h, want_lag = list(labels_cfg.horizons), labels_cfg.entry_lag
        if want_lag != self.entry_lag:
            raise ConfigError(
                f"{source}: built with labels.entry_lag={self.entry_lag} but the config says "
                f"labels.entry_lag={want_lag}; pass labels.entry_lag={self.entry_lag} (or rebuild the "
                f"dataset with the lag you want)"
            )
        if want_h != list(self.horizons):
            hs = ",".join(str(h) for h in self.horizons)
            raise ConfigError(
                f"{source}: built with labels.horizons=[{hs}] but the config says "
                f"labels.horizons={want_h}; pass labels.horizons=[{hs}] (or rebuild the dataset)"
            )

    def check_frame(self, df: pl.DataFrame | pl.LazyFrame, source: str | Path = "dataset") -> None:
        """Fail if `df` lacks any manifest feature."""
        schema = df.collect_schema() if isinstance(df, pl.LazyFrame) else df.schema
        missing = [n for n in self.names if n not in schema]
        if missing:
            raise DataError(f"{source}: {len(missing)} manifest feature(s) missing, e.g. {', '.join(missing[:5])}")


def manifest_path(dataset_path: str | Path) -> Path:
    p = Path(dataset_path)
    return p.with_name(p.name.removesuffix(".parquet") + ".manifest.json")


def metadata_path(dataset_path: str | Path) -> Path:
    p = Path(dataset_path)
    return p.with_name(p.name.removesuffix(".parquet") + ".metadata.json")
