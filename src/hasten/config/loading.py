"""Loading a run config: YAML recipes (with `base:`), `--set key=value` overrides, saved configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hasten.config.coerce import build_dataclass, suggest
from hasten.config.model import PRESETS
from hasten.config.schema import RunConfig
from hasten.errors import ConfigError


def _deep_merge(base: dict, extra: dict, path: str = "") -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, ListItems):
            out[key] = value.merge_into(out.get(key), f"{path}{key}")
        elif isinstance(
            value, dict
        ):  # over a mapping: merged; over anything else: replaces it (list indices still checked)
            out[key] = _deep_merge(out[key] if isinstance(out.get(key), dict) else {}, value, f"{path}{key}.")
        else:
            out[key] = value
    return out


class ListItems(dict):
    """`--set a.b.0.c=v` addresses element 0 of the list a.b: {index: value} laid over that list when merged."""

    def merge_into(self, current: Any, key: str) -> list:
        if not isinstance(current, list):
            raise ConfigError(
                f"--set {key}.{next(iter(self))}...: {key} is not a list here ({current!r}); set the whole list, "
                f"e.g. --set '{key}=[...]'"
            )
        out = list(current)
        for index, value in self.items():
            if not -len(out) <= index < len(out):
                raise ConfigError(
                    f"--set {key}.{index}: {key} has {len(out)} element(s); use an index below {len(out)}"
                )
            if isinstance(value, ListItems):
                out[index] = value.merge_into(out[index], f"{key}.{index}")
            elif isinstance(value, dict) and isinstance(out[index], dict):
                out[index] = _deep_merge(out[index], value, f"{key}.{index}.")
            else:
                out[index] = value
        return out


def merge_layer(values: dict, extra: dict) -> dict:
    """Deep-merge one config layer; a model mapping laid over a preset name refines that preset.

    Without this, `--set model=tiny --set model.n_layers=3` (or a recipe's `model: tiny` plus
    `--set model.n_layers=3`) would silently drop the preset and build the ModelConfig defaults.
    """
    if isinstance(extra.get("model"), dict) and isinstance(values.get("model"), str) and "preset" not in extra["model"]:
        values = {**values, "model": {"preset": values["model"]}}
    return _deep_merge(values, extra)


def parse_override(text: str) -> dict:
    """`train.max_steps=100` -> {"train": {"max_steps": 100}} (the value is parsed as YAML).

    A numeric part addresses a list element: `section.list.0.key=5e5` (e.g. a method's list of stages) changes that
    field of the first stage and keeps the rest of the list."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} must look like key.path=value, e.g. --set train.max_steps=100")
    path, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    keys: list = [k for k in path.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {text!r} has an empty key")
    if _is_index(keys[0]):
        raise ConfigError(
            f"--set {text!r} starts with a list index; name the section first, e.g. section.list.0.key=..."
        )
    for key in reversed(keys):  # built from the leaf up; a numeric part indexes the list above it
        value = ListItems({int(key): value}) if _is_index(key) else {key: value}
    return value


def _is_index(key: str) -> bool:
    return key.isdigit() or (key.startswith("-") and key[1:].isdigit())


def recipe_dict(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A recipe's values; `base: other.yaml` (relative to the recipe) is loaded first and overridden."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist; give a YAML file (see recipes/)")
    if path.resolve() in _seen:
        raise ConfigError(f"recipe {path} includes itself through `base:`; remove the cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"recipe {path} is not valid YAML: {first}") from None
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigError(
            f"recipe {path} is not a readable UTF-8 text file ({type(err).__name__}); give a YAML recipe"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"recipe {path} must be a YAML mapping of sections (model, data, optim, schedule, train, methods)"
        )
    base = data.pop("base", None)
    if base is not None:
        data = merge_layer(recipe_dict(path.parent / base, _seen + (path.resolve(),)), data)
    return data


def config_values(
    recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
) -> dict:
    """Recipe YAML (optional) + `key=value` overrides laid over `base` (a run's saved config), as one mapping."""
    values: dict = dict(base or {})
    if recipe is not None:
        values = merge_layer(values, recipe_dict(recipe))
    for text in overrides:
        values = merge_layer(values, parse_override(text))
    train = values.get("train")
    if isinstance(train, dict) and "max_steps" not in train and "max_tokens" not in train:
        # a `train:` section builds TrainConfig from its field defaults (max_steps=None); keep RunConfig's
        # default length so `--set train.batch_size=8` alone does not make the run length-less
        values = {**values, "train": {**train, "max_steps": RunConfig().train.max_steps}}
    return values


def run_config(values: dict) -> RunConfig:
    """A RunConfig from merged values, with every schema check (hasten.recipes.load_config adds the methods')."""
    cfg = build_dataclass(RunConfig, values, "")
    if not isinstance(cfg.model, (str, dict)):
        raise ConfigError(f"model={cfg.model!r} must be a preset name or a mapping like {{preset: tiny, n_layers: 4}}")
    if isinstance(cfg.model, str) and cfg.model not in PRESETS:
        raise ConfigError(f"model={cfg.model!r} is unknown; {suggest(cfg.model, list(PRESETS))}")
    cfg.validate()
    return cfg


def config_from_dict(values: dict) -> RunConfig:
    """Rebuild a RunConfig saved with to_dict() (checkpoints, run dirs)."""
    return build_dataclass(RunConfig, values, "")
