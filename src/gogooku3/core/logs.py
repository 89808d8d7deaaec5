"""Logging set-up for the CLI (the library itself only creates loggers)."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import TextIO

from rich.logging import RichHandler

# Third-party loggers that are chatty at INFO (Lightning sets its own level when imported, so filter by name).
QUIET = ("lightning", "pytorch_lightning", "optuna", "matplotlib", "httpx", "httpcore", "torch_geometric")


class _QuietThirdParty(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(QUIET)


class _Stdout(logging.StreamHandler):
    """A plain handler on whatever `sys.stdout` is at each record (where the rich handler writes too)."""

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it: ignored
        pass


PLAIN_FORMAT = "[%(asctime)s] %(levelname)s %(message)s"


def console_handler() -> logging.Handler:
    """Rich on a terminal; when stdout is not a terminal (a file, a pipe, a test) plain lines, one per record,
    never wrapped or padded to a width."""
    if sys.stdout.isatty():
        handler: logging.Handler = RichHandler(rich_tracebacks=False, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s", "[%X]"))
    else:
        handler = _Stdout()
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT, "%H:%M:%S"))
    handler.addFilter(_QuietThirdParty())
    return handler


def setup_logging(level: str | int = "INFO") -> None:
    """The console handler at `level` (replacing any earlier set-up); handlers others added stay (a run's
    run.log, `core.provenance`)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_gogooku3_console", False) or isinstance(h, RichHandler) or type(h) is logging.StreamHandler:
            root.removeHandler(h)
    handler = console_handler()
    handler._gogooku3_console = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r".*litlogger.*")


def defer_lightning_logging() -> None:
    """Remove the console handler `import lightning` installs, so its records go to the application's handlers."""
    lg = logging.getLogger("lightning")
    for h in list(lg.handlers):
        if type(h) is logging.StreamHandler:
            lg.removeHandler(h)
    lg.propagate = True
