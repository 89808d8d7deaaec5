"""Configuration: Hydra config groups packaged in gogooku3/conf, composed from any directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gogooku3.errors import ConfigError

CONFIG_MODULE = "gogooku3.conf"


def load_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the config with Hydra overrides such as ``data.n_stocks=100`` or ``model=full``."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"invalid config override: {str(e).splitlines()[0]}") from e
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_readonly(cfg, False)
    return cfg


SECRET_KEYS = ("data.api_key",)


def to_dict(cfg: DictConfig | Any) -> Any:
    """Resolved plain-dict copy of the config with secrets (the J-Quants API key) blanked."""
    if not isinstance(cfg, DictConfig):
        return cfg
    out = OmegaConf.to_container(cfg, resolve=True)
    for key in SECRET_KEYS:
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf):
            node[leaf] = "***"
    return out


def to_yaml(cfg: DictConfig) -> str:
    """YAML of the resolved config, secrets blanked: the form every run directory stores."""
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))


def require(cfg: DictConfig, key: str) -> Any:
    """Read a dotted key, failing with a ConfigError that names it."""
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        raise ConfigError(f"config key '{key}' is required but not set")
    return value


def path(cfg: DictConfig, key: str) -> Path:
    """A path-valued config key, relative to the current working directory."""
    return Path(str(require(cfg, key))).expanduser()
