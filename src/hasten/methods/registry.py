"""The methods hasten knows, listed explicitly: recipe section name -> MethodSpec (config dataclass, builder, hook order).

A recipe's `methods:` mapping is validated here, so unknown method names and unknown keys inside a
method's section fail with one line that names them. Methods are built (and their hooks run) in the
order of their specs, whatever the order of the recipe's sections.
"""

from __future__ import annotations

import difflib

from hasten.config import RunConfig, build_dataclass
from hasten.errors import ConfigError
from hasten.methods import averaging, blockwise_lr, growth, seqlen_warmup
from hasten.methods.spec import MethodSpec
from hasten.trainer.method import Method

# one entry per method folder (averaging holds three: lawa, ema, swa)
FOLDERS = (seqlen_warmup, blockwise_lr, growth, averaging)


def registered() -> dict[str, MethodSpec]:
    """Every method's spec by name, in hook order."""
    specs = sorted((spec for folder in FOLDERS for spec in folder.SPECS), key=lambda spec: (spec.order, spec.name))
    return {spec.name: spec for spec in specs}


def method_config(run_cfg: RunConfig, name: str):
    """The validated config dataclass of one method section of the run config."""
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


def enabled_methods(run_cfg: RunConfig) -> list[str]:
    """Methods present in the recipe, except sections with `enabled: false`, in hook order."""
    order = list(registered())
    names = [name for name, section in run_cfg.methods.items() if not (isinstance(section, dict) and section.get("enabled") is False)]
    return sorted(names, key=order.index)


def validate_methods(run_cfg: RunConfig) -> None:
    if not isinstance(run_cfg.methods, dict):
        raise ConfigError("methods must be a mapping of method name -> settings")
    for name in run_cfg.methods:
        method_config(run_cfg, name)


def build_methods(run_cfg: RunConfig) -> list[Method]:
    """The enabled methods of a run, built from their sections, in hook order."""
    specs = registered()
    return [specs[name].build(method_config(run_cfg, name), run_cfg) for name in enabled_methods(run_cfg)]


def varies_seq_len(run_cfg: RunConfig) -> bool:
    """Whether an enabled method changes the sequence length between steps (compile one dynamic graph)."""
    specs = registered()
    return any(specs[name].varies_seq_len for name in enabled_methods(run_cfg))
