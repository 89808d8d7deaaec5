"""Issue 20 (6, 7, 9): values read from the environment and URL credentials never reach a printed or stored config,
a file name or an error line; no CSV cell the project writes is a live spreadsheet formula; a date key far out of
range, a '$' in a sector name and two runs starting in the same second end cleanly."""

from __future__ import annotations

import csv
import io
import re
import threading
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import polars as pl
import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

import gogooku3
from gogooku3.cli import app
from gogooku3.config.compose import load_config, redact_text, redact_url, safe_name, to_dict, to_yaml, url_secrets
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.core.io import csv_safe, new_run_dir, point_last, write_csv
from gogooku3.evaluation.backtest.config import BacktestConfig
from gogooku3.pipelines.predict import rank_table

KEY = "jq-ENVSECRET-7c41d09b"
HOSTILE = '=HYPERLINK("http://x","y")'


# ---- 6: secrets ------------------------------------------------------------------------------------------------
def test_a_value_read_from_the_environment_is_blanked_in_config_show_and_stored_configs(monkeypatch):
    monkeypatch.setenv("JQUANTS_API_KEY", KEY)
    monkeypatch.setenv("G3_TEST_SHORT", "ab")
    over = ["hpo.study_name=${oc.env:JQUANTS_API_KEY}", "safe.experiment_name=${oc.env:G3_TEST_SHORT}"]
    shown = CliRunner().invoke(app, ["config", "show", *over])
    assert shown.exit_code == 0, shown.output
    assert KEY not in shown.output and "study_name: '***'" in shown.output
    assert "experiment_name: '***'" in shown.output  # short: blanked where it stands
    cfg = load_config(over)
    assert cfg.hpo.study_name == KEY  # the config itself keeps the value
    text = to_yaml(cfg)
    assert KEY not in text and "study_name: '***'" in text and "experiment_name: '***'" in text
    assert to_dict(cfg.hpo)["study_name"] == "***"  # a node alone: blanked by value
    assert to_dict(cfg.train)["lr"] == cfg.train.lr


def test_an_interpolation_of_an_environment_key_is_blanked_too(monkeypatch):
    monkeypatch.setenv("G3_TEST_DB", "postgresql://u:pw-8c1e2f@db/x")
    cfg = load_config(["hpo.storage=${oc.env:G3_TEST_DB}", "hpo.study_name=${hpo.storage}"])
    d = to_dict(cfg)
    assert d["hpo"]["storage"] == "***" and d["hpo"]["study_name"] == "***"


@pytest.mark.parametrize(
    "url,password,want",
    [
        ("postgresql://alice:pa/ss@h:5432/db", "pa/ss", "postgresql://alice:***@h:5432/db"),
        ("postgresql://alice:pa ss word@h/db", "pa ss word", "postgresql://alice:***@h/db"),
        ("mysql://bob:p@ss@h/db?ssl=1", "p@ss", "mysql://bob:***@h/db?ssl=1"),
        ("mysql://bob:p?ss@h/db", "p?ss", "mysql://bob:***@h/db"),
        ("postgresql://h/db?sslmode=require&sslpassword=zz9&user=a", "zz9", None),
        ("postgresql://alice:s3cr%40t@h/db?Token=t0k&api_key=k3y", "s3cr@t", None),
    ],
)
def test_url_credentials_are_blanked_as_sqlalchemy_reads_them(url, password, want):
    out = redact_url(url)
    if want is not None:
        assert out == want
    parsed = make_url(out)
    assert parsed.password in (None, "***")
    assert all(v == "***" for k, v in parsed.query.items() if re.search("pass|token|key", k, re.I))
    for s in url_secrets(url):
        assert s not in out
    assert password in url_secrets(url)


def test_redaction_keeps_what_is_not_a_secret():
    for url in ("sqlite:////tmp/optuna.db", "postgresql://alice@h/db?sslmode=require", "https://api.jquants.com/v2"):
        assert redact_url(url) == url and redact_text(f"open {url} now") == f"open {url} now"
    assert redact_text("cannot open mysql://u:a/b@h/db (x)") == "cannot open mysql://u:***@h/db (x)"
    assert redact_text("x 'pa ss' y", ["pa ss"]) == "x '***' y"


def test_stored_config_blanks_url_passwords_with_slash_space_and_ssl_password():
    url = "postgresql://alice:pa/ss word@db:5432/optuna?sslpassword=zz9&sslmode=require"
    text = to_yaml(load_config([f"hpo.storage='{url}'"]))
    assert "pa/ss" not in text and "ss word" not in text and "zz9" not in text
    assert "postgresql://alice:***@db:5432/optuna?sslpassword=***&sslmode=require" in text


def test_tune_error_line_and_file_names_keep_no_secret(tmp_path, monkeypatch):
    from gogooku3.pipelines.tune import Tuner, _storage, storage_url

    url = "postgresql+nodriver://alice:pa/ss word@db:5432/optuna?sslpassword=zz9"
    with pytest.raises(ConfigError) as e:
        _storage(url)
    assert "pa/ss" not in str(e.value) and "word@" not in str(e.value) and "zz9" not in str(e.value)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JQUANTS_API_KEY", KEY)
    space = ["+hpo.space.x.param=train.lr", "+hpo.space.x.type=float", "+hpo.space.x.low=0.001"]
    space += ["+hpo.space.x.high=0.01", "+hpo.space.x.log=false", "+hpo.space.x.step=null", "+hpo.space.x.choices=null"]
    cfg = load_config(["hpo.study_name=${oc.env:JQUANTS_API_KEY}", *space])
    tuner = Tuner(cfg)
    assert KEY not in tuner.study_name and re.fullmatch(r"redacted-[0-9a-f]{8}", tuner.study_name)
    assert KEY not in storage_url(cfg)


def test_safe_name():
    assert safe_name("atft_gat_fan") == "atft_gat_fan"
    a, b = safe_name("../x y"), safe_name("../x_y")
    assert re.fullmatch(r"x_y-[0-9a-f]{8}", a) and a != b and "/" not in a
    assert re.fullmatch(r"redacted-[0-9a-f]{8}", safe_name("anything", secret=True))


# ---- 7: CSV ----------------------------------------------------------------------------------------------------
def test_write_csv_neutralises_formula_cells_and_keeps_numbers(tmp_path):
    df = pl.DataFrame(
        {
            "Code": [HOSTILE, "+1", "-2", "@SUM(A1)", "\tx", "\rx", "13010", "a=b"],
            "score": [-0.5, 1.0, -2.0, 0.0, 1e-3, 2.0, -3.0, 4.0],
            "n": [-1, 2, -3, 4, -5, 6, -7, 8],
        }
    ).with_columns(pl.col("Code").cast(pl.Categorical).alias("cat"))
    f = write_csv(df, tmp_path / "x.csv")
    back = pl.read_csv(f)
    want = ["'" + HOSTILE, "'+1", "'-2", "'@SUM(A1)", "'\tx", "'\rx", "13010", "a=b"]
    assert back["Code"].to_list() == want
    assert back["cat"].to_list() == back["Code"].to_list()
    assert back["score"].to_list() == df["score"].to_list() and back["n"].to_list() == df["n"].to_list()
    assert csv_safe(pl.DataFrame({"=a": [1]})).columns == ["'=a"]


def test_prediction_table_csv_has_no_live_formula(tmp_path):
    import datetime as dt

    d = dt.date(2024, 5, 1)
    preds = pl.DataFrame({"Date": [d] * 4, "Code": [HOSTILE, "13010", "-1", "@x"], "pred_1d": [0.3, -0.1, 0.2, -0.4]})
    names = pl.DataFrame({"Code": ["13010"], "CoName": ["=cmd|' /C calc'!A0"]})
    t = rank_table(preds, [1], 1, BacktestConfig.from_any(None), names)
    text = write_csv(t, tmp_path / "pred.csv").read_text()
    cells = [c for row in csv.reader(io.StringIO(text)) for c in row][len(t.columns) :]
    assert not [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r") or (c[:1] == "-" and not _number(c))]
    assert "-0.1" in text  # a negative score stays a number


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_every_csv_the_package_writes_goes_through_write_csv():
    root = Path(gogooku3.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "io.py" and re.search(r"\.write_csv\(|\.to_csv\(|csv\.writer\(", p.read_text())
    ]
    assert offenders == []


# ---- 9: dates, '$' in chart text, concurrent run folders -------------------------------------------------------
@pytest.mark.parametrize(
    "value,message",
    [
        ("9999-12-31", r"data\.end_date: 9999-12-31 is outside the dates any data source covers"),
        ("0001-01-01", r"data\.end_date: 0001-01-01 is outside"),
        ("2025-13-40", r"data\.end_date: expected a YYYY-MM-DD date, got '2025-13-40'"),
    ],
)
def test_a_date_key_out_of_range_is_one_config_error(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config([f"data.end_date={value}"])
    out = CliRunner().invoke(app, ["data", "synth", f"data.end_date={value}"])
    assert out.exit_code == 2 and len(out.stderr.splitlines()) == 1 and "Traceback" not in out.output


def test_a_dollar_in_chart_text_is_printed_not_parsed(tmp_path):
    from gogooku3.evaluation import report_html as H

    groups = pl.DataFrame(
        {
            "group": ["$\\frac$", "a$b$c", "x"],
            "rank_ic_mean": [0.1, -0.2, 0.05],
            "rank_ic_tstat": [1.0, -2.0, 0.5],
            "days": [9, 9, 9],
        }
    )
    with pytest.raises(ValueError):  # without the report's setting matplotlib reads TeX and fails
        H.chart_by_group(groups, 50, "RankIC by $\\frac$")
    plt.close("all")
    with matplotlib.rc_context({"text.parse_math": False}):
        assert H.chart_by_group(groups, 50, "RankIC by $\\frac$")


def test_report_draws_sector_names_with_dollars(tmp_path):
    import json

    from test_report import make_run_dir  # tests/unit is on sys.path (rootdir-relative imports)

    from gogooku3.evaluation.report import build_report
    from gogooku3.features.manifest import FeatureManifest, manifest_path

    run = make_run_dir(tmp_path)
    model = pl.read_parquet(run / "predictions" / "atft" / "test.parquet")
    ds = tmp_path / "ds.parquet"
    sector = pl.when(pl.col("Code").str.slice(3, 1) < "5").then(pl.lit("$\\frac$")).otherwise(pl.lit("a$b$"))
    model.select("Date", "Code", Close=pl.lit(1000.0), returns_1d=pl.lit(0.0), S33=sector).write_parquet(ds)
    FeatureManifest.from_frame(pl.read_parquet(ds), {}, [1], 1).save(manifest_path(ds))
    cfg = load_config([f"paths.output_dir={tmp_path / 'o'}", f"paths.dataset={ds}", f"paths.raw_dir={tmp_path / 'r'}"])
    rep = json.loads(build_report(cfg, run)["json"].read_text())
    assert {g["group"] for g in rep["tear_sheet"]["by_sector"]} == {"$\\frac$", "a$b$"}


def test_run_folders_created_in_the_same_second_are_distinct(tmp_path, monkeypatch):
    from gogooku3.core import io as core_io

    monkeypatch.setattr(core_io, "timestamp", lambda: "20260101_000000")
    n = 24
    barrier, made, errors = threading.Barrier(n), [], []

    def one() -> None:
        barrier.wait()
        try:
            run = new_run_dir(tmp_path / "runs")
            made.append(run)
            point_last(tmp_path / "runs", run)
        except Exception as e:  # any failure is the test's finding
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(made)) == n
    last = tmp_path / "runs" / "last"
    assert last.is_symlink() and last.resolve() in {p.resolve() for p in made}
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted([*(p.name for p in made), "last"])


def test_point_last_refuses_a_real_folder_and_keeps_it(tmp_path):
    runs = tmp_path / "runs"
    run = new_run_dir(runs)
    (runs / "last").mkdir()
    (runs / "last" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match=r"runs/last: is a real folder, not the link to the latest run; rename it"):
        point_last(runs, run)
    assert (runs / "last" / "keep.txt").read_text() == "x"


def test_the_shells_working_directory_is_not_a_secret(monkeypatch, tmp_path):
    """PWD and OLDPWD match the `pwd` of credential names, but blanking them would blank every absolute path."""
    from gogooku3.config.compose import secret_values

    monkeypatch.setenv("PWD", str(tmp_path / "project"))
    monkeypatch.setenv("OLDPWD", str(tmp_path / "before"))
    monkeypatch.setenv("DB_PWD", "hunter2-hunter2")
    found = secret_values()
    assert (
        "hunter2-hunter2" in found and str(tmp_path / "project") not in found and str(tmp_path / "before") not in found
    )
