"""Atomic writes, fingerprints, run directories and memory figures."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from gogooku3.errors import DataError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give outputs the usual umask-based mode
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_json_default, allow_nan=True)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, to_json(obj) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e


def write_parquet(df: pl.DataFrame, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write a parquet file atomically (zstd by default)."""
    kwargs.setdefault("compression", "zstd")
    with atomic_path(path) as tmp:
        df.write_parquet(tmp, **kwargs)
    return Path(path)


def sink_parquet(lf: pl.LazyFrame, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Stream a lazy frame to parquet atomically."""
    kwargs.setdefault("compression", "zstd")
    with atomic_path(path) as tmp:
        lf.sink_parquet(tmp, **kwargs)
    return Path(path)


def fingerprint(*parts: Any, length: int = 16) -> str:
    """Stable short sha256 of JSON-serialisable parts."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=_json_default).encode("utf-8"))
    return h.hexdigest()[:length]


def file_fingerprint(path: str | os.PathLike, length: int = 16) -> str:
    """Fingerprint of a file from its size, mtime and first/last 1 MiB (cheap for large parquet files)."""
    path = Path(path)
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > (2 << 20):
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()[:length]


def timestamp() -> str:
    """Local timestamp used in output names, e.g. 20261127_153000."""
    return datetime.now().strftime("%Y%m%d_%H%M%S")


def new_run_dir(runs_root: str | os.PathLike) -> Path:
    """Create runs/<timestamp>/ (suffixed if taken). runs/last moves only when the run finishes (`point_last`)."""
    root = Path(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    base = timestamp()
    run = root / base
    i = 1
    while run.exists():
        run = root / f"{base}_{i}"
        i += 1
    run.mkdir()
    return run


def point_last(runs_root: str | os.PathLike, run: Path) -> Path:
    """Atomically point runs/last at `run` (a relative symlink swapped in with os.replace)."""
    root = Path(runs_root)
    last = root / "last"
    tmp_link = root / f".last.{os.getpid()}"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    tmp_link.symlink_to(Path(run).name)
    os.replace(tmp_link, last)
    return last


def peak_rss_mb() -> float:
    """Peak resident set size of this process (and waited-for children) in MiB."""
    import resource

    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kb, child_kb) / 1024.0
