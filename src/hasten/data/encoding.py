"""Encode document pieces into token ids on worker processes, in corpus order, with bounded memory.

The reader's pieces are grouped into chunks of about CHUNK_CHARS characters; each chunk is one task:
`encode_batch_fast` over its pieces (one thread per worker: processes are the parallelism, and
tokenizers' own threads only contend with them), the ids packed into one numpy array with EOS after
every document's last piece. At most IN_FLIGHT_PER_WORKER chunks per worker are queued, so memory is
set by the chunk size and the number of workers, never by the corpus. A corpus of a single chunk is
encoded in this process (starting workers would cost more than encoding it).

Memory per worker: ~165 bytes per character of its largest piece while it is encoded (tokenizers'
alignments), plus ~40 bytes per character of its chunk's encodings: with 1 MiB pieces and chunks,
about 250 MB above the interpreter.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import resource
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from hasten.data.corpus import Position
from hasten.errors import DataError

CHUNK_CHARS = 1 << 20
IN_FLIGHT_PER_WORKER = 2


@dataclass
class Chunk:
    texts: list[str] = field(default_factory=list)
    ends: list[Position | None] = field(default_factory=list)  # per piece: the position after its document, or None
    chars: int = 0
    bytes_read: int = 0  # the reader's progress when the chunk was closed


@dataclass
class Encoded:
    tokens: np.ndarray  # every piece's ids in order, EOS after each document's last piece
    counts: np.ndarray  # tokens per piece (its EOS included)
    pid: int = 0
    peak_rss_kb: int = 0


def chunks(
    pieces: Iterable[tuple[str, Position | None]], progress=lambda: 0, chunk_chars: int | None = None
) -> Iterator[Chunk]:
    """The pieces grouped into tasks of about `chunk_chars` characters (default CHUNK_CHARS)."""
    chunk_chars = chunk_chars or CHUNK_CHARS
    chunk = Chunk()
    for text, end in pieces:
        chunk.texts.append(text)
        chunk.ends.append(end)
        chunk.chars += len(text)
        if chunk.chars >= chunk_chars:
            chunk.bytes_read = progress()
            yield chunk
            chunk = Chunk()
    if chunk.texts:
        chunk.bytes_read = progress()
        yield chunk


def encode_pieces(tokenizer: Tokenizer, texts: list[str], last: list[bool], eos: int, dtype) -> Encoded:
    """The ids of `texts` (EOS appended where `last`), packed into one array."""
    ids = [e.ids for e in tokenizer.encode_batch_fast(texts)]
    counts = np.fromiter((len(x) + end for x, end in zip(ids, last)), dtype=np.int64, count=len(ids))
    tokens = np.empty(int(counts.sum()), dtype=dtype)
    pos = 0
    for x, end in zip(ids, last):
        tokens[pos : pos + len(x)] = x
        pos += len(x)
        if end:
            tokens[pos] = eos
            pos += 1
    return Encoded(tokens, counts)


_worker: tuple[Tokenizer, int, np.dtype] | None = None


def _die_with_parent() -> None:
    """Linux: this worker gets SIGKILL when the preparing process dies (even by SIGKILL), so none is left behind."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _start_worker(tokenizer_json: str, eos: int, dtype: str, parent: int) -> None:
    global _worker
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read at each call: one thread per worker
    _worker = (Tokenizer.from_str(tokenizer_json), eos, np.dtype(dtype))


def _encode_task(texts: list[str], last: list[bool]) -> Encoded:
    tokenizer, eos, dtype = _worker
    out = encode_pieces(tokenizer, texts, last, eos, dtype)
    out.pid, out.peak_rss_kb = os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out


@contextlib.contextmanager
def _quiet_fork() -> Iterator[None]:
    """tokenizers warns in a forked child when the parent used its threads (BPE training) unless
    TOKENIZERS_PARALLELISM is set; the workers set it themselves, so it is set only while they fork."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


class Encoder:
    """Encodes chunks on `workers` processes and yields (chunk, Encoded) in the order the chunks came."""

    def __init__(self, tokenizer: Tokenizer, eos: int, dtype, workers: int):
        self.tokenizer, self.eos, self.dtype, self.workers = tokenizer, eos, np.dtype(dtype), workers
        self.peak_rss_kb: dict[int, int] = {}  # worker pid -> its peak RSS (KiB)

    def map(self, stream: Iterable[Chunk]) -> Iterator[tuple[Chunk, Encoded]]:
        stream = iter(stream)
        first = next(stream, None)
        if first is None:
            return
        second = next(stream, None)
        if second is None:
            last = [e is not None for e in first.ends]
            yield first, encode_pieces(self.tokenizer, first.texts, last, self.eos, self.dtype)
            return
        # fork: no re-import of the caller's modules (a spawned worker of the `hasten` script would import torch)
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        pool = ProcessPoolExecutor(
            self.workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(self.tokenizer.to_str(), self.eos, self.dtype.name, os.getpid()),
        )
        window: deque = deque()
        try:
            for n, chunk in enumerate(_chain(first, second, stream)):
                if n == 0:
                    with _quiet_fork():  # the workers fork at the first task
                        window.append((chunk, self._submit(pool, chunk)))
                else:
                    window.append((chunk, self._submit(pool, chunk)))
                if len(window) >= self.workers * IN_FLIGHT_PER_WORKER:
                    yield self._result(*window.popleft())
            while window:
                yield self._result(*window.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _submit(pool: ProcessPoolExecutor, chunk: Chunk):
        return pool.submit(_encode_task, chunk.texts, [e is not None for e in chunk.ends])

    def _result(self, chunk: Chunk, future) -> tuple[Chunk, Encoded]:
        try:
            encoded = future.result()
        except BrokenProcessPool:
            raise DataError(
                f"a tokenizer worker died (out of memory?); lower data.num_workers (now {self.workers}) "
                "and run again: it continues from the last complete shard"
            ) from None
        self.peak_rss_kb[encoded.pid] = max(self.peak_rss_kb.get(encoded.pid, 0), encoded.peak_rss_kb)
        return chunk, encoded


def _chain(first: Chunk, second: Chunk, rest: Iterator[Chunk]) -> Iterator[Chunk]:
    yield first
    yield second
    yield from rest
