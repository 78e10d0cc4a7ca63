"""Crash safety end to end: `python -m hasten train` is killed with SIGKILL at chosen points (mid-step,
mid-save, right after a save) and resumed with `--resume`; on CPU the final state must be bit-identical
to an uninterrupted run of the same config.

The kill points come from the HASTEN_FAULT_AT test hook (hasten.faults). Each case is a chain: every
entry but the last is one process killed at that point, the last one runs to the end. The method rows are
the fault-injection runs of every registered method's spec (MethodSpec.test_runs, tests/method_grid.py): a
method is covered by declaring them there, where its kill points are chosen.
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
from tests.method_grid import cases

STEPS = 16  # checkpoints every 4 steps: 4, 8, 12, final 16
RUN = [
    f"train.max_steps={STEPS}",
    "train.checkpoint_every=4",
    "train.eval_every=8",
    "train.log_every=4",
    "train.keep_checkpoints=2",
]

# name -> (extra overrides, kill points in order) of the runs that are no method; the methods' come from their specs
RECIPES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "baseline": ([], ("step:3", "save:8")),  # before any checkpoint, then mid-save (the last run resumes from step 4)
    "baseline_later": ([], ("saved:8", "step:14")),  # right after a save, then mid-step with checkpoints behind it
    # a spike guard at a high LR: the loss at step 12 exceeds 1.055x its lowest so far and rolls the run back to step 8
    # with half the LR (exactly one rollback on this data; retuned when the token split changed the trajectory); the
    # second process is killed when it reaches step 10 the second time, i.e. after the in-process rollback
    "guard_rollback": (
        [
            "optim.lr=2e-2",
            "train.guard.spike_ratio=1.055",
            "train.guard.spike_patience=1",
            "train.guard.rollback_lr_factor=0.5",
        ],
        ("save:8", "step:10@2"),
    ),
}
FAST = {"baseline"}  # the rest is the wider grid (several minutes on 2 shared cores)
HASTEN = [sys.executable, "-m", "hasten"]


def _cases():
    methods = {name: (list(run.overrides), run.kill_at) for name, run in cases("faults").items()}
    for name, (overrides, chain) in {**RECIPES, **methods}.items():
        marks = [] if name in FAST else [pytest.mark.slow]
        yield pytest.param(name, overrides, chain, id=name, marks=marks)


def _cli(
    run_dir: Path, overrides: list[str], fault: str | None, resume: bool, hasten: list[str]
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }  # same thread count as the reference (conftest)
    env.pop("HASTEN_FAULT_AT", None)
    if fault:
        env["HASTEN_FAULT_AT"] = fault
    args = [*hasten, "train", "--run-dir", str(run_dir)]
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


def check_sigkill_and_resume_is_bit_exact(
    tmp_path, tiny_overrides, name: str, extra: list[str], chain: tuple[str, ...], hasten: list[str] = HASTEN
) -> None:
    """`hasten train` (the command line `hasten`) killed at each point of `chain` and resumed ends bit-identical to an
    uninterrupted in-process run: every part of the final checkpoint, the counters, the logged losses, no leftovers."""
    overrides = [*tiny_overrides, *RUN, *extra]
    reference = tmp_path / "reference"
    build_trainer(load_config(None, overrides), reference, progress=False).fit()  # uninterrupted, in process

    run = tmp_path / "killed"
    ckpts = run / "checkpoints"
    for i, fault in enumerate([*chain, None]):
        proc = _cli(run, overrides, fault, resume=i > 0, hasten=hasten)
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


@pytest.mark.parametrize("name, extra, chain", list(_cases()))
def test_sigkill_and_resume_is_bit_exact(tmp_path, tiny_overrides, name, extra, chain):
    check_sigkill_and_resume_is_bit_exact(tmp_path, tiny_overrides, name, extra, chain)
