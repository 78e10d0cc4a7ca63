"""Whole-file writes and file hashes: the one way hasten writes a file atomically and hashes one (bottom layer).

atomic_write fills a hidden temporary file beside the target and renames it over the target, so a reader (or a
crash, or a full disk) never sees half a file; the temporary file keeps the target's suffix, so writers that pick
a format by extension (matplotlib) write the right one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

BLOCK = 1 << 20


def atomic_write(path: str | Path, write: Callable[[Path], None], fsync: bool = True) -> None:
    """Write `path` whole or not at all: `write(tmp)` fills a temporary file beside it, which then replaces it.
    A failure removes the temporary file and leaves `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str, fsync: bool = True) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()
