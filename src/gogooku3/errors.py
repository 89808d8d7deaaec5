"""The exception hierarchy. The CLI turns any of these into one clear line and a non-zero exit."""


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


def rows_hint(rows, limit: int = 5) -> str:
    """Format a few offending row descriptions for an error message: 'a, b, c (+12 more)'."""
    rows = list(rows)
    shown = ", ".join(str(r) for r in rows[:limit])
    more = len(rows) - limit
    return f"{shown} (+{more} more)" if more > 0 else shown
