"""Configuration: Hydra config groups packaged in gogooku3/conf, composed from any directory and returned as the
typed, checked `Settings` (`load_config`) that every command and library function receives; `compose_config` keeps
Hydra's own DictConfig for `config show`. `to_dict` / `to_yaml` / `path` / `select` / `with_values` work on both."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import difflib
import functools
import hashlib
import os
import re
from collections.abc import Collection, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

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
    from_env = env_keys(cfg)  # before anything resolves: a value from the environment is a secret from here on
    settings = None
    if config_name == "config":
        if "experiment" in cfg:
            raise ConfigError(
                "experiment: the experiment file's keys landed under 'experiment.'; its first line "
                "must be '# @package _global_' (see conf/experiment/example.yaml)"
            )
        settings = Settings.from_cfg(cfg)
        setattr(settings, ENV_KEYS_ATTR, frozenset(from_env))  # for `to_dict`: which keys to blank
        check_dates(settings)
    return cfg, settings


# A date key beyond these bounds is a typo (9999-12-31 overflows the calendar's padding, 0001-01-01 too): no data
# source has sessions there. A year ahead leaves room for a synthetic market or a calendar that ends in the future.
MIN_DATE = dt.date(1900, 1, 1)
MAX_DAYS_AHEAD = 366


def check_dates(node: Any, where: str = "") -> None:
    """Every `*_date` key of the typed config (data.end_date, safe.start_date, ...) that is set is a YYYY-MM-DD date
    from 1900-01-01 to a year after today; else a ConfigError naming the key."""
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), f"{where}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_dates(value, key + ".")
        elif f.name.endswith("_date") and isinstance(value, (str, dt.date)) and value != "":
            try:
                day = value if isinstance(value, dt.date) else dt.date.fromisoformat(value.strip())
            except ValueError:
                raise ConfigError(f"{key}: expected a YYYY-MM-DD date, got {value!r}") from None
            latest = dt.date.today() + dt.timedelta(days=MAX_DAYS_AHEAD)
            if not MIN_DATE <= day <= latest:
                raise ConfigError(
                    f"{key}: {day} is outside the dates any data source covers ({MIN_DATE} .. {latest}, a year "
                    f"after today); set {key}=YYYY-MM-DD within that range"
                )


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
NOT_SECRET_ENV = ("PWD", "OLDPWD")  # the shell's working directories match `pwd` but are paths, not passwords
SECRET_NAME = re.compile(r"(?i)(^|[_.-])(api_?key|key|token|password|passwd|pwd|secret|credentials?)($|[_.-])")
# A URL query parameter named like a credential (password, sslpassword, access_token, api_key, client_secret, ...).
SECRET_PARAM = re.compile(r"(?i)(pass(word|wd|phrase)?$|pwd|token|key|secret|credential|signature)")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_URL_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_ENV_REF = re.compile(r"oc\.env\s*:\s*['\"]?([^,}'\"\s]+)")
_KEY_REF = re.compile(r"\$\{\s*([A-Za-z_][\w.]*)\s*\}")
# Values shorter than this are blanked only where they stand (the keys that read them from the environment), not
# wherever the same text appears: "cpu" or "1" from an environment variable would otherwise blank unrelated values.
MIN_SCRUB_LEN = 8
_env_values: set[str] = set()  # values configs composed here read from the environment: secrets for the process
ENV_KEYS_ATTR = "_env_keys"  # on a composed Settings: its dotted keys whose value came from an environment variable


def _url_parts(text: str) -> tuple[str, str, str, str] | None:
    """(`scheme://`, credentials `user:password@` or "", host/path, `?query` or "") of a URL, split as SQLAlchemy's
    `make_url` splits it (user up to the first ':' or '/', password up to the '@'), except that the password runs
    to the last '@' before the query (an unencoded '@' in it is kept inside); None when `text` is not a URL."""
    m = _URL.match(text)
    if m is None:
        return None
    head, rest = m[0], text[m.end() :]
    creds = ""
    at = rest.find("@")
    if at >= 0:
        q = rest.find("?", at)
        cut = rest.rfind("@", 0, q if q >= 0 else len(rest))
        if "/" not in rest[:cut].partition(":")[0]:
            creds, rest = rest[: cut + 1], rest[cut + 1 :]
    body, qmark, query = rest.partition("?")
    return head, creds, body, qmark + query


def redact_url(url: str) -> str:
    """`url` with its password and every query parameter named like a credential (`SECRET_PARAM`: password,
    sslpassword, token, key, secret, ...) blanked; anything else kept exactly as written. A password may hold '/',
    ' ', '?' or '@' unencoded. Checked with SQLAlchemy's own parser (`sqlalchemy.engine.make_url`): should it still
    read a password that is not blanked, everything between the scheme and the host is blanked."""
    parts = _url_parts(url)
    if parts is None:
        return url
    head, creds, body, query = parts
    if creds:
        user, colon, pw = creds[:-1].partition(":")
        creds = f"{user}:{REDACTED}@" if colon and pw else creds
    if query:
        pairs = re.split(r"([&;])", query[1:])
        for i in range(0, len(pairs), 2):
            name, eq, value = pairs[i].partition("=")
            if eq and value and SECRET_PARAM.search(unquote_plus(name)):
                pairs[i] = f"{name}={REDACTED}"
        query = "?" + "".join(pairs)
    out = head + creds + body + query
    if not _parsed_clean(out):
        return f"{head}{REDACTED}@{body}{query}"
    return out


def _parsed_clean(url: str) -> bool:
    """Whether SQLAlchemy's parser finds no password other than the blank in `url` (True when it cannot parse)."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # not a URL SQLAlchemy reads (ArgumentError, a port that is not a number, no sqlalchemy)
        return True
    return parsed.password in (None, "", REDACTED)


def url_secrets(url: str) -> list[str]:
    """The credentials inside `url` as SQLAlchemy's `make_url` reads them (password, values of secret-named query
    parameters), decoded and as written: text to blank wherever it appears (an error message quoting the URL)."""
    found: list[str] = []
    parts = _url_parts(url)
    if parts is not None and parts[1]:
        found.append(parts[1][:-1].partition(":")[2])
        with contextlib.suppress(Exception):  # an unparsable URL: the password as written is enough
            from sqlalchemy.engine import make_url

            parsed = make_url(url)
            found.append(parsed.password or "")
            found += [
                str(v)
                for k, vs in parsed.query.items()
                if SECRET_PARAM.search(k)
                for v in (vs if isinstance(vs, tuple) else (vs,))
            ]
    if parts is not None and parts[3]:
        for pair in re.split(r"[&;]", parts[3][1:]):
            name, _, value = pair.partition("=")
            if SECRET_PARAM.search(unquote_plus(name)):
                found += [value, unquote_plus(value)]
    return sorted({s for s in found if s}, key=len, reverse=True)


def secret_values() -> list[str]:
    """Text to blank wherever it appears, longest first: values composed configs read from environment variables
    and the values of environment variables named like credentials (JQUANTS_API_KEY, ...), `MIN_SCRUB_LEN`+ long."""
    named = {v for k, v in os.environ.items() if SECRET_NAME.search(k) and k not in NOT_SECRET_ENV}
    return sorted({v for v in _env_values | named if len(v) >= MIN_SCRUB_LEN}, key=len, reverse=True)


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s and s in text:
            text = text.replace(s, REDACTED)
    return text


def redact_text(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` (a log line, an error message) with credentials blanked: inside every URL in it (`redact_url`; such a
    URL ends at the first space), the given `secrets` and every `secret_values()` wherever they appear."""
    text = _scrub(text, [*sorted(secrets, key=len, reverse=True), *secret_values()])
    return _URL_TOKEN.sub(lambda m: redact_url(m[0]), text)


def is_secret(text: str) -> bool:
    """Whether `text` is, or holds, a value read from an environment variable (`secret_values`)."""
    return text in _env_values or _scrub(text, secret_values()) != text


def safe_name(value: Any, secret: bool = False, max_len: int = 64) -> str:
    """A config value fit for a file or folder name: the value itself when it is already made of [A-Za-z0-9._-]
    (not starting with '.') and not a secret; else its sanitised form ("redacted" for a secret, or `secret=True`)
    with '-' and the first 8 hex digits of its sha256, so distinct values keep distinct names. A value read from
    an environment variable is a secret."""
    text = str(value)
    secret = secret or is_secret(text)
    clean = "redacted" if secret else re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip("._-")[:max_len]
    if not secret and clean == text and text:
        return text
    return f"{clean or 'x'}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"


def redact(obj: Any, key: str = "", env: Collection[str] = ()) -> Any:
    """A copy of plain containers with every secret blanked: the value of any key named like a credential (when
    set), credentials inside URL-like strings (`redact_url`), the values of the dotted keys `env` (those of a whole
    composed config that read an environment variable, `env_keys`) and, anywhere, the text of every value read from
    the environment (`secret_values`). The one place stored configs are scrubbed."""
    return _redact(obj, key, "" if env else None, secret_values(), set(env))


def _redact(obj: Any, key: str, where: str | None, secrets: list[str], env_keys: set[str]) -> Any:
    def sub(k: Any) -> str | None:
        return None if where is None else f"{where}.{k}" if where else str(k)

    if isinstance(obj, dict):
        return {k: _redact(v, str(k), sub(k), secrets, env_keys) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_redact(v, key, sub(i), secrets, env_keys) for i, v in enumerate(obj))
    if obj in (None, "", False):
        return obj
    if (key and SECRET_NAME.search(key)) or (where is not None and where in env_keys):
        return REDACTED
    if isinstance(obj, str):
        text = _scrub(obj, secrets)
        return redact_url(text) if _URL.match(text) else redact_text(text)
    return obj


def dotted_leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaves of nested mappings (`{"train": {"lr": 1}}` -> `{"train.lr": 1}`); a mapping with a non-string key
    (horizon weights) is one leaf, as is a list."""
    if isinstance(node, dict) and node and all(isinstance(k, str) for k in node):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(dotted_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node} if prefix else {}


def _leaves_raw(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaves of plain containers (list items by index)."""
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return {prefix[:-1]: node}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(_leaves_raw(v, f"{prefix}{k}."))
    return out


def env_keys(cfg: DictConfig) -> set[str]:
    """The dotted keys of a composed config whose value comes from an environment variable: an `oc.env`
    interpolation in its raw (unresolved) value, or an interpolation of such a key. Their resolved values and the
    variables' own values join `secret_values()` for the rest of the process (a short one, under `MIN_SCRUB_LEN`,
    is blanked only at these keys)."""
    raw = {k: v for k, v in _leaves_raw(OmegaConf.to_container(cfg, resolve=False)).items() if isinstance(v, str)}
    keys = {k for k, v in raw.items() if "oc.env" in v}
    for k in keys:
        for name in _ENV_REF.findall(raw[k]):
            if os.environ.get(name):
                _env_values.add(os.environ[name])
    grew = True
    while grew:  # ${data.api_key} where data.api_key reads the environment, and so on
        more = {
            k
            for k, v in raw.items()
            if k not in keys
            and any(r == e or e.startswith(r + ".") or r.startswith(e + ".") for r in _KEY_REF.findall(v) for e in keys)
        }
        keys |= more
        grew = bool(more)
    for k in keys:
        with contextlib.suppress(OmegaConfBaseException):
            value = OmegaConf.select(cfg, k, throw_on_missing=False)
            if value not in (None, ""):
                _env_values.add(str(value))
    return keys


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
    every secret blanked (`redact`): the J-Quants API key, any key named like key/token/password/secret, passwords
    and secret query parameters inside URLs such as `hpo.storage`, and every value read from an environment
    variable (`${oc.env:...}`; by key in a whole config, by value anywhere). Anything else is returned as is."""
    if isinstance(cfg, DictConfig):
        return redact(OmegaConf.to_container(cfg, resolve=True), env=env_keys(cfg))
    if isinstance(cfg, Settings):
        return redact(_containers(cfg), env=getattr(cfg, ENV_KEYS_ATTR, ()))
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
