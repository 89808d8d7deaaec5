"""Run directories of `train`: which earlier run `train.resume` continues, and checking it before anything is
written (same dataset manifest, checkpoints that hold only tensors and stay inside their run)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from gogooku3.config.compose import path
from gogooku3.core.errors import ConfigError, TrainingError
from gogooku3.core.io import read_json
from gogooku3.evaluation.results import DatasetRef
from gogooku3.training.checkpoints import check_resume_checkpoint

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)


def _run_order(run: Path) -> tuple[str, int]:
    """Runs sort by timestamp, then by the suffix `new_run_dir` adds within one second (_1, _2, ..., _10)."""
    m = re.fullmatch(r"(\d{8}_\d{6})(?:_(\d+))?", run.name)
    return (m[1], int(m[2] or 0)) if m else (run.name, 0)


def resume_dir(cfg: Settings) -> Path | None:
    """The checkpoint folder `train.resume` names: true -> the newest run under `paths.runs_dir` that holds a
    checkpoints/**/last.ckpt (finished or not: runs/last only ever points at finished runs); a path -> that run
    directory (or its checkpoints folder). None when resume is off."""
    r = cfg.train.resume
    if r is None or r is False:
        return None
    runs = path(cfg, "paths.runs_dir")
    if r is True:
        found = (
            sorted(
                (p for p in runs.glob("[0-9]*") if p.is_dir() and any((p / "checkpoints").rglob("last.ckpt"))),
                key=_run_order,
            )
            if runs.is_dir()
            else []
        )
        if not found:
            raise TrainingError(
                f"train.resume=true but no run under {runs} holds a checkpoints/**/last.ckpt; "
                f"train without train.resume first"
            )
        run = found[-1]
    else:
        run = Path(str(r)).expanduser()
        run = run.parent if run.name == "checkpoints" else run
        if not run.is_dir():
            raise ConfigError(
                f"train.resume={r}: no such run directory; give true (the newest run under {runs} "
                f"with a checkpoints/**/last.ckpt) or a run directory such as {runs}/<timestamp>"
            )
        if not any((run / "checkpoints").rglob("last.ckpt")):
            raise TrainingError(f"train.resume={r}: {run} holds no checkpoints/**/last.ckpt to resume from")
    log.info("train: resuming from %s", run)
    return (run / "checkpoints").resolve()


def check_resume(resume: Path, ref: DatasetRef) -> dict[str, dict]:
    """Every last.ckpt of the run being resumed, loaded weights-only with its checkpoint paths checked
    (`training.check_resume_checkpoint`), keyed by its sub-folder; the run must have trained on a dataset with
    the same feature manifest. Runs before anything is written."""
    run = shown(resume.parent)
    seen = run / "dataset.json" if (run / "dataset.json").exists() else run / "metrics.json"
    if seen.exists():
        info = read_json(seen)
        old = (info.get("dataset") or {}) if seen.name == "metrics.json" else info
        if old.get("manifest_fingerprint") not in (None, ref.manifest_fingerprint):
            raise ConfigError(
                f"train.resume: {run} trained on a dataset with feature manifest "
                f"{old['manifest_fingerprint']} ({old.get('n_features')} features), {ref.path} has "
                f"{ref.manifest_fingerprint} ({ref.n_features}); resume needs the same dataset (set "
                f"paths.dataset) or start afresh with train.resume=false"
            )
    return {
        str(p.parent.relative_to(resume)): check_resume_checkpoint(shown(p)) for p in sorted(resume.rglob("last.ckpt"))
    }


def shown(p: Path) -> Path:
    """`p` relative to the working directory when inside it (as messages show paths), else as is."""
    return p.relative_to(Path.cwd()) if p.is_relative_to(Path.cwd()) else p
