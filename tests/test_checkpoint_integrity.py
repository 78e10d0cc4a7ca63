"""Checkpoint integrity: every way a checkpoint can be broken is detected, reported on one line, and
the previous good checkpoint is used; retention and failed saves never lose the last good one."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

import hasten.checkpointing.files as ck
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
from hasten.files import sha256_file


def _state(step: int) -> dict:
    torch.manual_seed(step)
    return {"model": {"w": torch.randn(64, 64)}, "progress": {"step": step}}


def _save(directory, *steps, keep=10):
    return [save_checkpoint(directory, s, _state(s), keep=keep) for s in steps]


def _stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_roundtrip_and_manifest(tmp_path):
    (path,) = _save(tmp_path, 7)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["step"] == 7 and STATE_FILE in manifest["files"]
    assert manifest["files"][STATE_FILE]["bytes"] == (path / STATE_FILE).stat().st_size
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], _state(7)["model"]["w"])
    assert verify_checkpoint(path) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind


def _truncate(path):
    data = (path / STATE_FILE).read_bytes()
    (path / STATE_FILE).write_bytes(data[: len(data) // 2])


def _flip_byte(path):
    data = bytearray((path / STATE_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / STATE_FILE).write_bytes(bytes(data))


def _drop_manifest(path):
    (path / MANIFEST_FILE).unlink()


def _garble_manifest(path):
    (path / MANIFEST_FILE).write_text("{not json")


def _unlisted_state(path):
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["files"] = {}
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncate, "bytes, expected"),
        (_flip_byte, "checksum mismatch"),
        (_drop_manifest, "no manifest.json"),
        (_garble_manifest, "unreadable"),
        (_unlisted_state, "does not list state.pt"),
    ],
)
def test_broken_latest_falls_back_with_one_line(tmp_path, capsys, damage, reason):
    good, newest = _save(tmp_path, 4, 8)
    damage(newest)
    assert reason in verify_checkpoint(newest)
    assert latest_good_checkpoint(tmp_path) == good
    lines = _stderr_lines(capsys)
    assert len(lines) == 1 and str(newest) in lines[0] and reason in lines[0]
    state = load_checkpoint(tmp_path)  # a run's checkpoints dir: the newest good one, the broken one reported
    assert state["progress"]["step"] == 4 and state["_path"] == str(good)
    assert len(_stderr_lines(capsys)) == 1


def test_loading_a_broken_checkpoint_directly_is_one_checkpoint_error(tmp_path):
    (path,) = _save(tmp_path, 3)
    _flip_byte(path)
    with pytest.raises(CheckpointError, match="checksum mismatch") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "step_99999999")


def test_every_checkpoint_broken_is_an_error(tmp_path, capsys):
    for path in _save(tmp_path, 1, 2):
        _truncate(path)
    with pytest.raises(CheckpointError, match="every one failed verification"):
        load_checkpoint(tmp_path)
    assert len(_stderr_lines(capsys)) == 2  # each broken one named once


def test_verified_bytes_that_do_not_unpickle_are_a_checkpoint_error(tmp_path):
    (path,) = _save(tmp_path, 5)
    ck._write_file(path / STATE_FILE, b"not a pickle at all")
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["files"][STATE_FILE] = {
        "sha256": sha256_file(path / STATE_FILE),
        "bytes": (path / STATE_FILE).stat().st_size,
    }
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert verify_checkpoint(path) is None
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)


def test_leftover_tmp_dir_is_ignored_then_cleaned(tmp_path):
    (good,) = _save(tmp_path, 4)
    stale = tmp_path / ".tmp-step_00000008-abc123"  # what a crash mid-save leaves
    stale.mkdir()
    (stale / STATE_FILE).write_bytes(b"half")
    assert list_checkpoints(tmp_path) == [good]
    assert latest_good_checkpoint(tmp_path) == good
    _save(tmp_path, 8)
    assert not stale.exists()


def test_retention_keeps_the_last_good_one_when_the_newest_is_corrupt(tmp_path, capsys):
    a, b, c = _save(tmp_path, 1, 2, 3)
    _flip_byte(c)
    ck._apply_retention(tmp_path, keep=1)
    assert (
        not a.exists() and b.exists() and c.exists()
    )  # the newest good one survives; the broken one is kept as evidence
    assert latest_good_checkpoint(tmp_path) == b
    _stderr_lines(capsys)
    # a later good save makes the older good one redundant under keep=1
    (d,) = _save(tmp_path, 4, keep=1)
    assert d.exists() and not b.exists()


def test_retention_keeps_newest_good_ones(tmp_path):
    paths = _save(tmp_path, 1, 2, 3, 4, 5, keep=2)
    assert [p.exists() for p in paths] == [False, False, False, True, True]


def test_disk_full_while_saving_leaves_previous_intact(tmp_path, monkeypatch):
    (good,) = _save(tmp_path, 4)
    before = (good / STATE_FILE).read_bytes()

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck, "_write_file", full)
    with pytest.raises(OSError) as info:
        save_checkpoint(tmp_path, 8, _state(8), keep=1)
    assert info.value.errno == errno.ENOSPC
    assert list_checkpoints(tmp_path) == [good] and (good / STATE_FILE).read_bytes() == before
    assert verify_checkpoint(good) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failure_while_replacing_a_step_restores_the_old_copy(tmp_path, monkeypatch):
    (path,) = _save(tmp_path, 6)
    before = (path / STATE_FILE).read_bytes()
    real_replace = os.replace
    calls = []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old copy is moved aside, then moving the new one in fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", flaky)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 6, _state(60))
    monkeypatch.setattr(ck.os, "replace", real_replace)
    assert (path / STATE_FILE).read_bytes() == before and verify_checkpoint(path) is None


def test_old_copy_left_by_a_crash_mid_swap_stands_in(tmp_path):
    a, b = _save(tmp_path, 2, 4)
    os.replace(b, tmp_path / ".old-step_00000004")  # killed after moving step 4 aside, before the new copy landed
    found = latest_good_checkpoint(tmp_path)
    assert found.name == ".old-step_00000004"
    assert load_checkpoint(tmp_path)["progress"]["step"] == 4
    _save(tmp_path, 4)  # saving that step again replaces the stand-in
    assert (tmp_path / "step_00000004").is_dir() and not (tmp_path / ".old-step_00000004").exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000004"]
