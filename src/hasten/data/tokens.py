"""Token data of a corpus: prepared once into a token dir of shards, then reused, checked and split.

Preparation streams: the corpus is read in order (hasten.data.corpus), encoded by `data.num_workers`
processes (hasten.data.encoding) and written as shards as they fill (hasten.data.shards). Memory is
set by the settings, never by the corpus (about 0.3 GB plus 0.25 GB per worker). A killed preparation
continues from its last complete shard and ends with the same files as an uninterrupted one; files
added to a folder corpus are read alone and appended as new shards.

A token dir lives in the cache (<cache>/tokens/<corpus>-<key>/, the key covering the source, text field,
max_docs, the tokenizer's sha256 and the shard size) or where `hasten prepare-data --out DIR` put it;
`data.tokens=DIR` then trains on it without touching the corpus (e.g. from several nodes). Its manifest
records every corpus file with size, mtime and sha256: each use stats the files, and re-hashes only those
whose size or mtime changed (all of them with data.rehash), so a resume never re-reads the corpus.
The train/validation split is computed from document lengths (hasten.data.split), never stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock
from tqdm.auto import tqdm

from hasten.data.corpus import (
    CorpusFile,
    DocumentReader,
    Skipped,
    Source,
    corpus_changes,
    empty_corpus_error,
    fingerprint,
    resolve_source,
    sha256_file,
)
from hasten.data.encoding import Encoder, chunks
from hasten.data.shards import (
    FORMAT,
    MANIFEST,
    ShardSet,
    ShardWriter,
    TokenView,
    read_manifest,
    shard_problem,
    write_manifest,
)
from hasten.data.split import SPLIT_VERSION, split_documents, split_points, split_view
from hasten.data.tokenizer import TOKENIZER_SAMPLE_BYTES, cache_root, eos_id, load_tokenizer, tokenizer_hash
from hasten.errors import DataError
from hasten.files import atomic_write

SHARD_TOKENS = 1 << 26  # data.shard_tokens' default: 128 MiB of uint16 per shard
__all__ = [
    "SHARD_TOKENS",
    "SPLIT_VERSION",
    "TokenData",
    "check_fits",
    "prepare_from_config",
    "prepare_tokens",
    "split_documents",
    "split_points",
]


@dataclass
class TokenData:
    """Train and validation token streams (read-only views of memory-mapped shards) plus their summary."""

    train: TokenView
    val: TokenView
    manifest: dict
    directory: Path
    tokenizer_path: Path
    corpus: dict = field(default_factory=dict)  # the corpus fingerprint a run records (corpus.json)

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])


@dataclass
class _Settings:
    text_field: str
    max_docs: int | None
    shard_tokens: int
    num_workers: int
    rehash: bool
    progress: bool


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def prepare_from_config(
    data_cfg,
    progress: bool = True,
    expect: dict | None = None,
    tokenizer: str | None = None,
    split_version: int = SPLIT_VERSION,
    out: str | Path | None = None,
) -> TokenData:
    """`tokenizer` overrides data.tokenizer (a resumed run tokenizes with its own tokenizer.json); `out` prepares
    into that folder instead of the cache (hasten prepare-data --out)."""
    return prepare_tokens(
        data_cfg.source,
        text_field=data_cfg.text_field,
        tokenizer=tokenizer or data_cfg.tokenizer,
        vocab_size=data_cfg.vocab_size,
        val_fraction=data_cfg.val_fraction,
        val_tokens=data_cfg.val_tokens,
        split_seed=data_cfg.split_seed,
        max_docs=data_cfg.max_docs,
        cache_dir=data_cfg.cache_dir,
        progress=progress,
        expect=expect,
        split_version=split_version,
        num_workers=data_cfg.num_workers,
        tokenizer_sample_bytes=data_cfg.tokenizer_sample_bytes,
        shard_tokens=data_cfg.shard_tokens,
        rehash=data_cfg.rehash,
        tokens=data_cfg.tokens,
        out=out,
    )


def prepare_tokens(
    source: str = "stdlib",
    *,
    text_field: str = "text",
    tokenizer: str = "bpe",
    vocab_size: int = 4096,
    val_fraction: float = 0.02,
    val_tokens: int | None = None,
    split_seed: int = 1234,
    max_docs: int | None = None,
    cache_dir: str = "~/.cache/hasten",
    progress: bool = True,
    expect: dict | None = None,
    split_version: int = SPLIT_VERSION,
    num_workers: int | None = None,
    tokenizer_sample_bytes: int = TOKENIZER_SAMPLE_BYTES,
    shard_tokens: int = SHARD_TOKENS,
    rehash: bool = False,
    tokens: str | Path | None = None,
    out: str | Path | None = None,
) -> TokenData:
    """The token data of a corpus: its token dir (prepared now if needed, else reused) split into train and val.

    `expect` is the corpus record a run keeps (TokenData.corpus): an edited or deleted file is refused with one
    line *before* any tokenizer is trained or any file written, and the run gets exactly its own documents (files
    added since are left to new runs). `tokens` reads a prepared token dir instead of the corpus.
    """
    settings = _Settings(text_field, max_docs, shard_tokens, num_workers or default_workers(), rehash, progress)
    if tokens is not None:
        directory, manifest = _open_token_dir(Path(tokens).expanduser(), rehash)
        tok_path = directory / "tokenizer.json"
        own = Path(tokenizer).expanduser()
        if tokenizer != "bpe" and own.is_file() and tokenizer_hash(own) != manifest["tokenizer_hash"]:
            raise DataError(
                f"data.tokens={tokens} was encoded with another tokenizer than {tokenizer}; prepare it "
                "with this run's tokenizer (hasten prepare-data --out NEW_DIR --set data.tokenizer=...)"
            )
        files = [r for r in manifest["files"] if r.get("sha256")] if manifest["files"] is not None else None
        if expect is not None and expect.get("files") is not None and files is not None:
            _refuse_changes(expect, files)
        shards = _prefix(manifest, expect)
        return _token_data(
            directory,
            manifest,
            shards,
            tok_path,
            manifest["source"],
            split_version,
            val_fraction,
            val_tokens,
            split_seed,
            expect,
        )

    src = resolve_source(source, text_field)
    wanted = src.files if src.dataset is None else None
    if expect is not None and expect.get("files") is not None and src.files is not None:
        run_files = _check_expected_files(expect, src, tokenizer, settings, cache_dir)
        wanted = run_files if src.dataset is None else None
    elif expect is not None and src.files is None and "format" not in expect:
        _check_legacy_fingerprint(expect, src, max_docs)
    if out is not None:
        _check_out_dir(Path(out).expanduser())  # before anything is written
    tok, tok_path = load_tokenizer(tokenizer, src, vocab_size, cache_dir, tokenizer_sample_bytes, max_docs)
    if out is not None:
        directory = Path(out).expanduser()
    else:
        directory = cache_root(cache_dir) / "tokens" / _dir_name(src, tokenizer_hash(tok_path), settings)
    manifest = _prepared(directory, src, wanted, tok, tok_path, settings, owned=out is None)
    shards = _prefix(manifest, expect)
    return _token_data(
        directory,
        manifest,
        shards,
        tok_path,
        source,
        split_version,
        val_fraction,
        val_tokens,
        split_seed,
        expect,
        src.skipped,
    )


def _dir_name(src: Source, tok_sha: str, settings: _Settings) -> str:
    key = json.dumps([FORMAT, src.identity, settings.text_field, settings.max_docs, tok_sha, settings.shard_tokens])
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in src.name)[:40]
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


# -- checks against a run's record --------------------------------------------------------------------


def _recorded_states(directory: Path | None) -> dict[str, dict]:
    manifest = read_manifest(directory) if directory is not None else None
    if manifest is None or manifest.get("files") is None:
        return {}
    return {r["path"]: r for r in manifest["files"] if r.get("sha256")}


def _hashes(files: list[CorpusFile], recorded: dict[str, dict], rehash: bool) -> dict[str, str | None]:
    """sha256 per file: the recorded one when size and mtime are unchanged (and not `rehash`), else read now."""
    out: dict[str, str | None] = {}
    for f in files:
        rec = recorded.get(f.name)
        if rec is not None and not rehash and (rec["bytes"], rec.get("mtime_ns")) == (f.bytes, f.mtime_ns):
            out[f.name] = rec["sha256"]
            continue
        try:
            out[f.name] = sha256_file(f.path)
        except OSError:
            out[f.name] = None
    return out


def _refuse_changes(expect: dict, current: list[dict]) -> None:
    recorded = [r for r in expect.get("files") or [] if r.get("sha256")]
    changes = [c for c in corpus_changes(recorded, current) if not c.endswith((" added", "files reordered"))]
    if changes:
        shown = ", ".join(changes[:4]) + (f" and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise DataError(
            f"the corpus {expect.get('source', '')!r} changed since this run started ({shown}); restore it "
            "to continue this run, or train a new run on the new corpus"
        )
    added = len({r["path"] for r in current} - {r["path"] for r in recorded})
    if added:
        print(
            f"hasten: note: {added} file(s) were added to the corpus since this run started; it keeps training on "
            "its own files (a new run reads them all)",
            file=sys.stderr,
        )


def _check_expected_files(
    expect: dict, src: Source, tokenizer: str, settings: _Settings, cache_dir: str
) -> list[CorpusFile]:
    """Refuse an edited or deleted file of the run (hashing only files whose size or mtime changed); the run's files."""
    directory = None
    tok_file = Path(tokenizer).expanduser()
    if tok_file.is_dir():
        tok_file = tok_file / "tokenizer.json"
    if tok_file.is_file():  # the run's own tokenizer: its token dir, if prepared, has the files' hashes
        directory = cache_root(cache_dir) / "tokens" / _dir_name(src, tokenizer_hash(tok_file), settings)
    hashes = _hashes(src.files, _recorded_states(directory), settings.rehash)
    current = [{"path": f.name, "bytes": f.bytes, "sha256": hashes[f.name]} for f in src.files if hashes[f.name]]
    _refuse_changes(expect, current)
    by_name = {f.name: f for f in src.files}
    return [by_name[r["path"]] for r in expect["files"] if r.get("sha256") and r["path"] in by_name]


def _check_legacy_fingerprint(expect: dict, src: Source, max_docs: int | None) -> None:
    """Runs from before token shards on a dataset recorded only a fingerprint of all documents: compare it."""
    if "content_sha256" not in expect:
        return
    reader = DocumentReader(src, max_docs=max_docs)

    def documents():
        parts = []
        for piece, end in reader:
            parts.append(piece)
            if end is not None:
                yield "".join(parts)
                parts = []

    if fingerprint(documents()) != expect["content_sha256"]:
        raise DataError(
            f"the corpus {expect.get('source', '')!r} changed since this run started (its documents "
            "differ); restore it to continue this run, or train a new run on the new corpus"
        )


def check_tokens(expect: dict, data: TokenData) -> None:
    """The same corpus must also give the same token streams (tokenizer and split) as when the run started."""
    if expect.get("tokenizer_sha256") not in (None, data.corpus["tokenizer_sha256"]):
        raise DataError(
            f"the tokenizer {data.tokenizer_path} is not the one this run started with; restore the run's "
            "tokenizer.json"
        )
    if "shards" in expect and expect["shards"] != data.corpus["shards"]:
        difference = _first_shard_difference(expect["shards"], data.corpus["shards"])
        raise DataError(
            f"the corpus {expect.get('source', '')!r} now encodes to other tokens than this run's "
            f"({difference}); resume it with the hasten version, corpus and data settings that started it"
        )
    if expect.get("tokens", data.corpus["tokens"]) != data.corpus["tokens"]:
        raise DataError(
            f"the corpus now splits into {data.corpus['tokens']} tokens but the run used {expect.get('tokens')}; "
            "resume it with the hasten version and data settings that started it"
        )


def data_difference(reference: dict, other: dict) -> str | None:
    """What differs between two ranks' corpus records (None: the same tokens), for the one line that refuses it."""
    if reference.get("files") is not None and other.get("files") is not None:  # the cause first: a file that differs
        changes = corpus_changes(reference["files"], other["files"])
        if changes:
            more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
            return "its corpus differs: " + ", ".join(changes[:3]) + more
    if reference.get("tokenizer_sha256") != other.get("tokenizer_sha256"):
        return "its tokenizer differs"
    for key in ("shards", "documents", "tokens"):
        if reference.get(key) != other.get(key):
            if key == "shards":
                return f"its token shards differ ({_first_shard_difference(reference['shards'], other['shards'])})"
            return f"its {key} differ ({other.get(key)} vs rank 0's {reference.get(key)})"
    return None


def _first_shard_difference(reference: list[str], other: list[str]) -> str:
    first = next((i for i, (a, b) in enumerate(zip(reference, other)) if a != b), None)
    return f"shard {first} differs" if first is not None else f"{len(other)} shards, not {len(reference)}"


# -- the token dir -----------------------------------------------------------------------------------


def _open_token_dir(directory: Path, rehash: bool) -> tuple[Path, dict]:
    """A finished token dir made by `hasten prepare-data --out`, its shards checked; one line if it is not usable."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise DataError(
            f"data.tokens={directory} is not a prepared token dir (no readable {MANIFEST}); make one with "
            f"hasten prepare-data RECIPE --out {directory}"
        )
    if not manifest.get("complete"):
        raise DataError(
            f"data.tokens={directory} is not finished (its preparation stopped); run hasten prepare-data "
            f"with --out {directory} again to finish it"
        )
    if not (directory / "tokenizer.json").is_file():
        raise DataError(
            f"data.tokens={directory} has no tokenizer.json; prepare it again with hasten prepare-data --out"
        )
    for entry in manifest["shards"]:
        problem = shard_problem(directory, entry, rehash)
        if problem is not None:
            raise DataError(
                f"data.tokens={directory} is damaged ({problem}); run hasten prepare-data --out "
                f"{directory} again to repair it"
            )
    return directory, manifest


def _check_out_dir(directory: Path) -> None:
    """--out must be new, empty, or a token dir (continued, extended or checked); never the user's other files."""
    if directory.exists() and not directory.is_dir():
        raise DataError(f"--out {directory} is a file; give a new or empty folder")
    if directory.is_dir() and not (directory / MANIFEST).is_file():
        entries = sorted(p.name for p in directory.iterdir() if p.name != ".lock")
        if entries:
            shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
            raise DataError(
                f"--out {directory} is not empty (holds {shown}) and is no token dir; give a new or empty folder"
            )


def _file_entries(files: list[CorpusFile], hashes: dict[int, str | None], upto: int) -> list[dict]:
    return [
        {"path": files[i].name, "bytes": files[i].bytes, "mtime_ns": files[i].mtime_ns, "sha256": hashes.get(i)}
        for i in range(min(upto, len(files)))
    ]


def _other_settings(manifest: dict, src: Source, tok_sha: str, settings: _Settings) -> bool:
    keys = ("identity", "text_field", "max_docs", "tokenizer_hash", "shard_tokens")
    return tuple(manifest.get(k) for k in keys) != (
        src.identity,
        settings.text_field,
        settings.max_docs,
        tok_sha,
        settings.shard_tokens,
    )


def _stale(directory: Path, manifest: dict, src: Source, rehash: bool) -> str | None:
    """Why a token dir no longer matches its corpus (None: it does): a damaged shard, an edited or deleted file."""
    for entry in manifest["shards"]:
        problem = shard_problem(directory, entry, rehash)
        if problem is not None:
            return problem
    if src.files is None:
        return None
    current = {f.name: f for f in src.files}
    recorded = {r["path"]: r for r in manifest["files"] if r.get("sha256")}
    for name in [r["path"] for r in manifest["files"]] + [p["path"] for p in [manifest.get("partial")] if p]:
        if name not in current:
            return f"{name} was deleted"
    hashes = _hashes([current[name] for name in recorded], recorded, rehash)
    edited = next((name for name, r in recorded.items() if hashes[name] != r["sha256"]), None)
    if edited is not None:
        return f"{edited} was edited"
    partial = manifest.get("partial")
    if partial is not None:
        f = current[partial["path"]]
        if (f.bytes, f.mtime_ns) != (partial["bytes"], partial["mtime_ns"]):
            return f"{partial['path']} changed while it was being read"
    return None


def _touched(manifest: dict, src: Source) -> bool:
    """A recorded file's mtime changed (its content may not have: then the new mtime is recorded)."""
    current = {f.name: f for f in src.files or []}
    return any(
        r["path"] in current and current[r["path"]].mtime_ns != r.get("mtime_ns") for r in manifest["files"] or []
    )


def _prepared(
    directory: Path, src: Source, wanted: list[CorpusFile] | None, tok, tok_path: Path, settings: _Settings, owned: bool
) -> dict:
    """The token dir's manifest once it holds every wanted file: reused as it is, continued, extended or made anew.

    `owned`: a cache dir (made anew when it cannot be continued); else the user's --out dir, which is never
    replaced by another corpus's tokens."""
    tok_sha = tokenizer_hash(tok_path)
    manifest = read_manifest(directory)
    other = manifest is not None and _other_settings(manifest, src, tok_sha, settings)
    if other and not owned:
        raise DataError(
            f"--out {directory} holds the tokens of another corpus, tokenizer or shard size "
            f"({manifest.get('source')}); give another --out"
        )
    if (
        manifest is not None
        and not other
        and manifest.get("complete")
        and _todo(manifest, wanted) == []
        and not _touched(manifest, src)
        and _stale(directory, manifest, src, settings.rehash) is None
    ):
        return manifest  # the usual case: stat calls only
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(directory / ".lock"):  # one process prepares; another waits, then finds it done
        manifest = read_manifest(directory)
        if manifest is None and (directory / MANIFEST).exists():
            print(
                f"hasten: warning: token dir {directory} has an unreadable {MANIFEST}; preparing it again",
                file=sys.stderr,
            )
        if manifest is not None:
            problem = (
                "it holds another corpus"
                if _other_settings(manifest, src, tok_sha, settings)
                else _stale(directory, manifest, src, settings.rehash)
            )
            if problem is not None:
                print(
                    f"hasten: warning: token dir {directory} no longer matches the corpus ({problem}); preparing it "
                    "again",
                    file=sys.stderr,
                )
                manifest = None
        if manifest is None:
            _clear(directory)
            manifest = _new_manifest(src, tok, tok_path, settings)
        elif manifest.get("complete") and _todo(manifest, wanted) == []:
            _refresh_mtimes(directory, manifest, src)
            return manifest
        if not (directory / "tokenizer.json").is_file():
            try:
                # the dir is self-contained (data.tokens); whole or absent, since only its presence is checked
                atomic_write(directory / "tokenizer.json", lambda tmp: shutil.copyfile(tok_path, tmp))
            except OSError as err:
                raise DataError(
                    f"writing token shards in {directory} failed ({err.strerror or err}); free space (or set "
                    "HASTEN_CACHE) and run again"
                ) from None
        _encode(directory, manifest, src, wanted, tok, settings)
    return manifest


def _todo(manifest: dict, wanted: list[CorpusFile] | None) -> list[CorpusFile] | None:
    """Wanted files the dir has not read ([] when none; None for datasets, which are read once)."""
    if wanted is None or manifest.get("max_docs_reached"):
        return [] if manifest.get("complete") else None
    done = {r["path"] for r in manifest["files"]}
    return [f for f in wanted if f.name not in done]


def _refresh_mtimes(directory: Path, manifest: dict, src: Source) -> None:
    """Files touched but not changed (their sha256 matched): record the new mtime so they are not hashed again."""
    current = {f.name: f for f in src.files or []}
    changed = False
    for r in manifest["files"]:
        f = current.get(r["path"])
        if f is not None and r.get("mtime_ns") != f.mtime_ns:
            r["mtime_ns"], changed = f.mtime_ns, True
    if changed:
        write_manifest(directory, manifest)


def _clear(directory: Path) -> None:
    """Empty a token dir that cannot be continued: the manifest goes first, so nothing half-deleted is trusted."""
    (directory / MANIFEST).unlink(missing_ok=True)
    for path in directory.iterdir():
        if path.name != ".lock":
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def _new_manifest(src: Source, tok, tok_path: Path, settings: _Settings) -> dict:
    vocab = tok.get_vocab_size()
    return {
        "format": FORMAT,
        "source": src.spec,
        "identity": src.identity,
        "corpus": src.name,
        "text_field": settings.text_field,
        "max_docs": settings.max_docs,
        "tokenizer_hash": tokenizer_hash(tok_path),
        "vocab_size": vocab,
        "eos_id": eos_id(tok),
        "dtype": "uint16" if vocab <= 1 << 16 else "uint32",
        "shard_tokens": settings.shard_tokens,
        "shards": [],
        "files": [] if src.files is not None else None,
        "partial": None,
        "complete": False,
        "bytes": 0,
        "read_skipped": _skips(Skipped()),
        "skipped": {},
        "skipped_examples": {},  # reading only / with the listing's
    }


def _encode(
    directory: Path, manifest: dict, src: Source, wanted: list[CorpusFile] | None, tok, settings: _Settings
) -> None:
    """Read, encode and write what the dir lacks: continue after its last shard, then append files it has not read."""
    recorded, last = manifest["files"], (manifest["shards"][-1] if manifest["shards"] else None)
    order = None
    if src.dataset is not None:
        order = src.files  # a local datasets dir: its files are hashed; rows are read through datasets
    elif src.files is not None:  # the reading order: files read before, the one read in part, then the new ones
        current = {f.name: f for f in src.files}
        order = [current[r["path"]] for r in recorded]
        if manifest.get("partial") is not None:
            order.append(current[manifest["partial"]["path"]])
        known = {f.name for f in order}
        order += [f for f in wanted or [] if f.name not in known]
    if manifest["complete"]:  # extend a finished dir with new files (never a dataset: it is read once)
        if src.dataset is not None:
            return
        start, base = (len(recorded), 0, 0), _skipped(manifest["read_skipped"])
    elif last is not None:  # continue a stopped preparation after its last shard
        start, base = tuple(last["end"]), _skipped(last["skipped"])
    else:
        start, base = (0, 0, 0), Skipped()
    for path in directory.glob(".shard_*"):  # what a stopped preparation left half-written
        path.unlink()
    docs = [sum(s["documents"] for s in manifest["shards"])]
    docs_before = docs[0]
    reader = DocumentReader(src, files=order, start=start, max_docs=settings.max_docs, docs_before=docs_before)
    known_size = order is not None and src.dataset is None  # (with max_docs the bar may stop short of it)
    inside_jsonl = known_size and start[0] < len(order) and order[start[0]].path.suffix == ".jsonl"
    total = sum(f.bytes for f in order[start[0] :]) - (start[1] if inside_jsonl else 0) if known_size else None
    hashes = {i: r["sha256"] for i, r in enumerate(recorded or [])}
    manifest["complete"] = False

    def on_seal(entry: dict, end) -> None:
        docs[0] += entry["documents"]
        base.merge(reader.skips_before(docs[0]))
        entry["skipped"] = _skips(base)
        manifest["shards"].append(entry)
        if order is not None:
            manifest["files"] = _file_entries(order, {**hashes, **reader.hashes}, end[0])
            inside = end[0] < len(order) and end[1] > 0
            f = order[end[0]] if inside else None
            manifest["partial"] = {"path": f.name, "bytes": f.bytes, "mtime_ns": f.mtime_ns} if f is not None else None
        manifest["read_skipped"] = _skips(base)
        write_manifest(directory, manifest)

    writer = ShardWriter(directory, manifest["dtype"], settings.shard_tokens, len(manifest["shards"]), on_seal)
    encoder = Encoder(tok, manifest["eos_id"], manifest["dtype"], settings.num_workers)
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc=f"tokenizing {src.name}",
        disable=not settings.progress,
        leave=False,
    )
    began, shown = time.perf_counter(), 0
    try:
        for chunk, encoded in encoder.map(chunks(reader, lambda: reader.bytes_read)):
            writer.add(chunk, encoded)
            bar.update(chunk.bytes_read - shown)
            shown = chunk.bytes_read
        writer.close((len(order), 0, 0) if order is not None else (0, reader.docs, 0))
    except OSError as err:
        writer.discard()
        raise DataError(
            f"writing token shards in {directory} failed ({err.strerror or err}); free space (or set "
            "HASTEN_CACHE) and run again: it continues from the last complete shard"
        ) from None
    except BaseException:
        writer.discard()
        raise
    finally:
        bar.close()
    base.merge(reader.skips_before(reader.docs + 1))
    skipped = base.copy()
    skipped.merge(src.skipped)
    if not manifest["shards"]:
        _clear(directory)
        raise empty_corpus_error(src.spec, skipped)
    if order is not None:
        manifest["files"] = _file_entries(order, {**hashes, **reader.hashes}, len(order))
    manifest.update(
        partial=None,
        complete=True,
        bytes=manifest["bytes"] + reader.bytes_read,
        max_docs_reached=settings.max_docs is not None and reader.docs >= settings.max_docs,
        read_skipped=_skips(base),
        skipped=dict(skipped.counts),
        skipped_examples=_skips(skipped)["examples"],
    )
    write_manifest(directory, manifest)
    if settings.progress:
        _report(manifest, reader, encoder, time.perf_counter() - began, docs_before)


def _skips(skipped: Skipped) -> dict:
    return {"counts": dict(skipped.counts), "examples": {k: list(v) for k, v in skipped.examples.items()}}


def _skipped(record: dict) -> Skipped:
    return Skipped(record["counts"], record["examples"])


def _report(manifest: dict, reader: DocumentReader, encoder: Encoder, seconds: float, docs_before: int) -> None:
    """The final line of a preparation: what it read, how fast, and the peak memory of its processes."""
    tokens = sum(s["tokens"] for s in manifest["shards"])
    main_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = encoder.peak_rss_kb
    memory = f"{main_mb:,.0f} MB"
    if workers:
        memory += f" + {len(workers)} workers <= {max(workers.values()) / 1024:,.0f} MB each"
    mb = reader.bytes_read / 1e6
    print(
        f"hasten: prepared {manifest['corpus']}: {reader.docs - docs_before:,} documents, {mb:,.1f} MB in "
        f"{seconds:,.1f} s ({mb / max(seconds, 1e-9):,.2f} MB/s); {tokens:,} tokens in {len(manifest['shards'])} "
        f"shard(s); peak RSS {memory}",
        file=sys.stderr,
    )


# -- the view a run trains on ------------------------------------------------------------------------


def _prefix(manifest: dict, expect: dict | None) -> list[dict]:
    """The shards a run reads: all of them, or (a continued run) those of its own files, as it recorded them."""
    shards = manifest["shards"]
    if expect is None:
        return shards
    if "shards" in expect and len(expect["shards"]) <= len(shards):
        return shards[: len(expect["shards"])]
    if expect.get("files") is not None and manifest.get("files") is not None:
        n_files = len([r for r in expect["files"] if r.get("sha256")])
        read = [r for r in manifest["files"] if r.get("sha256")]
        for k, entry in enumerate(shards):  # the shard that ends where the run's files end
            if entry["end"][0] >= n_files and entry["end"][1] == 0:
                if [r["path"] for r in read[:n_files]] == [r["path"] for r in expect["files"] if r.get("sha256")]:
                    return shards[: k + 1]
                break
        raise DataError(
            f"the token dir of {expect.get('source')!r} holds its files in another order than this run "
            "read them; prepare them again for this run by deleting that token dir (hasten rebuilds it)"
        )
    return shards


def _token_data(
    directory: Path,
    manifest: dict,
    entries: list[dict],
    tok_path: Path,
    source: str,
    split_version: int,
    val_fraction: float,
    val_tokens: int | None,
    split_seed: int,
    expect: dict | None,
    listing: Skipped | None = None,
) -> TokenData:
    """The run's view of a token dir; `listing`: what the corpus's listing leaves out now (else as recorded)."""
    shards = ShardSet(directory, entries, manifest["dtype"])
    skipped = Skipped(manifest["skipped"], manifest["skipped_examples"])
    if listing is not None:
        skipped = _skipped(manifest["read_skipped"])
        skipped.merge(listing)
    train, val, documents = split_view(shards, split_version, val_fraction, val_tokens, split_seed)
    files = None
    if manifest.get("files") is not None:
        upto = entries[-1]["end"][0] if entries else 0
        files = [
            {"path": r["path"], "bytes": r["bytes"], "sha256": r["sha256"]}
            for r in manifest["files"][:upto]
            if r.get("sha256")
        ]
    split_tokens = {"train": len(train), "val": len(val)}
    record = {
        "format": FORMAT,
        "source": source,
        "corpus": manifest["corpus"],
        "documents": shards.n_documents,
        "files": files,
        "shards": [e["sha256"] for e in entries],
        "shard_tokens": manifest["shard_tokens"],
        "tokenizer_sha256": manifest["tokenizer_hash"],
        "split_version": split_version,
        "tokens": split_tokens,
    }
    summary = {
        "format": FORMAT,
        "corpus": manifest["corpus"],
        "source": manifest["source"],
        "tokenizer_path": str(tok_path),
        "tokenizer_hash": manifest["tokenizer_hash"],
        "vocab_size": manifest["vocab_size"],
        "eos_id": manifest["eos_id"],
        "dtype": manifest["dtype"],
        "documents": documents,
        "tokens": split_tokens,
        "shards": len(entries),
        "bytes": manifest["bytes"],
        "skipped": skipped.counts,
        "skipped_examples": skipped.examples,
        "val_fraction": val_fraction,
        "val_tokens": val_tokens,
        "split_seed": split_seed,
        "split_version": split_version,
    }
    data = TokenData(
        train=train, val=val, manifest=summary, directory=directory, tokenizer_path=tok_path, corpus=record
    )
    if expect is not None:
        check_tokens(expect, data)
    return data


def skipped_summary(manifest: dict) -> str:
    return Skipped(manifest.get("skipped"), manifest.get("skipped_examples")).summary()


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
            f"validation split has {len(data.val):,} tokens, less than one sequence of {seq_len}; raise "
            "data.val_fraction or use a larger corpus"
        )
