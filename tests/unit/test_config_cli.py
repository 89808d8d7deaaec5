"""Experiments and user config directories: `config show`, `config groups`, `--config-dir`, missing experiments,
and every command's help naming its config groups with examples."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from gogooku3.cli import app
from gogooku3.config.compose import load_config, to_dict
from gogooku3.core.errors import ConfigError

runner = CliRunner()


@pytest.fixture()
def user_dir(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "my_exp.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: tiny\ntrain:\n  lr: 0.0007\n"
    )
    (tmp_path / "model").mkdir()
    small = load_config([]).model
    (tmp_path / "model" / "tiny.yaml").write_text(
        yaml.safe_dump(
            {**to_dict(small), "name": "tiny", "hidden": 16, "gat_heads": [2, 1], "quantiles": [0.1, 0.5, 0.9]}
        )
    )
    return tmp_path


def test_packaged_example_experiment():
    cfg = load_config(["experiment=example"])
    assert cfg.model.gat is False and cfg.train.ensemble == 1
    assert load_config(["+experiment=example"]).train.ensemble == 1  # both spellings
    assert load_config(["experiment=example", "train.ensemble=3"]).train.ensemble == 3  # the command line wins
    assert load_config([]).model.gat is True


def test_user_config_dir_experiment_and_group_option(user_dir):
    cfg = load_config(["experiment=my_exp"], config_dirs=[user_dir])
    assert (cfg.model.name, cfg.model.hidden, cfg.train.lr) == ("tiny", 16, 0.0007)
    assert load_config(["model=tiny"], config_dirs=[user_dir]).model.hidden == 16


@pytest.mark.parametrize("override", ["+experiment=foo", "experiment=foo"])
def test_missing_experiment_is_one_clear_error(override, user_dir):
    with pytest.raises(
        ConfigError, match=r"experiment=foo: no such option \(options of experiment: example, factor_market, my_exp"
    ):
        load_config([override], config_dirs=[user_dir])
    out = runner.invoke(app, ["--config-dir", str(user_dir), "config", "show", override])
    assert out.exit_code == 2
    assert out.output.count("\n") == 1 and out.output.startswith("error: experiment=foo: no such option")


def test_experiment_without_global_package_and_bad_config_dir(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "flat.yaml").write_text("model:\n  hidden: 16\n")
    with pytest.raises(ConfigError, match="@package _global_"):
        load_config(["experiment=flat"], config_dirs=[tmp_path])
    with pytest.raises(ConfigError, match="not a directory"):
        load_config([], config_dirs=[tmp_path / "nope"])


def test_config_show_composes_redacts_and_takes_the_config_dir_anywhere(user_dir):
    out = runner.invoke(app, ["config", "show", "data=jquants", "data.api_key=s3cret", "model.hidden=32"])
    assert out.exit_code == 0, out.output
    shown = yaml.safe_load(out.output)
    assert shown["data"]["api_key"] == "***" and shown["model"]["hidden"] == 32 and "s3cret" not in out.output
    for args in (
        ["--config-dir", str(user_dir), "config", "show", "experiment=my_exp"],
        ["config", "show", "--config-dir", str(user_dir), "experiment=my_exp"],
        ["config", "show", f"--config-dir={user_dir}", "experiment=my_exp"],
    ):
        out = runner.invoke(app, args)
        assert out.exit_code == 0, out.output
        assert yaml.safe_load(out.output)["model"]["name"] == "tiny"
    out = runner.invoke(app, ["config", "show", "train.lrr=1"])
    assert out.exit_code == 2 and "did you mean 'train.lr'" in out.output


def test_config_groups_lists_packaged_and_user_options(user_dir):
    out = runner.invoke(app, ["--config-dir", str(user_dir), "config", "groups"])
    assert out.exit_code == 0, out.output
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.output.splitlines() if ln and not ln.startswith("searched")}
    assert rows["model"][:3] == ["full", "small*", "tiny"]
    assert rows["experiment"][:3] == ["example", "factor_market", "my_exp"] and "default)" in rows["experiment"][-1]
    assert rows["trainer"] == ["cpu*", "ddp", "gpu"]
    assert str(user_dir) in out.output


COMMANDS = [
    ["data", "synth"],
    ["data", "fetch"],
    ["data", "import"],
    ["data", "build"],
    ["safe"],
    ["train"],
    ["tune"],
    ["bench"],
    ["backtest"],
    ["report"],
    ["predict"],
    ["run"],
    ["cache", "clean"],
    ["config", "show"],
    ["config", "groups"],
    ["export"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_help_names_groups_and_examples(cmd):
    out = runner.invoke(app, [*cmd, "--help"], terminal_width=200)
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "Config groups read:" in text
    examples = [ln for ln in out.output.splitlines() if ln.strip().startswith("gogooku3 ")]
    assert len(examples) >= 2 or (cmd == ["config", "groups"] and examples), out.output
