"""Where ranks meet: this process's place among them (Distributed), process-group setup, and the few
collectives the trainer needs (scalar all-reduce, broadcast, barrier, run-on-rank-0).

A single-process run passes through every function here unchanged.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as torch_dist
from torch import nn

from hasten.errors import ConfigError, HastenError

T = TypeVar("T")


@dataclass
class Distributed:
    """This process's place among the ranks (the defaults describe a plain single-process run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1 and torch_dist.is_available() and torch_dist.is_initialized()


def init_distributed(device: str = "auto") -> Distributed:
    """Join the process group torchrun described in RANK / WORLD_SIZE / LOCAL_RANK (a no-op without it).

    NCCL carries the CUDA collectives and gloo the CPU ones (a CPU-only run uses gloo alone); on
    CUDA the process is pinned to the GPU of its local rank before anything touches the device.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not device.startswith("cpu")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible; lower --nproc-per-node"
            )
        torch.cuda.set_device(local_rank)
    backend = "cuda:nccl,cpu:gloo" if use_cuda else "gloo"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend, rank=rank, world_size=world)
        atexit.register(shutdown)
    return Distributed(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def shutdown() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def is_main() -> bool:
    """True on rank 0 (and in a single-process run): the only rank that writes files and logs."""
    return not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_rank() == 0


def active() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def barrier() -> None:
    if active():
        torch_dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum float scalars over ranks (float64, so counts and loss sums stay exact)."""
    if not active():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (the logged train loss is the global mean, not rank 0's share)."""
    if active():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        tensor /= torch_dist.get_world_size()
    return tensor


def broadcast_object(value: T, src: int = 0) -> T:
    """Rank `src`'s value on every rank (any picklable object)."""
    if not active():
        return value
    box = [value]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(value: T) -> list[T]:
    """Every rank's value (any picklable object), in rank order, on every rank; [value] in a single process."""
    if not active():
        return [value]
    out: list = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, value)
    return out


@torch.no_grad()
def broadcast_tensors_(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite each tensor in place with rank `src`'s values (e.g. freshly initialised weights)."""
    if active():
        for tensor in tensors:
            torch_dist.broadcast(tensor.data, src=src)


def run_on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and share its result; a user error there is raised on every rank.

    Without this, rank 0 failing a check (bad run dir, corrupt checkpoint) would leave the other
    ranks waiting forever at their next collective.
    """
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except HastenError as err:
            error = err
    shared = broadcast_object((result, None if error is None else (type(error), str(error))))
    if error is not None:
        raise error
    if shared[1] is not None:
        cls, message = shared[1]
        raise cls(message)
    return shared[0]


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, skip: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter for a non-final micro-batch (DDP or FSDP2)."""
    if not skip:
        yield
        return
    if hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield
