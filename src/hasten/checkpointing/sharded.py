"""Sharded checkpoints: model + optimizer written by every rank with torch.distributed.checkpoint (DCP).

DCP reshards on load, so a sharded checkpoint can be read by any number of ranks, one included.
The ranks' side (who makes the folder, barriers) is hasten.parallel's; this is the file format.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim import Optimizer

DCP_DIR = "dcp"  # sub-directory of a sharded checkpoint holding the DCP files


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

    model_state, optim_state = get_state_dict(model, optimizer, options=_local_options())
    state: dict[str, Any] = {"model": model_state, "optimizer": optim_state}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(directory), no_dist=single_process)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=_local_options())
