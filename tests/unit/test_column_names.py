"""Column names are spelled once, in `gogooku3.core.columns`: no module of the package writes "Date", "Code",
f"pred_{h}d", ... as a literal.

The source is read with `ast`: only string constants that are exactly a name `columns` defines, and f-strings that
start like a per-horizon column (f"pred_{...}"), count; docstrings, comments, and names inside longer text (log and
error messages) do not. `sources/` is left out (the raw tables' own schemas, e.g. J-Quants field names), and so is
`core/columns.py` itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gogooku3
from gogooku3.core import columns as C

ROOT = Path(gogooku3.__file__).resolve().parent
EXCLUDED = ("sources/", "core/columns.py")

# name -> its constant in `columns`
KEY_NAMES = {C.DATE: "DATE", C.CODE: "CODE"}
OTHER_NAMES = {
    getattr(C, k): k
    for k in (
        "SECTION",
        "S33",
        "S17",
        "OPEN",
        "HIGH",
        "LOW",
        "CLOSE",
        "VOLUME",
        "TURNOVER_VALUE",
        "RETURNS_1D",
        "VOLUME_MA_20",
        "DOLLAR_VOLUME",
        "VOLATILITY_20D",
        "MARKET_CAP",
    )
}
# f-string prefixes of the per-horizon columns: C.pred(h), C.target(h), C.oracle(h), C.score(h)
FSTRING_PREFIXES = ("pred_", "target_", "oracle_", "score_")

# (path under src/gogooku3, the literal as written) -> why it stays a literal
ALLOWED = {
    ("pipelines/predict.py", "f'pred_{d.isoformat()}.parquet'"): "a file name, not a column",
    ("pipelines/predict.py", "f'pred_{d.isoformat()}.csv'"): "a file name, not a column",
    ("features/price.py", "'dollar_volume'"): "the feature's definition (`b.add`)",
    ("features/statements.py", "'market_cap'"): "the feature's definition (`b.add`)",
}


def _sources() -> list[tuple[str, Path]]:
    out = []
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        if not rel.startswith(EXCLUDED):
            out.append((rel, p))
    return out


def literals(source: str, names: dict[str, str]) -> list[tuple[int, str]]:
    """(line, the literal as `ast.unparse` writes it) of each string constant in `names` (docstrings and other
    bare string statements skipped) and, with `names` = KEY_NAMES, each f-string starting with a per-horizon prefix."""
    tree = ast.parse(source)
    skip = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    skip |= {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}  # f-string text parts
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names and id(n) not in skip:
            found.append((n.lineno, ast.unparse(n)))
        elif isinstance(n, ast.JoinedStr) and names is KEY_NAMES and n.values:
            head = n.values[0]
            if isinstance(head, ast.Constant) and isinstance(head.value, str) and head.value in FSTRING_PREFIXES:
                found.append((n.lineno, ast.unparse(n)))
    return sorted(found)


def _left(names: dict[str, str]) -> list[str]:
    return [
        f"src/gogooku3/{rel}:{line}: {lit}"
        for rel, p in _sources()
        for line, lit in literals(p.read_text(encoding="utf-8"), names)
        if (rel, lit) not in ALLOWED
    ]


def test_scan_sees_literals_and_skips_docstrings_and_messages():
    src = '''"""Sorted by "Date"."""
def f(df, h):
    """"Code" """
    log.info("Date %s", h)  # "Date"
    x = pl.col("Date"), df['Code'], f"pred_{h}d", f"target_{h}d", f"{df['Code']}", f"no Date {h}"
    return C.DATE, "Close", f"rank_{h}d"
'''
    assert [lit for _, lit in literals(src, KEY_NAMES)] == [
        "'Code'",
        "'Code'",
        "'Date'",
        "f'pred_{h}d'",
        "f'target_{h}d'",
    ]
    assert literals(src, OTHER_NAMES) == [(6, "'Close'")]


def test_no_literal_row_keys_or_per_horizon_columns():
    left = _left(KEY_NAMES)
    assert not left, (
        "use gogooku3.core.columns (C.DATE, C.CODE, C.pred(h), C.target(h), ...) instead of:\n" + "\n".join(left)
    )


def test_no_literal_shared_column_names():
    left = _left(OTHER_NAMES)
    assert not left, (
        "use the constant of gogooku3.core.columns ("
        + ", ".join(f"C.{k}" for k in OTHER_NAMES.values())
        + ") instead of:\n"
        + "\n".join(left)
    )


def test_allow_list_is_not_stale():
    seen = {
        (rel, lit)
        for rel, p in _sources()
        for names in (KEY_NAMES, OTHER_NAMES)
        for _, lit in literals(p.read_text(encoding="utf-8"), names)
    }
    assert set(ALLOWED) <= seen, f"allow-list entries no longer in the source: {sorted(set(ALLOWED) - seen)}"
