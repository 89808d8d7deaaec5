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


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: DictConfig | Any) -> Any:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def require(cfg: DictConfig, key: str) -> Any:
    """Read a dotted key, failing with a ConfigError that names it."""
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        raise ConfigError(f"config key '{key}' is required but not set")
    return value


def path(cfg: DictConfig, key: str) -> Path:
    """A path-valued config key, relative to the current working directory."""
    return Path(str(require(cfg, key))).expanduser()
