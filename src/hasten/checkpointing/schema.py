"""What a checkpoint holds, typed: a TrainCheckpoint (a training run's whole state) or a ModelCheckpoint
(weights only, written by `hasten import-hf`), and `open_checkpoint`, the one way to read either.

On disk a checkpoint's state.pt is the mapping `to_dict()` returns (files.py writes it atomically with a
manifest). Everything that reads a checkpoint (resume, the guard's rollback, eval, export, generate,
grow, the sharpness probe) goes through open_checkpoint, so the layout lives here only.

What a method changes in the model's forward from outside it is part of that method's state (in `methods`), so
the weights here are plain; loaders ask the method registry to give the change back (hasten.recipes). Checkpoints
written before that held such a change in a `unit_masks` field, which is ignored: the same masks follow from the
method's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hasten.checkpointing.files import load_checkpoint
from hasten.config import RunConfig, config_from_dict
from hasten.errors import CheckpointError

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


@dataclass
class TrainCheckpoint:
    """Everything a resume needs, in single-process form (any number of ranks can load it)."""

    config: dict  # the run's RunConfig.to_dict()
    model_config: dict  # the saved model's shape (after growth: the current stage's)
    progress: dict  # hasten.trainer.state.Progress
    schedule: dict
    sampler: dict
    rng: dict
    guard: dict = field(default_factory=dict)
    methods: dict[str, dict] = field(default_factory=dict)  # each method's state_dict, by name
    model: dict | None = None  # consolidated weights; None in a sharded checkpoint ...
    optimizer: dict | None = None
    sharded: str | None = None  # ... whose DCP shards are in this sub-directory
    path: Path | None = None  # where it was read from (not saved)

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
        out = {"format": TRAIN_FORMAT, "config": self.config, "model_config": self.model_config}
        if self.sharded is None:
            out.update(model=self.model, optimizer=self.optimizer)
        out.update(schedule=self.schedule, sampler=self.sampler, progress=self.progress, rng=self.rng, methods=self.methods,
                   guard=self.guard)
        if self.sharded is not None:
            out["sharded"] = self.sharded
        return out


def from_state(state: dict) -> TrainCheckpoint | ModelCheckpoint:
    """The typed checkpoint of a state.pt mapping (as files.load_checkpoint returns it, with `_path`)."""
    path = Path(state["_path"]) if state.get("_path") else None
    if "model_config" not in state or ("model" not in state and not state.get("sharded")):
        raise CheckpointError(f"{path} holds no model (format {state.get('format')!r}); give a hasten run or checkpoint dir")
    if "config" not in state:
        return ModelCheckpoint(state["model_config"], state["model"], path)
    try:
        return TrainCheckpoint(
            config=state["config"], model_config=state["model_config"], progress=state["progress"], schedule=state["schedule"],
            sampler=state["sampler"], rng=state["rng"], guard=state.get("guard", {}),
            methods=state.get("methods", state.get("callbacks", {})),  # checkpoints before 0.2 named it `callbacks`
            model=state.get("model"), optimizer=state.get("optimizer"), sharded=state.get("sharded"),
            path=path)
    except KeyError as err:
        raise CheckpointError(f"checkpoint {path} has no {err.args[0]!r}; it was not written by hasten train") from None


def checkpoints_dir(path: str | Path) -> Path:
    """Where to look for checkpoints given a run dir, its checkpoints/ folder or one checkpoint dir."""
    path = Path(path)
    return path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path


def open_checkpoint(path: str | Path) -> TrainCheckpoint | ModelCheckpoint:
    """The newest good checkpoint of a run dir (or of a checkpoints folder), or the checkpoint dir `path`, verified and typed."""
    return from_state(load_checkpoint(checkpoints_dir(path)))


def open_train_checkpoint(path: str | Path, use: str) -> TrainCheckpoint:
    """open_checkpoint for a command (`use`) that needs a training run's state, not just a model."""
    ckpt = open_checkpoint(path)
    if not isinstance(ckpt, TrainCheckpoint):
        raise CheckpointError(f"{ckpt.path} holds a model without a run config (import-hf?); {use} needs a run dir or a training checkpoint")
    return ckpt
