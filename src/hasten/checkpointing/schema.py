"""What a checkpoint holds, typed: a TrainCheckpoint (a training run's whole state) or a ModelCheckpoint
(weights only, written by `hasten import-hf`), and `open_checkpoint`, the one way to read either.

On disk a checkpoint's state.pt is the mapping `to_dict()` returns (files.py writes it atomically with a
manifest): the run's config and model shape, and one entry per part the run registered (the methods' under
`methods`, by name). Everything that reads a checkpoint (resume, the guard's rollback, eval, export, generate,
grow, the sharpness probe) goes through open_checkpoint, so the layout lives here only.

What a method changes in the model's forward from outside it is part of that method's state (in `methods`), so
the weights here are plain; loaders ask the method registry to give the change back (hasten.recipes). Checkpoints
written before that held such a change in a `unit_masks` field, which is ignored: the same masks follow from the
method's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hasten.checkpointing.files import load_checkpoint
from hasten.config import ModelConfig, RunConfig, config_from_dict
from hasten.errors import CheckpointError, ConfigError

TRAIN_FORMAT = "hasten-train-state"
MODEL_FORMAT = "hasten-model"
CHECKPOINTS = "checkpoints"  # a run dir's checkpoint folder


@dataclass
class ModelCheckpoint:
    """A model without a training run (import-hf): its config and weights."""

    model_config: dict
    model: dict
    path: Path | None = None  # where it was read from (not saved)

    @property
    def step(self) -> int | None:
        return None

    @property
    def run_dir(self) -> Path | None:
        return None

    def to_dict(self) -> dict:
        return {"format": MODEL_FORMAT, "model_config": self.model_config, "model": self.model}


METHODS = "methods"  # parts named "methods.<name>" are kept in this one mapping on disk, by method name
FORMAT_VERSION = 2  # 2: every part the run registers is in the checkpoint; 1 (before #23, no `version`): lenient


@dataclass
class TrainCheckpoint:
    """Everything a resume needs, in single-process form (any number of ranks can load it): the run's config, the
    model's shape, and the state of every part the run registered by name (hasten.trainer.checkpoints: model,
    optimizer, schedule, sampler, progress, guard, rng and `methods.<name>` for each method). A part held as None was
    reset on purpose (e.g. by `hasten grow`): it starts afresh."""

    config: dict  # the run's RunConfig.to_dict()
    model_config: dict  # the saved model's shape (after a change of shape: the current one)
    parts: dict[str, Any] = field(default_factory=dict)  # part name -> its state_dict()
    sharded: str | None = None  # model and optimizer are DCP shards in this sub-directory, not parts
    version: int = FORMAT_VERSION
    path: Path | None = None  # where it was read from (not saved)

    @property
    def progress(self) -> dict:
        return self.parts["progress"]

    @property
    def model(self) -> dict | None:
        return self.parts.get("model")

    @property
    def methods(self) -> dict[str, Any]:
        """Each method's state, by method name."""
        prefix = f"{METHODS}."
        return {name.removeprefix(prefix): state for name, state in self.parts.items() if name.startswith(prefix)}

    @property
    def step(self) -> int:
        return int(self.progress["step"])

    @property
    def run_dir(self) -> Path | None:
        """The run dir this checkpoint belongs to (None for a checkpoint dir outside a run)."""
        if self.path is None:
            return None
        run_dir = self.path.parent.parent
        return run_dir if (run_dir / "config.yaml").is_file() else None

    def run_config(self) -> RunConfig:
        return config_from_dict(self.config)

    def to_dict(self) -> dict:
        out = {
            "format": TRAIN_FORMAT,
            "version": self.version,
            "config": self.config,
            "model_config": self.model_config,
        }
        out.update({name: state for name, state in self.parts.items() if not name.startswith(f"{METHODS}.")})
        out[METHODS] = self.methods
        if self.sharded is not None:
            out["sharded"] = self.sharded
        return out


LEGACY_PARTS = ("progress", "schedule", "sampler", "rng")  # what every checkpoint before format version 2 held
NOT_PARTS = (
    "format",
    "version",
    "config",
    "model_config",
    "sharded",
    "_path",
    METHODS,
    "callbacks",  # checkpoints before 0.2 named the methods' states `callbacks`
    "unit_masks",
)  # before #23: growth's MSG masks; the growth method's state holds the same


def from_state(state: dict) -> TrainCheckpoint | ModelCheckpoint:
    """The typed checkpoint of a state.pt mapping (as files.load_checkpoint returns it, with `_path`)."""
    path = Path(state["_path"]) if state.get("_path") else None
    if "model_config" not in state or ("model" not in state and not state.get("sharded")):
        raise CheckpointError(
            f"{path} holds no model (format {state.get('format')!r}); give a hasten run or checkpoint dir"
        )
    _check_model_config(state["model_config"], path)
    if "config" not in state:
        return ModelCheckpoint(state["model_config"], state["model"], path)
    for key in ("config", "progress", "schedule", "sampler", "rng", METHODS):  # mappings every loader reads into
        if key in state and not isinstance(state[key], dict):
            raise CheckpointError(
                f"checkpoint {path} holds a {type(state[key]).__name__} as its {key}; it was not written by hasten"
            )
    version = state.get("version", 1)
    if not isinstance(version, int):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(version).__name__} as its version; it was not written by hasten"
        )
    missing = [name for name in ("config", "progress", *(LEGACY_PARTS if version < 2 else ())) if name not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} has no {missing[0]!r}; it was not written by hasten train")
    parts = {name: value for name, value in state.items() if name not in NOT_PARTS}
    methods = state.get(METHODS, state.get("callbacks", {}))
    parts.update({f"{METHODS}.{name}": value for name, value in methods.items()})
    return TrainCheckpoint(
        config=state["config"],
        model_config=state["model_config"],
        parts=parts,
        sharded=state.get("sharded"),
        version=version,
        path=path,
    )


def _check_model_config(values, path: Path | None) -> None:
    """A checkpoint's model shape must be one hasten can build (checked before anything allocates it)."""
    try:
        ModelConfig(**values).validate()
    except (TypeError, ConfigError) as err:
        raise CheckpointError(
            f"checkpoint {path} has a model config hasten cannot build ({str(err)[:160]}); it was not written "
            "by this version of hasten"
        ) from None


def checkpoints_dir(path: str | Path) -> Path:
    """Where to look for checkpoints given a run dir, its checkpoints/ folder or one checkpoint dir."""
    path = Path(path)
    return path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path


def open_checkpoint(path: str | Path) -> TrainCheckpoint | ModelCheckpoint:
    """The newest good checkpoint of a run dir (or of a checkpoints folder), or the checkpoint dir `path`, verified and
    typed."""
    return from_state(load_checkpoint(checkpoints_dir(path)))


def open_train_checkpoint(path: str | Path, use: str) -> TrainCheckpoint:
    """open_checkpoint for a command (`use`) that needs a training run's state, not just a model."""
    ckpt = open_checkpoint(path)
    if not isinstance(ckpt, TrainCheckpoint):
        raise CheckpointError(
            f"{ckpt.path} holds a model without a run config (import-hf?); "
            f"{use} needs a run dir or a training checkpoint"
        )
    return ckpt
