"""YAML + `key=value` overrides -> typed dataclass configs, failing before any work starts."""

from __future__ import annotations

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


def load_config(schema: type[T], yaml_path: str | Path | None, overrides: list[str]) -> T:
    """Merge the YAML file and the overrides into `schema`, validate, and build the dataclass."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"argument {item!r} is not of the form key=value")
    try:
        merged = OmegaConf.structured(schema)
        if yaml_path is not None:
            merged = OmegaConf.merge(merged, OmegaConf.load(yaml_path))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(f"config key(s) {', '.join(missing)} must be set (e.g. {missing[0]}=...)")
        obj = OmegaConf.to_object(merged)
    except ConfigKeyError as err:
        key = err.full_key or str(err.key)
        raise ConfigError(f"unknown config key {key!r}") from None
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
