"""Tokenize a corpus once into memory-mapped token files with a manifest, reused on later runs.

Layout: <cache>/tokens/<corpus hash>-<tokenizer hash>-<split seed>/{train.bin, val.bin, manifest.json}.
Documents (each followed by EOS) are split into train/val by document with a fixed seed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hasten.data.corpus import Corpus, load_corpus
from hasten.data.tokenizer import atomic_write_text, cache_root, eos_id, load_tokenizer, tokenizer_hash
from hasten.errors import DataError

MANIFEST_VERSION = 1


@dataclass
class TokenData:
    """Train and validation token streams (read-only memmaps) plus their manifest."""

    train: np.ndarray
    val: np.ndarray
    manifest: dict
    directory: Path
    tokenizer_path: Path

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])


def split_documents(n_docs: int, val_fraction: float, seed: int) -> list[bool]:
    """is_val flag per document: a seeded coin per document, at least one document on each side."""
    rng = random.Random(seed)
    flags = [rng.random() < val_fraction for _ in range(n_docs)]
    if not any(flags):
        flags[rng.randrange(n_docs)] = True
    if all(flags):
        flags[0] = False
    return flags


def _write_split(path: Path, chunks: list[np.ndarray], dtype) -> int:
    total = sum(len(c) for c in chunks)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(total,))
    pos = 0
    for c in chunks:
        arr[pos : pos + len(c)] = c
        pos += len(c)
    arr.flush()
    del arr
    return total


def prepare_tokens(
    source: str = "stdlib",
    *,
    text_field: str = "text",
    tokenizer: str = "bpe",
    vocab_size: int = 4096,
    val_fraction: float = 0.02,
    split_seed: int = 1234,
    max_docs: int | None = None,
    cache_dir: str = "~/.cache/hasten",
    progress: bool = True,
) -> TokenData:
    corpus: Corpus = load_corpus(source, text_field=text_field, max_docs=max_docs)
    tok, tok_path = load_tokenizer(tokenizer, corpus, vocab_size, cache_dir)
    key = f"{corpus.fingerprint()[:16]}-{tokenizer_hash(tok_path)[:16]}-f{val_fraction}-s{split_seed}"
    directory = cache_root(cache_dir) / "tokens" / key
    manifest_path = directory / "manifest.json"
    if not manifest_path.exists():
        _tokenize_into(directory, corpus, tok, tok_path, val_fraction, split_seed, progress)
    manifest = json.loads(manifest_path.read_text())
    train = np.load(directory / "train.npy", mmap_mode="r")
    val = np.load(directory / "val.npy", mmap_mode="r")
    return TokenData(train=train, val=val, manifest=manifest, directory=directory, tokenizer_path=tok_path)


def _tokenize_into(directory: Path, corpus: Corpus, tok, tok_path: Path, val_fraction: float, split_seed: int, progress: bool):
    vocab = tok.get_vocab_size()
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    eos = eos_id(tok)
    is_val = split_documents(len(corpus.documents), val_fraction, split_seed)
    train_chunks: list[np.ndarray] = []
    val_chunks: list[np.ndarray] = []
    batch = 64
    bar = tqdm(total=corpus.n_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not progress, leave=False)
    for start in range(0, len(corpus.documents), batch):
        docs = corpus.documents[start : start + batch]
        for offset, enc in enumerate(tok.encode_batch(docs)):
            ids = np.asarray(enc.ids + [eos], dtype=dtype)
            (val_chunks if is_val[start + offset] else train_chunks).append(ids)
        bar.update(sum(len(d.encode("utf-8")) for d in docs))
    bar.close()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        n_train = _write_split(tmp / "train.npy", train_chunks, dtype)
        n_val = _write_split(tmp / "val.npy", val_chunks, dtype)
        manifest = {
            "version": MANIFEST_VERSION,
            "corpus": corpus.name,
            "corpus_hash": corpus.fingerprint(),
            "tokenizer_path": str(tok_path),
            "tokenizer_hash": tokenizer_hash(tok_path),
            "vocab_size": vocab,
            "eos_id": eos,
            "dtype": np.dtype(dtype).name,
            "documents": {"train": is_val.count(False), "val": is_val.count(True)},
            "tokens": {"train": n_train, "val": n_val},
            "bytes": corpus.n_bytes,
            "skipped": corpus.skipped,
            "val_fraction": val_fraction,
            "split_seed": split_seed,
        }
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
        for name in ("train.npy", "val.npy"):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        try:
            os.replace(tmp, directory)
        except OSError:
            if not (directory / "manifest.json").exists():  # another process may have finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_from_config(data_cfg, progress: bool = True) -> TokenData:
    return prepare_tokens(
        data_cfg.source,
        text_field=data_cfg.text_field,
        tokenizer=data_cfg.tokenizer,
        vocab_size=data_cfg.vocab_size,
        val_fraction=data_cfg.val_fraction,
        split_seed=data_cfg.split_seed,
        max_docs=data_cfg.max_docs,
        cache_dir=data_cfg.cache_dir,
        progress=progress,
    )


def check_fits(data: TokenData, seq_len: int, batch_rows: int, eval_sequences: int) -> None:
    """Refuse corpora too short for one batch of training or for the validation windows."""
    train_windows = (len(data.train) - 1) // seq_len
    if train_windows < batch_rows:
        raise DataError(
            f"train split has {len(data.train):,} tokens = {train_windows} windows of {seq_len}, fewer than one batch "
            f"({batch_rows}); use a larger corpus or lower train.batch_size / train.seq_len"
        )
    if (len(data.val) - 1) // seq_len < 1:
        raise DataError(
            f"validation split has {len(data.val):,} tokens, less than one sequence of {seq_len}; raise data.val_fraction "
            "or use a larger corpus"
        )
