"""What made a run: RUN/provenance.json (package version, git commit, command line, library versions, seeds, host
cores, start/end) and RUN/run.log (the run's whole log, unwrapped, with timestamps, written as the run goes).

`recorded_run(cfg)` wraps a pipeline: log records are kept in memory from its start until the run folder exists
(`RunRecord.attach`), then written to run.log and streamed there; provenance.json is written at `attach` and again
at the end (status ok/failed). Nested `recorded_run`s (train inside `gogooku3 run`) share the outermost record.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gogooku3.config.compose import MIN_SCRUB_LEN, SECRET_NAME, redact, redact_text, url_secrets
from gogooku3.core.io import write_json

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)

LOG_NAME = "run.log"
PROVENANCE_NAME = "provenance.json"
LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LIBRARIES = ("torch", "lightning", "lightgbm", "polars", "numpy", "hydra-core")
GIT_TIMEOUT_S = 5.0
MAX_BUFFERED = 100_000  # log records kept before the run folder exists (loading logs a few hundred)


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def package_version() -> str:
    from gogooku3 import __version__

    return __version__


def library_versions() -> dict[str, str | None]:
    """Installed versions (package metadata, nothing imported) of Python and the libraries a run depends on."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    torch = sys.modules.get("torch")
    if torch is not None:  # the CUDA build, only when torch is already loaded
        out["torch_cuda"] = getattr(torch.version, "cuda", None)
    return out


def _git(root: Path, *args: str) -> str | None:
    try:
        p = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):  # no git, or too slow
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def git_info(root: Path | None = None) -> dict[str, Any] | None:
    """Commit and dirty flag (tracked files changed) of the git checkout holding `root` (default: the package's
    source); None outside a checkout or without git."""
    root = root or Path(__file__).resolve().parent
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def redact_argv(argv: list[str], secrets: list[str] | None = None) -> list[str]:
    """The command line with secrets blanked: the value of an override whose key is named like a credential
    (`data.api_key=...`), credentials inside URLs, values read from the environment and `secrets`."""
    out = []
    for a in argv:
        key, eq, value = a.partition("=")
        if eq and key and not key.startswith("-"):
            a = f"{key}={redact(value, key.lstrip('+~'))}"
        out.append(redact_text(a, secrets or []))
    return out


def config_secrets(cfg: Settings | None) -> list[str]:
    """The config's own credentials as given (keys named like one, passwords inside URLs): text to blank in
    run.log wherever it appears, longest first."""
    if cfg is None:
        return []
    found: list[str] = []
    for key, value in _leaves(dataclasses.asdict(cfg)):
        if isinstance(value, str) and value:
            found += [value] if SECRET_NAME.search(key) else url_secrets(value)
    return sorted({s for s in found if len(s) >= MIN_SCRUB_LEN}, key=len, reverse=True)


def _leaves(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _leaves(v, key)
    else:
        yield key, node


def provenance(cfg: Settings | None, started: str, argv: list[str] | None = None) -> dict[str, Any]:
    """The facts of what made a run (see the module docstring), as of now."""
    return {
        "package": "gogooku3",
        "version": package_version(),
        "git": git_info(),
        "argv": redact_argv(list(sys.argv if argv is None else argv), config_secrets(cfg)),
        "cwd": os.getcwd(),
        "versions": library_versions(),
        "seeds": None if cfg is None else {"seed": cfg.seed, "train.seed": cfg.train.seed},
        "host": {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0))},
        "pid": os.getpid(),
        "start_time": started,
        "end_time": None,
        "status": "running",
    }


class _RunLogHandler(logging.Handler):
    """Keeps records in memory until `open(file)`, then writes them and every later one to the file, flushed per
    record (a crash keeps what was logged); secrets blanked, one record per line (tracebacks follow it)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
        self.secrets = secrets
        self.buffer: list[logging.LogRecord] = []
        self.stream: TextIO | None = None

    def open(self, file: Path) -> None:
        self.stream = open(file, "a", encoding="utf-8")  # noqa: SIM115 - closed by `close`
        for r in self.buffer:
            self.emit(r)
        self.buffer.clear()

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:
            if len(self.buffer) < MAX_BUFFERED:
                self.buffer.append(record)
            return
        try:
            self.stream.write(redact_text(self.format(record), self.secrets) + "\n")
            self.stream.flush()
        except Exception:  # a log write must never end the run (disk full: the run's own writes will say so)
            self.handleError(record)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        self.buffer.clear()
        super().close()


class RunRecord:
    """The run.log handler and provenance of one run (see the module docstring)."""

    def __init__(self, cfg: Settings | None) -> None:
        self.cfg = cfg
        self.info = provenance(cfg, _now())
        self.run_dir: Path | None = None
        self.secrets = config_secrets(cfg)
        self.handler = _RunLogHandler(self.secrets)
        logging.getLogger().addHandler(self.handler)

    def attach(self, run_dir: Path) -> None:
        """The run folder exists: write provenance.json and run.log (what was logged so far, then as it comes)."""
        if self.run_dir is not None:
            return
        self.run_dir = run_dir
        self.info["run_dir"] = str(run_dir)
        write_json(run_dir / PROVENANCE_NAME, self.info)  # atomic; its crash point is atomic_path's
        self.handler.open(run_dir / LOG_NAME)

    def finish(self, error: BaseException | None) -> None:
        """End time and status (ok / failed with the error) into provenance.json; the error and its traceback into
        run.log only (the console shows the CLI's one line)."""
        if error is not None:
            self.handler.handle(
                logging.LogRecord(
                    __name__,
                    logging.ERROR,
                    __file__,
                    0,
                    "run failed: %s: %s",
                    (type(error).__name__, error),
                    (type(error), error, error.__traceback__),
                )
            )
        self.info.update(end_time=_now(), status="ok" if error is None else "failed")
        if error is not None:
            self.info["error"] = redact_text(f"{type(error).__name__}: {error}", self.secrets)
        if self.run_dir is not None:
            write_json(self.run_dir / PROVENANCE_NAME, self.info)

    def close(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


_active: list[RunRecord] = []


@contextmanager
def recorded_run(cfg: Settings | None) -> Iterator[RunRecord]:
    """The run's record (the enclosing one when runs nest), finished and closed at the end of the outermost."""
    if _active:
        yield _active[-1]
        return
    rec = RunRecord(cfg)
    _active.append(rec)
    try:
        yield rec
    except BaseException as e:
        rec.finish(e)
        raise
    else:
        rec.finish(None)
    finally:
        _active.remove(rec)
        rec.close()


def current() -> RunRecord | None:
    """The record of the run in progress, if any."""
    return _active[-1] if _active else None
