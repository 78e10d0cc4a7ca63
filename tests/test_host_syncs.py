"""The step loop issues no host sync between sync points (log, eval and checkpoint steps, the end).

On a GPU every read of a device value on the host (`.item()`, `float(t)`, `if t:`, `.tolist()`,
`.cpu()`, `torch.cuda.synchronize()`) stalls the device. Here, on CPU, we count those calls during a
tiny run with every method on, attributed to the step they happen in, and require none on the steps
that are not sync points. Reads are caught where torch turns a tensor into a host number
(`aten::_local_scalar_dense`, which item/float/bool/int and torch's C++ Scalar conversions all go
through, seen by a TorchDispatchMode) and at the Python methods that copy whole tensors to the host.
Plain host-side copies of weights (LAWA's CPU snapshots) are indistinguishable from no-ops on a CPU-only
machine, so the LAWA interval is a multiple of log_every in this run.
"""

from __future__ import annotations

import collections
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hasten.recipes import build_trainer, load_config
from hasten.trainer.method import Method

LOG_EVERY, STEPS = 4, 16
METHODS = [
    "optim.name=adam_mini",
    "optim.blockwise=true",
    "methods.seqlen_warmup.min_len=16",
    "methods.seqlen_warmup.total_steps=10",
    "methods.growth.stages=[{dim: depth, op: stack, factor: 2, at_steps: 8, moments: reset, schedule: restart}]",
    "train.guard.spike_ratio=3",  # the spike check too (the non-finite skip is on by default)
]
AVERAGING = {  # one weight averager per run: LAWA, and its EMA and SWA baselines (both update on every step here)
    "lawa": ["methods.lawa.k=2", "methods.lawa.interval=4"],
    "ema": ["methods.ema.decay=0.9"],
    "swa": ["methods.swa.start_step=2"],
}


class StepLabel(Method):
    """Labels everything that follows with the step being attempted (first in the callback list)."""

    name = "step_label"

    def __init__(self):
        self.step = 0

    def before_step(self, ctx) -> None:
        self.step = ctx.state.progress.step + 1


class HostReads(TorchDispatchMode):
    """Counts host reads of tensor values, per step label; `where` keeps a short stack of each."""

    def __init__(self, label: StepLabel):
        super().__init__()
        self.label = label
        self.counts: collections.Counter = collections.Counter()
        self.where: dict[int, list[str]] = collections.defaultdict(list)

    def hit(self, what: str) -> None:
        self.counts[self.label.step] += 1
        frames = [f for f in traceback.extract_stack()[:-2] if "/hasten/" in f.filename or "/torch/" in f.filename][-3:]
        self.where[self.label.step].append(f"{what} at " + " <- ".join(f"{f.filename.split('/')[-1]}:{f.lineno}" for f in reversed(frames)))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.hit("item/float/bool")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def counted(monkeypatch):
    """Yields a function that runs a trainer's fit() with host reads counted."""

    def run(trainer):
        label = StepLabel()
        trainer.methods.insert(0, label)
        mode = HostReads(label)
        for name in ("tolist", "cpu", "numpy"):
            original = getattr(torch.Tensor, name)

            def patched(self, *args, _original=original, _name=name, **kwargs):
                mode.hit(_name)
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, patched)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: mode.hit("cuda.synchronize"))
        with mode:
            trainer.fit()
        return mode

    return run


def _sync_steps(cfg) -> set[int]:
    t = cfg.train
    return {s for s in range(1, STEPS + 1) if s % t.log_every == 0 or s == 1 or s % t.eval_every == 0
            or (t.checkpoint_every and s % t.checkpoint_every == 0) or s == STEPS}


@pytest.mark.parametrize("averaging", sorted(AVERAGING))
def test_no_host_sync_between_log_steps_with_every_method_on(tmp_path, tiny_overrides, counted, averaging):
    overrides = [*tiny_overrides, f"train.max_steps={STEPS}", f"train.log_every={LOG_EVERY}", "train.eval_every=8",
                 "train.checkpoint_every=8", *METHODS, *AVERAGING[averaging]]
    cfg = load_config(None, overrides)
    trainer = build_trainer(cfg, tmp_path / "run", progress=False)
    reads = counted(trainer)
    assert trainer.state.progress.step == STEPS and trainer.state.progress.stage == 1  # the growth happened
    quiet = [s for s in range(1, STEPS + 1) if s not in _sync_steps(cfg)]
    assert quiet == [2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15]
    found = {s: reads.where[s] for s in quiet if reads.counts[s]}
    assert not found, f"host reads on steps that are not sync points: {found}"
    # the counter does see the reads the loop makes where it may: once per log step
    assert all(reads.counts[s] > 0 for s in (1, 4, 8, 12, 16))


def test_the_counter_sees_a_hidden_read(tmp_path, tiny_overrides, counted):
    """A callback that reads the loss every step (as the old loop did) is caught on every step."""

    class ReadsLoss(Method):
        name = "reads_loss"

        def after_step(self, ctx) -> None:
            float(ctx.step_metrics["loss"])

    cfg = load_config(None, [*tiny_overrides, "train.max_steps=6", f"train.log_every={LOG_EVERY}", "train.eval_every=100",
                             "train.checkpoint_every=0"])
    trainer = build_trainer(cfg, tmp_path / "run", progress=False)
    trainer.methods.append(ReadsLoss())
    reads = counted(trainer)
    assert all(reads.counts[s] >= 1 for s in (2, 3, 5))
