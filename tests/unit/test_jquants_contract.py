"""The J-Quants client against the official client's V2 contract: paths, query parameters, envelope, header and every
field the raw tables map, so a renamed or missing field fails here rather than in a user's first fetch.

The contract is `tests/fixtures/jquants_v2_fields.json`: the `*_COLUMNS_V2` lists of `jquantsapi/constants.py` and the
paths/parameters of `jquantsapi/apis/v2/*.py` of jquants-api-client 2.8.0 (Apache-2.0), copied verbatim. To refresh
it: `pip download --no-deps jquants-api-client`, unzip the wheel and copy the lists named in each entry's
`fields_constant` (and any changed path or parameter) into the fixture, then rerun this test.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import polars as pl
import pytest
from test_jquants import END, SECRET, START, FakeJQuants, _run

from gogooku3.config.compose import load_config
from gogooku3.core.errors import DataError
from gogooku3.sources import jquants
from gogooku3.sources.jquants import ENDPOINTS, JQuantsClient
from gogooku3.sources.schema import TABLES, read_table

CONTRACT = json.loads((Path(__file__).parents[1] / "fixtures" / "jquants_v2_fields.json").read_text())
EPS = CONTRACT["endpoints"]
# raw-table columns that are ours, not a field of the response
DERIVED: dict[str, set[str]] = {}
# fields the issue asks to keep for later use (treasury shares, next-year forecasts, limit flags)


@pytest.fixture
def jq_cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """test_jquants' config of the fake API."""
    monkeypatch.setenv("JQUANTS_API_KEY", SECRET)
    return load_config(
        [
            "data=jquants",
            f"paths.raw_dir={tmp_path / 'raw'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"data.start_date={START}",
            f"data.end_date={END}",
            "data.plan=standard",
            "data.progress=false",
            "data.backoff_base_s=0.5",
            "data.max_attempts=3",
        ]
    )


KEPT = {"statements": {"TrShFY", "NxFSales", "NxFOP", "NxFNp", "NxFEPS", "NxFDivAnn"}, "daily_quotes": {"UL", "LL"}}


def test_every_table_has_a_contract_entry_with_the_same_path():
    assert set(ENDPOINTS) == set(EPS)
    for table, ep in ENDPOINTS.items():
        assert ep.path == EPS[table]["path"], table


@pytest.mark.parametrize("table", sorted(ENDPOINTS))
def test_mapped_fields_exist_in_the_official_field_list(table):
    """Every raw-table column the mapping can fill is a V2 field (after `rename`), and every renamed field exists."""
    ep, fields = ENDPOINTS[table], set(EPS[table]["fields"])
    assert set(ep.rename) <= fields, f"{table}: renamed fields not in the V2 list: {set(ep.rename) - fields}"
    mapped = {ep.rename.get(f, f) for f in fields}
    ours = set(TABLES[table].columns) - DERIVED.get(table, set())
    assert ours <= mapped, f"{table}: schema columns no V2 field maps to: {sorted(ours - mapped)}"
    assert ep.date_col in mapped


def test_query_parameters_are_the_official_ones():
    for table, ep in ENDPOINTS.items():
        ours = {"date"} if ep.mode == "date" else {"from", "to"}
        assert ours <= set(EPS[table]["params"]), (table, ours, EPS[table]["params"])


def test_envelope_header_and_base_url():
    env = CONTRACT["envelope"]
    assert (jquants.DATA_KEY, jquants.PAGINATION_KEY, jquants.DEFAULT_BASE_URL) == (
        env["data_key"],
        env["pagination_key"],
        env["base_url"],
    )
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        return httpx.Response(200, json={env["data_key"]: []})

    with JQuantsClient("k", transport=httpx.MockTransport(handler), sleep=lambda s: None) as c:
        c.get_all("/equities/bars/daily", {"date": "2024-01-04"})
    assert seen.get(env["auth_header"]) == "k"


def test_fields_a_quant_needs_are_kept_by_the_schema_and_exist_upstream():
    for table, names in KEPT.items():
        assert names <= set(EPS[table]["fields"]), table
        assert names <= set(TABLES[table].columns), table


class KeepingServer(FakeJQuants):
    """The fake API with the treasury-share and next-year-forecast fields on its one statement."""

    def payload(self, path: str, p: dict[str, str]) -> dict:
        out = super().payload(path, p)
        if path == "/fins/summary" and out["data"]:
            out["data"][0].update(
                {
                    "TrShFY": "300000000",
                    "NxFSales": "36000000000000",
                    "NxFOP": "4800000000000",
                    "NxFNp": "4600000000000",
                    "NxFEPS": "350.2",
                    "NxFDivAnn": "70",
                }
            )
        return out


def test_fetch_keeps_treasury_shares_forecasts_and_limit_flags(jq_cfg):
    paths = _run(jq_cfg, KeepingServer())
    st = read_table(paths["statements"].parent, "statements")
    row = st.row(0, named=True)
    assert row["TrShFY"] == 3e8 and row["NxFNp"] == 4.6e12 and row["NxFDivAnn"] == 70.0
    dq = read_table(paths["daily_quotes"].parent, "daily_quotes")
    assert dq.schema["UL"] == pl.Utf8 and set(dq["UL"].unique()) == {"0"} and dq["LL"].null_count() == 0


class NoDataServer(FakeJQuants):
    """Answers one date's daily bars with 200 and an error body (no `data`)."""

    def payload(self, path: str, p: dict[str, str]) -> dict:
        if path == "/equities/bars/daily" and p.get("date") == "2024-01-10":
            return {"message": "temporarily unavailable"}
        return super().payload(path, p)


def test_200_without_data_is_an_error_and_is_not_cached(jq_cfg, tmp_path):
    with pytest.raises(DataError, match=r"HTTP 200 without 'data' \(keys: message; message: temporarily unavailable"):
        _run(jq_cfg, NoDataServer())
    cache = tmp_path / "cache" / "jquants" / "daily_quotes"
    assert (cache / "2024-01-09.parquet").exists() and not (cache / "2024-01-10.parquet").exists()
    _run(jq_cfg, FakeJQuants())  # the rerun fetches the missing page
    assert (cache / "2024-01-10.parquet").exists()


def test_client_rejects_a_200_error_body():
    with (
        JQuantsClient(
            "k", transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"msg": 1})), sleep=lambda s: None
        ) as c,
        pytest.raises(DataError, match="without 'data'"),
    ):
        c.get_all("/fins/summary", {"date": "2024-01-04"})
