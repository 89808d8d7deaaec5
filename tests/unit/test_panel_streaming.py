"""Chunked PanelStore conversion (file mode): the same bytes as the in-memory `from_frame` for any block / batch /
sub-block size, deterministic, bounded by its chunks; and the dense normalisation kernels against the Polars
`transform` (the baseline's path).

Equality is exact (bitwise) between the two panel paths, including the fitted normalizer (fallback std, day-level
features): every statistic is per day, and the two pooled ones are folded day by day in date order, so the split
into chunks cannot change a bit. Against the Polars path the tolerance is: the medians and MADs are the same order
statistics with the same interpolation, so z is bitwise equal wherever the MAD decides the scale; where a day's MAD is
<= EPS its std decides, and the two std implementations sum in different orders (relative ~1e-16), so at most
1 float32 ulp; the pooled fallback std agrees to 1e-12 relative.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from gogooku3.core.io import write_parquet
from gogooku3.data import normalize
from gogooku3.data.normalize import EPS, CrossSectionalNormalizer
from gogooku3.data.panel import ARRAYS, PanelStore

FEATS = ["f1", "f2", "flag", "sparse", "mkt", "flat", "tiny", "returns_1d"]
NORMALIZERS = [
    {"method": "robust_z", "clip": 5.0},
    {"method": "robust_z", "clip": 3.0, "day_level": "time_z", "day_level_window": 20},
    {"method": "rank_gauss", "clip": 5.0},
]


def _frame(n_days=60, n_stocks=9, seed=0, dup=True) -> pl.DataFrame:
    """Float64 features (the float64 scratch path) with every case the kernels branch on: gaps, late listing, nulls,
    ±inf, ties (an Int8 flag), a half-null column (a different n per row), a day-level column, a constant column,
    a column whose day 7 spreads by 1e-13 only (MAD 0 and 0 < std <= EPS: its pooled std decides), a repeated
    (Code, Date) row; rows shuffled."""
    rng = np.random.default_rng(seed)
    dates = [dt.date(2024, 1, 1) + dt.timedelta(days=k) for k in range(n_days)]
    mkt = np.cumsum(rng.normal(size=n_days))
    rows = []
    for i in range(n_stocks):
        for k, d in enumerate(dates):
            if (i == 3 and k < 20) or (i == 5 and k == 30):
                continue
            f1 = float(rng.normal())
            if i == 2 and k == 11:
                f1 = float("inf")
            f2 = None if (i == 1 and k == 10) else float(rng.normal())
            sparse = float(rng.normal()) if rng.random() < 0.5 else None
            tiny = (1.0 + (1e-13 if i == 4 else 0.0)) if k == 7 else float(rng.normal())
            rows.append(
                (
                    f"{1300 + i}0",
                    d,
                    ["TSEPrime", "TSEGrowth"][i % 2],
                    str(i % 3),
                    f1,
                    f2,
                    int(rng.random() < 0.3),
                    sparse,
                    float(mkt[k]),
                    2.5,
                    tiny,
                    float(rng.normal() * 0.01),
                    None if (i == 2 and k == 40) else float(rng.normal()),
                    float(rng.normal()),
                )
            )
    df = pl.DataFrame(
        rows,
        schema=[
            "Code",
            "Date",
            "Section",
            "S33",
            "f1",
            "f2",
            "flag",
            "sparse",
            "mkt",
            "flat",
            "tiny",
            "returns_1d",
            "target_1d",
            "target_5d",
        ],
        orient="row",
    )
    df = df.with_columns(pl.col("flag").cast(pl.Int8))
    if dup:  # the same cell twice, different values: the later row wins
        df = pl.concat(
            [
                df,
                df.filter((pl.col("Code") == "13060") & (pl.col("Date") == dates[33])).with_columns(
                    pl.col("f1") + 10.0, pl.col("target_1d") - 1.0
                ),
            ]
        )
    return df.sample(fraction=1.0, shuffle=True, seed=seed)


def _same(a: PanelStore, b: PanelStore) -> None:
    for name in ARRAYS:
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert x.tobytes() == y.tobytes(), f"{name} differs"
    assert a.codes == b.codes and a.dates == b.dates and a.feature_names == b.feature_names
    assert a.sector_vocab == b.sector_vocab and a.segment_vocab == b.segment_vocab and a.horizons == b.horizons
    assert a.normalizer == b.normalizer  # fallback std and day-level features too


@pytest.fixture
def tiny_chunks(monkeypatch):
    monkeypatch.setattr(normalize, "SUB_BLOCK_ELEMS", 40)  # several kernel calls (and both threads) per block
    return {"block_mb": 1e-4, "batch_rows": 37}  # one day per block, a few dozen rows per batch


@pytest.mark.parametrize("nz", NORMALIZERS, ids=["robust_z", "time_z", "rank_gauss"])
def test_chunked_conversion_equals_from_frame(tmp_path, tiny_chunks, nz):
    df = _frame()
    ds = tmp_path / "ds.parquet"
    write_parquet(df, ds)
    ref = PanelStore.from_frame(df, FEATS, [1, 5], nz)
    got = PanelStore.convert(ds, tmp_path / "panel", FEATS, [1, 5], nz, **tiny_chunks)
    assert isinstance(got.features, np.memmap) and got.root == tmp_path / "panel"
    _same(ref, got)
    i6, d33 = ref.codes.index("13060"), 33
    assert ref.targets[d33, i6, 0] == pytest.approx(
        df.filter((pl.col("Code") == "13060") & (pl.col("Date") == ref.dates[d33]))["target_1d"][-1]
    )  # the last row won
    if nz.get("day_level") == "time_z":
        assert ref.normalizer["day_level_features"] == ["mkt", "flat"]
        assert np.abs(ref.features[:, :, FEATS.index("mkt")]).max() > 0.5  # a time z-score, not all 0
    assert not list(tmp_path.glob(".panel.*.tmp"))  # the temp folder is gone


@pytest.mark.parametrize("nz", NORMALIZERS, ids=["robust_z", "time_z", "rank_gauss"])
def test_chunked_conversion_of_a_built_dataset(tmp_path, tiny_chunks, synth_built, nz):
    """The builder's dataset (Float32 / Int8 columns: raw values converted in place, day-level market columns)."""
    df, feats = synth_built.df, list(synth_built.groups)
    ds = tmp_path / "ds.parquet"
    write_parquet(df, ds)
    ref = PanelStore.from_frame(df, feats, [1, 5], nz)
    _same(ref, PanelStore.convert(ds, tmp_path / "p1", feats, [1, 5], nz, **tiny_chunks))
    _same(ref, PanelStore.convert(ds, tmp_path / "p2", feats, [1, 5], nz))  # default chunk sizes


def test_conversion_is_deterministic_and_order_free(tmp_path):
    df = _frame(dup=False)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_parquet(df.sort("Code", "Date"), a)  # as the builder writes it
    write_parquet(df.sample(fraction=1.0, shuffle=True, seed=9), b)
    nz = {"method": "robust_z", "day_level": "time_z", "day_level_window": 20}
    p = [
        PanelStore.convert(a, tmp_path / "pa", FEATS, [1], nz),
        PanelStore.convert(a, tmp_path / "pa2", FEATS, [1], nz, block_mb=1e-3, batch_rows=11),
        PanelStore.convert(b, tmp_path / "pb", FEATS, [1], nz, batch_rows=50),
    ]
    _same(p[0], p[1])
    _same(p[0], p[2])
    _same(p[0], PanelStore.from_frame(df.sample(fraction=1.0, shuffle=True, seed=3), FEATS, [1], nz))


def test_conversion_is_bounded_by_its_chunks(tmp_path, monkeypatch):
    """Blocks of <= block_mb of days and batches of <= batch_rows rows, whatever the dataset's length."""
    from gogooku3.data import panel as panel_mod

    df = _frame(dup=False)
    ds = tmp_path / "ds.parquet"
    write_parquet(df.sort("Code", "Date"), ds, row_group_size=100)
    days, rows = [], []
    orig_block, orig_add = normalize.DenseNormalization.block, panel_mod._Pass1.add

    def block(self, y, present):
        days.append(y.shape[1])
        yield from orig_block(self, y, present)

    def add(self, batch):
        rows.append(batch.height)
        orig_add(self, batch)

    monkeypatch.setattr(normalize.DenseNormalization, "block", block)
    monkeypatch.setattr(panel_mod._Pass1, "add", add)
    p = PanelStore.convert(ds, tmp_path / "p", FEATS, [1], {}, block_mb=5 * 9 * len(FEATS) * 8 / 2**20, batch_rows=40)
    assert max(days) == 5 and sum(days) == p.n_days  # 5 days x 9 stocks x 8 float64 features a block
    assert max(rows) <= 40 and sum(rows) == df.height


def test_missing_feature_is_a_clear_error_in_file_mode(tmp_path):
    from gogooku3.core.errors import DataError

    ds = tmp_path / "ds.parquet"
    write_parquet(_frame(), ds)
    with pytest.raises(DataError, match="nope"):
        PanelStore.convert(ds, tmp_path / "p", ["f1", "nope"], [1], {})
    assert not (tmp_path / "p").exists()


def _rows_of(p: PanelStore, df: pl.DataFrame, feats: list[str]) -> np.ndarray:
    """The panel's feature values at each row of df (Code, Date) -> [rows, F]."""
    d = df["Date"].replace_strict(p.dates, list(range(p.n_days))).to_numpy()
    i = df["Code"].replace_strict(p.codes, list(range(len(p.codes)))).to_numpy()
    return np.asarray(p.features)[d, i][:, [p.feature_names.index(f) for f in feats]]


@pytest.mark.parametrize("nz", NORMALIZERS, ids=["robust_z", "time_z", "rank_gauss"])
def test_dense_kernels_match_the_polars_transform(nz):
    df = _frame(dup=False).sort("Date", "Code")  # (Date, Code): the Polars day value of a day-level feature is
    norm = CrossSectionalNormalizer.from_dict(nz).fit(df, FEATS)  # its first row's, the dense one the first stock's
    pol = norm.transform(df).select([pl.col(f).fill_nan(None).fill_null(0.0) for f in FEATS]).to_numpy()
    dense = _rows_of(PanelStore.from_frame(df, FEATS, [1], norm), df, FEATS)
    ulp = np.abs(pol.astype(np.float32).view(np.int32).astype(np.int64) - dense.view(np.int32).astype(np.int64))
    ulp[(pol == 0) & (dense == 0)] = 0  # +0 / -0
    if nz["method"] == "rank_gauss" or nz.get("day_level") == "time_z":
        by_std = np.zeros_like(ulp, dtype=bool)
    else:  # cells of days whose MAD is <= EPS: the std decides
        fin = df.with_columns([normalize._finite(f).alias(f) for f in FEATS])
        mad = fin.select(
            [(pl.col(f) - pl.col(f).median().over("Date")).abs().median().over("Date").alias(f) for f in FEATS]
        ).to_numpy()
        by_std = ~(mad * normalize.MAD_TO_STD > EPS)
    assert ulp[~by_std].max() == 0  # bitwise wherever the MAD sets the scale
    assert ulp.max() <= 1
    # the fit on the panel (no Polars) finds the same day-level features and the same fallback to 1e-12
    fitted = PanelStore.from_frame(df, FEATS, [1], nz).normalizer
    assert fitted["day_level_features"] == norm.day_level_
    for f in FEATS:
        assert fitted["fallback_std"][f] == pytest.approx(norm.fallback_std_[f], rel=1e-12)


def test_fallback_patch_uses_the_pooled_std():
    """A day with MAD 0 and 0 < std <= EPS is scaled by the fallback std, known only after every day (a patch)."""
    df = _frame(dup=False)
    p = PanelStore.from_frame(df, FEATS, [1], {"method": "robust_z", "clip": None})
    k, d7 = FEATS.index("tiny"), 7
    fb = p.normalizer["fallback_std"]["tiny"]
    raw = df.filter(pl.col("Date") == p.dates[d7]).sort("Code")["tiny"].to_numpy()
    assert 0.5 < fb < 2 and np.median(raw) == 1.0 and 0 < raw.std(ddof=1) <= EPS
    z = p.features[d7, :, k]
    i4 = p.codes.index("13040")
    assert z[i4] == np.float32((raw[list(p.codes[:3] + p.codes[4:]).index("13040")] - 1.0) / fb) != 0
    assert np.count_nonzero(z) == 1  # the rest of the day equals its median


def test_fit_on_a_scan_streams_and_agrees(tmp_path):
    """`fit` on a lazy scan aggregates with the streaming engine (nothing collected) and finds what it finds on
    the collected frame."""
    df = _frame(dup=False)
    ds = tmp_path / "ds.parquet"
    write_parquet(df, ds)
    a = CrossSectionalNormalizer("robust_z").fit(pl.scan_parquet(ds), FEATS)
    b = CrossSectionalNormalizer("robust_z").fit(df, FEATS)
    assert a.day_level_ == b.day_level_ == ["mkt", "flat"] and a.n_fit_rows_ == b.n_fit_rows_ == df.height
    for f in FEATS:
        assert a.fallback_std_[f] == pytest.approx(b.fallback_std_[f], rel=1e-12)
