"""Typed settings: did-you-mean on unknown keys, type errors, and one value source: the packaged YAML (the schema's
dataclasses carry types and ranges only, no defaults)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, Union

import pytest
from omegaconf import OmegaConf

from gogooku3.config import schema
from gogooku3.config.compose import CONFIG_MODULE, compose_config, group_options, load_config
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
from gogooku3.core.errors import ConfigError


def _plain(overrides: list[str]) -> dict:
    return OmegaConf.to_container(compose_config(overrides), resolve=True)


def _schema_dataclasses() -> list[type]:
    """Every dataclass defined in gogooku3/config/schema.py."""
    return [
        v
        for v in vars(schema).values()
        if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == schema.__name__
    ]


def _packaged_options() -> list[str]:
    """`group=option` for every packaged YAML option (conf/<group>/*.yaml), experiment files aside."""
    root = resources.files(CONFIG_MODULE)
    groups = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    return [f"{g}={o}" for g in groups if g != "experiment" for o in group_options(g)]


def _dataclass_of(tp: Any, value: Any) -> Any:
    """The dataclass a (possibly Optional or tagged-Union) annotation stands for, given the value; None if none."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        dcs = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if len(dcs) == 1:
            return dcs[0]
        for dc in dcs:  # tagged by a shared Literal field (data.source, split.method)
            tags = {
                n: typing.get_args(t) for n, t in typing.get_type_hints(dc).items() if typing.get_origin(t) is Literal
            }
            if isinstance(value, dict) and any(value.get(n) in vals for n, vals in tags.items()):
                return dc
    return None


def _sources(yaml: Any, tp: Any, where: str) -> list[str]:
    """Problems between a composed YAML node and the schema type it is read as: a YAML key that is no field, a field
    the YAML does not set (both ways, at every depth, also inside the entries of dict-valued fields such as
    hpo.space)."""
    dc = _dataclass_of(tp, yaml)
    if dc is not None:
        if not isinstance(yaml, dict):
            return [] if yaml is None else [f"{where}: YAML {yaml!r} is not a mapping ({dc.__name__})"]
        hints = typing.get_type_hints(dc)
        names = {f.name for f in dataclasses.fields(dc)}
        out = [f"{where}.{k}: in the YAML, not a field of {dc.__name__}" for k in sorted(set(yaml) - names)]
        out += [f"{where}.{k}: field of {dc.__name__}, not set by the YAML" for k in sorted(names - set(yaml))]
        for k in sorted(names & set(yaml)):
            out += _sources(yaml[k], hints[k], f"{where}.{k}")
        return out
    if typing.get_origin(tp) is dict and isinstance(yaml, dict):
        vt = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        return [d for k, v in yaml.items() for d in _sources(v, vt, f"{where}.{k}")]
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
    with pytest.raises(
        ConfigError,
        match=r"data\.plann: unknown key; did you mean 'data\.plan'\? \(keys of data \("
        r"data=jquants\)",
    ):
        load_config(["data=jquants", "data.plann=x"])
    with pytest.raises(
        ConfigError,
        match=r"^split\.mode: not a key of split=purged_kfold \(it belongs to "
        r"split=walk_forward\); choose an option with split=<name>",
    ):
        load_config(["split.method=purged_kfold"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.max_epochs=abc", "train.max_epochs: expected int, got 'abc'"),
        ("data.n_stocks=1.5", "data.n_stocks: expected int, got 1.5"),
        ("train.swa=1", "train.swa: expected bool, got 1"),
        ("train.lr=null", "train.lr: expected float, got null (this key cannot be null)"),
        ("model.gat_heads=[4,2,1]", "model.gat_heads: expected 2 values"),
        ("labels.horizons=[1,x]", "labels.horizons[1]: expected int, got 'x'"),
    ],
)
def test_wrong_type(override, message):
    with pytest.raises(ConfigError) as e:
        load_config([override])
    assert str(e.value).startswith(message)


def test_accepted_values():
    s = load_config(
        [
            "train.lr=1",
            "train.ema_decay=null",
            "train.limit_train_batches=0.5",
            "train.loss.horizon_weights=null",
            "data=jquants",
            "data.tables=[daily_quotes]",
        ]
    )
    assert s.train.lr == 1.0 and isinstance(s.train.lr, float)  # int accepted for a float
    assert s.train.ema_decay is None and s.train.limit_train_batches == 0.5
    assert s.train.loss.horizon_weights is None and s.data.tables == ["daily_quotes"]
    assert s.model.quantiles == (0.1, 0.25, 0.5, 0.75, 0.9)  # a list becomes a tuple where annotated


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


# ---- one value source: the YAML ---------------------------------------------------------------------------
def test_no_schema_field_has_a_default():
    """The schema carries types and ranges only: every field of every dataclass in config/schema.py is required."""
    classes = _schema_dataclasses()
    assert len(classes) > 30 and Settings in classes and schema.HpoParamSettings in classes
    with_default = [
        f"{c.__name__}.{f.name}"
        for c in classes
        for f in dataclasses.fields(c)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ]
    assert with_default == []
    with pytest.raises(TypeError):
        Settings()


def test_packaged_options_are_all_checked():
    options = _packaged_options()
    assert {
        "data=synthetic",
        "data=jquants",
        "data=files",
        "split=walk_forward",
        "split=purged_kfold",
        "model=small",
        "model=full",
        "trainer=cpu",
        "trainer=gpu",
        "trainer=ddp",
        "hpo=default",
    } <= set(options)
    assert not [o for o in options if o.startswith("experiment=")]


@pytest.mark.parametrize("option", _packaged_options())
def test_every_field_has_exactly_one_value_source_the_yaml(option):
    """Every leaf of the packaged YAML option maps to a schema field and every schema field is set by the group's
    YAML (no field has a default to fall back on, `test_no_schema_field_has_a_default`)."""
    group = option.split("=")[0]
    cfg = _plain([option])
    tp = typing.get_type_hints(Settings)[group]
    assert _sources(cfg[group], tp, group) == []
    typed(cfg[group], tp, group)  # and the values have the schema's types and ranges


def test_top_level_keys_are_settings_fields():
    assert set(_plain([])) == {f.name for f in dataclasses.fields(Settings)}
    assert _sources(_plain([]), Settings, "") == []


@pytest.mark.parametrize(
    "override,message",
    [
        ("~train.lr", "train.lr: required key missing; give it with +train.lr=..."),
        ("~model.graph", "model.graph: required key missing"),
        (
            "+hpo.space.x={param:train.lr,type:float,low:0.001,high:0.01}",
            "hpo.space.x.log: required key missing; give it with +hpo.space.x.log=... (also missing: step, choices)",
        ),
    ],
)
def test_a_key_missing_from_the_yaml_has_no_code_default(override, message):
    with pytest.raises(ConfigError) as e:
        load_config([override])
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("option", ["model=small", "model=full"])
def test_atft_config_values_come_from_the_model_yaml(option):
    """ATFTConfig has no defaults either: its fields are the model group's (less name, expected_params) plus
    n_features and horizons from the data, all set from the YAML."""
    from gogooku3.model.atft_gat_fan import ATFTConfig

    assert [
        f.name
        for f in dataclasses.fields(ATFTConfig)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ] == []
    model_fields = {f.name for f in dataclasses.fields(ModelSettings)} - set(ATFTConfig.MODEL_GROUP_ONLY)
    assert model_fields == {f.name for f in dataclasses.fields(ATFTConfig)} - {"n_features", "horizons"}
    yaml = _plain([option])["model"]
    atft = ATFTConfig.from_dict({**yaml, "n_features": 7, "horizons": [1, 5]})
    got = atft.to_dict()
    assert {k: got[k] for k in model_fields} == {k: yaml[k] for k in model_fields}
    assert ATFTConfig.from_dict(got) == atft
    if option == "model=small":
        assert ATFTConfig.packaged(n_features=7, horizons=(1, 5)) == atft  # the default option's YAML values
    with pytest.raises(TypeError):
        ATFTConfig(n_features=7)


def test_atft_from_dict_rejects_unknown_keys():
    from gogooku3.model.atft_gat_fan import ATFTConfig

    mc = _plain(["model=full"])["model"]
    cfg = ATFTConfig.from_dict({**mc, "n_features": 7, "horizons": [1]})  # name, expected_params: group-only keys
    assert (cfg.hidden, cfg.norm, cfg.n_features) == (244, "fan", 7)
    assert ATFTConfig.from_dict(cfg.to_dict()) == cfg  # a bundle's model_config round trip
    with pytest.raises(ConfigError, match=r"model\.hiden: unknown key; did you mean 'model\.hidden'"):
        ATFTConfig.from_dict({"n_features": 7, "hiden": 8})
    with pytest.raises(ConfigError, match=r"^model\.horizons: required key missing"):  # from the dataset's manifest
        ATFTConfig.from_dict({**mc, "n_features": 7})


# ---- round trip ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,data_cls,split_cls",
    [
        ([], SyntheticDataSettings, WalkForwardSplitSettings),
        (["data=jquants"], JQuantsDataSettings, WalkForwardSplitSettings),
        (["data=files"], FilesDataSettings, WalkForwardSplitSettings),
        (["split=purged_kfold"], SyntheticDataSettings, PurgedKFoldSplitSettings),
        (["model=full"], SyntheticDataSettings, WalkForwardSplitSettings),
        (["trainer=gpu"], SyntheticDataSettings, WalkForwardSplitSettings),
        (["trainer=ddp"], SyntheticDataSettings, WalkForwardSplitSettings),
    ],
)
def test_round_trip(overrides, data_cls, split_cls):
    cfg = compose_config(overrides)
    s = Settings.from_cfg(cfg)
    assert isinstance(s, Settings) and load_config(overrides) == s  # what every command receives
    assert isinstance(s.data, data_cls) and isinstance(s.split, split_cls)
    assert s.model.hidden == cfg.model.hidden and s.trainer.accelerator == cfg.trainer.accelerator
    assert s.hpo.seed == s.train.seed == s.seed == cfg.seed  # ${seed} resolved
    assert Settings.from_cfg(OmegaConf.create(dataclasses.asdict(s))) == s  # the dataclasses hold the whole config
