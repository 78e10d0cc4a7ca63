"""Every method under data parallelism (CPU, gloo, 2 ranks) equals the same run in one process.

Growth (G_stack depth stack with reset moments, staged width growth with mapped moments, MSG random
width) under DDP and FSDP2, LAWA under FSDP2 (averaged from gathered full weights, evaluated over
rank-split val windows), Adam-mini under DDP and FSDP2 (state per shard, heads straddling shards,
growth with mapped state, DCP resume on 2 ranks and on 1), sequence length warmup and blockwise LR
under DDP; Muon is refused under FSDP2 with one line.
"""

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
from hasten.optim.builder import check_fsdp_optimizer
from hasten.parallel import Distributed
from hasten.recipes import build_trainer, load_config

WORKER = Path(__file__).with_name("dist_worker.py")
REL = 1e-5  # the same math on 2 ranks; only the gradient summation order differs

SMALL = "model={preset: tiny, n_layers: 1}"
STACK = (
    "methods.growth={stages: [{dim: depth, op: stack, factor: 2, at_steps: 6, moments: reset, schedule: restart, "
    "warmup_steps: 2}]}"
)
RANDOM = "methods.growth={stages: [{dim: depth, op: random, factor: 2, at_steps: 6, moments: map, schedule: continue}]}"
STAGED = (
    "methods.growth={stages: [{dim: width, op: staged, factor: 2, at_steps: 6, moments: map, schedule: jump, "
    "rewarmup_steps: 2}]}"
)
MSG = (
    "methods.growth={stages: [{dim: width, op: random, factor: 2, at_steps: 6, mask_ramp_steps: 2, moments: map, "
    "schedule: continue}]}"
)
METHODS: dict[str, list[str]] = {
    "stack": [SMALL, STACK],
    "staged": [STAGED],
    "random": [SMALL, RANDOM],  # fresh layers (drawn on rank 0) with no optimizer state beside mapped ones
    "msg": [MSG, "methods.lawa={k: 2, interval: 2}"],  # MSG masks on the shards and on LAWA's unsharded mirror
    "lawa": ["methods.lawa={k: 3, interval: 2}"],
    "adam_mini": ["optim.name=adam_mini"],
    # GQA with head_dim 8: k_proj has 24 rows, 12 per rank, so kv head 1 straddles the two shards
    "adam_mini_heads": ["optim.name=adam_mini", "model={preset: tiny-llama, d_model: 48, n_heads: 6, n_kv_heads: 3}"],
    "adam_mini_stack": [SMALL, "optim.name=adam_mini", STACK.replace("moments: reset", "moments: map")],
    "slw": ["methods.seqlen_warmup={min_len: 16, total_steps: 8}"],
    "blockwise": ["optim.blockwise=true"],
}
# (method, parallelism) pairs run on 2 ranks, all in one torchrun launch
DIST_RUNS = [
    ("stack", "ddp"),
    ("staged", "ddp"),
    ("adam_mini", "ddp"),
    ("slw", "ddp"),
    ("blockwise", "ddp"),
    ("stack", "fsdp"),
    ("staged", "fsdp"),
    ("random", "fsdp"),
    ("msg", "fsdp"),
    ("lawa", "fsdp"),
    ("adam_mini", "fsdp"),
    ("adam_mini_heads", "fsdp"),
    ("adam_mini_stack", "fsdp"),
]
SHARDED = ["train.checkpoint_format=sharded", "train.checkpoint_every=4"]


@pytest.fixture(scope="module")
def overrides(tiny_overrides) -> list[str]:
    return tiny_overrides + [
        "train.max_steps=12",
        "train.eval_every=4",
        "train.checkpoint_every=0",
        "train.log_every=1",
        "train.device=cpu",
    ]


def _rows(run_dir: Path, kind: str, key: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if r["kind"] == kind and key in r]


def _assert_close_curve(a: list[tuple[int, float]], b: list[tuple[int, float]], what: str) -> None:
    assert a and [s for s, _ in a] == [s for s, _ in b], what
    for (step, x), (_, y) in zip(a, b):
        assert abs(x - y) <= REL * abs(y), (what, step, x, y)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, overrides) -> dict[str, Path]:
    """Single-process references for every method, then the 2-rank runs in one torchrun launch."""
    root = tmp_path_factory.mktemp("methods")
    out: dict[str, Path] = {}
    for method, extra in METHODS.items():
        run_dir = root / f"{method}-single"
        build_trainer(load_config(None, overrides + extra), run_dir, progress=False).fit()
        out[f"{method}-single"] = run_dir
    jobs = []
    for method, parallelism in DIST_RUNS:
        run_dir = root / f"{method}-{parallelism}"
        jobs.append(
            {"run_dir": str(run_dir), "overrides": overrides + METHODS[method] + [f"train.parallelism={parallelism}"]}
        )
        out[f"{method}-{parallelism}"] = run_dir
    for method in ("adam_mini", "adam_mini_heads"):  # stop at 6, resume from the DCP shards written there
        run_dir = root / f"{method}-fsdp-resumed"
        resumed = overrides + METHODS[method] + ["train.parallelism=fsdp", *SHARDED]
        jobs += [
            {"run_dir": str(run_dir), "overrides": resumed, "stop_at": 6},
            {"run_dir": str(run_dir), "overrides": resumed, "resume": True},
        ]
        out[f"{method}-fsdp-resumed"] = run_dir
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(WORKER),
        json.dumps(jobs),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _assert_matches_single(runs: dict[str, Path], method: str, parallelism: str) -> Path:
    run_dir, single = runs[f"{method}-{parallelism}"], runs[f"{method}-single"]
    _assert_close_curve(
        _rows(run_dir, "train", "loss"), _rows(single, "train", "loss"), f"{method}/{parallelism} train loss"
    )
    _assert_close_curve(
        _rows(run_dir, "eval", "val_loss"), _rows(single, "eval", "val_loss"), f"{method}/{parallelism} val loss"
    )
    return run_dir


@pytest.mark.slow  # one 2-process launch of 9 tiny runs plus 7 single-process references (~1 min on 2 cores)
@pytest.mark.parametrize(
    ("method", "parallelism"),
    [("stack", "ddp"), ("staged", "ddp"), ("stack", "fsdp"), ("staged", "fsdp"), ("random", "fsdp"), ("msg", "fsdp")],
)
def test_growth_matches_single_process(runs, method, parallelism):
    run_dir = _assert_matches_single(runs, method, parallelism)
    grown = [
        r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r.get("event") == "growth"
    ]
    reference = [
        r
        for r in map(json.loads, (runs[f"{method}-single"] / "metrics.jsonl").read_text().splitlines())
        if r.get("event") == "growth"
    ]
    assert [(g["step"], g["params"], g["model_config"]) for g in grown] == [
        (g["step"], g["params"], g["model_config"]) for g in reference
    ]
    assert ("optimizer state: map" in grown[0]["notes"]) == (method != "stack")
    if method == "msg":  # evaluated mid-ramp (step 8: FFN 1, hidden 0) with and without averaging
        _assert_close_curve(
            _rows(run_dir, "eval", "lawa/val_loss"), _rows(runs["msg-single"], "eval", "lawa/val_loss"), "msg lawa"
        )
    # the consolidated final checkpoint holds the grown model and its (mapped, then trained) optimizer state
    ckpt, single = load_checkpoint(run_dir / "checkpoints"), load_checkpoint(runs[f"{method}-single"] / "checkpoints")
    assert ckpt["model_config"] == single["model_config"]
    for key, value in single["model"].items():
        torch.testing.assert_close(
            ckpt["model"][key], value, rtol=1e-4, atol=1e-5
        )  # Adam magnifies order noise on ~0 grads
    steps = sorted(float(s["step"]) for s in ckpt["optimizer"]["state"].values())
    assert steps == sorted(float(s["step"]) for s in single["optimizer"]["state"].values())


@pytest.mark.slow
def test_lawa_under_fsdp_matches_single_process(runs):
    run_dir = _assert_matches_single(runs, "lawa", "fsdp")
    lawa, reference = _rows(run_dir, "eval", "lawa/val_loss"), _rows(runs["lawa-single"], "eval", "lawa/val_loss")
    assert len(lawa) == 3  # steps 4, 8, 12 (nothing averaged at step 0)
    _assert_close_curve(lawa, reference, "lawa/val_loss")
    saved = load_checkpoint(run_dir / "checkpoints")["methods"]["lawa"]  # the averager state, written by rank 0
    assert (
        saved["members"]
        == [8, 10, 12]
        == load_checkpoint(runs["lawa-single"] / "checkpoints")["methods"]["lawa"]["members"]
    )
    assert (run_dir / "lawa_weights.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["adam_mini", "slw", "blockwise"])
def test_optimizer_and_data_methods_under_ddp_match_single_process(runs, method):
    run_dir = _assert_matches_single(runs, method, "ddp")
    if method == "slw":  # both ranks trained at the warmup's lengths, the same as one process
        assert _rows(run_dir, "train", "seq_len") == _rows(runs["slw-single"], "train", "seq_len")
        assert _rows(run_dir, "train", "seq_len")[0][1] == 16


@pytest.mark.slow
@pytest.mark.parametrize("method", ["adam_mini", "adam_mini_heads"])
def test_adam_mini_under_fsdp_keeps_state_per_shard_and_resumes(runs, overrides, method):
    run_dir = _assert_matches_single(runs, method, "fsdp")
    ckpt, single = load_checkpoint(run_dir / "checkpoints"), load_checkpoint(runs[f"{method}-single"] / "checkpoints")
    for index, state in single["optimizer"]["state"].items():  # the consolidated per-block v equals one process's
        torch.testing.assert_close(
            ckpt["optimizer"]["state"][index]["exp_avg_sq"], state["exp_avg_sq"], rtol=1e-4, atol=1e-12
        )
        assert ckpt["optimizer"]["state"][index]["exp_avg_sq"].shape == state["exp_avg_sq"].shape
    # a 2-rank run stopped at 6 and resumed from the DCP shards of step 4 equals the straight run bit for bit
    resumed = runs[f"{method}-fsdp-resumed"]
    assert _rows(resumed, "train", "loss") == _rows(run_dir, "train", "loss")
    # ... and the same shards resume on one rank (resharded to a single process)
    one = resumed.parent / f"{method}-1rank"
    shutil.copytree(resumed, one)
    shutil.rmtree(one / "checkpoints" / "step_00000012")  # resume from the shards of step 8
    trainer = build_trainer(
        load_config(None, overrides + METHODS[method] + ["train.parallelism=fsdp", *SHARDED]),
        one,
        resume=True,
        progress=False,
    )
    assert trainer.state.progress.step == 8
    trainer.fit()
    _assert_close_curve(_rows(one, "train", "loss"), _rows(run_dir, "train", "loss"), f"{method} resumed on 1 rank")


@pytest.mark.slow
def test_adam_mini_growth_under_fsdp_maps_its_state(runs):
    run_dir = _assert_matches_single(runs, "adam_mini_stack", "fsdp")
    [growth] = [
        r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r.get("event") == "growth"
    ]
    assert "optimizer state: map" in growth["notes"]


@pytest.mark.parametrize("name", ["muon"])
def test_whole_matrix_optimizers_are_refused_under_fsdp(tmp_path, overrides, name):
    with pytest.raises(ConfigError, match=f"optim.name={name} does not support train.parallelism=fsdp") as err:
        check_fsdp_optimizer(name)
    assert "\n" not in str(err.value)
    cfg = load_config(None, overrides + [f"optim.name={name}", "train.parallelism=fsdp"])
    with pytest.raises(ConfigError, match="use train.parallelism=ddp"):  # refused before anything is written
        build_trainer(cfg, tmp_path / "run", dist=Distributed(rank=0, world_size=2), progress=False)
    assert not (tmp_path / "run").exists()
    check_fsdp_optimizer("adamw")  # elementwise: fine
