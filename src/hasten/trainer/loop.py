"""The training loop: reads like nanoGPT's, built from the components in TrainState.

Methods hook in through the Method hooks (hasten.trainer.method) and see the run through a RunContext,
never the Trainer; the state can be swapped mid-run (a new model shape) with `replace_state`, and the per-step
batch shape (sequence length warmup) is pushed into the data stream through `ctx.batch_shape`.

No host sync between sync points: a step leaves its loss, gradient norm and the guard's non-finite
flag on the device (tensors in the step's metrics). The loop waits for the device only at a sync point:
a log step (every `train.log_every` steps and step 1), an evaluation or checkpoint step, and the end.
There it charges the elapsed time to `progress.train_time` (so tokens/s and MFU on a logged row are
the interval's averages), lets the guard decide on the recorded steps (hasten.trainer.guard: it may
uncount skipped steps or roll back) and reads the logged row's values in one transfer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from hasten.config import RunConfig
from hasten.data.sampler import eval_windows
from hasten.data.shaping import BatchShape
from hasten.data.tokens import TokenData
from hasten.faults import fault_point
from hasten.model import flops_per_token
from hasten.optim.flops import optimizer_step_flops
from hasten.parallel.strategy import ParallelStrategy
from hasten.trainer import checkpoints
from hasten.trainer.evaluation import autocast_for, mean_loss
from hasten.trainer.guard import Guard, read_scalars
from hasten.trainer.logger import MetricsLogger, ProgressBar
from hasten.trainer.method import Method, RunContext
from hasten.trainer.state import TrainState

if TYPE_CHECKING:
    from torch.distributed.checkpoint.stateful import Stateful


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        state: TrainState,
        data: TokenData,
        methods: list[Method],
        run_dir: Path,
        parallel: ParallelStrategy,
        *,
        peak_flops: float | None = None,
    ):
        self.cfg, self.state, self.data, self.methods = cfg, state, data, methods
        self.run_dir, self.parallel, self.device = run_dir, parallel, parallel.device
        self.rank, self.world_size, self.is_main = parallel.rank, parallel.world_size, parallel.is_main
        self.peak_flops = peak_flops
        self.seq_len = cfg.seq_len  # full training context; eval always runs at this length
        self.micro_rows = cfg.train.micro_batch_size or cfg.train.batch_size // self.world_size
        self.autocast = autocast_for(cfg.train.dtype, self.device)
        self.val_rows = eval_windows(data.val, self.seq_len, cfg.train.eval_sequences)
        self.logger = MetricsLogger(run_dir, enabled=self.is_main, tensorboard=cfg.train.tensorboard)
        self.guard = Guard(cfg.train.guard)  # non-finite skip and spike rollback (hasten.trainer.guard)
        # what a checkpoint holds of the trainer itself, by name (torch's Stateful protocol); the methods' states
        # and the RNG join it in hasten.trainer.checkpoints.parts
        self.stateful: dict[str, Stateful] = {}
        for name, part in (
            ("model", checkpoints.LiveModel(self)),
            ("optimizer", checkpoints.LiveOptimizer(self)),
            ("schedule", state.schedule),
            ("sampler", state.sampler),
            ("progress", state.progress),
            ("guard", self.guard),
        ):
            self.register_state(name, part)
        self.ctx = RunContext(
            cfg=cfg,
            state=state,
            parallel=parallel,
            device=self.device,
            run_dir=run_dir,
            train_tokens=data.train,
            seq_len=self.seq_len,
            micro_rows=self.micro_rows,
            evaluate=self.evaluate,
            replace_state=self.replace_state,
            log=self.logger.log,
            autocast=self.autocast,
            batch_shape=BatchShape(cfg.train.batch_size, self.seq_len, "truncate"),
        )
        self.step_metrics: dict = {}  # the last step's loss, grad_norm, lr, ... and what the methods returned for it
        self.eval_metrics: dict[str, float] = {}  # the last evaluation's
        self._clock = time.perf_counter()  # start of the current timing interval (ends at the next sync point)
        self._interval = [0, 0.0]  # tokens and FLOPs attempted in the current interval
        self._rates: dict[str, float | None] = {"tok_per_s": None, "mfu": None}  # of the last interval
        self._optimizer_flops: tuple[int, float] | None = None  # (id of the optimizer, FLOPs of its step on all ranks)

    def register_state(self, name: str, part: Stateful) -> None:
        """Keep `part`'s state_dict in every checkpoint under `name`; a checkpoint without it is refused on restore."""
        if name in self.stateful:
            raise ValueError(f"a part named {name!r} is registered already")
        self.stateful[name] = part

    @property
    def stop_requested(self) -> bool:
        return self.ctx.stop_requested

    @stop_requested.setter
    def stop_requested(self, value: bool) -> None:
        self.ctx.stop_requested = value

    # ------------------------------------------------------------------ pieces

    def done(self) -> bool:
        t, p = self.cfg.train, self.state.progress
        return (
            self.stop_requested
            or (t.max_steps is not None and p.step >= t.max_steps)
            or (t.max_tokens is not None and p.tokens >= t.max_tokens)
        )

    def replace_state(self, model: nn.Module, optimizer, reason: str) -> None:
        """Swap in a new model and optimizer (e.g. of a new shape); methods are told so they can follow."""
        self.state.model = model
        self.state.forward_model = self.parallel.wrap(model)
        self.state.optimizer = self.parallel.adopt(model, optimizer)  # FSDP2 replaced the parameters with shards
        self.state.progress.stage += 1
        self.logger.log(
            "event", self.state.progress.step, event="state_replaced", reason=reason, tokens=self.state.progress.tokens
        )
        for method in self.methods:
            method.on_state_replaced(self.ctx, reason)

    def optimizer_flops(self) -> float:
        """FLOPs of one optimizer step summed over the ranks (a replicated optimizer runs on every rank; a sharded one
        on its shard, and DTensor sizes are global). Cached per optimizer object, so a replaced one (a new model shape)
        is counted anew."""
        optimizer = self.state.optimizer
        if self._optimizer_flops is None or self._optimizer_flops[0] != id(optimizer):
            flops = optimizer_step_flops(optimizer) or 0.0
            sharded = any(type(q).__name__ == "DTensor" for q in self.state.model.parameters())
            self._optimizer_flops = (id(optimizer), flops * (1 if sharded else self.world_size))
        return self._optimizer_flops[1]

    def evaluate(self, model: nn.Module | None = None) -> float:
        """Mean val loss over the fixed full-context windows (a collective: every rank calls it). Another model than the
        live one is first given what the methods change in the live model's forward (Method.prepare_model)."""
        if model is None or model is self.state.model:
            model = self.state.model
        else:
            for method in self.methods:
                method.prepare_model(self.ctx, model)
        return mean_loss(
            model, self.val_rows, self.micro_rows, self.device, autocast=self.autocast, parallel=self.parallel
        )

    def next_batch(self) -> torch.Tensor:
        return self.state.sampler.next_batch(self.ctx.batch_shape, rank=self.rank, world_size=self.world_size)

    def train_step(self, rows: torch.Tensor) -> dict:
        """One optimizer step over a (possibly shortened) batch, in micro-batches of equal token count.

        Reads nothing back from the device: loss and grad_norm are returned as device tensors, and the
        guard's non-finite flag (`nonfinite`) decides on the device whether the update is applied.
        """
        st, p = self.state, self.state.progress
        lr = self.guard.scale_lr(st.optimizer, st.schedule.apply(st.optimizer, p.step, p.tokens))
        seq_len = rows.shape[1] - 1
        micro = max(1, self.micro_rows * self.seq_len // seq_len)
        n_targets = rows.shape[0] * seq_len
        loss_sum = torch.zeros((), device=self.device)
        chunks = rows.split(micro)
        for i, chunk in enumerate(chunks):
            chunk = chunk.to(self.device, non_blocking=True)
            with self.parallel.no_sync(
                st.forward_model, skip=i < len(chunks) - 1
            ):  # reduce grads on the last micro-batch only
                with self.autocast():
                    loss = st.forward_model(chunk[:, :-1], chunk[:, 1:])
                weight = chunk.shape[0] * seq_len / n_targets
                (loss * weight).backward()
            loss_sum += loss.detach() * weight
        params = [q for q in st.model.parameters() if q.grad is not None]
        clip = self.cfg.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor; the norm is over all shards
            grad_norm = grad_norm.full_tensor()
        self.parallel.mean_(loss_sum)  # the global batch's loss, so every rank computes the same non-finite flag
        fault_point("step", p.step + 1)  # test hook (hasten.faults): a crash mid-step; a no-op in normal use
        nonfinite = self.guard.nonfinite(loss_sum, grad_norm)
        self.guard.apply_update(
            st.optimizer, nonfinite
        )  # a non-finite step leaves weights and optimizer state as they were
        st.optimizer.zero_grad(set_to_none=True)
        return {
            "loss": loss_sum,
            "grad_norm": grad_norm.detach(),
            "lr": lr,
            "seq_len": seq_len,
            "rows": rows.shape[0],
            "nonfinite": nonfinite,
        }

    def save(self) -> Path | None:
        """A checkpoint of the whole state (every rank calls it; rank 0 writes)."""
        return checkpoints.save(self)

    # ------------------------------------------------------------------ the loop

    def _eval_and_log(self) -> dict[str, float]:
        p = self.state.progress
        metrics = {"val_loss": self.evaluate()}
        for method in self.methods:
            metrics.update(method.after_eval(self.ctx, metrics["val_loss"]) or {})
        self.logger.log("eval", p.step, **p.counters(), **metrics)
        self.eval_metrics = metrics
        return metrics

    def _after_step(self, out: dict) -> None:
        """The methods' after_step hooks, in order; each sees the step's metrics so far and adds its own."""
        self.step_metrics = dict(out)
        self.ctx.step_metrics = self.step_metrics
        for method in self.methods:
            self.step_metrics.update(method.after_step(self.ctx) or {})

    def _sync_due(self) -> bool:
        t, step = self.cfg.train, self.state.progress.step
        return (
            self.ctx.is_log_step()
            or self.ctx.is_eval_step()
            or bool(t.checkpoint_every and step % t.checkpoint_every == 0)
            or self.done()
        )

    def _sync(self) -> bool:
        """The loop's only wait for the device between steps: time the interval, let the guard decide on
        the recorded steps. True if the guard rolled the state back."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the interval's queued work belongs to its time
        now = time.perf_counter()
        elapsed, (tokens, flops) = now - self._clock, self._interval
        self.state.progress.train_time += elapsed
        self._rates = {
            "tok_per_s": tokens / elapsed if elapsed > 0 else 0.0,
            "mfu": flops / elapsed / (self.peak_flops * self.world_size) if self.peak_flops and elapsed > 0 else None,
        }
        self._restart_clock()
        return self.guard.resolve(self)

    def _restart_clock(self) -> None:
        """Start a new timing interval (after a sync point, and after evaluation or saving, which are not training
        time)."""
        self._clock = time.perf_counter()
        self._interval = [0, 0.0]

    def _log_train_row(self) -> dict:
        """Write the train row of this log step (device values read in one transfer); returns it."""
        p = self.state.progress
        metrics = {
            k: v for k, v in {**self.eval_metrics, **self.step_metrics}.items() if k not in ("val_loss", "nonfinite")
        }
        # every param group's LR, one per block type (groups of one block share it; blockwise LR differs per block)
        metrics.update({f"lr/{g['block']}": g["lr"] for g in self.state.optimizer.param_groups if "block" in g})
        metrics = dict(zip(metrics, read_scalars(list(metrics.values()))))
        self.logger.log("train", p.step, **p.counters(), **self._rates, **metrics)
        return metrics

    def fit(self) -> dict[str, float]:
        t, p = self.cfg.train, self.state.progress
        for method in self.methods:
            method.on_fit_start(self.ctx)
        bar = ProgressBar(self.cfg.planned_steps(), p.step, enabled=t.progress_bar and self.is_main)
        shown = p.step  # the bar's position
        if p.step == 0:
            self._eval_and_log()
        self._restart_clock()
        try:
            while not self.done():
                for method in self.methods:
                    method.before_step(self.ctx)
                out = self.train_step(self.next_batch())
                tokens = out["rows"] * out["seq_len"] * self.world_size
                step_flops = flops_per_token(self.state.model.config, out["seq_len"]) * tokens
                p.flops += step_flops  # charged even if the guard discards the step (the compute was spent)
                p.optimizer_flops += self.optimizer_flops()
                self._interval[0] += tokens
                self._interval[1] += step_flops
                p.step += 1  # provisional until the guard has read this step's non-finite flag (next sync point)
                p.tokens += tokens
                self.ctx.step_tokens = tokens
                self._after_step(out)
                self.guard.record(p.step, tokens, self.step_metrics)
                bar.update(1)
                shown += 1
                if not self._sync_due():
                    continue
                due_step, eval_due = p.step, self.ctx.is_eval_step()
                rolled_back = self._sync()
                bar.update(p.step - shown)  # back by the steps the guard uncounted (or to the rollback's step)
                shown = p.step
                if (
                    rolled_back or p.step != due_step
                ):  # rolled back, or skipped steps uncounted: not a due step any more
                    bar.update(0, **self.guard.postfix())
                    if rolled_back:
                        self._restart_clock()  # reloading the checkpoint is not training time
                    continue
                if self.ctx.is_log_step():
                    row = self._log_train_row()
                    bar.update(
                        0,
                        loss=_fmt(row.get("loss")),
                        val=_fmt(self.eval_metrics.get("val_loss")),
                        tok_s=f"{self._rates['tok_per_s']:,.0f}",
                        mfu=f"{self._rates['mfu']:.1%}" if self._rates["mfu"] is not None else None,
                        L=out["seq_len"],
                        **self.guard.postfix(),
                    )
                if eval_due and not self.done():
                    self._eval_and_log()
                    self._restart_clock()
                if t.checkpoint_every and p.step % t.checkpoint_every == 0 and not self.done():
                    self.save()
                    self._restart_clock()
            final = self._eval_and_log()
            self.save()
            for method in self.methods:
                method.on_fit_end(self.ctx)
        finally:
            bar.close()
            self.logger.close()
        return final


def _fmt(value) -> str | None:
    return None if value is None else f"{value:.3f}"
