"""The bench's figures: several training runs of the same models on the same folds, one per seed, in one table.

    aggregate(runs, ...) -> dict (bench.json)   every figure per seed, mean ± sd over seeds, seed-averaged tests
    markdown(bench) (bench.md) · figure(bench) (bench.png) · find(bench_dir, fingerprint) (for the report)

Per seed, every score is the run's own comparison (RUN/comparison.json: `evaluation.compare` on the rows all of that
run's predictors scored, pooled over its folds' test days), its facts and fit durations (RUN/metrics.json), and the
realistic book's net Sharpe (`pipelines.full.backtest_run`). Over seeds: mean and sample sd (ddof 1) of each figure.

Paired t-stats across seeds are computed on the seed-averaged daily RankIC series: each model's daily RankIC on the
rows every (model, seed) frame predicted (`compare.align`), averaged over the seeds day by day, then
`metrics.paired_comparison` (HAC) of model − other. Why: the question is whether a model, whatever its seed, beats
another; averaging the daily series first removes the seed noise of both sides before the one HAC test, which keeps
the day-to-day dependence it corrects for, and gives a statistic with a known reference distribution. A mean of per-seed
t-stats has none (it grows with nothing but more seeds of the same days, and each seed's t counts the seed noise as
signal noise). The per-seed t-stats (each run's comparison.json) are kept beside it as mean ± sd: the seed spread.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import DataError
from gogooku3.core.io import read_json, write_bytes, write_json, write_text
from gogooku3.evaluation import metrics
from gogooku3.evaluation.compare import Comparison, align, daily
from gogooku3.evaluation.results import TrainResult
from gogooku3.predictors import DEEP

log = logging.getLogger(__name__)

BENCH_JSON, BENCH_MD, BENCH_PNG = "bench.json", "bench.md", "bench.png"


@dataclass
class SeedRun:
    """One seed's training run of the bench and the backtest report of each of its predictors."""

    seed: int
    run_dir: Path
    backtests: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> `backtest_frame`'s report
    wall_s: float = 0.0


# ---- per seed ---------------------------------------------------------------------------------------------------
def _t(comp: Comparison, a: str, b: str | None, h: str) -> float | None:
    """The paired HAC t of daily RankIC a − b at `h` in a comparison (stored as a_vs_b or, negated, b_vs_a)."""
    if b is None or a == b:
        return None
    if (p := comp.pair(a, b).get(h)) is not None:
        return p["t_stat"]
    if (p := comp.pair(b, a).get(h)) is not None:
        return -p["t_stat"]
    return None


def seed_figures(run: SeedRun, oracle: str | None) -> dict[str, Any]:
    """Every model's figures in one seed's run: RankIC, RankICIR, HAC t and the paired t vs the reference and the
    product per horizon, the fraction of the oracle's RankIC, the realistic and ideal books' net Sharpe, parameters,
    fit seconds (summed over folds) and the store fingerprint of a predictor served from one (LightGBM)."""
    comp = Comparison.load(run.run_dir / "comparison.json")
    result = TrainResult.load(run.run_dir / "metrics.json")
    hs = [str(h) for h in comp.horizons]
    ref, product = comp.reference, comp.product
    models: dict[str, Any] = {}
    for name in comp.names:
        ev = comp.pooled[name]
        facts = [f.predictors.get(name) or {} for f in result.folds]
        fits = [v for k, v in result.durations_s.items() if k.startswith(f"fit_{name}_fold")]
        params = [int(f["n_params"]) for f in facts if f.get("n_params") is not None]
        bt = run.backtests.get(name) or {}
        fps = sorted({str(f["fingerprint"]) for f in facts if f.get("fingerprint")})
        models[name] = {
            "rank_ic": {h: ev[h]["rank_ic_mean"] for h in hs if h in ev},
            "rank_icir": {h: ev[h]["rank_icir"] for h in hs if h in ev},
            "rank_ic_tstat": {h: ev[h]["rank_ic_tstat"] for h in hs if h in ev},
            "n_days": {h: ev[h]["n_days"] for h in hs if h in ev},
            "t_vs_reference": {h: _t(comp, name, ref, h) for h in hs},
            "t_vs_product": {h: _t(comp, name, product, h) for h in hs},
            "oracle_fraction": {
                h: ev[h]["rank_ic_mean"] / o
                for h in hs
                if oracle in comp.pooled
                and h in ev
                and (o := comp.pooled[oracle].get(h, {}).get("rank_ic_mean"))
                and math.isfinite(o)
            },
            "net_sharpe": (bt.get("realistic") or {}).get("sharpe"),
            "book_horizon": (bt.get("realistic") or {}).get("horizon"),
            "net_sharpe_ideal": (bt.get("ideal") or {}).get("sharpe"),
            "n_params": max(params) if params else None,
            "fit_seconds": round(sum(fits), 3) if fits else None,
            "store_fingerprint": fps[0] if len(fps) == 1 else (fps or None),
            "reused_from_store": [bool(f["reused"]) for f in facts if "reused" in f] or None,
        }
    return {
        "seed": run.seed,
        "run_dir": str(run.run_dir),
        "dataset": asdict(result.dataset),
        "wall_s": round(run.wall_s, 1),
        "product": product,
        "reference": ref,
        "horizons": [int(h) for h in hs],
        "rows": comp.rows["n_common"],
        "folds": [f.fold.get("index") for f in result.folds],
        "test_ranges": [f.test_range for f in result.folds],
        "durations_s": result.durations_s,
        "models": models,
    }


# ---- over seeds -------------------------------------------------------------------------------------------------
def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """mean, sample sd (ddof 1; None under 2 values), min, max and the values of the finite ones among `values`."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    mean = sum(xs) / n if n else None
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 and mean is not None else None
    return {
        "mean": mean,
        "sd": sd,
        "min": min(xs) if xs else None,
        "max": max(xs) if xs else None,
        "n": n,
        "values": xs,
    }


PER_HORIZON = ("rank_ic", "rank_icir", "rank_ic_tstat", "t_vs_reference", "t_vs_product", "oracle_fraction")
SCALARS = ("net_sharpe", "net_sharpe_ideal", "n_params", "fit_seconds")


def summary(seeds: Sequence[dict[str, Any]], models: Sequence[str], horizons: Sequence[int]) -> dict[str, Any]:
    """model -> figure -> (horizon ->) `spread` over the seeds that fitted the model."""
    out: dict[str, Any] = {}
    for name in models:
        runs = [s["models"][name] for s in seeds if name in s["models"]]
        row: dict[str, Any] = {"seeds": len(runs)}
        for k in PER_HORIZON:
            row[k] = {str(h): spread([r[k].get(str(h)) for r in runs]) for h in horizons}
        for k in SCALARS:
            row[k] = spread([r[k] for r in runs])
        out[name] = row
    return out


def _frames(runs: Sequence[SeedRun], models: Sequence[str]) -> dict[str, pl.DataFrame]:
    frames = {}
    for r in runs:
        for name in models:
            f = r.run_dir / "predictions" / name / "test.parquet"
            if not f.is_file():
                raise DataError(f"{f}: missing; the seed {r.seed} run has no test predictions of {name}")
            frames[f"{name}@{r.seed}"] = pl.read_parquet(f)
    return frames


def seed_averaged(
    runs: Sequence[SeedRun], models: Sequence[str], horizons: Sequence[int], others: Sequence[str | None]
) -> dict[str, Any]:
    """RankIC and paired HAC t-stats of the seed-averaged daily RankIC series (see the module docstring): every
    (model, seed) frame on the rows all of them predicted, daily RankIC per frame, the mean over seeds per day;
    `pooled` model -> horizon -> `metrics.summarize_ic`, `paired` "model_vs_other" -> horizon ->
    `metrics.paired_comparison` (model − other) for each of `others` (the reference, the product, the deep model)."""
    hs = [int(h) for h in horizons]
    aligned, rows = align(_frames(runs, models), hs)
    per_frame = daily(aligned, hs)
    avg: dict[str, dict[int, pl.DataFrame]] = {}
    n = len(runs)
    for name in models:
        avg[name] = {}
        for h in hs:
            parts = [per_frame[f"{name}@{r.seed}"].get(h) for r in runs]
            if any(p is None for p in parts):
                continue
            avg[name][h] = (
                pl.concat([p.select(C.DATE, "ic", "rank_ic", "n", "constant") for p in parts if p is not None])
                .group_by(C.DATE)
                .agg(
                    pl.col("ic").mean(),
                    pl.col("rank_ic").mean(),
                    pl.col("n").first(),
                    pl.col("constant").all(),
                    k=pl.len(),
                )
                .filter(pl.col("k") == n)  # a day every seed scored
                .drop("k")
                .sort(C.DATE)
            )
    pooled = {name: {str(h): metrics.summarize_ic(d, h) for h, d in by_h.items()} for name, by_h in avg.items()}
    paired: dict[str, dict[str, Any]] = {}
    for name in models:
        for other in dict.fromkeys(o for o in others if o is not None and o in avg and o != name):
            paired[f"{name}_vs_{other}"] = {
                str(h): metrics.paired_comparison(avg[name][h], avg[other][h], horizon=h)
                for h in hs
                if h in avg[name] and h in avg[other]
            }
    return {
        "rows": {"n_common": rows["n_common"], "frames": {k: v["kept"] for k, v in rows["frames"].items()}},
        "pooled": pooled,
        "paired": paired,
    }


def aggregate(
    runs: Sequence[SeedRun],
    *,
    models: Sequence[str],
    oracle: str | None,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """bench.json: per seed (`seed_figures`), the spread over seeds (`summary`) and the seed-averaged tests
    (`seed_averaged`) of the models every seed's run scored; `models` the bench's list (the ones not fitted anywhere
    are listed as absent). The dataset is the runs' own (RUN/metrics.json), one version for every seed."""
    if not runs:
        raise DataError("bench: no run to aggregate")
    seeds = [seed_figures(r, oracle) for r in runs]
    versions = {s["dataset"]["fingerprint"] for s in seeds}
    if len(versions) != 1:
        raise DataError(f"bench: the seeds' runs trained on different datasets ({', '.join(sorted(versions))})")
    first = seeds[0]
    horizons, product, reference = first["horizons"], first["product"], first["reference"]
    scored = [m for m in models if all(m in s["models"] for s in seeds)]
    partial = [m for m in models if m not in scored and any(m in s["models"] for s in seeds)]
    absent = [m for m in models if m not in scored and m not in partial]
    if partial:
        log.warning("bench: %s scored by some seeds' runs only: left out of the tables", ", ".join(partial))
    fps = {
        m: sorted({str(s["models"][m]["store_fingerprint"]) for s in seeds})
        for m in scored
        if any(s["models"][m]["store_fingerprint"] for s in seeds)
    }
    return {
        "dataset": first["dataset"],
        "settings": dict(settings),
        "seeds": [s["seed"] for s in seeds],
        "horizons": horizons,
        "product": product,
        "reference": reference,
        "oracle": oracle if oracle in scored else None,
        "models": scored,
        "absent": absent,
        "partial": partial,
        # a model served from a content-addressed store: one fingerprint over every seed = one fit, reused
        "store_fingerprints": fps,
        "summary": summary(seeds, scored, horizons),
        "seed_averaged": seed_averaged(runs, scored, horizons, [reference, product, DEEP]),
        "per_seed": seeds,
    }


# ---- the table, the chart, the files ------------------------------------------------------------------------------
def _num(v: float | None, digits: int) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def cell(s: Mapping[str, Any] | None, digits: int = 4, pct: bool = False) -> str:
    """'mean ± sd' of a `spread` ('mean' alone with one value, '–' with none); `pct`: as a percentage."""
    if not s or s.get("mean") is None:
        return "–"
    k = 100.0 if pct else 1.0
    unit = " %" if pct else ""
    mean = _num(k * s["mean"], 1 if pct else digits)
    return mean + unit if s.get("sd") is None else f"{mean} ± {_num(k * s['sd'], 1 if pct else digits)}{unit}"


def _params(s: Mapping[str, Any]) -> str:
    m = s.get("mean")
    return "–" if m is None else f"{m:,.0f}"


def order(bench: Mapping[str, Any]) -> list[str]:
    """The models in table order: the product, the reference, then the bench's order."""
    first = [bench["product"], bench["reference"]]
    return [m for m in dict.fromkeys([*first, *bench["models"]]) if m in bench["summary"]]


def _paired_cell(avg: Mapping[str, Any], s: Mapping[str, Any], name: str, other: str | None, key: str, h: str) -> str:
    """'t_avg (mean ± sd)': the seed-averaged series' paired t of name − other, the per-seed t's spread in brackets."""
    if other is None or other == name:
        return "–"
    t = (avg.get(f"{name}_vs_{other}") or {}).get(h, {}).get("t_stat")
    return f"{_num(t, 2)} ({cell(s[key][h], 2)})"


def table(bench: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The headline table: one row per model (the product and reference first), cells mean ± sd over seeds; the
    paired t cells are the seed-averaged series' t with the per-seed mean ± sd in brackets."""
    hs = [str(h) for h in bench["horizons"]]
    h0 = hs[0]
    ref, product, oracle = bench["reference"], bench["product"], bench["oracle"]
    avg = bench["seed_averaged"]["paired"]
    headers = [
        "model",
        *[f"RankIC {h}d" for h in hs],
        f"RankICIR {h0}d",
        f"HAC t {h0}d",
        f"paired t vs {ref} {h0}d",
        f"paired t vs {product} {h0}d",
        f"% of {oracle} {h0}d" if oracle else "% of oracle",
        f"net Sharpe realistic {_book_horizon(bench)}d",
        "params",
        "fit s",
    ]
    rows = []
    for name in order(bench):
        s = bench["summary"][name]
        rows.append(
            [
                name,
                *[cell(s["rank_ic"][h]) for h in hs],
                cell(s["rank_icir"][h0], 3),
                cell(s["rank_ic_tstat"][h0], 2),
                _paired_cell(avg, s, name, ref, "t_vs_reference", h0),
                _paired_cell(avg, s, name, product, "t_vs_product", h0),
                cell(s["oracle_fraction"][h0], pct=True) if oracle else "–",
                cell(s["net_sharpe"], 2),
                _params(s["n_params"]),
                cell(s["fit_seconds"], 0),
            ]
        )
    return headers, rows


def paired_table(bench: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Paired HAC t of the seed-averaged daily RankIC at every horizon, against the reference, the product and the
    deep model (a model's row: model − other)."""
    hs = [str(h) for h in bench["horizons"]]
    others = [o for o in (bench["reference"], bench["product"], DEEP if DEEP in bench["models"] else None) if o]
    others = list(dict.fromkeys(others))
    headers = ["model", *[f"vs {o} {h}d" for o in others for h in hs]]
    avg = bench["seed_averaged"]["paired"]
    rows = [
        [name, *[_num((avg.get(f"{name}_vs_{o}") or {}).get(h, {}).get("t_stat"), 2) for o in others for h in hs]]
        for name in order(bench)
    ]
    return headers, rows


def _book_horizon(bench: Mapping[str, Any]) -> str:
    hs = {m.get("book_horizon") for s in bench["per_seed"] for m in s["models"].values()} - {None}
    return "/".join(str(h) for h in sorted(hs)) or "?"


def folds_text(folds: Any) -> str:
    """bench.folds in words."""
    return {None: "the last fold", "all": "every fold", 1: "the last fold"}.get(folds, f"the last {folds} folds")


def _md(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def describe(bench: Mapping[str, Any]) -> str:
    """One paragraph: what was benched on what (dataset, seeds, folds, rows, test days, wall time)."""
    first = bench["per_seed"][0]
    st = bench["settings"]
    ranges = [r for r in first["test_ranges"] if r]
    span = f"{ranges[0][0]} – {ranges[-1][1]}" if ranges else "?"
    days = first["models"][bench["product"]]["n_days"].get(str(bench["horizons"][0])) if bench["product"] else None
    absent = f" Not fitted here: {', '.join(bench['absent'])}." if bench["absent"] else ""
    return (
        f"Dataset {bench['dataset'].get('path')} (fingerprint {bench['dataset'].get('fingerprint')}); "
        f"{len(bench['seeds'])} seeds ({', '.join(map(str, bench['seeds']))}), {folds_text(st.get('folds'))} "
        f"(index {', '.join(map(str, first['folds']))}), test days pooled over the folds ({span}, {days} days "
        f"scored at {bench['horizons'][0]}d), {first['rows']:,} (Date, Code) rows every model predicted (seed "
        f"{first['seed']}); wall time {st.get('wall_s', '?')} s.{absent}"
    )


NOTE = (
    "Cells: mean ± sd (ddof 1) over seeds of each seed run's own figure (RUN/comparison.json: pooled test days, the "
    "rows every model of that run predicted). Paired t: HAC t of the seed-averaged daily RankIC series of model − "
    "other on the rows every (model, seed) predicted; in brackets the per-seed t's mean ± sd. HAC: Newey–West at 1 "
    "day, EWC beyond (overlapping labels). % of oracle: RankIC / the oracle's RankIC. Net Sharpe: the realistic "
    "book (TSE costs, portfolio.horizon). params: the predictor's own count where it reports one. fit s: seconds "
    "fitting, summed over folds (a predictor served from its store reports the look-up)."
)


def markdown(bench: Mapping[str, Any]) -> str:
    """bench.md: the headline table, the paired t-stats at every horizon and each seed's first-horizon RankIC."""
    h0 = str(bench["horizons"][0])
    per_seed = [
        [name, *[_num(s["models"][name]["rank_ic"].get(h0), 4) for s in bench["per_seed"]]] for name in order(bench)
    ]
    fps = bench["store_fingerprints"]
    reuse = "".join(
        f"- {m}: {'one fit (store ' + v[0] + '), reused by every seed' if len(v) == 1 else 'refitted per seed'}\n"
        for m, v in fps.items()
    )
    return (
        "# Model zoo benchmark (`gogooku3 bench`)\n\n"
        + describe(bench)
        + "\n\n"
        + _md(*table(bench))
        + "\n"
        + NOTE
        + "\n\n## Paired HAC t of the seed-averaged daily RankIC, every horizon\n\n"
        + _md(*paired_table(bench))
        + f"\n## RankIC {h0}d of each seed\n\n"
        + _md(["model", *[f"seed {s}" for s in bench["seeds"]]], per_seed)
        + ("\n## Fits served from a store\n\n" + reuse if reuse else "")
    )


def figure(bench: Mapping[str, Any], dpi: int = 100):
    """RankIC per model and horizon: bars at the mean over seeds, ± sd whiskers, one dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = order(bench)
    hs = [str(h) for h in bench["horizons"]]
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(models) * max(1, len(hs)) / 2 + 2), 3.6), dpi=dpi)
    width = 0.8 / max(1, len(hs))
    colors = ("#1f5fa8", "#d9822b", "#7b3fa0", "#2a9d8f", "#c0392b", "#8d6e63")
    for j, h in enumerate(hs):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(models))]
        s = [bench["summary"][m]["rank_ic"][h] for m in models]
        means = [v["mean"] if v["mean"] is not None else float("nan") for v in s]
        sds = [v["sd"] or 0.0 for v in s]
        ax.bar(xs, means, width * 0.9, yerr=sds, capsize=2, color=colors[j % len(colors)], alpha=0.75, label=f"{h}d")
        for x, v in zip(xs, s, strict=True):
            ax.plot([x] * len(v["values"]), v["values"], "o", ms=3, color="#111", alpha=0.7)
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set_ylabel("test RankIC")
    ax.set_title(f"RankIC per model: mean ± sd over {len(bench['seeds'])} seeds (dots: seeds)")
    ax.legend(ncol=len(hs), fontsize=9, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def write(bench: dict[str, Any], folder: Path, dpi: int = 100) -> dict[str, Path]:
    """bench.json, bench.md and bench.png in `folder` (atomic writes)."""
    import io

    import matplotlib.pyplot as plt

    fig = figure(bench, dpi)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return {
        "json": write_json(folder / BENCH_JSON, bench),
        "md": write_text(folder / BENCH_MD, markdown(bench)),
        "png": write_bytes(folder / BENCH_PNG, buf.getvalue()),
    }


def find(bench_dir: str | Path, dataset_fingerprint: str) -> tuple[Path, dict[str, Any]] | None:
    """The newest bench under `bench_dir` (<timestamp>/bench.json) of the dataset with this fingerprint, or None."""
    root = Path(bench_dir)
    if not root.is_dir():
        return None
    for d in sorted((p for p in root.iterdir() if p.is_dir() and not p.is_symlink()), reverse=True):
        f = d / BENCH_JSON
        if not f.is_file():
            continue
        try:
            b = read_json(f)
        except (OSError, DataError) as e:
            log.warning("bench: %s unreadable (%s); skipped", f, e)
            continue
        if (b.get("dataset") or {}).get("fingerprint") == dataset_fingerprint:
            return d, b
    return None


def report_view(bench_dir: str | Path, dataset_fingerprint: str) -> dict[str, Any] | None:
    """What a run's report shows of the newest bench on its dataset (`find`): its folder, chart file, description and
    tables; None when there is none."""
    found = find(bench_dir, dataset_fingerprint)
    if found is None:
        return None
    folder, bench = found
    try:
        headers, rows = table(bench)
        p_headers, p_rows = paired_table(bench)
        text = describe(bench)
    except (KeyError, TypeError, IndexError) as e:  # a bench.json of another version: the report goes on without it
        log.warning("report: bench %s not shown (%s: %s)", folder, type(e).__name__, e)
        return None
    return {
        "dir": str(folder),
        "png": str(folder / BENCH_PNG),
        "describe": text,
        "note": NOTE,
        "headers": headers,
        "rows": rows,
        "paired_headers": p_headers,
        "paired_rows": p_rows,
    }
