"""Self-contained HTML for a run report: matplotlib PNGs embedded as base64, inline CSS, no network access.

Layout: charts are drawn about 7.5 in wide with 11 pt text and laid out two to a row on a desktop (`.grid`), one
to a row below 900 px, so their text stays readable when a phone scales them to its width; wide tables scroll
sideways inside their own box instead of widening the page."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import polars as pl
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from gogooku3.core import columns as C

MODEL_COLOR, BASE_COLOR, BENCH_COLOR = "#1f5fa8", "#d9822b", "#6b7280"
REALISTIC_COLOR = "#0f8b6e"
# predictors in the report's order: the product first, the reference second, then the others
PALETTE = (MODEL_COLOR, BASE_COLOR, "#7b3fa0", "#2a9d8f", "#c0392b", "#8d6e63", "#374151")
_COLORS: dict[str, str] = {}  # predictor -> colour, set once per page by `assign_colors`


def assign_colors(names: Sequence[str]) -> dict[str, str]:
    """One colour per predictor (report order) that every chart of the page uses; returns the mapping."""
    _COLORS.clear()
    _COLORS.update({n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)})
    return dict(_COLORS)


def color(label: str) -> str:
    """The colour of the predictor a label names ("atft", "atft realistic", "blend 20-day mean", ...)."""
    for n in sorted(_COLORS, key=len, reverse=True):
        if label == n or label.startswith(n + " "):
            return _COLORS[n]
    return PALETTE[sum(map(ord, label)) % len(PALETTE)]


def short(label: str, n: int = 30) -> str:
    """A label cut to `n` characters with an ellipsis (long feature names on a chart's axis)."""
    return label if len(label) <= n else label[: n - 1] + "…"


W, H1 = 6.4, 3.3  # one chart (inches): 576 px at the default 90 dpi, two to a row on a desktop
# 12 pt text: about 8-9 px when a phone shrinks a 576 px chart to its ~340 px column
plt.rcParams.update(
    {
        "font.size": 12,
        "axes.titlesize": 13,
        "axes.labelsize": 12,
        "legend.fontsize": 11,
        "xtick.labelsize": 11,
        "ytick.labelsize": 11,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
)
CSS = """
*{box-sizing:border-box}
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;padding:16px 20px;max-width:1400px;
color:#1d2733;background:#f6f7f9;line-height:1.35}
h1{font-size:26px;margin:0 0 4px;overflow-wrap:anywhere} h2{font-size:19px;border-bottom:2px solid #1f5fa8;
padding-bottom:4px;margin:6px 0 10px} h3{font-size:15px;margin:14px 0 6px}
section{background:#fff;border-radius:8px;padding:14px 20px 18px;margin:14px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;margin:8px 0} th,td{padding:4px 10px;border-bottom:1px solid #e3e6ea;
text-align:right;white-space:nowrap} th{background:#eef2f7} td:first-child,th:first-child{text-align:left}
td.wrap{white-space:normal;min-width:200px;text-align:left;overflow-wrap:anywhere}
table.left td,table.left th{text-align:left}
.kpis{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px;margin:8px 0}
.kpi{background:#eef2f7;border-radius:6px;padding:8px 12px} .kpi b{display:block;font-size:20px;overflow-wrap:anywhere}
.kpi span{font-size:12px;color:#556} .kpi.run{background:#e8f0fb} .kpi.target{background:#fdf3e6}
.ok{color:#1a7f37} .bad{color:#b42318}
.grid{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:14px} .grid>figure{margin:0}
figure{margin:6px 0} figcaption{font-size:12px;color:#556;margin-top:2px}
.note{font-size:12px;color:#556} img{max-width:100%;height:auto;display:block}
pre{font-size:11px;background:#f3f4f6;padding:8px;overflow:auto;max-height:420px}
nav{font-size:13px;margin:8px 0 0;display:flex;flex-wrap:wrap;gap:6px 12px} nav a{color:#1f5fa8}
@media (max-width:900px){.grid{grid-template-columns:minmax(0,1fr)} body{padding:10px}
section{padding:10px 12px 14px} h1{font-size:21px} .kpi b{font-size:17px} .kpi{padding:6px 8px}
td.wrap{min-width:0} table{font-size:12px} th,td{padding:3px 6px}}
"""


def fmt(v: Any, digits: int = 4, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{100 * v:.2f}%" if pct else f"{v:.{digits}f}"
    return html.escape(str(v))


def png(fig) -> str:
    """Render a figure to an <img> tag with a base64 PNG and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    pct_cols: Sequence[int] = (),
    wrap_cols: Sequence[int] = (),
    left: bool = False,
) -> str:
    """A table in a box that scrolls sideways on narrow screens; `wrap_cols` hold long text that may wrap; `left`
    aligns every column left (text tables)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    wrap = ' class="wrap"'
    body = "".join(
        "<tr>"
        + "".join(f"<td{wrap if i in wrap_cols else ''}>{fmt(v, pct=i in pct_cols)}</td>" for i, v in enumerate(r))
        + "</tr>"
        for r in rows
    )
    cls = ' class="left"' if left else ""
    return f'<div class="scroll"><table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def grid(*items: str) -> str:
    """Charts side by side on a desktop, stacked on a phone."""
    return '<div class="grid">' + "".join(f"<figure>{i}</figure>" for i in items if i) + "</div>"


def caption(img: str, text: str) -> str:
    return f"{img}<figcaption>{html.escape(text)}</figcaption>"


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>{body}</section>'


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777")
    ax.set_xticks([])
    ax.set_yticks([])


def _dates(ax) -> None:
    loc = mdates.AutoDateLocator(maxticks=10)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, **kw)


def _legend_below(ax, ncol: int = 3) -> None:
    """The legend under the axes, so that it never hides a line."""
    n = len(ax.get_legend_handles_labels()[0])
    _legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(ncol, max(1, n)), fontsize=9)


def chart_equity(curves: dict[str, pl.DataFrame], dpi: int, benchmark: tuple[str, pl.DataFrame] | None = None) -> str:
    """Growth of 1 on a log scale with the drawdown below: each (label -> daily with Date, equity, drawdown)."""
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(W, 4.8), dpi=dpi, sharex=True, gridspec_kw={"height_ratios": [2.2, 1]}
    )
    names = list(dict.fromkeys(n.rsplit(" ", 1)[0] for n in curves))  # predictors, the headline first
    for name, d in curves.items():
        if d is None or d.height == 0:
            continue
        who, mode = name.rsplit(" ", 1) if " " in name else (name, "")
        x, c = d[C.DATE].to_list(), color(who)
        ax1.plot(x, d["equity"].to_list(), ":" if mode == "ideal" else "-", color=c, lw=1.6, label=name)
        if who == names[0]:
            ax2.plot(x, (100 * d["drawdown"]).to_list(), ":" if mode == "ideal" else "-", color=c, lw=1.2, label=name)
    if benchmark is not None and benchmark[1].height:
        b = benchmark[1]
        ax1.plot(b[C.DATE].to_list(), b["equity"].to_list(), color=BENCH_COLOR, lw=1.2, label=benchmark[0])
    ax1.set_yscale("log")
    lo, hi = ax1.get_ylim()
    wide = hi / max(lo, 1e-12) > 10  # more than a decade: fewer ticks, or their labels collide
    subs = (1.0, 2.0, 5.0) if wide else (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
    ax1.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax1.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax1.yaxis.set_minor_formatter(NullFormatter())
    ax1.axhline(1.0, color="#888", lw=0.8)
    ax1.set_ylabel("growth of 1 (log)")
    ax1.set_title("equity, net of costs")
    ax1.grid(alpha=0.3, which="both")
    ax2.set_ylabel("drawdown %")
    ax2.grid(alpha=0.3)
    _dates(ax2)
    fig.tight_layout()
    handles, labels = ax1.get_legend_handles_labels()  # under the figure: on the log axes it hid the lines
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=9, frameon=False)
    return png(fig)


def chart_capacity(by_h: dict[str, dict] | None, dpi: int, title: str = "") -> str:
    """Capacity: the realistic book's net Sharpe against capital (log axis), one line per horizon (`by_h`: {h:
    {"rows": `backtest.capacity.capacity` rows, "ideal_sharpe"}}); the idealised books' Sharpe as dashed lines of the
    same colours. The figures and fill shares are in the table beside it (`capacity_rows`)."""
    fig, ax = plt.subplots(figsize=(W, H1), dpi=dpi)
    if not by_h:
        _empty(ax, "no capacity figures (no realistic backtest)")
        return png(fig)
    for (h, d), color in zip(by_h.items(), PALETTE, strict=False):
        rows = d["rows"]
        x = [r["capital"] for r in rows]
        ax.plot(x, [r["sharpe"] for r in rows], "o-", color=color, lw=1.8, label=f"{h}d realistic")
        ideal = d.get("ideal_sharpe")
        if ideal is not None and math.isfinite(ideal):
            ax.axhline(ideal, color=color, ls="--", lw=0.9, alpha=0.6)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"¥{v / 1e9:g} bn" if v >= 1e9 else f"¥{v / 1e6:g} M"))
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_xlabel("capital (yen per leg)")
    ax.set_ylabel("Sharpe (net)")
    ax.set_title(f"capacity: where impact eats the edge{f' ({title})' if title else ''}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, fontsize=8, frameon=False)
    ax.grid(alpha=0.3, which="both")
    return png(fig)


def capacity_rows(by_h: dict[str, dict] | None) -> tuple[list[str], list[tuple]]:
    """The capacity table: one row per horizon, per capital the realistic net Sharpe and the share of the wanted
    trading that filled (the participation cap's bite), and the idealised Sharpe."""
    if not by_h:
        return [], []
    caps = [r["capital"] for r in next(iter(by_h.values()))["rows"]]
    money = lambda v: f"¥{v / 1e9:g} bn" if v >= 1e9 else f"¥{v / 1e6:g} M"
    head = ["horizon", *(money(c) for c in caps), "idealised"]
    body = [
        (
            f"{h}d",
            *(
                f"{r['sharpe']:.2f}"
                + (
                    ""
                    if r.get("filled_share_of_traded") is None
                    else f" ({100 * r['filled_share_of_traded']:.0f} % filled)"
                )
                for r in d["rows"]
            ),
            d.get("ideal_sharpe"),
        )
        for h, d in by_h.items()
    ]
    return head, body


def chart_rolling_sharpe(series: dict[str, pl.DataFrame], window: int, dpi: int) -> str:
    fig, ax = plt.subplots(figsize=(W, H1), dpi=dpi)
    drawn = False
    for name, d in series.items():
        if d is None or d.drop_nulls().height == 0:
            continue
        ax.plot(d[C.DATE].to_list(), d["sharpe"].to_list(), color=color(name), lw=1.6, label=name)
        drawn = True
    if not drawn:
        _empty(ax, f"fewer than {window} periods: no rolling Sharpe")
        return png(fig)
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_title(f"rolling {window}-period Sharpe (net)")
    _dates(ax)
    _legend_below(ax, 5)
    ax.grid(alpha=0.3)
    return png(fig)


def chart_rank_ic(daily: dict[str, pl.DataFrame], window: int, horizon: int, dpi: int) -> str:
    fig, ax = plt.subplots(figsize=(W, H1), dpi=dpi)
    first = next(iter(daily), None)
    m = daily.get(first) if first is not None else None
    if m is not None and m.height:
        ax.bar(
            m[C.DATE].to_list(),
            m["rank_ic"].to_list(),
            color=color(str(first)),
            alpha=0.3,
            width=1.0,
            label=f"{first} daily",
        )
    for name, d in daily.items():
        if d is not None and d.height:
            roll = d["rank_ic"].rolling_mean(window, min_samples=max(1, window // 2))
            ax.plot(d[C.DATE].to_list(), roll.to_list(), color=color(name), lw=2, label=f"{name} {window}-day mean")
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_title(f"daily RankIC, {horizon}-day horizon")
    _dates(ax)
    _legend(ax, loc="upper left", ncol=3)
    ax.grid(alpha=0.3)
    return png(fig)


def chart_ic_decay(decay: dict[str, pl.DataFrame], dpi: int) -> str:
    """Mean RankIC by horizon with its 95 % HAC band (Newey–West at 1 day, EWC beyond), one line per predictor
    (label -> `metrics.ic_decay`)."""
    fig, ax = plt.subplots(figsize=(W, H1), dpi=dpi)
    hs: list[int] = []
    for name, d in decay.items():
        if d is None or d.height == 0:
            continue
        x = d["horizon"].to_list()
        hs = sorted(set(hs) | set(x))
        style, c = (":" if "signal" in name else "-"), color(name)
        ax.plot(x, d["rank_ic_mean"].to_list(), style, marker="o", color=c, lw=1.8, label=name)
        ax.fill_between(x, d["lo"].to_list(), d["hi"].to_list(), color=c, alpha=0.1 if "signal" in name else 0.15)
    if not hs:
        _empty(ax, "no horizon scored")
        return png(fig)
    ax.set_xscale("log")
    ax.set_xticks(hs, [f"{h}d" for h in hs])
    ax.minorticks_off()
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_xlabel("horizon")
    ax.set_ylabel("mean daily RankIC")
    ax.set_title("IC decay, 95 % band (1d Newey–West, h > 1 EWC)")
    _legend(ax, loc="best")
    ax.grid(alpha=0.3)
    return png(fig)


def chart_monthly_heatmap(monthly: pl.DataFrame | None, dpi: int, title: str = "model") -> str:
    """Mean RankIC per calendar month (rows years, columns months) from `metrics.per_period(..., 'month')`."""
    import numpy as np

    years = [] if monthly is None else sorted({p[:4] for p in monthly["period"].to_list()})
    fig, ax = plt.subplots(figsize=(W, min(H1, 0.55 * len(years) + 1.5)), dpi=dpi)
    if not years:
        _empty(ax, "no scored month")
        return png(fig)
    assert monthly is not None  # it has years
    grid_ = np.full((len(years), 12), np.nan)
    for p, v in zip(monthly["period"].to_list(), monthly["rank_ic_mean"].to_list(), strict=True):
        grid_[years.index(p[:4]), int(p[5:7]) - 1] = np.nan if v is None else v
    lim = float(np.nanmax(np.abs(grid_))) or 1e-9
    im = ax.imshow(grid_, cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(len(years)):
        for j in range(12):
            if np.isfinite(grid_[i, j]):
                ax.text(j, i, f"{grid_[i, j]:.2f}", ha="center", va="center", fontsize=10)
    ax.set_xticks(
        range(12), ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], fontsize=9
    )
    ax.set_yticks(range(len(years)), years)
    ax.set_title(f"{title}: mean RankIC by month")
    ax.spines[:].set_visible(False)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    return png(fig)


def chart_by_group(groups: pl.DataFrame | None, dpi: int, title: str) -> str:
    """Horizontal bars of mean RankIC per group (`metrics.ic_by_group`), the t-stat at the bar's end."""
    n = 0 if groups is None else groups.height
    fig, ax = plt.subplots(figsize=(W, max(H1, 0.28 * n + 1.2)), dpi=dpi)
    if not n:
        _empty(ax, "no group column in the dataset")
        return png(fig)
    assert groups is not None  # it has rows
    g = groups.sort("rank_ic_mean")
    y = list(range(n))
    vals = g["rank_ic_mean"].to_list()
    ax.barh(y, vals, color=[MODEL_COLOR if v >= 0 else "#b42318" for v in vals])
    ax.set_yticks(y, g["group"].to_list())
    for yi, v, t in zip(y, vals, g["rank_ic_tstat"].to_list(), strict=True):
        ax.text(
            max(v, 0.0),
            yi,
            f" t {t:.1f}" if t is not None and math.isfinite(t) else "",
            va="center",
            fontsize=9,
            ha="left",
        )
    ax.axvline(0, color="#888", lw=0.8)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    ax.tick_params(axis="y", labelsize=9)
    fig.tight_layout()
    return png(fig)


def chart_signal(autocorr: pl.DataFrame | None, turnover: pl.DataFrame | None, dpi: int) -> str:
    """Rank autocorrelation and top/bottom bucket turnover by day."""
    fig, ax = plt.subplots(figsize=(W, H1), dpi=dpi)
    if (autocorr is None or autocorr.height == 0) and (turnover is None or turnover.height == 0):
        _empty(ax, "fewer than two prediction days")
        return png(fig)
    if autocorr is not None and autocorr.height:
        ax.plot(
            autocorr[C.DATE].to_list(),
            autocorr["autocorr"].to_list(),
            color=MODEL_COLOR,
            lw=1.6,
            label="rank autocorrelation (1 day)",
        )
    if turnover is not None and turnover.height:
        ax.plot(
            turnover[C.DATE].to_list(),
            turnover["top"].to_list(),
            color=REALISTIC_COLOR,
            lw=1.2,
            label="top-bucket turnover",
        )
        ax.plot(
            turnover[C.DATE].to_list(),
            turnover["bottom"].to_list(),
            color=BASE_COLOR,
            lw=1.2,
            label="bottom-bucket turnover",
        )
    ax.set_ylim(0, 1.05)
    ax.set_title("signal stability (model)")
    _dates(ax)
    _legend_below(ax, 2)
    ax.grid(alpha=0.3)
    return png(fig)


def chart_quantiles(quants: dict[str, pl.DataFrame], dpi: int) -> str:
    fig, ax = plt.subplots(figsize=(W, H1), dpi=dpi)
    width = 0.8 / max(1, len(quants))
    for i, (name, q) in enumerate(quants.items()):
        if q is None or q.height == 0:
            continue
        ax.bar(
            [k + (i - (len(quants) - 1) / 2) * width for k in q["quantile"].to_list()],
            (q["mean_return"] * 1e4).to_list(),
            width,
            color=color(name),
            label=name,
        )
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_xlabel("prediction quantile (1 = lowest)")
    ax.set_ylabel("mean target (bp)")
    ax.set_title("mean return per quantile")
    ax.grid(alpha=0.3, axis="y")
    _legend(ax)
    return png(fig)


def chart_cumulative_quantiles(cum: pl.DataFrame | None, dpi: int, horizon: int) -> str:
    fig, ax = plt.subplots(figsize=(W, H1), dpi=dpi)
    if cum is None or cum.height == 0:
        _empty(ax, "no scored day")
        return png(fig)
    qs = sorted(cum["quantile"].unique().to_list())
    cmap = LinearSegmentedColormap.from_list("q", ["#b42318", "#9a9a9a", "#1a7f37"])
    for k, q in enumerate(qs):
        d = cum.filter(pl.col("quantile") == q)
        ax.plot(
            d[C.DATE].to_list(),
            (100 * d["cum_return"]).to_list(),
            color=cmap(k / max(1, len(qs) - 1)),
            lw=1.6,
            label=f"Q{q}",
        )
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_ylabel("cumulative %")
    ax.set_title(f"cumulative {horizon}-day return by quantile (model)")
    _dates(ax)
    _legend(ax, loc="upper left", ncol=min(5, len(qs)))
    ax.grid(alpha=0.3)
    return png(fig)


def chart_importance(
    imps: dict[str, dict[str, float]], top: int, dpi: int, colors: dict[str, str] | None = None
) -> str:
    """One bar chart per importance source (`colors`: source -> its predictor's colour), side by side on a desktop;
    feature names longer than 30 characters are cut."""
    colors = colors or {}
    names = [k for k, v in imps.items() if v]
    if not names:
        fig, ax = plt.subplots(figsize=(W, H1 / 2), dpi=dpi)
        _empty(ax, "no feature importance available")
        return png(fig)
    imgs = []
    for name in names:
        items = sorted(imps[name].items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
        fig, ax = plt.subplots(figsize=(W, 0.34 * len(items) + 1.3), dpi=dpi)
        total = sum(abs(v) for v in imps[name].values()) or 1.0
        y = list(range(len(items)))  # one row per feature: labels never share a tick
        ax.barh(y, [v / total for _, v in items], color=colors.get(name, MODEL_COLOR))
        ax.set_yticks(y, [short(k) for k, _ in items])
        ax.set_ylim(-0.6, len(items) - 0.4)
        ax.set_title(f"{name} (share of total)")
        ax.tick_params(axis="y", labelsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.1f}%"))
        ax.grid(alpha=0.3, axis="x")
        fig.tight_layout()
        imgs.append(png(fig))
    return grid(*imgs)


def chart_training(curves: pl.DataFrame | None, dpi: int) -> str:
    """Loss and validation IC by epoch, side by side on a desktop."""
    (f1, ax1), (f2, ax2) = (plt.subplots(figsize=(W, H1), dpi=dpi) for _ in range(2))
    if curves is None or curves.height == 0:
        _empty(ax1, "no training log")
        _empty(ax2, "no training log")
        return grid(png(f1), png(f2))
    x = curves["epoch"].to_list()
    for col in (c for c in curves.columns if c.endswith("loss")):
        ax1.plot(x, curves[col].to_list(), marker="o", ms=3, label=col)
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_title("loss by epoch")
    ax1.set_xlabel("epoch")
    ax1.grid(alpha=0.3)
    _legend(ax1)
    ic_cols = [c for c in curves.columns if "ic" in c and c != "epoch" and not c.endswith("loss")]
    for col in ic_cols:
        ax2.plot(x, curves[col].to_list(), marker="o", ms=3, label=col)
    if not ic_cols:
        _empty(ax2, "no validation IC logged")
    else:
        ax2.axhline(0, color="#888", lw=0.8)
        ax2.set_title("validation IC by epoch")
        ax2.set_xlabel("epoch")
        ax2.grid(alpha=0.3)
        _legend(ax2, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below: the lines fill the plot
    return grid(png(f1), png(f2))


def chart_ic_distribution(ic: pl.Series | None, qq: pl.DataFrame | None, dpi: int, title: str) -> str:
    """Histogram of a daily RankIC series with its normal curve, and its normal Q-Q plot (`metrics.normal_qq`)."""
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(W, H1 + 0.3), dpi=dpi)
    v = np.asarray([] if ic is None else ic.drop_nulls().to_list(), dtype=float)
    if v.size < 2 or qq is None or qq.height == 0:
        _empty(ax1, "fewer than 2 scored days")
        _empty(ax2, "")
        return png(fig)
    c = color(title)
    ax1.hist(v, bins=min(40, max(10, v.size // 10)), density=True, color=c, alpha=0.55)
    mu, sd = float(v.mean()), float(v.std(ddof=1))
    if sd > 0:
        x = np.linspace(v.min(), v.max(), 200)
        ax1.plot(x, np.exp(-0.5 * ((x - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)), color="#333", lw=1.2)
    ax1.axvline(mu, color="#b42318", lw=1.2)
    ax1.set_title(f"histogram (mean {mu:.3f})", fontsize=11)
    ax1.set_xlabel("daily RankIC")
    ax1.xaxis.set_major_locator(MaxNLocator(4))
    t, sm = qq["theoretical"].to_list(), qq["sample"].to_list()
    ax2.scatter(t, sm, s=6, color=c, alpha=0.6)
    lo, hi = min(t[0], sm[0]), max(t[-1], sm[-1])
    ax2.plot([lo, hi], [lo, hi], color="#333", lw=1)
    ax2.set_title("normal Q-Q", fontsize=11)
    ax2.set_xlabel("normal quantile")
    ax2.set_ylabel("daily RankIC")
    ax2.xaxis.set_major_locator(MaxNLocator(4))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: distribution of the daily RankIC", fontsize=13)
    fig.tight_layout()
    return png(fig)


def chart_quantile_box(dq: pl.DataFrame | None, dpi: int, title: str) -> str:
    """Box plot of the per-day mean return of each prediction quantile (`metrics.daily_quantile_returns`), in bp,
    whiskers at the 5th and 95th percentiles, the mean as a dot."""
    fig, ax = plt.subplots(figsize=(W, H1), dpi=dpi)
    if dq is None or dq.height == 0:
        _empty(ax, "no scored day")
        return png(fig)
    qs = sorted(dq["quantile"].unique().to_list())
    data = [(dq.filter(pl.col("quantile") == k)["ret"] * 1e4).drop_nulls().to_list() for k in qs]
    cmap = LinearSegmentedColormap.from_list("q", ["#b42318", "#9a9a9a", "#1a7f37"])
    box = ax.boxplot(data, whis=(5, 95), showfliers=False, showmeans=True, patch_artist=True, widths=0.6)
    for k, patch in enumerate(box["boxes"]):
        patch.set_facecolor(cmap(k / max(1, len(qs) - 1)))
        patch.set_alpha(0.5)
    for m in box["means"]:
        m.set(marker="o", markerfacecolor="#111", markeredgecolor="#111", markersize=4)
    ax.set_xticks(range(1, len(qs) + 1), [f"Q{k}" for k in qs])
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_xlabel("prediction quantile (1 = lowest)")
    ax.set_ylabel("daily mean target (bp)")
    ax.set_title(f"return distribution per quantile ({title})")
    ax.grid(alpha=0.3, axis="y")
    return png(fig)


MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def chart_monthly_returns(monthly: pl.DataFrame | None, dpi: int, title: str) -> str:
    """Heatmap of a book's compounded monthly net return in % (`summary.monthly_returns`), years × months."""
    import numpy as np

    years = [] if monthly is None else sorted(set(monthly["year"].to_list()))
    fig, ax = plt.subplots(figsize=(W, min(4.2, 0.5 * len(years) + 1.5)), dpi=dpi)
    if not years:
        _empty(ax, "no backtest session")
        return png(fig)
    assert monthly is not None  # it has years
    grid_ = np.full((len(years), 12), np.nan)
    for y, m, r in monthly.select("year", "month", "ret").iter_rows():
        grid_[years.index(y), m - 1] = 100 * r
    lim = float(np.nanmax(np.abs(grid_))) or 1e-9
    im = ax.imshow(grid_, cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(len(years)):
        for j in range(12):
            if np.isfinite(grid_[i, j]):
                v = grid_[i, j]  # whole percents from 10 up: the text fits its cell at 10 pt
                ax.text(j, i, f"{v:.0f}" if abs(v) >= 10 else f"{v:.1f}", ha="center", va="center", fontsize=10)
    ax.set_xticks(range(12), list(MONTHS), fontsize=9)
    ax.set_yticks(range(len(years)), [str(y) for y in years])
    ax.set_title(f"{title}: monthly net return %")
    ax.spines[:].set_visible(False)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    return png(fig)


def chart_rolling_line(
    series: dict[str, pl.DataFrame], col: str, window: int, dpi: int, title: str, pct: bool = False
) -> str:
    """One line per predictor of `col` (`summary.rolling_vol` / `rolling_beta`), each in its predictor's colour."""
    fig, ax = plt.subplots(figsize=(W, H1), dpi=dpi)
    drawn = False
    for name, d in series.items():
        if d is None or d[col].drop_nulls().len() == 0:
            continue
        ax.plot(d[C.DATE].to_list(), ((100 if pct else 1) * d[col]).to_list(), color=color(name), lw=1.5, label=name)
        drawn = True
    if not drawn:
        _empty(ax, f"fewer than {window} sessions (or no benchmark): nothing to draw")
        return png(fig)
    if not pct:
        ax.axhline(0, color="#888", lw=0.8)
    ax.set_title(title)
    _dates(ax)
    _legend_below(ax, 5)
    ax.grid(alpha=0.3)
    return png(fig)


def kpis(items: Sequence[tuple[str, str, str | None]], kind: str = "") -> str:
    """Boxes of (label, value, css class of the value or None); `kind` styles the boxes (run, target)."""
    out = "".join(
        f'<div class="kpi {kind}"><b class="{c or ""}">{v}</b><span>{html.escape(label)}</span></div>'
        for label, v, c in items
    )
    return f'<div class="kpis">{out}</div>'


def page(title: str, subtitle: str, sections: Sequence[str], nav: Sequence[tuple[str, str]] = ()) -> str:
    links = ("<nav>" + "".join(f'<a href="#{sid}">{html.escape(t)}</a>' for sid, t in nav) + "</nav>") if nav else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><div class="note">{html.escape(subtitle)}</div>{links}'
        + "".join(sections)
        + "</body></html>"
    )


def neutral_view(rep: dict) -> str:
    """The report's risk-neutral section (`evaluation.neutral.report_tables`): each predictor's IC as it is and
    after per-day residualisation against the exposures, on the same rows, and each backtest book's net exposures."""
    nv = rep.get("neutral")
    if not nv:
        return '<p class="note">No neutral view: the dataset (or its exposure columns) was not found.</p>'
    ex = nv["exposures"]
    what = ", ".join(
        [*([f"{ex['sector']} dummies"] if ex["sector"] else []), *[f"log {c}" for c in ex["log"]], *ex["linear"]]
    )
    rows = [
        (
            f"{name} {h}d",
            v["raw"]["rank_ic_mean"],
            v["neutral"]["rank_ic_mean"],
            v["raw"]["rank_ic_std"],
            v["neutral"]["rank_ic_std"],
            v["raw"]["rank_icir"],
            v["neutral"]["rank_icir"],
            v["raw"]["rank_ic_tstat"],
            v["neutral"]["rank_ic_tstat"],
            v["raw"]["ic_mean"],
            v["neutral"]["ic_mean"],
            v["raw"]["n_days"],
        )
        for name, by_h in nv["ic"].items()
        for h, v in by_h.items()
    ]
    heads = ["", "RankIC raw", "neutral", "RankIC sd raw", "neutral", "RankICIR raw", "neutral"]
    heads += ["t raw", "neutral", "IC raw", "neutral", "days"]
    numeric = sorted({n for b in nv["book"].values() for n in b["numeric"]})
    book_rows = [
        (
            name,
            b["cohorts"],
            *[
                x
                for n in numeric
                for x in (b["numeric"].get(n, {}).get("mean"), b["numeric"].get(n, {}).get("mean_abs"))
            ],
            b["sector_mean_abs_total"],
            ", ".join(f"{s} {v['mean_abs']:.3f} ({v['mean']:+.3f})" for s, v in list(b["sectors"].items())[:3]),
        )
        for name, b in nv["book"].items()
    ]
    book_heads = ["book", "cohorts", *[f"{n} {k}" for n in numeric for k in ("mean", "|mean|")]]
    book_heads += ["Σ sectors |mean|", "largest sectors: |mean| (mean)"]
    return (
        f'<p class="note">Neutral: each day\'s predictions residualised by OLS against {html.escape(what)} of that '
        "day (sectors under min_sector_size stocks pooled, a missing exposure at its sector's mean); scored against "
        "the raw targets on the same rows. A predictor whose RankIC sd falls and ICIR rises after neutralising "
        "carried factor bets that paid nothing on average.</p>"
        + table(heads, rows)
        + "<h3>The backtest books' net factor exposures per cohort</h3>"
        + '<p class="note">Σ weight × exposure over a cohort\'s positions (signed weights per unit of its capital; '
        "size as the day's cross-sectional z-score of log market cap, so in sd units; each sector as its net "
        "weight); mean over cohorts and mean of the absolute value: a book that swings between sides has a small "
        "mean and a large |mean|.</p>"
        + (table(book_heads, book_rows) if book_rows else '<p class="note">No backtest book.</p>')
    )


BENCH_CAPTION = "Test RankIC per model and horizon: bars at the mean over seeds, whiskers ± sd, dots the seeds."


def bench_view(view: dict) -> str:
    """The model-zoo bench of the run's dataset (`gogooku3 bench`, `evaluation.bench.report_view`): its chart
    (bench.png, embedded) and its tables."""
    from pathlib import Path

    png_file = Path(view["png"])
    img = (
        f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(png_file.read_bytes()).decode("ascii")}">'
        if png_file.is_file()
        else ""
    )
    return (
        f'<p class="note">{html.escape(view["describe"])} Folder: {html.escape(view["dir"])}.</p>'
        + (grid(caption(img, BENCH_CAPTION)) if img else "")
        + table(view["headers"], view["rows"])
        + f'<p class="note">{html.escape(view["note"])}</p>'
        + "<h3>Paired HAC t of the seed-averaged daily RankIC, every horizon</h3>"
        + table(view["paired_headers"], view["paired_rows"])
    )
