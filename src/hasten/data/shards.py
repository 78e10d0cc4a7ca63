"""A prepared token dir: the corpus's documents as token shards, read back as memory maps.

Layout (the Megatron .bin/.idx idea): shard_NNNNNN.bin holds the token ids of consecutive documents
(each followed by EOS) as raw little-endian uint16/uint32, and shard_NNNNNN.idx.npy each document's
end offset in it (int64). A shard closes at the first document end past `shard_tokens`, so its
content depends only on the corpus and the tokenizer, never on the number of workers. The manifest
(hasten-tokens.json) is the commit point: a shard is written under a temporary name, fsynced,
renamed and only then listed, with its size, mtime and sha256 and the reading position after its
last document. A killed preparation continues from the last listed shard; anything else is discarded.

Training never reads a shard whole: TokenView is a token stream made of ranges of the shards (the
train or val split), sliced on demand from memory maps that open lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hasten.data.corpus import Position
from hasten.data.encoding import Chunk, Encoded
from hasten.errors import DataError
from hasten.faults import fault_point
from hasten.files import atomic_write_text, sha256_file
from hasten.layout import TOKEN_DIR_MARK

FORMAT = 3  # token data format (1: train.npy/val.npy without checksums, 2: with checksums, 3: shards)
MANIFEST = TOKEN_DIR_MARK
OPEN_SHARDS = 256  # memory maps kept open at once (each holds a file descriptor)


def shard_name(index: int) -> str:
    return f"shard_{index:06d}"


def read_manifest(directory: Path) -> dict | None:
    """The manifest of a token dir, or None when there is none (or it is unreadable: the dir is then rebuilt)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def write_manifest(directory: Path, manifest: dict) -> None:
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=1))


def file_state(path: Path) -> dict:
    info = path.stat()
    return {"bytes": info.st_size, "mtime_ns": info.st_mtime_ns}


def shard_problem(directory: Path, entry: dict, rehash: bool) -> str | None:
    """None if a listed shard's files are as recorded (size and mtime; sha256 when those changed or `rehash`)."""
    for suffix, state_key, hash_key in ((".bin", "bin", "sha256"), (".idx.npy", "idx", "index_sha256")):
        path = directory / f"{entry['name']}{suffix}"
        try:
            state = file_state(path)
        except OSError:
            return f"{path.name} is missing"
        recorded = entry[state_key]
        if state["bytes"] != recorded["bytes"]:
            return f"{path.name} has {state['bytes']:,} bytes, expected {recorded['bytes']:,}"
        if (rehash or state["mtime_ns"] != recorded["mtime_ns"]) and sha256_file(path) != entry[hash_key]:
            return f"{path.name} checksum mismatch"
    return None


class ShardWriter:
    """Appends encoded pieces to shards; calls `on_seal(entry, end_position)` after each shard is on disk."""

    def __init__(
        self, directory: Path, dtype, shard_tokens: int, first_index: int, on_seal: Callable[[dict, Position], None]
    ):
        self.directory, self.dtype, self.shard_tokens = directory, np.dtype(dtype).newbyteorder("<"), shard_tokens
        self.index, self.on_seal = first_index, on_seal
        self._open()

    def _open(self) -> None:
        self.tmp = self.directory / f".{shard_name(self.index)}.bin.tmp"
        self.file = open(self.tmp, "wb")
        self.hash = hashlib.sha256()
        self.filled = 0  # tokens in the open shard
        self.doc_ends: list[np.ndarray] = []  # end offsets (in the shard) of its documents so far
        self.doc_tokens = 0  # tokens of the document in progress (its pieces so far)

    def add(self, chunk: Chunk, encoded: Encoded) -> None:
        piece_ends = np.cumsum(encoded.counts)
        last = np.fromiter((e is not None for e in chunk.ends), dtype=bool, count=len(chunk.ends))
        doc_pieces = np.flatnonzero(last)
        doc_ends = piece_ends[doc_pieces]  # chunk offsets where documents end
        offset, lo = 0, 0
        while lo < len(doc_ends):
            need = max(self.shard_tokens - self.filled, 1)  # the first document ending at or past this seals the shard
            k = lo + int(np.searchsorted(doc_ends[lo:], offset + need))
            if k == len(doc_ends):
                break
            self._write(encoded.tokens[offset : doc_ends[k]], doc_ends[lo : k + 1] - offset)
            self._seal(chunk.ends[doc_pieces[k]])
            offset, lo = int(doc_ends[k]), k + 1
        self._write(encoded.tokens[offset:], doc_ends[lo:] - offset)

    def _write(self, tokens: np.ndarray, doc_ends: np.ndarray) -> None:
        data = tokens.astype(self.dtype, copy=False).tobytes()
        self.file.write(data)
        self.hash.update(data)
        if len(doc_ends):
            self.doc_ends.append(doc_ends + self.filled)
        self.filled += len(tokens)
        if self.filled:
            fault_point("shard", self.index)  # test hook: SIGKILL while this shard is half-written

    def _seal(self, end: Position) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        name = shard_name(self.index)
        ends = np.concatenate(self.doc_ends) if self.doc_ends else np.zeros(0, dtype=np.int64)
        index_tmp = self.directory / f".{name}.idx.tmp.npy"
        np.save(index_tmp, ends.astype(np.int64))
        with open(index_tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(index_tmp, self.directory / f"{name}.idx.npy")
        os.replace(self.tmp, self.directory / f"{name}.bin")
        entry = {
            "name": name,
            "tokens": self.filled,
            "documents": len(ends),
            "sha256": self.hash.hexdigest(),
            "index_sha256": sha256_file(self.directory / f"{name}.idx.npy"),
            "bin": file_state(self.directory / f"{name}.bin"),
            "idx": file_state(self.directory / f"{name}.idx.npy"),
            "end": list(end),
        }
        self.on_seal(entry, end)
        self.index += 1
        self._open()

    def close(self, end: Position) -> None:
        """Seal what is left as the last shard (if anything), and remove the empty open one."""
        if self.filled:
            self._seal(end)
        self.discard()

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class ShardSet:
    """Sealed shards of a token dir: their token streams concatenated (global offsets), opened lazily."""

    def __init__(self, directory: Path, entries: list[dict], dtype):
        self.directory, self.entries, self.dtype = directory, entries, np.dtype(dtype).newbyteorder("<")
        self.token_starts = np.concatenate([[0], np.cumsum([e["tokens"] for e in entries], dtype=np.int64)])
        self.doc_starts = np.concatenate([[0], np.cumsum([e["documents"] for e in entries], dtype=np.int64)])
        self._open: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    @property
    def n_tokens(self) -> int:
        return int(self.token_starts[-1])

    @property
    def n_documents(self) -> int:
        return int(self.doc_starts[-1])

    def _mapped(self, kind: str, index: int) -> np.ndarray:
        mapped = self._open.get((kind, index))
        if mapped is None:
            path = self.directory / f"{self.entries[index]['name']}{kind}"
            mapped = np.memmap(path, dtype=self.dtype, mode="r") if kind == ".bin" else np.load(path, mmap_mode="r")
            self._open[(kind, index)] = mapped
            if len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end((kind, index))
        return mapped

    def tokens(self, index: int) -> np.ndarray:
        return self._mapped(".bin", index)

    def doc_ends(self, index: int) -> np.ndarray:
        return self._mapped(".idx.npy", index)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the concatenated shards."""
        s = int(np.searchsorted(self.token_starts, start, side="right")) - 1
        parts = []
        while start < stop:
            base = int(self.token_starts[s])
            end = min(stop, int(self.token_starts[s + 1]))
            parts.append(self.tokens(s)[start - base : end - base])
            start, s = end, s + 1
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def document_spans(self, docs: np.ndarray) -> np.ndarray:
        """(start, end) global token offsets of the documents with these (sorted) global indices."""
        out = np.zeros((len(docs), 2), dtype=np.int64)
        shard_of = np.searchsorted(self.doc_starts, docs, side="right") - 1
        for s in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == s)
            local = docs[rows] - self.doc_starts[s]
            ends = np.asarray(self.doc_ends(int(s)))
            starts = np.where(local > 0, ends[np.maximum(local - 1, 0)], 0)
            out[rows, 0] = starts + self.token_starts[s]
            out[rows, 1] = ends[local] + self.token_starts[s]
        return out

    def document_length(self, doc: int) -> int:
        s = int(np.searchsorted(self.doc_starts, doc, side="right")) - 1
        local = doc - int(self.doc_starts[s])
        ends = self.doc_ends(s)
        return int(ends[local]) - (int(ends[local - 1]) if local else 0)


class TokenView:
    """A read-only token stream made of [start, end) ranges of a ShardSet: a split, sliced like an array."""

    def __init__(self, shards: ShardSet, ranges: np.ndarray):
        self.shards = shards
        self.ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
        self.offsets = np.concatenate([[0], np.cumsum(self.ranges[:, 1] - self.ranges[:, 0])])
        self.dtype = shards.dtype

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            index = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(f"token {key} is outside a stream of {len(self)}")
            return self[index : index + 1][0]
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a token stream is read with [start:stop] slices")
        start, stop, _ = key.indices(len(self))
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)
        r = int(np.searchsorted(self.offsets, start, side="right")) - 1
        parts = []
        while start < stop:
            base, first = int(self.offsets[r]), int(self.ranges[r, 0])
            end = min(stop, int(self.offsets[r + 1]))
            parts.append(self.shards.read(first + start - base, first + end - base))
            start, r = end, r + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __array__(self, dtype=None, copy=None):
        whole = np.asarray(self[0 : len(self)])
        return whole.astype(dtype) if dtype is not None else whole

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()


def check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".hasten-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise DataError(
            f"cannot write token shards in {directory} ({err.strerror or err}); free space or set HASTEN_CACHE"
        ) from None
