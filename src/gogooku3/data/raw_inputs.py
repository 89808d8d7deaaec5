"""Raw price/volume input channels (Alpha360-like): the second input mode of the networks (`load_panel(inputs="raw")`).

Qlib's Alpha360 (qlib/contrib/data/loader.py, `Alpha360DL`) gives a model the last 60 days of CLOSE, OPEN, HIGH, LOW,
VWAP and VOLUME, prices divided by the window's last close and volumes by its last volume. A value divided by the
window's last day cannot be stored once per day in a panel (it changes with every window that contains the day), so
each day carries point-in-time channels whose window holds the same information, in logs:

    close   ln(1 + returns_1d)             the day's close-to-close return (ln C_t / C_{t-1})
    open    ln(Open / Close)               the day's prices against its own close
    high    ln(High / Close)
    low     ln(Low / Close)
    vwap    ln(TurnoverValue / (Volume · Close))
    volume  ln(Volume / volume_ma_w)       the day's volume against its trailing w-session mean (`volume_ratio_w`)

Alpha360's price fields follow from a window of these exactly: ln(C_s / C_d) = −Σ_{u=s+1..d} close_u and
ln(O_s / C_d) = open_s + ln(C_s / C_d), and so on. The volume channel is the stock's volume against its own recent
mean rather than against the window's last day: a stationary level whose day-to-day differences carry Alpha360's
ratios up to the moving mean's drift. Each channel is then normalised per day across stocks (robust z, clipped) as
the engineered features are (`train.normalizer`), which removes each day's market-wide level (Alpha360's own
processors normalise over time instead). A network sees `model.window` days of them: nothing older (the synthetic
market's [t-120, t-5] momentum is out of reach of a 60-day window; `returns_120d` is among the features).

Why these forms and not lags of the dataset's levels: the dataset's Open/High/Low/Close/Volume are in the day's own
share basis (`features.price`: a split-adjusted level would reveal a future split), so Close_t / Close_{t-1} is a
fake −50 % on a 1:2 split's ex-date. The per-stock windows that cross days (returns_1d, volume_ma_w) are the
builder's, computed on the split-adjusted series and checked point in time there; every channel here is a function
of one row (a ratio within the day's basis), so no value reads another day, `PanelStore.convert` can stream the
file's batches through the expressions unchanged, and a channel of day d needs nothing published after d.

Each channel lists the column sets it can be made from, first usable wins; a channel the dataset cannot make (a
close-only file has no Open/High/Low/Volume, a build without the volume group no volume_ma_w) is left out and
logged once; with no channel left the dataset is refused. A channel that is 0 on every row (the synthetic market's
VWAP is its close) carries nothing and is left out too (`informative`). Config: `train.raw_inputs`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CHANNELS = ("close", "open", "high", "low", "vwap", "volume")  # config.schema.RAW_CHANNELS
PREFIX = "raw_"  # the panel's feature names: raw_close, raw_open, ...
# |ln ratio| below this is 0: a ratio of three float32 columns is exact to ~4e-7, and one price tick is >= 1e-5 of
# the price, so only rounding lives below it (the synthetic market's VWAP/Close is 1 ± 4e-8, which would otherwise
# be normalised into a channel of pure rounding noise).
SNAP = 1e-6

_logged: set[tuple[str, str]] = set()  # (source, message) already logged by this process


def _x(name: str) -> pl.Expr:
    return pl.col(name).cast(pl.Float64)


def _forms(volume_window: int) -> dict[str, list[tuple[tuple[str, ...], Callable[[], pl.Expr]]]]:
    """channel -> [(columns it reads, its ln expression)], the preferred form first."""
    ma, ratio = f"volume_ma_{volume_window}", f"volume_ratio_{volume_window}"
    return {
        "close": [
            ((C.RETURNS_1D,), lambda: _x(C.RETURNS_1D).log1p()),
            (("log_returns_1d",), lambda: _x("log_returns_1d")),
        ],
        "open": [((C.OPEN, C.CLOSE), lambda: (_x(C.OPEN) / _x(C.CLOSE)).log())],
        "high": [((C.HIGH, C.CLOSE), lambda: (_x(C.HIGH) / _x(C.CLOSE)).log())],
        "low": [((C.LOW, C.CLOSE), lambda: (_x(C.LOW) / _x(C.CLOSE)).log())],
        "vwap": [
            (
                (C.TURNOVER_VALUE, C.VOLUME, C.CLOSE),
                lambda: (_x(C.TURNOVER_VALUE) / (_x(C.VOLUME) * _x(C.CLOSE))).log(),
            )
        ],
        "volume": [
            ((ratio,), lambda: _x(ratio).log()),
            ((C.VOLUME, ma), lambda: (_x(C.VOLUME) / _x(ma)).log()),
        ],
    }


def _clean(e: pl.Expr) -> pl.Expr:
    """Float32; non-finite (a zero volume, a missing price) is null, rounding-size values are 0."""
    return pl.when(e.is_finite()).then(pl.when(e.abs() < SNAP).then(0.0).otherwise(e)).cast(pl.Float32)


def _log_once(source: str, msg: str, level: int = logging.WARNING) -> None:
    if (source, msg) not in _logged:
        _logged.add((source, msg))
        log.log(level, "raw inputs: %s: %s", source, msg)


def raw_channels(
    columns: Iterable[str], channels: Sequence[str], volume_window: int, source: str | Path = "dataset"
) -> dict[str, pl.Expr]:
    """{`raw_<channel>`: its Float32 expression} for each of `channels` (in that order) that `columns` (the
    dataset's allow-listed columns) can make. Row-local expressions: see the module docstring. A channel left out is
    logged once per source; none left is a DataError."""
    unknown = [ch for ch in channels if ch not in CHANNELS]
    if unknown:
        raise ConfigError(f"train.raw_inputs.channels: unknown channel {unknown[0]!r} (known: {', '.join(CHANNELS)})")
    have, forms = set(columns), _forms(volume_window)
    out: dict[str, pl.Expr] = {}
    lacking: dict[str, str] = {}
    for ch in dict.fromkeys(channels):
        usable = [make for needs, make in forms[ch] if have.issuperset(needs)]
        if usable:
            out[PREFIX + ch] = _clean(usable[0]()).alias(PREFIX + ch)
        else:
            lacking[ch] = " or ".join("+".join(n for n in needs if n not in have) for needs, _ in forms[ch])
    if not out:
        raise DataError(
            f"{source}: no raw input channel can be made (missing: "
            + "; ".join(f"{ch} needs {cols}" for ch, cols in lacking.items())
            + ")"
        )
    if lacking:
        _log_once(
            str(source),
            f"{len(out)} of {len(out) + len(lacking)} channels ({', '.join(out)}); left out "
            + "; ".join(f"{ch} (no {cols})" for ch, cols in lacking.items()),
        )
    return out


def informative(lf: pl.LazyFrame, exprs: dict[str, pl.Expr], source: str | Path = "dataset") -> dict[str, pl.Expr]:
    """`exprs` less the channels that are null or 0 on every row of `lf` (logged once): a constant input the per-day
    normaliser turns into zeros. One streaming pass over the columns they read; a DataError if none is left."""
    if not exprs:
        return exprs
    row = lf.select((e.fill_null(0.0) != 0).any().alias(n) for n, e in exprs.items()).collect(engine="streaming")
    dead = [n for n in exprs if not row.get_column(n)[0]]
    if len(dead) == len(exprs):
        raise DataError(f"{source}: every raw input channel ({', '.join(dead)}) is 0 or null on every row")
    if dead:
        _log_once(str(source), f"left out {', '.join(dead)}: 0 or null on every row (no information)", logging.INFO)
    return {n: e for n, e in exprs.items() if n not in dead}
