"""Typed settings: did-you-mean on unknown keys, type errors, dataclass defaults equal to the packaged YAML."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest
from omegaconf import OmegaConf

from gogooku3.config.compose import load_config, settings
from gogooku3.core.errors import ConfigError
from gogooku3.config.schema import (
    FilesDataSettings,
    JQuantsDataSettings,
    ModelSettings,
    PurgedKFoldSplitSettings,
    Settings,
    SyntheticDataSettings,
    WalkForwardSplitSettings,
    typed,
)

# (option, key): known differences between the dataclasses and the YAML, each with what fixes it.
OPTIONS = ["data=jquants", "data=files", "split=purged_kfold", "model=full", "trainer=gpu", "trainer=ddp"]


def _plain(overrides: list[str]) -> dict:
    return OmegaConf.to_container(load_config(overrides), resolve=True)


def _diff(yaml: Any, obj: Any, where: str, strict: bool = True) -> list[str]:
    """Differences between a YAML value and a dataclass value: key sets of dataclass nodes (both ways when
    strict; entries of dict-valued leaves such as hpo.space may omit keys that have defaults) and leaf values."""
    if dataclasses.is_dataclass(obj):
        if not isinstance(yaml, dict):
            return [f"{where}: YAML {yaml!r} is not a mapping ({type(obj).__name__})"]
        names = {f.name for f in dataclasses.fields(obj)}
        out = [f"{where}.{k}: in the YAML, not a field of {type(obj).__name__}" for k in sorted(set(yaml) - names)]
        if strict:
            out += [f"{where}.{k}: field of {type(obj).__name__}, not in the YAML" for k in sorted(names - set(yaml))]
        for k in sorted(names & set(yaml)):
            out += _diff(yaml[k], getattr(obj, k), f"{where}.{k}", strict)
        return out
    if isinstance(obj, dict):
        if not isinstance(yaml, dict) or set(yaml) != set(obj):
            return [f"{where}: YAML {yaml!r}, dataclass default {obj!r}"]
        return [d for k in obj for d in _diff(yaml[k], obj[k], f"{where}.{k}", strict=False)]
    if isinstance(obj, (list, tuple)):
        if not isinstance(yaml, (list, tuple)) or len(yaml) != len(obj):
            return [f"{where}: YAML {yaml!r}, dataclass default {obj!r}"]
        return [d for i, (y, o) in enumerate(zip(yaml, obj)) for d in _diff(y, o, f"{where}[{i}]", strict)]
    if yaml != obj or isinstance(yaml, bool) != isinstance(obj, bool):
        return [f"{where}: YAML {yaml!r}, dataclass default {obj!r}"]
    return []


# ---- unknown keys, types, required keys ---------------------------------------------------------------------
@pytest.mark.parametrize("override", ["train.lrr=1", "+train.lrr=1"])
def test_unknown_key_did_you_mean(override):
    with pytest.raises(ConfigError, match=r"^train\.lrr: unknown key; did you mean 'train\.lr'\? \(keys of train: "):
        load_config([override])


@pytest.mark.parametrize("override", ["train.loss.lamda_q=0.1", "+train.loss.lamda_q=0.1"])
def test_nested_typo_did_you_mean(override):
    with pytest.raises(ConfigError, match=r"train\.loss\.lamda_q: unknown key; did you mean 'train\.loss\.lambda_q'"):
        load_config([override])


def test_group_and_option_typos():
    with pytest.raises(ConfigError, match=r"modle: unknown key; did you mean 'model'"):
        load_config(["modle=full"])
    with pytest.raises(ConfigError, match=r"model=fulll: no such option; did you mean 'model=full'"):
        load_config(["model=fulll"])
    with pytest.raises(ConfigError, match=r"data\.plann: unknown key; did you mean 'data\.plan'\? \(keys of data \("
                                          r"data=jquants\)"):
        load_config(["data=jquants", "data.plann=x"])
    with pytest.raises(ConfigError, match=r"^split\.mode: not a key of split=purged_kfold \(it belongs to "
                                          r"split=walk_forward\); choose an option with split=<name>"):
        load_config(["split.method=purged_kfold"])


@pytest.mark.parametrize("override,message", [
    ("train.max_epochs=abc", "train.max_epochs: expected int, got 'abc'"),
    ("data.n_stocks=1.5", "data.n_stocks: expected int, got 1.5"),
    ("train.swa=1", "train.swa: expected bool, got 1"),
    ("train.lr=null", "train.lr: expected float, got null (this key cannot be null)"),
    ("model.gat_heads=[4,2,1]", "model.gat_heads: expected 2 values"),
    ("labels.horizons=[1,x]", "labels.horizons[1]: expected int, got 'x'"),
])
def test_wrong_type(override, message):
    with pytest.raises(ConfigError) as e:
        load_config([override])
    assert str(e.value).startswith(message)


def test_accepted_values():
    s = settings(load_config(["train.lr=1", "train.ema_decay=null", "train.limit_train_batches=0.5",
                              "train.loss.horizon_weights=null", "data=jquants", "data.tables=[daily_quotes]"]))
    assert s.train.lr == 1.0 and isinstance(s.train.lr, float)          # int accepted for a float
    assert s.train.ema_decay is None and s.train.limit_train_batches == 0.5
    assert s.train.loss.horizon_weights is None and s.data.tables == ["daily_quotes"]
    assert s.model.quantiles == (0.1, 0.25, 0.5, 0.75, 0.9)              # a list becomes a tuple where annotated


@dataclass
class Inner:
    k: int


@dataclass
class Outer:
    inner: Inner
    xs: list[float] = field(default_factory=list)


def test_required_and_missing_values():
    assert typed({"inner": {"k": 1}, "xs": [1, 2.5]}, Outer, "g") == Outer(Inner(1), [1.0, 2.5])
    with pytest.raises(ConfigError, match=r"^g\.inner\.k: required key missing"):
        typed({"inner": {}}, Outer, "g")
    with pytest.raises(ConfigError, match=r"^g\.inner\.k: no value set \(\?\?\? in the config\)"):
        typed(OmegaConf.create({"inner": {"k": "???"}}), Outer, "g")
    with pytest.raises(ConfigError, match=r"^g\.inner: expected a mapping"):
        typed({"inner": 3}, Outer, "g")


# ---- defaults equal the YAML --------------------------------------------------------------------------------
@pytest.mark.parametrize("group", [f.name for f in dataclasses.fields(Settings)])
def test_defaults_equal_default_yaml(group):
    cfg = _plain([])
    assert group in cfg, f"Settings.{group} has no config key"
    assert _diff(cfg[group], getattr(Settings(), group), group) == []


def test_top_level_keys_are_settings_fields():
    assert set(_plain([])) == {f.name for f in dataclasses.fields(Settings)}


@pytest.mark.parametrize("option,default", [
    ("data=jquants", JQuantsDataSettings()), ("data=files", FilesDataSettings()),
    ("split=purged_kfold", PurgedKFoldSplitSettings())])
def test_option_defaults_equal_their_yaml(option, default):
    """data and split options have their own dataclasses: keys and defaults both match that option's YAML."""
    group = option.split("=")[0]
    assert _diff(_plain([option])[group], default, group) == []


@pytest.mark.parametrize("option", ["model=full", "trainer=gpu", "trainer=ddp"])
def test_option_keys_equal_dataclass_fields(option):
    """Options sharing their group's dataclass (defaults = the default option): same keys."""
    group = option.split("=")[0]
    cfg = _plain([option])
    assert _diff(cfg[group], typed(cfg[group], type(getattr(Settings(), group)), group), group) == []


def test_atft_config_defaults_equal_small_yaml():
    from gogooku3.model.atft_gat_fan import ATFTConfig

    yaml = _plain(["model=small"])["model"]
    atft = ATFTConfig(n_features=1)
    model_fields = {f.name for f in dataclasses.fields(ModelSettings)} - set(ATFTConfig.MODEL_GROUP_ONLY)
    assert model_fields == {f.name for f in dataclasses.fields(ATFTConfig)} - {"n_features", "horizons"}
    for k in sorted(model_fields):
        assert _diff(yaml[k], getattr(atft, k), f"model.{k}") == []
    assert list(atft.horizons) == _plain([])["labels"]["horizons"]


def test_atft_from_dict_rejects_unknown_keys():
    from gogooku3.model.atft_gat_fan import ATFTConfig

    mc = _plain(["model=full"])["model"]
    cfg = ATFTConfig.from_dict({**mc, "n_features": 7})                  # name, expected_params: group-only keys
    assert (cfg.hidden, cfg.norm, cfg.n_features) == (244, "fan", 7)
    assert ATFTConfig.from_dict(cfg.to_dict()) == cfg                    # a bundle's model_config round trip
    with pytest.raises(ConfigError, match=r"model\.hiden: unknown key; did you mean 'model\.hidden'"):
        ATFTConfig.from_dict({"n_features": 7, "hiden": 8})


# ---- round trip ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,data_cls,split_cls", [
    ([], SyntheticDataSettings, WalkForwardSplitSettings),
    (["data=jquants"], JQuantsDataSettings, WalkForwardSplitSettings),
    (["data=files"], FilesDataSettings, WalkForwardSplitSettings),
    (["split=purged_kfold"], SyntheticDataSettings, PurgedKFoldSplitSettings),
    (["model=full"], SyntheticDataSettings, WalkForwardSplitSettings),
    (["trainer=gpu"], SyntheticDataSettings, WalkForwardSplitSettings),
    (["trainer=ddp"], SyntheticDataSettings, WalkForwardSplitSettings),
])
def test_round_trip(overrides, data_cls, split_cls):
    cfg = load_config(overrides)
    s = Settings.from_cfg(cfg)
    assert isinstance(s.data, data_cls) and isinstance(s.split, split_cls)
    assert s.model.hidden == cfg.model.hidden and s.trainer.accelerator == cfg.trainer.accelerator
    assert s.hpo.seed == s.train.seed == s.seed == cfg.seed                 # ${seed} resolved
    assert Settings.from_cfg(OmegaConf.create(dataclasses.asdict(s))) == s  # the dataclasses hold the whole config


def test_default_settings_equal_the_default_config():
    assert Settings.from_cfg(load_config()) == Settings()
