"""How a run uses its ranks, as one object: a single process, DDP or FSDP2 (`train.parallelism` under torchrun).

The trainer and the methods ask the strategy instead of testing what the model is:

    wrap(model)                 the module the step calls (compiled; DDP-wrapped; FSDP2 shards in place)
    adopt(model, optimizer)     an optimizer built on full parameters re-pointed at the shards that replaced them
    model_state / optimizer_state / load_model_state / load_optimizer_state   consolidated (single-process format)
                                state for checkpoints
    plain_model(model)          a plain model with the full weights (the model itself unless sharded)
    training_copy / reshard     a new model shape mid-run: a full copy to change, then sharded again
    save_shards / load_shards   DCP shards (train.checkpoint_format=sharded)
    any_rank(flag), sum, mean_, broadcast, barrier   the collectives
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.optim import Optimizer

from hasten.checkpointing.sharded import read_shards, write_shards
from hasten.parallel import state as full
from hasten.parallel.ranks import (
    Distributed,
    active,
    all_reduce_mean_,
    all_reduce_sum,
    barrier,
    broadcast_object,
    broadcast_tensors_,
    is_main,
    no_grad_sync,
)

BuildOptimizer = Callable[[nn.Module], Optimizer]


class ParallelStrategy:
    """How a run uses its ranks: the interface every strategy has. Its own behaviour is one process's (the model is
    what it is, states are plain state dicts, collectives reduce over the ranks there are), which the strategies below
    change where they differ."""

    name = "base"
    shards_in_place = False

    def __init__(
        self,
        dist: Distributed | None = None,
        device: torch.device | None = None,
        *,
        compile: bool = False,
        dynamic_shapes: bool = False,
    ):
        self.dist = dist or Distributed()
        self.device = device or torch.device("cpu")
        self.compile = compile
        self.dynamic_shapes = (
            dynamic_shapes  # a method varies the sequence length (one dynamic graph, not a recompile per length)
        )

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    # ------------------------------------------------------------------ the model

    def shards(self, model: nn.Module) -> bool:
        """Whether `model` holds only this rank's shards (its forward is then a collective)."""
        return False

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.compile:
            return model
        return torch.compile(model, dynamic=True if self.dynamic_shapes else None)

    def adopt(self, model: nn.Module, optimizer: Optimizer) -> Optimizer:
        return optimizer

    def plain_model(self, model: nn.Module, into: nn.Module | None = None) -> nn.Module:
        """A plain model holding the full weights: `model` itself here (`into`, a previous copy, is for FSDP)."""
        return model

    def no_sync(self, forward_model: nn.Module, skip: bool):
        """Skip the gradient reduction of a non-final micro-batch."""
        return no_grad_sync(forward_model, skip)

    # ------------------------------------------------------------------ state

    def model_state(self, model: nn.Module) -> dict:
        return model.state_dict()

    def optimizer_state(self, model: nn.Module, optimizer: Optimizer) -> dict:
        return optimizer.state_dict()

    def load_model_state(self, model: nn.Module, model_state: dict) -> None:
        model.load_state_dict(model_state)

    def load_optimizer_state(self, model: nn.Module, optimizer: Optimizer, optimizer_state: dict) -> None:
        optimizer.load_state_dict(optimizer_state)

    def training_copy(self, model: nn.Module, optimizer: Optimizer, build_optimizer: BuildOptimizer, with_state: bool):
        """(model, optimizer) as one process holds them, to change the model's shape; the live pair here."""
        return model, optimizer

    def reshard(self, model: nn.Module, optimizer: Optimizer, build_optimizer: BuildOptimizer, fresh: bool):
        """A (model, optimizer) of a new shape laid out for training; unchanged here."""
        return model, optimizer

    def save_shards(self, model: nn.Module, optimizer: Optimizer, directory: Path) -> None:
        """Every rank writes its own shards of model + optimizer into `directory` (DCP format); a collective."""
        import shutil

        if is_main():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
        barrier()
        write_shards(model, optimizer, directory, single_process=not active())
        barrier()

    def load_shards(self, model: nn.Module, optimizer: Optimizer, directory: Path) -> None:
        read_shards(model, optimizer, directory, single_process=not active())

    # ------------------------------------------------------------------ collectives

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if `flag` is set on any (a CPU all-reduce: through gloo, never waits for the GPU)."""
        return all_reduce_sum([1.0 if flag else 0.0], torch.device("cpu"))[0] > 0

    def sum(self, values: list[float]) -> list[float]:
        return all_reduce_sum(values, self.device)

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_mean_(tensor)

    def broadcast(self, value):
        return broadcast_object(value)

    def barrier(self) -> None:
        barrier()


class SingleProcess(ParallelStrategy):
    """One process: the model is what it is, states are plain state dicts, collectives are the identity."""

    name = "single"


class DataParallel(ParallelStrategy):
    """DDP: every rank holds the whole model; the step calls a DistributedDataParallel wrapper around it."""

    name = "ddp"

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(super().wrap(model), device_ids=device_ids)


class FullyShardedParallel(ParallelStrategy):
    """FSDP2: `fully_shard` splits every parameter (and so the optimizer state) by rows across the ranks.

    wrap() shards the model in place, each Block as its own unit and then the root (embeddings, final norm,
    head), so the optimizer must be built, or re-pointed with adopt(), after it.
    """

    name = "fsdp"
    shards_in_place = True  # wrap() shards the model itself: build its optimizer after

    def shards(self, model: nn.Module) -> bool:
        return full.is_fsdp(model)

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import fully_shard

        if not full.is_fsdp(model):
            for block in getattr(model, "blocks", []):
                fully_shard(block)
            fully_shard(model)
        return super().wrap(model)

    def adopt(self, model: nn.Module, optimizer: Optimizer) -> Optimizer:
        return full.rebind_optimizer(model, optimizer)

    def plain_model(self, model: nn.Module, into: nn.Module | None = None) -> nn.Module:
        """The gathered weights in a plain CPU model, the same on every rank (a collective); `into` is refilled."""
        return full.unsharded_copy(model, "cpu", into=into)

    def model_state(self, model: nn.Module) -> dict:
        return full.full_model_state(model)

    def optimizer_state(self, model: nn.Module, optimizer: Optimizer) -> dict:
        return full.full_optimizer_state(model, optimizer)

    def load_model_state(self, model: nn.Module, model_state: dict) -> None:
        full.load_full_model_state(model, model_state)

    def load_optimizer_state(self, model: nn.Module, optimizer: Optimizer, optimizer_state: dict) -> None:
        if not full.is_fsdp(model):
            optimizer.load_state_dict(optimizer_state)
            return
        full.load_full_optimizer_state(model, optimizer, optimizer_state)

    def training_copy(self, model: nn.Module, optimizer: Optimizer, build_optimizer: BuildOptimizer, with_state: bool):
        """The full model on CPU and a plain optimizer over it (holding the full state if `with_state`), on every rank.

        A collective (all ranks change the shape on the same step). The copy is what a single process would hold, so
        the operator that changes the model and the moment mapping run unchanged on it.
        """
        full_state = full.full_optimizer_state_by_name(optimizer) if with_state else {}
        copy = full.unsharded_copy(model, "cpu")
        plain = build_optimizer(copy)
        for group in plain.param_groups:
            for name, param in zip(group["param_names"], group["params"]):
                if name in full_state:
                    plain.state[param] = full_state[name]
        return copy, plain

    def reshard(self, model: nn.Module, optimizer: Optimizer, build_optimizer: BuildOptimizer, fresh: bool):
        """Shard a model of a new shape, build its optimizer on the shards and load the mapped state into it.

        The mapped state goes through DCP's set_optimizer_state_dict (the resume path); parameters with no
        mapped state (new tensors) are left without state so the optimizer initialises them lazily, as it
        does in one process. Fresh tensors (random / zero operators) come from rank 0, so every rank shards
        the same new weights whatever its RNG state.
        """
        if fresh:
            broadcast_tensors_(list(model.parameters()))
        mapped_state = optimizer.state_dict()
        self.wrap(model)  # fully_shard in place (the trainer's own wrap then leaves the shards alone)
        sharded = build_optimizer(model)
        if mapped_state["state"]:
            full.load_full_optimizer_state(model, sharded, mapped_state, mapped=True)
            with_state = set(mapped_state["state"])
            flat = [p for group in sharded.param_groups for p in group["params"]]
            for i, param in enumerate(flat):  # DCP initialised every state with a zero-lr step: drop the unmapped ones
                if i not in with_state:
                    sharded.state.pop(param, None)
        return model, sharded


def make_strategy(
    dist: Distributed,
    device: torch.device,
    parallelism: str = "ddp",
    *,
    compile: bool = False,
    dynamic_shapes: bool = False,
) -> ParallelStrategy:
    """The strategy for this process: single unless launched on several ranks, then DDP or FSDP2 by `parallelism`."""
    if dist.world_size <= 1:
        cls = SingleProcess
    else:
        cls = FullyShardedParallel if parallelism == "fsdp" else DataParallel
    return cls(dist, device, compile=compile, dynamic_shapes=dynamic_shapes)
