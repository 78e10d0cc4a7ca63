"""Corpus sources: documents as text, in a deterministic order, with a content hash.

- `stdlib`: the Python standard library source of the running interpreter (real, human-written
  code and docstrings that every machine has; site-packages excluded). The embedded default.
- local files, folders and globs: .jsonl (`text` field) and .parquet (`text` column) by record, any
  other file as one plain-text document (binary and non-UTF-8 files are skipped and counted);
- `hf:NAME[:SPLIT]` or a local `datasets` directory (needs `pip install hasten[hf]`).
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


@dataclass
class Corpus:
    """A list of documents plus bookkeeping of what was skipped and why."""

    name: str
    documents: list[str]
    skipped: dict[str, int] = field(default_factory=dict)

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


def _read_text(path: Path, skipped: dict[str, int]) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        skipped["unreadable"] = skipped.get("unreadable", 0) + 1
        return None
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


def _iter_jsonl(path: Path, text_field: str, skipped: dict[str, int]) -> Iterator[str]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
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


def _iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow; pip install pyarrow") from None
    table = pq.read_table(path, columns=[text_field])
    for text in table.column(text_field).to_pylist():
        if isinstance(text, str) and text.strip():
            yield text


def _expand_local(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted((p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")), key=lambda p: p.as_posix())
    matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
    return [p for p in matches if p.is_file()]


def _load_hf(source: str, text_field: str, max_docs: int | None) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise DataError("HF datasets sources need the hf extra: pip install 'hasten[hf]'") from None
    spec = source[3:] if source.startswith("hf:") else source
    name, _, split = spec.partition(":")
    local = Path(name).expanduser()
    ds = datasets.load_from_disk(str(local)) if local.is_dir() else datasets.load_dataset(name, split=split or "train")
    if isinstance(ds, datasets.DatasetDict):
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
    if source == "stdlib":
        files = _stdlib_files()
        for path in files:
            text = _read_text(path, skipped)
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
            files = _expand_local(source)
            if not files:
                raise DataError(f"data.source={source!r} matches no files; give a file, folder, glob, 'stdlib' or 'hf:NAME'")
            for path in files:
                if path.suffix == ".jsonl":
                    docs.extend(_iter_jsonl(path, text_field, skipped))
                elif path.suffix == ".parquet":
                    docs.extend(_iter_parquet(path, text_field))
                else:
                    text = _read_text(path, skipped)
                    if text is not None:
                        docs.append(text)
                if max_docs is not None and len(docs) >= max_docs:
                    docs = docs[:max_docs]
                    break
        name = Path(source).name or source
    if not docs:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "no documents"
        raise DataError(f"corpus {source!r} has no usable text ({detail}); point data.source at UTF-8 text")
    return Corpus(name=name, documents=docs, skipped=skipped)
