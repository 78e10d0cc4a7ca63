"""Tokenizers: a byte-level BPE trained locally with HF `tokenizers` on a bounded sample of the corpus
(cached by the sample's hash), or any tokenizer.json file / local tokenizer folder / HF tokenizer name.

The training sample is the corpus's beginning, in order, up to data.tokenizer_sample_bytes (default
128 MiB; the whole stdlib corpus is 31.5 MB), streamed to the trainer, never held: a longer corpus is
trained on its first documents. Each line of the sample is cut at TOKENIZER_LINE_CHARS, because BPE
training time grows with the square of a word's length (a 1 MB line without whitespace took minutes).

A cached tokenizer.json is stored with its sha256 beside it (tokenizer.sha256); one that no longer
matches or does not load is reported on one line and trained (or fetched) again."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from filelock import FileLock
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hasten.data.corpus import DocumentReader, Source, fingerprint
from hasten.errors import DataError
from hasten.files import atomic_write_text

EOS = "<|endoftext|>"
TOKENIZER_SAMPLE_BYTES = 128 << 20  # data.tokenizer_sample_bytes' default
TOKENIZER_LINE_CHARS = 8192  # a longer line is cut in the training sample (the stdlib's longest is 1,181 characters)


def cache_root(cache_dir: str) -> Path:
    root = Path(os.environ.get("HASTEN_CACHE", cache_dir)).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _cap_lines(text: str) -> str:
    if len(text) <= TOKENIZER_LINE_CHARS:
        return text
    lines = text.split("\n")
    if max(map(len, lines)) <= TOKENIZER_LINE_CHARS:
        return text
    return "\n".join(line[:TOKENIZER_LINE_CHARS] for line in lines)


def training_sample(source: Source, sample_bytes: int, max_docs: int | None = None) -> Iterator[str]:
    """The BPE training sample: the corpus's first document pieces, in order, up to `sample_bytes` (UTF-8), the last
    one cut to fit, every line cut at TOKENIZER_LINE_CHARS. Streamed: call it again to read it again."""
    left = sample_bytes
    for piece, _ in DocumentReader(source, max_docs=max_docs):
        size = len(piece.encode("utf-8"))
        if size > left:
            piece = piece.encode("utf-8")[:left].decode("utf-8", errors="ignore")
            size = left
        if piece:
            yield _cap_lines(piece)
        left -= size
        if left <= 0:
            return


def train_bpe(documents: Iterable[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return tok


def _cached(path: Path) -> Tokenizer | None:
    """A cached tokenizer if it is intact (its recorded sha256 matches and it loads), else None (reported if
    present)."""
    if not path.exists():
        return None
    stamp = path.with_name("tokenizer.sha256")
    try:
        intact = (
            stamp.read_text().strip() == tokenizer_hash(path) if stamp.exists() else True
        )  # caches before the stamp
        tok = Tokenizer.from_file(str(path)) if intact else None
    except Exception:  # unreadable stamp, or tokenizers' plain Exception on a malformed file
        tok = None
    if tok is None:
        print(f"hasten: warning: cached tokenizer {path} is broken; building it again", file=sys.stderr)
    elif not stamp.exists():
        try:
            atomic_write_text(stamp, tokenizer_hash(path))
        except OSError:
            pass  # a read-only cache still works; it is just not stamped
    return tok


def _store(path: Path, tok: Tokenizer) -> None:
    try:
        atomic_write_text(path, tok.to_str())
        atomic_write_text(path.with_name("tokenizer.sha256"), tokenizer_hash(path))
    except OSError as err:
        raise DataError(
            f"writing the tokenizer cache {path.parent} failed ({err.strerror or err}); free space or set HASTEN_CACHE"
        ) from None


def load_tokenizer(
    spec: str,
    source: Source | None,
    vocab_size: int,
    cache_dir: str,
    sample_bytes: int = TOKENIZER_SAMPLE_BYTES,
    max_docs: int | None = None,
) -> tuple[Tokenizer, Path]:
    """The tokenizer and the path of its tokenizer.json ("bpe": trained on the source's sample, cached by its hash)."""
    if spec == "bpe":
        if source is None:
            raise DataError("training a BPE tokenizer needs the corpus")
        key = f"{fingerprint(training_sample(source, sample_bytes, max_docs))[:16]}-v{vocab_size}"
        path = cache_root(cache_dir) / "tokenizers" / key / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path.parent / ".lock"):  # one process trains it; another waits, then finds it cached
            tok = _cached(path)
            if tok is None:
                tok = train_bpe(training_sample(source, sample_bytes, max_docs), vocab_size)
                _store(path, tok)
        return tok, path
    local = Path(spec).expanduser()
    if local.is_dir():
        local = local / "tokenizer.json"
    if local.is_file():
        try:
            return Tokenizer.from_file(str(local)), local
        except Exception as err:  # tokenizers raises plain Exceptions
            raise DataError(
                f"data.tokenizer={spec!r} is not a valid tokenizer.json ({str(err).splitlines()[0]})"
            ) from None
    path = cache_root(cache_dir) / "tokenizers" / spec.replace("/", "--") / "tokenizer.json"
    tok = _cached(path)
    if tok is None:
        try:
            tok = Tokenizer.from_pretrained(spec)
        except Exception:
            raise DataError(
                f"data.tokenizer={spec!r} is neither 'bpe', a tokenizer.json file nor a reachable HF tokenizer name"
            ) from None
        _store(path, tok)
    return tok, path


def tokenizer_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def eos_id(tok: Tokenizer) -> int:
    for candidate in (EOS, "</s>", "<eos>", "<|end_of_text|>"):
        idx = tok.token_to_id(candidate)
        if idx is not None:
            return idx
    raise DataError(
        "the tokenizer has no end-of-text token (<|endoftext|>, </s>, <eos>); add one or use data.tokenizer=bpe"
    )
