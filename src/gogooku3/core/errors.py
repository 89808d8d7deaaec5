"""The exception hierarchy. The CLI turns any of these into one clear line and a non-zero exit."""

import re


class Gogooku3Error(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(Gogooku3Error):
    """A configuration value is missing, unknown or inconsistent."""


class DataError(Gogooku3Error):
    """Input data is unusable: empty, corrupt, inconsistent or too short."""


class SchemaError(DataError):
    """A table lacks a required column or holds values of the wrong type or range."""


class LeakageError(Gogooku3Error):
    """Something would let the future into a feature, a split or a fit."""


class TrainingError(Gogooku3Error):
    """Training could not start, diverged or produced unusable output."""


def load_reason(e: BaseException) -> str:
    """The telling part of a failed file load for a one-line message: torch's 'Unsupported global: GLOBAL io.open'
    when a weights-only load met a pickled object, else the first sentence of the error."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    m = re.search(r"Unsupported [^\n]*", text)
    line = m[0] if m else (text.splitlines() or [""])[0]
    line = line.split(" was not an allowed global")[0].split(". ")[0]
    return f"{type(e).__name__}: {line[:160]}" if line else type(e).__name__


def rows_hint(rows, limit: int = 5) -> str:
    """Format a few offending row descriptions for an error message: 'a, b, c (+12 more)'."""
    rows = list(rows)
    shown = ", ".join(str(r) for r in rows[:limit])
    more = len(rows) - limit
    return f"{shown} (+{more} more)" if more > 0 else shown
