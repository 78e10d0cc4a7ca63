"""Turning YAML values into typed dataclass fields, with one-line errors that name the key."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

from hasten.config.model import ModelConfig
from hasten.errors import ConfigError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a YAML value to the annotated type, with a one-line error when it does not fit."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} has the wrong type; expected {' or '.join(_type_name(a) for a in args)}")
    if tp is Any or origin is dict or tp is dict:
        if origin is dict and not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value)
                if number.is_integer():
                    return int(number)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} must be an integer")
    if tp is float:
        number = None
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except (ValueError, OverflowError):
                pass
        if number is not None and math.isfinite(number):  # nan/inf would slip past every range check below
            return number
        raise ConfigError(f"{key}={value!r} must be a finite number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}={value!r} must be a string")
    return value


def checked_model_fields(values: dict) -> dict:
    """Unknown keys and types of a `model:` mapping get the same one-line errors as other sections.

    (ModelConfig lives in model.py and takes raw values, so without this `model.n_layers=abc` or
    `model.norm_eps=1e-6`, which YAML reads as a string, failed deep inside the model.)
    """
    hints = typing.get_type_hints(ModelConfig)
    out = {}
    for key, value in values.items():
        if key == "preset":
            out[key] = _coerce(value, str, "model.preset")
        elif key not in hints:
            raise ConfigError(f"unknown key model.{key}: {suggest(key, ['preset', *hints])}")
        else:
            out[key] = _coerce(value, hints[key], f"model.{key}")
    return out


def suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(options)}"


def build_dataclass(cls: type, values: dict, prefix: str) -> Any:
    """Instantiate a dataclass from a mapping, rejecting unknown keys with a suggestion."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown key {prefix}{key}: {suggest(key, names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_dataclass(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)
