"""The loss-spike / non-finite guard: a poisoned step is skipped without touching the weights or the
schedule, and repeated spikes roll the whole state back to the last good checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hasten.config import GuardConfig
from hasten.errors import ConfigError
from hasten.recipes import build_trainer, load_config
from hasten.trainer.guard import DivergenceError, Guard
from hasten.trainer.method import Method


def _trainer(tmp_path, tiny_overrides, name, extra=()):
    cfg = load_config(
        None, [*tiny_overrides, "train.max_steps=14", "train.eval_every=100", "train.checkpoint_every=4", *extra]
    )
    return build_trainer(cfg, tmp_path / name, progress=False)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _events(run_dir, name):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "event" and r["event"] == name]


class PoisonGradAt(Method):
    """At optimizer step `step` (1-based), turn one parameter's gradient into NaN, once."""

    name = "poison"

    def __init__(self, step: int):
        self.step, self.armed, self.before, self.unchanged, self.attempts = step, True, None, None, 0

    def before_step(self, ctx) -> None:
        self.attempts += 1
        p = ctx.state.progress
        if self.before is not None and self.unchanged is None:  # the attempt after the poisoned one
            self.unchanged = all(torch.equal(v, self.before[k]) for k, v in _weights(ctx.state.model).items())
            self.step_after_skip = p.step
        if self.armed and p.step == self.step - 1:
            self.armed = False
            self.before = _weights(ctx.state.model)
            self.opt_steps = [s.get("step") for s in ctx.state.optimizer.state.values()]
            param = next(ctx.state.model.parameters())
            handle = None

            def poison(grad):
                handle.remove()
                return grad * float("nan")

            handle = param.register_hook(poison)


def test_nonfinite_gradient_skips_the_step(tmp_path, tiny_overrides):
    trainer = _trainer(tmp_path, tiny_overrides, "nan")
    cb = PoisonGradAt(step=6)
    trainer.methods.append(cb)
    trainer.fit()
    assert cb.unchanged is True  # the poisoned update never reached the weights
    # ... and the step counter (so the schedule) did not advance for it: the host reads the flag at the next
    # sync point (log step 8), where the skipped attempt is uncounted, so step 8 is the 9th attempt
    rows = [json.loads(line) for line in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if r["kind"] == "train"}
    assert sorted(train) == [1, 4, 8, 12] and train[8]["tokens"] == 8 * 8 * 64
    assert trainer.guard.skipped == 1
    p = trainer.state.progress
    assert (
        p.step == 14 and p.tokens == 14 * 8 * 64 and cb.attempts == 15
    )  # all real steps ran; skipped tokens are not counted
    (event,) = _events(tmp_path / "nan", "skipped_nonfinite")
    assert event["step"] == 5 and event["grad_norm"] == "nan"
    assert all(torch.isfinite(v).all() for v in trainer.state.model.state_dict().values())
    # the skipped step is remembered in checkpoints (exact resume)
    assert (
        torch.load(sorted((tmp_path / "nan" / "checkpoints").iterdir())[-1] / "state.pt", weights_only=False)["guard"][
            "skipped"
        ]
        == 1
    )


class FakeSpikes(Method):
    """Report a huge loss for the first `count` steps at or after `start` (only once: not restored on rollback)."""

    name = "spikes"

    def __init__(self, start: int, count: int):
        self.start, self.left, self.sampler_at_spike = start, count, None

    def after_step(self, ctx) -> dict | None:
        if ctx.state.progress.step >= self.start and self.left > 0:
            self.left -= 1
            self.sampler_at_spike = dict(ctx.state.sampler.state_dict())
            return {"loss": 1e3}
        return None


def test_repeated_spikes_roll_back_and_training_continues(tmp_path, tiny_overrides):
    extra = ["train.guard.spike_ratio=3", "train.guard.spike_patience=3", "train.guard.rollback_lr_factor=0.5"]
    trainer = _trainer(tmp_path, tiny_overrides, "spike", extra)
    spikes = FakeSpikes(start=10, count=3)  # spikes at steps 10, 11, 12: rollback to the checkpoint at step 8
    trainer.methods.append(spikes)
    trainer.fit()
    run = tmp_path / "spike"
    (rollback,) = _events(run, "rollback")
    assert rollback["from_step"] == 12 and rollback["step"] == 8 and rollback["path"].endswith("step_00000008")
    assert len(_events(run, "loss_spike")) == 3
    g, p = trainer.guard, trainer.state.progress
    assert g.rollbacks == 1 and g.lr_scale == 0.5
    assert p.step == 14  # training continued from step 8 to the end
    # the batches of steps 9-12 are not replayed: the data stream kept going from where the spike happened
    sampler = trainer.state.sampler.state_dict()
    assert sampler["epoch"] * sampler["n_windows"] + sampler["cursor"] == (12 + 6) * 8
    # after the rollback every step runs at half the schedule's LR
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    at = next(i for i, r in enumerate(rows) if r.get("event") == "rollback")
    after = [r for r in rows[at:] if r["kind"] == "train"]
    assert [r["step"] for r in after] == [12]  # steps 9-14 rerun; log_every=4 logs step 12 (again)
    last = after[-1]
    schedule_lr = trainer.state.schedule.lr(last["step"] - 1, last["tokens"] - 8 * 64)
    assert math.isclose(last["lr"], 0.5 * schedule_lr, rel_tol=1e-9)


def test_rollback_without_a_checkpoint_is_logged_not_fatal(tmp_path, tiny_overrides):
    trainer = _trainer(tmp_path, tiny_overrides, "early", ["train.guard.spike_ratio=3", "train.guard.spike_patience=2"])
    trainer.methods.append(FakeSpikes(start=2, count=2))  # before the first checkpoint (step 4)
    trainer.fit()
    assert len(_events(tmp_path / "early", "rollback_unavailable")) == 1
    assert trainer.guard.rollbacks == 0 and trainer.state.progress.step == 14


class _Log:
    def log(self, *args, **kwargs):
        pass


class _Trainer:
    device = torch.device("cpu")
    logger = _Log()

    class state:  # noqa: N801
        class progress:  # noqa: N801
            step = 3


def test_too_many_nonfinite_steps_in_a_row_is_one_line():
    guard = Guard(GuardConfig(max_consecutive_skips=3))
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    assert guard.allow_step(_Trainer, one, one)
    assert not guard.allow_step(_Trainer, nan, one)
    assert not guard.allow_step(_Trainer, one, torch.tensor(float("inf")))
    with pytest.raises(DivergenceError, match="3 steps in a row") as info:
        guard.allow_step(_Trainer, nan, nan)
    assert "\n" not in str(info.value)
    assert Guard(GuardConfig(skip_nonfinite=False)).allow_step(_Trainer, nan, nan)


@pytest.mark.parametrize(
    "override",
    [
        "train.guard.spike_ratio=0.9",
        "train.guard.rollback_lr_factor=0",
        "train.guard.spike_patience=0",
        "train.guard.max_consecutive_skips=0",
        "train.guard.spike_ratio=abc",
    ],
)
def test_guard_config_is_validated(override):
    with pytest.raises(ConfigError):
        load_config(None, ["train.max_steps=3", override])
