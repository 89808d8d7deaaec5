"""Configuration: Hydra config groups packaged in gogooku3/conf, composed from any directory and returned as the
typed, checked `Settings` (`load_config`) that every command and library function receives; `compose_config` keeps
Hydra's own DictConfig for `config show`. `to_dict` / `to_yaml` / `path` / `select` / `with_values` work on both."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gogooku3.config.schema import Settings, check_key
from gogooku3.core.errors import ConfigError

CONFIG_MODULE = "gogooku3.conf"


def load_config(overrides: Sequence[str] = (), config_dirs: Sequence[str | Path] = ()) -> Settings:
    """The typed config (`gogooku3.config.schema.Settings`) composed with Hydra overrides such as
    ``data.n_stocks=100``, ``model=full`` or ``experiment=my_exp``: what every command and library function receives.

    `config_dirs` are the user's config directories (`gogooku3 --config-dir DIR`), searched before the packaged
    groups: ``DIR/experiment/my_exp.yaml`` adds an experiment, ``DIR/model/tiny.yaml`` a model option. The folder
    where `gogooku3 tune` writes experiments (`<paths.output_dir>/optuna`) is searched too, so
    ``experiment=<study>`` finds a tuned study's best parameters. The composed config is checked and converted once
    by the typed schema: an unknown key, a value of the wrong type or a missing required key fails here with a
    ConfigError naming the key."""
    settings = _compose(overrides, "config", config_dirs)[1]
    assert settings is not None
    return settings


def compose_config(
    overrides: Sequence[str] = (), config_name: str = "config", config_dirs: Sequence[str | Path] = ()
) -> DictConfig:
    """The composed config as Hydra gives it (a DictConfig, YAML order and values as written), checked like
    `load_config`'s: for what needs Hydra's own form (`gogooku3 config show`)."""
    return _compose(overrides, config_name, config_dirs)[0]


def _compose(
    overrides: Sequence[str], config_name: str, config_dirs: Sequence[str | Path]
) -> tuple[DictConfig, Settings | None]:
    """The composed DictConfig and, for the main config, its checked typed form."""
    dirs = search_dirs(overrides, config_dirs)
    overrides = [_drop_plus(o, dirs) for o in overrides]
    search = [f"hydra.searchpath=[{','.join(f'file://{d}' for d in dirs)}]"] if dirs else []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides) + search)
    except (HydraException, OmegaConfBaseException) as e:
        lines = str(e).splitlines()
        fix = next((f" ({ln.strip()})" for ln in lines[1:] if ln.startswith("To append")), "")
        raise ConfigError(_override_hint(overrides, dirs) or f"invalid config override: {lines[0]}{fix}") from e
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_readonly(cfg, False)
    settings = None
    if config_name == "config":
        if "experiment" in cfg:
            raise ConfigError(
                "experiment: the experiment file's keys landed under 'experiment.'; its first line "
                "must be '# @package _global_' (see conf/experiment/example.yaml)"
            )
        settings = Settings.from_cfg(cfg)
    return cfg, settings


TUNED_SUBDIR = "optuna"  # <paths.output_dir>/optuna/experiment/<study>.yaml: written by `gogooku3 tune`


def search_dirs(overrides: Sequence[str] = (), config_dirs: Sequence[str | Path] = ()) -> list[Path]:
    """The user's config directories (each must exist) plus `<paths.output_dir>/optuna` when it holds experiments
    (`paths.output_dir` as given in `overrides`, else the packaged default), absolute, without duplicates."""
    out: list[Path] = []
    for d in config_dirs:
        p = Path(d).expanduser()
        if not p.is_dir():
            raise ConfigError(
                f"--config-dir {d}: not a directory (it should hold folders such as experiment/, "
                f"model/ with YAML files)"
            )
        out.append(p.resolve())
    given = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("paths.output_dir=")]
    output_dir = given[-1] if given else _packaged_value("paths", "default", "output_dir")
    tuned = Path(str(output_dir)).expanduser() / TUNED_SUBDIR
    if (tuned / "experiment").is_dir():
        out.append(tuned.resolve())
    return list(dict.fromkeys(out))


def _packaged_value(group: str, option: str, key: str) -> Any:
    node = OmegaConf.load(str(resources.files(CONFIG_MODULE) / group / f"{option}.yaml"))
    assert isinstance(node, DictConfig)  # a packaged config file is a mapping
    return node[key]


@functools.cache
def _packaged_group(group: str) -> dict[str, Any]:
    node = getattr(load_config(), group, None)
    if node is None:
        raise ConfigError(f"{group}: not a group of the packaged config")
    return _containers(node)


def packaged_group(group: str) -> dict[str, Any]:
    """A copy of the packaged default config's `group` (its default option, composed, typed and checked, as plain
    containers): the values a library entry point called without a config uses (`BacktestConfig.from_any(None)`),
    read from the YAML, the one place config values live."""
    import copy

    return copy.deepcopy(_packaged_group(group))


def _drop_plus(override: str, dirs: Sequence[Path]) -> str:
    """`+experiment=x` -> `experiment=x`: the group is in the defaults list (as null), so both spellings select it
    and a missing option fails as one (instead of "an item is already at 'experiment'")."""
    key, eq, value = override.partition("=")
    bare = key.lstrip("+")
    if eq and key != bare and "." not in bare and bare in default_groups() and group_options(bare, dirs):
        return f"{bare}={value}"
    return override


@functools.cache
def default_groups() -> dict[str, str | None]:
    """The groups of the packaged defaults list and their default option (None for `experiment`)."""
    node = OmegaConf.load(str(resources.files(CONFIG_MODULE) / "config.yaml"))
    assert isinstance(node, DictConfig)  # the packaged config.yaml is a mapping
    out: dict[str, str | None] = {}
    for item in node.get("defaults", []):
        if isinstance(item, str) or not hasattr(item, "items"):
            continue
        for k, v in item.items():
            out[str(k).split(" ")[-1]] = None if v is None else str(v)
    return out


def group_options(group: str, dirs: Sequence[str | Path] = ()) -> list[str]:
    """The options of a config group: conf/<group>/*.yaml of the package and of each directory of `dirs` (user
    config directories); [] if `group` is not a group anywhere."""
    names: set[str] = set()
    d = resources.files(CONFIG_MODULE) / group
    if d.is_dir():
        names |= {p.name[: -len(".yaml")] for p in d.iterdir() if p.name.endswith(".yaml")}
    for root in dirs:
        u = Path(root) / group
        if u.is_dir():
            names |= {p.stem for p in u.glob("*.yaml")}
    return sorted(names)


def groups(dirs: Sequence[str | Path] = ()) -> dict[str, list[str]]:
    """Every config group (packaged and in `dirs`) with its options."""
    names = {p.name for p in resources.files(CONFIG_MODULE).iterdir() if p.is_dir() and not p.name.startswith("_")}
    for root in dirs:
        names |= {p.name for p in Path(root).iterdir() if p.is_dir() and list(p.glob("*.yaml"))}
    return {g: opts for g in sorted(names) if (opts := group_options(g, dirs))}


def _override_hint(overrides: Sequence[str], dirs: Sequence[str | Path] = ()) -> str | None:
    """Explain why Hydra refused the overrides: an unknown key (with the closest known one) or a group option
    that does not exist. None when no override is at fault by this schema."""
    chosen: dict[str, str] = {}
    for o in overrides:
        key, _, value = o.partition("=")
        if "." not in key and group_options(key, dirs):
            chosen[key] = value
    for o in overrides:
        key, eq, value = o.partition("=")
        bare = key.lstrip("+")
        options = group_options(bare, dirs) if eq and "." not in bare and "@" not in bare else []
        if options:
            if value not in options:
                close = difflib.get_close_matches(value, options, n=1)
                hint = f"; did you mean '{bare}={close[0]}'?" if close else ""
                where = " or in --config-dir" if bare == "experiment" else ""
                return (
                    f"{o}: no such option{hint} (options of {bare}: {', '.join(options)}; files are "
                    f"conf/{bare}/<name>.yaml{where})"
                )
            continue
        if not eq or key.startswith(("~", "+")) or "@" in key:
            continue  # deletions and additions: Hydra's own message, additions are checked by Settings
        err = check_key(key, chosen)
        if err is not None:
            return str(err)
    return None


REDACTED = "***"
# A key whose name says it holds a credential (api_key, access_token, db_password, client_secret, ...).
SECRET_NAME = re.compile(r"(?i)(^|[_.-])(api_?key|key|token|password|passwd|pwd|secret|credentials?)($|[_.-])")
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+@")
_URL_QUERY_SECRET = re.compile(
    r"(?i)(?P<head>[?&;](api_?key|key|token|access_token|password|passwd|pwd|secret)=)"
    r"[^&;#\s]+"
)


def redact_text(text: str) -> str:
    """`text` with URL credentials blanked: scheme://user:***@host, ?password=*** (and token/key/secret)."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}@", text)
    return _URL_QUERY_SECRET.sub(lambda m: f"{m['head']}{REDACTED}", text)


def redact(obj: Any, key: str = "") -> Any:
    """A copy of plain containers with every secret blanked: the value of any key named like a credential (when
    set) and the credentials inside any URL-like string. The one place stored configs are scrubbed."""
    if isinstance(obj, dict):
        return {k: redact(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, key) for v in obj)
    if key and SECRET_NAME.search(key) and obj not in (None, "", False):
        return REDACTED
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def _containers(node: Any) -> Any:
    """Settings dataclasses as plain dicts (field by field), tuples as lists, recursively: the containers a composed
    DictConfig gives."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return {f.name: _containers(getattr(node, f.name)) for f in dataclasses.fields(node)}
    if isinstance(node, Mapping):
        return {k: _containers(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_containers(v) for v in node]
    return node


def to_dict(cfg: Any) -> Any:
    """Plain-dict copy of the config (`Settings` or any of its nodes, a dict of them, or a composed DictConfig) with
    every secret blanked (`redact`): the J-Quants API key, any key named like key/token/password/secret, and
    passwords inside URLs such as `hpo.storage`. Anything else is returned as is."""
    if isinstance(cfg, DictConfig):
        return redact(OmegaConf.to_container(cfg, resolve=True))
    if isinstance(cfg, Mapping) or (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        return redact(_containers(cfg))
    return cfg


def to_yaml(cfg: Any) -> str:
    """YAML of the config (`Settings` or a composed DictConfig), secrets blanked: the form every run directory
    stores."""
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))


_ABSENT = object()


def select(cfg: Any, key: str, default: Any = None) -> Any:
    """The value of a dotted key (`"model.graph.k"`) of `Settings` (or any node, dict or DictConfig); `default`
    where a part of the key does not exist."""
    node = cfg
    for part in key.split("."):
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            node = getattr(node, part) if part in {f.name for f in dataclasses.fields(node)} else _ABSENT
        elif isinstance(node, (Mapping, DictConfig)):
            node = node.get(part, _ABSENT)
        else:
            node = _ABSENT
        if node is _ABSENT:
            return default
    return node


def with_values(cfg: Settings, values: Mapping[str, Any]) -> Settings:
    """A copy of `cfg` with dotted keys set (`{"train.lr": 0.01, "model.hidden": 64}`), converted and checked as
    `load_config` checks a composed config (a ConfigError names a bad key or value); `cfg` is left as it is."""
    d = dataclasses.asdict(cfg)
    for key, v in values.items():
        node: Any = d
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"config key '{key}' does not exist")
        node[parts[-1]] = v
    return Settings.from_cfg(d)


def dotted_yaml(values: Mapping[str, Any], merge: bool = True) -> str:
    """YAML of {dotted key: value} as nested mappings, keys sorted (the tuned experiment files)."""
    nested = OmegaConf.create({})
    for k, v in sorted(values.items()):
        OmegaConf.update(nested, k, v, force_add=True, merge=merge)
    return OmegaConf.to_yaml(nested)


def load_yaml(file: str | Path) -> Any:
    """A YAML config file as plain containers, interpolations resolved."""
    return OmegaConf.to_container(OmegaConf.load(file), resolve=True)


def require(cfg: Any, key: str) -> Any:
    """Read a dotted key, failing with a ConfigError that names it."""
    value = select(cfg, key)
    if value is None:
        raise ConfigError(f"config key '{key}' is required but not set")
    return value


def path(cfg: Any, key: str) -> Path:
    """A path-valued config key, relative to the current working directory."""
    return Path(str(require(cfg, key))).expanduser()
