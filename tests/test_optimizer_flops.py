"""Optimizer FLOPs (hasten.optim.flops): Muon's Newton-Schulz matmuls against torch's FlopCounterMode, the per-element
counts of every optimizer, and the trainer charging them to each step (metrics.jsonl, summary, resume)."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hasten.config import OptimConfig
from hasten.model import GPT, model_config
from hasten.optim.builder import build_optimizer
from hasten.optim.flops import (
    ADAM_MINI_PER_ELEMENT,
    ADAMW_PER_ELEMENT,
    MUON_PER_ELEMENT,
    muon_step_flops,
    newton_schulz_matmul_flops,
    optimizer_step_flops,
)
from hasten.optim.muon import MUON_NS_STEPS
from tests.helpers import run_training


def _model(preset: str = "tiny") -> GPT:
    torch.manual_seed(0)
    return GPT(model_config(preset))


def _with_grads(model: GPT) -> GPT:
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return model


@pytest.mark.parametrize("shape", [(64, 64), (64, 256), (256, 64), (48, 80)])
def test_newton_schulz_matmuls_equal_flop_counter(shape):
    """One torch.optim.Muon step on one matrix: FlopCounterMode's count (matmuls only) equals the formula exactly."""
    p = torch.nn.Parameter(torch.randn(*shape))
    p.grad = torch.randn(*shape)
    opt = torch.optim.Muon([p], lr=0.01, ns_steps=MUON_NS_STEPS)
    with FlopCounterMode(display=False) as counter:
        opt.step()
    assert counter.get_total_flops() == newton_schulz_matmul_flops(shape, MUON_NS_STEPS)
    m, n = sorted(shape)
    assert muon_step_flops([p], MUON_NS_STEPS) == (
        newton_schulz_matmul_flops(shape, MUON_NS_STEPS)
        + MUON_PER_ELEMENT * p.numel()
        + MUON_NS_STEPS * (2 * m * m + 2 * m * n)
    )


def test_muon_optimizer_counts_its_matrices_with_flop_counter_and_the_rest_as_adamw():
    """hasten's Muon (torch Muon on hidden matrices + AdamW): the matmul FLOPs of a real step on a model equal
    FlopCounterMode's, and the whole count is those plus the per-element work of both halves."""
    model = _with_grads(_model())
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-3))
    with FlopCounterMode(display=False) as counter:
        opt.step()
    muon_params = [p for g in opt.muon.param_groups for p in g["params"]]
    adamw_params = [p for g in opt.adamw.param_groups for p in g["params"]]
    assert counter.get_total_flops() == sum(
        newton_schulz_matmul_flops(tuple(p.shape), MUON_NS_STEPS) for p in muon_params
    )
    assert counter.get_total_flops() > 0
    expected = muon_step_flops(muon_params, MUON_NS_STEPS) + ADAMW_PER_ELEMENT * sum(p.numel() for p in adamw_params)
    assert optimizer_step_flops(opt) == expected


def test_elementwise_optimizers_count_every_trained_element_and_do_no_matmul():
    model = _with_grads(_model())
    n = sum(p.numel() for p in model.parameters())
    for name, per_element in (("adamw", ADAMW_PER_ELEMENT), ("adam_mini", ADAM_MINI_PER_ELEMENT)):
        opt = build_optimizer(model, OptimConfig(name=name, lr=1e-3))
        with FlopCounterMode(display=False) as counter:
            opt.step()
        assert counter.get_total_flops() == 0
        assert optimizer_step_flops(opt) == per_element * n
    blockwise = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, blockwise=True))
    assert optimizer_step_flops(blockwise) == ADAMW_PER_ELEMENT * n  # per-block LRs change no FLOP


def test_unknown_optimizer_is_not_guessed():
    p = torch.nn.Parameter(torch.zeros(3))
    assert optimizer_step_flops(torch.optim.SGD([p], lr=0.1)) is None


def test_muon_overhead_on_the_benchmark_model_is_what_the_issue_measured():
    """bench-d64 (24 hidden matrices of 64 x 64 / 64 x 256): ~3.1e8 Newton-Schulz FLOPs per step, ~8.7 % of the
    model's FLOPs at 16 x 128 tokens per step (issue #21's hand count)."""
    from hasten.model import flops_per_token

    model = _model("bench-d64")
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-3))
    ns = sum(
        newton_schulz_matmul_flops(tuple(p.shape), MUON_NS_STEPS) for g in opt.muon.param_groups for p in g["params"]
    )
    assert 3.0e8 < ns < 3.2e8
    share = optimizer_step_flops(opt) / (flops_per_token(model.config, 128) * 16 * 128)
    assert 0.08 < share < 0.10


def _rows(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_trainer_charges_optimizer_flops_per_step_and_resumes_them(tmp_path, tiny_overrides):
    """Every step adds its optimizer's FLOPs to progress.optimizer_flops (model FLOPs stay apart in `flops`); the
    eval and train rows and summary.json carry both; a resumed run counts the same as an uninterrupted one."""
    overrides = [*tiny_overrides, "optim.name=muon", "train.log_every=1"]
    straight = run_training(tmp_path / "straight", overrides)
    per_step = optimizer_step_flops(straight.state.optimizer)
    assert per_step > 0
    for kind in ("train", "eval"):
        rows = _rows(tmp_path / "straight", kind)
        assert [r["optimizer_flops"] for r in rows] == [per_step * r["step"] for r in rows]
    assert straight.state.progress.optimizer_flops == per_step * straight.state.progress.step
    run_training(tmp_path / "resumed", overrides, stop_at=11)
    resumed = run_training(tmp_path / "resumed", overrides, resume=True)
    assert resumed.state.progress.optimizer_flops == straight.state.progress.optimizer_flops
    assert resumed.state.progress.flops == straight.state.progress.flops


def test_token_cadence_evaluates_each_time_the_tokens_pass_a_multiple(tmp_path, tiny_overrides):
    """train.eval_every_tokens: evaluations where the tokens first reach each multiple (steps of unequal length under
    sequence length warmup included); the training itself is the same as with a step cadence."""
    every = 3 * 8 * 64  # 3 full-length steps of the tiny runs
    slw = ["methods.seqlen_warmup.min_len=8", "methods.seqlen_warmup.total_steps=12"]
    by_tokens = run_training(tmp_path / "tokens", [*tiny_overrides, *slw, f"train.eval_every_tokens={every}"])
    by_steps = run_training(tmp_path / "steps", [*tiny_overrides, *slw])
    evals = _rows(tmp_path / "tokens", "eval")
    scheduled = evals[1:-1]  # step 0 and the final evaluation are always made
    assert scheduled, evals
    for row in scheduled:
        k = row["tokens"] // every
        assert k >= 1 and row["tokens"] - k * every < 8 * 64, row  # the step that passed the multiple
    multiples = {r["tokens"] // every for r in scheduled}
    assert multiples == set(range(1, max(multiples) + 1))  # none skipped
    # steps under warmup are shorter, so the step cadence evaluates elsewhere
    assert [r["step"] for r in scheduled] != [r["step"] for r in _rows(tmp_path / "steps", "eval")[1:-1]]
    assert by_tokens.state.progress.tokens == by_steps.state.progress.tokens
    for key, value in by_steps.state.model.state_dict().items():
        assert torch.equal(value, by_tokens.state.model.state_dict()[key]), key
