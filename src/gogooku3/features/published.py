"""A built dataset as one unit: written whole into a hidden folder, published by one rename, then named.

Layout. Each build writes `<output_dir>/datasets/<stem>.<time>-<fingerprint>/` holding `data.parquet` and its
`data.metadata.json`, `data.manifest.json` and `data.coverage.txt` (`<stem>`: `ml_dataset_<start>_<end>`).
`data.parquet` is a folder partitioned by date: one file per month, `<YYYY-MM>.parquet`, each sorted by (Code, Date)
(`dataset_files`; `pl.scan_parquet` reads the folder as one frame, in month order); `data.parquet.digests.json`
beside it records each file's sha256 (`core.io.record_digests`), and the dataset's fingerprint is that of the set
(`core.io.file_fingerprint` of the folder). An update links the months it does not change from the previous version
(`link_or_copy`: hard links, the same bytes; a copy across filesystems) and writes the others. It is
written as `.<stem>.<host>-<pid>.tmp/` and renamed into place in one step (`staging`, `publish`). The names users
and the config know (`paths.dataset`, the dated `ml_dataset_<start>_<end>.parquet`) are relative symlinks, each
swapped in one `os.replace`, to a version's `data.parquet`; links named like the sidecars sit beside them for people.

Readers resolve a name once (`pin`) and read the parquet and its sidecars from the resolved folder, so they see
one version whole whatever a build does meanwhile; `pin` also holds a shared `flock` on the version for the rest of
the process, and `clean_versions` (the last `paths.keep_datasets` are kept) skips versions it cannot lock
exclusively. Builds of one output folder take `build_lock`; a second one refuses with one line. Plain parquet files
(a user's own, or an older layout with sidecars beside the file) are read as before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import polars as pl

from gogooku3.core.errors import ConfigError, DataError
from gogooku3.core.io import crash_point, file_fingerprint, stale_temp, temp_owner

log = logging.getLogger(__name__)

VERSIONS = "datasets"  # <output_dir>/datasets/<version>/
DATA = "data.parquet"
LOCK = ".build.lock"
GENERATOR = "gogooku3.features.builder"  # the metadata's `generator`: the project's own marker on a version
_VERSION = re.compile(r"(?P<stem>[^.].*)\.(?P<time>\d{8}T\d{12})-(?P<fp>[0-9a-f]{8})")
_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<host>[0-9A-Za-z-]+)-(?P<pid>\d+)\.tmp")
_IO_ERROR = re.compile(r"\(os error (\d+)\)")  # how Polars reports a failed write (ComputeError, not OSError)
_PINS: dict[str, int] = {}  # version folder -> the fd holding its shared lock (for the life of the process)
_held: dict[str, int] = {}  # output folder -> how often this process holds its build lock (re-entrant)


def resolve(path: str | os.PathLike) -> Path:
    """A published name resolved to the version file it points at; anything else as given."""
    p = Path(path)
    return Path(os.path.realpath(p)) if p.is_symlink() else p


def version_of(data: Path) -> Path | None:
    """The version folder of a resolved `data.parquet`, or None for a plain file."""
    d = data.parent
    return d if data.name == DATA and d.parent.name == VERSIONS and _VERSION.fullmatch(d.name) else None


def pin(path: str | os.PathLike) -> Path:
    """The dataset at `path` resolved once, for a whole run: a published name becomes its version's `data.parquet`,
    held with a shared lock until this process ends (the cleaner leaves it); a plain file or a missing one is
    returned as given. Every reader takes the path from here and never looks at the name again."""
    given = Path(path)
    for _ in range(3):  # a version retired between resolving and locking: resolve the name again
        data = resolve(given)
        d = version_of(data)
        if d is None:
            return data if data.exists() else given
        if str(d) in _PINS:
            return data
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        fcntl.flock(fd, fcntl.LOCK_SH)
        if data.exists():
            _PINS[str(d)] = fd
            return data
        os.close(fd)
    return given


def dataset_files(path: str | os.PathLike) -> list[Path]:
    """The parquet files of the dataset at `path`: a partitioned one's (a folder) in name order, i.e. by month; a
    plain file (a user's own, an export, an older build) as itself."""
    p = Path(path)
    if not p.is_dir():
        return [p]
    files = sorted(f for f in p.iterdir() if f.suffix == ".parquet" and not f.name.startswith("."))
    if not files:
        raise DataError(f"{p}: a dataset folder without parquet files; rebuild with `gogooku3 data build`")
    return files


def link_or_copy(src: Path, dst: Path) -> bool:
    """`dst` as a hard link to `src` (the same bytes, no copy; deleting either name leaves the other whole), or a copy
    where the filesystem refuses links (another device, no link support). Returns whether it linked."""
    try:
        os.link(src, dst)
        return True
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    shutil.copy2(src, dst)
    return False


def unpin_all() -> None:
    """Release every pin of this process (tests)."""
    while _PINS:
        os.close(_PINS.popitem()[1])


def check_name(path: str | os.PathLike) -> None:
    """A build publishes to `paths.dataset` as a name: refused (ConfigError) when it is a built version's own file,
    which a reader may pin (`paths.dataset=<output>/datasets/<version>/data.parquet`) but a build must not replace."""
    if version_of(Path(path).absolute()) is not None:
        raise ConfigError(
            f"paths.dataset={path} is the file of a built version; a build publishes to a name: set "
            f"paths.dataset=<output_dir>/ml_dataset_latest.parquet (or another name outside {VERSIONS}/)"
        )


# ---------------------------------------------------------------------------------------------- the build lock
def _holder(fd: int) -> str:
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


def _open_lock(lock: Path) -> int:
    """An fd holding the exclusive lock of `lock` (the file may be removed by the holder on release: the inode
    locked must still be the one the name shows)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(fd)
            os.close(fd)
            raise DataError(
                f"{lock}: another `gogooku3 data build` ({who}) is writing this dataset; wait for it to finish"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        os.close(fd)


@contextlib.contextmanager
def build_lock(output_dir: str | os.PathLike) -> Iterator[None]:
    """Hold `<output_dir>/.build.lock` (re-entrant within a process); another holder: one DataError line naming its
    pid. An output folder this creates and leaves empty is removed again (a failed build leaves nothing)."""
    out = Path(output_dir)
    key = str(out.resolve())
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    made = not out.exists()
    lock = out / LOCK
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = _open_lock(lock)
    except OSError as e:
        raise DataError(
            f"{out}: cannot write the dataset there ({e.strerror}); make it writable or set paths.output_dir"
        ) from e
    _held[key] = 1
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()


# ---------------------------------------------------------------------------------------------- writing
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)


def _why(e: BaseException) -> str | None:
    """What the disk refused in a failed write (full, read-only, no permission); None for any other error."""
    if isinstance(e, OSError):
        code = e.errno
    elif isinstance(e, pl.exceptions.PolarsError) and (m := _IO_ERROR.search(str(e))):
        code = int(m[1])
    else:
        return None
    return os.strerror(code) if code in DISK_ERRORS else None


def clean_stale(root: Path) -> list[Path]:
    """Remove the temp folders killed builds and cleaners left in `root` (their process gone, or a day old)."""
    removed = []
    now = time.time()
    for d in root.glob(".*.tmp"):
        m = _TEMP.fullmatch(d.name)
        with contextlib.suppress(FileNotFoundError):
            if m and d.is_dir() and stale_temp(m["host"], m["pid"], now - d.lstat().st_mtime):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
                log.info("removed %s (left by an interrupted build)", d)
    return removed


@contextlib.contextmanager
def staging(output_dir: str | os.PathLike, stem: str) -> Iterator[Path]:
    """A new hidden folder `<output_dir>/datasets/.<stem>.<host>-<pid>.tmp/` to write a version into; removed
    unless `publish` renamed it. A failed write to disk (full, read-only, no permission) becomes one DataError line
    naming the folder and what failed."""
    root = Path(output_dir) / VERSIONS
    tmp = root / f".{stem}.{temp_owner()}.tmp"
    try:
        try:
            root.mkdir(parents=True, exist_ok=True)
            clean_stale(root)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                root.rmdir()  # only when empty: a first build that failed leaves nothing
    except Exception as e:
        why = _why(e)
        if why is None:
            raise
        raise DataError(
            f"{tmp}: cannot write the dataset ({why}); nothing was published: free space or make "
            f"{Path(output_dir)} writable, then run `gogooku3 data build` again"
        ) from e


def _link(name: Path, target: Path) -> None:
    """Point `name` at `target` (a relative symlink swapped in by one rename) and log the step."""
    tmp = name.with_name(f".{name.name}.link.{temp_owner()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(target.absolute(), name.absolute().parent))
    os.replace(tmp, name)
    crash_point(f"link {name.name}")


def publish(tmp: Path, stem: str, names: list[Path], sidecars: dict[str, str]) -> Path:
    """Rename the written `tmp` folder into place (its final name carries the data's fingerprint), then point each
    of `names` at it: first the links named like its sidecars (`sidecars`: suffix -> file in the folder, for people),
    last the name itself. Returns the version folder."""
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S%f")
    version = tmp.parent / f"{stem}.{stamp}-{file_fingerprint(tmp / DATA)[:8]}"
    os.rename(tmp, version)
    crash_point("publish version")
    for name in dict.fromkeys(names):
        base = name.name.removesuffix(".parquet")
        for suffix, file in sidecars.items():
            _link(name.with_name(base + suffix), version / file)
        _link(name, version / DATA)
    return version


# ---------------------------------------------------------------------------------------------- cleaning
def _time(d: Path) -> str:
    m = _VERSION.fullmatch(d.name)
    return m["time"] if m else ""


def _ours(d: Path) -> bool:
    """A version folder with the project's marker (its metadata names the builder)."""
    if _VERSION.fullmatch(d.name) is None:
        return False
    try:
        return json.loads((d / "data.metadata.json").read_text(encoding="utf-8")).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _retire(d: Path) -> bool:
    """Delete version folder `d` unless a process holds it (`pin`): renamed aside under an exclusive lock first,
    so no reader ever sees it half deleted."""
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("kept %s: a running process reads it", d)
            return False
        trash = d.with_name(f".{d.name}.{temp_owner()}.tmp")
        os.rename(d, trash)
        crash_point("retire version")
        shutil.rmtree(trash, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def clean_versions(output_dir: str | os.PathLike, keep: int, protect: list[Path]) -> list[Path]:
    """Delete all but the newest `keep` versions (≥ 1) of the project's own under `<output_dir>/datasets/`, never
    one in `protect` or one a running process holds; then remove the links in `output_dir` left pointing at none.
    Returns the versions deleted."""
    out = Path(output_dir)
    root = out / VERSIONS
    if not root.is_dir():
        return []
    versions = sorted((d for d in root.iterdir() if d.is_dir() and _ours(d)), key=_time, reverse=True)
    keep_set = {p.resolve() for p in protect} | {d.resolve() for d in versions[: max(keep, 1)]}
    removed = [d for d in versions if d.resolve() not in keep_set and _retire(d)]
    now = time.time()
    for link in out.iterdir():
        if not link.is_symlink():
            continue
        m = _TEMP.fullmatch(link.name)  # a killed build's half-made link
        age = now - link.lstat().st_mtime
        gone = not link.exists() and VERSIONS in Path(os.readlink(link)).parts
        if gone or (m and m["name"].endswith(".link") and stale_temp(m["host"], m["pid"], age)):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
    if removed:
        log.info("removed %d older dataset version(s) (paths.keep_datasets=%d)", len(removed), keep)
    return removed
