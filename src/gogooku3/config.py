"""Configuration: Hydra config groups packaged in gogooku3/conf, composed from any directory."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gogooku3.errors import ConfigError
from gogooku3.settings import Settings, check_key

CONFIG_MODULE = "gogooku3.conf"


def load_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the config with Hydra overrides such as ``data.n_stocks=100`` or ``model=full``.

    The result is checked once against the typed schema (`gogooku3.settings.Settings`): an unknown key, a value of
    the wrong type or a missing required key fails here with a ConfigError naming the key."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        lines = str(e).splitlines()
        fix = next((f" ({ln.strip()})" for ln in lines[1:] if ln.startswith("To append")), "")
        raise ConfigError(_override_hint(overrides) or f"invalid config override: {lines[0]}{fix}") from e
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_readonly(cfg, False)
    if config_name == "config":
        Settings.from_cfg(cfg)
    return cfg


def settings(cfg: DictConfig) -> Settings:
    """The typed view of a composed config (cheap to build; not cached)."""
    return Settings.from_cfg(cfg)


def _group_options(group: str) -> list[str]:
    """The options of a packaged config group (conf/<group>/*.yaml), or [] if `group` is not a group."""
    d = resources.files(CONFIG_MODULE) / group
    if not d.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in d.iterdir() if p.name.endswith(".yaml"))


def _override_hint(overrides: Sequence[str]) -> str | None:
    """Explain why Hydra refused the overrides: an unknown key (with the closest known one) or a group option
    that does not exist. None when no override is at fault by this schema."""
    chosen: dict[str, str] = {}
    for o in overrides:
        key, _, value = o.partition("=")
        if "." not in key and _group_options(key):
            chosen[key] = value
    for o in overrides:
        key, eq, value = o.partition("=")
        if not eq or key.startswith(("~", "+")) or "@" in key:
            continue  # deletions and additions: Hydra's own message, additions are checked by Settings
        options = _group_options(key) if "." not in key else []
        if options:
            if value not in options:
                close = difflib.get_close_matches(value, options, n=1)
                hint = f"; did you mean '{key}={close[0]}'?" if close else ""
                return f"{o}: no such option{hint} (options of {key}: {', '.join(options)})"
            continue
        err = check_key(key, chosen)
        if err is not None:
            return str(err)
    return None


REDACTED = "***"
# A key whose name says it holds a credential (api_key, access_token, db_password, client_secret, ...).
SECRET_NAME = re.compile(r"(?i)(^|[_.-])(api_?key|key|token|password|passwd|pwd|secret|credentials?)($|[_.-])")
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+@")
_URL_QUERY_SECRET = re.compile(r"(?i)(?P<head>[?&;](api_?key|key|token|access_token|password|passwd|pwd|secret)=)"
                               r"[^&;#\s]+")


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


def to_dict(cfg: DictConfig | Any) -> Any:
    """Resolved plain-dict copy of the config with every secret blanked (`redact`): the J-Quants API key, any key
    named like key/token/password/secret, and passwords inside URLs such as `hpo.storage`."""
    if not isinstance(cfg, DictConfig):
        return cfg
    return redact(OmegaConf.to_container(cfg, resolve=True))


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
