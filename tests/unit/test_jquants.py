"""J-Quants V2 source, fully offline: a fake API served through httpx.MockTransport."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from pathlib import Path

import httpx
import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.sources import jquants
from gogooku3.sources.jquants import JQuantsClient, fetch
from gogooku3.sources.schema import read_table, table_path

SECRET = "sk-test-9f8e7d6c5b4a-SECRET"
START, END = dt.date(2024, 1, 4), dt.date(2024, 1, 19)
TODAY = dt.date(2024, 3, 1)  # every page in the range is final (outside the refresh window)
HOLIDAYS = {dt.date(2024, 1, 8)}  # Coming of Age Day
CODES = ("13010", "72030", "99840")


def _session(d: dt.date) -> bool:
    return d.weekday() < 5 and d not in HOLIDAYS and d >= dt.date(2024, 1, 4)


class FakeJQuants:
    """A tiny J-Quants V2: paginated daily bars, per-date masters/statements/margins, range calendar/TOPIX/flows."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.fail: dict[tuple[str, str], tuple[int, int]] = {}  # (path, date) -> (status, times; -1 = always)
        self.headers_seen: set[str] = set()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def requests(self, path: str | None = None) -> list[dict[str, str]]:
        return [p for q, p in self.calls if path is None or q == path]

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v2")
        params = dict(request.url.params)
        self.calls.append((path, params))
        self.headers_seen.add(request.headers.get("x-api-key", ""))
        key = (path, params.get("date", params.get("from", "")))
        if key in self.fail:
            status, times = self.fail[key]
            if times != 0:
                self.fail[key] = (status, times - 1)
                return httpx.Response(status, json={"message": "injected failure"})
        if request.headers.get("x-api-key") != SECRET:
            return httpx.Response(403, json={"message": "The incoming token is invalid or expired."})
        return httpx.Response(200, json=self.payload(path, params))

    def payload(self, path: str, p: dict[str, str]) -> dict:
        if path == "/markets/calendar":
            lo, hi = dt.date.fromisoformat(p["from"]), dt.date.fromisoformat(p["to"])
            days = [lo + dt.timedelta(days=i) for i in range((hi - lo).days + 1)]
            return {"data": [{"Date": d.isoformat(), "HolDiv": "1" if _session(d) else "0"} for d in days]}
        if path == "/equities/bars/daily":
            d = p["date"]
            day = int(d[-2:])
            rows = [
                {
                    "Date": d,
                    "Code": c,
                    "O": 100 + day,
                    "H": 101 + day,
                    "L": 99 + day,
                    "C": 100.5 + day,
                    "UL": "0",
                    "LL": "0",
                    "Vo": 1000 * (i + 1),
                    "Va": 1e5,
                    "AdjFactor": 1.0,
                    "AdjO": 100 + day,
                    "AdjH": 101 + day,
                    "AdjL": 99 + day,
                    "AdjC": 100.5 + day,
                    "AdjVo": 1000 * (i + 1),
                }
                for i, c in enumerate(CODES)
            ]
            if "pagination_key" not in p:  # two pages per date
                return {"data": rows[:2], "pagination_key": f"page2-{d}"}
            assert p["pagination_key"] == f"page2-{d}"
            return {"data": rows[2:]}
        if path == "/equities/master":
            return {
                "data": [
                    {
                        "Date": p["date"],
                        "Code": c,
                        "CoName": f"Co{c}",
                        "CoNameEn": "x",
                        "S17": "6",
                        "S17Nm": "x",
                        "S33": "3700",
                        "S33Nm": "x",
                        "ScaleCat": "TOPIX Core30",
                        "Mkt": "0111",
                        "MktNm": "x",
                        "Mrgn": "1",
                        "MrgnNm": "x",
                    }
                    for c in CODES
                ]
            }
        if path == "/fins/summary":
            if p["date"] != "2024-01-12":
                return {"data": []}
            return {
                "data": [
                    {
                        "DiscDate": "2024-01-12",
                        "DiscTime": "15:30:00",
                        "Code": "72030",
                        "DiscNo": "1",
                        "DocType": "3QFinancialStatements_Consolidated_IFRS",
                        "CurPerType": "3Q",
                        "CurFYSt": "2023-04-01",
                        "CurFYEn": "2024-03-31",
                        "Sales": "34000000000000",
                        "OP": "4000000000000",
                        "NP": "3900000000000",
                        "EPS": "280.5",
                        "TA": "",
                        "Eq": "",
                        "FOP": "4500000000000",
                        "FNP": "4500000000000",
                        "FEPS": "330.1",
                        "FDivAnn": "60",
                        "ShOutFY": "16314987460",
                        "ChgAcEst": "false",
                        "RetroRst": "false",
                    }
                ]
            }
        if path == "/indices/bars/daily/topix":
            lo, hi = dt.date.fromisoformat(p["from"]), dt.date.fromisoformat(p["to"])
            days = [lo + dt.timedelta(days=i) for i in range((hi - lo).days + 1)]
            return {
                "data": [
                    {"Date": d.isoformat(), "O": 2500.0, "H": 2510.0, "L": 2490.0, "C": 2505.0}
                    for d in days
                    if _session(d)
                ]
            }
        if path == "/equities/investor-types":
            if p["from"] != "2024-01-01":
                return {"data": []}
            return {
                "data": [
                    {
                        "PubDate": "2024-01-11",
                        "StDate": "2024-01-04",
                        "EnDate": "2024-01-05",
                        "Section": "TSEPrime",
                        "FrgnSell": 1e9,
                        "FrgnBuy": 1.2e9,
                        "FrgnTot": 2.2e9,
                        "FrgnBal": 2e8,
                        "IndBal": -1e8,
                        "SecCoBal": 5.0,
                    }
                ]
            }
        if path == "/markets/margin-interest":
            return {
                "data": [
                    {
                        "Date": p["date"],
                        "Code": c,
                        "ShrtVol": 10.0,
                        "LongVol": 20.0,
                        "ShrtNegVol": 1.0,
                        "LongNegVol": 2.0,
                        "ShrtStdVol": 9.0,
                        "LongStdVol": 18.0,
                        "IssType": "2",
                    }
                    for c in CODES
                ]
            }
        return {"data": []}


@pytest.fixture
def server() -> FakeJQuants:
    return FakeJQuants()


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
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


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _run(cfg, server: FakeJQuants, today: dt.date = TODAY) -> dict[str, Path]:
    return fetch(cfg, transport=server.transport(), sleep=Sleeps(), today=today)


SESSIONS = [d for d in (START + dt.timedelta(days=i) for i in range((END - START).days + 1)) if _session(d)]


# ---- end to end -------------------------------------------------------------------------------------------------
def test_fetch_writes_every_table_mapped_to_the_schema(cfg, server, tmp_path):
    out = _run(cfg, server)
    raw = tmp_path / "raw"
    assert set(out) == {
        "trading_calendar",
        "daily_quotes",
        "listed_info",
        "statements",
        "topix",
        "investor_types",
        "margin_interest",
    }
    dq = read_table(raw, "daily_quotes")
    assert dq.height == len(SESSIONS) * len(CODES)  # both pages of every date
    assert dq.schema["Code"] == pl.Utf8 and dq.schema["Date"] == pl.Date and dq.schema["AdjC"] == pl.Float64
    assert sorted(dq["Date"].unique().to_list()) == SESSIONS
    assert set(dq["Code"]) == set(CODES)
    # pagination: two requests per session date, the second one carrying the key
    bars = server.requests("/equities/bars/daily")
    assert len(bars) == 2 * len(SESSIONS)
    assert sum("pagination_key" in p for p in bars) == len(SESSIONS)

    cal = read_table(raw, "trading_calendar")
    assert cal.filter(pl.col("HolDiv") == "1")["Date"].to_list() == SESSIONS
    assert cal.filter(pl.col("Date") == dt.date(2024, 1, 8))["HolDiv"].item() == "0"

    st = read_table(raw, "statements")
    assert st.height == 1 and st["Code"].item() == "72030" and st["DiscDate"].item() == dt.date(2024, 1, 12)
    assert st["ShOut"].item() == pytest.approx(16314987460) and st["TA"].item() is None  # "" -> null
    assert st["CurFYEn"].item() == dt.date(2024, 3, 31) and st["DiscTime"].item() == "15:30:00"

    li = read_table(raw, "listed_info")
    # month-start snapshot (first session 2024-01-04) and the last session of the range
    assert sorted(li["Date"].unique().to_list()) == [dt.date(2024, 1, 4), dt.date(2024, 1, 19)]
    assert set(li.columns) <= {"Date", "Code", "CoName", "S17", "S33", "Mkt", "ScaleCat"} and li["Mkt"][0] == "0111"

    it = read_table(raw, "investor_types")
    assert it["FrgnBal"].item() == 2e8 and "SecCoBal" not in it.columns  # only schema columns are kept
    mi = read_table(raw, "margin_interest")
    # weekly: one as-of date per week (the week's last session)
    assert sorted(mi["Date"].unique().to_list()) == [dt.date(2024, 1, 5), dt.date(2024, 1, 12), dt.date(2024, 1, 19)]
    assert read_table(raw, "topix").height == len(SESSIONS)
    assert server.headers_seen == {SECRET}
    # statements are queried at most 60/min on every plan; calendar / TOPIX / flows are one request per month
    assert len(server.requests("/markets/calendar")) == 1


def test_missing_api_key_is_a_config_error(cfg, server, monkeypatch):
    monkeypatch.delenv("JQUANTS_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="JQUANTS_API_KEY"):
        _run(cfg, server)
    assert server.calls == []


def test_config_key_is_used_when_set(cfg, server, monkeypatch):
    monkeypatch.delenv("JQUANTS_API_KEY", raising=False)
    cfg.data.api_key = SECRET
    _run(cfg, server)
    assert server.headers_seen == {SECRET}


def test_unknown_plan_and_bad_dates_are_config_errors(cfg, server):
    cfg.data.plan = "gold"
    with pytest.raises(ConfigError, match=r"data.plan"):
        _run(cfg, server)
    cfg.data.plan = "light"
    cfg.data.start_date = "2024-02-01"
    with pytest.raises(ConfigError, match=r"after data.end_date"):
        _run(cfg, server)


def test_default_range_is_five_years_to_today_and_plan_picks_tables(cfg):
    cfg.data.start_date = None
    cfg.data.end_date = None
    cfg.data.plan = "free"
    s = jquants.settings(cfg, today=dt.date(2024, 2, 29))
    assert (s.start, s.end) == (dt.date(2019, 2, 28), dt.date(2024, 2, 29))
    assert "topix" not in s.tables and "margin_interest" not in s.tables and s.tables[0] == "trading_calendar"


# ---- retries, rate limit, errors --------------------------------------------------------------------------------
def _client(handler, sleeps: Sleeps, **kw) -> JQuantsClient:
    kw.setdefault("requests_per_minute", 6000)
    return JQuantsClient(SECRET, transport=httpx.MockTransport(handler), sleep=sleeps, **kw)


def test_429_then_success_honours_retry_after():
    seen = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        seen["n"] += 1
        if seen["n"] == 1:
            return httpx.Response(429, headers={"Retry-After": "7"}, json={"message": "Too Many Requests"})
        return httpx.Response(200, json={"data": [{"a": 1}]})

    sleeps = Sleeps()
    with _client(handler, sleeps) as c:
        assert c.get_all("/equities/bars/daily", {"date": "2024-01-04"}) == [{"a": 1}]
    assert seen["n"] == 2 and 7.0 in sleeps


def test_backoff_grows_exponentially_with_jitter_when_no_retry_after():
    seen = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        seen["n"] += 1
        return httpx.Response(429 if seen["n"] <= 3 else 200, json={"data": []})

    sleeps = Sleeps()
    with _client(handler, sleeps, backoff_base_s=1.0, max_attempts=5) as c:
        c.get_all("/equities/bars/daily", {"date": "2024-01-04"})
    waits = [w for w in sleeps if w >= 1.0]
    assert len(waits) == 3
    for i, w in enumerate(waits):
        assert 2**i <= w < 2**i + 1.0


def test_5xx_retries_exhausted_raise_clear_data_error():
    seen = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        seen["n"] += 1
        return httpx.Response(503, json={"message": "Service Unavailable"})

    with _client(handler, Sleeps(), max_attempts=3) as c, pytest.raises(DataError) as err:
        c.get_all("/fins/summary", {"date": "2024-01-04"})
    assert seen["n"] == 3
    msg = str(err.value)
    assert "/fins/summary" in msg and "failed after 3 attempts" in msg and "HTTP 503" in msg


def test_transport_errors_are_retried():
    seen = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        seen["n"] += 1
        if seen["n"] < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"data": [{"x": 1}]})

    with _client(handler, Sleeps(), max_attempts=3) as c:
        assert c.get_all("/markets/calendar", {}) == [{"x": 1}]
    with (
        _client(lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow", request=r)), Sleeps(), max_attempts=2) as c,
        pytest.raises(DataError, match="network error ReadTimeout"),
    ):
        c.get_all("/markets/calendar", {})


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_is_clear_and_not_retried(status):
    seen = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        seen["n"] += 1
        return httpx.Response(status, json={"message": "The incoming token is invalid or expired."})

    with _client(handler, Sleeps()) as c, pytest.raises(ConfigError, match="invalid or expired API key") as err:
        c.get_all("/equities/master", {"date": "2024-01-04"})
    assert seen["n"] == 1 and SECRET not in str(err.value)


def test_other_4xx_fails_without_retry():
    with (
        _client(lambda r: httpx.Response(400, json={"message": "bad date"}), Sleeps()) as c,
        pytest.raises(DataError, match="HTTP 400: bad date"),
    ):
        c.get_all("/equities/bars/daily", {"date": "x"})


def test_repeated_pagination_key_is_an_error():
    handler = lambda r: httpx.Response(200, json={"data": [{"a": 1}], "pagination_key": "same"})
    with _client(handler, Sleeps()) as c, pytest.raises(DataError, match="pagination_key repeated"):
        c.get_all("/equities/bars/daily", {"date": "2024-01-04"})


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def test_rate_limit_spaces_requests_and_caps_fins_endpoints():
    clock = FakeClock()
    c = JQuantsClient(
        SECRET,
        requests_per_minute=120,
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"data": []})),
        sleep=clock.sleep,
        clock=clock,
    )
    for _ in range(4):
        c.get_all("/equities/bars/daily", {"date": "2024-01-04"})
    assert clock.sleeps == pytest.approx([0.5, 0.5, 0.5])  # 120 req/min
    clock.sleeps.clear()
    for _ in range(3):
        c.get_all("/fins/summary", {"date": "2024-01-04"})
    assert clock.sleeps[-2:] == pytest.approx([1.0, 1.0])  # /fins/summary: 60 req/min on every plan
    assert clock.t >= 0.5 * 3 + 2.0

    slow = FakeClock()  # free plan: the plan-wide 5/min also binds the capped endpoint
    c = JQuantsClient(
        SECRET,
        requests_per_minute=5,
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"data": []})),
        sleep=slow.sleep,
        clock=slow,
    )
    c.get_all("/equities/bars/daily", {"date": "2024-01-04"})
    c.get_all("/fins/summary", {"date": "2024-01-04"})
    assert slow.sleeps == pytest.approx([12.0])


# ---- cache, incremental, resume ---------------------------------------------------------------------------------
def test_second_run_uses_the_cache_and_makes_no_request(cfg, server, tmp_path):
    _run(cfg, server)
    first = read_table(tmp_path / "raw", "daily_quotes")
    n = len(server.calls)
    files = sorted((tmp_path / "cache" / "jquants" / "daily_quotes").glob("*.parquet"))
    assert [f.stem for f in files] == [d.isoformat() for d in SESSIONS]
    _run(cfg, server)
    assert len(server.calls) == n  # nothing requested again
    assert read_table(tmp_path / "raw", "daily_quotes").equals(first)


def test_extending_the_range_fetches_only_new_dates(cfg, server):
    cfg.data.end_date = "2024-01-12"
    _run(cfg, server)
    server.calls.clear()
    cfg.data.end_date = str(END)
    _run(cfg, server)
    dates = {p["date"] for p in server.requests("/equities/bars/daily")}
    assert dates == {d.isoformat() for d in SESSIONS if d > dt.date(2024, 1, 12)}


def test_recent_pages_inside_the_refresh_window_are_refetched(cfg, server):
    today = dt.date(2024, 1, 20)  # refresh_days=3: pages dated >= 2024-01-17 are not trusted
    _run(cfg, server, today=today)
    server.calls.clear()
    _run(cfg, server, today=today)
    assert {p["date"] for p in server.requests("/equities/bars/daily")} == {"2024-01-17", "2024-01-18", "2024-01-19"}


def test_resume_after_a_failure_midway(cfg, server, tmp_path):
    server.fail[("/equities/bars/daily", "2024-01-11")] = (500, -1)  # always fails
    with pytest.raises(DataError, match="2024-01-11"):
        _run(cfg, server)
    cache = tmp_path / "cache" / "jquants" / "daily_quotes"
    done = sorted(f.stem for f in cache.iterdir())
    assert done == ["2024-01-04", "2024-01-05", "2024-01-09", "2024-01-10"]  # complete pages only, no temp files
    assert all(pl.read_parquet(f).height == len(CODES) for f in cache.glob("*.parquet"))
    assert not table_path(tmp_path / "raw", "daily_quotes").exists()  # no raw table from a failed run

    server.fail.clear()
    server.calls.clear()
    _run(cfg, server)
    fetched = [p["date"] for p in server.requests("/equities/bars/daily") if "pagination_key" not in p]
    assert fetched == [d.isoformat() for d in SESSIONS if d >= dt.date(2024, 1, 11)]
    assert read_table(tmp_path / "raw", "daily_quotes").height == len(SESSIONS) * len(CODES)


def test_stale_tables_from_another_source_are_removed(cfg, server, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pl.DataFrame({"Date": [START], "Code": ["1"], "AdjC": [1.0]}).write_parquet(table_path(raw, "daily_quotes"))
    pl.DataFrame({"Date": [START], "Code": ["1"]}).write_parquet(table_path(raw, "margin_interest"))
    cfg.data.tables = ["daily_quotes"]
    out = _run(cfg, server)
    assert set(out) == {"trading_calendar", "daily_quotes"}
    assert not table_path(raw, "margin_interest").exists()


# ---- the key never leaks ----------------------------------------------------------------------------------------
def test_api_key_never_in_logs_files_or_errors(cfg, server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    cfg.data.end_date = "2024-01-12"
    _run(cfg, server)
    server.fail[("/equities/bars/daily", "2024-01-15")] = (503, -1)
    cfg.data.end_date = str(END)  # new dates -> fetched -> the injected failure is hit
    with pytest.raises(DataError) as err:
        _run(cfg, server)
    assert SECRET not in str(err.value)
    bad = load_config(
        [
            "data=jquants",
            f"paths.raw_dir={tmp_path / 'raw2'}",
            f"paths.cache_dir={tmp_path / 'c2'}",
            f"data.start_date={START}",
            f"data.end_date={END}",
            "data.progress=false",
        ]
    )
    bad.data.api_key = SECRET + "-wrong"
    with pytest.raises(ConfigError) as err:
        _run(bad, server)
    assert SECRET not in str(err.value) and "invalid or expired" in str(err.value)
    assert SECRET not in repr(JQuantsClient(SECRET))
    assert SECRET not in caplog.text
    assert caplog.records, "the fetch should have logged something"
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written
    for p in written:
        assert SECRET.encode() not in p.read_bytes(), p
