"""The methods hasten knows, listed explicitly: one line per method folder, whose `SPECS` declare each method once.

A recipe's `methods:` mapping is validated here, so unknown method names and unknown keys inside a
method's section fail with one line that names them. Methods are built (and their hooks run) in the
order of their specs, whatever the order of the recipe's sections. Everything else that needs to know the
methods asks here too: a checkpoint's model (restore_model), the command line (commands), the comparison
plots (plot_markers), the README's method table (method_table) and the registry-built tests.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable
from pathlib import Path

from torch import nn

from hasten.checkpointing import TrainCheckpoint
from hasten.config import RunConfig, build_dataclass
from hasten.errors import ConfigError
from hasten.methods import averaging, blockwise_lr, growth, muon, seqlen_warmup
from hasten.methods.spec import MethodSpec, PlotMarker
from hasten.trainer.method import Method

# one entry per method folder (averaging holds three: lawa, ema, swa; blockwise_lr: blockwise, adam_mini, sharpness)
FOLDERS = (seqlen_warmup, blockwise_lr, muon, growth, averaging)


def registered() -> dict[str, MethodSpec]:
    """Every method's spec by name, in hook order."""
    specs = sorted((spec for folder in FOLDERS for spec in folder.SPECS), key=lambda spec: (spec.order, spec.name))
    return {spec.name: spec for spec in specs}


def method_config(run_cfg: RunConfig, name: str):
    """The validated config dataclass of one method section of the run config."""
    specs = registered()
    sections = {n for n, spec in specs.items() if spec.config_cls is not None}
    if name not in sections:
        if name in specs:
            switch = specs[name].switched_on_by.strip("`")
            raise ConfigError(
                f"methods.{name}: {name} is switched on by {switch}, not by a methods section; set that instead"
            )
        close = difflib.get_close_matches(name, sorted(sections), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known methods: {', '.join(sorted(sections)) or 'none'}"
        raise ConfigError(f"unknown method methods.{name}: {hint}")
    section = run_cfg.methods.get(name) or {}
    cfg = build_dataclass(specs[name].config_cls, section, f"methods.{name}.")
    if hasattr(cfg, "validate"):
        cfg.validate()
    if hasattr(
        cfg, "validate_run"
    ):  # checks against the rest of the recipe (e.g. sharpness auto_ratios needs optim.blockwise)
        cfg.validate_run(run_cfg)
    return cfg


def enabled_methods(run_cfg: RunConfig) -> list[str]:
    """Methods present in the recipe, except sections with `enabled: false`, in hook order."""
    order = list(registered())
    names = [
        name
        for name, section in run_cfg.methods.items()
        if not (isinstance(section, dict) and section.get("enabled") is False)
    ]
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


def restore_model(model: nn.Module, ckpt: TrainCheckpoint, plain: bool = False) -> None:
    """Give a model loaded from `ckpt` what its run's methods had changed in its forward at the checkpoint's step
    (growth: the MSG masks), from their checkpointed states. `plain` (an export to plain weights): refused with one line
    by a method whose change cannot be folded into the weights."""
    for spec in registered().values():
        state = ckpt.methods.get(spec.name)
        if spec.restore_model is not None and state is not None:
            spec.restore_model(model, state, ckpt.step, plain)


def commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """The add_parser functions of the methods' own commands (e.g. `hasten grow`, `hasten sharpness`)."""
    return [add for spec in registered().values() for add in spec.commands]


def plot_markers() -> list[PlotMarker]:
    """The points of a run that comparison plots mark (growth, the end of sequence length warmup, ...), each once."""
    out: list[PlotMarker] = []
    for spec in registered().values():
        out.extend(marker for marker in spec.markers if marker not in out)
    return out


def step_costs() -> dict[str, list[str]]:
    """Each method's `--set` overrides at its steady per-step cost (the throughput benchmarks time these rows)."""
    return {name: list(spec.step_cost) for name, spec in registered().items() if spec.step_cost is not None}


def method_table(root: Path | None = None) -> str:
    """The README's method table: one row per method, how a recipe switches it on, its paper and its card (a link
    relative to `root`, the repository, when the card lies inside it)."""
    lines = ["| method | what it is | switched on by | paper | method card |", "|---|---|---|---|---|"]
    for spec in registered().values():
        card = Path(spec.card)
        if root is not None and card.is_relative_to(root):
            card = card.relative_to(root)
        cells = (f"`{spec.name}`", spec.summary, spec.switched_on_by, spec.paper, f"[{card.parent}]({card})")
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines)
