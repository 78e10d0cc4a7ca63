"""Corpus sources: what data.source names, listed without reading, and its documents read as a stream.

- `stdlib`: the Python standard library source of the running interpreter (real, human-written
  code and docstrings that every machine has; site-packages excluded). The embedded default.
- local files, folders and globs: .jsonl (`text` field) and .parquet (`text` column) by record, any
  other file as one plain-text document (binary and non-UTF-8 files are skipped and counted).
  Only regular files are read: FIFOs, devices, sockets (and symlinks to them) are skipped and named.
  Inside a folder or glob, hidden files and folders (.git, .venv, ...), virtual environments (a
  folder with pyvenv.cfg), site-packages, __pycache__, hasten run dirs, compare outputs and token
  dirs are never read;
- `hf:NAME[:SPLIT]` (streamed with `datasets`' streaming mode) or a local `datasets` directory
  (needs `pip install hasten[hf]`).

Documents are read in order and handed on in pieces of at most PIECE_CHARS characters: a longer
document (a book-sized .txt file, a huge record) is cut after a line (preferably before a line that
starts with a non-space, where a byte-level BPE splits anyway), so memory never holds more than a
piece of it. Every piece comes with the reading position after its document when it is the
document's last piece, so preparation can stop after any document and continue there.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import os
import re
import stat
import sysconfig
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hasten.errors import DataError
from hasten.files import sha256_file
from hasten.layout import is_hasten_output

SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__", "node_modules"}
PIECE_CHARS = 1 << 20  # a longer document is read and encoded in pieces (the stdlib's largest file is 0.76 MB)
MAX_RECORD_BYTES = 64 << 20  # a longer .jsonl line is skipped: its JSON cannot be parsed without holding all of it
BLOCK = 1 << 20  # read size of whole-file hashing and of long plain-text files
EXAMPLES = 3  # named examples kept per skip reason

Position = tuple[int, int, int]  # (file index, byte offset or row of the next record, its line number - 1)


class Skipped:
    """What the reader left out, per reason: a count and the first few places (file names, or file:line)."""

    def __init__(self, counts: dict[str, int] | None = None, examples: dict[str, list[str]] | None = None):
        self.counts: dict[str, int] = dict(counts or {})
        self.examples: dict[str, list[str]] = {k: list(v) for k, v in (examples or {}).items()}

    def add(self, reason: str, where: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES and where not in shown:
            shown.append(where)

    def merge(self, other: Skipped) -> None:
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            shown = self.examples.setdefault(reason, [])
            shown += [w for w in other.examples.get(reason, []) if w not in shown][: EXAMPLES - len(shown)]

    def copy(self) -> Skipped:
        return Skipped(self.counts, self.examples)

    def summary(self) -> str:
        """e.g. 'binary: 1 (image.png), not_regular: 2 (pipe, zero.txt)', or 'none'."""
        parts = []
        for reason in sorted(self.counts):
            named = [w for w in self.examples.get(reason, []) if w]
            more = "" if len(named) >= self.counts[reason] else ", ..."
            parts.append(f"{reason}: {self.counts[reason]}" + (f" ({', '.join(named)}{more})" if named else ""))
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    name: str  # relative to the source's root (posix): what records and messages show
    bytes: int
    mtime_ns: int


@dataclass
class Source:
    """What data.source names, resolved without reading a document: its files (stat only) or its dataset."""

    spec: str
    name: str  # short name for messages and cache dirs
    identity: str  # what the source is, independent of the working directory (part of the token dir's key)
    text_field: str
    files: list[CorpusFile] | None = None  # files / folders / globs / stdlib, sorted by name; None for datasets
    dataset: str | None = None  # hf:NAME (streamed) or a local datasets dir
    split: str = "train"
    skipped: Skipped = field(default_factory=Skipped)  # files left out by the listing (not regular, hasten outputs)

    @property
    def streamed(self) -> bool:
        return self.files is None


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files() -> list[Path]:
    # os.walk with pruning: rglob would descend into site-packages (torch alone is thousands of files)
    # only to filter it out, which cost seconds on every run even with warm token caches
    root = stdlib_root()
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("site-packages", "dist-packages")]
        files.extend(Path(folder) / name for name in names if name.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _skipped_dir(folder: Path) -> bool:
    """Folders a corpus never descends into: hidden ones (.git, .venv), virtual environments, installed packages."""
    return folder.name.startswith(".") or folder.name in SKIPPED_DIRS or (folder / "pyvenv.cfg").is_file()


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _regular(path: Path, name: str, skipped: Skipped) -> CorpusFile | None:
    """The file if it is regular (symlinks followed), else None with the reason counted: reading a FIFO would
    block, and a device (/dev/zero) never ends."""
    try:
        info = os.stat(path)
    except OSError:
        skipped.add("unreadable", name)
        return None
    if not stat.S_ISREG(info.st_mode):
        skipped.add("not_regular", name)
        return None
    return CorpusFile(path, name, info.st_size, info.st_mtime_ns)


def _walk(root: Path, skipped: Skipped) -> list[Path]:
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        kept = []
        for d in sorted(dirs):
            path = Path(folder) / d
            if _skipped_dir(path):
                continue
            if is_hasten_output(path):
                skipped.add("hasten_output", path.relative_to(root).as_posix())
                continue
            kept.append(d)
        dirs[:] = kept
        files.extend(Path(folder) / name for name in names if not name.startswith("."))
    return files


def _glob_root(pattern: str) -> Path:
    """The folder before the first wildcard of a glob: what lies below it is filtered like a folder's contents."""
    parts = Path(pattern).parts
    first_magic = next((i for i, part in enumerate(parts) if any(ch in part for ch in "*?[")), len(parts))
    return Path(*parts[:first_magic]) if first_magic else Path(".")


def _glob(pattern: Path, root: Path, skipped: Skipped) -> list[Path]:
    matches = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True))

    def kept(p: Path) -> bool:
        try:
            below = p.relative_to(root).parts
        except ValueError:
            return True
        folders = [root.joinpath(*below[: i + 1]) for i in range(len(below) - 1)]
        return not below[-1].startswith(".") and not any(_skipped_dir(f) or is_hasten_output(f) for f in folders)

    return [p for p in matches if not p.is_dir() and kept(p)]


def _name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _local_files(paths: list[Path], root: Path, skipped: Skipped) -> list[CorpusFile]:
    named = sorted(((_name(p, root), p) for p in paths), key=lambda item: item[1].as_posix())
    return [f for name, p in named if (f := _regular(p, name, skipped)) is not None]


def resolve_source(source: str, text_field: str = "text") -> Source:
    """What data.source names: its files (listed and stat-ed, not read) or its dataset; one line if it names nothing."""
    if not source.strip():
        raise DataError(
            "data.source is empty; give a file, folder, glob, 'stdlib' or 'hf:NAME' (use '.' for the current folder)"
        )
    if source == "stdlib":
        root = stdlib_root()
        skipped = Skipped()
        files = [f for p in _stdlib_files() if (f := _regular(p, p.relative_to(root).as_posix(), skipped)) is not None]
        return Source(source, f"stdlib-{root.name}", f"stdlib:{root}", text_field, files=files, skipped=skipped)
    if source.startswith("hf:"):
        name, _, split = source[3:].partition(":")
        local = Path(name).expanduser()
        if local.is_dir():
            return _dataset_dir(source, local, split, text_field)
        return Source(source, source, f"hf:{name}:{split or 'train'}", text_field, dataset=name, split=split or "train")
    path = Path(source).expanduser()
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        return _dataset_dir(source, path, "", text_field)
    skipped = Skipped()
    if path.exists() and not path.is_dir():
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(
                f"data.source={source!r} is {_kind(mode)}, not a regular file; give a file, folder or glob "
                "of text files"
            )
        files, root = _local_files([path], path.parent, skipped), path.parent
    elif path.is_dir():
        root = path
        files = _local_files(_walk(path, skipped), root, skipped)
    else:
        root = _glob_root(str(path))
        files = _local_files(_glob(path, root, skipped), root, skipped)
    if not files:
        detail = f" ({skipped.summary()})" if skipped.counts else ""
        raise DataError(
            f"data.source={source!r} matches no files{detail}; give a file, folder, glob, 'stdlib' or 'hf:NAME'"
        )
    resolved = path.resolve() if path.exists() else Path(os.path.abspath(path))
    return Source(source, resolved.name or source, f"files:{resolved}", text_field, files=files, skipped=skipped)


def _dataset_dir(source: str, path: Path, split: str, text_field: str) -> Source:
    """A `datasets` dir saved with save_to_disk: read through datasets, fingerprinted by its files."""
    skipped = Skipped()
    root = path.resolve()
    files = _local_files([p for p in root.rglob("*") if p.is_file()], root, skipped)
    return Source(
        source,
        root.name or source,
        f"dataset:{root}:{split}",
        text_field,
        files=files,
        dataset=str(root),
        split=split or "train",
        skipped=skipped,
    )


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("HF datasets sources need the hf extra: pip install 'hasten[hf]'") from None
    return datasets


def _load_failed(source: str, err: Exception) -> DataError:
    first = (str(err).splitlines() or [type(err).__name__])[0][:200]
    return DataError(
        f"data.source={source!r} could not be loaded ({type(err).__name__}: {first}); check the name and "
        "split, or save the dataset locally (datasets save_to_disk) and point data.source at that folder"
    )


_LINE_BREAK = re.compile(r"(?<=\S)\n(?=\S)")  # cut after it
_WORD_BREAK = re.compile(r"(?<=\S) (?=\S)")  # cut before it


def _cut(text: str, limit: int) -> int:
    """Where to end a piece of at most `limit` characters: where a byte-level BPE (GPT-2's pre-tokenizer) splits
    anyway, so the pieces encode to the same ids as the whole: after a newline between two non-spaces, else before
    a space between two non-spaces; a text without either is cut at the limit."""
    for window in (max(0, limit - (1 << 16)), 0):
        for pattern, after in ((_LINE_BREAK, 1), (_WORD_BREAK, 0)):
            last = deque(pattern.finditer(text, window, limit), maxlen=1)
            if last and last[0].start() + after > 0:
                return last[0].start() + after
    return limit


def pieces(text: str, limit: int | None = None) -> Iterator[str]:
    """A document as pieces of at most `limit` characters (default PIECE_CHARS; one piece when it is that short)."""
    limit = limit or PIECE_CHARS
    while len(text) > limit:
        cut = _cut(text, limit)
        yield text[:cut]
        text = text[cut:]
    yield text


def _plain_text(data: bytes) -> tuple[str | None, str]:
    """(why the file is no plain-text document or None, its text)."""
    if b"\x00" in data[:8192]:
        return "binary", ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8", ""
    return (None if text.strip() else "empty"), text


class DocumentReader:
    """The documents of a source, in order from `start`, as (piece, end) pairs: `end` is the reading position
    after the document on its last piece and None on the others.

    `files` is the order to read (default: the source's listing). Every file read is hashed on the way
    (`hashes`); `skipped` counts what was left out, each with the number of documents read before it
    (`pending_skips`), so a preparation that stops after document N keeps exactly the skips before it.
    """

    def __init__(
        self,
        source: Source,
        files: list[CorpusFile] | None = None,
        start: Position = (0, 0, 0),
        max_docs: int | None = None,
        docs_before: int = 0,
    ):
        self.source = source
        self.files = source.files if files is None else files
        self.start = start
        self.max_docs = max_docs
        self.docs = docs_before  # documents read so far (counting those before `start`)
        self.hashes: dict[int, str] = {}  # file index -> sha256 of the whole file
        self.bytes_read = 0  # of the source (file bytes; text bytes for streamed datasets), for progress
        self.pending_skips: list[tuple[int, str, str, int]] = []  # (documents before it, reason, where, count)

    def skip(self, reason: str, where: str, n: int = 1) -> None:
        last = self.pending_skips[-1] if self.pending_skips else None
        if last is not None and last[:2] == (self.docs, reason):  # a run of empty records stays one entry
            self.pending_skips[-1] = (last[0], reason, last[2], last[3] + n)
        else:
            self.pending_skips.append((self.docs, reason, where, n))

    def skips_before(self, docs: int) -> Skipped:
        """The skips met before document `docs` was read (removed from pending)."""
        out = Skipped()
        keep = []
        for entry in self.pending_skips:
            if entry[0] < docs:
                out.add(entry[1], entry[2], entry[3])
            else:
                keep.append(entry)
        self.pending_skips = keep
        return out

    def _full(self) -> bool:
        return self.max_docs is not None and self.docs >= self.max_docs

    def _document(self, text: str, end: Position) -> Iterator[tuple[str, Position | None]]:
        *head, last = pieces(text)
        for piece in head:
            yield piece, None
        self.docs += 1
        yield last, end

    def __iter__(self) -> Iterator[tuple[str, Position | None]]:
        if self.source.dataset is not None:
            yield from self._dataset()
            return
        first, offset, line = self.start
        for index in range(first, len(self.files)):
            if self._full():
                return
            f = self.files[index]
            at = (offset, line) if index == first else (0, 0)
            if f.path.suffix == ".jsonl":
                yield from self._jsonl(index, f, *at)
            elif f.path.suffix == ".parquet":
                yield from self._parquet(index, f, at[0])
            else:
                yield from self._text(index, f)

    # -- plain text: one document per file ----------------------------------------------------------

    def _text(self, index: int, f: CorpusFile) -> Iterator[tuple[str, Position | None]]:
        end = (index + 1, 0, 0)
        try:
            handle = open(f.path, "rb")
        except OSError:
            self.skip("unreadable", f.name)
            return
        with handle:
            data = handle.read(PIECE_CHARS + 1)
            if len(data) <= PIECE_CHARS:  # the usual case: the file is one piece
                self.hashes[index] = hashlib.sha256(data).hexdigest()
                self.bytes_read += len(data)
                problem, text = _plain_text(data)
                if problem is not None:
                    self.skip(problem, f.name)
                    return
                self.docs += 1
                yield text, end
                return
            handle.seek(0)
            problem = self._check_text(handle, index)
            if problem is not None:
                self.skip(problem, f.name)
                return
            handle.seek(0)
            decoder = codecs.getincrementaldecoder("utf-8")()
            buffer = ""
            for block in iter(lambda: handle.read(BLOCK), b""):
                buffer += decoder.decode(block)
                while len(buffer) > PIECE_CHARS:
                    cut = _cut(buffer, PIECE_CHARS)
                    yield buffer[:cut], None
                    buffer = buffer[cut:]
            buffer += decoder.decode(b"", final=True)
        self.docs += 1
        yield buffer, end

    def _check_text(self, handle, index: int) -> str | None:
        """Read a long file once: hash it, and say why it is no plain-text document (binary, not UTF-8, empty)."""
        h = hashlib.sha256()
        decoder = codecs.getincrementaldecoder("utf-8")()
        problem, has_text, first = None, False, True
        for block in iter(lambda: handle.read(BLOCK), b""):
            h.update(block)
            self.bytes_read += len(block)
            if problem is not None:
                continue
            if first and b"\x00" in block[:8192]:
                problem = "binary"
            first = False
            try:
                has_text = has_text or bool(decoder.decode(block).strip())
            except UnicodeDecodeError:
                problem = problem or "not_utf8"
        if problem is None:
            try:
                has_text = has_text or bool(decoder.decode(b"", final=True).strip())
            except UnicodeDecodeError:
                problem = "not_utf8"
        self.hashes[index] = h.hexdigest()
        return problem or (None if has_text else "empty")

    # -- .jsonl: one document per record -------------------------------------------------------------

    def _jsonl(self, index: int, f: CorpusFile, offset: int, line: int) -> Iterator[tuple[str, Position | None]]:
        field_name = self.source.text_field
        try:
            handle = open(f.path, "rb")
        except OSError as err:
            raise DataError(
                f"{f.path} cannot be read ({err.strerror or err}); fix its permissions or remove it from data.source"
            ) from None
        h = hashlib.sha256()
        with handle:
            while offset and handle.tell() < offset:  # continuing inside the file: hash what was read before
                block = handle.read(min(BLOCK, offset - handle.tell()))
                if not block:
                    break
                h.update(block)
            pos, lineno = handle.tell(), line
            while not self._full():
                raw = handle.readline(MAX_RECORD_BYTES + 1)
                if not raw:
                    break
                h.update(raw)
                pos += len(raw)
                lineno += 1
                self.bytes_read += len(raw)
                if len(raw) > MAX_RECORD_BYTES and not raw.endswith(b"\n"):
                    for rest in iter(lambda: handle.readline(BLOCK), b""):  # the rest of the oversized line
                        h.update(rest)
                        pos += len(rest)
                        self.bytes_read += len(rest)
                        if rest.endswith(b"\n"):
                            break
                    self.skip("too_large", f"{f.name}:{lineno}")
                    continue
                try:
                    text_line = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    self.skip("not_utf8", f"{f.name}:{lineno}")
                    continue
                if not text_line:
                    continue
                try:
                    record = json.loads(text_line)
                except json.JSONDecodeError:
                    raise DataError(f"{f.path}:{lineno} is not valid JSON; fix the line or remove it") from None
                text = record.get(field_name) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise DataError(f"{f.path}:{lineno} has no string field {field_name!r}; set data.text_field")
                if text.strip():
                    yield from self._document(text, (index, pos, lineno))
                else:
                    self.skip("empty", f"{f.name}:{lineno}")
            for block in iter(lambda: handle.read(BLOCK), b""):  # max_docs reached inside the file: hash all of it
                h.update(block)
        self.hashes[index] = h.hexdigest()

    # -- .parquet: one document per row of the text column -------------------------------------------

    def _parquet(self, index: int, f: CorpusFile, row: int) -> Iterator[tuple[str, Position | None]]:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{f.path}: reading .parquet needs pyarrow; pip install pyarrow") from None
        field_name = self.source.text_field

        def unreadable(err: Exception) -> DataError:
            detail = (str(err).splitlines() or [type(err).__name__])[0][:160]
            return DataError(f"{f.path} is not a readable parquet file ({detail}); re-export it or remove it")

        try:
            self.hashes[index] = sha256_file(f.path)
            parquet = pq.ParquetFile(f.path)
            columns = parquet.schema_arrow.names
        except (pa.ArrowException, OSError) as err:
            raise unreadable(err) from None
        if field_name not in columns:
            raise DataError(
                f"{f.path} has no column {field_name!r} (columns: {', '.join(columns)}); set data.text_field"
            )
        self.bytes_read += f.bytes
        groups, first_row = [], 0
        for g in range(parquet.num_row_groups):  # continuing: start at the row group that holds `row`
            rows = parquet.metadata.row_group(g).num_rows
            if first_row + rows > row:
                groups.append(g)
            else:
                first_row += rows
        current = first_row
        try:
            for batch in parquet.iter_batches(batch_size=1024, columns=[field_name], row_groups=groups):
                for text in batch.column(0).to_pylist():
                    current += 1
                    if current <= row:
                        continue
                    if isinstance(text, str) and text.strip():
                        yield from self._document(text, (index, current, 0))
                        if self._full():
                            return
        except pa.ArrowException as err:
            raise unreadable(err) from None

    # -- datasets: a local datasets dir (memory-mapped) or hf:NAME streamed --------------------------

    def _dataset(self) -> Iterator[tuple[str, Position | None]]:
        datasets = _import_datasets()
        source, field_name = self.source, self.source.text_field
        row = self.start[1]
        if source.files is not None:  # a local dir: hash its files, then read it memory-mapped
            for index, f in enumerate(source.files):
                self.hashes[index] = sha256_file(f.path)
        try:
            if source.files is not None:
                ds = datasets.load_from_disk(source.dataset)
            else:
                ds = datasets.load_dataset(source.dataset, split=source.split, streaming=True)
        except Exception as err:  # offline, unknown name, missing split, broken files: datasets raises many types
            raise _load_failed(source.spec, err) from None
        if isinstance(ds, datasets.DatasetDict):
            if source.split not in ds:
                raise DataError(
                    f"dataset {source.dataset} has no split {source.split!r} (splits: {', '.join(ds)}); "
                    f"use hf:{source.dataset}:SPLIT"
                )
            ds = ds[source.split]
        columns = ds.column_names
        if columns is not None and field_name not in columns:
            raise DataError(
                f"dataset {source.dataset} has no column {field_name!r} (columns: {', '.join(columns)}); "
                "set data.text_field"
            )
        if isinstance(ds, datasets.Dataset):
            batches = (ds[i : i + 1024][field_name] for i in range(row, len(ds), 1024))
        else:
            batches = self._streamed_batches(ds.skip(row) if row else ds, field_name)
        for texts in batches:
            for text in texts:
                row += 1
                if isinstance(text, str) and text.strip():
                    self.bytes_read += len(text)
                    yield from self._document(text, (0, row, 0))
                    if self._full():
                        return

    def _streamed_batches(self, ds, field_name: str) -> Iterator[list]:
        try:
            for batch in ds.iter(batch_size=256):
                if field_name not in batch:
                    raise DataError(
                        f"dataset {self.source.dataset} has no column {field_name!r} (columns: "
                        f"{', '.join(batch)}); set data.text_field"
                    )
                yield batch[field_name]
        except DataError:
            raise
        except Exception as err:  # a network error mid-way: the preparation continues from its last shard when rerun
            detail = (str(err).splitlines() or [""])[0][:160]
            raise DataError(
                f"streaming {self.source.spec} failed after {self.docs:,} documents ({type(err).__name__}: "
                f"{detail}); run the same command again to continue"
            ) from None

    def file_records(self, upto: int | None = None) -> list[dict]:
        """{path, bytes, sha256} of every file read whole so far (below index `upto`), in reading order."""
        out = []
        for index in sorted(self.hashes):
            if upto is not None and index >= upto:
                continue
            f = self.files[index]
            out.append({"path": f.name, "bytes": f.bytes, "sha256": self.hashes[index], "mtime_ns": f.mtime_ns})
        return out


@dataclass
class Corpus:
    """A whole corpus in memory (small corpora and tests): its documents, what was skipped and the files read."""

    name: str
    documents: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    files: list[dict] | None = None  # [{path, bytes, sha256}] of the files read (None for streamed datasets)

    @property
    def n_bytes(self) -> int:
        return sum(len(d.encode("utf-8")) for d in self.documents)

    def fingerprint(self) -> str:
        return fingerprint(self.documents)


def fingerprint(documents) -> str:
    """sha256 over documents in order (each length-prefixed): the cache key of a trained tokenizer."""
    h = hashlib.sha256()
    for doc in documents:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def empty_corpus_error(source: str, skipped: Skipped) -> DataError:
    detail = skipped.summary() if skipped.counts else "no documents"
    return DataError(f"corpus {source!r} has no usable text ({detail}); point data.source at UTF-8 text")


def load_corpus(source: str, text_field: str = "text", max_docs: int | None = None) -> Corpus:
    """Every document of a source in memory (for small corpora and tests; preparation streams instead)."""
    resolved = resolve_source(source, text_field)
    reader = DocumentReader(resolved, max_docs=max_docs)
    docs, parts = [], []
    for piece, end in reader:
        parts.append(piece)
        if end is not None:
            docs.append("".join(parts))
            parts = []
    skipped = resolved.skipped.copy()
    skipped.merge(reader.skips_before(reader.docs + 1))
    if not docs:
        raise empty_corpus_error(source, skipped)
    files = None
    if not resolved.streamed:
        files = [{k: v for k, v in r.items() if k != "mtime_ns"} for r in reader.file_records()]
    return Corpus(name=resolved.name, documents=docs, skipped=skipped.counts, files=files)


def corpus_changes(recorded: list[dict], current: list[dict]) -> list[str]:
    """What differs between two recorded file lists, e.g. ['a.txt edited', 'b.txt deleted'] (files in read order)."""
    old = {f["path"]: f for f in recorded}
    new = {f["path"]: f for f in current}
    out = []
    for path, f in old.items():
        if path not in new:
            out.append(f"{path} deleted")
        elif (new[path]["bytes"], new[path]["sha256"]) != (f["bytes"], f["sha256"]):
            out.append(f"{path} edited ({f['bytes']:,} -> {new[path]['bytes']:,} bytes)")
    out += [f"{path} added" for path in new if path not in old]
    if not out and [f["path"] for f in recorded] != [f["path"] for f in current]:
        out.append("files reordered")
    return out
