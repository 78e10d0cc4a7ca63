"""Helpers shared by the trainer-level tests."""

from __future__ import annotations

from hasten.config import load_config
from hasten.trainer.callbacks import StopAt
from hasten.trainer.setup import build_trainer


def run_training(run_dir, overrides: list[str], stop_at: int | None = None, resume: bool = False):
    """Build and fit a trainer from `--set`-style overrides; optionally stop after `stop_at` steps."""
    trainer = build_trainer(load_config(None, overrides), run_dir, resume=resume, progress=False)
    if stop_at is not None:
        trainer.callbacks.append(StopAt(stop_at))
    trainer.fit()
    return trainer
