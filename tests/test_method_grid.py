"""Every method trains inside the trainer and resumes bit-exactly mid-run (CPU): the grid runs of every registered
method's spec (tests/method_grid.py) and the baseline."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import run_training
from tests.method_grid import METHOD_OVERRIDES


def _train_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] in ("train", "eval")]


def check_trains_and_resumes_bit_exactly(tmp_path, tiny_overrides: list[str], method: list[str], label: str) -> None:
    """A 16-step run with the `method` overrides and one stopped at step 7 then resumed end identical: weights, tokens,
    every method's state (averaged weights included) and every logged train/eval row; and the val loss went down."""
    overrides = tiny_overrides + ["train.max_steps=16"] + method
    straight = run_training(tmp_path / "straight", overrides)
    run_training(tmp_path / "resumed", overrides, stop_at=7)
    resumed = run_training(tmp_path / "resumed", overrides, resume=True)
    a, b = straight.state.model.state_dict(), resumed.state.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{label}: {key} differs after resume"
    assert straight.state.progress.tokens == resumed.state.progress.tokens
    for cb_a, cb_b in zip(straight.methods, resumed.methods):
        averager = getattr(cb_a, "averager", None)
        if averager is not None:  # weight averaging: the averaged weights themselves must match
            avg_a, avg_b = averager.averaged_state_dict(), cb_b.averager.averaged_state_dict()
            assert all(torch.equal(avg_a[k], avg_b[k]) for k in avg_a), f"{label}: averaged weights differ"
        else:
            assert json.dumps(cb_a.state_dict(), sort_keys=True) == json.dumps(cb_b.state_dict(), sort_keys=True)
    rows_a = [r for r in _train_rows(tmp_path / "straight") if r["step"] != 7]
    rows_b = [r for r in _train_rows(tmp_path / "resumed") if r["step"] != 7]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("train_time", "tok_per_s", "mfu")}  # noqa: E731
    assert [strip(r) for r in rows_a] == [strip(r) for r in rows_b]
    first, last = rows_a[0], [r for r in rows_a if r["kind"] == "eval"][-1]
    assert last["val_loss"] < first["val_loss"]


@pytest.mark.parametrize("method", sorted(METHOD_OVERRIDES))
def test_method_trains_and_resumes_bit_exactly(tmp_path, tiny_overrides, method):
    check_trains_and_resumes_bit_exactly(tmp_path, tiny_overrides, METHOD_OVERRIDES[method], method)
