"""The training loop: reads like nanoGPT's, built from the components in TrainState.

Methods hook in through Callbacks (hasten.trainer.callbacks); the state can be swapped mid-run
(growth) with `replace_state`, and the per-step batch shape (sequence length warmup) is pushed into
the data stream through `batch_shape`.

No host sync between sync points: a step leaves its loss, gradient norm and the guard's non-finite
flag on the device (in `last_metrics` as tensors). The loop waits for the device only at a sync point:
a log step (every `train.log_every` steps and step 1), an evaluation or checkpoint step, and the end.
There it charges the elapsed time to `progress.train_time` (so tokens/s and MFU on a logged row are
the interval's averages), lets the guard decide on the recorded steps (hasten.trainer.guard: it may
uncount skipped steps or roll back) and reads the logged row's values in one transfer.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from hasten.checkpoint import save_checkpoint
from hasten.config import RunConfig
from hasten.data.sampler import eval_windows
from hasten.data.shaping import BatchShape
from hasten.data.tokens import TokenData
from hasten.distributed import (
    DCP_DIR,
    all_reduce_mean_,
    all_reduce_sum,
    barrier,
    full_model_state,
    full_optimizer_state,
    is_fsdp,
    no_grad_sync,
    rebind_optimizer,
    save_sharded,
)
from hasten.errors import CheckpointError
from hasten.faults import fault_point
from hasten.model import flops_per_token
from hasten.trainer.callbacks import Callback
from hasten.trainer.guard import Guard, read_scalars
from hasten.trainer.logger import MetricsLogger, ProgressBar
from hasten.trainer.state import TrainState


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        state: TrainState,
        data: TokenData,
        callbacks: list[Callback],
        run_dir: Path,
        device: torch.device,
        *,
        rank: int = 0,
        world_size: int = 1,
        peak_flops: float | None = None,
        wrap_model=None,
    ):
        self.cfg, self.state, self.data, self.callbacks = cfg, state, data, callbacks
        self.run_dir, self.device = run_dir, device
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.peak_flops = peak_flops
        self.wrap_model = wrap_model or (lambda model: model)
        self.seq_len = cfg.seq_len  # full training context; eval always runs at this length
        self.batch_shape = BatchShape(cfg.train.batch_size, self.seq_len, "truncate")
        self.micro_rows = cfg.train.micro_batch_size or cfg.train.batch_size // world_size
        self.autocast_dtype = torch.bfloat16 if cfg.train.dtype == "bfloat16" else None
        self.val_rows = eval_windows(data.val, self.seq_len, cfg.train.eval_sequences)
        self.logger = MetricsLogger(run_dir, enabled=self.is_main, tensorboard=cfg.train.tensorboard)
        self.last_metrics: dict[str, float] = {}
        self.stop_requested = False
        self.guard = Guard(cfg.train.guard)  # non-finite skip and spike rollback (hasten.trainer.guard)
        self.nonfinite: torch.Tensor | None = None  # the last step's device flag (the guard skipped its update)
        self._clock = time.perf_counter()  # start of the current timing interval (ends at the next sync point)
        self._interval = [0, 0.0]  # tokens and FLOPs attempted in the current interval
        self._rates: dict[str, float | None] = {"tok_per_s": None, "mfu": None}  # of the last interval

    # ------------------------------------------------------------------ pieces

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @staticmethod
    def planned_steps(cfg: RunConfig) -> int:
        """Planned optimizer steps at full length (the schedule's length when decay is step-based)."""
        t = cfg.train
        tokens_per_step = t.batch_size * cfg.seq_len
        candidates = [t.max_steps] if t.max_steps else []
        if t.max_tokens:
            candidates.append(math.ceil(t.max_tokens / tokens_per_step))
        return min(candidates)

    def is_log_step(self) -> bool:
        step = self.state.progress.step
        return step % self.cfg.train.log_every == 0 or step == 1

    def done(self) -> bool:
        t, p = self.cfg.train, self.state.progress
        return self.stop_requested or (t.max_steps is not None and p.step >= t.max_steps) or (t.max_tokens is not None and p.tokens >= t.max_tokens)

    def replace_state(self, model: nn.Module, optimizer, reason: str) -> None:
        """Swap in a new model and optimizer (growth); callbacks are told so they can follow."""
        self.state.model = model
        self.state.optimizer = optimizer
        self.state.forward_model = self.wrap_model(model)
        self.state.optimizer = rebind_optimizer(model, optimizer)  # FSDP2 replaced the parameters with shards
        self.state.progress.stage += 1
        self.logger.log("event", self.state.progress.step, event="state_replaced", reason=reason, tokens=self.state.progress.tokens)
        for cb in self.callbacks:
            cb.on_state_replaced(self, reason)

    @torch.no_grad()
    def evaluate(self, model: nn.Module | None = None) -> float:
        """Mean val loss over the fixed full-context windows.

        With several ranks, each takes every world_size-th micro-batch and the sums are all-reduced,
        so all ranks return the same value; every rank must call this. Under FSDP a rank with no
        micro-batch left runs a weight-0 one so the ranks' all-gathers stay in step.
        """
        model = model if model is not None else self.state.model
        was_training = model.training
        model.eval()
        total, count = torch.zeros((), dtype=torch.float64, device=self.device), 0
        chunks = self.val_rows.split(self.micro_rows)
        sharded = is_fsdp(model)
        for first in range(0, len(chunks), self.world_size):
            index = first + self.rank
            if index >= len(chunks) and not sharded:
                continue
            rows = chunks[index if index < len(chunks) else 0].to(self.device)
            with self.autocast():
                loss = model(rows[:, :-1], rows[:, 1:])
            if index < len(chunks):
                total += loss.detach().double() * len(rows)
                count += len(rows)
        model.train(was_training)
        total = total.item()  # one read per evaluation
        if self.world_size > 1:
            total, count = all_reduce_sum([total, count], self.device)
        return total / count

    def next_batch(self) -> torch.Tensor:
        shape = self.batch_shape
        return self.state.sampler.next_batch(shape, rank=self.rank, world_size=self.world_size)

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
            with no_grad_sync(st.forward_model, skip=i < len(chunks) - 1):  # DDP/FSDP: reduce grads on the last micro-batch only
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
        all_reduce_mean_(loss_sum)  # the global batch's loss, so every rank computes the same non-finite flag
        fault_point("step", p.step + 1)  # test hook (hasten.faults): a crash mid-step; a no-op in normal use
        nonfinite = self.guard.nonfinite(loss_sum, grad_norm)
        self.guard.apply_update(st.optimizer, nonfinite)  # a non-finite step leaves weights and optimizer state as they were
        st.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_sum, "grad_norm": grad_norm.detach(), "lr": lr, "seq_len": seq_len, "rows": rows.shape[0],
                "nonfinite": nonfinite}

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self, weights: bool = True) -> dict:
        """Everything a resume needs, in single-process form; a collective under FSDP (all ranks call it).

        weights=False leaves model and optimizer out (a sharded checkpoint writes them with DCP).
        """
        from hasten.trainer.setup import rng_state

        st = self.state
        return {
            "format": "hasten-train-state",
            "config": self.cfg.to_dict(),
            "model_config": st.model.config.to_dict(),
            **({"model": full_model_state(st.model), "optimizer": full_optimizer_state(st.model, st.optimizer)} if weights else {}),
            "schedule": st.schedule.state_dict(),
            "sampler": st.sampler.state_dict(),
            "progress": st.progress.to_dict(),
            "rng": rng_state(),
            "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks},
            "guard": self.guard.state_dict(),
        }

    def save(self) -> Path | None:
        """Checkpoint on every rank's call (the state gather is collective); only rank 0 writes."""
        step = self.state.progress.step
        directory = self.run_dir / "checkpoints"
        sharded = self.cfg.train.checkpoint_format == "sharded"
        extra: dict = {}
        if sharded:  # each rank writes its shards to a hidden dir; rank 0 moves them into the atomic checkpoint
            shard_dir = directory / f".dcp-{step:08d}"
            save_sharded(self.state.model, self.state.optimizer, shard_dir)
            extra = {f"{DCP_DIR}/{f.name}": f for f in sorted(shard_dir.iterdir())} if self.is_main else {}
        state = self.checkpoint_state(weights=not sharded)
        if sharded:
            state["sharded"] = DCP_DIR
        path = None
        if self.is_main:
            try:
                path = save_checkpoint(directory, step, state, keep=self.cfg.train.keep_checkpoints, extra_files=extra)
            except OSError as err:
                raise CheckpointError(f"saving checkpoint at step {step} failed ({err.strerror or err}); the previous checkpoint is intact") from None
            finally:
                if sharded:
                    shutil.rmtree(shard_dir, ignore_errors=True)
            self.logger.log("event", step, event="checkpoint", path=str(path))
        barrier()  # no rank runs ahead (or exits) before the checkpoint is in place
        return path

    # ------------------------------------------------------------------ the loop

    def _eval_and_log(self) -> dict[str, float]:
        p = self.state.progress
        metrics = {"val_loss": self.evaluate()}
        for cb in self.callbacks:
            metrics.update(cb.on_eval(self, self.evaluate))
        self.logger.log("eval", p.step, tokens=p.tokens, flops=p.flops, train_time=p.train_time, **metrics)
        self.last_metrics.update(metrics)
        return metrics

    def _sync_due(self) -> bool:
        t, step = self.cfg.train, self.state.progress.step
        return (self.is_log_step() or step % t.eval_every == 0 or bool(t.checkpoint_every and step % t.checkpoint_every == 0)
                or self.done())

    def _sync(self) -> bool:
        """The loop's only wait for the device between steps: time the interval, let the guard decide on
        the recorded steps. True if the guard rolled the state back."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the interval's queued work belongs to its time
        now = time.perf_counter()
        elapsed, (tokens, flops) = now - self._clock, self._interval
        self.state.progress.train_time += elapsed
        self._rates = {"tok_per_s": tokens / elapsed if elapsed > 0 else 0.0,
                       "mfu": flops / elapsed / (self.peak_flops * self.world_size) if self.peak_flops and elapsed > 0 else None}
        self._restart_clock()
        return self.guard.resolve(self)

    def _restart_clock(self) -> None:
        """Start a new timing interval (after a sync point, and after evaluation or saving, which are not training time)."""
        self._clock = time.perf_counter()
        self._interval = [0, 0.0]

    def _log_train_row(self) -> dict:
        """Write the train row of this log step (device values read in one transfer); returns it."""
        p = self.state.progress
        metrics = {k: v for k, v in self.last_metrics.items() if k != "val_loss"}
        # every param group's LR, one per block type (groups of one block share it; blockwise LR differs per block)
        metrics.update({f"lr/{g['block']}": g["lr"] for g in self.state.optimizer.param_groups if "block" in g})
        metrics = dict(zip(metrics, read_scalars(list(metrics.values()))))
        self.last_metrics.update({k: v for k, v in metrics.items() if k in self.last_metrics})
        self.logger.log("train", p.step, tokens=p.tokens, flops=p.flops, train_time=p.train_time, **self._rates, **metrics)
        return metrics

    def fit(self) -> dict[str, float]:
        t = self.cfg.train
        for cb in self.callbacks:
            cb.on_fit_start(self)
        bar = ProgressBar(self.planned_steps(self.cfg), self.state.progress.step, enabled=t.progress_bar and self.is_main)
        p = self.state.progress
        shown = p.step  # the bar's position
        if p.step == 0:
            self._eval_and_log()
        self._restart_clock()
        try:
            while not self.done():
                for cb in self.callbacks:
                    cb.before_step(self)
                rows = self.next_batch()
                out = self.train_step(rows)
                tokens = out["rows"] * out["seq_len"] * self.world_size
                step_flops = flops_per_token(self.state.model.config, out["seq_len"]) * tokens
                p.flops += step_flops  # charged even if the guard discards the step (the compute was spent)
                self._interval[0] += tokens
                self._interval[1] += step_flops
                p.step += 1  # provisional until the guard has read this step's non-finite flag (next sync point)
                p.tokens += tokens
                self.nonfinite = out.pop("nonfinite")
                self.last_metrics.update(out)
                for cb in self.callbacks:
                    cb.after_step(self)
                self.guard.record(self, tokens, self.nonfinite)
                bar.update(1)
                shown += 1
                if not self._sync_due():
                    continue
                due_step = p.step
                rolled_back = self._sync()
                bar.update(p.step - shown)  # back by the steps the guard uncounted (or to the rollback's step)
                shown = p.step
                if rolled_back or p.step != due_step:  # rolled back, or skipped steps uncounted: not a due step any more
                    bar.update(0, **self.guard.postfix())
                    if rolled_back:
                        self._restart_clock()  # reloading the checkpoint is not training time
                    continue
                if self.is_log_step():
                    row = self._log_train_row()
                    bar.update(0, loss=_fmt(row.get("loss")), val=_fmt(self.last_metrics.get("val_loss")),
                               tok_s=f"{self._rates['tok_per_s']:,.0f}", mfu=f"{self._rates['mfu']:.1%}" if self._rates["mfu"] is not None else None,
                               L=out["seq_len"], **self.guard.postfix())
                if p.step % t.eval_every == 0 and not self.done():
                    self._eval_and_log()
                    self._restart_clock()
                if t.checkpoint_every and p.step % t.checkpoint_every == 0 and not self.done():
                    self.save()
                    self._restart_clock()
            final = self._eval_and_log()
            self.save()
            for cb in self.callbacks:
                cb.on_fit_end(self)
        finally:
            bar.close()
            self.logger.close()
        return final


def _fmt(value) -> str | None:
    return None if value is None else f"{value:.3f}"
