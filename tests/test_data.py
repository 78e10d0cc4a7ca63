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
from hasten.data.tokens import split_documents, split_points
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
    rows = [
        {"text": "first doc", "body": "alpha"},
        {"text": "second doc", "body": "beta"},
        {"text": "  ", "body": "gamma"},
    ]
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
    files = sorted(first.directory.glob("shard_*")) + [first.directory / "hasten-tokens.json"]
    mtimes = [f.stat().st_mtime_ns for f in files]

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the corpus was tokenized again although token files exist")

    monkeypatch.setattr(tokens_module, "_encode", no_tokenizing)
    second = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False)
    assert second.directory == first.directory
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert np.array_equal(second.train, first.train) and np.array_equal(second.val, first.val)
    assert second.manifest == first.manifest
    assert not second.train[0:5].flags.writeable  # read-only memory maps of the shards


def test_split_by_tokens_is_exact_deterministic_and_disjoint(tmp_path, isolated_cache):
    lengths = [random.Random(i).randrange(5, 400) for i in range(200)]
    starts = split_points(lengths, 0.1, seed=7)
    assert starts == split_points(lengths, 0.1, seed=7) and starts != split_points(lengths, 0.1, seed=8)
    assert sum(n - s for n, s in zip(lengths, starts)) == round(0.1 * sum(lengths))  # the stated share, to the token
    assert sum(0 < s < n for n, s in zip(lengths, starts)) <= 1  # whole documents, plus the tail of at most one
    assert split_points([1000], 0.02, seed=0) == [980]  # one document: a 2% tail
    assert split_points([3, 1], 0.9, seed=0) in ([0, 1], [1, 0])  # never all of it: at least one train token

    folder = tmp_path / "corpus"
    docs = _write_docs(folder, 40)
    data = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.25, split_seed=3, progress=False)
    tok = Tokenizer.from_file(str(data.tokenizer_path))
    eos = eos_id(tok)
    encoded = [tok.encode(d).ids + [eos] for d in docs]
    starts = split_points([len(ids) for ids in encoded], 0.25, 3)
    # each split is exactly its documents' tokens (the cut one's head in train, its tail in val), in corpus order
    assert data.train.tolist() == [t for ids, s in zip(encoded, starts) for t in ids[:s]]
    assert data.val.tolist() == [t for ids, s in zip(encoded, starts) for t in ids[s:]]
    assert len(data.val) == round(0.25 * sum(len(ids) for ids in encoded))
    assert data.manifest["tokens"] == {"train": len(data.train), "val": len(data.val)}
    assert data.manifest["documents"]["total"] == 40 and data.manifest["documents"]["cut"] <= 1


def test_one_file_or_a_few_large_files_get_the_stated_val_share(tmp_path, isolated_cache):
    """Split by documents, one file had no validation data at all and two files put 71% of the tokens into it."""
    one = tmp_path / "book.txt"
    one.write_text("".join(_doc(random.Random(i), 40) for i in range(300)))
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.txt").write_text("".join(_doc(random.Random(i), 40) for i in range(100)))
    (two / "b.txt").write_text("".join(_doc(random.Random(i), 40) for i in range(250)))
    for source in (one, two):
        data = prepare_tokens(str(source), vocab_size=300, val_fraction=0.02, progress=False)
        share = len(data.val) / (len(data.train) + len(data.val))
        assert abs(share - 0.02) < 1e-3, (source, share)
        assert len(data.val) > 100 and data.manifest["documents"]["cut"] == 1


def test_split_version_1_is_kept_for_runs_that_started_with_it(tmp_path, isolated_cache):
    folder = tmp_path / "corpus"
    docs = _write_docs(folder, 40)
    data = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.25, split_seed=3, progress=False, split_version=1)
    tok = Tokenizer.from_file(str(data.tokenizer_path))
    is_val = split_documents(len(docs), 0.25, 3)
    encoded = [tok.encode(d).ids + [eos_id(tok)] for d in docs]
    assert data.train.tolist() == [t for ids, v in zip(encoded, is_val) if not v for t in ids]
    assert data.val.tolist() == [t for ids, v in zip(encoded, is_val) if v for t in ids]
    # the split is a view of the token dir: version 2 reads the same shards
    assert (
        prepare_tokens(str(folder), vocab_size=300, val_fraction=0.25, split_seed=3, progress=False).directory
        == data.directory
    )


def test_hidden_folders_virtual_envs_and_empty_sources_are_never_read(tmp_path, monkeypatch):
    docs = _write_docs(tmp_path / "corpus", 3)
    for folder in (".git", ".venv/lib", "env/lib", "pkg/__pycache__"):
        (tmp_path / "corpus" / folder).mkdir(parents=True)
        (tmp_path / "corpus" / folder / "x.txt").write_text(f"inside {folder}\n")
    (tmp_path / "corpus" / "env" / "pyvenv.cfg").write_text("home = /usr\n")  # a venv under any name
    assert load_corpus(str(tmp_path / "corpus")).documents == docs
    assert load_corpus(str(tmp_path / "corpus" / "**" / "*.txt")).documents == docs  # globs too
    assert [f["path"] for f in load_corpus(str(tmp_path / "corpus")).files] == [f"doc{i:03d}.txt" for i in range(3)]
    monkeypatch.chdir(tmp_path / "corpus")
    assert load_corpus(".").documents == docs  # the current folder only when asked for explicitly
    for empty in ("", "  "):
        with pytest.raises(DataError, match="data.source is empty"):
            load_corpus(empty)


def test_an_edited_corpus_is_named_file_by_file(tmp_path, isolated_cache):
    folder = tmp_path / "corpus"
    _write_docs(folder, 6)
    data = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False)
    assert [f["bytes"] for f in data.corpus["files"]] == [(folder / f"doc{i:03d}.txt").stat().st_size for i in range(6)]
    assert [f["sha256"] for f in data.corpus["files"]] == [f["sha256"] for f in load_corpus(str(folder)).files]
    prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False, expect=data.corpus)  # unchanged: fine
    with open(folder / "doc001.txt", "a") as f:
        f.write("one more line\n")
    (folder / "doc004.txt").unlink()
    (folder / "new.txt").write_text(
        "a new file\n"
    )  # an added file alone is no reason to refuse (the run keeps its own)
    tokenizers = set((isolated_cache / "tokenizers").iterdir())
    with pytest.raises(
        DataError, match=r"changed since this run started \(doc001.txt edited \(.*\), doc004.txt deleted\)"
    ):
        prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False, expect=data.corpus)
    assert set((isolated_cache / "tokenizers").iterdir()) == tokenizers  # refused before any tokenizer was trained


def test_a_broken_token_cache_or_cached_tokenizer_is_rebuilt(tmp_path, isolated_cache, capsys):
    folder = tmp_path / "corpus"
    _write_docs(folder, 30)
    good = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False)
    train, val = np.array(good.train), np.array(good.val)
    for damage in ("truncate", "flip", "manifest"):
        target = good.directory / ("hasten-tokens.json" if damage == "manifest" else "shard_000000.bin")
        raw = bytearray(target.read_bytes())
        if damage == "truncate":
            raw = raw[: len(raw) // 2]
        elif damage == "flip":
            raw[-3] ^= 0xFF
        else:
            raw = bytearray(b"{not json")
        target.write_bytes(bytes(raw))
        again = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False)
        assert "token dir" in capsys.readouterr().err
        assert np.array_equal(again.train, train) and np.array_equal(again.val, val), damage
    tokenizer = good.tokenizer_path
    tokenizer.write_text(
        tokenizer.read_text().replace('"the"', '"teh"', 1) if '"the"' in tokenizer.read_text() else "{}"
    )
    again = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False)
    assert "cached tokenizer" in capsys.readouterr().err
    assert np.array_equal(again.train, train)


def test_unreadable_parquet_and_unreachable_hf_dataset_are_data_errors(tmp_path, monkeypatch):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet" * 10)
    with pytest.raises(DataError, match="not a readable parquet file"):
        load_corpus(str(bad))
    datasets = pytest.importorskip("datasets")

    def offline(
        name, split=None, **kwargs
    ):  # what datasets raises offline (HF_HUB_OFFLINE=1 is read when it is first imported)
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"could not be loaded \(ConnectionError: Couldn't reach"):
        load_corpus("hf:nobody-here/no-such-dataset")


def test_small_vocab_uses_uint16(tmp_path, isolated_cache):
    folder = tmp_path / "corpus"
    _write_docs(folder, 20)
    data = prepare_tokens(str(folder), vocab_size=300, val_fraction=0.2, progress=False)
    assert data.train.dtype == np.uint16 and data.val.dtype == np.uint16
    assert data.manifest["dtype"] == "uint16"
    assert int(np.asarray(data.train).max()) < data.vocab_size <= 300
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
