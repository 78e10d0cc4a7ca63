"""The one way hasten computes a loss over fixed windows: the trainer's val loss and `hasten eval`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from hasten.parallel.strategy import ParallelStrategy, SingleProcess


def autocast_for(dtype: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A context factory for `train.dtype`: bf16 autocast, or nothing for float32."""
    if dtype != "bfloat16":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def mean_loss(
    model: nn.Module,
    windows: torch.Tensor,
    micro_rows: int,
    device: torch.device,
    *,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    parallel: ParallelStrategy | None = None,
) -> float:
    """Mean next-token loss over `windows` (rows of seq_len + 1 tokens), in micro-batches of `micro_rows`.

    With several ranks, each takes every world_size-th micro-batch and the sums are all-reduced, so all ranks
    return the same value; every rank must call this. A sharded (FSDP) model's forward is a collective, so a
    rank with no micro-batch left runs a weight-0 one to keep the ranks' all-gathers in step.
    """
    parallel = parallel or SingleProcess(device=device)
    rank, world = parallel.rank, parallel.world_size
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    chunks = windows.split(micro_rows)
    sharded = parallel.shards(model)
    for first in range(0, len(chunks), world):
        index = first + rank
        if index >= len(chunks) and not sharded:
            continue
        rows = chunks[index if index < len(chunks) else 0].to(device)
        with autocast():
            loss = model(rows[:, :-1], rows[:, 1:])
        if index < len(chunks):
            total += loss.detach().double() * len(rows)
            count += len(rows)
    model.train(was_training)
    total = total.item()  # one read per evaluation
    if world > 1:
        total, count = parallel.sum([total, count])
    return total / count
