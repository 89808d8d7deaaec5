"""Shared fixtures: hand-made tiny raw tables, the synthetic market (30 stocks × 300 days) and its built dataset."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.calendar import TradingCalendar
from gogooku3.core.io import write_parquet
from gogooku3.features.manifest import FeatureManifest, manifest_path

# The tiny network every training test fits (seconds a fit on the planted dataset), its split and its fit; test
# modules import these (`from conftest import TINY_NET`) and add what they test.
TINY_NET = [
    "labels.horizons=[1,5]",
    "model.window=10",
    "model.hidden=16",
    "model.head_hidden=8",
    "model.graph.window=10",
    "model.graph.min_obs=5",
    "train.warmup_steps=2",
    "trainer.progress_bar=false",
    "trainer.num_threads=1",
]
TINY_SPLIT = ["split.min_train_days=60", "split.n_splits=2", "split.val_days=12"]
TINY_FIT = ["train.max_epochs=2", "train.limit_train_batches=8", "train.ensemble=1"]


@pytest.fixture(autouse=True, scope="module")
def _own_working_folder(tmp_path_factory):
    """Every test module starts in an empty folder of its own (before its own fixtures, which may move elsewhere),
    so the config's relative defaults (data/raw, output/, runs/) never read or write the checkout: a `make demo` run
    there (its raw tables, borrow lists, datasets) must not change any test's outcome."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        yield


def make_mini_tables(n_stocks: int = 6, n_days: int = 160, seed: int = 0, start: str = "2023-06-01") -> dict:
    """Every raw table for a few random-walk stocks on real XTKS sessions; stock index 1 has a 1:2 split on its
    81st row (AdjFactor 0.5; raw prices halve, adjusted ones are continuous)."""
    cal = TradingCalendar.from_exchange("XTKS", start, "2026-12-31")
    sess = cal.sessions[:n_days]
    rng = np.random.default_rng(seed)
    rows = []
    codes = [f"{1300 + 10 * i}0" for i in range(n_stocks)]
    for i, code in enumerate(codes):
        r = rng.normal(0.0005, 0.02, n_days)
        adj = 100 * (1 + i) * np.exp(np.cumsum(r))
        hi = adj * (1 + np.abs(rng.normal(0, 0.01, n_days)))
        lo = adj * (1 - np.abs(rng.normal(0, 0.01, n_days)))
        op = np.clip(adj * (1 + rng.normal(0, 0.005, n_days)), lo, hi)
        vo = rng.lognormal(10, 0.5, n_days)
        af = np.ones(n_days)
        k = np.ones(n_days)  # raw = adj / k(t); k(t) = prod_{s>t} AF(s)
        if i == 1 and n_days > 80:
            af[80] = 0.5
            k[:80] = 0.5
        raw = adj / k
        df = pl.DataFrame(
            {
                "Date": sess,
                "Code": code,
                "O": op / k,
                "H": hi / k,
                "L": lo / k,
                "C": raw,
                "Vo": vo * k,
                "Va": raw * vo * k,
                "AdjFactor": af,
                "AdjO": op,
                "AdjH": hi,
                "AdjL": lo,
                "AdjC": adj,
                "AdjVo": vo,
            }
        )
        rows.append(df)
    dq = pl.concat(rows)
    listed = pl.DataFrame(
        {
            "Date": [sess[0]] * n_stocks,
            "Code": codes,
            "CoName": codes,
            "S17": ["1"] * n_stocks,
            "S33": ["0050" if i < 3 else "3050" for i in range(n_stocks)],
            "Mkt": [("0111", "0112", "0113")[i % 3] for i in range(n_stocks)],
            "ScaleCat": ["x"] * n_stocks,
        }
    )
    tc = np.cumsum(rng.normal(0, 0.01, n_days))
    C = 2000 * np.exp(tc)
    topix = pl.DataFrame({"Date": sess, "O": C, "H": C * 1.005, "L": C * 0.995, "C": C})
    # statements: each stock quarterly
    st = []
    for i, code in enumerate(codes):
        for q, di in enumerate(range(5, n_days, 40)):
            st.append(
                {
                    "DiscDate": sess[di],
                    "DiscTime": ["13:00:00", "15:30:00", None, "15:00:00"][q % 4],
                    "Code": code,
                    "CurPerType": ["1Q", "2Q", "3Q", "FY"][q % 4],
                    "CurFYSt": dt.date(2023, 4, 1) if q < 4 else dt.date(2024, 4, 1),
                    "Sales": 1000.0 + 10 * q + i,
                    "OP": 100.0 + q,
                    "NP": 60.0 + q,
                    "EPS": 10.0,
                    "Eq": 5000.0,
                    "TA": 10000.0,
                    "FOP": 400.0 + q,
                    "FNP": 240.0,
                    "FEPS": 40.0,
                    "FDivAnn": 10.0,
                    "ShOut": 1e6 * (i + 1),
                    "ChgAcEst": "false",
                    "RetroRst": "true" if q == 2 else "false",
                }
            )
    statements = pl.DataFrame(st)
    weeks = sess.filter(pl.Series([d.weekday() == 3 for d in sess.to_list()]))
    inv = []
    for sec in ("TSEPrime", "TSEStandard", "TSEGrowth"):
        for pub in weeks.to_list():
            row = {
                "PubDate": pub,
                "StDate": pub - dt.timedelta(days=10),
                "EnDate": pub - dt.timedelta(days=6),
                "Section": sec,
            }
            for inv_ in ("Frgn", "Ind", "Prop", "Brk", "TrstBnk", "InvTr", "Tot"):
                s_, b_ = rng.uniform(100, 200), rng.uniform(100, 200)
                row.update({f"{inv_}Sell": s_, f"{inv_}Buy": b_, f"{inv_}Tot": s_ + b_, f"{inv_}Bal": b_ - s_})
            inv.append(row)
    investor = pl.DataFrame(inv)
    mg = []
    for code in codes:
        for pub in weeks.to_list():
            mg.append(
                {
                    "PubDate": pub,
                    "Date": pub - dt.timedelta(days=6),
                    "Code": code,
                    "ShrtVol": rng.uniform(1e3, 2e3),
                    "LongVol": rng.uniform(3e3, 5e3),
                    "IssType": "2",
                }
            )
    margin = pl.DataFrame(mg)
    all_days = pl.date_range(sess[0], sess[-1] + dt.timedelta(days=60), eager=True)
    full_sess = cal.sessions
    holdiv = ["1" if d else "0" for d in all_days.is_in(full_sess.implode()).to_list()]
    calendar = pl.DataFrame({"Date": all_days, "HolDiv": pl.Series(holdiv, dtype=pl.Utf8)})
    return {
        "daily_quotes": dq,
        "listed_info": listed,
        "topix": topix,
        "statements": statements,
        "investor_types": investor,
        "margin_interest": margin,
        "trading_calendar": calendar,
    }


@pytest.fixture(scope="session")
def cfg():
    return load_config([])


@pytest.fixture(scope="session")
def mini_tables() -> dict:
    return make_mini_tables()


@pytest.fixture(scope="session")
def mini_calendar(mini_tables) -> TradingCalendar:
    return TradingCalendar.from_table(mini_tables["trading_calendar"])


@pytest.fixture(scope="session")
def mini_built(mini_tables, mini_calendar, cfg):
    from gogooku3.features.build import build_features

    return build_features(mini_tables, mini_calendar, cfg.features, cfg.labels)


@pytest.fixture(scope="session")
def synth_tables() -> dict:
    """The synthetic market, 30 stocks × 300 sessions (oracle removed: raw tables only); about 9 stocks split inside
    the span, so the point-in-time test has splits after (and before) its cut dates."""
    from gogooku3.sources.synthetic import SynthParams, simulate_market

    tables = simulate_market(SynthParams(n_stocks=30, n_days=300, seed=7, split_share=0.3))
    return {k: v for k, v in tables.items() if k != "oracle"}


@pytest.fixture(scope="session")
def synth_calendar(synth_tables) -> TradingCalendar:
    return TradingCalendar.from_table(synth_tables["trading_calendar"])


@pytest.fixture(scope="session")
def synth_built(synth_tables, synth_calendar, cfg):
    from gogooku3.features.build import build_features

    return build_features(synth_tables, synth_calendar, cfg.features, cfg.labels)


@pytest.fixture(scope="session")
def mini_factory():
    """make_mini_tables itself, for tests that build variants of the hand-made market."""
    return make_mini_tables


def planted_features(n_noise: int) -> list[str]:
    return ["returns_1d", "f_signal", *[f"f_noise{k}" for k in range(1, n_noise + 1)]]


def write_planted_dataset(root, n_stocks: int = 30, n_days: int = 150, n_noise: int = 3, seed: int = 0):
    """A tiny ML dataset (+ manifest) under root/output where target_1d follows `f_signal` (horizons 1 and 5)."""
    feats = planted_features(n_noise)
    rng = np.random.default_rng(seed)
    dates = [dt.date(2023, 1, 2) + dt.timedelta(days=k) for k in range(n_days)]
    codes = [f"{1300 + i}0" for i in range(n_stocks)]
    sig = rng.normal(size=(n_days, n_stocks))
    ret = 0.01 * rng.normal(size=(n_days, n_stocks))
    y1 = 0.01 * sig + 0.01 * rng.normal(size=(n_days, n_stocks))
    y5 = 0.02 * sig + 0.03 * rng.normal(size=(n_days, n_stocks))
    y1[-2:], y5[-6:] = np.nan, np.nan
    d_idx, s_idx = (a.ravel() for a in np.meshgrid(np.arange(n_days), np.arange(n_stocks), indexing="ij"))
    df = (
        pl.DataFrame(
            {
                "Code": [codes[i] for i in s_idx],
                "Date": [dates[d] for d in d_idx],
                "Section": [["TSEPrime", "TSEStandard", "TSEGrowth"][i % 3] for i in s_idx],
                "S33": [str(50 + i % 5) for i in s_idx],
                "S17": [str(i % 4) for i in s_idx],
                "returns_1d": ret.ravel(),
                "f_signal": sig.ravel(),
                **{f"f_noise{k}": rng.normal(size=n_days * n_stocks) for k in range(1, n_noise + 1)},
                "target_1d": y1.ravel(),
                "target_5d": y5.ravel(),
            }
        )
        .with_columns(pl.col([*feats, "target_1d", "target_5d"]).cast(pl.Float32))
        .sort("Code", "Date")
    )
    ds = root / "output" / "ml_dataset_latest.parquet"
    write_parquet(df, ds)
    FeatureManifest.from_frame(df, {f: "price" for f in feats}, [1, 5], 1).save(manifest_path(ds))
    return ds


@pytest.fixture(scope="session")
def planted_dataset():
    """write_planted_dataset itself (tests call it with their own root and sizes)."""
    return write_planted_dataset
