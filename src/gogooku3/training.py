"""Lightning training of ATFT-GAT-FAN: the LightningModule, callbacks (collapse guard, EMA, throughput/MFU)
and the Trainer factory. The loop itself is Lightning's."""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    StochasticWeightAveraging,
)
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from gogooku3 import columns as C
from gogooku3.logs import defer_lightning_logging
from gogooku3.model.atft_gat_fan import ATFTGATFAN, ATFTConfig
from gogooku3.model.losses import MultiHorizonLoss

defer_lightning_logging()
log = logging.getLogger(__name__)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """0-based ranks with ties sharing their average rank (as `gogooku3.evaluation.metrics` ranks)."""
    xs, order = x.sort()
    _, inverse, counts = torch.unique_consecutive(xs, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0)
    avg = (ends - counts + ends - 1).float() / 2
    ranks = torch.empty_like(avg[inverse])
    ranks[order] = avg[inverse]
    return ranks


def rank_ic(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One day's RankIC on device, for the validation loop: the definition of `gogooku3.evaluation.metrics.daily_ic`
    (Pearson correlation of average ranks), tested against it."""
    rp, ry = _average_ranks(pred.float()), _average_ranks(y.float())
    rp, ry = rp - rp.mean(), ry - ry.mean()
    return (rp * ry).sum() / (rp.norm() * ry.norm() + 1e-12)


def horizon_weights(spec: Any, horizons: list[int]) -> list[float] | None:
    """Loss weight per horizon from a list (one per horizon) or a {horizon: weight} map (missing -> 1.0)."""
    if spec is None:
        return None
    if hasattr(spec, "items"):
        m = {int(k): float(v) for k, v in spec.items()}
        return [m.get(int(h), 1.0) for h in horizons]
    return [float(w) for w in spec]


class ATFTModule(L.LightningModule):
    """Wraps the model, the multi-horizon loss and AdamW with linear warmup + cosine decay."""

    def __init__(self, model_cfg: dict, loss_cfg: dict, optim_cfg: dict):
        super().__init__()
        self.save_hyperparameters()
        self.model = ATFTGATFAN(ATFTConfig.from_dict(model_cfg))
        mc = self.model.cfg
        self.horizons = list(mc.horizons)
        self.loss_fn = MultiHorizonLoss(mc.horizons, horizon_weights(loss_cfg.get("horizon_weights"), self.horizons),
                                        mc.quantiles,
                                        loss_cfg.get("huber_delta", 1.0), loss_cfg.get("lambda_q", 0.5),
                                        loss_cfg.get("lambda_ic", 0.5), loss_cfg.get("min_stocks", 5),
                                        loss_cfg.get("target_transform", "zscore"))
        self.optim_cfg = dict(optim_cfg)
        self._val: list[dict[str, torch.Tensor]] = []
        self._weights_sum: torch.Tensor | None = None
        self._weights_n = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(batch["x"], batch["sector"], batch["segment"], batch["returns"], batch["returns_valid"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        loss, parts = self.loss_fn(out, batch["y"])
        n = batch["x"].shape[0]
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        for k, v in parts.items():
            self.log(f"train_{k}", v, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self(batch)
        loss, _ = self.loss_fn(out, batch["y"])
        row = {"loss": loss.detach().float()}
        p, y = out["point"].float(), batch["y"].float()
        for j, h in enumerate(self.horizons):
            m = torch.isfinite(y[:, j])
            if int(m.sum()) >= 5:
                row[f"rank_ic_{h}d"] = rank_ic(p[m, j], y[m, j])
                row[f"std_ratio_{h}d"] = p[m, j].std() / (((y[m, j] - y[m, j].mean()) / (y[m, j].std() + 1e-12)).std() + 1e-12)
        self._val.append(row)
        w = out["feature_weights"].detach().float()
        self._weights_sum = w if self._weights_sum is None else self._weights_sum + w
        self._weights_n += 1

    def on_validation_epoch_end(self) -> None:
        keys = sorted({k for r in self._val for k in r})
        for k in keys:
            vals = [r[k] for r in self._val if k in r]
            v = torch.stack(vals).mean() if vals else torch.tensor(float("nan"), device=self.device)
            self.log(f"val_{k}", v, sync_dist=True)
        if not any(f"rank_ic_{self.horizons[0]}d" in r for r in self._val):
            self.log(C.monitor(self.horizons[0]), torch.tensor(-1.0, device=self.device), sync_dist=True)
        self._val.clear()

    def feature_importance(self) -> torch.Tensor | None:
        """Mean variable-selection weight per feature over the validation batches seen so far."""
        return None if self._weights_sum is None else self._weights_sum / max(self._weights_n, 1)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int = 0) -> dict[str, torch.Tensor]:
        dev = next(self.parameters()).device  # a GPU-resident panel yields device tensors for a CPU model
        batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items()}
        out = self(batch)
        return {"day": batch["day"].cpu(), "idx": batch["idx"].cpu(), "point": out["point"].float().cpu()}

    def configure_optimizers(self):
        oc = self.optim_cfg
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (no_decay if p.ndim < 2 or "norm" in name or "bias" in name else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": oc.get("weight_decay", 0.01)},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=oc.get("lr", 1e-3))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = min(int(oc.get("warmup_steps", 100)), max(1, total // 5))
        floor = float(oc.get("min_lr_ratio", 0.05))

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            frac = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


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
                log.warning("collapse guard: epoch %d, %dd predictions' std is %.4f of the target's (< %.3f)",
                            trainer.current_epoch, h, float(v), self.ratio)
                if self.stop:
                    trainer.should_stop = True


class EMA(Callback):
    """Exponential moving average of the weights, swapped in for validation and kept at the end of fit."""

    def __init__(self, decay: float = 0.999):
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
        for k, v in pl_module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def _swap_in(self, pl_module: L.LightningModule) -> None:
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
        self.samples, self.seconds, self.history = 0, 0.0, []
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


def ema_weights(checkpoint_path: str | Path) -> dict[str, torch.Tensor] | None:
    """The EMA shadow weights stored with a checkpoint by the EMA callback (None when it has none)."""
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    for cb_state in state.get("callbacks", {}).values():
        if isinstance(cb_state, dict) and cb_state.get("shadow") is not None:
            return {k: v.cpu() for k, v in cb_state["shadow"].items()}
    return None


def monitor_key(horizons: list[int]) -> str:
    return C.monitor(horizons[0])


def build_trainer(cfg: DictConfig, run_dir: Path, module: ATFTModule, ckpt_dir: Path | None = None,
                  extra_callbacks: list[Callback] | None = None,
                  tag: str = "") -> tuple[L.Trainer, dict[str, Callback]]:
    """The Trainer from `cfg.trainer` (accelerator/devices/strategy/precision) and `cfg.train`; `tag` names the
    loggers' sub-folder (one per ensemble member)."""
    tc, tr = cfg.train, cfg.trainer
    if tr.get("num_threads"):
        # OpenMP threads spin-wait on a busy 2-core machine: 2 threads ran a day batch 3-10x slower than 1.
        torch.set_num_threads(int(tr.num_threads))
    horizons = module.horizons
    monitor = monitor_key(horizons)
    ckpt = ModelCheckpoint(dirpath=str(ckpt_dir or run_dir / "checkpoints"), monitor=monitor, mode="max",
                           save_top_k=int(tc.save_top_k), save_last=True, auto_insert_metric_name=False,
                           filename="epoch{epoch:03d}-ric{" + monitor + ":.4f}")
    guard = CollapseGuard(horizons, float(tc.collapse_ratio), bool(tc.collapse_stop))
    thr = Throughput(module.model.estimate_flops_per_sample(), tr.get("peak_tflops") and float(tr.peak_tflops) * 1e12)
    cbs: dict[str, Callback] = {"checkpoint": ckpt, "collapse_guard": guard, "throughput": thr,
                                "early_stopping": EarlyStopping(monitor=monitor, mode="max",
                                                                patience=int(tc.patience))}
    if tc.get("ema_decay"):
        cbs["ema"] = EMA(float(tc.ema_decay))
    if tc.get("swa"):
        cbs["swa"] = StochasticWeightAveraging(swa_lrs=float(tc.lr) * 0.5, swa_epoch_start=0.67)
    loggers: list[Any] = [CSVLogger(save_dir=str(run_dir), name="logs", version=tag)]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=tag))
    except (ImportError, ModuleNotFoundError):
        log.info("tensorboard not installed; CSV logging only")
    if tc.get("mlflow"):
        try:
            from lightning.pytorch.loggers import MLFlowLogger

            loggers.append(MLFlowLogger(experiment_name="gogooku3", save_dir=str(run_dir / "mlruns")))
        except (ImportError, ModuleNotFoundError):
            log.warning("train.mlflow=true but mlflow is not installed; skipping the MLflow logger")
    trainer = L.Trainer(
        accelerator=tr.accelerator, devices=tr.devices, strategy=tr.get("strategy", "auto"),
        num_nodes=int(tr.get("num_nodes", 1)), precision=tr.precision,
        max_epochs=int(tc.max_epochs), min_epochs=int(tc.get("min_epochs", 1)),
        gradient_clip_val=float(tc.grad_clip), accumulate_grad_batches=int(tc.get("accumulate_grad_batches") or 1),
        limit_train_batches=tc.get("limit_train_batches") or 1.0,
        limit_val_batches=tc.get("limit_val_batches") or 1.0, num_sanity_val_steps=0,
        callbacks=[*cbs.values(), *(extra_callbacks or [])], logger=loggers, log_every_n_steps=10,
        enable_progress_bar=bool(tr.get("progress_bar", True)), enable_model_summary=False,
        use_distributed_sampler=False, deterministic=False, default_root_dir=str(run_dir))
    return trainer, cbs
