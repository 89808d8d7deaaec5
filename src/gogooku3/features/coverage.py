"""The coverage table of a dataset: per feature group, its feature count and mean null share, and why a group was
skipped or built otherwise (a proxy); as plain text (`coverage_text`, written to `<dataset>.coverage.txt`) and fitted
to the terminal for the log (`coverage_table`)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from gogooku3.features.build import BuiltFrame


def coverage(built: BuiltFrame) -> dict[str, dict[str, float]]:
    """Per group: feature count and mean null share."""
    df = built.df
    nulls = df.select(pl.col(list(built.groups)).null_count()).row(0, named=True) if built.groups else {}
    return coverage_of(built.groups, nulls, df.height)


def coverage_of(groups: dict[str, str], nulls: dict[str, int], rows: int) -> dict[str, dict[str, float]]:
    """Per group: feature count and mean null share, from each feature's null count over `rows` rows."""
    out: dict[str, dict[str, float]] = {}
    for n, g in groups.items():
        e = out.setdefault(g, {"features": 0, "null_share": 0.0})
        e["features"] += 1
        e["null_share"] += nulls[n] / max(rows, 1)
    for e in out.values():
        e["null_share"] = round(e["null_share"] / e["features"], 4)
    return out


def _coverage_rows(meta: dict) -> list[tuple[str, str, str, str]]:
    """(group, features, null share, note) per group built, then per group skipped entirely."""
    notes, skipped = meta.get("notes", {}), meta["skipped"]

    def why(g: str) -> str:
        return "; ".join(x for x in (notes.get(g, ""), skipped.get(g, "")) if x)

    rows = [(g, str(e["features"]), f"{e['null_share']:.1%}", why(g)) for g, e in meta["groups"].items()]
    rows += [(g, "0", "-", why(g)) for g in skipped if g not in meta["groups"]]
    return rows


def _coverage_title(meta: dict) -> str:
    return (
        f"ML dataset coverage: {meta['rows']:,} rows, {meta['stocks']:,} stocks, {meta['dates']:,} dates "
        f"({meta['start']}..{meta['end']}), {meta['n_features']} features"
    )


def coverage_text(meta: dict) -> str:
    """The coverage table as plain text: fixed columns for the counts, then each note on its own line (readable in
    any width, in a log file and in `<dataset>.coverage.txt`)."""
    rows = _coverage_rows(meta)
    wg = max([len("group"), *(len(r[0]) for r in rows)])
    lines = [_coverage_title(meta), f"{'group':<{wg}}  features  null share"]
    lines += [f"{g:<{wg}}  {n:>8}  {ns:>10}" for g, n, ns, _ in rows]
    noted = [(g, note) for g, _, _, note in rows if note]
    if noted:
        lines.append("notes:")
        lines += [f"  {g}: {note}" for g, note in noted]
    return "\n".join(lines) + "\n"


def _log_terminal() -> tuple[bool, int]:
    """(whether the log goes to a terminal, its width): from the root logger's rich console where the CLI set one
    up, else from stderr (where a plain StreamHandler writes)."""
    import sys

    for h in logging.getLogger().handlers:
        con = getattr(h, "console", None)
        if con is not None:
            return bool(con.is_terminal), int(con.width)
    return sys.stderr.isatty(), shutil.get_terminal_size((100, 24)).columns


def coverage_table(meta: dict, width: int | None = None, tty: bool | None = None) -> str:
    """The coverage table for the log: a rich table fitted to the terminal's width when the log goes to a terminal
    (less the log handler's time/level prefix), else `coverage_text`."""
    if tty is None or width is None:
        is_tty, columns = _log_terminal()
        tty = is_tty if tty is None else tty
        width = width or max(60, columns - LOG_PREFIX)
    if not tty:
        return coverage_text(meta)
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    t = Table(title=_coverage_title(meta))
    for col, kw in (
        ("group", {"no_wrap": True}),
        ("features", {"justify": "right"}),
        ("null share", {"justify": "right"}),
        ("note", {"overflow": "fold"}),
    ):
        t.add_column(col, **kw)
    for row in _coverage_rows(meta):
        t.add_row(*row)
    buf = StringIO()
    Console(file=buf, width=width, force_terminal=False, color_system=None).print(t)
    return buf.getvalue()


LOG_PREFIX = 22  # columns the CLI's log handler puts before a message ("[12:34:56] INFO     ")


def coverage_path(dataset_path: str | Path) -> Path:
    """`<dataset>.coverage.txt` beside the dataset."""
    p = Path(dataset_path)
    return p.with_name(p.name.removesuffix(".parquet") + ".coverage.txt")
