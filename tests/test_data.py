"""Data pipeline: corpus sources, skipped files, cached tokenizer and token files, document split."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

import hasten.data.tokenizer as tokenizer_module
import hasten.data.tokens as tokens_module
from hasten.config import DataConfig
from hasten.data import load_corpus, prepare_from_config, prepare_tokens
from hasten.data.corpus import _stdlib_files, stdlib_root
from hasten.data.tokenizer import eos_id
from hasten.data.tokens import split_documents
from hasten.errors import DataError

WORDS = "the model reads data and learns to predict each next token from the tokens before it in order".split()


def _doc(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)) + ".\n"


def _write_docs(folder: Path, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    docs = [_doc(rng, 30 + rng.randrange(40)) for _ in range(n)]
    for i, doc in enumerate(docs):
        (folder / f"doc{i:03d}.txt").write_text(doc)
    return docs


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache (HASTEN_CACHE wins over data.cache_dir), so caching is observed from empty."""
    path = tmp_path / "cache"
    monkeypatch.setenv("HASTEN_CACHE", str(path))
    return path


def test_stdlib_corpus_is_deterministic_and_excludes_site_packages():
    a = load_corpus("stdlib", max_docs=12)
    b = load_corpus("stdlib", max_docs=12)
    assert a.documents == b.documents
    assert a.fingerprint() == b.fingerprint()
    assert len(a.documents) == 12 and a.name.startswith("stdlib-")
    root = stdlib_root()
    files = _stdlib_files()
    relative = [p.relative_to(root) for p in files]
    assert relative == sorted(relative, key=lambda p: p.as_posix())
    assert not any(part in ("site-packages", "dist-packages") for p in relative for part in p.parts)
    assert Path("json/__init__.py") in relative  # real stdlib modules are included
    # the documents are those files' texts, in that order
    expected = []
    for path in files:
        data = path.read_bytes()
        if data.strip() and b"\x00" not in data:
            expected.append(data.decode("utf-8"))
        if len(expected) == 12:
            break
    assert a.documents == expected
    # the fingerprint depends on content and order
    assert load_corpus("stdlib", max_docs=11).fingerprint() != a.fingerprint()


def test_local_txt_file_folder_and_glob(tmp_path):
    docs = _write_docs(tmp_path / "corpus", 5)
    (tmp_path / "corpus" / "sub").mkdir()
    (tmp_path / "corpus" / "sub" / "nested.txt").write_text("nested document\n")
    (tmp_path / "corpus" / ".hidden.txt").write_text("hidden\n")

    single = load_corpus(str(tmp_path / "corpus" / "doc002.txt"))
    assert single.documents == [docs[2]]
    folder = load_corpus(str(tmp_path / "corpus"))
    assert folder.documents == [*docs, "nested document\n"]  # recursive, sorted by path, hidden files skipped
    assert folder.name == "corpus"
    globbed = load_corpus(str(tmp_path / "corpus" / "doc00[13].txt"))
    assert globbed.documents == [docs[1], docs[3]]
    assert load_corpus(str(tmp_path / "corpus"), max_docs=2).documents == docs[:2]
    with pytest.raises(DataError, match="matches no files"):
        load_corpus(str(tmp_path / "nothing-*.txt"))


def test_jsonl_text_field(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"text": "first doc", "body": "alpha"}, {"text": "second doc", "body": "beta"}, {"text": "  ", "body": "gamma"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    corpus = load_corpus(str(path))
    assert corpus.documents == ["first doc", "second doc"]
    assert corpus.skipped == {"empty": 1}
    assert load_corpus(str(path), text_field="body").documents == ["alpha", "beta", "gamma"]
    with pytest.raises(DataError, match="no string field 'content'"):
        load_corpus(str(path), text_field="content")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow is not installed")
def test_parquet_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": ["one doc", "two doc", ""], "id": [1, 2, 3]}), path)
    assert load_corpus(str(path)).documents == ["one doc", "two doc"]


def test_non_utf8_and_binary_files_are_skipped_and_counted(tmp_path, isolated_cache):
    folder = tmp_path / "mixed"
    docs = _write_docs(folder, 20)
    (folder / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (folder / "blank.txt").write_text("   \n")
    corpus = load_corpus(str(folder))
    assert corpus.documents == docs
    assert corpus.skipped == {"not_utf8": 1, "binary": 1, "empty": 1}
    data = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False)
    assert data.manifest["skipped"] == {"not_utf8": 1, "binary": 1, "empty": 1}

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(DataError, match="binary: 1"):
        load_corpus(str(bad))


def test_tokenizer_is_trained_once_and_keyed_by_corpus(tmp_path, isolated_cache, monkeypatch):
    folder = tmp_path / "corpus"
    _write_docs(folder, 30)
    first = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False)
    path = first.tokenizer_path
    assert path.is_file() and isolated_cache in path.parents
    assert load_corpus(str(folder)).fingerprint()[:16] in str(path)
    mtime = path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the tokenizer was retrained although it is cached")

    trainer = tokenizer_module.train_bpe
    monkeypatch.setattr(tokenizer_module, "train_bpe", no_training)
    second = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False)
    assert second.tokenizer_path == path and path.stat().st_mtime_ns == mtime
    monkeypatch.setattr(tokenizer_module, "train_bpe", trainer)

    # another corpus (or vocab size) gets its own tokenizer
    (folder / "extra.txt").write_text("a new document changes the corpus hash\n")
    third = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False)
    assert third.tokenizer_path != path
    fourth = prepare_tokens(str(folder), vocab_size=280, val_fraction=0.2, progress=False)
    assert fourth.tokenizer_path not in (path, third.tokenizer_path)


def test_token_files_are_reused(tmp_path, isolated_cache, monkeypatch):
    folder = tmp_path / "corpus"
    _write_docs(folder, 30)
    first = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False)
    files = [first.directory / name for name in ("train.npy", "val.npy", "manifest.json")]
    mtimes = [f.stat().st_mtime_ns for f in files]

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the corpus was tokenized again although token files exist")

    monkeypatch.setattr(tokens_module, "_tokenize_into", no_tokenizing)
    second = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False)
    assert second.directory == first.directory
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert np.array_equal(second.train, first.train) and np.array_equal(second.val, first.val)
    assert second.manifest == first.manifest
    assert not second.train.flags.writeable  # read-only memmap


def test_split_by_document_is_deterministic_and_disjoint(tmp_path, isolated_cache):
    flags = split_documents(200, 0.1, seed=7)
    assert flags == split_documents(200, 0.1, seed=7)
    assert flags != split_documents(200, 0.1, seed=8)
    assert 5 <= sum(flags) <= 40
    assert split_documents(3, 0.01, seed=0).count(True) == 1  # at least one val document
    assert split_documents(2, 0.49, seed=0).count(False) >= 1  # and at least one train document

    folder = tmp_path / "corpus"
    docs = _write_docs(folder, 40)
    data = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.25, split_seed=3, progress=False)
    tok = Tokenizer.from_file(str(data.tokenizer_path))
    eos = eos_id(tok)
    is_val = split_documents(len(docs), 0.25, 3)
    encoded = [tok.encode(d).ids + [eos] for d in docs]
    # each split is exactly the concatenation of its own documents, each followed by EOS
    assert data.train.tolist() == [t for ids, v in zip(encoded, is_val) if not v for t in ids]
    assert data.val.tolist() == [t for ids, v in zip(encoded, is_val) if v for t in ids]
    assert data.manifest["documents"] == {"train": is_val.count(False), "val": is_val.count(True)}
    assert data.manifest["tokens"] == {"train": len(data.train), "val": len(data.val)}
    assert tok.decode(data.train.tolist()[: len(encoded[is_val.index(False)]) - 1]) == docs[is_val.index(False)]


def test_small_vocab_uses_uint16(tmp_path, isolated_cache):
    folder = tmp_path / "corpus"
    _write_docs(folder, 20)
    data = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False)
    assert data.train.dtype == np.uint16 and data.val.dtype == np.uint16
    assert data.manifest["dtype"] == "uint16"
    assert int(data.train.max()) < data.vocab_size <= 300
    assert data.manifest["eos_id"] == eos_id(Tokenizer.from_file(str(data.tokenizer_path)))


def test_tokenizer_json_path_as_data_tokenizer(tmp_path, isolated_cache, monkeypatch):
    folder = tmp_path / "corpus"
    _write_docs(folder, 30)
    trained = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False)
    saved = tmp_path / "my-tokenizer" / "tokenizer.json"
    saved.parent.mkdir()
    saved.write_text(trained.tokenizer_path.read_text())

    monkeypatch.setenv("HASTEN_CACHE", str(tmp_path / "other-cache"))  # nothing cached: the file must be used
    monkeypatch.setattr(tokenizer_module, "train_bpe", lambda *a, **k: pytest.fail("must not train a tokenizer"))
    for spec in (str(saved), str(saved.parent)):  # the file, or a folder holding tokenizer.json
        cfg = DataConfig(source=str(folder), tokenizer=spec, val_fraction=0.2)
        data = prepare_from_config(cfg, progress=False)
        assert data.tokenizer_path == saved
        assert data.vocab_size == trained.vocab_size
        assert np.array_equal(data.train, trained.train) and np.array_equal(data.val, trained.val)
    (tmp_path / "broken.json").write_text("{not a tokenizer")
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        prepare_tokens(str(folder), tokenizer=str(tmp_path / "broken.json"), progress=False)


def test_local_hf_datasets_dir_and_hf_prefix(tmp_path):
    """A `datasets` dir saved with save_to_disk loads as a source (plain path or hf:PATH), offline."""
    datasets = pytest.importorskip("datasets")
    texts = [f"document {i}: def f(x):\n    return x * {i}\n" for i in range(12)]
    ds = datasets.Dataset.from_dict({"text": texts, "id": list(range(12))})
    ds.save_to_disk(str(tmp_path / "ds"))
    for source in (str(tmp_path / "ds"), f"hf:{tmp_path / 'ds'}"):
        corpus = load_corpus(source)
        assert corpus.documents == texts
    limited = load_corpus(str(tmp_path / "ds"), max_docs=5)
    assert limited.documents == texts[:5]
    with pytest.raises(DataError, match="no column 'body'"):
        load_corpus(str(tmp_path / "ds"), text_field="body")
