"""Tokenizers: a byte-level BPE trained locally with HF `tokenizers` (cached by corpus hash),
or any tokenizer.json file / HF tokenizer name."""

from __future__ import annotations

import hashlib
import os
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


def load_tokenizer(spec: str, corpus: Corpus | None, vocab_size: int, cache_dir: str) -> tuple[Tokenizer, Path]:
    """The tokenizer and the path of its tokenizer.json (trained and cached on first use for "bpe")."""
    if spec == "bpe":
        if corpus is None:
            raise DataError("training a BPE tokenizer needs the corpus")
        key = f"{corpus.fingerprint()[:16]}-v{vocab_size}"
        path = cache_root(cache_dir) / "tokenizers" / key / "tokenizer.json"
        if not path.exists():
            tok = train_bpe(corpus, vocab_size)
            atomic_write_text(path, tok.to_str())
        return Tokenizer.from_file(str(path)), path
    local = Path(spec).expanduser()
    if local.is_dir():
        local = local / "tokenizer.json"
    if local.is_file():
        try:
            return Tokenizer.from_file(str(local)), local
        except Exception as err:  # tokenizers raises plain Exceptions
            raise DataError(f"data.tokenizer={spec!r} is not a valid tokenizer.json ({str(err).splitlines()[0]})") from None
    try:
        tok = Tokenizer.from_pretrained(spec)
    except Exception:
        raise DataError(f"data.tokenizer={spec!r} is neither 'bpe', a tokenizer.json file nor a reachable HF tokenizer name") from None
    path = cache_root(cache_dir) / "tokenizers" / spec.replace("/", "--") / "tokenizer.json"
    if not path.exists():
        atomic_write_text(path, tok.to_str())
    return tok, path


def tokenizer_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def eos_id(tok: Tokenizer) -> int:
    for candidate in (EOS, "</s>", "<eos>", "<|end_of_text|>"):
        idx = tok.token_to_id(candidate)
        if idx is not None:
            return idx
    raise DataError("the tokenizer has no end-of-text token (<|endoftext|>, </s>, <eos>); add one or use data.tokenizer=bpe")
