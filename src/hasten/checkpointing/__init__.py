"""Checkpoints: atomic verified directories (files.py), what they hold (schema.py: TrainCheckpoint,
ModelCheckpoint, open_checkpoint), DCP shards (sharded.py), RNG states (rng.py) and loading a
checkpoint's model for evaluation or export (weights.py). Saving, restoring and rolling back a
running trainer is hasten.trainer.checkpoints, on top of these."""

from hasten.checkpointing.files import (
    MANIFEST_FILE,
    STATE_FILE,
    checkpoint_name,
    checkpoint_step,
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
    warn,
)
from hasten.checkpointing.schema import (
    CHECKPOINTS,
    MODEL_FORMAT,
    TRAIN_FORMAT,
    ModelCheckpoint,
    TrainCheckpoint,
    checkpoints_dir,
    open_checkpoint,
    open_train_checkpoint,
)

__all__ = [
    "CHECKPOINTS",
    "MANIFEST_FILE",
    "MODEL_FORMAT",
    "STATE_FILE",
    "TRAIN_FORMAT",
    "ModelCheckpoint",
    "TrainCheckpoint",
    "checkpoint_name",
    "checkpoint_step",
    "checkpoints_dir",
    "latest_good_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "open_checkpoint",
    "open_train_checkpoint",
    "save_checkpoint",
    "verify_checkpoint",
    "warn",
]
