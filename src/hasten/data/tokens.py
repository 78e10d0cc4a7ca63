"""Tokenize a corpus once into memory-mapped token files with a manifest, reused on later runs.

Layout: <cache>/tokens/<corpus hash>-<tokenizer hash>-f<val fraction>-s<split seed>-t<split version>/
{train.npy, val.npy, manifest.json}. The manifest records the size and sha256 of both token files;
they are verified on every load and a broken cache (truncated, edited, half-deleted) is rebuilt.

The split is by tokens: documents (each followed by EOS) are taken in a seeded random order into
validation until it holds `val_fraction` of all tokens; the document that crosses that mark gives
its tail to validation and keeps its head for training. So one file, or a few large ones, get a
validation split of the stated size, and a corpus of many small documents gets whole held-out
documents (plus the tail of one). Split version 1 (a seeded coin per whole document, which left a
single file without validation data) is kept only so runs started with it resume identically.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hasten.data.corpus import Corpus, corpus_changes, load_corpus
from hasten.data.tokenizer import atomic_write_text, cache_root, eos_id, load_tokenizer, tokenizer_hash
from hasten.errors import DataError

MANIFEST_VERSION = 2
SPLIT_VERSION = 2  # part of the cache key; version 1 split whole documents by a coin per document (old runs only)
TOKEN_FILES = ("train.npy", "val.npy")


@dataclass
class TokenData:
    """Train and validation token streams (read-only memmaps) plus their manifest."""

    train: np.ndarray
    val: np.ndarray
    manifest: dict
    directory: Path
    tokenizer_path: Path
    corpus: dict = field(default_factory=dict)  # the corpus fingerprint a run records (corpus.json)

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])


def split_points(lengths: list[int], val_fraction: float, seed: int) -> list[int]:
    """Per document, the token offset where its validation part begins (its length: all train; 0: all val).

    Documents are visited in a seeded random order and moved to validation until it holds
    round(val_fraction * total) tokens (at least one, never all); the last one is cut so the total is exact.
    """
    total = sum(lengths)
    need = min(max(1, round(val_fraction * total)), total - 1)
    starts = list(lengths)
    for i in random.Random(seed).sample(range(len(lengths)), len(lengths)):
        if need <= 0:
            break
        take = min(lengths[i], need)
        starts[i] = lengths[i] - take
        need -= take
    return starts


def split_documents(n_docs: int, val_fraction: float, seed: int) -> list[bool]:
    """Split version 1, for runs started with it: is_val per whole document, a seeded coin each, one document at least per side."""
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


def _file_digest(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _cache_problem(directory: Path) -> str | None:
    """None if a token cache dir is complete and its files match the manifest, else what is wrong."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "manifest.json is missing or unreadable"
    if isinstance(manifest, dict) and manifest.get("version") == 1:  # written before checksums: check what it has
        try:
            sizes = [len(np.load(directory / name, mmap_mode="r")) for name in TOKEN_FILES]
        except (OSError, ValueError):
            return "a token file is missing or truncated"
        return None if sizes == [manifest["tokens"]["train"], manifest["tokens"]["val"]] else "token counts differ from manifest.json"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or set(files) != set(TOKEN_FILES):
        return "manifest.json does not list the token files"
    for name in TOKEN_FILES:
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != files[name].get("bytes"):
            return f"{name} has {path.stat().st_size:,} bytes, expected {files[name].get('bytes'):,}"
        if _file_digest(path)["sha256"] != files[name].get("sha256"):
            return f"{name} checksum mismatch"
    return None


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
    expect: dict | None = None,
    split_version: int = SPLIT_VERSION,
) -> TokenData:
    """Token files of a corpus (built once, then reused and verified).

    `expect` is the corpus fingerprint a run recorded (TokenData.corpus): a corpus that no longer
    matches it is refused with one line *before* any tokenizer is trained or any file written.
    """
    corpus: Corpus = load_corpus(source, text_field=text_field, max_docs=max_docs)
    if expect is not None:
        check_corpus(expect, corpus)
    tok, tok_path = load_tokenizer(tokenizer, corpus, vocab_size, cache_dir)
    key = f"{corpus.fingerprint()[:16]}-{tokenizer_hash(tok_path)[:16]}-f{val_fraction}-s{split_seed}"
    key += f"-t{split_version}" if split_version != 1 else ""  # version 1 caches predate the suffix
    directory = cache_root(cache_dir) / "tokens" / key
    if directory.exists():
        problem = _cache_problem(directory)
        if problem is not None:
            print(f"hasten: warning: token cache {directory} is broken ({problem}); rebuilding it", file=sys.stderr)
            _discard(directory)
    if not directory.exists():
        _tokenize_into(directory, corpus, tok, tok_path, val_fraction, split_seed, progress, split_version)
    manifest = json.loads((directory / "manifest.json").read_text())
    train = np.load(directory / "train.npy", mmap_mode="r")
    val = np.load(directory / "val.npy", mmap_mode="r")
    record = {
        "source": source,
        "corpus": corpus.name,
        "content_sha256": corpus.fingerprint(),
        "documents": len(corpus.documents),
        "files": corpus.files,
        "tokenizer_sha256": manifest["tokenizer_hash"],
        "split_version": split_version,
        "tokens": manifest["tokens"],
    }
    data = TokenData(train=train, val=val, manifest=manifest, directory=directory, tokenizer_path=tok_path, corpus=record)
    if expect is not None:
        check_tokens(expect, data)
    return data


def check_corpus(expect: dict, corpus: Corpus) -> None:
    """Refuse a corpus whose documents differ from the recorded fingerprint, naming the changed files."""
    if expect.get("content_sha256") == corpus.fingerprint():
        return
    changes = corpus_changes(expect.get("files") or [], corpus.files or [])
    shown = ", ".join(changes[:4]) + (f" and {len(changes) - 4} more" if len(changes) > 4 else "")
    raise DataError(
        f"the corpus {expect.get('source', '')!r} changed since this run started ({shown or 'its documents differ'}); "
        "restore it to continue this run, or train a new run on the new corpus"
    )


def check_tokens(expect: dict, data: TokenData) -> None:
    """The same corpus must also give the same token streams (tokenizer and split) as when the run started."""
    if expect.get("tokenizer_sha256") not in (None, data.corpus["tokenizer_sha256"]):
        raise DataError(f"the tokenizer {data.tokenizer_path} is not the one this run started with; restore the run's tokenizer.json")
    if expect.get("tokens", data.corpus["tokens"]) != data.corpus["tokens"]:
        raise DataError(
            f"the corpus now splits into {data.corpus['tokens']} tokens but the run used {expect.get('tokens')}; "
            "resume it with the hasten version and data settings that started it"
        )


def _discard(directory: Path) -> None:
    """Move a broken cache dir aside (atomic) and delete it, so no reader sees it half-deleted."""
    trash = directory.with_name(f".broken-{directory.name}-{os.getpid()}")
    try:
        os.replace(directory, trash)
    except OSError:
        return  # another process already replaced it
    shutil.rmtree(trash, ignore_errors=True)


def _tokenize_into(directory: Path, corpus: Corpus, tok, tok_path: Path, val_fraction: float, split_seed: int, progress: bool,
                   split_version: int = SPLIT_VERSION):
    vocab = tok.get_vocab_size()
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    eos = eos_id(tok)
    encoded: list[np.ndarray] = []
    batch = 64
    bar = tqdm(total=corpus.n_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not progress, leave=False)
    for start in range(0, len(corpus.documents), batch):
        docs = corpus.documents[start : start + batch]
        encoded.extend(np.asarray(enc.ids + [eos], dtype=dtype) for enc in tok.encode_batch(docs))
        bar.update(sum(len(d.encode("utf-8")) for d in docs))
    bar.close()
    if split_version == 1:
        starts = [0 if is_val else len(ids) for ids, is_val in zip(encoded, split_documents(len(encoded), val_fraction, split_seed))]
    else:
        starts = split_points([len(ids) for ids in encoded], val_fraction, split_seed)
    train_chunks = [ids[:s] for ids, s in zip(encoded, starts) if s > 0]
    val_chunks = [ids[s:] for ids, s in zip(encoded, starts) if s < len(ids)]
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        n_train = _write_split(tmp / "train.npy", train_chunks, dtype)
        n_val = _write_split(tmp / "val.npy", val_chunks, dtype)
        for name in TOKEN_FILES:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        manifest = {
            "version": MANIFEST_VERSION,
            "corpus": corpus.name,
            "corpus_hash": corpus.fingerprint(),
            "tokenizer_path": str(tok_path),
            "tokenizer_hash": tokenizer_hash(tok_path),
            "vocab_size": vocab,
            "eos_id": eos,
            "dtype": np.dtype(dtype).name,
            "documents": {
                "total": len(encoded),
                "train": len(train_chunks),  # documents with tokens in the split (the cut one counts in both)
                "val": len(val_chunks),
                "cut": sum(0 < s < len(ids) for ids, s in zip(encoded, starts)),
            },
            "tokens": {"train": n_train, "val": n_val},
            "files": {name: _file_digest(tmp / name) for name in TOKEN_FILES},
            "bytes": corpus.n_bytes,
            "skipped": corpus.skipped,
            "val_fraction": val_fraction,
            "split_seed": split_seed,
            "split_version": split_version,
        }
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
        try:
            os.replace(tmp, directory)
        except OSError:
            if _cache_problem(directory) is not None:  # another process may have finished first
                raise
    except OSError as err:
        raise DataError(f"writing the token cache under {directory.parent} failed ({err.strerror or err}); free space or set HASTEN_CACHE") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_from_config(data_cfg, progress: bool = True, expect: dict | None = None, tokenizer: str | None = None,
                        split_version: int = SPLIT_VERSION) -> TokenData:
    """`tokenizer` overrides data.tokenizer (a resumed run tokenizes with its own tokenizer.json)."""
    return prepare_tokens(
        data_cfg.source,
        text_field=data_cfg.text_field,
        tokenizer=tokenizer or data_cfg.tokenizer,
        vocab_size=data_cfg.vocab_size,
        val_fraction=data_cfg.val_fraction,
        split_seed=data_cfg.split_seed,
        max_docs=data_cfg.max_docs,
        cache_dir=data_cfg.cache_dir,
        progress=progress,
        expect=expect,
        split_version=split_version,
    )


def check_fits(data: TokenData, seq_len: int, batch_rows: int, eval_sequences: int | None) -> None:
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
