"""Registry of trainer methods: recipe section name -> (config dataclass, callback factory).

A recipe's `methods:` mapping is validated here, so unknown method names and unknown keys
inside a method's section fail with one line that names them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hasten.errors import ConfigError


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    factory: Callable[[Any, Any], Any]  # (method config, RunConfig) -> Callback
    summary: str = ""


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtin() -> None:
    # importing a method module registers it; kept lazy so `import hasten` stays light
    import hasten.methods.builtin  # noqa: F401


def registered() -> dict[str, MethodSpec]:
    _load_builtin()
    return dict(_REGISTRY)


def method_config(run_cfg, name: str):
    """The validated config dataclass of one method section of the run config."""
    from hasten.config import build_dataclass

    specs = registered()
    if name not in specs:
        close = difflib.get_close_matches(name, list(specs), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known methods: {', '.join(sorted(specs)) or 'none'}"
        raise ConfigError(f"unknown method methods.{name}: {hint}")
    section = run_cfg.methods.get(name) or {}
    cfg = build_dataclass(specs[name].config_cls, section, f"methods.{name}.")
    if hasattr(cfg, "validate"):
        cfg.validate()
    if hasattr(cfg, "validate_run"):  # checks against the rest of the recipe (e.g. sharpness auto_ratios needs optim.blockwise)
        cfg.validate_run(run_cfg)
    return cfg


def enabled_methods(run_cfg) -> list[str]:
    """Methods present in the recipe, except sections with `enabled: false`."""
    names = []
    for name, section in run_cfg.methods.items():
        if isinstance(section, dict) and section.get("enabled") is False:
            continue
        names.append(name)
    return names


def validate_methods(run_cfg) -> None:
    if not isinstance(run_cfg.methods, dict):
        raise ConfigError("methods must be a mapping of method name -> settings")
    for name in run_cfg.methods:
        method_config(run_cfg, name)


def build_callbacks(run_cfg) -> list:
    specs = registered()
    return [specs[name].factory(method_config(run_cfg, name), run_cfg) for name in enabled_methods(run_cfg)]
