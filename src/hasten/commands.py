"""Subcommands contributed by methods and tools (grow, sharpness, export, compare, ...).

Each entry is a module with `add_parser(subparsers)`; the CLI core stays small.
"""

from __future__ import annotations

import importlib

COMMAND_MODULES: list[str] = ["hasten.generate", "hasten.interop.cli", "hasten.compare.cli", "hasten.methods.blockwise_lr.cli", "hasten.methods.growth.cli"]


def register_commands(subparsers) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
