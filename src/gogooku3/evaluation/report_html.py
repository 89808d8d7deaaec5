"""Self-contained HTML for a run report: matplotlib PNGs embedded as base64, inline CSS, no network access."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

MODEL_COLOR, BASE_COLOR = "#1f5fa8", "#d9822b"
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1320px;color:#1d2733;
background:#f6f7f9}
h1{font-size:26px;margin:0 0 4px} h2{font-size:19px;border-bottom:2px solid #1f5fa8;padding-bottom:4px;margin-top:34px}
section{background:#fff;border-radius:8px;padding:14px 22px 18px;margin:14px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
table{border-collapse:collapse;font-size:13px;margin:8px 0} th,td{padding:4px 10px;border-bottom:1px solid #e3e6ea;
text-align:right} th{background:#eef2f7} td:first-child,th:first-child{text-align:left}
.kpis{display:flex;flex-wrap:wrap;gap:12px} .kpi{background:#eef2f7;border-radius:6px;padding:8px 14px;min-width:150px}
.kpi b{display:block;font-size:20px} .kpi span{font-size:12px;color:#556} .ok{color:#1a7f37} .bad{color:#b42318}
.note{font-size:12px;color:#556} img{max-width:100%} pre{font-size:11px;background:#f3f4f6;padding:8px;
overflow:auto;max-height:420px}
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


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], pct_cols: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v, pct=i in pct_cols)}</td>" for i, v in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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


def chart_equity(series: dict[str, pl.DataFrame], dpi: int) -> str:
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 6.4), dpi=dpi, sharex=True,
                                   gridspec_kw={"height_ratios": [2, 1]})
    for name, color in (("model", MODEL_COLOR), ("baseline", BASE_COLOR)):
        d = series.get(name)
        if d is None or d.height == 0:
            continue
        x = d["Date"].to_list()
        ax1.plot(x, (d["equity"] - 1.0).to_list(), color=color, label=f"{name} net")
        ax2.fill_between(x, d["drawdown"].to_list(), 0, color=color, alpha=0.35, label=name)
    ax1.axhline(0, color="#888", lw=0.8)
    ax1.set_ylabel("cumulative net return")
    ax1.legend(loc="upper left")
    ax1.grid(alpha=0.3)
    ax2.set_ylabel("drawdown")
    ax2.grid(alpha=0.3)
    _dates(ax2)
    return png(fig)


def chart_rank_ic(daily: dict[str, pl.DataFrame], window: int, horizon: int, dpi: int) -> str:
    fig, ax = plt.subplots(figsize=(12, 4), dpi=dpi)
    m = daily.get("model")
    if m is not None and m.height:
        ax.bar(m["Date"].to_list(), m["rank_ic"].to_list(), color=MODEL_COLOR, alpha=0.3, width=1.0,
               label="model daily RankIC")
    for name, color in (("model", MODEL_COLOR), ("baseline", BASE_COLOR)):
        d = daily.get(name)
        if d is not None and d.height:
            roll = d["rank_ic"].rolling_mean(window, min_samples=max(1, window // 2))
            ax.plot(d["Date"].to_list(), roll.to_list(), color=color, lw=2, label=f"{name} {window}-day mean")
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_title(f"daily RankIC, {horizon}-day horizon")
    _dates(ax)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return png(fig)


def chart_by_horizon(evals: dict[str, dict], dpi: int) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), dpi=dpi)
    hs = sorted({h for e in evals.values() for h in e}, key=int)
    for ax, key, title in zip(axes, ("ic_mean", "rank_ic_mean"), ("IC", "RankIC")):
        width = 0.38
        for i, (name, color) in enumerate((("model", MODEL_COLOR), ("baseline", BASE_COLOR))):
            e = evals.get(name) or {}
            vals = [e.get(h, {}).get(key, float("nan")) for h in hs]
            ax.bar([j + (i - 0.5) * width for j in range(len(hs))], vals, width, color=color, label=name)
        ax.set_xticks(range(len(hs)), [f"{h}d" for h in hs])
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_title(f"mean daily {title} by horizon")
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
    return png(fig)


def chart_quantiles(quants: dict[str, pl.DataFrame], dpi: int) -> str:
    fig, ax = plt.subplots(figsize=(12, 3.8), dpi=dpi)
    width = 0.38
    for i, (name, color) in enumerate((("model", MODEL_COLOR), ("baseline", BASE_COLOR))):
        q = quants.get(name)
        if q is None or q.height == 0:
            continue
        ax.bar([k + (i - 0.5) * width for k in q["quantile"].to_list()], (q["mean_return"] * 1e4).to_list(), width,
               color=color, label=name)
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_xlabel("prediction quantile (1 = lowest)")
    ax.set_ylabel("mean target (bp)")
    ax.set_title("quantile returns")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return png(fig)


def chart_importance(imps: dict[str, dict[str, float]], top: int, dpi: int) -> str:
    names = [k for k, v in imps.items() if v]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(12, 0.25 * top + 1.5), dpi=dpi, squeeze=False)
    if not names:
        _empty(axes[0][0], "no feature importance available")
    for ax, name in zip(axes[0], names):
        items = sorted(imps[name].items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
        total = sum(abs(v) for v in imps[name].values()) or 1.0
        ax.barh([k for k, _ in items], [v / total for _, v in items],
                color=BASE_COLOR if "lightgbm" in name.lower() else MODEL_COLOR)
        ax.set_title(f"{name} (share of total)")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return png(fig)


def chart_training(curves: pl.DataFrame | None, dpi: int) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8), dpi=dpi)
    if curves is None or curves.height == 0:
        _empty(ax1, "no training log")
        _empty(ax2, "no training log")
        return png(fig)
    x = curves["epoch"].to_list()
    for col in (c for c in curves.columns if c.endswith("loss")):
        ax1.plot(x, curves[col].to_list(), marker="o", ms=3, label=col)
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_title("loss by epoch")
    ax1.set_xlabel("epoch")
    ax1.grid(alpha=0.3)
    ax1.legend()
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
        ax2.legend(fontsize=8)
    return png(fig)


def kpis(items: Sequence[tuple[str, str, str | None]]) -> str:
    """Boxes of (label, value, css class or None)."""
    out = "".join(f'<div class="kpi"><b class="{c or ""}">{v}</b><span>{html.escape(label)}</span></div>'
                  for label, v, c in items)
    return f'<div class="kpis">{out}</div>'


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><div class=\"note\">{html.escape(subtitle)}</div>"
            + "".join(sections) + "</body></html>")
