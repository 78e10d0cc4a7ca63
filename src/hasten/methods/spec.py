"""What the registry knows of a method: its recipe section, config dataclass, how to build it, and where
its hooks run among the others'."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hasten.config import RunConfig
from hasten.trainer.method import Method


@dataclass(frozen=True)
class MethodSpec:
    name: str  # the recipe section `methods.<name>` and the method's key in checkpoints
    config_cls: type  # a dataclass; `validate()` and `validate_run(run_cfg)` are called when present
    build: Callable[[Any, RunConfig], Method]  # (its config, the run config) -> the method
    order: int  # hooks run in ascending order, whatever the recipe's order of sections
    summary: str = ""
    varies_seq_len: bool = False  # changes the sequence length between steps (torch.compile: one dynamic graph)
