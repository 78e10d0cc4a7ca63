"""Tokenizers: a byte-level BPE trained locally with HF `tokenizers` (cached by corpus hash),
or any tokenizer.json file / HF tokenizer name.

A cached tokenizer.json is stored with its sha256 beside it (tokenizer.sha256); one that no longer
matches or does not load is reported on one line and trained (or fetched) again."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hasten.data.corpus import Corpus
from hasten.errors import DataError

EOS = "<|endoftext|>"


def cache_root(cache_dir: str) -> Path:
    root = Path(os.environ.get("HASTEN_CACHE", cache_dir)).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def train_bpe(corpus: Corpus, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.documents, trainer=trainer, length=len(corpus.documents))
    return tok


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _cached(path: Path) -> Tokenizer | None:
    """A cached tokenizer if it is intact (its recorded sha256 matches and it loads), else None (reported if present)."""
    if not path.exists():
        return None
    stamp = path.with_name("tokenizer.sha256")
    try:
        intact = stamp.read_text().strip() == tokenizer_hash(path) if stamp.exists() else True  # caches before the stamp
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
        raise DataError(f"writing the tokenizer cache {path.parent} failed ({err.strerror or err}); free space or set HASTEN_CACHE") from None


def load_tokenizer(spec: str, corpus: Corpus | None, vocab_size: int, cache_dir: str) -> tuple[Tokenizer, Path]:
    """The tokenizer and the path of its tokenizer.json (trained and cached on first use for "bpe")."""
    if spec == "bpe":
        if corpus is None:
            raise DataError("training a BPE tokenizer needs the corpus")
        key = f"{corpus.fingerprint()[:16]}-v{vocab_size}"
        path = cache_root(cache_dir) / "tokenizers" / key / "tokenizer.json"
        tok = _cached(path)
        if tok is None:
            tok = train_bpe(corpus, vocab_size)
            _store(path, tok)
        return tok, path
    local = Path(spec).expanduser()
    if local.is_dir():
        local = local / "tokenizer.json"
    if local.is_file():
        try:
            return Tokenizer.from_file(str(local)), local
        except Exception as err:  # tokenizers raises plain Exceptions
            raise DataError(f"data.tokenizer={spec!r} is not a valid tokenizer.json ({str(err).splitlines()[0]})") from None
    path = cache_root(cache_dir) / "tokenizers" / spec.replace("/", "--") / "tokenizer.json"
    tok = _cached(path)
    if tok is None:
        try:
            tok = Tokenizer.from_pretrained(spec)
        except Exception:
            raise DataError(f"data.tokenizer={spec!r} is neither 'bpe', a tokenizer.json file nor a reachable HF tokenizer name") from None
        _store(path, tok)
    return tok, path


def tokenizer_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def eos_id(tok: Tokenizer) -> int:
    for candidate in (EOS, "</s>", "<eos>", "<|end_of_text|>"):
        idx = tok.token_to_id(candidate)
        if idx is not None:
            return idx
    raise DataError("the tokenizer has no end-of-text token (<|endoftext|>, </s>, <eos>); add one or use data.tokenizer=bpe")
