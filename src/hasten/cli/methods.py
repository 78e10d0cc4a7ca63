"""`hasten methods`: the methods hasten knows (from their specs), how a recipe switches each on, its paper and card.

The output is the README's method table (a test keeps the two equal), in Markdown.
"""

from __future__ import annotations

from pathlib import Path

from hasten.methods.registry import method_table

ROOT = Path(__file__).resolve().parents[3]  # the repository of an editable install: cards are linked relative to it


def cmd_methods(args) -> int:
    print(method_table(ROOT))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "methods", help="the methods (from the registry): how to switch each on, its paper and method card"
    )
    p.set_defaults(func=cmd_methods)
