"""Open checkpoint state: every part of a running trainer with state is registered by name (state_dict /
load_state_dict) and lands in every checkpoint; a part the trainer registers that a checkpoint lacks is refused with
one line; a part reset on purpose (None, written by `hasten grow`) starts afresh; checkpoints written before the
format named its parts (version 1) still resume, their missing parts fresh as they were then."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hasten.checkpointing import load_checkpoint, open_checkpoint, save_checkpoint
from hasten.checkpointing.schema import FORMAT_VERSION
from hasten.cli import main
from hasten.errors import CheckpointError
from hasten.recipes import build_trainer, load_config
from hasten.trainer.checkpoints import parts, restore
from tests.helpers import run_training

FIXTURE = Path(__file__).parent / "fixtures" / "pre-methods"


class Counter:
    """A component with state of its own, registered with the trainer."""

    def __init__(self):
        self.count = 0

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


def _rewrite(checkpoint: Path, edit) -> None:
    """Re-save a checkpoint with `edit` applied to its state.pt mapping (a new manifest: not damaged, only edited)."""
    state = load_checkpoint(checkpoint)
    state.pop("_path")
    edit(state)
    shutil.rmtree(checkpoint)
    save_checkpoint(checkpoint.parent, int(checkpoint.name.split("_")[1]), state, keep=10)


def test_every_registered_part_is_in_the_checkpoint_and_comes_back(tmp_path, tiny_overrides):
    overrides = [*tiny_overrides, "train.max_steps=8", "methods.lawa={k: 2, interval: 2}"]
    trainer = build_trainer(load_config(None, overrides), tmp_path / "run", progress=False)
    counter = Counter()
    trainer.register_state("counter", counter)
    with pytest.raises(ValueError, match="registered already"):
        trainer.register_state("counter", Counter())
    assert list(parts(trainer)) == [
        "model",
        "optimizer",
        "schedule",
        "sampler",
        "progress",
        "guard",
        "counter",
        "methods.stability",
        "methods.lawa",
        "rng",
    ]  # the restore order: the RNG last
    counter.count = 41
    trainer.fit()
    state = load_checkpoint(tmp_path / "run" / "checkpoints")
    assert state["version"] == FORMAT_VERSION and state["counter"] == {"count": 41}
    assert set(state["methods"]) == {"stability", "lawa"}

    other = build_trainer(load_config(None, overrides), tmp_path / "other", progress=False)
    again = Counter()
    other.register_state("counter", again)
    restore(other, open_checkpoint(tmp_path / "run"))  # what the resume of a run with this part does
    assert again.count == 41 and other.state.progress.step == 8


@pytest.mark.parametrize("missing", ["sampler", "guard", "lawa"])
def test_a_checkpoint_that_lacks_a_registered_part_is_refused_with_one_line(tmp_path, tiny_overrides, capsys, missing):
    overrides = [*tiny_overrides, "train.max_steps=8", "methods.lawa={k: 2, interval: 2}"]
    run_training(tmp_path / "run", overrides)
    newest = tmp_path / "run" / "checkpoints" / "step_00000008"
    _rewrite(newest, lambda state: state["methods"].pop(missing) if missing == "lawa" else state.pop(missing))
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    argv = ["train", "--resume", "--run-dir", str(tmp_path / "run")]
    for item in [*overrides, "train.max_steps=12"]:
        argv += ["--set", item]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("hasten: note:")]
    name = f"methods.{missing}" if missing == "lawa" else missing
    assert len(err) == 1 and f"lacks the state of {name} that this run keeps" in err[0], err
    assert "train.init_from=" in err[0]  # the fix: another checkpoint, or a new run from its weights
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before  # nothing was written


def test_a_part_reset_on_purpose_starts_afresh(tmp_path, tiny_overrides):
    overrides = [*tiny_overrides, "train.max_steps=8", "methods.lawa={k: 2, interval: 2}"]
    run_training(tmp_path / "run", overrides)
    _rewrite(tmp_path / "run" / "checkpoints" / "step_00000008", lambda state: state["methods"].update(lawa=None))
    cfg = load_config(None, [*overrides, "train.max_steps=10"])
    trainer = build_trainer(cfg, tmp_path / "run", resume=True, progress=False)
    lawa = next(m for m in trainer.methods if m.name == "lawa")
    assert not lawa.averager.ready and trainer.state.progress.step == 8  # the average starts over; the rest resumed


def test_grow_resets_the_states_of_the_small_model_and_the_grown_run_resumes(tmp_path, tiny_overrides, capsys):
    overrides = [
        *tiny_overrides,
        "model={preset: tiny, n_layers: 1}",
        "train.max_steps=12",
        "methods.lawa={k: 2, interval: 2}",
    ]
    run_training(tmp_path / "small", overrides, stop_at=6)
    assert (
        main(["grow", str(tmp_path / "small"), "--op", "stack", "--factor", "2", "--out", str(tmp_path / "grown")]) == 0
    )
    grown = load_checkpoint(tmp_path / "grown" / "checkpoints")
    assert grown["methods"]["lawa"] is None and grown["methods"]["stability"] is not None
    assert main(["train", "--resume", "--run-dir", str(tmp_path / "grown")]) == 0
    summary = json.loads((tmp_path / "grown" / "summary.json").read_text())
    assert summary["step"] == 12 and (tmp_path / "grown" / "lawa_weights.safetensors").is_file()


def test_a_version_1_checkpoint_still_resumes_its_missing_parts_fresh(tmp_path, monkeypatch):
    shutil.copytree(FIXTURE, tmp_path / "pre-methods")
    monkeypatch.chdir(tmp_path / "pre-methods")
    checkpoint = Path("runs/msg-lawa/checkpoints/step_00000007")
    assert "version" not in load_checkpoint(checkpoint)  # written before the format named its parts
    # as a checkpoint from before the guard and LAWA had states
    _rewrite(checkpoint, lambda state: (state.pop("guard"), state["methods"].pop("lawa")))
    assert open_checkpoint(checkpoint).version == 1
    assert main(["train", "--resume", "--run-dir", "runs/msg-lawa"]) == 0
    assert load_checkpoint(Path("runs/msg-lawa/checkpoints"))["version"] == FORMAT_VERSION  # what it writes now


def test_a_checkpoint_without_progress_is_one_line(tmp_path, tiny_overrides):
    run_training(tmp_path / "run", [*tiny_overrides, "train.max_steps=4"])
    newest = tmp_path / "run" / "checkpoints" / "step_00000004"
    _rewrite(newest, lambda state: state.pop("progress"))
    with pytest.raises(CheckpointError, match="has no 'progress'; it was not written by hasten train"):
        open_checkpoint(newest)
