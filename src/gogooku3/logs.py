"""Logging set-up for the CLI (the library itself only creates loggers)."""

from __future__ import annotations

import logging

from rich.logging import RichHandler


def setup_logging(level: str | int = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(rich_tracebacks=False, show_path=False, markup=False)],
        force=True,
    )
    for noisy in ("lightning", "lightning.pytorch", "pytorch_lightning", "optuna", "matplotlib", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
