"""Saving, restoring and rolling back a running trainer: the one place a TrainCheckpoint is made and applied.

save() gathers the whole state in single-process form (a collective under FSDP) and rank 0 writes it
atomically; restore() loads one into a trainer, for a resume or for the spike guard's in-process
rollback, and tells the methods (on_restore). The layout itself is hasten.checkpointing.schema.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hasten.checkpointing import CHECKPOINTS, TrainCheckpoint, save_checkpoint
from hasten.checkpointing.rng import rng_state, set_rng_state
from hasten.checkpointing.sharded import DCP_DIR
from hasten.errors import CheckpointError
from hasten.model import GPT, ModelConfig
from hasten.optim.builder import build_optimizer
from hasten.trainer.state import Progress


def capture(trainer, weights: bool = True) -> TrainCheckpoint:
    """Everything a resume needs, in single-process form; a collective under FSDP (all ranks call it).

    weights=False leaves model and optimizer out (a sharded checkpoint writes them with DCP).
    """
    st, parallel = trainer.state, trainer.parallel
    return TrainCheckpoint(
        config=trainer.cfg.to_dict(), model_config=st.model.config.to_dict(), progress=st.progress.to_dict(),
        schedule=st.schedule.state_dict(), sampler=st.sampler.state_dict(), rng=rng_state(), guard=trainer.guard.state_dict(),
        methods={m.name: m.state_dict() for m in trainer.methods},
        model=parallel.model_state(st.model) if weights else None,
        optimizer=parallel.optimizer_state(st.model, st.optimizer) if weights else None,
        sharded=None if weights else DCP_DIR)


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
            path = save_checkpoint(directory, step, ckpt.to_dict(), keep=trainer.cfg.train.keep_checkpoints, extra_files=extra)
        except OSError as err:
            raise CheckpointError(f"saving checkpoint at step {step} failed ({err.strerror or err}); the previous checkpoint is intact") from None
        finally:
            if sharded:
                shutil.rmtree(shard_dir, ignore_errors=True)
        trainer.logger.log("event", step, event="checkpoint", path=str(path))
    trainer.parallel.barrier()  # no rank runs ahead (or exits) before the checkpoint is in place
    return path


def restore(trainer, ckpt: TrainCheckpoint, reason: str = "resume", replay_data: bool = True) -> None:
    """Load every state of a checkpoint into a trainer and tell its methods (reason: resume or rollback).

    A rollback (the spike guard, mid-run) may cross a change of the model's shape, so the model is rebuilt in the checkpoint's
    shape first; it keeps the metrics written since the checkpoint (they are the record) and the FLOPs and
    time spent (they were spent), and with replay_data=False the data stream goes on where it was.
    """
    st = trainer.state
    rollback = reason == "rollback"
    spent, sampler = (st.progress.flops, st.progress.optimizer_flops, st.progress.train_time), st.sampler.state_dict()
    if rollback and ckpt.model_config != st.model.config.to_dict():  # the shape changed since: rebuild the earlier one
        model = GPT(ModelConfig(**ckpt.model_config)).to(trainer.device)
        trainer.replace_state(model, build_optimizer(model, trainer.cfg.optim), reason="rollback")
    try:
        if ckpt.sharded:  # DCP shards beside state.pt, resharded to this run's ranks
            trainer.parallel.load_shards(st.model, st.optimizer, Path(ckpt.path) / ckpt.sharded)
        else:  # consolidated: full tensors, loaded into a plain, DDP or FSDP-sharded model alike
            trainer.parallel.load_state(st.model, st.optimizer, ckpt.model, ckpt.optimizer)
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit this model/optimizer ({str(err).splitlines()[0][:160]})") from None
    st.schedule.load_state_dict(ckpt.schedule)
    st.sampler.load_state_dict(ckpt.sampler)
    vars(st.progress).update(vars(Progress(**ckpt.progress)))  # in place: the loop holds a reference to it
    trainer.guard.load_state_dict(ckpt.guard)
    for method in trainer.methods:
        if method.name in ckpt.methods:
            method.load_state_dict(ckpt.methods[method.name])
    set_rng_state(ckpt.rng)
    if rollback:
        st.progress.flops, st.progress.optimizer_flops, st.progress.train_time = spent  # discarded steps still cost compute
        if not replay_data:
            st.sampler.load_state_dict(sampler)
    else:
        trainer.logger.truncate_after(st.progress.step)
        trainer.logger.log("event", st.progress.step, event="resumed", path=str(ckpt.path) if ckpt.path else None)
    for method in trainer.methods:
        method.on_restore(trainer.ctx, reason)
