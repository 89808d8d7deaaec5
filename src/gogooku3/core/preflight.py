"""Preflight: before a command spends minutes or hours, check that every folder it will write can be written and
that runs/last can be replaced, so that it fails in one line at its start instead of after training."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from gogooku3.config.compose import safe_name
from gogooku3.core.errors import DataError
from gogooku3.core.io import check_last_link, temp_owner

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

COMMANDS = ("build", "safe", "train", "tune", "predict", "run", "bench")


def check_writable(folder: str | Path, key: str) -> None:
    """Create and remove a probe file in `folder` (in its nearest existing parent when the command is still to
    create it); a DataError naming the folder and the config key `key` when that fails (read-only mount,
    permissions, a file in the way). The folder's modification time is put back: nothing is left changed."""
    folder = Path(folder).expanduser()
    target = folder
    while not os.path.lexists(target) and target != target.parent:
        target = target.parent
    if not target.is_dir():
        raise DataError(f"{folder}: {target} is not a folder, so nothing can be written there; set {key} elsewhere")
    st = target.stat()
    probe = target / f".gogooku3-probe.{temp_owner()}.{os.urandom(4).hex()}.tmp"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as e:
        where = "" if target == folder else f" in {target}"
        raise DataError(
            f"{folder}: cannot write there ({e.strerror or type(e).__name__}{where}); make it writable or set "
            f"{key}=<a writable folder>"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def folders(cfg: Settings, command: str, experiment_dir: str | Path | None = None) -> list[tuple[Path, str]]:
    """(folder, config key) of every folder `command` writes under `cfg`."""
    p = cfg.paths
    out, cache = Path(p.output_dir), [(Path(p.cache_dir), "paths.cache_dir")]
    baselines = [(out / "baselines", "paths.output_dir")] if cfg.baseline.enabled else []
    by_command: dict[str, list[tuple[Path, str]]] = {
        "build": [(Path(p.dataset).parent, "paths.dataset"), (out, "paths.output_dir")],
        "safe": [(out / "experiments", "paths.output_dir"), *baselines, *cache],
        "train": [(Path(p.runs_dir), "paths.runs_dir"), *cache, *baselines],
        "tune": [
            (out / "optuna" / safe_name(cfg.hpo.study_name), "paths.output_dir"),
            (Path(experiment_dir) / "experiment" if experiment_dir else out / "optuna", "--config-dir"),
            *cache,
        ],
        "predict": [(out / cfg.predict.output_subdir, "paths.output_dir")],
        "bench": [(Path(p.bench_dir), "paths.bench_dir"), *cache, *baselines],
    }
    if command == "run":
        steps = set(cfg.run.steps)
        found = [f for s in ("build", "safe", "train", "predict") if s in steps for f in by_command[s]]
        if "data" in steps:
            found += [(Path(p.raw_dir), "paths.raw_dir"), (Path(p.oracle_dir), "paths.oracle_dir")]
        if steps & {"backtest", "report"}:
            found += [(out / "portfolio", "paths.output_dir"), (Path(p.runs_dir), "paths.runs_dir")]
        return list(dict.fromkeys(found))
    return by_command[command]


def preflight(cfg: Settings, command: str, experiment_dir: str | Path | None = None) -> None:
    """Refuse `command` at once (DataError) when a folder it will write is not writable or runs/last is a real
    folder (`core.io.check_last_link`): before a build, a search or hours of training, never after."""
    if command not in COMMANDS:
        raise ValueError(f"preflight: unknown command {command!r}")
    for folder, key in folders(cfg, command, experiment_dir):
        check_writable(folder, key)
    if command == "train" or (command == "run" and "train" in cfg.run.steps):
        check_last_link(cfg.paths.runs_dir)
    if command == "bench":
        check_last_link(cfg.paths.bench_dir)
