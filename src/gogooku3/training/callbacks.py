"""Lightning callbacks of ATFT-GAT-FAN training: collapse guard, EMA of the weights, throughput/MFU, RNG state,
an epoch log line."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class CollapseGuard(Callback):
    """Per horizon: warn when the validation std(ŷ)/std(z(y)) falls below `ratio`; optionally stop training."""

    def __init__(self, horizons: list[int], ratio: float = 0.05, stop: bool = False, warmup_epochs: int = 1):
        self.horizons, self.ratio, self.stop, self.warmup_epochs = horizons, ratio, stop, warmup_epochs
        self.events: list[dict[str, Any]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch < self.warmup_epochs - 1:
            return
        for h in self.horizons:
            v = trainer.callback_metrics.get(f"val_std_ratio_{h}d")
            if v is not None and float(v) < self.ratio:
                self.events.append({"epoch": trainer.current_epoch, "horizon": h, "std_ratio": float(v)})
                log.warning(
                    "collapse guard: epoch %d, %dd predictions' std is %.4f of the target's (< %.3f)",
                    trainer.current_epoch,
                    h,
                    float(v),
                    self.ratio,
                )
                if self.stop:
                    trainer.should_stop = True


class EMA(Callback):
    """Exponential moving average of the weights, swapped in for validation and kept at the end of fit."""

    def __init__(self, decay: float = 0.99):
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] | None = None
        self._backup: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.shadow is None:
            self.shadow = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        else:
            self.shadow = {k: v.to(pl_module.device) for k, v in self.shadow.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        shadow = self.shadow
        assert shadow is not None  # set in on_fit_start
        for k, v in pl_module.state_dict().items():
            if v.dtype.is_floating_point:
                shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                shadow[k].copy_(v)

    def _swap_in(self, pl_module: L.LightningModule) -> None:
        assert self.shadow is not None  # swapped in only once there is one
        self._backup = copy.deepcopy(pl_module.state_dict())
        pl_module.load_state_dict(self.shadow)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.shadow is not None and not trainer.sanity_checking:
            self._swap_in(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._backup is not None:
            pl_module.load_state_dict(self._backup)
            self._backup = None

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.shadow is not None:
            pl_module.load_state_dict(self.shadow)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow, self.decay = state["shadow"], state["decay"]


class Throughput(Callback):
    """Training samples/s (stock-windows per second) and MFU = achieved FLOP/s / peak FLOP/s, per epoch."""

    def __init__(self, flops_per_sample: float, peak_flops: float | None):
        self.flops_per_sample, self.peak_flops = flops_per_sample, peak_flops
        self.samples, self.seconds = 0, 0.0
        self.history: list[dict[str, float]] = []
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.samples, self.seconds = 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - self._t0
        self.samples += int(batch["x"].shape[0])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.seconds <= 0:
            return
        sps = self.samples / self.seconds
        mfu = sps * self.flops_per_sample / self.peak_flops if self.peak_flops else float("nan")
        self.history.append({"epoch": trainer.current_epoch, "samples_per_sec": sps, "mfu": mfu})
        pl_module.log("samples_per_sec", sps, sync_dist=False, rank_zero_only=True)
        if self.peak_flops:
            pl_module.log("mfu", mfu, sync_dist=False, rank_zero_only=True)


class EpochLog(Callback):
    """One log line per epoch (where no progress bar shows it, e.g. members trained in worker processes)."""

    def __init__(self, tag: str, monitor: str):
        self.tag, self.monitor, self._t0 = tag, monitor, 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        score = m.get(self.monitor)
        log.info(
            "train: %sepoch %d/%d %s %s (%.1f s)",
            f"{self.tag} " if self.tag else "",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            self.monitor,
            "-" if score is None else f"{float(score):.4f}",
            time.perf_counter() - self._t0,
        )


class RngState(Callback):
    """Stores torch's random state with every checkpoint and puts it back when a resumed run starts its next epoch,
    so a resumed run draws the same dropout masks as a run that was never interrupted."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._pending is None:
            return
        torch.set_rng_state(self._pending["torch"].cpu())
        # Uninterrupted, the epoch's training DataLoader iterator draws its base seed from this generator after this
        # hook; on resume Lightning has created that iterator already, so the draw is made here (the resume test
        # checks that the predictions then equal an uninterrupted run's).
        torch.empty((), dtype=torch.int64).random_()
        if self._pending.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in self._pending["cuda"]])
        self._pending = None


def ema_weights(checkpoint_path: str | Path) -> dict[str, torch.Tensor] | None:
    """The EMA shadow weights stored with a checkpoint by the EMA callback (None when it has none)."""
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)  # never unpickle objects
    for cb_state in state.get("callbacks", {}).values():
        if isinstance(cb_state, dict) and cb_state.get("shadow") is not None:
            return {k: v.cpu() for k, v in cb_state["shadow"].items()}
    return None
