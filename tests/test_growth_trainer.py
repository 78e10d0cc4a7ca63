"""Growth inside the trainer (methods.growth) and offline (`hasten grow`): growth mid-run, bit-exact
resume around the growth step, staged width growth with mapped moments and a schedule jump, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from hasten.cli import main
from hasten.errors import ConfigError
from hasten.methods.growth import has_unit_masks, unit_masks
from hasten.model import flops_per_token
from hasten.recipes import build_trainer, load_config
from hasten.trainer.method import Method
from tests.helpers import run_training

STACK = (
    "methods.growth={stages: [{dim: depth, op: stack, factor: 2, at_steps: 6, moments: reset, schedule: restart, "
    "lr: 1.0e-3, warmup_steps: 3}]}"
)
SMALL = "model={preset: tiny, n_layers: 1}"


class EvalProbe(Method):
    """Records the val loss at `step` (placed before and after the growth callback)."""

    def __init__(self, name: str, step: int):
        self.name, self.step, self.value = name, step, None

    def after_step(self, ctx) -> None:
        if ctx.state.progress.step == self.step:
            self.value = ctx.evaluate()


def _rows(run_dir, kind=None):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if kind is None or r["kind"] == kind]


def _events(run_dir, name):
    return [r for r in _rows(run_dir, "event") if r.get("event") == name]


def test_depth_stack_grows_midrun_training(tmp_path, tiny_overrides):
    overrides = tiny_overrides + [SMALL, STACK, "train.max_steps=12", "train.log_every=1"]
    trainer = run_training(tmp_path / "run", overrides)
    model = trainer.state.model
    assert model.config.n_layers == 2 and len(model.blocks) == 2
    assert trainer.state.progress.stage == 1
    [growth] = _events(tmp_path / "run", "growth")
    assert growth["step"] == 6 and growth["model_config"]["n_layers"] == 2 and "stack" in growth["summary"]
    assert [e["step"] for e in _events(tmp_path / "run", "state_replaced")] == [6]
    train = {r["step"]: r for r in _rows(tmp_path / "run", "train")}
    tokens_per_step = 8 * 64
    assert all(train[s]["tokens"] == s * tokens_per_step for s in train)  # tokens continue across the growth
    small_cfg = load_config(None, overrides).model_config()
    small_step = train[6]["flops"] - train[5]["flops"]
    big_step = train[8]["flops"] - train[7]["flops"]
    assert small_step == pytest.approx(flops_per_token(small_cfg, 64) * tokens_per_step)
    assert big_step == pytest.approx(flops_per_token(model.config, 64) * tokens_per_step)
    assert big_step > 1.4 * small_step  # one more block; the head's matmul is shared
    # G_stack's restart: fresh optimizer, a new 3-step warmup from 0 to the new peak 1e-3
    assert (
        train[7]["lr"] == 0.0
        and train[8]["lr"] == pytest.approx(1e-3 / 3)
        and train[10]["lr"] == pytest.approx(1e-3, rel=0.2)
    )
    assert trainer.state.optimizer.state[next(model.parameters())]["step"].item() == 6  # steps 7..12 only


def _state(trainer):
    st = trainer.state
    return {
        "model": {k: v.clone() for k, v in st.model.state_dict().items()},
        "optimizer": st.optimizer.state_dict()["state"],
        "schedule": st.schedule.state_dict(),
        "callbacks": json.dumps({cb.name: cb.state_dict() for cb in trainer.methods if cb.name == "growth"}),
        "progress": st.progress.to_dict() | {"train_time": 0},
    }


def _assert_same(a, b, label):
    assert a["model"].keys() == b["model"].keys(), label
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), f"{label}: {key}"
    for idx, sa in a["optimizer"].items():
        for key, value in sa.items():
            assert torch.equal(value, b["optimizer"][idx][key]), f"{label}: optimizer {idx} {key}"
    assert a["schedule"] == b["schedule"] and a["callbacks"] == b["callbacks"] and a["progress"] == b["progress"], label


def test_resume_is_bit_exact_before_at_and_after_growth(tmp_path, tiny_overrides):
    overrides = tiny_overrides + [SMALL, STACK, "train.max_steps=10", "train.checkpoint_every=4", "train.log_every=1"]
    straight = _state(run_training(tmp_path / "straight", overrides))
    losses = [(r["step"], r["loss"], r["lr"]) for r in _rows(tmp_path / "straight", "train")]
    for stop in (5, 6, 7):
        run_dir = tmp_path / f"stop{stop}"
        first = run_training(run_dir, overrides, stop_at=stop)
        assert first.state.model.config.n_layers == (2 if stop >= 6 else 1)
        resumed = run_training(run_dir, overrides, resume=True)
        _assert_same(straight, _state(resumed), f"stopped at {stop}")
        assert [(r["step"], r["loss"], r["lr"]) for r in _rows(run_dir, "train")] == losses
        assert [e["step"] for e in _events(run_dir, "growth")] == [6]


def test_staged_width_growth_maps_moments_and_jumps_schedule(tmp_path, tiny_overrides):
    stage = "{dim: width, op: staged, factor: 2, at_steps: 8, moments: map, schedule: jump, rewarmup_steps: 2}"
    overrides = tiny_overrides + [
        f"methods.growth={{stages: [{stage}]}}",
        "train.max_steps=16",
        "train.log_every=1",
        "optim.eps=1e-12",
    ]
    trainer = run_training(tmp_path / "run", overrides)
    cfg = trainer.state.model.config
    assert (cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.n_layers) == (64, 4, 256, 2)
    [sched] = _events(tmp_path / "run", "growth_schedule")
    assert sched["policy"] == "jump" and sched["restart_step"] == round(8 / 1.776) and sched["rewarmup_steps"] == 2
    assert sched["total_steps"] == sched["restart_step"] + 8  # the jumped schedule ends with the run
    train = {r["step"]: r for r in _rows(tmp_path / "run", "train")}
    assert train[9]["lr"] == 0.0 and 0 < train[10]["lr"] < train[11]["lr"]  # re-warmup onto the schedule at R + w
    evals = [r["val_loss"] for r in _rows(tmp_path / "run", "eval")]
    assert all(map(torch.isfinite, torch.tensor(evals))) and evals[-1] < evals[0]
    [growth] = _events(tmp_path / "run", "growth")
    assert "optimizer state: map" in growth["notes"]


def test_stages_on_one_step_grow_together_with_the_combined_constant(tmp_path, tiny_overrides):
    stages = (
        "[{dim: width, op: staged, factor: 2, at_steps: 5, moments: map, schedule: jump},"
        " {dim: depth, op: interpolate, factor: 2, at: previous, moments: map, schedule: jump, rewarmup_steps: 1}]"
    )
    trainer = run_training(
        tmp_path / "run", tiny_overrides + [f"methods.growth={{stages: {stages}}}", "train.max_steps=7"]
    )
    cfg = trainer.state.model.config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads) == (4, 64, 4) and trainer.state.progress.stage == 2
    assert [(e["step"], e["stage"]) for e in _events(tmp_path / "run", "growth")] == [(5, 0), (5, 1)]
    [sched] = _events(tmp_path / "run", "growth_schedule")
    assert sched["constant"] == 2.455 and sched["restart_step"] == round(5 / 2.455) and sched["rewarmup_steps"] == 1


def test_staged_width_growth_preserves_the_loss(tmp_path, tiny_overrides):
    stage = "{dim: width, op: staged, factor: 2, at_steps: 4, moments: map, schedule: continue}"
    overrides = tiny_overrides + [f"methods.growth={{stages: [{stage}]}}", "train.max_steps=5"]
    before, after = EvalProbe("probe_before", 4), EvalProbe("probe_after", 4)
    trainer = build_trainer(load_config(None, overrides), tmp_path / "run", progress=False)
    trainer.methods.insert(0, before)
    trainer.methods.append(after)
    trainer.fit()
    assert trainer.state.model.config.d_model == 64
    assert after.value == pytest.approx(before.value, abs=1e-5)  # function preserving, through the trainer


def test_random_width_growth_ramps_its_msg_masks(tmp_path, tiny_overrides):
    stage = "{dim: width, op: random, factor: 2, at_steps: 4, mask_ramp_steps: 2, moments: map, schedule: continue}"
    overrides = tiny_overrides + [f"methods.growth={{stages: [{stage}]}}", "train.max_steps=12", "train.log_every=1"]
    before, after = EvalProbe("probe_before", 4), EvalProbe("probe_after", 4)

    class MaskTrace(Method):  # the new units' mask value per axis before each step
        name, rows = "mask_trace", []

        def before_step(self, ctx) -> None:
            masks = unit_masks(ctx.state.model)
            self.rows.append(
                None
                if not has_unit_masks(ctx.state.model)
                else (masks["ffn"].min().item(), masks["hidden"].min().item(), masks["heads"].min().item())
            )

    trace = MaskTrace()
    trainer = build_trainer(load_config(None, overrides), tmp_path / "run", progress=False)
    trainer.methods[:0] = [before]
    trainer.methods += [after, trace]
    trainer.fit()
    assert trainer.state.model.config.d_model == 64 and not has_unit_masks(trainer.state.model)
    assert after.value == pytest.approx(before.value, abs=1e-5)  # mask 0: the grown model computes the small one
    # steps 0-3 small; FFN ramps over steps 4-5, hidden 6-7, heads 8-9; masks removed from step 10 on
    assert trace.rows == [None] * 4 + [
        (0, 0, 0),
        (0.5, 0, 0),
        (1, 0, 0),
        (1, 0.5, 0),
        (1, 1, 0),
        (1, 1, 0.5),
        None,
        None,
    ]
    [start] = _events(tmp_path / "run", "growth_mask_ramp")
    [end] = _events(tmp_path / "run", "growth_mask_ramp_end")
    assert (start["step"], start["end"], start["order"], end["step"]) == (4, 10, ["ffn", "hidden", "heads"], 10)


def test_averaged_weights_are_evaluated_under_the_live_masks(tmp_path, tiny_overrides):
    stage = "{dim: width, op: random, factor: 2, at_steps: 4, mask_ramp_steps: 2, moments: map, schedule: continue}"
    overrides = tiny_overrides + [
        f"methods.growth={{stages: [{stage}]}}",
        "methods.ema={decay: 0.0}",
        "train.max_steps=7",
        "train.eval_every=7",
    ]
    run_training(tmp_path / "run", overrides)
    [row] = [r for r in _rows(tmp_path / "run", "eval") if r["step"] == 7]
    # an EMA with decay 0 holds the live weights: the losses agree only if the averaged copy is evaluated
    # under step 7's masks (FFN 1, hidden 0.5), not the plain grown model nor the masks at the growth
    assert row["ema/val_loss"] == pytest.approx(row["val_loss"], abs=1e-6)


def test_checkpoint_inside_the_ramp_evaluates_with_its_masks_and_refuses_hf_export(tmp_path, tiny_overrides, capsys):
    stage = "{dim: width, op: random, factor: 2, at_steps: 4, mask_ramp_steps: 2, moments: map, schedule: continue}"
    overrides = tiny_overrides + [f"methods.growth={{stages: [{stage}]}}", "train.max_steps=12", "train.eval_every=7"]
    run_training(tmp_path / "run", overrides, stop_at=7)  # checkpoint at step 7: FFN 1, hidden 0.5, heads 0
    [row] = [r for r in _rows(tmp_path / "run", "eval") if r["step"] == 7]
    assert main(["eval", str(tmp_path / "run")]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["step"] == 7 and evaluated["val_loss"] == pytest.approx(row["val_loss"], abs=1e-5)
    assert main(["export", str(tmp_path / "run"), "--to", "hf", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "MSG mask ramp" in err and err.count("\n") == 1 and not (tmp_path / "hf").exists()


def test_random_width_growth_without_ramp_is_live_at_once(tmp_path, tiny_overrides):
    stage = "{dim: width, op: random, factor: 2, at_steps: 4, mask_ramp_steps: 0}"
    overrides = tiny_overrides + [f"methods.growth={{stages: [{stage}]}}", "train.max_steps=5"]
    before, after = EvalProbe("probe_before", 4), EvalProbe("probe_after", 4)
    trainer = build_trainer(load_config(None, overrides), tmp_path / "run", progress=False)
    trainer.methods[:0] = [before]
    trainer.methods.append(after)
    trainer.fit()
    assert not _events(tmp_path / "run", "growth_mask_ramp")
    assert abs(after.value - before.value) > 1e-3  # fresh units act at once: not function preserving


def test_grow_cli_then_resume_matches_growth_in_the_trainer(tmp_path, tiny_overrides, capsys):
    base = tiny_overrides + [SMALL, "train.max_steps=12", "train.log_every=1"]
    run_training(tmp_path / "small", base, stop_at=6)  # checkpoint at step 6
    assert (
        main(
            [
                "grow",
                str(tmp_path / "small"),
                "--op",
                "stack",
                "--factor",
                "2",
                "--lr",
                "1e-3",
                "--warmup-steps",
                "3",
                "--out",
                str(tmp_path / "grown"),
            ]
        )
        == 0
    )
    assert "hasten train --resume --run-dir" in capsys.readouterr().out
    saved = yaml.safe_load((tmp_path / "grown" / "config.yaml").read_text())
    assert saved["model"]["n_layers"] == 2 and "growth" not in saved["methods"]
    assert main(["train", "--resume", "--run-dir", str(tmp_path / "grown")]) == 0
    inline = run_training(tmp_path / "inline", base + [STACK])  # the same growth by the growth method at step 6
    offline = json.loads((tmp_path / "grown" / "summary.json").read_text())
    assert offline["step"] == 12 and offline["tokens"] == inline.state.progress.tokens and offline["stage"] == 1
    a = [(r["step"], r["loss"], r["lr"]) for r in _rows(tmp_path / "inline", "train")]
    b = [(r["step"], r["loss"], r["lr"]) for r in _rows(tmp_path / "grown", "train")]
    assert a == b  # rows 1..6 copied from the small run, 7..12 trained after the offline growth
    assert [e["step"] for e in _events(tmp_path / "grown", "growth")] == [6]


def test_grow_cli_guideline_and_errors(tmp_path, capsys):
    assert main(["grow", "--guideline", "7e9", "2e12"]) == 0
    assert "1.111e+10" in capsys.readouterr().out
    assert main(["grow", "--op", "stack"]) == 2
    assert main(["grow", str(tmp_path), "--op", "stack", "--factor", "2", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ("{dim: depth, op: stack, at_steps: 5}", "factor is missing"),
        ("{dim: depth, op: stak, factor: 2, at_steps: 5}", "op='stak' is unknown"),
        ("{dim: depth, op: stack, factor: 2}", "no trigger"),
        ("{dim: depth, op: stack, factor: 2, at_steps: 5, at_tokens: 9}", "several triggers"),
        ("{dim: depth, op: stack, factor: 1.5, at_steps: 5}", "integer >= 2"),
        ("{dim: width, op: direct, factor: 1.25, at_steps: 5}", "not a whole number"),
        ("{dim: depth, op: stack, factor: 2, at_steps: 500}", "not inside the run"),
        ("{dim: depth, op: stack, factor: 2, at: soon}", "at='soon' is unknown"),
        ("{dim: depth, op: stack, factor: 2, at_steps: 5, slope_window: 4}", "not `at: slope`"),
        ("{dim: depth, op: stack, factor: 2, at: slope, slope_threshold: 0.1}", "must be negative"),
        ("{dim: depth, op: stack, factor: 2, at: guideline}", "guideline gives d="),
        ("{dim: depth, op: stack, factor: 2, at_steps: 5, schedule: jump, warmup_steps: 3}", "needs schedule: restart"),
        ("{dim: depth, op: stack, factor: 2, at_steps: 5, moments: keep}", "moments='keep'"),
        ("{dim: depth, op: stack, factor: 2, at_steps: 5, when: 3}", "unknown key"),
        ("{dim: depth, op: stack, factor: 2, at: previous}", "first stage needs its own trigger"),
        ("{dim: depth, op: stack, factor: 2, at_steps: 5, mask_ramp_steps: 4}", "needs dim: width, op: random"),
        ("{dim: width, op: random, factor: 2, at_steps: 5, mask_ramp_steps: -1}", "needs dim: width, op: random"),
    ],
)
def test_recipe_errors_are_one_line(tiny_overrides, stage, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, tiny_overrides + [f"methods.growth={{stages: [{stage}]}}"])
    assert "\n" not in str(err.value)


def test_target_config_of_a_staged_recipe():
    from hasten.methods.growth.config import GrowthConfig, final_model_config
    from hasten.model import model_config

    stages = GrowthConfig(
        stages=[
            {"dim": "width", "op": "staged", "factor": 2, "at_steps": 5},
            {"dim": "depth", "op": "stack", "factor": 2, "at_steps": 5},
        ]
    ).stage_configs()
    final = final_model_config(
        model_config("cpu-small", n_layers=2, d_model=64, n_heads=2, n_kv_heads=2, d_ff=256), stages
    )
    assert (final.n_layers, final.d_model, final.n_heads, final.d_ff) == (4, 128, 4, 512)
