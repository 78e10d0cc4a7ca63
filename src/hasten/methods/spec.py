"""A method, declared once: its folder's `SPECS` say everything the rest of hasten needs to know of it.

    how a recipe switches it on    the `methods.<name>` section (config_cls, build, order), or an optimizer
                                   setting (`switch`, e.g. optim.name: muon) when the optimizer's param groups carry it
    what a checkpoint needs        restore_model: what the method changed in the model's forward, given back to a
                                   model loaded for eval / generate / export (growth's MSG mask ramp)
    its tests                      test_runs: tiny runs for the registry-built tests (TEST_KINDS); a test it cannot
                                   take part in is named in not_tested with the reason
    its commands, plot markers     commands (add_parser functions), markers (points compare's plots draw on a curve)
    its per-step cost              step_cost: the settings at which the throughput benchmarks time it (or not_tested
                                   says why it has none)
    its card                       card: the method card, with summary and paper for the README's method table

hasten.methods.registry lists the folders; nothing else names a method.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from hasten.config import RunConfig
from hasten.trainer.method import Method

# the registry-built tests: the method grid (trains and resumes bit-exactly, tests/test_method_grid.py), fault
# injection (SIGKILL mid-step and mid-save, then --resume, tests/test_fault_injection.py) and the host-sync count
# (no device read between sync points, tests/test_host_syncs.py)
TEST_KINDS = ("grid", "faults", "host_syncs")
DEFAULT_KILLS = ("step:6", "save:12")  # fault injection's kill points when a test run names none


@dataclass(frozen=True)
class TinyRun:
    """A tiny run with the method on: `--set` overrides laid over the tests' tiny run (16 steps, checkpoints every 4
    or 8), the registry-built tests it takes part in, and where fault injection kills it (the processes' kill points
    in order, e.g. right after the method changes the state)."""

    overrides: tuple[str, ...]
    tests: tuple[str, ...] = TEST_KINDS
    kill_at: tuple[str, ...] = DEFAULT_KILLS


@dataclass(frozen=True)
class PlotMarker:
    """A point of a run that comparison plots draw on its curve: every event row named `event`, or the first train
    row from which the field `settles` keeps its final value (when it varied over the run)."""

    name: str  # the marker's kind in results.json
    label: str  # what the plots' legend calls it
    linestyle: str  # matplotlib's, e.g. "--" or ":"
    event: str | None = None
    settles: str | None = None

    def find(self, rows: list[dict]) -> list[dict]:
        """This marker's points in a run's metrics.jsonl rows: {"kind", "tokens", ...} each."""
        if self.event is not None:
            return [
                {"kind": self.name, "tokens": float(r["tokens"])}
                for r in rows
                if r.get("kind") == "event"
                and r.get("event") == self.event
                and isinstance(r.get("tokens"), (int, float))
            ]
        values = [
            (r["tokens"], r[self.settles])
            for r in rows
            if r.get("kind") == "train"
            and isinstance(r.get("tokens"), (int, float))
            and isinstance(r.get(self.settles), (int, float))
        ]
        if len({value for _, value in values}) < 2:
            return []
        final, i = values[-1][1], len(values) - 1
        while i > 0 and values[i - 1][1] == final:  # the earliest logged row from which the value stays final
            i -= 1
        return [{"kind": self.name, "tokens": float(values[i][0]), self.settles: final, "from": values[0][1]}]


RestoreModel = Callable[[nn.Module, dict, int, bool], None]  # (model, the method's checkpointed state, step, plain)


@dataclass(frozen=True)
class MethodSpec:
    name: str  # the recipe section `methods.<name>` (or the switched-on method's name) and its key in checkpoints
    summary: str  # one line: what it is, for the method table
    paper: str  # the paper(s) it implements, e.g. "arXiv 2405.15319"
    card: Path  # its method card (README.md in its folder)
    config_cls: type | None = None  # the section's dataclass (its `validate()`, `validate_run(run_cfg)` are called)
    build: Callable[[Any, RunConfig], Method] | None = None  # (its config, the run config) -> the method in the trainer
    order: int = 0  # hooks run in ascending order, whatever the recipe's order of sections
    switch: tuple[str, Any] | None = None  # (config key, value) that switches it on instead of a methods section
    varies_seq_len: bool = False  # changes the sequence length between steps (torch.compile: one dynamic graph)
    restore_model: RestoreModel | None = None  # gives a loaded model what the method changed in its forward at a step;
    # `plain` (export to plain weights) refuses with one line what cannot be folded into the weights
    test_runs: Mapping[str, TinyRun] = field(default_factory=dict)  # variant name -> tiny run
    not_tested: Mapping[str, str] = field(default_factory=dict)  # test kind -> why it does not apply to this method
    commands: tuple[Callable[[argparse._SubParsersAction], None], ...] = ()  # add_parser(subparsers) of its commands
    markers: tuple[PlotMarker, ...] = ()
    # `--set` overrides that run it at its steady per-step cost (past any warm-up of its own), which
    # benchmarks/throughput.py and gpu_check.py time against a plain run; None: say why in not_tested["step_cost"]
    step_cost: tuple[str, ...] | None = None

    @property
    def switched_on_by(self) -> str:
        """How a recipe switches it on, as a recipe would write it."""
        if self.switch is not None:
            key, value = self.switch
            return f"`{key}: {str(value).lower() if isinstance(value, bool) else value}`"
        return f"`methods.{self.name}` section"
