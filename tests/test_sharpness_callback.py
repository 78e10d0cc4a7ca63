"""The sharpness probe inside the trainer (method `sharpness`), its auto ratios, and `hasten sharpness`."""

from __future__ import annotations

import json

import pytest
import torch

from hasten.cli import main
from hasten.errors import ConfigError
from hasten.methods.blockwise_lr.sharpness import ratios_from_sharpness
from hasten.optim.blocks import classify_model
from hasten.recipes import load_config
from tests.helpers import run_training

STEPS = ["train.max_steps=8", "train.eval_every=4", "train.checkpoint_every=4"]


def _run(run_dir, overrides, stop_at=None, resume=False):
    trainer = run_training(run_dir, overrides, stop_at=stop_at, resume=resume)
    trainer.rng_after_fit = torch.get_rng_state()  # build_trainer seeds it, so any extra draw shows up here
    return trainer


def _rows(run_dir, *kinds):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] in kinds]


def _untimed(rows):
    return [{k: v for k, v in r.items() if k not in ("train_time", "tok_per_s", "mfu")} for r in rows]


def _assert_same_weights(a, b):
    sa, sb = a.state.model.state_dict(), b.state.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


MINI = ["optim.name=adam_mini", "optim.blockwise=true"]
AUTO = ["optim.blockwise=true", "methods.sharpness={at_fraction: 0.375, batches: 2, auto_ratios: true}"]


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory, tiny_overrides):
    """Adam-mini + blockwise, probed at 2% (step 1) and every 4 steps, auto off; the bitwise and CLI tests reuse it."""
    run_dir = tmp_path_factory.mktemp("probe") / "run"
    return _run(run_dir, tiny_overrides + STEPS + MINI + ["methods.sharpness={every: 4, batches: 2}"]), run_dir


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory, tiny_overrides):
    """Blockwise AdamW whose ratios the probe sets at step 3 (0.375 x 8 steps)."""
    run_dir = tmp_path_factory.mktemp("auto") / "straight"
    return _run(run_dir, tiny_overrides + STEPS + AUTO), run_dir


def test_probe_logs_every_block_and_writes_charts(probed_run):
    trainer, run_dir = probed_run
    blocks = set(classify_model(trainer.state.model).values())
    rows = _rows(run_dir, "sharpness")
    assert [r["step"] for r in rows] == [1, 4, 8]
    for row in rows:
        values = {k.removeprefix("sharpness/"): v for k, v in row.items() if k.startswith("sharpness/")}
        assert set(values) == blocks
        assert all(v > 0 and v == v and v != float("inf") for v in values.values()), values
        assert (run_dir / f"sharpness_step{row['step']}.png").stat().st_size > 0
    assert rows[1] != rows[2]  # measured on the current weights, not cached
    # every run reports its optimizer state; Adam-mini adds its partition
    event = next(r for r in _rows(run_dir, "event") if r.get("event") == "optimizer_state_bytes")
    assert event["step"] == 1 and event["optimizer"] == "AdamMini"
    n_params = sum(p.numel() for p in trainer.state.model.parameters())
    assert 4 * n_params < event["optimizer_state_bytes"] < 8 * n_params  # fp32 m in full, v a small fraction
    assert event["partition"]["v_entries"] < n_params


def test_probe_without_auto_ratios_leaves_training_bitwise_identical(probed_run, tmp_path, tiny_overrides):
    probed, probed_dir = probed_run
    plain = _run(tmp_path / "plain", tiny_overrides + STEPS + MINI)
    _assert_same_weights(plain, probed)
    sa, sb = plain.state.optimizer.state_dict(), probed.state.optimizer.state_dict()
    for idx in sa["state"]:
        assert torch.equal(sa["state"][idx]["exp_avg"], sb["state"][idx]["exp_avg"])
        assert torch.equal(sa["state"][idx]["exp_avg_sq"], sb["state"][idx]["exp_avg_sq"])
    assert [g["lr_ratio"] for g in sa["param_groups"]] == [g["lr_ratio"] for g in sb["param_groups"]]
    assert _untimed(_rows(tmp_path / "plain", "train", "eval")) == _untimed(_rows(probed_dir, "train", "eval"))
    assert torch.equal(plain.state.sampler.rows([0]), probed.state.sampler.rows([0]))
    assert plain.state.sampler.state_dict() == probed.state.sampler.state_dict()
    assert torch.equal(plain.rng_after_fit, probed.rng_after_fit)  # the probe drew from its own generator only


@pytest.mark.parametrize(
    "stop_at", [2, 5]
)  # interrupted before the probe point (it re-runs) and after it (state restores)
def test_auto_ratios_set_groups_and_resume_bit_exactly(auto_run, tmp_path, tiny_overrides, stop_at):
    straight, straight_dir = auto_run
    overrides = tiny_overrides + STEPS + AUTO
    probe = _rows(straight_dir, "sharpness")
    assert [r["step"] for r in probe] == [3]
    measured = {k.removeprefix("sharpness/"): v for k, v in probe[0].items() if k.startswith("sharpness/")}
    expected = ratios_from_sharpness(measured)
    groups = straight.state.optimizer.param_groups
    assert {g["block"]: g["lr_ratio"] for g in groups} == expected
    assert any(r != 1.0 for r in expected.values())  # the measurement moved some ratio off the base LR
    event = next(r for r in _rows(straight_dir, "event") if r.get("event") == "auto_ratios")
    assert event["step"] == 3 and event["ratios"] == expected
    # the schedule used them: the last step's lr of every group is the schedule at peak lr_ratio x base
    for g in groups:
        assert g["lr"] == straight.state.schedule.lr(7, 7 * 8 * 64, g["lr_ratio"])

    _run(tmp_path / "resumed", overrides, stop_at=stop_at)
    resumed = _run(tmp_path / "resumed", overrides, resume=True)
    _assert_same_weights(straight, resumed)
    assert {g["block"]: g["lr_ratio"] for g in resumed.state.optimizer.param_groups} == expected
    probe_a, probe_b = (next(cb for cb in t.methods if cb.name == "sharpness") for t in (straight, resumed))
    assert probe_b.state_dict() == probe_a.state_dict() and probe_b.state_dict()["applied"] == expected
    keep = lambda rows: _untimed([r for r in rows if r["step"] != stop_at])  # noqa: E731  (the stop adds an eval row)
    assert keep(_rows(straight_dir, "train", "eval")) == keep(_rows(tmp_path / "resumed", "train", "eval"))
    assert keep(_rows(straight_dir, "sharpness")) == keep(_rows(tmp_path / "resumed", "sharpness"))


def test_auto_ratios_without_blockwise_is_a_one_line_config_error(tiny_overrides, capsys):
    with pytest.raises(ConfigError, match="optim.blockwise=true"):
        load_config(None, tiny_overrides + ["methods.sharpness={auto_ratios: true}"])
    assert main(["train", "--set", "methods.sharpness={auto_ratios: true}"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "auto_ratios" in err[0], err


@pytest.mark.parametrize("bad", ["{every: 0, at_fraction: null}", "{at_fraction: 1.5}", "{batches: 0}", "{evry: 3}"])
def test_bad_probe_config_is_a_config_error(tiny_overrides, bad):
    with pytest.raises(ConfigError, match="methods.sharpness"):
        load_config(None, tiny_overrides + [f"methods.sharpness={bad}"])


def test_cli_prints_a_sorted_table_and_writes_chart_and_json(probed_run, tmp_path, capsys):
    trainer, run_dir = probed_run
    out = tmp_path / "out"
    assert main(["sharpness", str(run_dir), "--batches", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "sharpness_val_step8.json").read_text())
    assert (out / "sharpness_val_step8.png").stat().st_size > 0
    blocks = set(classify_model(trainer.state.model).values())
    assert set(report["sharpness"]) == blocks and report["step"] == 8
    table = [line.split() for line in text.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [row[1] for row in table] == sorted(report["sharpness"], key=report["sharpness"].get)  # ascending
    assert "paper:    emb < qk < ffn < vo < norm" in text
    assert ("(matches)" in text) == report["matches_paper"]


def test_cli_bad_source_is_one_line(tmp_path, capsys):
    assert main(["sharpness", str(tmp_path / "nope")]) == 2
    assert len([line for line in capsys.readouterr().err.splitlines() if line.strip()]) == 1
