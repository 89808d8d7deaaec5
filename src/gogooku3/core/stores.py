"""Folders the project writes for others to read (the panel cache, the baseline store): an ownership marker, per-file
checksums, atomic publication, and the cleaning of killed writers' leftovers.

Every such folder is made by `new_owned_dir`, which writes the marker (`.gogooku3`: the project's name and the
format) before anything else, so a folder without it was not made by this project and is never deleted. A folder is
written under a temporary name `.<name>.<host>-<pid>.tmp` and published by `publish_dir`: one rename when `<name>`
is new, else one atomic exchange of the two folders (Linux `renameat2(RENAME_EXCHANGE)`), so a reader sees the old
folder or the new one, whole.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gogooku3.core.errors import DataError
from gogooku3.core.io import crash_point, sha256_file, stale_temp, temp_owner

log = logging.getLogger(__name__)

PROJECT = "gogooku3"
MARKER = ".gogooku3"  # the ownership marker, written first into every folder of a store
MARKER_FORMAT = 1
LEFTOVER = re.compile(r"\.(?P<name>[^.]+)(?:\.(?P<host>[0-9A-Za-z-]+)-(?P<pid>\d+))?\.(?P<kind>tmp|old)")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def new_owned_dir(path: Path, kind: str) -> Path:
    """Create the folder `path` (a leftover of this process under that name removed first) and write the marker
    into it before anything else."""
    path = Path(path)
    if owned(path):
        shutil.rmtree(path)
    elif path.exists():
        raise DataError(f"{path}: exists and was not created by {PROJECT} (no {MARKER} marker); move it away")
    path.mkdir(parents=True)
    mark(path, kind)
    return path


def mark(path: Path, kind: str) -> None:
    (Path(path) / MARKER).write_text(json.dumps({"project": PROJECT, "format": MARKER_FORMAT, "kind": kind}) + "\n")


def owned(path: Path) -> bool:
    """Whether the folder carries this project's marker."""
    try:
        meta = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("project") == PROJECT


def temp_dir_for(root: Path, kind: str = "tmp") -> Path:
    """`.<name>.<host>-<pid>.<kind>` beside `root`: the name `clean_leftovers` knows."""
    return root.with_name(f".{root.name}.{temp_owner()}.{kind}")


# ---- checksums ------------------------------------------------------------------------------------------------
def file_records(root: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """{file name: {"bytes", "sha256"}} of the named files of `root`, for its metadata."""
    return {n: {"bytes": (root / n).stat().st_size, "sha256": sha256_file(root / n)} for n in names}


def check_files(root: Path, records: dict[str, dict[str, Any]], digests: bool = True) -> str | None:
    """What is wrong with the files `records` lists (missing, another size, another checksum), or None. Sizes
    only when `digests` is false."""
    for name, rec in records.items():
        p = root / name
        try:
            size = p.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != int(rec["bytes"]):
            return f"{name} has {size} bytes, {rec['bytes']} were written (truncated or replaced)"
        if digests and sha256_file(p) != rec["sha256"]:
            return f"{name} does not match its checksum (corrupted)"
    return None


# ---- publication ----------------------------------------------------------------------------------------------
def exchange(a: Path, b: Path) -> bool:
    """Swap the two paths in one step (`renameat2(RENAME_EXCHANGE)`); False where the system cannot."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def publish_dir(tmp: Path, root: Path, step: str) -> bool:
    """Make the finished folder `tmp` visible as `root` in one atomic step; an existing `root` is replaced (it must
    carry the marker) and removed after. False when another writer published `root` meanwhile (theirs is kept and
    `tmp` left to the caller). Where the system cannot exchange two folders, `root` is first set aside as
    `.<name>.<host>-<pid>.old`, which `clean_leftovers` puts back if the process dies before the second rename."""
    if not root.exists():
        try:
            os.rename(tmp, root)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            return False
        crash_point(step)
        return True
    if not owned(root):
        raise DataError(f"{root}: exists and was not created by {PROJECT} (no {MARKER} marker); move it away")
    if exchange(tmp, root):  # looked up at each call, so a test can take the fallback path
        crash_point(step)
        shutil.rmtree(tmp)  # the replaced folder, now under the temporary name
        return True
    aside = temp_dir_for(root, "old")
    os.rename(root, aside)
    crash_point(f"{step} (old set aside)")
    os.rename(tmp, root)
    crash_point(step)
    shutil.rmtree(aside)
    return True


def clean_leftovers(parent: Path, complete: Callable[[Path], bool], label: str) -> list[Path]:
    """Remove the folders killed writers left in `parent` (`.<name>.<host>-<pid>.tmp`, and `.old` copies set aside
    by `publish_dir`, whose process is gone; `core.io.stale_temp`); a complete `.old` copy whose `<name>` is missing
    is renamed back instead (the state before the killed publication). Only folders with the marker: others are
    logged and left. Returns the removed folders."""
    if not parent.is_dir():
        return []
    now, removed = time.time(), []
    for d in sorted(parent.iterdir()):
        m = LEFTOVER.fullmatch(d.name)
        if m is None or d.is_symlink() or not d.is_dir():
            continue
        try:
            age = now - d.stat().st_mtime
        except FileNotFoundError:
            continue
        if not stale_temp(m["host"], m["pid"], age):
            continue
        if not owned(d):
            log.info("%s: left %s alone: not created by %s (no %s marker)", label, d, PROJECT, MARKER)
            continue
        root = parent / m["name"]
        if m["kind"] == "old" and not root.exists() and complete(d):
            with contextlib.suppress(OSError):
                os.rename(d, root)
                log.warning("%s: restored %s from %s (a publication was interrupted)", label, root, d.name)
                continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
        log.info("%s: removed %s (left by an interrupted write)", label, d)
    return removed
