"""Saving, restoring and rolling back a running trainer: the one place a TrainCheckpoint is made and applied.

What a checkpoint holds is open: every part of a running trainer that has state is registered by name with
`state_dict` / `load_state_dict` (torch's Stateful protocol, as torchtitan's CheckpointManager keeps its states):
the trainer's own (Trainer.stateful: model, optimizer, schedule, sampler, progress, guard), each method's
(`methods.<name>`) and the RNG. save() gathers them in single-process form (a collective under FSDP) and rank 0
writes them atomically; restore() loads them, in that order, for a resume or for the spike guard's in-process
rollback, refuses with one line a checkpoint that lacks a registered part, and tells the methods (on_restore).
The layout itself is hasten.checkpointing.schema.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from hasten.checkpointing import CHECKPOINTS, TrainCheckpoint, save_checkpoint
from hasten.checkpointing.rng import RNGState
from hasten.checkpointing.schema import METHODS
from hasten.checkpointing.sharded import DCP_DIR
from hasten.errors import CheckpointError
from hasten.model import GPT, ModelConfig
from hasten.optim.builder import build_optimizer

if TYPE_CHECKING:
    from torch.distributed.checkpoint.stateful import Stateful

SHARDED_PARTS = ("model", "optimizer")  # a sharded checkpoint holds these as DCP shards beside state.pt


class LiveModel:
    """The trainer's current model (a change of shape replaces it) as a part: its full weights, single-process form."""

    def __init__(self, trainer):
        self.trainer = trainer

    def state_dict(self) -> dict:
        return self.trainer.parallel.model_state(self.trainer.state.model)

    def load_state_dict(self, state: dict) -> None:
        self.trainer.parallel.load_model_state(self.trainer.state.model, state)


class LiveOptimizer:
    """The trainer's current optimizer as a part: its full state in torch's single-process form."""

    def __init__(self, trainer):
        self.trainer = trainer

    def state_dict(self) -> dict:
        return self.trainer.parallel.optimizer_state(self.trainer.state.model, self.trainer.state.optimizer)

    def load_state_dict(self, state: dict) -> None:
        self.trainer.parallel.load_optimizer_state(self.trainer.state.model, self.trainer.state.optimizer, state)


def parts(trainer) -> dict[str, Stateful]:
    """Every part of a running trainer with state, by its name in a checkpoint, in the order a restore loads them: the
    trainer's registered ones, each method's (unless it keeps none: Method.checkpointed) and the RNG last."""
    methods = {f"{METHODS}.{method.name}": method for method in trainer.methods if method.checkpointed}
    return {**trainer.stateful, **methods, "rng": RNGState()}


def capture(trainer, weights: bool = True) -> TrainCheckpoint:
    """Everything a resume needs, in single-process form; a collective under FSDP (all ranks call it).

    weights=False leaves model and optimizer out (a sharded checkpoint writes them with DCP).
    """
    registered = {name: part for name, part in parts(trainer).items() if weights or name not in SHARDED_PARTS}
    return TrainCheckpoint(
        config=trainer.cfg.to_dict(),
        model_config=trainer.state.model.config.to_dict(),
        parts={name: part.state_dict() for name, part in registered.items()},
        sharded=None if weights else DCP_DIR,
    )


def save(trainer) -> Path | None:
    """Checkpoint on every rank's call (the state gather is collective); only rank 0 writes."""
    step = trainer.state.progress.step
    directory = trainer.run_dir / CHECKPOINTS
    sharded = trainer.cfg.train.checkpoint_format == "sharded"
    extra: dict = {}
    if sharded:  # each rank writes its shards to a hidden dir; rank 0 moves them into the atomic checkpoint
        shard_dir = directory / f".dcp-{step:08d}"
        trainer.parallel.save_shards(trainer.state.model, trainer.state.optimizer, shard_dir)
        extra = {f"{DCP_DIR}/{f.name}": f for f in sorted(shard_dir.iterdir())} if trainer.is_main else {}
    ckpt = capture(trainer, weights=not sharded)
    path = None
    if trainer.is_main:
        try:
            path = save_checkpoint(
                directory, step, ckpt.to_dict(), keep=trainer.cfg.train.keep_checkpoints, extra_files=extra
            )
        except OSError as err:
            raise CheckpointError(
                f"saving checkpoint at step {step} failed ({err.strerror or err}); the previous checkpoint is intact"
            ) from None
        finally:
            if sharded:
                shutil.rmtree(shard_dir, ignore_errors=True)
        trainer.logger.log("event", step, event="checkpoint", path=str(path))
    trainer.parallel.barrier()  # no rank runs ahead (or exits) before the checkpoint is in place
    return path


def restore(trainer, ckpt: TrainCheckpoint, reason: str = "resume", replay_data: bool = True) -> None:
    """Load every state of a checkpoint into a trainer and tell its methods (reason: resume or rollback).

    A rollback (the spike guard, mid-run) may cross a change of the model's shape, so the model is rebuilt in the
    checkpoint's shape first; it keeps the metrics written since the checkpoint (they are the record) and the FLOPs and
    time spent (they were spent), and with replay_data=False the data stream goes on where it was.
    """
    st = trainer.state
    rollback = reason == "rollback"
    registered = parts(trainer)
    _check_parts(ckpt, registered)
    spent, sampler = (st.progress.flops, st.progress.optimizer_flops, st.progress.train_time), st.sampler.state_dict()
    if rollback and ckpt.model_config != st.model.config.to_dict():  # the shape changed since: rebuild the earlier one
        model = GPT(ModelConfig(**ckpt.model_config)).to(trainer.device)
        trainer.replace_state(model, build_optimizer(model, trainer.cfg.optim), reason="rollback")
    if ckpt.sharded:  # DCP shards beside state.pt, resharded to this run's ranks
        try:
            trainer.parallel.load_shards(st.model, st.optimizer, Path(ckpt.path) / ckpt.sharded)
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(
                f"checkpoint {ckpt.path} does not fit this model/optimizer ({str(err).splitlines()[0][:160]})"
            ) from None
    for name, part in registered.items():
        state = ckpt.parts.get(name)
        if state is None:  # in the shards, reset on purpose (None), or absent from a version-1 checkpoint: fresh
            continue
        try:
            part.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"checkpoint {ckpt.path}: its {name} state does not fit this run ({str(err).splitlines()[0][:160]})"
            ) from None
    if rollback:
        st.progress.flops, st.progress.optimizer_flops, st.progress.train_time = (
            spent  # discarded steps still cost compute
        )
        if not replay_data:
            st.sampler.load_state_dict(sampler)
    else:
        trainer.logger.truncate_after(st.progress.step)
        trainer.logger.log("event", st.progress.step, event="resumed", path=str(ckpt.path) if ckpt.path else None)
    for method in trainer.methods:
        method.on_restore(trainer.ctx, reason)


def _check_parts(ckpt: TrainCheckpoint, registered: dict[str, Stateful]) -> None:
    """A checkpoint must hold every part the trainer registered (format version 2 on; older ones were lenient and their
    missing parts start fresh, as they did then)."""
    held = set(ckpt.parts) | (set(SHARDED_PARTS) if ckpt.sharded else set())
    missing = [name for name in registered if name not in held]
    if missing and ckpt.version >= 2:
        raise CheckpointError(
            f"checkpoint {ckpt.path} lacks the state of {', '.join(missing)} that this run keeps "
            f"(it holds {', '.join(sorted(held))}); continue from a checkpoint of this run, or start "
            f"a new run from its weights with train.init_from={ckpt.path}"
        )
