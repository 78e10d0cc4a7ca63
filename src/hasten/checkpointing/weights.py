"""A checkpoint's model: its weights, raw or a weight average the run wrote. Used by eval, export, generate, the
sharpness probe (through hasten.recipes.load_checkpoint_model, which asks the methods for what they changed in the
model's forward) and init_from (the weights only)."""

from __future__ import annotations

from pathlib import Path

from hasten.checkpointing.schema import ModelCheckpoint, TrainCheckpoint
from hasten.checkpointing.sharded import read_shards
from hasten.errors import CheckpointError
from hasten.model import GPT, ModelConfig
from hasten.optim.builder import build_optimizer

RAW = "raw"  # the checkpoint's own weights; any other name is a weight average the run wrote beside it
WEIGHTS_HELP = "raw (the checkpoint's weights) or the name of a weight average the run wrote (NAME_weights.safetensors)"
AVERAGED_SUFFIX = "_weights.safetensors"


def averaged_weights_file(run_dir: Path, name: str) -> Path:
    """Where a run keeps the weight average `name` (the method's name) that it exported at its end."""
    return run_dir / f"{name}{AVERAGED_SUFFIX}"


def averaged_weights(run_dir: Path | None) -> list[str]:
    """The names of the weight averages a run wrote."""
    if run_dir is None:
        return []
    return sorted(p.name.removesuffix(AVERAGED_SUFFIX) for p in run_dir.glob(f"*{AVERAGED_SUFFIX}"))


def load_model(ckpt: TrainCheckpoint | ModelCheckpoint, weights: str = RAW) -> GPT:
    """The GPT of a checkpoint, with its raw weights or a weight average its run wrote (by the method's name)."""
    model = GPT(ModelConfig(**ckpt.model_config))
    if isinstance(ckpt, TrainCheckpoint) and ckpt.sharded:
        optimizer = build_optimizer(model, ckpt.run_config().optim)  # DCP holds both; the optimizer state is dropped
        try:
            read_shards(model, optimizer, Path(ckpt.path) / ckpt.sharded, single_process=True)
        except CheckpointError:
            raise
        except Exception as err:  # DCP raises its own CheckpointException
            raise CheckpointError(
                f"sharded checkpoint {ckpt.path} cannot be read ({str(err).splitlines()[0][:160]})"
            ) from None
    else:
        try:
            model.load_state_dict(ckpt.model)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise CheckpointError(
                f"checkpoint {ckpt.path} holds weights that do not fit its own model config "
                f"({str(err).splitlines()[0][:160]}); it is damaged"
            ) from None
    if weights != RAW:
        _load_average(model, ckpt, weights)
    return model


def _load_average(model: GPT, ckpt: TrainCheckpoint | ModelCheckpoint, weights: str) -> None:
    from safetensors.torch import load_file

    found = averaged_weights(ckpt.run_dir)
    if weights not in found:
        where = f"its run wrote {', '.join(found)}" if found else "its run wrote none"
        raise CheckpointError(
            f"{ckpt.path} has no weight average {weights!r} ({where}); use --weights raw"
            f"{' or one of those' if found else ''}"
        )
    averaged = averaged_weights_file(ckpt.run_dir, weights)
    try:
        averaged_state = load_file(str(averaged))
    except Exception as err:  # safetensors raises its own SafetensorError for a truncated or garbled file
        raise CheckpointError(
            f"{averaged} cannot be read ({str(err).splitlines()[0][:120]}); it is damaged, so use --weights raw"
        ) from None
    try:
        model.load_state_dict(averaged_state)
    except (RuntimeError, OSError) as err:
        raise CheckpointError(
            f"{averaged} does not fit the checkpoint's model ({str(err).splitlines()[0][:160]}); "
            "it belongs to another stage of the run"
        ) from None
