"""The seam between the trainer and the methods: the Method hooks and the RunContext they are given.

A method (hasten.methods: each folder's spec and its Method, built by the registry) is any object with
a `name` and the hooks below; subclass Method to get no-op defaults. Methods never see the Trainer:
every hook gets the RunContext, a narrow view of the run (config, state, budget, device and ranks, the
event log, evaluate, replace_state, the batch shape). The lifecycle, in order:

    load_state_dict(state)        resume: the method's own state, before anything runs
    on_restore(ctx, "resume")     every state is back (weights, optimizer, counters): re-apply what lives outside
    on_fit_start(ctx)             once per process, before the first step
    per step:  before_step(ctx) -> the step -> after_step(ctx) returns this step's metrics
    per eval:  after_eval(ctx, val_loss) returns extra metrics (it sees the val loss just computed)
    prepare_model(ctx, model)     another model is about to be evaluated as the live one (e.g. averaged weights)
    on_state_replaced(ctx, why)   the model and optimizer were swapped (a new shape, or a rollback across one)
    load_state_dict + on_restore(ctx, "rollback")   the spike guard rolled the run back in process
    on_fit_end(ctx)               after the final evaluation and checkpoint

state_dict() goes into every checkpoint under the method's name (`methods.<name>`; a checkpoint without it
is refused), unless the method keeps no state of the run (checkpointed = False). The trainer calls methods in one fixed
order, their specs' (hasten.methods.registry), whatever the order of a recipe's sections.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from hasten.config import RunConfig
from hasten.data.shaping import BatchShape
from hasten.parallel.strategy import ParallelStrategy
from hasten.trainer.state import TrainState


@dataclass(eq=False)
class RunContext:
    """What a method may see and do. The trainer owns it; `batch_shape` and `stop_requested` are the two
    things a method may set (sequence length warmup shapes the next batch; a stop ends the run after this step)."""

    cfg: RunConfig
    state: TrainState  # model, optimizer, schedule, sampler, progress (replaced as a whole by replace_state)
    parallel: ParallelStrategy  # single process, DDP or FSDP2: wrap, full copies, collectives
    device: torch.device
    run_dir: Path  # for the method's own artifacts (plots, exported weights); rank 0 writes
    train_tokens: np.ndarray  # the train split (a probe draws its own fixed windows from it)
    seq_len: int  # the full training context (evaluation always runs at it)
    micro_rows: int  # sequences per forward on one rank at full length
    # evaluate(model=None): mean val loss at full context (a collective); another model than the live one first gets,
    # from every method's prepare_model, what the method changes in the live model's forward
    evaluate: Callable[..., float]
    replace_state: Callable[[nn.Module, Optimizer, str], None]  # swap in a new model and optimizer (e.g. a new shape)
    log: Callable[..., None]  # log(kind, step, **values): a metrics.jsonl row (rank 0 writes)
    autocast: Callable[[], contextlib.AbstractContextManager]
    batch_shape: BatchShape
    step_metrics: Mapping[str, Any] = field(
        default_factory=dict
    )  # this step's loss, grad_norm, lr, ... (device tensors)
    step_tokens: int = 0  # training tokens of the step just taken (all ranks)
    stop_requested: bool = False

    @property
    def is_main(self) -> bool:
        return self.parallel.is_main

    @property
    def planned_steps(self) -> int:
        return self.cfg.planned_steps()

    @property
    def planned_tokens(self) -> int:
        return self.cfg.planned_tokens()

    def is_log_step(self) -> bool:
        step = self.state.progress.step
        return step % self.cfg.train.log_every == 0 or step == 1

    def is_eval_step(self) -> bool:
        """A scheduled evaluation is due after this step: every train.eval_every steps, or each time the training
        tokens pass a multiple of train.eval_every_tokens when that is set (even cadence in tokens when steps differ
        in length, e.g. under sequence length warmup)."""
        t, p = self.cfg.train, self.state.progress
        if t.eval_every_tokens:
            return p.tokens // t.eval_every_tokens > (p.tokens - self.step_tokens) // t.eval_every_tokens
        return p.step % t.eval_every == 0


class Method:
    """No-op defaults for every hook (see the module docstring for the order they run in)."""

    name: str = "method"
    checkpointed: bool = True  # its state_dict goes into every checkpoint as `methods.<name>`, which must then hold it

    def on_restore(self, ctx: RunContext, reason: str) -> None:
        """Every state was just loaded from a checkpoint (reason: resume or rollback)."""

    def on_fit_start(self, ctx: RunContext) -> None:
        """Before the first step of this process (after a resume, once every state is restored)."""

    def before_step(self, ctx: RunContext) -> None:
        """Before each step; may set ctx.batch_shape (sequence length warmup)."""

    def after_step(self, ctx: RunContext) -> dict[str, Any] | None:
        """After optimizer.step(); progress counters already include this step. Returns metrics for this step's row."""
        return None

    def after_eval(self, ctx: RunContext, val_loss: float) -> dict[str, float] | None:
        """After each evaluation, with its val loss; returns extra metrics for the eval row."""
        return None

    def prepare_model(self, ctx: RunContext, model: nn.Module) -> None:
        """`model` (not the live one: e.g. averaged weights) is about to be evaluated as the live model: give it what
        this method changes in the live model's forward from outside (e.g. hooks it puts on the live model)."""

    def on_state_replaced(self, ctx: RunContext, reason: str) -> None:
        """The model and optimizer were swapped (e.g. for a model of a new shape)."""

    def on_fit_end(self, ctx: RunContext) -> None:
        """After the last step and the final evaluation and checkpoint."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class StopAt(Method):
    """Ends the run after `step` completed steps, with the usual final eval and checkpoint, without
    changing the schedule: `hasten train --stop-at-step N` splits a long run into resumable chunks."""

    name = "stop_at"
    checkpointed = False  # a command line's stop, not the run's state

    def __init__(self, step: int):
        self.step = step

    def after_step(self, ctx: RunContext) -> None:
        if ctx.state.progress.step == self.step:
            ctx.stop_requested = True


class AgreeOnStop(Method):
    """Several ranks: a stop requested on any rank (a signal reaches one process first) stops all after the same
    step."""

    name = "agree_on_stop"
    checkpointed = False

    def __init__(self, requested: Callable[[], bool]):
        self.requested = requested

    def after_step(self, ctx: RunContext) -> None:
        if ctx.parallel.any_rank(self.requested()):
            ctx.stop_requested = True
