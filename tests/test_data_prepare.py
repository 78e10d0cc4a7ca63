"""Streaming preparation into token shards: the same tokens whatever the workers, bounded pieces of long documents,
a killed preparation that continues to identical files, files appended alone, no corpus re-hash on a warm start,
prepared token dirs (data.tokens, --out), odd corpus files (issue 24 cases 6 and 7), and the split's equality with
the order it had before shards (random.sample)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

import hasten.data.corpus as corpus_module
import hasten.data.encoding as encoding_module
import hasten.data.tokens as tokens_module
from hasten.cli import main
from hasten.data.corpus import pieces, resolve_source
from hasten.data.split import split_documents, split_points
from hasten.data.tokenizer import TOKENIZER_LINE_CHARS, eos_id, train_bpe, training_sample
from hasten.data.tokens import prepare_tokens
from hasten.errors import DataError

WORDS = (
    "the model reads data and learns to predict each next token from the tokens before it in order; "
    "def f(x): return x + 1 while True: pass"
).split()


def _text(rng: random.Random, n_words: int) -> str:
    lines, line = [], []
    for _ in range(n_words):
        line.append(rng.choice(WORDS))
        if rng.random() < 0.12:
            lines.append(("    " if rng.random() < 0.3 else "") + " ".join(line) + (" " if rng.random() < 0.05 else ""))
            line = []
    return "\n".join(lines + [" ".join(line)]) + "\n"


def _folder(path: Path, n: int, words: int = 120, seed: int = 0, prefix: str = "doc") -> list[str]:
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    docs = [_text(rng, words + rng.randrange(words)) for _ in range(n)]
    for i, doc in enumerate(docs):
        (path / f"{prefix}{i:04d}.txt").write_text(doc)
    return docs


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    """A byte-level BPE saved as a file: data.tokenizer=FILE keeps the tokenizer fixed while a corpus grows."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    rng = random.Random(99)
    path.write_text(train_bpe([_text(rng, 400) for _ in range(40)], 300).to_str())
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("HASTEN_CACHE", str(path))
    return path


def _expected_stream(docs: list[str], tokenizer: Path) -> list[int]:
    tok = Tokenizer.from_file(str(tokenizer))
    return [t for doc in docs for t in [*tok.encode(doc).ids, eos_id(tok)]]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HASTEN_CACHE": str(cache), "PYTHONPATH": os.pathsep.join(sys.path)}


def _shard_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("shard_*"))}


# ---------------------------------------------------------------------------------------------- split


def _split_before_shards(lengths: list[int], val_fraction: float, seed: int) -> list[int]:
    """The split as it was written before token shards (whole lists in memory, random.sample)."""
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


def _coin_split_before_shards(n_docs: int, val_fraction: float, seed: int) -> list[bool]:
    rng = random.Random(seed)
    flags = [rng.random() < val_fraction for _ in range(n_docs)]
    if not any(flags):
        flags[rng.randrange(n_docs)] = True
    if all(flags):
        flags[0] = False
    return flags


def test_lazy_split_equals_the_split_of_random_sample():
    rng = random.Random(0)
    for n in [1, 2, 3, 4, 5, 6, 7, 50, 997, 3000]:
        for seed in range(4):
            lengths = [rng.randrange(1, 500) for _ in range(n)]
            if sum(lengths) < 2:
                continue
            for fraction in (0.01, 0.1, 0.45):
                before = _split_before_shards(lengths, fraction, seed)
                assert split_points(lengths, fraction, seed) == before, (n, seed, fraction)
                assert split_documents(n, fraction, seed) == _coin_split_before_shards(n, fraction, seed)


# ---------------------------------------------------------------------------------------------- shards


def test_shards_hold_the_same_tokens_whatever_the_workers(tmp_path, cache, tokenizer_file, monkeypatch):
    docs = _folder(tmp_path / "corpus", 60)
    expected = _expected_stream(docs, tokenizer_file)
    layouts = []
    for workers, chunk_chars in ((1, None), (1, 3000), (2, 3000), (3, 700)):  # in-process, then 1-3 worker processes
        monkeypatch.setattr(encoding_module, "CHUNK_CHARS", chunk_chars or encoding_module.CHUNK_CHARS)
        data = prepare_tokens(
            str(tmp_path / "corpus"),
            tokenizer=str(tokenizer_file),
            shard_tokens=1500,
            num_workers=workers,
            val_fraction=0.1,
            progress=False,
            out=tmp_path / f"out-{workers}-{chunk_chars}",
        )
        layouts.append(_shard_files(data.directory))
        manifest = json.loads((data.directory / "hasten-tokens.json").read_text())
        stream = np.concatenate(
            [np.fromfile(data.directory / f"{s['name']}.bin", dtype="<u2") for s in manifest["shards"]]
        )
        assert stream.tolist() == expected  # every document's ids and EOS, in corpus order
        ends = [np.load(data.directory / f"{s['name']}.idx.npy") for s in manifest["shards"]]
        assert [len(e) for e in ends] == [s["documents"] for s in manifest["shards"]] and sum(map(len, ends)) == 60
        for s, e in zip(manifest["shards"][:-1], ends):  # a shard closes at the first document end past shard_tokens
            assert s["tokens"] == e[-1] >= 1500 and e[-2] < 1500
        # the split views read across shard boundaries like one array
        whole = np.concatenate([np.asarray(data.train), np.asarray(data.val)])
        assert sorted(whole.tolist()) == sorted(expected)
        train = np.asarray(data.train)
        for a, b in [(0, 1), (1499, 1503), (0, len(train)), (len(train) - 3, len(train) + 5), (700, 4200)]:
            assert data.train[a:b].tolist() == train[a:b].tolist()
        assert data.train[-1] == train[-1]
    assert len(layouts[0]) > 3 and all(layout == layouts[0] for layout in layouts)


def test_a_long_document_is_encoded_in_pieces_that_give_the_same_ids(tmp_path, cache, tokenizer_file, monkeypatch):
    rng = random.Random(5)
    book = "".join(_text(rng, 300) + ("\n" if i % 3 == 0 else "") for i in range(40))
    tok = Tokenizer.from_file(str(tokenizer_file))
    monkeypatch.setattr(corpus_module, "PIECE_CHARS", 700)
    parts = list(pieces(book))
    assert len(parts) > 10 and "".join(parts) == book and max(map(len, parts)) <= 700
    # cut where the pre-tokenizer splits anyway: the pieces' ids are the whole's
    assert [i for p in parts for i in tok.encode(p).ids] == tok.encode(book).ids
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "book.txt").write_text(book)  # a long file is read in pieces too
    (tmp_path / "corpus" / "b.jsonl").write_text(json.dumps({"text": book}) + "\n")
    data = prepare_tokens(str(tmp_path / "corpus"), tokenizer=str(tokenizer_file), val_fraction=0.1, progress=False)
    assert data.manifest["documents"]["total"] == 2  # one document each, EOS after the last piece only
    stream = np.concatenate([np.asarray(data.train), np.asarray(data.val)])
    assert stream.tolist() == _expected_stream([book, book], tokenizer_file)


def test_a_killed_preparation_continues_to_the_same_files(tmp_path, tokenizer_file):
    """SIGKILL while shard 4 is half-written (workers running): the rerun continues after shard 3 and ends with the
    files of an uninterrupted preparation; no worker outlives the kill."""
    corpus = tmp_path / "corpus"
    rng = random.Random(1)
    with open(corpus.with_suffix(".jsonl"), "w") as f:  # 1.5 MB in 2 files: more than one chunk, so workers start
        for i in range(700):
            f.write(json.dumps({"text": _text(rng, 300)}) + "\n" + ("\n" if i % 50 == 0 else ""))
    corpus.mkdir()
    os.replace(corpus.with_suffix(".jsonl"), corpus / "a.jsonl")
    _folder(corpus, 30, words=2000, prefix="b")
    argv = [
        sys.executable,
        "-m",
        "hasten",
        "prepare-data",
        "--set",
        f"data.source={corpus}",
        "--set",
        f"data.tokenizer={tokenizer_file}",
        "--set",
        "data.shard_tokens=40000",
        "--set",
        "data.num_workers=2",
    ]

    def prepare(cache: Path, fault: str | None = None) -> tuple[int, str, int]:
        extra = {"HASTEN_FAULT_AT": fault} if fault else {}
        proc = subprocess.Popen(
            argv,
            env={**_env(cache), **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        _, err = proc.communicate(timeout=600)
        return proc.returncode, err, proc.pid  # its session id is its pid: every worker is in that session

    code, err, session = prepare(tmp_path / "a", "shard:4")
    assert code == -signal.SIGKILL, err[-2000:]
    directory = next((tmp_path / "a" / "tokens").iterdir())
    manifest = json.loads((directory / "hasten-tokens.json").read_text())
    assert not manifest["complete"] and [s["name"] for s in manifest["shards"]] == [f"shard_{i:06d}" for i in range(4)]
    assert (directory / ".shard_000004.bin.tmp").is_file()  # the half-written shard, never listed
    deadline = time.time() + 10
    while _session_alive(session):  # the workers die with the killed process
        assert time.time() < deadline, "a worker of the killed preparation is still running"
        time.sleep(0.2)
    code, err, _ = prepare(tmp_path / "a")
    assert code == 0, err[-2000:]
    code, err, _ = prepare(tmp_path / "b")
    assert code == 0, err[-2000:]
    other = next((tmp_path / "b" / "tokens").iterdir())
    assert directory.name == other.name
    files = _shard_files(directory)
    assert len(files) > 12 and files == _shard_files(other)
    keep = ("name", "tokens", "documents", "sha256", "index_sha256", "end", "skipped")
    shards = [json.loads((d / "hasten-tokens.json").read_text())["shards"] for d in (directory, other)]
    assert [{k: s[k] for k in keep} for s in shards[0]] == [{k: s[k] for k in keep} for s in shards[1]]
    assert not list(directory.glob(".shard_*"))


def _session_alive(session: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":  # fields: state, ppid, pgrp, session
            return True
    return False


def test_an_added_file_is_encoded_alone_and_appended(tmp_path, cache, tokenizer_file, monkeypatch):
    folder = tmp_path / "corpus"
    docs = _folder(folder, 12)
    settings = {"tokenizer": str(tokenizer_file), "shard_tokens": 2000, "val_fraction": 0.1, "progress": False}
    first = prepare_tokens(str(folder), **settings)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in first.directory.glob("shard_*")}
    added = _text(random.Random(7), 500)
    (folder / "a-new.txt").write_text(added)  # sorts first, read last: appended after what was prepared
    encoded: list[str] = []
    real = encoding_module.encode_pieces

    def spy(tokenizer, texts, last, eos, dtype):
        encoded.extend(texts)
        return real(tokenizer, texts, last, eos, dtype)

    monkeypatch.setattr(encoding_module, "encode_pieces", spy)
    second = prepare_tokens(str(folder), **settings)
    assert encoded == [added]  # only the new file was read and encoded
    assert second.directory == first.directory
    kept = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in first.directory.glob("shard_*") if p.name in before}
    assert kept == before
    assert len(list(second.directory.glob("shard_*.bin"))) > len([n for n in before if n.endswith(".bin")])
    total = len(second.train) + len(second.val)
    assert total == len(_expected_stream([*docs, added], tokenizer_file))
    assert [f["path"] for f in second.corpus["files"]][-1] == "a-new.txt"
    # a run that started before keeps its own documents and split
    encoded.clear()
    again = prepare_tokens(str(folder), **settings, expect=first.corpus)
    assert encoded == [] and again.corpus == first.corpus
    assert np.array_equal(again.train, first.train) and np.array_equal(again.val, first.val)


def test_a_bpe_corpus_larger_than_its_sample_keeps_its_tokenizer_when_a_file_is_added(tmp_path, cache):
    folder = tmp_path / "corpus"
    _folder(folder, 8, words=600)
    settings = {"vocab_size": 300, "tokenizer_sample_bytes": 4000, "val_fraction": 0.1, "progress": False}
    first = prepare_tokens(str(folder), **settings)
    sample = list(training_sample(resolve_source(str(folder)), 4000))
    assert sum(len(s.encode()) for s in sample) == 4000
    assert "".join(sample) == (folder / "doc0000.txt").read_text()[:4000]
    _folder(folder, 1, seed=3, prefix="z")  # after the sample: same tokenizer, so the file is appended
    second = prepare_tokens(str(folder), **settings)
    assert second.tokenizer_path == first.tokenizer_path and second.directory == first.directory
    assert second.corpus["shards"][: len(first.corpus["shards"])] == first.corpus["shards"]


def test_a_warm_start_hashes_only_changed_files(tmp_path, cache, tokenizer_file, monkeypatch):
    folder = tmp_path / "corpus"
    _folder(folder, 10)
    first = prepare_tokens(str(folder), tokenizer=str(tokenizer_file), val_fraction=0.1, progress=False)
    hashed: list[str] = []
    real = tokens_module.sha256_file

    def spy(path):
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(tokens_module, "sha256_file", spy)
    monkeypatch.setattr(corpus_module, "sha256_file", spy)
    prepare_tokens(str(folder), tokenizer=str(tokenizer_file), val_fraction=0.1, progress=False, expect=first.corpus)
    assert hashed == []  # size and mtime unchanged: nothing read
    os.utime(folder / "doc0003.txt")  # touched, not changed
    prepare_tokens(str(folder), tokenizer=str(tokenizer_file), val_fraction=0.1, progress=False, expect=first.corpus)
    assert set(hashed) == {"doc0003.txt"}
    hashed.clear()
    prepare_tokens(str(folder), tokenizer=str(tokenizer_file), val_fraction=0.1, progress=False, expect=first.corpus)
    assert hashed == []  # its new mtime was recorded
    prepare_tokens(str(folder), tokenizer=str(tokenizer_file), val_fraction=0.1, progress=False, rehash=True)
    assert sorted(set(hashed)) == sorted(p.name for p in folder.iterdir())
    # an edited file: a new preparation encodes the corpus again; a run that started before is refused
    (folder / "doc0005.txt").write_text("edited\n")
    with pytest.raises(DataError, match=r"doc0005.txt edited"):
        prepare_tokens(
            str(folder), tokenizer=str(tokenizer_file), val_fraction=0.1, progress=False, expect=first.corpus
        )
    fresh = prepare_tokens(str(folder), tokenizer=str(tokenizer_file), val_fraction=0.1, progress=False)
    assert fresh.corpus["shards"] != first.corpus["shards"]


def test_val_tokens_is_exact(tmp_path, cache, tokenizer_file):
    _folder(tmp_path / "corpus", 20)
    data = prepare_tokens(str(tmp_path / "corpus"), tokenizer=str(tokenizer_file), val_tokens=777, progress=False)
    assert len(data.val) == 777 and data.manifest["val_tokens"] == 777
    with pytest.raises(DataError, match="data.val_tokens"):
        prepare_tokens(str(tmp_path / "corpus"), tokenizer=str(tokenizer_file), val_tokens=10**9, progress=False)


def test_hf_names_are_streamed(tmp_path, cache, tokenizer_file, monkeypatch):
    datasets = pytest.importorskip("datasets")
    texts = [_text(random.Random(i), 80) for i in range(30)] + ["   "]
    calls = []

    def load_dataset(name, split=None, streaming=False, **kwargs):
        calls.append((name, split, streaming))
        return datasets.IterableDataset.from_generator(lambda: ({"text": t, "id": i} for i, t in enumerate(texts)))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    data = prepare_tokens("hf:someone/corpus", tokenizer=str(tokenizer_file), val_fraction=0.1, progress=False)
    assert calls == [("someone/corpus", "train", True)]
    assert data.manifest["documents"]["total"] == 30 and data.corpus["files"] is None
    stream = np.concatenate([np.asarray(data.train), np.asarray(data.val)])
    assert stream.size == len(_expected_stream(texts[:30], tokenizer_file))
    prepare_tokens("hf:someone/corpus", tokenizer=str(tokenizer_file), val_fraction=0.1, progress=False)
    assert len(calls) == 1  # prepared once: not streamed again


# ---------------------------------------------------------------------------------------------- token dirs


def _prepare_argv(*sets: str, out: Path | None = None) -> list[str]:
    argv = ["prepare-data"]
    for item in sets:
        argv += ["--set", item]
    return argv + (["--out", str(out)] if out is not None else [])


def test_a_prepared_token_dir_is_read_with_data_tokens(tmp_path, cache, tokenizer_file, capsys):
    _folder(tmp_path / "corpus", 20)
    sets = [f"data.source={tmp_path / 'corpus'}", f"data.tokenizer={tokenizer_file}", "data.val_fraction=0.1"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes\n")
    assert main(_prepare_argv(*sets, out=mine)) == 2  # the user's folder is refused, untouched
    assert "not empty" in capsys.readouterr().err and [p.name for p in mine.iterdir()] == ["notes.txt"]
    out = tmp_path / "tokens"
    assert main(_prepare_argv(*sets, out=out)) == 0
    assert f"data.tokens={out}" in capsys.readouterr().out
    reference = prepare_tokens(
        str(tmp_path / "corpus"), tokenizer=str(tokenizer_file), val_fraction=0.1, progress=False
    )
    (tmp_path / "corpus" / "doc0001.txt").unlink()  # data.tokens never reads the corpus
    shared = prepare_tokens("stdlib", tokens=str(out), val_fraction=0.1, progress=False)
    assert np.array_equal(shared.train, reference.train) and np.array_equal(shared.val, reference.val)
    assert shared.tokenizer_path == out / "tokenizer.json" and shared.corpus["shards"] == reference.corpus["shards"]
    manifest = json.loads((out / "hasten-tokens.json").read_text())
    with open(out / "shard_000000.bin", "r+b") as f:  # damaged: one line, no traceback
        f.truncate(10)
    with pytest.raises(DataError, match="is damaged .*prepare-data --out"):
        prepare_tokens("stdlib", tokens=str(out), progress=False)
    manifest["complete"] = False
    (out / "hasten-tokens.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="is not finished"):
        prepare_tokens("stdlib", tokens=str(out), progress=False)
    with pytest.raises(DataError, match="is not a prepared token dir"):
        prepare_tokens("stdlib", tokens=str(mine), progress=False)


# ---------------------------------------------------------------------------------------------- odd corpora (issue 24)


@pytest.mark.timeout(120)
def test_fifos_devices_and_sockets_are_skipped_and_named(tmp_path, capsys, cache, tokenizer_file):
    """Issue 24 case 7: a FIFO hung preparation and a symlink to /dev/zero gave a MemoryError traceback."""
    folder = tmp_path / "corpus"
    _folder(folder, 8)
    os.mkfifo(folder / "pipe.txt")
    (folder / "zero.txt").symlink_to("/dev/zero")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "sock"))
    try:
        argv = _prepare_argv(f"data.source={folder}", f"data.tokenizer={tokenizer_file}", "data.val_fraction=0.1")
        assert main(argv) == 0
    finally:
        server.close()
    out = capsys.readouterr().out
    assert "8 documents" in out and "not_regular: 3 (pipe.txt, sock, zero.txt)" in out
    for odd in ("pipe.txt", "zero.txt"):  # named directly as the source: one line
        with pytest.raises(DataError, match="is a (FIFO|character device), not a regular file"):
            prepare_tokens(str(folder / odd), tokenizer=str(tokenizer_file), progress=False)


@pytest.mark.timeout(180)
def test_a_long_line_without_whitespace_trains_the_tokenizer_quickly(tmp_path, cache):
    """Issue 24 case 7: a 1 MB line without whitespace kept BPE training busy for minutes (quadratic in the word)."""
    folder = tmp_path / "corpus"
    _folder(folder, 10)
    (folder / "blob.txt").write_text("a" * (1 << 20) + "\n")
    sample = list(training_sample(resolve_source(str(folder)), 1 << 30))
    assert max(len(line) for s in sample for line in s.split("\n")) == TOKENIZER_LINE_CHARS
    began = time.perf_counter()
    data = prepare_tokens(str(folder), vocab_size=400, val_fraction=0.1, progress=False)
    assert time.perf_counter() - began < 60  # before: minutes
    assert data.manifest["documents"]["total"] == 11


@pytest.mark.slow  # encodes a 24 MB line
def test_a_huge_single_line_file_keeps_memory_bounded(tmp_path):
    """Issue 24 case 7: a 200 MB single-line file aborted the tokenizer (exit 134): encoding one document took ~165
    bytes per character (3.3 GB for 20 MB). Read and encoded in 1 MiB pieces, a 24 MB line stays under 1 GB per
    process."""
    folder = tmp_path / "corpus"
    _folder(folder, 5)
    rng = random.Random(3)
    with open(folder / "line.txt", "w") as f:
        for _ in range(24):
            f.write(" ".join(rng.choice(WORDS) for _ in range(200_000))[: 1 << 20])
    probe = (
        "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    argv = [
        sys.executable,
        "-c",
        probe,
        sys.executable,
        "-m",
        "hasten",
        "prepare-data",
        "--set",
        f"data.source={folder}",
        "--set",
        "data.vocab_size=300",
        "--set",
        "data.num_workers=2",
    ]
    env = _env(tmp_path / "cache")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    code, peak_kb = map(int, done.stdout.split()[-2:])
    assert code == 0, done.stderr[-2000:]
    assert "6 documents" in done.stdout
    assert peak_kb < 1024 * 1024, f"a process of the preparation peaked at {peak_kb / 1024:.0f} MB"


def test_a_run_dir_inside_its_own_corpus_is_not_read(tmp_path, monkeypatch, capsys, tiny_overrides):
    """Issue 24 case 6: data.source=. with the default runs/ worked once; then resume, eval and new runs failed with
    'metrics.jsonl:1 has no string field text'."""
    folder = tmp_path / "project"
    _folder(folder, 40, words=400)
    monkeypatch.chdir(folder)
    sets = [
        *[s for s in tiny_overrides if not s.startswith("data.max_docs")],
        "data.source=.",
        "data.vocab_size=300",
        "data.val_fraction=0.2",
        "train.max_steps=4",
        "train.checkpoint_every=2",
        "train.eval_every=2",
        "name=inside",
    ]
    argv = [a for s in sets for a in ("--set", s)]
    assert main(["train", *argv]) == 0
    run = next(Path("runs").iterdir())
    assert main(["train", "--resume", "--run-dir", str(run), "--set", "train.max_steps=6"]) == 0
    assert main(["eval", str(run)]) == 0
    assert main(["train", *argv]) == 0  # a new run beside it
    err = capsys.readouterr().err
    assert "no string field" not in err and "changed since" not in err
    assert len(list(Path("runs").iterdir())) == 2
    again = prepare_tokens(".", vocab_size=300, val_fraction=0.2, progress=False)
    assert again.manifest["documents"]["total"] == 40
    assert "hasten_output: 2 (runs/inside-" in tokens_module.skipped_summary(again.manifest)


def test_a_local_datasets_folder_is_prepared_and_fingerprinted_by_its_files(tmp_path, cache, tokenizer_file):
    datasets = pytest.importorskip("datasets")
    texts = [_text(random.Random(i), 80) for i in range(25)]
    datasets.Dataset.from_dict({"text": texts, "id": list(range(25))}).save_to_disk(str(tmp_path / "ds"))
    data = prepare_tokens(str(tmp_path / "ds"), tokenizer=str(tokenizer_file), val_fraction=0.1, progress=False)
    assert data.manifest["documents"]["total"] == 25 and data.corpus["files"]
    stream = np.concatenate([np.asarray(data.train), np.asarray(data.val)])
    assert stream.size == len(_expected_stream(texts, tokenizer_file))
    again = prepare_tokens(
        f"hf:{tmp_path / 'ds'}", tokenizer=str(tokenizer_file), val_fraction=0.1, progress=False, expect=data.corpus
    )
    assert np.array_equal(again.train, data.train)


def test_two_processes_preparing_one_corpus_share_the_work(tmp_path, tokenizer_file):
    """The benchmark starts two jobs on one corpus at once: one prepares, the other waits, then reads the same dir."""
    _folder(tmp_path / "corpus", 300, words=400)
    code = (
        "import sys; from hasten.data.tokens import prepare_tokens; "
        f"d = prepare_tokens({str(tmp_path / 'corpus')!r}, tokenizer={str(tokenizer_file)!r}, num_workers=1, "
        "progress=True); print(d.directory, len(d.train), len(d.val))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=_env(tmp_path / "cache"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [proc.communicate(timeout=300) for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert outs[0][0] == outs[1][0]  # the same dir and split
    assert sum("hasten: prepared" in err for _, err in outs) == 1  # encoded once
