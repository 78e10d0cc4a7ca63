"""How hasten recognises the folders it writes, so that no command mistakes one for user data: a run dir (config.yaml
beside what a run holds), a `hasten compare` output (its marker file) and a prepared token dir (its manifest). The
bottom layer: the corpus reader skips them, the checkpoint and output code refuses to write inside a run dir."""

from __future__ import annotations

from pathlib import Path

RUN_MARKS = (
    "metrics.jsonl",
    "checkpoints",
    "corpus.json",
    "tokenizer.json",
)  # beside config.yaml: what a run dir holds
COMPARE_MARKER = ".hasten-compare"  # in a report dir: this folder is hasten compare's output
TOKEN_DIR_MARK = "hasten-tokens.json"  # the manifest of a prepared token dir (hasten.data.shards)


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and any((path / name).exists() for name in RUN_MARKS)


def is_hasten_output(folder: Path) -> bool:
    """A hasten run dir, a `hasten compare` output (marked, or from before the marker) or a prepared token dir."""
    if is_run_dir(folder) or (folder / COMPARE_MARKER).is_file() or (folder / TOKEN_DIR_MARK).is_file():
        return True
    return (folder / ".running").is_dir() or ((folder / "results.json").is_file() and (folder / "report.md").is_file())
