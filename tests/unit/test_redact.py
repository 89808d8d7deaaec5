"""Secrets never reach a stored config: keys named like credentials and passwords inside URLs are blanked."""

from __future__ import annotations

from gogooku3.config.compose import load_config, redact, redact_text, to_dict, to_yaml


def test_stored_config_blanks_api_key_and_url_password():
    cfg = load_config(
        [
            "data=jquants",
            "data.api_key=jq-abc123",
            "hpo.storage='mysql+pymysql://bob:s3cr%40t@db:3306/optuna?ssl=1&password=p2'",
        ]
    )
    text = to_yaml(cfg)
    assert "jq-abc123" not in text and "s3cr%40t" not in text and "p2" not in text.split("storage:")[1][:80]
    d = to_dict(cfg)
    assert d["data"]["api_key"] == "***"
    assert d["hpo"]["storage"] == "mysql+pymysql://bob:***@db:3306/optuna?ssl=1&password=***"
    assert d["train"]["lr"] == cfg.train.lr and d["data"]["base_url"] == "https://api.jquants.com/v2"


def test_redact_by_key_name_and_inside_strings():
    got = redact(
        {
            "db_password": "x",
            "access_token": "y",
            "client-secret": "z",
            "api_key": None,
            "apikey": "k",
            "keys_total": 3,
            "monkey": "m",
            "nested": [{"token": "t"}, "https://u:pw@h/p", "plain"],
        }
    )
    assert got == {
        "db_password": "***",
        "access_token": "***",
        "client-secret": "***",
        "api_key": None,
        "apikey": "***",
        "keys_total": 3,
        "monkey": "m",
        "nested": [{"token": "***"}, "https://u:***@h/p", "plain"],
    }
    assert redact_text("sqlite:////tmp/optuna.db") == "sqlite:////tmp/optuna.db"
    assert redact_text("postgresql://alice@h/db?sslmode=require") == "postgresql://alice@h/db?sslmode=require"
