"""Checkpoints of a run and resuming from them safely: every load weights-only, every path a checkpoint names
confined to its run's folder, and an earlier run's best and top-k checkpoints carried into the resumed run
(`RunCheckpoint`), so the best epoch is chosen over the whole training."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from gogooku3.core.errors import ConfigError, TrainingError, load_reason

log = logging.getLogger(__name__)

CKPT_NAME = re.compile(r"[0-9A-Za-z_=+-][0-9A-Za-z_.=+-]*\.ckpt")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint loaded weights-only: tensors and plain values, never an unpickled object. A file that
    needs more (a crafted pickle) or is damaged is a TrainingError naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for objects, RuntimeError/EOFError for truncated files
        raise TrainingError(
            f"{path}: refused to load (a checkpoint may hold only tensors and plain values; "
            f"{load_reason(e)}); resume from another run or set train.resume=false"
        ) from e
    if not isinstance(state, dict) or "state_dict" not in state:
        raise TrainingError(
            f"{path}: not a Lightning checkpoint (no state_dict); resume from another run or set train.resume=false"
        )
    return state


def _checkpoint_states(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [cs for cs in (state.get("callbacks") or {}).values() if isinstance(cs, dict) and "best_k_models" in cs]


def rebase_checkpoint_path(p: Any, old_dir: Any, new_dir: str | Path | None, source: Any) -> str:
    """A checkpoint path of a restored ModelCheckpoint state moved from its folder `old_dir` into `new_dir` (by
    file name). A path outside `old_dir`, or a name that is not a plain `*.ckpt` file name, is refused."""
    if not p:
        return p
    path = Path(str(p))
    if str(path.parent) != str(old_dir) or not CKPT_NAME.fullmatch(path.name):
        raise TrainingError(
            f"{source}: names checkpoint {path} outside its run's checkpoint folder {old_dir}; "
            f"refusing to resume from it (set train.resume=false or resume another run)"
        )
    assert new_dir is not None  # a checkpoint callback with a path in its state has a folder
    return str(Path(new_dir) / path.name)


def check_resume_checkpoint(path: str | Path) -> dict[str, Any]:
    """The resume checkpoint `path`, loaded weights-only, after checking that every checkpoint its state names
    (best, top-k, last) lies in the folder the state was saved from."""
    state = read_checkpoint(path)
    for cs in _checkpoint_states(state):
        old = cs.get("dirpath")
        for p in [
            cs.get("best_model_path"),
            cs.get("kth_best_model_path"),
            cs.get("last_model_path"),
            *(cs.get("best_k_models") or {}),
        ]:
            rebase_checkpoint_path(p, old, old or ".", path)
    return state


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values; 20 and 20.0 are the same value (a float key given as an int in the YAML is stored as
    written by older runs, as a float since the config is typed)."""

    def plain(x: Any) -> Any:
        return json.loads(json.dumps(x, sort_keys=True, default=str))

    return plain(a) == plain(b)


def check_resume_model(state: dict[str, Any], model_cfg: dict[str, Any], source: Any) -> None:
    """A resume checkpoint must hold the model the dataset and config describe now (same features, horizons and
    sizes); else a ConfigError naming the differing keys, before anything is written."""
    saved = (state.get("hyper_parameters") or {}).get("model_cfg")
    if not isinstance(saved, dict):
        return
    diff = [k for k in sorted(set(saved) | set(model_cfg)) if not _same(saved.get(k), model_cfg.get(k))]
    if diff:

        def show(d: dict[str, Any]) -> str:
            more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
            return ", ".join(f"{k}={d.get(k)!r}" for k in diff[:4]) + more

        raise ConfigError(
            f"{source}: trained with {show(saved)}; the dataset and config now give {show(model_cfg)}; "
            f"resume needs the same dataset and model settings (or set train.resume=false)"
        )


def adopt_checkpoints(src: str | Path, dst: str | Path) -> list[Path]:
    """Copy an earlier run's checkpoint files (every regular `*.ckpt` under `src`, same sub-folders) into `dst`, the
    new run's checkpoint folder: the resumed run selects its best epoch among them too, and never writes into
    the earlier run."""
    src, dst = Path(src), Path(dst)
    copied = []
    for f in sorted(src.rglob("*.ckpt")):
        if f.is_file() and not f.is_symlink() and CKPT_NAME.fullmatch(f.name):
            target = dst / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            copied.append(target)
    log.info("train: resuming with %d checkpoint(s) of %s copied to %s", len(copied), src, dst)
    return copied


def confined(path: str | Path, folder: str | Path, what: str = "checkpoint") -> Path:
    """`path` if it lies inside `folder`, else a TrainingError: no file outside the run is ever loaded."""
    p, root = Path(path).resolve(), Path(folder).resolve()
    if not p.is_relative_to(root):
        raise TrainingError(f"{what} {path} lies outside the run's checkpoint folder {root}; refusing to load it")
    return p


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that keeps the earlier run's best and top-k checkpoints on resume. The earlier files are
    copied into this run's folder (`adopt_checkpoints`); the restored state's paths are moved here by file name
    (Lightning's own would forget them when the folder changes), entries whose file is missing are dropped, and
    a path outside the folder the state was saved from is refused."""

    @property
    def state_key(self) -> str:  # ModelCheckpoint's key: checkpoints of either class restore into the other
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath") or self.dirpath
        state = dict(state_dict, dirpath=self.dirpath)

        def move(p: Any) -> str:
            return rebase_checkpoint_path(p, old, self.dirpath, "resume checkpoint")

        top = {}
        for p, score in (state_dict.get("best_k_models") or {}).items():
            q = move(p)
            if Path(q).is_file():
                top[q] = score
            else:
                log.warning("train: checkpoint %s of the earlier run is missing; left out of the top-k", p)
        state["best_k_models"] = top
        state["last_model_path"] = move(state_dict.get("last_model_path"))
        move(state_dict.get("best_model_path"))
        move(state_dict.get("kth_best_model_path"))
        if top:
            best, worst = (max, min) if self.mode == "max" else (min, max)
            state["best_model_path"] = best(top, key=lambda p: float(top[p]))
            state["best_model_score"] = top[state["best_model_path"]]
            state["kth_best_model_path"] = worst(top, key=lambda p: float(top[p]))
            state["kth_value"] = top[state["kth_best_model_path"]]
        else:
            state.update(best_model_path="", best_model_score=None, kth_best_model_path="", kth_value=self.kth_value)
        super().load_state_dict(state)
