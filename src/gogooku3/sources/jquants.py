"""The J-Quants API V2 source: a thin httpx client (rate limit, retries, pagination) plus a resumable page cache.

`fetch(cfg)` downloads the configured tables for `data.start_date..data.end_date`, caching one parquet per
(table, date) page set under `<cache_dir>/jquants/<table>/<YYYY-MM-DD>.parquet`, then assembles the raw tables
(`schema.write_table`) in `paths.raw_dir`. Only pages not yet cached (or still inside the refresh window) are
requested, so an interrupted run resumes where it stopped. The API key is sent in the `x-api-key` header and never
logged, written or put in an exception message.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import polars as pl

from gogooku3.core.errors import ConfigError, DataError
from gogooku3.core.io import write_parquet
from gogooku3.core.progress import track
from gogooku3.sources.files import source_config
from gogooku3.sources.schema import TABLES, replace_raw_tables

if TYPE_CHECKING:
    from gogooku3.config.schema import JQuantsDataSettings, Settings

log = logging.getLogger(__name__)

API_KEY_ENV = "JQUANTS_API_KEY"
DEFAULT_BASE_URL = "https://api.jquants.com/v2"
DATA_KEY = "data"  # every V2 endpoint returns its records under "data"
PAGINATION_KEY = "pagination_key"

# Requests per minute per plan (jpx-jquants.com/en/spec/rate-limits); /fins/* is capped at 60 on every plan.
PLAN_RPM = {"free": 5, "light": 60, "standard": 120, "premium": 500}
PATH_RPM_CAP = {"/fins/summary": 60}

# Tables each plan includes (plans page; investor types: Light per the plans page, Premium per the client README).
PLAN_TABLES = {
    "free": ("trading_calendar", "daily_quotes", "listed_info", "statements"),
    "light": ("trading_calendar", "daily_quotes", "listed_info", "statements", "topix", "investor_types"),
    "standard": (
        "trading_calendar",
        "daily_quotes",
        "listed_info",
        "statements",
        "topix",
        "investor_types",
        "margin_interest",
    ),
}
PLAN_TABLES["premium"] = PLAN_TABLES["standard"]


@dataclass(frozen=True)
class Endpoint:
    """How one raw table is fetched and mapped.

    mode: "date"  -> one request set per date (`?date=YYYY-MM-DD`), cached per date;
          "range" -> one request set per calendar month (`?from=..&to=..`), cached under the month's first day.
    dates: which dates a "date" table is fetched for (sessions, all calendar days, week-ends, month starts).
    rename: V2 response key -> raw-table column (identity for the rest); only schema columns are kept.
    date_col: the column used to clip the assembled table to the requested range.
    """

    table: str
    path: str
    mode: str
    dates: str
    date_col: str
    rename: dict[str, str]


# V2 response field names, from jquants-api-client-python (jquantsapi/constants_v2.py, apis/v2/*.py) and
# jpx-jquants.com/en/spec. All mappings live here; most V2 names already equal the raw-table names.
ENDPOINTS: dict[str, Endpoint] = {
    "trading_calendar": Endpoint("trading_calendar", "/markets/calendar", "range", "months", "Date", {}),
    "daily_quotes": Endpoint("daily_quotes", "/equities/bars/daily", "date", "sessions", "Date", {}),
    # /equities/master?date=D is a snapshot of the listed issues on D; fetched on each month's first session
    # and on the last session of the range.
    "listed_info": Endpoint("listed_info", "/equities/master", "date", "month_starts", "Date", {}),
    # /fins/summary?date=D lists the disclosures made on D (DiscDate); "ShOutFY" is issued shares incl. treasury
    # (TrShFY: treasury shares; NxF*: next-year forecasts, kept as they are named).
    "statements": Endpoint("statements", "/fins/summary", "date", "statement_days", "DiscDate", {"ShOutFY": "ShOut"}),
    "topix": Endpoint("topix", "/indices/bars/daily/topix", "range", "months", "Date", {}),
    # from/to are taken to filter on PubDate (as V1 trades_spec did); the table is clipped on PubDate again.
    "investor_types": Endpoint("investor_types", "/equities/investor-types", "range", "months", "PubDate", {}),
    # Weekly margin balances are dated on the week's last business day. PubDate is a V2 field since the 2026-09-28
    # change (filled from 2026-09-25 on); where it is absent or null the builder applies its own publication lag.
    "margin_interest": Endpoint("margin_interest", "/markets/margin-interest", "date", "week_ends", "Date", {}),
}
FETCH_ORDER = (
    "trading_calendar",
    "daily_quotes",
    "listed_info",
    "statements",
    "topix",
    "investor_types",
    "margin_interest",
)
# Values J-Quants uses for "no value" in numeric fields.
_BLANKS = ("", "-", "--")


# ---------------------------------------------------------------------------------------------------------------
# HTTP client
# ---------------------------------------------------------------------------------------------------------------
class JQuantsClient:
    """GET with pagination, a client-side rate limit, and retries (exponential backoff + jitter, Retry-After).

    `transport`, `sleep`, `clock` and `rng` are injectable so tests run offline and instantly.
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        requests_per_minute: float = 60,
        max_attempts: int = 5,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        retry_after_max_s: float = 600.0,
        timeout_s: float = 30.0,
        plan: str = "light",
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not api_key:
            raise ConfigError(f"J-Quants API key missing: set {API_KEY_ENV} or data.api_key")
        if requests_per_minute <= 0 or max_attempts < 1:
            raise ConfigError("data.requests_per_minute must be > 0 and data.max_attempts >= 1")
        self._key = api_key
        self.requests_per_minute = float(requests_per_minute)
        self.max_attempts = int(max_attempts)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.retry_after_max_s = float(retry_after_max_s)
        self.plan = plan
        self._sleep, self._clock = sleep, clock
        self._rng = rng or random.Random()
        self._last_request: dict[str, float] = {}
        self.n_requests = 0
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers={"x-api-key": api_key}, timeout=timeout_s, transport=transport
        )

    def __enter__(self) -> JQuantsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:  # never show the key
        return f"JQuantsClient(plan={self.plan!r}, requests_per_minute={self.requests_per_minute})"

    def redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    # ---- public ------------------------------------------------------------------------------------------------
    def get_all(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """All records of a query, following `pagination_key` until the server stops sending one."""
        query = dict(params)
        records: list[dict[str, Any]] = []
        seen: set[str] = set()
        while True:
            payload = self._get_json(path, query)
            if DATA_KEY not in payload:  # an error body sent with 200: never cache it as an empty page
                raise DataError(
                    f"J-Quants {path} {_public(params)}: HTTP 200 without '{DATA_KEY}' (keys: "
                    f"{', '.join(sorted(payload)) or 'none'}; message: "
                    f"{self.redact(str(payload.get('message', '')))[:200] or '-'}); nothing cached, "
                    f"rerun to fetch this page again"
                )
            batch = payload[DATA_KEY]
            if not isinstance(batch, list):
                raise DataError(f"J-Quants {path} {params}: '{DATA_KEY}' is {type(batch).__name__}, not a list")
            records.extend(batch)
            key = payload.get(PAGINATION_KEY)
            if not key:
                return records
            if key in seen:
                raise DataError(f"J-Quants {path} {params}: pagination_key repeated, aborting to avoid a loop")
            seen.add(key)
            query[PAGINATION_KEY] = key

    # ---- internals ---------------------------------------------------------------------------------------------
    def _throttle(self, path: str) -> None:
        """Space requests by 60/rpm seconds (plan-wide), and by 60/cap on endpoints with their own cap."""
        due = -float("inf")
        if "*" in self._last_request:
            due = self._last_request["*"] + 60.0 / self.requests_per_minute
        cap = PATH_RPM_CAP.get(path)
        if cap and path in self._last_request:
            due = max(due, self._last_request[path] + 60.0 / cap)
        wait = due - self._clock()
        if wait > 0:
            self._sleep(wait)
        self._last_request["*"] = self._clock()
        if cap:
            self._last_request[path] = self._last_request["*"]

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return base + self._rng.uniform(0, self.backoff_base_s)

    def _retry_after(self, resp: httpx.Response) -> float | None:
        value = resp.headers.get("Retry-After")
        if not value:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            seconds = (when - dt.datetime.now(when.tzinfo or dt.UTC)).total_seconds()
        return min(max(seconds, 0.0), self.retry_after_max_s)

    def _get_json(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        what = f"J-Quants GET {path} {_public(params)}"
        last_problem = ""
        for attempt in range(1, self.max_attempts + 1):
            self._throttle(path)
            self.n_requests += 1
            try:
                resp = self._http.get(path, params=params)
            except httpx.TransportError as e:
                last_problem = f"network error {type(e).__name__}"
                wait = self._backoff(attempt)
            else:
                if resp.status_code == 200:
                    try:
                        payload = resp.json()
                    except ValueError as e:
                        raise DataError(f"{what}: response is not valid JSON") from e
                    if not isinstance(payload, dict):
                        raise DataError(f"{what}: response is {type(payload).__name__}, not a JSON object")
                    return payload
                detail = self.redact(_server_message(resp))
                if resp.status_code in (401, 403):
                    raise ConfigError(
                        f"{what}: HTTP {resp.status_code}, invalid or expired API key (or the endpoint is not in "
                        f"plan '{self.plan}'; set data.plan/data.tables): {detail}"
                    )
                if resp.status_code != 429 and resp.status_code < 500:
                    raise DataError(f"{what}: HTTP {resp.status_code}: {detail}")
                last_problem = f"HTTP {resp.status_code}: {detail}"
                retry_after = self._retry_after(resp)
                wait = retry_after if retry_after is not None else self._backoff(attempt)
            if attempt < self.max_attempts:
                log.warning("%s: %s; retry %d/%d in %.1fs", what, last_problem, attempt, self.max_attempts - 1, wait)
                self._sleep(wait)
        raise DataError(f"{what}: failed after {self.max_attempts} attempts ({last_problem})")


def _public(params: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in params.items() if k != PAGINATION_KEY}


def _server_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict) and "message" in body:
            return str(body["message"])[:200]
    except ValueError:
        pass
    return resp.text[:200].replace("\n", " ") or resp.reason_phrase


# ---------------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FetchSettings:
    plan: str
    tables: tuple[str, ...]
    start: dt.date
    end: dt.date
    today: dt.date
    refresh_days: int
    statements_days: str
    cache_root: Path
    raw_dir: Path
    progress: bool


def _date_or_none(value: Any, key: str) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError as e:
        raise ConfigError(f"{key}='{value}' is not a date (YYYY-MM-DD)") from e


def _minus_years(d: dt.date, years: int) -> dt.date:
    try:
        return d.replace(year=d.year - years)
    except ValueError:  # 29 February
        return d.replace(year=d.year - years, day=28)


def settings(cfg: Settings, today: dt.date | None = None) -> FetchSettings:
    """Read and check the `data` (jquants) and `paths` config."""
    data = cast("JQuantsDataSettings", cfg.data)  # the data=jquants option
    plan = data.plan.lower()
    if plan not in PLAN_RPM:
        raise ConfigError(f"data.plan='{plan}' is not one of {', '.join(PLAN_RPM)}")
    tables_cfg = data.tables
    tables = tuple(tables_cfg) if tables_cfg else PLAN_TABLES[plan]
    unknown = [t for t in tables if t not in ENDPOINTS]
    if unknown:
        raise ConfigError(f"data.tables: unknown table(s) {', '.join(unknown)} (known: {', '.join(ENDPOINTS)})")
    if "daily_quotes" not in tables:
        raise ConfigError("data.tables must include daily_quotes")
    today = today or dt.date.today()
    end = _date_or_none(data.end_date, "data.end_date") or today
    end = min(end, today)
    start = _date_or_none(data.start_date, "data.start_date") or _minus_years(end, 5)
    if start > end:
        raise ConfigError(f"data.start_date {start} is after data.end_date {end}")
    statements_days = data.statements_days
    if statements_days not in ("sessions", "all"):
        raise ConfigError(f"data.statements_days='{statements_days}' must be 'sessions' or 'all'")
    return FetchSettings(
        plan=plan,
        tables=tuple(t for t in FETCH_ORDER if t in tables or t == "trading_calendar"),
        start=start,
        end=end,
        today=today,
        refresh_days=data.refresh_days,
        statements_days=statements_days,
        cache_root=Path(cfg.paths.cache_dir).expanduser() / "jquants",
        raw_dir=Path(cfg.paths.raw_dir).expanduser(),
        progress=data.progress,
    )


def resolve_api_key(cfg: Settings) -> str:
    """`data.api_key` if set, else the JQUANTS_API_KEY environment variable; ConfigError when neither is."""
    key = cast("JQuantsDataSettings", cfg.data).api_key or os.environ.get(API_KEY_ENV, "")
    key = str(key).strip()
    if not key:
        raise ConfigError(f"J-Quants API key missing: set the {API_KEY_ENV} environment variable (or data.api_key)")
    return key


# ---------------------------------------------------------------------------------------------------------------
# Page cache
# ---------------------------------------------------------------------------------------------------------------
def cache_file(cache_root: Path, table: str, key: dt.date) -> Path:
    return cache_root / table / f"{key.isoformat()}.parquet"


def _records_frame(records: list[dict[str, Any]]) -> pl.DataFrame:
    """Records as an all-string frame: the cache keeps the API's values verbatim; typing happens on assembly."""
    columns: dict[str, None] = {}
    for r in records:
        columns.update(dict.fromkeys(r))
    data = {c: [None if r.get(c) is None else str(r[c]) for r in records] for c in columns}
    return pl.DataFrame(data, schema={c: pl.Utf8 for c in columns})


def _read_cache(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except Exception as e:
        raise DataError(f"{path}: corrupt cache page ({type(e).__name__}); delete it and rerun") from e


# ---------------------------------------------------------------------------------------------------------------
# Work plan: which pages each table needs
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Page:
    table: str
    key: dt.date  # cache key: the date, or the first day of the month for range tables
    params: dict[str, str]


def _months(start: dt.date, end: dt.date) -> list[tuple[dt.date, dt.date]]:
    out = []
    first = start.replace(day=1)
    while first <= end:
        nxt = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
        out.append((first, nxt - dt.timedelta(days=1)))
        first = nxt
    return out


def _page_dates(ep: Endpoint, s: FetchSettings, calendar: pl.DataFrame) -> list[dt.date]:
    cal = calendar.filter(pl.col("Date").is_between(s.start, s.end))
    sessions = cal.filter(pl.col("HolDiv").is_in(["1", "2"]))["Date"].sort()
    if ep.dates == "sessions" or (ep.dates == "statement_days" and s.statements_days == "sessions"):
        return sessions.to_list()
    if ep.dates == "statement_days":
        return [s.start + dt.timedelta(days=i) for i in range((s.end - s.start).days + 1)]
    frame = pl.DataFrame({"Date": sessions})
    if ep.dates == "week_ends":
        picked = frame.group_by(pl.col("Date").dt.truncate("1w").alias("period")).agg(pl.col("Date").max())["Date"]
    elif ep.dates == "month_starts":
        picked = frame.group_by(pl.col("Date").dt.truncate("1mo").alias("period")).agg(pl.col("Date").min())["Date"]
        picked = pl.concat([picked, sessions.tail(1)])
    else:
        raise ValueError(f"unknown date rule {ep.dates}")
    return picked.unique().sort().to_list()


def _pages(ep: Endpoint, s: FetchSettings, calendar: pl.DataFrame | None) -> list[Page]:
    if ep.mode == "range":
        return [
            Page(ep.table, lo, {"from": lo.isoformat(), "to": hi.isoformat()}) for lo, hi in _months(s.start, s.end)
        ]
    assert calendar is not None
    return [Page(ep.table, d, {"date": d.isoformat()}) for d in _page_dates(ep, s, calendar)]


def _is_final(page: Page, ep: Endpoint, s: FetchSettings) -> bool:
    """A cached page is trusted only when its data can no longer change (outside the refresh window)."""
    horizon = s.today - dt.timedelta(days=s.refresh_days)
    last_day = _months(page.key, page.key)[0][1] if ep.mode == "range" else page.key
    return last_day < horizon


def _fetch_pages(client: JQuantsClient, ep: Endpoint, pages: list[Page], s: FetchSettings) -> tuple[int, int]:
    """Fetch every page not already final in the cache; each page set is written atomically once complete."""
    todo = [p for p in pages if not (cache_file(s.cache_root, ep.table, p.key).exists() and _is_final(p, ep, s))]
    for page in track(todo, f"jquants {ep.table} pages", enabled=bool(s.progress)):
        records = client.get_all(ep.path, page.params)
        write_parquet(_records_frame(records), cache_file(s.cache_root, ep.table, page.key))
    return len(pages) - len(todo), len(todo)


# ---------------------------------------------------------------------------------------------------------------
# Assembly into raw tables
# ---------------------------------------------------------------------------------------------------------------
def _assemble(ep: Endpoint, pages: list[Page], s: FetchSettings) -> pl.DataFrame | None:
    frames = [f for f in (_read_cache(cache_file(s.cache_root, ep.table, p.key)) for p in pages) if f.height]
    if not frames:
        return None
    df = pl.concat(frames, how="diagonal_relaxed").rename(ep.rename, strict=False)
    spec = TABLES[ep.table]
    if ep.date_col not in df.columns:
        raise DataError(f"J-Quants {ep.path}: responses lack field '{ep.date_col}' (got {', '.join(df.columns[:12])})")
    keep = [c for c in spec.columns if c in df.columns]
    df = df.select(keep)
    # Blank numeric / date strings mean "no value"; schema.conform casts the rest and reports anything odd.
    df = df.with_columns(
        pl.when(pl.col(c).str.strip_chars().is_in(_BLANKS)).then(None).otherwise(pl.col(c).str.strip_chars()).alias(c)
        for c in keep
        if spec.columns[c] != pl.Utf8
    )
    if "Code" in df.columns:
        df = df.with_columns(pl.col("Code").str.strip_chars())
    if "HolDiv" in df.columns:
        df = df.with_columns(pl.col("HolDiv").str.strip_chars())
    df = df.with_columns(
        pl.col(ep.date_col)
        .str.slice(0, 10)
        .str.to_date("%Y-%m-%d", strict=False)
        .fill_null(pl.col(ep.date_col).str.to_date("%Y%m%d", strict=False))
    )
    bad = df[ep.date_col].is_null()
    if bad.any():
        raise DataError(f"J-Quants {ep.path}: column '{ep.date_col}' unparseable in {int(bad.sum())} cached rows")
    df = df.filter(pl.col(ep.date_col).is_between(s.start, s.end))
    if spec.key:
        before = df.height
        df = df.unique(subset=[c for c in spec.key if c in df.columns], keep="last", maintain_order=True)
        if df.height < before:
            log.warning("jquants %s: dropped %d duplicate %s rows", ep.table, before - df.height, spec.key)
    return df if df.height else None


def _calendar_frame(pages: list[Page], s: FetchSettings) -> pl.DataFrame:
    cal = _assemble(ENDPOINTS["trading_calendar"], pages, s)
    if cal is None or cal.filter(pl.col("HolDiv").is_in(["1", "2"])).height == 0:
        raise DataError(f"J-Quants /markets/calendar: no trading sessions between {s.start} and {s.end}")
    return cal.sort("Date")


def fetch(
    cfg: Settings,
    *,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    today: dt.date | None = None,
) -> dict[str, Path]:
    """Fetch the configured J-Quants tables into the page cache and write the raw tables; returns their paths."""
    cfg = source_config(cfg, "jquants")
    s = settings(cfg, today)
    api_key = resolve_api_key(cfg)
    data = cast("JQuantsDataSettings", cfg.data)  # source_config checked data.source
    rpm = data.requests_per_minute or PLAN_RPM[s.plan]
    log.info(
        "J-Quants V2 fetch %s..%s, plan %s (%s req/min), tables: %s", s.start, s.end, s.plan, rpm, ", ".join(s.tables)
    )
    frames: dict[str, pl.DataFrame] = {}
    with JQuantsClient(
        api_key,
        base_url=data.base_url,
        requests_per_minute=rpm,
        max_attempts=data.max_attempts,
        backoff_base_s=data.backoff_base_s,
        backoff_max_s=data.backoff_max_s,
        retry_after_max_s=data.retry_after_max_s,
        timeout_s=data.timeout_s,
        plan=s.plan,
        transport=transport,
        sleep=sleep,
    ) as client:
        try:
            calendar: pl.DataFrame | None = None
            for table in s.tables:
                ep = ENDPOINTS[table]
                pages = _pages(ep, s, calendar)
                cached, fetched = _fetch_pages(client, ep, pages, s)
                log.info("jquants %s: %d pages (%d cached, %d fetched)", table, len(pages), cached, fetched)
                if table == "trading_calendar":
                    calendar = _calendar_frame(pages, s)
                    frames[table] = calendar
                    continue
                df = _assemble(ep, pages, s)
                if df is None:
                    if table == "daily_quotes":
                        raise DataError(f"J-Quants {ep.path}: no daily bars between {s.start} and {s.end}")
                    log.warning("jquants %s: no rows between %s and %s; table not written", table, s.start, s.end)
                    continue
                frames[table] = df
        except (DataError, ConfigError) as e:
            # Defence in depth: no message leaves this module with the key in it.
            raise type(e)(client.redact(str(e))) from None
        log.info("jquants: %d requests", client.n_requests)
    return replace_raw_tables(frames, s.raw_dir, source="jquants")
