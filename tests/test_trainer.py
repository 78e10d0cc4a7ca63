"""End-to-end trainer tests: the loss falls, and resume is bit-exact on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from hasten.recipes import build_trainer, load_config
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


def test_every_block_lr_is_logged(tmp_path, tiny_overrides):
    """Each logged train row has `lr/<block>` for every block type of the optimizer's groups: blockwise LR
    gives each block the schedule of its ratio (peak ratio x base, a shared floor), the plain baseline one LR."""
    from hasten.optim.blockwise import DEFAULT_RATIOS

    for name, extra in (("blockwise", ["optim.blockwise=true"]), ("plain", [])):
        trainer = _run(tmp_path, name, tiny_overrides + ["train.max_steps=8", *extra])
        blocks = {g["block"] for g in trainer.state.optimizer.param_groups}
        assert {"emb", "qk", "vo", "ffn", "norm"} <= blocks
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in rows if r["kind"] == "train"]
        assert [r["step"] for r in train] == [1, 4, 8]
        schedule = trainer.state.schedule
        for row in train:
            assert {k for k in row if k.startswith("lr/")} == {f"lr/{b}" for b in blocks}
            before = (row["step"] - 1, row["tokens"] - 8 * 64)  # the step's LR is set from the counters before it
            for block in blocks:
                ratio = DEFAULT_RATIOS[block] if name == "blockwise" else 1.0
                assert row[f"lr/{block}"] == pytest.approx(schedule.lr(*before, ratio), rel=1e-12), (
                    name,
                    block,
                    row["step"],
                )
        peak = train[1]  # step 4, the end of warmup
        assert (peak["lr/emb"] == pytest.approx(10 * peak["lr/norm"])) == (name == "blockwise")
        assert train[1]["lr/emb"] != train[2]["lr/emb"]  # it follows the schedule


def test_data_seed_changes_the_data_order_but_not_the_init(tmp_path, tiny_overrides):
    """train.data_seed splits the data order from the init: another data_seed starts from the same weights but draws
    other windows, another seed the reverse; data_seed equal to seed is the default run, bit for bit."""

    def built(name, seeds):
        trainer = build_trainer(
            load_config(None, tiny_overrides + seeds), tmp_path / name, resume=False, progress=False
        )
        return _weights(trainer), trainer.state.sampler._permutation(0)

    weights, order = built("first", ["train.seed=1"])
    other_data_weights, other_data_order = built("other_data", ["train.seed=1", "train.data_seed=2"])
    other_init_weights, other_init_order = built("other_init", ["train.seed=2", "train.data_seed=1"])
    assert all(torch.equal(v, other_data_weights[k]) for k, v in weights.items())
    assert not (order == other_data_order).all()
    assert not all(torch.equal(v, other_init_weights[k]) for k, v in weights.items())
    assert (order == other_init_order).all()

    default = _run(tmp_path, "default", tiny_overrides + ["train.max_steps=3", "train.seed=1"])
    same = _run(tmp_path, "same", tiny_overrides + ["train.max_steps=3", "train.seed=1", "train.data_seed=1"])
    for key, value in _weights(default).items():
        assert torch.equal(value, _weights(same)[key]), key
