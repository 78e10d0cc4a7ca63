"""A checkpoint's model, ready to evaluate or export: its weights (raw or a weight average the run wrote)
and the unit masks it was saved with. Used by eval, export, generate, the sharpness probe and init_from."""

from __future__ import annotations

from pathlib import Path

from hasten.checkpointing.schema import ModelCheckpoint, TrainCheckpoint
from hasten.checkpointing.sharded import read_shards
from hasten.errors import CheckpointError
from hasten.model import GPT, ModelConfig
from hasten.optim.builder import build_optimizer

WEIGHTS = ("raw", "lawa", "ema", "swa")  # raw weights or the average a weight-averaging method exported at the run's end


def averaged_weights_file(run_dir: Path, weights: str) -> Path:
    return run_dir / f"{weights}_weights.safetensors"


def load_model(ckpt: TrainCheckpoint | ModelCheckpoint, weights: str = "raw") -> GPT:
    """The GPT of a checkpoint; `weights` picks the raw weights or the run's lawa/ema/swa average."""
    model = GPT(ModelConfig(**ckpt.model_config))
    if isinstance(ckpt, TrainCheckpoint) and ckpt.sharded:
        optimizer = build_optimizer(model, ckpt.run_config().optim)  # DCP holds both; the optimizer state is dropped
        try:
            read_shards(model, optimizer, Path(ckpt.path) / ckpt.sharded, single_process=True)
        except CheckpointError:
            raise
        except Exception as err:  # DCP raises its own CheckpointException
            raise CheckpointError(f"sharded checkpoint {ckpt.path} cannot be read ({str(err).splitlines()[0][:160]})") from None
    else:
        try:
            model.load_state_dict(ckpt.model)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise CheckpointError(f"checkpoint {ckpt.path} holds weights that do not fit its own model config "
                                  f"({str(err).splitlines()[0][:160]}); it is damaged") from None
    if isinstance(ckpt, TrainCheckpoint) and ckpt.unit_masks:
        model.set_unit_masks(**ckpt.unit_masks)
    if weights != "raw":
        _load_average(model, ckpt, weights)
    return model


def _load_average(model: GPT, ckpt: TrainCheckpoint | ModelCheckpoint, weights: str) -> None:
    from safetensors.torch import load_file

    averaged = averaged_weights_file(ckpt.run_dir, weights) if ckpt.run_dir is not None else None
    if averaged is None or not averaged.exists():
        raise CheckpointError(f"{ckpt.path} has no {weights}_weights.safetensors; the run did not use methods.{weights}, so use --weights raw")
    try:
        averaged_state = load_file(str(averaged))
    except Exception as err:  # safetensors raises its own SafetensorError for a truncated or garbled file
        raise CheckpointError(f"{averaged} cannot be read ({str(err).splitlines()[0][:120]}); it is damaged, so use --weights raw") from None
    try:
        model.load_state_dict(averaged_state)
    except (RuntimeError, OSError) as err:
        raise CheckpointError(f"{averaged} does not fit the checkpoint's model ({str(err).splitlines()[0][:160]}); "
                              "it belongs to another stage of the run") from None
