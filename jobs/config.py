"""YAML + `key=value` overrides -> typed dataclass configs, failing before any work starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config key or value; the message names the key."""


def default_config_path(name: str) -> Path:
    return Path(str(resources.files("jobs") / "configs" / f"{name}.yaml"))


@dataclass(frozen=True)
class ConfigKey:
    """One settable key of a job config, for `vtok config JOB` and `--help`."""

    key: str
    """Dotted name, e.g. decode.fps."""
    default: Any
    """The dataclass default."""
    doc: str
    """The field's docstring (its first line)."""


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (a string literal right after the field), which Python drops at runtime."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def config_keys(schema: type, prefix: str = "", hidden: frozenset[str] = frozenset()) -> list[ConfigKey]:
    """Every leaf key of a (nested) dataclass config with its default and docstring, in declaration order."""
    docs = field_docs(schema)
    instance_defaults = {f.name: f for f in dataclasses.fields(schema)}
    keys: list[ConfigKey] = []
    for name, f in instance_defaults.items():
        key = f"{prefix}{name}"
        if key in hidden:
            continue
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            keys += config_keys(type(value), f"{key}.", hidden)
        else:
            keys.append(ConfigKey(key, value, docs.get(name, "")))
    return keys


def format_keys(keys: list[ConfigKey]) -> str:
    """The key table `vtok config JOB` prints: key, default, docstring."""
    width = max(len(k.key) for k in keys)
    lines = []
    for k in keys:
        default = "(required)" if k.default == "???" else repr(k.default)
        lines.append(f"  {k.key:<{width}}  {default:<12} {k.doc}")
    return "\n".join(lines)


def _suggest(key: str, schema: type | None) -> str:
    """" (did you mean 'decode.fps'?)" for a mistyped key, or "" when nothing is close."""
    import difflib

    if schema is None:
        return ""
    names = [k.key for k in config_keys(schema)]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_config(
    schema: type[T], yaml_path: str | Path | None, overrides: list[str], reserved: dict[str, str] | None = None
) -> T:
    """Merge the YAML file and the overrides into `schema`, validate, and build the dataclass.

    `reserved`: keys the job sets itself (key -> why); setting one is refused, naming it.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"argument {item!r} is not of the form key=value")
        key = item.split("=", 1)[0]
        if reserved and key in reserved:
            raise ConfigError(f"config key {key!r} cannot be set: {reserved[key]}")
    try:
        merged = OmegaConf.structured(schema)
        if yaml_path is not None:
            loaded = OmegaConf.load(yaml_path)
            for key, why in (reserved or {}).items():
                if OmegaConf.select(loaded, key, default=None) is not None:
                    raise ConfigError(f"config key {key!r} in {yaml_path} cannot be set: {why}")
            merged = OmegaConf.merge(merged, loaded)
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(f"config key(s) {', '.join(missing)} must be set (e.g. {missing[0]}=...)")
        obj = OmegaConf.to_object(merged)
    except ConfigKeyError as err:
        key = err.full_key or str(err.key)
        raise ConfigError(f"unknown config key {key!r}{_suggest(key, schema)}") from None
    except ValidationError as err:
        raise ConfigError(f"bad value for config key {err.full_key!r}: {err.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(f"config key {key!r}: {str(err).splitlines()[0]}") from None
    except ValueError as err:
        # __post_init__ checks name their key in the message.
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(str(err)) from None
    return obj  # type: ignore[return-value]


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
