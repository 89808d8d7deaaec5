"""The one interface of every predictor (after Qlib's `Model.fit/predict` and scikit-learn's estimators).

    Predictor(ctx, **its YAML keys)      one entry of `predictors.zoo` (`_target_` names the class)
      .fit(plan, inputs) -> Fitted | None   trained on the plan's fit days, choices made on its val days only;
                                            `inputs`: the fitted predictors it names in `needs` (same plan);
                                            None when it cannot run here (e.g. no oracle for this data: logged)
    Fitted
      .predict(days) -> DataFrame[Date, Code, pred_{h}d]   every stock it can score on each day; memoised per days
      .facts() -> dict                     what the run records about this fit (epochs, weights, iterations, ...)
      .save(directory) / load(directory)   what `predict` needs to serve it on new days (the product predictor)

Adding a predictor is one file under `predictors/` with a `Predictor` subclass and one entry in
`conf/predictors/default.yaml`. `train` fits every entry of `predictors.fit` on the same plans and hands their
predictions to the one scorer (`evaluation.compare`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError
from gogooku3.data.split import Fold
from gogooku3.features.manifest import FeatureManifest
from gogooku3.training.fit import Plan

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What the predictors of one run share: the config, the dataset, its manifest and the shared splitter's folds.

    `cache` holds what several predictors read (the panel, the baseline's normalised frame), built once per run."""

    cfg: Settings
    dataset: Path
    manifest: FeatureManifest
    dataset_fingerprint: str
    folds: list[Fold]
    plans: list[Plan]
    run_dir: Path | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def horizons(self) -> list[int]:
        return [int(h) for h in self.manifest.horizons]

    def shared(self, key: str, build: Any) -> Any:
        """`build()` once per run under `key`."""
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]


class Fitted:
    """A predictor fitted on one plan. Subclasses implement `_predict`; `predict` memoises by the days asked."""

    name: str
    horizons: list[int]
    plan: Plan | None
    holds_network: ClassVar[bool] = False  # its save() writes the network bundle (and can carry a blend's spec)

    def __init__(self, name: str, horizons: Sequence[int], plan: Plan | None):
        self.name, self.horizons, self.plan = name, [int(h) for h in horizons], plan
        self._memo: dict[tuple[dt.date, ...], pl.DataFrame] = {}

    def predict(self, days: Sequence[dt.date]) -> pl.DataFrame:
        """Date, Code, pred_{h}d for every stock this predictor scores on each of `days`, sorted by Date, Code."""
        key = tuple(sorted(days))
        if key not in self._memo:
            out = self._predict(list(key))
            self._memo[key] = out.select(
                pl.col(C.DATE).cast(pl.Date),
                pl.col(C.CODE).cast(pl.String),
                *[C.pred(h) for h in self.horizons if C.pred(h) in out.columns],
                *[
                    c
                    for c in out.columns
                    if c not in {C.DATE, C.CODE} and not c.startswith("pred_") and not c.startswith("target_")
                ],
            ).sort(C.DATE, C.CODE)
        return self._memo[key]

    def _predict(self, days: list[dt.date]) -> pl.DataFrame:
        raise NotImplementedError

    def facts(self) -> dict[str, Any]:
        return {}

    def save(self, directory: Path) -> None:
        raise ConfigError(f"predictor {self.name} cannot be saved for `predict`; choose another predictors.product")


class Predictor:
    """One entry of `predictors.zoo`: constructed with the run's Context and the entry's YAML keys."""

    needs: ClassVar[tuple[str, ...]] = ()  # names of YAML keys that name other predictors this one combines

    def __init__(self, ctx: Context, name: str):
        self.ctx, self.name = ctx, name

    def inputs(self) -> list[str]:
        """The predictors this one needs fitted first (on the same plan)."""
        return [str(getattr(self, k)) for k in self.needs]

    def fit(self, plan: Plan, inputs: Mapping[str, Fitted]) -> Fitted | None:
        raise NotImplementedError


def build_predictors(ctx: Context) -> dict[str, Predictor]:
    """The predictors `predictors.fit` names, from their `predictors.zoo` entries, in an order where each comes
    after those it needs."""
    from hydra.utils import get_class

    from gogooku3.config.compose import to_dict

    pc = ctx.cfg.predictors
    wanted = list(pc.fit)
    zoo = pc.zoo
    unknown = [n for n in wanted if n not in zoo]
    if unknown:
        raise ConfigError(f"predictors.fit: {', '.join(unknown)} not in predictors.zoo ({', '.join(zoo)})")
    built: dict[str, Predictor] = {}
    for n in wanted:
        spec = to_dict(zoo[n])
        target = spec.pop("_target_")
        try:
            cls = get_class(target)
        except Exception as e:  # hydra's import error carries a traceback; keep its first line
            raise ConfigError(f"predictors.zoo.{n}._target_={target}: {str(e).splitlines()[0]}") from e
        if not (isinstance(cls, type) and issubclass(cls, Predictor)):
            raise ConfigError(f"predictors.zoo.{n}._target_={target}: not a gogooku3 Predictor")
        try:
            built[n] = cls(ctx, n, **spec)
        except TypeError as e:
            raise ConfigError(f"predictors.zoo.{n}: {e}") from e
    order: list[str] = []
    pending = list(wanted)
    while pending:
        ready = [n for n in pending if all(d in order or d not in built for d in built[n].inputs())]
        if not ready:
            raise ConfigError(f"predictors.fit: circular needs among {', '.join(pending)}")
        order += ready
        pending = [n for n in pending if n not in ready]
    return {n: built[n] for n in order}


def _in(days: Sequence[dt.date]) -> pl.Expr:
    return pl.col(C.DATE).is_in(pl.Series(sorted(set(days)), dtype=pl.Date).implode())


def targets_frame(ctx: Context, days: Sequence[dt.date]) -> pl.DataFrame:
    """Date, Code, target_{h}d of the dataset on `days` (days of the run's plans): the labels every predictor is
    scored against, read from the dataset once per run."""

    def read() -> pl.DataFrame:
        every = [d for p in ctx.plans for d in (*p.val, *p.holdout, *p.test)]
        return (
            pl.scan_parquet(ctx.dataset)
            .select(
                pl.col(C.DATE).cast(pl.Date),
                pl.col(C.CODE).cast(pl.String),
                *[pl.col(C.target(h)).cast(pl.Float32) for h in ctx.horizons],
            )
            .filter(_in(every))
            .collect()
            .sort(C.DATE, C.CODE)
        )

    return ctx.shared("targets", read).filter(_in(days))
