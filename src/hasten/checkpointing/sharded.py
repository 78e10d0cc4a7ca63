"""Sharded checkpoints: model + optimizer written by every rank with torch.distributed.checkpoint (DCP).

DCP reshards on load, so a sharded checkpoint can be read by any number of ranks, one included.
The ranks' side (who makes the folder, barriers) is hasten.parallel's; this is the file format.

DCP reads its tensors with torch's weights-only unpickler but its `.metadata` with plain pickle, so
read_shards first unpickles the metadata with an allowlist (DCP's metadata dataclasses, torch.Size,
dtypes, paths): a crafted `.metadata` is refused before DCP would run it.
"""

from __future__ import annotations

import importlib
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from hasten.errors import CheckpointError

DCP_DIR = "dcp"  # sub-directory of a sharded checkpoint holding the DCP files
METADATA_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
PLAIN_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP metadata only: its dataclasses and enums, torch.Size, dtypes and paths; any other global is
    refused."""

    def find_class(self, module: str, name: str):
        if module in METADATA_MODULES and isinstance(getattr(importlib.import_module(module), name, None), type):
            return super().find_class(module, name)
        if (module, name) in PLAIN_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def check_metadata(directory: Path) -> None:
    """Refuse a DCP folder whose metadata would run code (or is unreadable) before DCP unpickles it."""
    for file in sorted(f for f in Path(directory).iterdir() if f.name.endswith(".metadata")):
        try:
            with open(file, "rb") as f:
                _MetadataUnpickler(f).load()
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"{file} would run code to load (it names {str(err)[:120]}); hasten loads only DCP's own "
                "metadata, so it was not loaded (it was not written by hasten, or was altered)"
            ) from None
        except Exception as err:
            raise CheckpointError(
                f"{file} cannot be read ({type(err).__name__}); the sharded checkpoint is damaged"
            ) from None


def _local_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=False, cpu_offload=False)


def write_shards(model: nn.Module, optimizer: Optimizer, directory: Path, single_process: bool) -> None:
    """This rank's shards of model + optimizer into `directory` (a collective unless single_process)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=_local_options())
    with warnings.catch_warnings():  # one process: DCP warns that it assumes a single process, which is the intent
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(directory), no_dist=single_process)


def read_shards(model: nn.Module, optimizer: Optimizer, directory: Path, single_process: bool) -> None:
    """Read a DCP checkpoint into model + optimizer, resharding to this run's ranks (one rank included)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    check_metadata(directory)
    model_state, optim_state = get_state_dict(model, optimizer, options=_local_options())
    state: dict[str, Any] = {"model": model_state, "optimizer": optim_state}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(directory), no_dist=single_process)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=_local_options()
    )
