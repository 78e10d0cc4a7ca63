"""Checkpoints: round trip, atomic save, retention, corruption detection (basic; see the reliability tests)."""

from __future__ import annotations

import json

import pytest
import torch

import hasten.checkpointing.files as ckpt
from hasten.checkpointing import (
    MANIFEST_FILE,
    STATE_FILE,
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from hasten.errors import CheckpointError


def _state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {
        "model": {"w": torch.randn(4, 3, generator=g), "b": torch.arange(3, dtype=torch.int64)},
        "progress": {"step": step, "tokens": step * 100},
        "nested": [1.5, "text", {"deep": torch.ones(2, dtype=torch.bfloat16)}],
    }


def test_save_load_round_trip(tmp_path):
    state = _state(7)
    path = save_checkpoint(tmp_path, 7, state)
    assert path == tmp_path / "step_00000007"
    assert sorted(p.name for p in path.iterdir()) == [MANIFEST_FILE, STATE_FILE]
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["step"] == 7 and STATE_FILE in manifest["files"]
    assert verify_checkpoint(path) is None
    loaded = load_checkpoint(path)
    assert loaded["_path"] == str(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert torch.equal(loaded["model"]["b"], state["model"]["b"])
    assert loaded["progress"] == state["progress"]
    assert loaded["nested"][:2] == [1.5, "text"]
    assert loaded["nested"][2]["deep"].dtype == torch.bfloat16
    # a run's checkpoints dir loads its newest checkpoint
    save_checkpoint(tmp_path, 9, _state(9))
    assert load_checkpoint(tmp_path)["progress"]["step"] == 9


def test_failed_save_leaves_no_checkpoint_and_keeps_the_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 10, _state(10))
    real_write = ckpt._write_file

    def crash_on_manifest(path, data):
        if path.name == MANIFEST_FILE:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(ckpt, "_write_file", crash_on_manifest)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 20, _state(20))
    assert not (tmp_path / "step_00000020").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000010"]  # no temp dir left behind either
    assert verify_checkpoint(tmp_path / "step_00000010") is None
    assert load_checkpoint(tmp_path)["progress"]["step"] == 10

    # re-saving an existing step that fails mid-way leaves the old copy in place
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 10, _state(99))
    assert torch.equal(load_checkpoint(tmp_path / "step_00000010")["model"]["w"], _state(10)["model"]["w"])


def test_retention_keeps_the_newest_k(tmp_path):
    for step in (1, 2, 3, 4, 5):
        save_checkpoint(tmp_path, step, _state(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]
    save_checkpoint(tmp_path, 6, _state(6), keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005", "step_00000006"]
    # steps sort numerically, not by name length
    save_checkpoint(tmp_path, 100_000_000, _state(0), keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_100000000"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "drop_manifest", "drop_state"])
def test_verify_detects_corruption(tmp_path, damage):
    good = save_checkpoint(tmp_path, 1, _state(1), keep=5)
    bad = save_checkpoint(tmp_path, 2, _state(2), keep=5)
    state_file = bad / STATE_FILE
    if damage == "flip":
        data = bytearray(state_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        state_file.write_bytes(bytes(data))
        expected = "checksum mismatch"
    elif damage == "truncate":
        state_file.write_bytes(state_file.read_bytes()[:-10])
        expected = "bytes, expected"
    elif damage == "drop_manifest":
        (bad / MANIFEST_FILE).unlink()
        expected = "no manifest.json"
    else:
        state_file.unlink()
        expected = "missing"
    assert expected in verify_checkpoint(bad)
    with pytest.raises(CheckpointError, match="unusable"):
        load_checkpoint(bad)
    # loading the directory falls back to the previous good checkpoint and says so
    reports = []
    assert latest_good_checkpoint(tmp_path, report=reports.append) == good
    assert len(reports) == 1 and "step_00000002" in reports[0]
    assert load_checkpoint(tmp_path)["progress"]["step"] == 1
