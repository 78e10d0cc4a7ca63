"""Data parallelism on CPU (gloo, 2 ranks): DDP equals one process on the same global batch, FSDP2
resumes bit-exactly from consolidated and sharded checkpoints, and a 2-rank checkpoint resumes on 1 rank."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hasten.checkpointing import load_checkpoint
from hasten.errors import ConfigError
from hasten.recipes import build_trainer, load_config

WORKER = Path(__file__).with_name("dist_worker.py")
REL = 1e-5  # DDP/FSDP vs one process: the same math, only the gradient summation order differs


@pytest.fixture(scope="module")
def overrides(tiny_overrides) -> list[str]:
    return tiny_overrides + [
        "train.max_steps=12",
        "train.eval_every=4",
        "train.checkpoint_every=4",
        "train.log_every=1",
        "train.device=cpu",
    ]


def _rows(run_dir: Path, kind: str, key: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if r["kind"] == kind]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints")["model"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def _assert_close_curve(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> None:
    assert [s for s, _ in a] == [s for s, _ in b]
    for (step, x), (_, y) in zip(a, b):
        assert abs(x - y) <= REL * abs(y), (step, x, y)


@pytest.fixture(scope="module")
def single(tmp_path_factory, overrides) -> Path:
    """The reference: one process, the same global batch of 8 rows."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    build_trainer(load_config(None, overrides), run_dir, progress=False).fit()
    return run_dir


def test_parallelism_and_checkpoint_format_are_validated(overrides):
    with pytest.raises(ConfigError, match="train.parallelism"):
        load_config(None, overrides + ["train.parallelism=zero3"])
    with pytest.raises(ConfigError, match="train.checkpoint_format"):
        load_config(None, overrides + ["train.checkpoint_format=zip"])


@pytest.mark.slow  # launches 2 processes (~20 s of start-up on 2 cores)
def test_cli_nproc_ddp_matches_single_process(tmp_path, overrides, single):
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "hasten", "train", "--nproc", "2", "--run-dir", str(run_dir)]
    for item in overrides + ["train.parallelism=ddp"]:
        cmd += ["--set", item]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done: val loss" in done.stdout and done.stdout.count("done:") == 1  # only rank 0 reports
    train = _rows(run_dir, "train", "loss")
    assert [s for s, _ in train] == list(range(1, 13))  # each step logged once, by rank 0
    _assert_close_curve(train, _rows(single, "train", "loss"))
    _assert_close_curve(_rows(run_dir, "eval", "val_loss"), _rows(single, "eval", "val_loss"))
    assert (run_dir / "summary.json").is_file()


@pytest.mark.slow  # launches 2 processes (~20 s of start-up on 2 cores)
def test_fsdp_trains_and_resumes(tmp_path, overrides, single):
    fsdp = overrides + ["train.parallelism=fsdp"]
    sharded = fsdp + ["train.checkpoint_format=sharded"]
    jobs = [
        {"run_dir": str(tmp_path / "straight"), "overrides": fsdp},
        {"run_dir": str(tmp_path / "cons"), "overrides": fsdp, "stop_at": 5},
        {"run_dir": str(tmp_path / "cons"), "overrides": fsdp, "resume": True},
        {"run_dir": str(tmp_path / "shard"), "overrides": sharded, "stop_at": 5},
        {"run_dir": str(tmp_path / "shard"), "overrides": sharded, "resume": True},
        {
            "run_dir": str(tmp_path / "grown"),
            "overrides": fsdp + ["train.max_steps=2"],
            "replace": True,
        },  # growth's model swap
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(WORKER),
        json.dumps(jobs),
    ]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    straight = tmp_path / "straight"
    _assert_close_curve(_rows(straight, "train", "loss"), _rows(single, "train", "loss"))
    assert sorted(p.name for p in (tmp_path / "shard" / "checkpoints" / "step_00000012" / "dcp").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
    ]  # one shard per rank, inside the atomic checkpoint
    reference = _final_weights(straight)
    for name in ("cons", "shard"):
        # resumed 2-rank FSDP runs equal the uninterrupted one bit for bit: same shards, same reduction order
        assert _rows(tmp_path / name, "train", "loss") == _rows(straight, "train", "loss"), name
    weights = _final_weights(tmp_path / "cons")  # (a sharded checkpoint keeps its weights in the DCP shards)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
    assert _rows(tmp_path / "grown", "event", "event").count((0, "state_replaced")) == 1

    # a 2-rank checkpoint (either format) resumes in one process: the global batch stream is rank-independent
    for name in ("cons", "shard"):
        one = tmp_path / f"{name}-1rank"
        shutil.copytree(tmp_path / name, one)
        shutil.rmtree(one / "checkpoints" / "step_00000012")  # resume from step 8 on one rank
        extra = ["train.checkpoint_format=sharded"] if name == "shard" else []
        trainer = build_trainer(
            load_config(None, overrides + ["train.parallelism=fsdp", *extra]), one, resume=True, progress=False
        )
        assert trainer.state.progress.step == 8
        trainer.fit()
        _assert_close_curve(_rows(one, "train", "loss"), _rows(straight, "train", "loss"))
        final = trainer.state.model.state_dict()
        for key, value in reference.items():
            torch.testing.assert_close(final[key], value, rtol=1e-4, atol=1e-6)
