"""The step loop issues no host sync between sync points (log, eval and checkpoint steps, the end).

On a GPU every read of a device value on the host (`.item()`, `float(t)`, `if t:`, `.tolist()`,
`.cpu()`, `torch.cuda.synchronize()`) stalls the device. Here, on CPU, we count those calls during a
tiny run of each method, attributed to the step they happen in, and require none on the steps
that are not sync points. Reads are caught where torch turns a tensor into a host number
(`aten::_local_scalar_dense`, which item/float/bool/int and torch's C++ Scalar conversions all go
through, seen by a TorchDispatchMode) and at the Python methods that copy whole tensors to the host.
Plain host-side copies of weights (LAWA's CPU snapshots) are indistinguishable from no-ops on a CPU-only
machine, so the LAWA interval is a multiple of log_every in its test run.

The method rows are the host-sync runs of every registered method's spec (MethodSpec.test_runs,
tests/method_grid.py), each alone beside the baseline, with the guard's spike check on and AdamW's fused
kernel, which takes the guard's non-finite skip on the device (as on CUDA, where it is the default).
"""

from __future__ import annotations

import collections
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hasten.recipes import build_trainer, load_config
from hasten.trainer.method import Method
from tests.method_grid import cases

LOG_EVERY, STEPS = 4, 16
RUN = [
    f"train.max_steps={STEPS}",
    f"train.log_every={LOG_EVERY}",
    "train.eval_every=8",
    "train.checkpoint_every=8",
    "train.guard.spike_ratio=3",  # the spike check too (the non-finite skip is on by default)
    "optim.implementation=fused",
]  # AdamW's device-side non-finite skip (found_inf), the CUDA default, on CPU too
CASES = {"baseline": [], **{name: list(run.overrides) for name, run in cases("host_syncs").items()}}


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
        self.where[self.label.step].append(
            f"{what} at " + " <- ".join(f"{f.filename.split('/')[-1]}:{f.lineno}" for f in reversed(frames))
        )

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.hit("item/float/bool")
        return func(*args, **(kwargs or {}))


def fit_counting_host_reads(trainer, monkeypatch) -> HostReads:
    """Run a trainer's fit() with the host reads counted per step."""
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


@pytest.fixture
def counted(monkeypatch):
    """Yields a function that runs a trainer's fit() with host reads counted."""
    return lambda trainer: fit_counting_host_reads(trainer, monkeypatch)


def _sync_steps(cfg) -> set[int]:
    t = cfg.train
    return {
        s
        for s in range(1, STEPS + 1)
        if s % t.log_every == 0
        or s == 1
        or s % t.eval_every == 0
        or (t.checkpoint_every and s % t.checkpoint_every == 0)
        or s == STEPS
    }


def check_no_host_sync_between_sync_points(tmp_path, tiny_overrides, counted, method: list[str]) -> None:
    """A 16-step run with the `method` overrides reads no device value on the host on a step that is no sync point."""
    cfg = load_config(None, [*tiny_overrides, *RUN, *method])
    trainer = build_trainer(cfg, tmp_path / "run", progress=False)
    reads = counted(trainer)
    assert trainer.state.progress.step == STEPS
    quiet = [s for s in range(1, STEPS + 1) if s not in _sync_steps(cfg)]
    assert quiet == [2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15]
    found = {s: reads.where[s] for s in quiet if reads.counts[s]}
    assert not found, f"host reads on steps that are not sync points: {found}"
    # the counter does see the reads the loop makes where it may: once per log step
    assert all(reads.counts[s] > 0 for s in (1, 4, 8, 12, 16))


@pytest.mark.parametrize("method", sorted(CASES))
def test_no_host_sync_between_sync_points(tmp_path, tiny_overrides, counted, method):
    check_no_host_sync_between_sync_points(tmp_path, tiny_overrides, counted, CASES[method])


def test_the_counter_sees_a_hidden_read(tmp_path, tiny_overrides, counted):
    """A callback that reads the loss every step (as the old loop did) is caught on every step."""

    class ReadsLoss(Method):
        name = "reads_loss"

        def after_step(self, ctx) -> None:
            float(ctx.step_metrics["loss"])

    cfg = load_config(
        None,
        [
            *tiny_overrides,
            "train.max_steps=6",
            f"train.log_every={LOG_EVERY}",
            "train.eval_every=100",
            "train.checkpoint_every=0",
        ],
    )
    trainer = build_trainer(cfg, tmp_path / "run", progress=False)
    trainer.methods.append(ReadsLoss())
    reads = counted(trainer)
    assert all(reads.counts[s] >= 1 for s in (2, 3, 5))
