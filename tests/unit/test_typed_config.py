"""The typed config is what the code receives: `load_config` returns `Settings`, every command hands it to its
pipeline, the library reads typed attributes (no DictConfig, no casts of config values outside gogooku3/config/),
and the helpers that turn it into plain values give what the composed DictConfig gave."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from typer.testing import CliRunner

import gogooku3
from gogooku3.cli import app
from gogooku3.config.compose import compose_config, load_config, path, select, to_dict, to_yaml, with_values
from gogooku3.config.schema import Settings
from gogooku3.core.errors import ConfigError

SRC = Path(gogooku3.__file__).resolve().parent
CONFIG_DIR = SRC / "config"


def _sources() -> dict[str, str]:
    """{path relative to src/gogooku3: text} of every module outside gogooku3/config/."""
    return {
        str(p.relative_to(SRC)): p.read_text(encoding="utf-8")
        for p in sorted(SRC.rglob("*.py"))
        if CONFIG_DIR not in p.parents
    }


def test_load_config_returns_the_typed_settings():
    cfg = load_config(["model.hidden=32", "data=jquants"])
    assert type(cfg) is Settings
    assert cfg.model.hidden == 32 and isinstance(cfg.train.lr, float) and cfg.data.source == "jquants"
    assert isinstance(compose_config()["model"]["hidden"], int)  # the composed form stays available (config show)


def test_no_dictconfig_or_omegaconf_outside_the_config_package():
    found = [
        f"{name}:{i}"
        for name, text in _sources().items()
        for i, line in enumerate(text.splitlines(), 1)
        if "DictConfig" in line or re.search(r"\bomegaconf\b|\bOmegaConf\b", line)
    ]
    assert found == []


CAST = re.compile(r"\b(int|float|str|bool)\(\s*(cfg|self\.cfg|ctx\.cfg|self\.ctx\.cfg)\.")


def test_no_cast_of_a_config_value_remains():
    """Settings values already have their schema types: `cfg.train.ensemble`, not `int(cfg.train.ensemble)`."""
    found = [
        f"{name}:{i}: {line.strip()}"
        for name, text in _sources().items()
        for i, line in enumerate(text.splitlines(), 1)
        if CAST.search(line)
    ]
    assert found == []


# ---- every command hands a Settings to its pipeline ---------------------------------------------------------
COMMANDS = [
    (["data", "synth"], "gogooku3.sources.synthetic", "synthesize"),
    (["data", "fetch"], "gogooku3.sources.jquants", "fetch"),
    (["data", "import", "prices.csv"], "gogooku3.sources.files", "import_files"),
    (["data", "build"], "gogooku3.features.builder", "build_dataset"),
    (["data", "build", "--incremental"], "gogooku3.features.incremental", "update_dataset"),
    (["safe"], "gogooku3.pipelines.safe", "SafeTrainingPipeline"),
    (["train"], "gogooku3.pipelines.atft", "CompleteATFTTrainingPipeline"),
    (["tune"], "gogooku3.pipelines.tune", "tune"),
    (["backtest", "--predictions", "p.parquet"], "gogooku3.evaluation.backtest.run", "run_backtest"),
    (["report", "--run", "r"], "gogooku3.evaluation.report", "build_report"),
    (["predict", "--run", "r"], "gogooku3.pipelines.predict", "predict"),
    (["export", "--to", "alphalens", "r"], "gogooku3.evaluation.export", "export_run"),
    (["run"], "gogooku3.pipelines.full", "FullTrainingPipeline"),
]


@pytest.mark.parametrize("argv,module,name", COMMANDS, ids=[" ".join(c[0][:2]) for c in COMMANDS])
def test_every_command_passes_settings_to_its_pipeline(argv, module, name, monkeypatch):
    import importlib

    mod = importlib.import_module(module)
    assert inspect.signature(getattr(mod, name)).parameters["cfg"].annotation == "Settings"
    seen = []

    class Spy:
        def __init__(self, cfg, *args, **kwargs):
            seen.append(cfg)

        def run(self):
            return {}

    monkeypatch.setattr(mod, name, Spy)
    out = CliRunner().invoke(app, [*argv, "seed=7"])
    assert out.exit_code == 0, out.output
    assert len(seen) == 1 and type(seen[0]) is Settings and seen[0].seed == 7


# ---- plain values: what the composed DictConfig gave -----------------------------------------------------------
@pytest.mark.parametrize("overrides", [[], ["data=jquants", "split=purged_kfold", "model=full"], ["data=files"]])
def test_to_dict_holds_what_the_composed_config_holds(overrides):
    d = to_dict(load_config(overrides))
    assert d == OmegaConf.to_container(compose_config(overrides), resolve=True)  # same keys, equal values
    assert isinstance(d["model"]["gat_heads"], list)  # tuples as lists, as before
    assert OmegaConf.create(to_yaml(load_config(overrides))) == OmegaConf.create(to_yaml(compose_config(overrides)))


def test_features_and_labels_fingerprints_are_unchanged():
    """Recorded with the code before the typed config was passed around (a DictConfig then): a dataset built before
    must stay reusable by `data build --incremental`."""
    from gogooku3.features.fingerprints import config_fingerprints

    assert config_fingerprints(load_config()) == {"features": "0a3551902bd584c5", "labels": "b3a5895bf13d5469"}
    assert config_fingerprints(load_config(["labels.horizons=[1,5]", "features.groups.statements=false"])) == {
        "features": "14762ad0ea81766f",
        "labels": "91aec4a51461ccc2",
    }


def test_select_path_and_with_values():
    cfg = load_config()
    cfg.paths.cache_dir = "~/c"  # a mutable dataclass: tests set values as attributes
    assert select(cfg, "model.graph.k") == cfg.model.graph.k and select(cfg, "model.nope", "x") == "x"
    assert select(cfg, "baseline.params.num_leaves") == 31 and path(cfg, "paths.cache_dir") == Path("~/c").expanduser()
    new = with_values(cfg, {"train.lr": 1, "model.gat_heads": [4, 2], "model.hidden": 64})
    assert (new.train.lr, new.model.gat_heads, new.model.hidden) == (1.0, (4, 2), 64)  # converted as load_config
    assert isinstance(new.train.lr, float) and cfg.model.hidden != 64  # the input is untouched
    with pytest.raises(ConfigError, match=r"train.nope' does not exist"):
        with_values(cfg, {"train.nope": 1})
    with pytest.raises(ConfigError, match=r"model.n_heads: must be a divisor of model.hidden"):
        with_values(cfg, {"model.hidden": 30})


def test_member_workers_get_a_pickled_settings_with_their_threads():
    from gogooku3.training.member_pool import job_config

    cfg = load_config(["trainer.progress_bar=true"])
    job = pickle.loads(pickle.dumps(job_config(cfg, 3)))
    assert type(job) is Settings and (job.trainer.num_threads, job.trainer.progress_bar) == (3, False)
    assert dataclasses.replace(job, trainer=cfg.trainer) == cfg and cfg.trainer.progress_bar is True
