"""Checks of a user's price file against hostile or broken input (issue 20): text encoding, header and row shape,
label-like column names, OHLC consistency, float32 range and one-day bad ticks.

Every refusal is one DataError line naming the file, the column and example rows (`bad`); nothing is written.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from pathlib import Path

import numpy as np
import polars as pl

from gogooku3.core.errors import DataError
from gogooku3.features.manifest import is_label_like

log = logging.getLogger(__name__)

ROW = "__row"  # 1-based data row number (header excluded), kept for error messages
F32_MAX = float(np.finfo(np.float32).max)  # the dataset is float32: a larger value becomes inf there
NO_SPLIT = "\x1f"  # a character no CSV holds: reading with it as separator gives one column of whole lines


# ---- one-line errors --------------------------------------------------------------------------------------------
def bad(
    df: pl.DataFrame,
    mask: pl.Series | pl.Expr,
    path: Path,
    column: str,
    problem: str,
    show: dict[str, str],
    hint: str = "",
) -> DataError:
    """One-line error: file, column, problem, count, and up to three example rows as the file labels them."""
    hit = df.filter(mask)
    n = hit.height
    examples = []
    for r in hit.head(3).iter_rows(named=True):
        fields = ", ".join(f"{label}={r[col]}" for col, label in show.items() if col in r)
        examples.append(f"row {r[ROW]} ({fields})")
    more = f" (+{n - 3} more)" if n > 3 else ""
    return DataError(
        f"{path}: column '{column}' {problem} in {n} row(s): {'; '.join(examples)}{more}"
        + (f". {hint}" if hint else "")
    )


# ---- bytes: encoding, header, short rows ------------------------------------------------------------------------
def csv_bytes(path: Path) -> bytes:
    """The file as UTF-8 bytes: UTF-16 with a byte-order mark is decoded; NUL bytes without one (UTF-16 without a
    mark, or a binary file) are refused."""
    data = path.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: cannot read CSV: the file starts as UTF-16 but is not ({e.reason})") from e
    if b"\x00" in data[:65536]:
        raise DataError(
            f"{path}: cannot read CSV: the file holds NUL bytes (UTF-16 without a byte-order mark, or not a text "
            "file); save it as UTF-8 text"
        )
    return data


def check_header(data: bytes, path: Path, separator: str) -> list[str]:
    """The header's column names; a name given twice is refused with both positions (polars would rename the
    second one and import it as a feature)."""
    first = data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").rstrip("\r")
    names = next(csv.reader([first], delimiter=separator), [])
    seen: dict[str, int] = {}
    for i, name in enumerate(names, start=1):
        key = name.strip()
        if key in seen:
            raise DataError(
                f"{path}: the header names column '{key}' twice (columns {seen[key]} and {i}); rename or remove one"
            )
        seen[key] = i
    return names


def check_short_rows(data: bytes, path: Path, separator: str, n_fields: int) -> None:
    """Rows with fewer fields than the header (a file cut off mid-row: its last value is partial) are refused with
    their line numbers. Lines whose quotes do not balance (a quoted field over several lines) are not judged."""
    if n_fields < 2 or NO_SPLIT.encode() in data:
        return
    lines = pl.read_csv(
        data, has_header=False, separator=NO_SPLIT, quote_char=None, infer_schema=False, empty_string_is_null=False
    ).to_series()
    unquoted = lines.fill_null("").str.replace_all(r'"(?:[^"]|"")*"', "")
    fields = unquoted.str.count_matches(separator, literal=True) + 1
    short = (fields < n_fields) & ~unquoted.str.contains('"', literal=True)
    short = pl.Series([False]).append(short.slice(1))  # not the header
    if not short.any():
        return
    at = short.arg_true()
    n = len(at)
    shown = "; ".join(
        f"line {i + 1} ({f'{fields[i]} field(s): {lines[i][:60]!r}' if lines[i] else 'empty'})" for i in at.head(3)
    )
    more = f" (+{n - 3} more)" if n > 3 else ""
    raise DataError(
        f"{path}: {n} row(s) have fewer fields than the header ({n_fields}): {shown}{more}. A file cut off mid-row "
        "ends in a partial value; complete or remove these rows"
    )


# ---- column names -----------------------------------------------------------------------------------------------
_FUTURE = r"(?:fwd|forward|future|next|lead|ahead|tomorrow|nxt)"
_MEASURE = r"(?:r|ret|rets|return|returns|rtn|chg|change|pct|perf|performance|gain|move|close|price|px|vol|volatility)"
_LABEL_HEAD = re.compile(r"^(?:x_)?(?:target|tgt|label|labels|y|feat_ret)(?:_|\d|$)")
_T_PLUS = re.compile(r"t\s*\+\s*\d")  # ret_t+1, return(t+1)


def _tokens(name: str) -> list[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1_\2", name)  # camelCase -> camel_Case
    return re.findall(r"[a-z]+|\d+", spaced.lower())


def label_like_column(name: str) -> bool:
    """A file column whose name reads like a label or a future return: the manifest's label pattern, a target /
    label / y prefix, or a future word (fwd, forward, future, next, lead, ...) with a return or price word."""
    if is_label_like(name):
        return True
    norm = "_".join(_tokens(name))
    if _LABEL_HEAD.match(norm):
        return True
    toks = _tokens(name)
    future = any(re.fullmatch(_FUTURE + r"(?:day|\d*d)?", t) for t in toks)
    measure = any(re.fullmatch(_MEASURE, t) for t in toks)
    fused = any(re.fullmatch(_FUTURE + r"(?:day|\d*d)?" + _MEASURE, t) for t in toks)  # fwdret, nextdayreturn
    return fused or (future and measure) or (bool(_T_PLUS.search(name.lower())) and measure)


def check_label_names(columns: list[str], path: Path, allow: tuple[str, ...]) -> None:
    """User feature columns named like labels or future returns are refused unless in `data.allow_columns`."""
    hits = [c for c in columns if c not in allow and label_like_column(c)]
    if hits:
        names = ", ".join(f"'{c}'" for c in hits)
        raise DataError(
            f"{path}: column(s) {names} read like a label or a future return and would become feature(s); remove "
            f"them, leave them out with data.extra_columns=[...], or keep them (only values known at each day's "
            f"close) with data.allow_columns=[{','.join(hits)}]"
        )


# ---- values -----------------------------------------------------------------------------------------------------
def check_float32(df: pl.DataFrame, values: pl.Series, path: Path, col: str) -> None:
    """Values beyond float32's range would become inf in the float32 dataset."""
    big = (values.abs() > F32_MAX).fill_null(False)
    if big.any():
        raise bad(
            df.with_columns(values.alias(col)),
            big,
            path,
            col,
            f"has values beyond float32's range (|x| > {F32_MAX:.3g}), which the dataset stores as inf",
            {col: col},
            hint="Fix the values or leave them empty",
        )


def check_ohlc(
    out: pl.DataFrame, path: Path, src_of: dict[str, str], show: dict[str, str], given: set[str], tol: float
) -> None:
    """High >= max(Open, Close, Low) and Low <= min(Open, Close), on the raw prices and on the adjusted ones the file
    gives (derived ones are scaled alike), with relative slack `tol` (`data.ohlc_tolerance`). Checks what is there."""
    for o, h, lo, c in (("O", "H", "L", "C"), ("AdjO", "AdjH", "AdjL", "AdjC")):
        have = [x for x in (o, h, lo, c) if x in given]
        labels = {x: src_of[x] for x in have}
        sides: tuple[tuple[str, tuple[str, ...], bool], ...] = ((h, (o, c, lo), True), (lo, (o, c), False))
        for side, against, below in sides:
            if side not in given:
                continue
            others = [x for x in against if x in given and src_of[x] != src_of[side]]
            if not others:
                continue
            if below:
                hit = pl.any_horizontal([pl.col(side) * (1 + tol) < pl.col(x) for x in others])
                problem = f"is below the day's {'/'.join(src_of[x] for x in others)}"
            else:
                hit = pl.any_horizontal([pl.col(side) > pl.col(x) * (1 + tol) for x in others])
                problem = f"is above the day's {'/'.join(src_of[x] for x in others)}"
            mask = out.select(hit.fill_null(False)).to_series()
            if mask.any():
                raise bad(
                    out,
                    mask,
                    path,
                    src_of[side],
                    problem,
                    {**show, **labels},
                    hint="Each row needs High >= max(Open, Close, Low) and Low <= min(Open, Close) (slack "
                    f"data.ohlc_tolerance={tol}); check the column mapping (data.columns) and these rows",
                )


def check_ticks(
    out: pl.DataFrame, path: Path, src_of: dict[str, str], show: dict[str, str], jump: float, policy: str
) -> None:
    """A close that moves by more than `jump` (× or ÷, `data.tick_jump`) from the previous row of its code and
    back by at least half of that move (in logs) on the next row is a bad tick: refused, or logged with
    `data.bad_ticks=warn`. A lasting jump (a split) is left to `corporate_actions.check_splits`."""
    if policy == "off":
        return
    lim = math.log(jump)
    cols = ["C"] if src_of.get("C") == src_of.get("AdjC") else ["C", "AdjC"]
    d = out.sort("Code", "Date")
    for col in (x for x in cols if x in d.columns):
        lc = pl.col(col).log()
        d1 = lc - lc.shift(1).over("Code")
        d2 = lc.shift(-1).over("Code") - lc
        spike = (d1.abs() > lim) & (d1 * d2 < 0) & (d2.abs() >= d1.abs() / 2)
        mask = d.select(spike.fill_null(False)).to_series()
        if not mask.any():
            continue
        err = bad(
            d,
            mask,
            path,
            src_of[col],
            f"has one-day spikes (a close more than x{jump:g} or x1/{jump:g} the previous row's, back the next row)",
            {**show, col: src_of[col]},
            hint="These look like bad ticks; fix the rows, or import them as they are with data.bad_ticks=warn "
            "(data.tick_jump sets the size)",
        )
        if policy == "refuse":
            raise err
        log.warning("%s", err)
