"""The replaceable training state: model, optimizer, schedule, sampler and progress counters."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn
from torch.optim import Optimizer

from hasten.data.sampler import WindowSampler
from hasten.optim.schedules import LRSchedule


@dataclass
class Progress:
    step: int = 0  # completed optimizer steps
    tokens: int = 0  # training tokens consumed (targets), charged at the length actually trained
    flops: float = 0.0  # model FLOPs (forward + backward) charged at each step's model size and sequence length
    optimizer_flops: float = 0.0  # FLOPs of the optimizer steps (hasten.optim.flops); total compute = flops + this
    train_time: float = 0.0  # seconds spent in training steps (evaluation and saving excluded)
    stage: int = 0  # model stage (incremented each time the model is replaced, e.g. grown)

    def to_dict(self) -> dict:
        return asdict(self)

    def counters(self) -> dict:
        """What every metrics line carries besides its step: the compute and time spent so far."""
        return {
            "tokens": self.tokens,
            "flops": self.flops,
            "optimizer_flops": self.optimizer_flops,
            "train_time": self.train_time,
        }

    def state_dict(self) -> dict:  # torch's Stateful protocol: the checkpointed part `progress`
        return self.to_dict()

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(vars(Progress(**state)))  # in place: the loop holds a reference to this object


@dataclass
class TrainState:
    model: nn.Module  # the raw model (state dicts and the methods read this one)
    optimizer: Optimizer
    schedule: LRSchedule
    sampler: WindowSampler
    progress: Progress
    forward_model: nn.Module | None = None  # what the step calls: compiled and/or DDP-wrapped model

    def __post_init__(self) -> None:
        if self.forward_model is None:
            self.forward_model = self.model
