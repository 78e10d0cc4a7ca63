"""From a recipe to a ready trainer: loading a recipe with every section checked (its methods' too), and
building the trainer with the recipe's methods.

    cfg = load_config("recipes/default.yaml", ["train.max_steps=100"])
    trainer = build_trainer(cfg, "runs/demo")
    trainer.fit()

This sits above the trainer and the methods: the schema (hasten.config) knows no method, and the trainer
(hasten.trainer) gets its methods, and whether they vary the sequence length, from here.
"""

from __future__ import annotations

from pathlib import Path

from hasten.config import RunConfig, config_values, run_config
from hasten.interop.cli import load_model_from
from hasten.methods.registry import build_methods, validate_methods, varies_seq_len
from hasten.parallel.ranks import Distributed
from hasten.trainer.loop import Trainer
from hasten.trainer.setup import build_trainer as assemble_trainer


def load_config(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None) -> RunConfig:
    """Recipe YAML (optional) + `key=value` overrides (laid over `base`, a run's saved config) -> a validated RunConfig."""
    cfg = run_config(config_values(recipe, overrides, base))
    validate_methods(cfg)
    return cfg


def build_trainer(cfg: RunConfig, run_dir: str | Path, resume: bool = False, dist: Distributed | None = None, progress: bool = True,
                  fork_from: str | Path | None = None) -> Trainer:
    """A ready Trainer with the recipe's methods for a new run in `run_dir`, its continuation (`resume`), or a fork of `fork_from`."""
    return assemble_trainer(cfg, run_dir, build_methods(cfg), resume=resume, dist=dist, progress=progress, fork_from=fork_from,
                            dynamic_shapes=varies_seq_len(cfg), load_init=load_model_from)  # init_from: a hasten run or checkpoint, or hf:DIR
