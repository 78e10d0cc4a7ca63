"""From a recipe to a ready trainer: loading a recipe with every section checked (its methods' too), and
building the trainer with the recipe's methods; and a checkpoint's model as its run computed with it.

    cfg = load_config("recipes/default.yaml", ["train.max_steps=100"])
    trainer = build_trainer(cfg, "runs/demo")
    trainer.fit()

This sits above the trainer and the methods: the schema (hasten.config) knows no method, and the trainer
(hasten.trainer) gets its methods, and whether they vary the sequence length, from here. The commands that
load a checkpoint's model (eval, generate, export, sharpness) get load_checkpoint_model from the command line's
root (hasten.cli), since their own layers may not import the methods.
"""

from __future__ import annotations

from pathlib import Path

from hasten.checkpointing import ModelCheckpoint, TrainCheckpoint
from hasten.config import RunConfig, config_values, run_config
from hasten.interop.cli import load_model_and_checkpoint, load_model_from
from hasten.methods.registry import build_methods, restore_model, validate_methods, varies_seq_len
from hasten.model import GPT
from hasten.parallel.ranks import Distributed
from hasten.trainer.loop import Trainer
from hasten.trainer.setup import build_trainer as assemble_trainer


def load_config(
    recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
) -> RunConfig:
    """Recipe YAML (optional) + `key=value` overrides (laid over `base`, a run's saved config) -> a validated
    RunConfig."""
    cfg = run_config(config_values(recipe, overrides, base))
    validate_methods(cfg)
    return cfg


def build_trainer(
    cfg: RunConfig,
    run_dir: str | Path,
    resume: bool = False,
    dist: Distributed | None = None,
    progress: bool = True,
    fork_from: str | Path | None = None,
) -> Trainer:
    """A ready Trainer with the recipe's methods for a new run in `run_dir`, its continuation (`resume`), or a fork of
    `fork_from`."""
    return assemble_trainer(
        cfg,
        run_dir,
        build_methods(cfg),
        resume=resume,
        dist=dist,
        progress=progress,
        fork_from=fork_from,
        dynamic_shapes=varies_seq_len(cfg),
        load_init=load_model_from,
    )  # init_from: a hasten run or checkpoint, or hf:DIR


def load_checkpoint_model(
    source: str | Path, weights: str = "raw", plain: bool = False
) -> tuple[GPT, TrainCheckpoint | ModelCheckpoint | None, Path | None]:
    """(model, its checkpoint or None for hf:DIR, the run dir or None) of a run dir, checkpoint dir, import-hf
    checkpoint or hf:DIR, computing as its run did at the checkpoint: the run's methods give back what they changed
    in the model's forward (e.g. hooks a method puts on the model). `plain` (an export to plain weights): a change
    that cannot be folded into the weights is refused with one line."""
    model, ckpt, run_dir = load_model_and_checkpoint(source, weights)
    if isinstance(ckpt, TrainCheckpoint):
        restore_model(model, ckpt, plain=plain)
    return model, ckpt, run_dir
