"""Crash safety end to end: `python -m hasten train` is killed with SIGKILL at chosen points (mid-step,
mid-save, right after a save) and resumed with `--resume`; on CPU the final state must be bit-identical
to an uninterrupted run of the same config.

The kill points come from the HASTEN_FAULT_AT test hook (hasten.faults). Each case is a chain: every
entry but the last is one process killed at that point, the last one runs to the end. To cover a new
method or optimizer, add one line to RECIPES (name -> overrides, kill chain); a test fails when a
method is registered in hasten.methods.registry without a row here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hasten.recipes import build_trainer, load_config

STEPS = 16  # checkpoints every 4 steps: 4, 8, 12, final 16
RUN = [f"train.max_steps={STEPS}", "train.checkpoint_every=4", "train.eval_every=8", "train.log_every=4", "train.keep_checkpoints=2"]
DEFAULT_CHAIN = ("step:6", "save:12")

# name -> (extra overrides, kill points in order). Methods: the section a recipe would write under `methods:`;
# pick kill points right after the method changes the state (a seq-len change, a growth, an average update).
RECIPES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "baseline": ([], ("step:3", "save:8")),  # before any checkpoint, then mid-save (the last run resumes from step 4)
    "baseline_later": ([], ("saved:8", "step:14")),  # right after a save, then mid-step with checkpoints behind it
    "adam_mini": (["optim.name=adam_mini"], DEFAULT_CHAIN),
    "blockwise": (["optim.blockwise=true"], DEFAULT_CHAIN),
    # a spike guard at a high LR: the loss at step 12 exceeds 1.055x its lowest so far and rolls the run back to step 8 with
    # half the LR (exactly one rollback on this data; retuned when the token split changed the trajectory); the second
    # process is killed when it reaches step 10 the second time, i.e. after the in-process rollback
    "guard_rollback": (["optim.lr=2e-2", "train.guard.spike_ratio=1.055", "train.guard.spike_patience=1",
                        "train.guard.rollback_lr_factor=0.5"], ("save:8", "step:10@2")),
}
# rows for methods registered in hasten.methods.registry (run only when the method is registered)
METHOD_RECIPES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    # lengths 8 -> 64 over 8 steps: killed right after a length change, and mid-save during the ramp
    "seqlen_warmup": (["methods.seqlen_warmup.min_len=8", "methods.seqlen_warmup.total_steps=8"], ("step:5", "save:8")),
    "lawa": (["methods.lawa.k=2", "methods.lawa.interval=2"], ("step:5", "save:12")),
    "ema": (["methods.ema.decay=0.9"], DEFAULT_CHAIN),
    "swa": (["methods.swa.start_step=4", "methods.swa.every=2"], DEFAULT_CHAIN),
    # G_stack at step 6 (fresh optimizer, schedule restart): killed mid-step right after the growth, then mid-save
    "growth": (["methods.growth.stages=[{dim: depth, op: stack, factor: 2, at_steps: 6, moments: reset, schedule: restart}]"],
               ("step:7", "save:8")),
    # staged-training width growth with mapped Adam moments and a schedule jump, same kill points
    "growth_width": (["methods.growth.stages=[{dim: width, op: staged, factor: 2, at_steps: 6, moments: map, schedule: jump}]"],
                     ("step:7", "save:8")),
    # probes at step 4 and sets the blockwise ratios from it: killed right after the optimizer groups change
    "sharpness": (["optim.blockwise=true", "methods.sharpness.at_fraction=0.25", "methods.sharpness.batches=2",
                   "methods.sharpness.auto_ratios=true"], ("step:5", "save:8")),
}
FAST = {"baseline"}  # the rest is the wider grid (several minutes on 2 shared cores)


def _registered() -> set[str]:
    from hasten.methods.registry import registered

    return set(registered())


def _method_of(row: str) -> str:
    """Row `growth_width` covers method `growth`: the method is the longest registered name the row starts with."""
    return max((m for m in _registered() if row == m or row.startswith(f"{m}_")), key=len, default=row)


def _cases():
    methods = _registered()
    for name, (overrides, chain) in {**RECIPES, **{k: v for k, v in METHOD_RECIPES.items() if _method_of(k) in methods}}.items():
        marks = [] if name in FAST else [pytest.mark.slow]
        yield pytest.param(name, overrides, chain, id=name, marks=marks)


def _cli(run_dir: Path, overrides: list[str], fault: str | None, resume: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same thread count as the reference (conftest)
    env.pop("HASTEN_FAULT_AT", None)
    if fault:
        env["HASTEN_FAULT_AT"] = fault
    args = [sys.executable, "-m", "hasten", "train", "--run-dir", str(run_dir)]
    if resume:
        args.append("--resume")
    for item in overrides:
        args += ["--set", item]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def _final_state(run_dir: Path) -> dict:
    path = run_dir / "checkpoints" / f"step_{STEPS:08d}" / "state.pt"
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_identical(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    elif hasattr(a, "dtype") and hasattr(a, "shape"):  # numpy RNG state
        assert (a == b).all(), where
    else:
        assert a == b, where


def _train_losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]


@pytest.mark.parametrize("name, extra, chain", list(_cases()))
def test_sigkill_and_resume_is_bit_exact(tmp_path, tiny_overrides, name, extra, chain):
    overrides = [*tiny_overrides, *RUN, *extra]
    reference = tmp_path / "reference"
    build_trainer(load_config(None, overrides), reference, progress=False).fit()  # uninterrupted, in process

    run = tmp_path / "killed"
    ckpts = run / "checkpoints"
    for i, fault in enumerate([*chain, None]):
        proc = _cli(run, overrides, fault, resume=i > 0)
        log = f"{name} {fault}: rc={proc.returncode}\n{proc.stderr[-3000:]}"
        if fault is None:
            assert proc.returncode == 0, log
            break
        assert proc.returncode == -signal.SIGKILL, log  # the hook fired: the process really died there
        kind, step = fault.split("@")[0].split(":")
        if kind == "save":  # died with the checkpoint half-written: only a hidden temp dir holds it
            assert not (ckpts / f"step_{int(step):08d}").exists(), log
            assert list(ckpts.glob(f".tmp-step_{int(step):08d}-*")), log
        if kind == "saved":
            assert (ckpts / f"step_{int(step):08d}" / "manifest.json").is_file(), log

    if name == "guard_rollback":  # the scenario really rolled back (else the row tests nothing new)
        assert _final_state(reference)["guard"]["rollbacks"] == 1
    want, got = _final_state(reference), _final_state(run)
    for key in ("model", "optimizer", "schedule", "sampler", "methods", "guard", "rng", "model_config"):
        _assert_identical(want[key], got[key], key)
    for key in ("step", "tokens", "flops", "stage"):
        assert want["progress"][key] == got["progress"][key], key
    assert _train_losses(reference) == _train_losses(run)  # the record after resumes equals the uninterrupted one
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".")]  # crash leftovers were cleaned up
    assert len(list(ckpts.glob("step_*"))) == 2  # retention still applies


def test_every_registered_method_has_a_row():
    missing = _registered() - set(METHOD_RECIPES) - set(RECIPES)
    assert not missing, f"add a row to METHOD_RECIPES in {__file__} for: {', '.join(sorted(missing))}"
