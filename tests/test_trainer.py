"""End-to-end trainer tests: the loss falls, and resume is bit-exact on CPU."""

from __future__ import annotations

import json

import torch

from tests.helpers import run_training


def _run(tmp_path, name, overrides, stop_at=None, resume=False):
    return run_training(tmp_path / name, overrides, stop_at=stop_at, resume=resume)


def test_tiny_training_loss_falls(tmp_path, tiny_overrides):
    trainer = _run(tmp_path, "run", tiny_overrides + ["train.max_steps=40", "optim.lr=1e-2"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["val_loss"] for r in rows if r["kind"] == "eval"]
    assert evals[-1] < evals[0] - 0.5, evals
    assert trainer.state.progress.tokens == 40 * 8 * 64
    assert (tmp_path / "run" / "checkpoints").is_dir()


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.state.model.state_dict().items()}


def test_resume_is_bit_exact(tmp_path, tiny_overrides):
    straight = _run(tmp_path, "straight", tiny_overrides)
    _run(tmp_path, "interrupted", tiny_overrides, stop_at=11)  # stops between checkpoints: saves at 11
    resumed = _run(tmp_path, "interrupted", tiny_overrides, resume=True)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa, sb = straight.state.optimizer.state_dict()["state"], resumed.state.optimizer.state_dict()["state"]
    for idx in sa:
        assert torch.equal(sa[idx]["exp_avg_sq"], sb[idx]["exp_avg_sq"])
    # the metrics record of the resumed run equals the uninterrupted one (losses logged after resume included)
    def losses(name):
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]

    assert losses("straight") == losses("interrupted")
