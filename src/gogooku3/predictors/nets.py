"""The zoo's networks as predictors: MLP, GRU, LSTM (`model.zoo`) and ATFT-GAT-FAN on another input panel, each
trained exactly as the deep model is (`predictors.atft`: `training.ensemble.fit_ensemble` on the same plans, `train`
settings, loss, early stopping, EMA, checkpoints and member worker processes).

    NetPredictor(ctx, name, arch, inputs, **the network's keys)     one `predictors.zoo` entry
      arch    mlp | gru | lstm (keys: `model.zoo.NetConfig.keys()`) | atft_gat_fan (no keys: the `model` group's)
      inputs  features: the manifest's engineered features (Alpha158-like; the run's panel, `ctx.cache["panel"]`)
              raw: per-day raw price/volume channels (Alpha360-like; `data.dataset.load_panel(..., inputs="raw")`)

Each panel is built once per run (`ctx.shared("panel_" + inputs)`). Checkpoints go under RUN/checkpoints/<name>/,
logs under RUN/logs/<name>/. A network on the features panel can be saved as the product's bundle (its
model_config carries `arch`); one on the raw panel cannot (`predict` rebuilds only the features panel).
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, ClassVar

from gogooku3.core.errors import ConfigError
from gogooku3.data.panel import PanelStore
from gogooku3.model.zoo import ARCHS, ATFT, NetConfig
from gogooku3.predictors.atft import ATFTFitted, ATFTPredictor
from gogooku3.predictors.base import Context
from gogooku3.training.ensemble import FoldFit
from gogooku3.training.fit import Plan, model_config

log = logging.getLogger(__name__)

INPUTS = ("features", "raw")


def raw_panel_available() -> bool:
    """Whether this build's `data.dataset.load_panel` takes `inputs` (the raw input panel)."""
    from gogooku3.data.dataset import load_panel

    return "inputs" in inspect.signature(load_panel).parameters


class NetPredictor(ATFTPredictor):
    stacks: ClassVar[bool] = False  # the stacked LightGBM inputs are the product network's option only

    def __init__(self, ctx: Context, name: str, arch: str, inputs: str, **keys: Any):
        super().__init__(ctx, name)
        where = f"predictors.zoo.{name}"
        if arch not in ARCHS:
            raise ConfigError(f"{where}.arch={arch!r}: one of {', '.join(ARCHS)}")
        if inputs not in INPUTS:
            raise ConfigError(f"{where}.inputs={inputs!r}: one of {', '.join(INPUTS)}")
        known = [] if arch == ATFT else NetConfig.keys()
        unknown = [k for k in keys if k not in known]
        if unknown:
            why = "ATFT-GAT-FAN takes the model group's values" if arch == ATFT else f"known: {', '.join(known)}"
            raise ConfigError(f"{where}.{unknown[0]}: unknown key for arch {arch} ({why})")
        missing = [k for k in known if k not in keys]
        if missing:
            raise ConfigError(f"{where}.{missing[0]}: required key missing for arch {arch}")
        if inputs == "raw" and not raw_panel_available():
            raise ConfigError(
                f"{where}.inputs=raw: this build has no raw input panel (data.dataset.load_panel(inputs=...)); "
                "use inputs: features"
            )
        self.arch, self.input_mode, self.keys = arch, inputs, dict(keys)

    @property
    def panel(self) -> PanelStore:
        return self.ctx.shared("panel_" + self.input_mode, self._load_panel)

    def _load_panel(self) -> PanelStore:
        ctx = self.ctx
        if self.input_mode == "features":
            return ctx.cache["panel"]
        from gogooku3.data import dataset

        ref = ctx.cache.get("dataset_ref")
        if ref is None:
            raise ConfigError(f"predictors.zoo.{self.name}.inputs=raw: the run gives no dataset reference")
        panel = dataset.load_panel(ctx.cfg, ctx.dataset, ctx.manifest, ref, inputs="raw")
        log.info("train: raw input panel %s (%s)", list(panel.features.shape), ", ".join(panel.feature_names))
        return panel

    def model_cfg(self) -> dict[str, Any]:
        ctx, panel = self.ctx, self.panel
        if self.arch == ATFT:
            return model_config(ctx.cfg, panel, ctx.horizons)
        d = {**self.keys, "arch": self.arch, "n_features": len(panel.feature_names), "horizons": ctx.horizons}
        return NetConfig.from_dict(d, where=f"predictors.zoo.{self.name}").to_dict()

    def folder(self) -> str:
        return self.name

    def fitted(self, plan: Plan, fit: FoldFit, meta: dict[str, Any]) -> NetFitted:
        return NetFitted(self.name, self.ctx.horizons, plan, fit, self.panel, [], meta, self.input_mode)


class NetFitted(ATFTFitted):
    """One plan's ensemble of a zoo network; served like the deep model when it reads the features panel."""

    def __init__(
        self,
        name: str,
        horizons: list[int],
        plan: Plan,
        fit: FoldFit,
        panel: PanelStore,
        stack_inputs: list[str],
        meta: dict[str, Any],
        inputs: str,
    ):
        super().__init__(name, horizons, plan, fit, panel, stack_inputs, meta)
        self.input_mode = inputs

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "inputs": self.input_mode}

    def save(self, directory: Path, blend: dict | None = None, product: str | None = None) -> None:
        if self.input_mode != "features":
            raise ConfigError(
                f"predictor {self.name} reads the raw input panel, which `predict` cannot rebuild; choose another "
                "predictors.product"
            )
        super().save(directory, blend, product)
