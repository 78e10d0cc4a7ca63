"""Corpus sources: documents as text, in a deterministic order, with a content hash.

- `stdlib`: the Python standard library source of the running interpreter (real, human-written
  code and docstrings that every machine has; site-packages excluded). The embedded default.
- local files, folders and globs: .jsonl (`text` field) and .parquet (`text` column) by record, any
  other file as one plain-text document (binary and non-UTF-8 files are skipped and counted).
  Inside a folder or glob, hidden files and folders (.git, .venv, ...), virtual environments
  (a folder with pyvenv.cfg), site-packages and __pycache__ are never read;
- `hf:NAME[:SPLIT]` or a local `datasets` directory (needs `pip install hasten[hf]`).

Every corpus carries the list of files it read with their sizes and sha256 (`Corpus.files`), so a
run can record exactly what it trained on and a resume can refuse an edited corpus.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hasten.errors import DataError

SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__", "node_modules"}


@dataclass
class Corpus:
    """A list of documents plus bookkeeping of what was skipped and why, and the files read."""

    name: str
    documents: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    files: list[dict] | None = None  # [{path, bytes, sha256}] of the files read (None for HF datasets)

    @property
    def n_bytes(self) -> int:
        return sum(len(d.encode("utf-8")) for d in self.documents)

    def fingerprint(self) -> str:
        """sha256 over the documents in order: the cache key of tokenizers and token files."""
        h = hashlib.sha256()
        for doc in self.documents:
            data = doc.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()


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


class _FileLog:
    """Records every file read (relative path, size, sha256): the corpus fingerprint a run keeps."""

    def __init__(self, root: Path | None):
        self.root = root
        self.files: list[dict] = []

    def add(self, path: Path, data: bytes) -> None:
        try:
            name = path.relative_to(self.root).as_posix() if self.root is not None else path.as_posix()
        except ValueError:
            name = path.as_posix()
        self.files.append({"path": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})


def _read_text(path: Path, skipped: dict[str, int], log: _FileLog | None = None) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        skipped["unreadable"] = skipped.get("unreadable", 0) + 1
        return None
    if log is not None:
        log.add(path, data)
    if b"\x00" in data[:8192]:
        skipped["binary"] = skipped.get("binary", 0) + 1
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        skipped["not_utf8"] = skipped.get("not_utf8", 0) + 1
        return None
    if not text.strip():
        skipped["empty"] = skipped.get("empty", 0) + 1
        return None
    return text


def _read_bytes(path: Path, log: _FileLog) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path} cannot be read ({err.strerror or err}); fix its permissions or remove it from data.source") from None
    log.add(path, data)
    return data


def _iter_jsonl(path: Path, text_field: str, skipped: dict[str, int], log: _FileLog) -> Iterator[str]:
    for lineno, raw in enumerate(_read_bytes(path, log).splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            skipped["not_utf8"] = skipped.get("not_utf8", 0) + 1
            continue
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path}:{lineno} is not valid JSON; fix the line or remove it") from None
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno} has no string field {text_field!r}; set data.text_field")
        if text.strip():
            yield text
        else:
            skipped["empty"] = skipped.get("empty", 0) + 1


def _iter_parquet(path: Path, text_field: str, log: _FileLog) -> Iterator[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow; pip install pyarrow") from None
    data = _read_bytes(path, log)
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        columns = parquet.schema_arrow.names
        table = parquet.read(columns=[text_field]) if text_field in columns else None
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path} is not a readable parquet file ({str(err).splitlines()[0][:160]}); re-export it or remove it") from None
    if table is None:
        raise DataError(f"{path} has no column {text_field!r} (columns: {', '.join(columns)}); set data.text_field")
    for text in table.column(text_field).to_pylist():
        if isinstance(text, str) and text.strip():
            yield text


def _skipped_dir(folder: Path) -> bool:
    """Folders a corpus never descends into: hidden ones (.git, .venv), virtual environments, installed packages."""
    return folder.name.startswith(".") or folder.name in SKIPPED_DIRS or (folder / "pyvenv.cfg").is_file()


def _walk(root: Path) -> list[Path]:
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _skipped_dir(Path(folder) / d))
        files.extend(Path(folder) / name for name in names if not name.startswith("."))
    return files


def _glob_root(pattern: str) -> Path:
    """The folder before the first wildcard of a glob: what lies below it is filtered like a folder's contents."""
    parts = Path(pattern).parts
    first_magic = next((i for i, part in enumerate(parts) if any(ch in part for ch in "*?[")), len(parts))
    return Path(*parts[:first_magic]) if first_magic else Path(".")


def _expand_local(source: str) -> tuple[list[Path], Path | None]:
    """The files of a local source (sorted by path) and the folder their recorded names are relative to."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        return sorted(_walk(path), key=lambda p: p.as_posix()), path
    root = _glob_root(str(path))
    matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))

    def kept(p: Path) -> bool:
        try:
            below = p.relative_to(root).parts
        except ValueError:
            return True
        folders = [root.joinpath(*below[: i + 1]) for i in range(len(below) - 1)]
        return not below[-1].startswith(".") and not any(_skipped_dir(f) for f in folders)

    return [p for p in matches if p.is_file() and kept(p)], root


def _load_hf(source: str, text_field: str, max_docs: int | None) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise DataError("HF datasets sources need the hf extra: pip install 'hasten[hf]'") from None
    spec = source[3:] if source.startswith("hf:") else source
    name, _, split = spec.partition(":")
    local = Path(name).expanduser()
    try:
        ds = datasets.load_from_disk(str(local)) if local.is_dir() else datasets.load_dataset(name, split=split or "train")
    except Exception as err:  # offline, unknown name, missing split, broken files: datasets raises many types
        first = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise DataError(f"data.source={source!r} could not be loaded ({type(err).__name__}: {first}); check the name and split, "
                        "or save the dataset locally (datasets save_to_disk) and point data.source at that folder") from None
    if isinstance(ds, datasets.DatasetDict):
        if (split or "train") not in ds:
            raise DataError(f"dataset {name} has no split {split or 'train'!r} (splits: {', '.join(ds)}); use hf:{name}:SPLIT")
        ds = ds[split or "train"]
    if text_field not in ds.column_names:
        raise DataError(f"dataset {name} has no column {text_field!r} (columns: {', '.join(ds.column_names)}); set data.text_field")
    docs = []
    for text in ds[text_field]:
        if isinstance(text, str) and text.strip():
            docs.append(text)
            if max_docs is not None and len(docs) >= max_docs:
                break
    return docs


def load_corpus(source: str, text_field: str = "text", max_docs: int | None = None) -> Corpus:
    """Read a corpus; raise DataError with a fix when nothing usable is left."""
    skipped: dict[str, int] = {}
    docs: list[str] = []
    log: _FileLog | None = None
    if not source.strip():
        raise DataError("data.source is empty; give a file, folder, glob, 'stdlib' or 'hf:NAME' (use '.' for the current folder)")
    if source == "stdlib":
        files = _stdlib_files()
        log = _FileLog(stdlib_root())
        for path in files:
            text = _read_text(path, skipped, log)
            if text is not None:
                docs.append(text)
                if max_docs is not None and len(docs) >= max_docs:
                    break
        name = f"stdlib-{stdlib_root().name}"
    elif source.startswith("hf:"):
        docs = _load_hf(source, text_field, max_docs)
        name = source
    else:
        local = Path(source).expanduser()
        if local.is_dir() and ((local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists()):
            docs = _load_hf(str(local), text_field, max_docs)
        else:
            files, root = _expand_local(source)
            if not files:
                raise DataError(f"data.source={source!r} matches no files; give a file, folder, glob, 'stdlib' or 'hf:NAME'")
            log = _FileLog(root)
            for path in files:
                if path.suffix == ".jsonl":
                    docs.extend(_iter_jsonl(path, text_field, skipped, log))
                elif path.suffix == ".parquet":
                    docs.extend(_iter_parquet(path, text_field, log))
                else:
                    text = _read_text(path, skipped, log)
                    if text is not None:
                        docs.append(text)
                if max_docs is not None and len(docs) >= max_docs:
                    docs = docs[:max_docs]
                    break
        name = Path(source).expanduser().resolve().name or source
    if not docs:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "no documents"
        raise DataError(f"corpus {source!r} has no usable text ({detail}); point data.source at UTF-8 text")
    return Corpus(name=name, documents=docs, skipped=skipped, files=log.files if log is not None else None)


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
