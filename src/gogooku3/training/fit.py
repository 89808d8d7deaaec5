"""Training ATFT-GAT-FAN: the one path every caller (`train`, `tune`) goes through.

    Plan (fit / val / test dates of one fold, `make_plans`)
      └─ fit_member: ATFTModule + PanelDataModule + Lightning Trainer (`build_trainer`, callbacks in `callbacks`)
                     -> best epoch's weights (EMA weights when on) -> optional top-k weight average, kept only
                        when it scores higher on the validation days
    (a fold's members and their ensemble: `training.ensemble.fit_ensemble`)

Predictions come from `inference.predict_panel`. The loop itself is Lightning's.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    RichProgressBar,
    StochasticWeightAveraging,
)
from lightning.pytorch.loggers import CSVLogger

from gogooku3.config.compose import to_dict
from gogooku3.core import columns as C
from gogooku3.core.logs import defer_lightning_logging
from gogooku3.data.panel import PanelDataModule, PanelStore
from gogooku3.data.split import (
    Fold,
    check_folds,
    chosen_folds,
    inner_holdout,
    make_splitter,
)
from gogooku3.evaluation.compare import mean_rank_ic
from gogooku3.evaluation.device_metrics import rank_ic
from gogooku3.model.losses import MultiHorizonLoss
from gogooku3.model.zoo import Network, build_model
from gogooku3.training.callbacks import (
    EMA,
    CollapseGuard,
    EpochLog,
    RngState,
    Throughput,
    ema_weights,
)
from gogooku3.training.checkpoints import RunCheckpoint, confined
from gogooku3.training.inference import predict_panel

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings, SplitSettings

defer_lightning_logging()
log = logging.getLogger(__name__)


def horizon_weights(spec: Any, horizons: list[int]) -> list[float] | None:
    """Loss weight per horizon from a list (one per horizon) or a {horizon: weight} map (missing -> 1.0)."""
    if spec is None:
        return None
    if hasattr(spec, "items"):
        m = {int(k): float(v) for k, v in spec.items()}
        return [m.get(int(h), 1.0) for h in horizons]
    return [float(w) for w in spec]


class ATFTModule(L.LightningModule):
    """Wraps the model, the multi-horizon loss and AdamW with linear warmup + cosine decay. The model is any network
    of the zoo (`model.zoo.build_model`: `model_cfg["arch"]`, ATFT-GAT-FAN without one)."""

    def __init__(self, model_cfg: dict, loss_cfg: dict, optim_cfg: dict):
        super().__init__()
        self.save_hyperparameters()
        self.model: Network = build_model(model_cfg)
        mc = self.model.cfg
        self.horizons = list(mc.horizons)
        self.loss_fn = MultiHorizonLoss(
            mc.horizons,
            horizon_weights(loss_cfg["horizon_weights"], self.horizons),
            mc.quantiles,
            loss_cfg["huber_delta"],
            loss_cfg["lambda_q"],
            loss_cfg["lambda_ic"],
            loss_cfg["min_stocks"],
            loss_cfg["target_transform"],
        )
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
                row[f"std_ratio_{h}d"] = p[m, j].std() / (
                    ((y[m, j] - y[m, j].mean()) / (y[m, j].std() + 1e-12)).std() + 1e-12
                )
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

    def configure_optimizers(self):
        """AdamW (decay on weight matrices only) + linear warmup and cosine decay per step. When every parameter is
        on a CUDA device (Lightning moves the module before calling this), AdamW is torch's fused kernel
        (`fused=True`: one launch for the whole step); elsewhere torch's default implementation, as before."""
        oc = self.optim_cfg
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (no_decay if p.ndim < 2 or "norm" in name or "bias" in name else decay).append(p)
        params = decay + no_decay
        fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": oc["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=oc["lr"],
            **fused,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = min(int(oc["warmup_steps"]), max(1, total // 5))
        floor = float(oc["min_lr_ratio"])

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            frac = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def build_trainer(
    cfg: Settings,
    run_dir: Path,
    module: ATFTModule,
    ckpt_dir: Path,
    extra_callbacks: list[Callback] | None = None,
    tag: str = "",
) -> tuple[L.Trainer, dict[str, Callback]]:
    """The Trainer from `cfg.trainer` (accelerator/devices/strategy/precision) and `cfg.train`; `tag` names the
    loggers' sub-folder (one per ensemble member)."""
    tc, tr = cfg.train, cfg.trainer
    if tr.num_threads:
        # OpenMP threads spin-wait on a busy 2-core machine: 2 threads ran a day batch 3-10x slower than 1.
        torch.set_num_threads(tr.num_threads)
    horizons = module.horizons
    monitor = C.monitor(horizons[0])
    ckpt = RunCheckpoint(
        dirpath=str(ckpt_dir),
        monitor=monitor,
        mode="max",
        save_top_k=tc.save_top_k,
        save_last=True,
        auto_insert_metric_name=False,
        filename="epoch{epoch:03d}-ric{" + monitor + ":.4f}",
    )
    guard = CollapseGuard(horizons, tc.collapse_ratio, tc.collapse_stop)
    thr = Throughput(module.model.estimate_flops_per_sample(), tr.peak_tflops and tr.peak_tflops * 1e12)
    cbs: dict[str, Callback] = {
        "checkpoint": ckpt,
        "collapse_guard": guard,
        "throughput": thr,
        "early_stopping": EarlyStopping(monitor=monitor, mode="max", patience=tc.patience),
        "rng": RngState(),
    }
    if not tr.progress_bar:
        cbs["epoch_log"] = EpochLog(tag, monitor)
    if tc.ema_decay:
        cbs["ema"] = EMA(tc.ema_decay)
    if tc.swa:
        cbs["swa"] = StochasticWeightAveraging(swa_lrs=tc.lr * 0.5, swa_epoch_start=0.67)
    loggers: list[Any] = [CSVLogger(save_dir=str(run_dir), name="logs", version=tag)]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=tag))
    except (ImportError, ModuleNotFoundError):
        log.info("tensorboard not installed; CSV logging only")
    trainer = L.Trainer(
        accelerator=tr.accelerator,
        devices=tr.devices,
        strategy=tr.strategy,
        num_nodes=tr.num_nodes,
        precision=cast(Any, tr.precision),  # the config's str | int; Lightning checks the value itself
        max_epochs=tc.max_epochs,
        min_epochs=tc.min_epochs,
        gradient_clip_val=tc.grad_clip,
        accumulate_grad_batches=tc.accumulate_grad_batches,
        limit_train_batches=tc.limit_train_batches or 1.0,
        limit_val_batches=tc.limit_val_batches or 1.0,
        num_sanity_val_steps=0,
        logger=loggers,
        callbacks=[
            *cbs.values(),
            *(extra_callbacks or []),
            *([RichProgressBar(leave=True)] if tr.progress_bar else []),
        ],
        log_every_n_steps=10,
        enable_progress_bar=tr.progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,
        deterministic=False,
        default_root_dir=str(run_dir),
    )
    return trainer, cbs


# ---- plans ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """One fold's dates: `fit` trains, `val` early-stops and selects checkpoints, `holdout` (after `val` and a label
    gap; `split.holdout_days`) chooses what is fitted on top of the predictors (blend weights), `test` is only
    predicted."""

    fold: Fold
    fit: tuple[dt.date, ...]
    val: tuple[dt.date, ...]
    test: tuple[dt.date, ...]
    holdout: tuple[dt.date, ...] = ()

    @property
    def index(self) -> int:
        return self.fold.index

    def without_test(self) -> Plan:
        """The plan a tuning trial sees: the test block is dropped."""
        return Plan(self.fold, self.fit, self.val, (), self.holdout)

    def ranges(self) -> dict[str, list[str] | None]:
        span = lambda ds: [str(ds[0]), str(ds[-1])] if ds else None
        return {"fit_range": span(self.fit), "val_range": span(self.val), "test_range": span(self.test)}

    def holdout_range(self) -> list[str] | None:
        return [str(self.holdout[0]), str(self.holdout[-1])] if self.holdout else None


def make_plans(
    dates: Sequence[dt.date],
    split_cfg: SplitSettings,
    horizons: Sequence[int],
    entry_lag: int,
    folds: int | str | None,
    feature_lookback: int | None = None,
    input_window: int = 1,
) -> tuple[list[Fold], list[Plan]]:
    """The shared splitter's folds on `dates` and the plans of the last `folds` of them (None: the last fold;
    "all" or k >= n_splits: every fold). The held-out slice (`split.holdout_days`) is cut from the end of each fold's
    training span and the validation slice before it, each `max(horizons) + entry_lag` sessions after the dates
    before it, so no earlier label reaches into it (`split.inner_holdout`).
    `feature_lookback` (the manifest's `max_lookback`) and `input_window` (`model.window`) are what purged K-fold
    purges after a test block (`split.make_splitter`)."""
    splitter = make_splitter(split_cfg, horizons, entry_lag, feature_lookback, input_window)
    all_folds = splitter.split(list(dates))
    check_folds(all_folds, list(dates))
    chosen = chosen_folds(all_folds, folds)
    gap = splitter.label_span  # split.label_gap(horizons, entry_lag)
    plans = []
    for f in chosen:
        fit, val, holdout = inner_holdout(f.train_dates, split_cfg.val_days, gap, split_cfg.holdout_days)
        plans.append(Plan(f, tuple(fit), tuple(val), tuple(f.test_dates), tuple(holdout)))
    return all_folds, plans


# ---- fitting ----------------------------------------------------------------------------------------------------
@dataclass
class MemberResult:
    """One trained member: its module (best or top-k averaged weights, eval mode) and how it got there."""

    module: ATFTModule
    dm: PanelDataModule
    seed: int
    epochs: int
    seconds: float
    best_score: float | None  # best validation RankIC of the first horizon (the monitor)
    best_checkpoint: str | None
    weights: dict[str, Any]  # {"kind": "best_epoch" | "top{k}_average", ...validation scores}
    throughput: list[dict[str, float]] = field(default_factory=list)
    collapse_events: list[dict[str, Any]] = field(default_factory=list)
    importance: torch.Tensor | None = None  # mean VSN weight per feature (set when trained in a worker process)
    predictions: dict[str, str] = field(default_factory=dict)  # "val"/"test" -> its own predictions (worker runs)

    def feature_importance(self) -> torch.Tensor | None:
        return self.importance if self.importance is not None else self.module.feature_importance()


def model_config(cfg: Settings, panel: PanelStore, horizons: Sequence[int], n_extra: int = 0) -> dict[str, Any]:
    """`cfg.model` completed with what the data decides: feature count (the panel's plus `n_extra` stacked
    inputs), horizons, embedding table sizes."""
    mc = to_dict(cfg.model)
    for k in ("name", "expected_params"):
        mc.pop(k)
    mc.update(
        n_features=len(panel.feature_names) + int(n_extra),
        horizons=list(horizons),
        n_sectors=max(mc["n_sectors"], len(panel.sector_vocab) + 1),
        n_segments=max(mc["n_segments"], len(panel.segment_vocab) + 1),
    )
    return mc


def _checkpoint_weights(path: str | Path, ema: bool) -> dict[str, torch.Tensor]:
    """A checkpoint's weights: with EMA, the averaged (validated) weights stored by the EMA callback."""
    state = ema_weights(path) if ema else None
    return state if state is not None else torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _maybe_gpu_resident(dm: PanelDataModule, max_frac: float) -> None:
    p = dm.panel
    need = sum(np.asarray(getattr(p, n)).nbytes for n in ("features", "mask", "targets", "returns"))
    free, _ = torch.cuda.mem_get_info()
    if need < max_frac * free:
        dm.dataset.to_device(torch.device("cuda"))
        log.info("panel kept in GPU memory (%.2f GB)", need / 1e9)


def validation_rank_ic(model: torch.nn.Module, dm: PanelDataModule, horizon: int) -> float:
    """Mean daily RankIC of `pred(horizon)` over the data module's validation days (`compare.mean_rank_ic`)."""
    pv = predict_panel(model, dm.panel, dm.val_days, window=dm.window, valid=dm.window_ok, dataset=dm.dataset)
    return mean_rank_ic(pv, [horizon]).get(horizon, (float("nan"), 0))[0]


def average_top_k(
    module: ATFTModule, dm: PanelDataModule, checkpoint: ModelCheckpoint, k: int, ema: bool
) -> dict[str, Any]:
    """Average the weights of the top-k checkpoints; keep the average only if it validates better than the best
    epoch alone (chosen on the validation days, never the test days)."""
    h = module.horizons[0]
    best_state = {n: t.detach().cpu().clone() for n, t in module.state_dict().items()}
    best_ic = validation_rank_ic(module.model, dm, h)
    top = sorted(checkpoint.best_k_models.items(), key=lambda kv: float(kv[1]), reverse=True)[:k]
    folder = checkpoint.dirpath
    assert folder is not None  # build_trainer gives the checkpoint callback its folder
    states = [_checkpoint_weights(confined(p, folder), ema) for p, _ in top]
    avg = {
        n: (torch.stack([s[n].float() for s in states]).mean(0).to(t.dtype) if t.is_floating_point() else t)
        for n, t in best_state.items()
    }
    module.load_state_dict(avg)
    avg_ic = validation_rank_ic(module.model, dm, h)
    keep = avg_ic > best_ic
    if not keep:
        module.load_state_dict(best_state)
    log.info(
        "train: top-%d weight average val RankIC %.4f vs best epoch %.4f -> %s",
        len(top),
        avg_ic,
        best_ic,
        "average" if keep else "best epoch",
    )
    return {
        "kind": f"top{len(top)}_average" if keep else "best_epoch",
        "val_rank_ic_best_epoch": best_ic,
        "val_rank_ic_top_k_average": avg_ic,
        "checkpoints": [str(p) for p, _ in top],
    }


def data_module(
    panel: PanelStore,
    plan: Plan,
    cfg: Settings,
    seed: int,
    extra: np.ndarray | None = None,
    window: int | None = None,
) -> PanelDataModule:
    """The plan's day batches (`train` settings), with `extra` inputs appended to the features when given;
    `window`: the network's input window (None: `model.window`)."""
    tc = cfg.train
    return PanelDataModule(
        panel,
        plan.fit,
        plan.val,
        plan.test,
        window=cfg.model.window if window is None else int(window),
        max_stocks=tc.max_stocks_per_day,
        min_window_frac=tc.min_window_frac,
        min_stocks=tc.min_stocks_per_day,
        seed=seed,
        extra=extra,
    )


def new_module(
    cfg: Settings,
    panel: PanelStore,
    horizons: Sequence[int],
    extra: np.ndarray | None = None,
    model_cfg: dict[str, Any] | None = None,
) -> ATFTModule:
    """A freshly initialised ATFTModule for the panel (+ `extra` input columns) under the `train` config, with the
    network `model_cfg` describes (None: ATFT-GAT-FAN from the `model` group, `model_config`)."""
    tc = cfg.train
    n_extra = 0 if extra is None else int(extra.shape[-1])
    return ATFTModule(
        model_config(cfg, panel, horizons, n_extra) if model_cfg is None else dict(model_cfg),
        to_dict(tc.loss),
        {k: getattr(tc, k) for k in ("lr", "weight_decay", "warmup_steps", "min_lr_ratio")},
    )


def fit_member(
    panel: PanelStore,
    plan: Plan,
    cfg: Settings,
    *,
    run_dir: Path,
    ckpt_dir: Path,
    seed: int,
    horizons: Sequence[int],
    tag: str = "",
    resume: Path | None = None,
    callbacks: list[Callback] | None = None,
    extra: np.ndarray | None = None,
    model_cfg: dict[str, Any] | None = None,
) -> MemberResult | None:
    """Train one model on `plan.fit`, early-stopped on `plan.val`; None on a DDP rank other than 0. `extra`: inputs
    appended to the panel's features ([D, N, S], `model.stack`); `model_cfg`: the network (None: the `model`
    group's ATFT-GAT-FAN), whose `window` the data module gives."""
    tc = cfg.train
    torch.manual_seed(seed)
    dm = data_module(panel, plan, cfg, seed, extra, None if model_cfg is None else model_cfg["window"])
    module = new_module(cfg, panel, horizons, extra, model_cfg)
    if tc.compile:
        # torch.compile's stub returns a bare callable; it is an OptimizedModule that proxies the model's attributes
        module.model = cast(Network, torch.compile(module.model))
    trainer, cbs = build_trainer(cfg, run_dir, module, ckpt_dir, callbacks, tag)
    if trainer.accelerator.__class__.__name__.lower().startswith("cuda") and trainer.world_size == 1:
        _maybe_gpu_resident(dm, tc.gpu_resident_max_frac)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=None if resume is None else str(resume), weights_only=True)
    seconds = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return None
    ck, thr, guard = cbs["checkpoint"], cbs["throughput"], cbs["collapse_guard"]
    assert isinstance(ck, RunCheckpoint) and isinstance(thr, Throughput) and isinstance(guard, CollapseGuard)
    assert ck.dirpath is not None  # build_trainer gives it the member's checkpoint folder
    best = ck.best_model_path
    if best:  # the best epoch's weights (over the whole training, resumed or not); with EMA, its averaged weights
        module.load_state_dict(_checkpoint_weights(confined(best, ck.dirpath), "ema" in cbs))
    module = module.to(trainer.strategy.root_device).eval()  # predict where it trained (GPU: fast)
    weights: dict[str, Any] = {"kind": "best_epoch"}
    k = tc.average_top_k or 1
    if best and k > 1 and len(ck.best_k_models) > 1:
        weights = average_top_k(module, dm, ck, k, "ema" in cbs)
    return MemberResult(
        module,
        dm,
        seed,
        int(trainer.current_epoch),
        seconds,
        None if ck.best_model_score is None else float(ck.best_model_score),
        best or None,
        weights,
        thr.history,
        guard.events,
    )
