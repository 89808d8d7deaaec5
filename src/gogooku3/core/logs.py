"""Logging set-up for the CLI (the library itself only creates loggers)."""

from __future__ import annotations

import logging
import warnings

from rich.logging import RichHandler

# Third-party loggers that are chatty at INFO (Lightning sets its own level when imported, so filter by name).
QUIET = ("lightning", "pytorch_lightning", "optuna", "matplotlib", "httpx", "httpcore", "torch_geometric")


class _QuietThirdParty(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(QUIET)


def setup_logging(level: str | int = "INFO") -> None:
    handler = RichHandler(rich_tracebacks=False, show_path=False, markup=False)
    handler.addFilter(_QuietThirdParty())
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]", handlers=[handler], force=True)
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
