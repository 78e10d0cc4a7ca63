"""Atomic, verified checkpoints.

A checkpoint is a directory `step_XXXXXXXX/` with `state.pt` and `manifest.json` (format version,
step, sha256 and size of every file). It is written into a hidden temp dir, fsynced, then renamed
into place, so a crash mid-save never leaves a half checkpoint under a real name. Loading verifies
the checksums; a corrupt latest checkpoint is reported and the previous good one is used.
Retention deletes old checkpoints only after the new one is in place and verified.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from hasten.errors import CheckpointError

FORMAT_VERSION = 1
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(directory: str | Path, step: int, state: dict, keep: int = 2, extra_files: dict[str, bytes] | None = None) -> Path:
    """Atomically write `state` as checkpoint `step` under `directory`; keep the newest `keep` good ones."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".tmp-{final.name}-"))
    try:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        files = {STATE_FILE: buffer.getvalue(), **(extra_files or {})}
        for name, data in files.items():
            _write_file(tmp / name, data)
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in files.items()},
        }
        _write_file(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after a rollback): replace it atomically
            trash = directory / f".old-{final.name}"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _apply_retention(directory, keep)
    return final


def verify_checkpoint(path: str | Path) -> str | None:
    """None if the checkpoint is complete and its checksums match, else the reason it is not."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        return "no manifest.json (incomplete save)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return "manifest.json is unreadable"
    if manifest.get("format_version") != FORMAT_VERSION:
        return f"format version {manifest.get('format_version')} is not {FORMAT_VERSION}"
    for name, info in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != info["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, expected {info['bytes']}"
        if _sha256(file) != info["sha256"]:
            return f"{name} checksum mismatch"
    return None


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint dirs under `directory`, oldest first (by step)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if p.is_dir() and p.name.startswith("step_")), key=lambda p: p.name)


def latest_good_checkpoint(directory: str | Path, report=warnings.warn) -> Path | None:
    """The newest verified checkpoint; each newer broken one is reported (never skipped silently)."""
    for path in reversed(list_checkpoints(directory)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        report(f"checkpoint {path} is unusable ({problem}); falling back to the previous one")
    return None


def _apply_retention(directory: Path, keep: int) -> None:
    good = [p for p in list_checkpoints(directory) if verify_checkpoint(p) is None]
    for path in good[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for stale in directory.glob(".tmp-step_*"):
        shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dir (or a run's checkpoints dir, taking the newest good one) after verifying it."""
    path = Path(path)
    if not (path / MANIFEST_FILE).exists() and list_checkpoints(path):
        found = latest_good_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no usable checkpoint under {path}; every one failed verification")
        path = found
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} is unusable: {problem}")
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    state["_path"] = str(path)
    return state
