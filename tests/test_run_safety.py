"""A user's data and runs are safe (issue 15), end to end through the CLI: continuing and forking runs,
refusals that change nothing (each test checks the files around the run dir too), the run dir lock,
preemption by SIGINT/SIGTERM, export/import targets, eval on other data and averaged weights, generate,
and the `--nproc` launcher's error reporting and clean shutdown.

Most cases run `hasten.cli.main` in process on the `tiny` model (a few seconds each); the signal and
launcher cases need real processes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from hasten.checkpointing import load_checkpoint
from hasten.cli import main
from tests.helpers import cli as _cli
from tests.helpers import one_line_error as _one_line_error

WORDS = "the model reads data and learns to predict each next token from the tokens before it in order".split()


def _main(argv) -> int:
    return main([str(a) for a in argv])


def _digest(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """sha256 of every file under root, except under `skip` (the run dir a command may write)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(s == path or s in path.parents for s in skip):
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _train(run_dir, overrides, *extra) -> list[str]:
    return ["train", "--run-dir", str(run_dir), *[a for o in overrides for a in ("--set", o)], *extra]


def _rows(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints")["model"]


@pytest.fixture(scope="module")
def overrides(tiny_overrides) -> list[str]:
    return [
        *tiny_overrides,
        "train.max_steps=4",
        "train.checkpoint_every=2",
        "train.eval_every=2",
        "methods.lawa.k=2",
        "methods.lawa.interval=1",
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, overrides) -> Path:
    """A finished 4-step run with LAWA (its averaged weights are saved beside the checkpoints)."""
    run = tmp_path_factory.mktemp("runs") / "finished"
    assert _main(_train(run, overrides)) == 0
    assert (run / "lawa_weights.safetensors").is_file()
    return run


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """The test's current folder: anything written outside the run dir (relative paths included) shows up here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def run_copy(workdir, finished) -> Path:
    copy = workdir / "copy"
    shutil.copytree(finished, copy)
    return copy


def _folder_corpus(folder: Path, n: int = 24) -> Path:
    rng = random.Random(0)
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(80)) + ".\n")
    return folder


# ---------------------------------------------------------------------------------------------- continuing


def test_resume_and_fork_extend_a_finished_run_and_say_what_changed(capsys, workdir, finished, run_copy, overrides):
    finished_before = _digest(finished)
    more = ["train.max_steps=6", "train.eval_every=1", "train.keep_checkpoints=1", "train.log_every=1"]
    sets = [a for o in more for a in ("--set", o)]
    assert _main(["train", "--resume", "--run-dir", run_copy, *sets]) == 0
    err = capsys.readouterr().err
    # says which settings it applied (log_every is free: it changes nothing at all), and what the new budget means for
    # the LR
    assert "--resume applies train.eval_every 2 -> 1, train.keep_checkpoints 2 -> 1, train.max_steps 4 -> 6 " in err
    assert (
        "the LR schedule keeps the length it was planned with (4 steps); training past it runs at its final LR 0.0003"
        in err
    )
    assert [r["step"] for r in _rows(run_copy, "eval")][-2:] == [5, 6]  # the new cadence
    assert [p.name for p in (run_copy / "checkpoints").iterdir()] == ["step_00000006"]  # the new retention
    saved = (run_copy / "config.yaml").read_text()
    assert "max_steps: 6" in saved and "keep_checkpoints: 1" in saved  # a later plain --resume keeps them
    # the schedule keeps its planned 4 steps: the extra steps run at its final LR (the floor), no jump back up
    assert [r["lr"] for r in _rows(run_copy, "train") if r["step"] > 4] == pytest.approx([3e-4, 3e-4])

    # a fork: a new run dir continuing from the finished run's checkpoint, the original untouched
    assert _main(["train", "--from", finished, "--run-dir", workdir / "fork", *sets]) == 0
    assert (
        "--from applies train.eval_every 2 -> 1, train.keep_checkpoints 2 -> 1, train.max_steps 4 -> 6 "
        in capsys.readouterr().err
    )
    assert _digest(finished) == finished_before
    fork = workdir / "fork"
    events = [r.get("event") for r in _rows(fork, "event")]
    assert "forked" in events and [r["step"] for r in _rows(fork, "eval")][:3] == [0, 2, 4]  # the history came along
    a, b = _weights(run_copy), _weights(fork)
    assert all(torch.equal(a[k], b[k]) for k in a)  # forking and resuming continue identically


def test_resume_refuses_trajectory_changes_naming_only_the_keys_given(capsys, run_copy, workdir):
    before = _digest(workdir)
    _one_line_error(
        capsys,
        ["train", "--resume", "--run-dir", run_copy, "--set", "optim.lr=1e-2", "--set", "model.n_layers=3"],
        "differs from the run's in model.n_layers, optim.lr, which",
    )
    _one_line_error(
        capsys,
        ["train", "--resume", "--run-dir", run_copy, "--set", "train.max_steps=3"],
        "train.max_steps=3 is below the run's progress (4 steps done)",
    )
    _one_line_error(
        capsys, ["train", "--from", run_copy, "--run-dir", run_copy], "--from and --run-dir are the same run"
    )
    assert _digest(workdir) == before


def test_resume_refuses_an_edited_or_shrunk_corpus_before_writing_anything(capsys, workdir, tiny_overrides):
    corpus = _folder_corpus(workdir / "corpus")
    run = workdir / "run"
    sets = [*tiny_overrides, f"data.source={corpus}", "data.val_fraction=0.1", "train.max_steps=2"]
    assert _main(_train(run, sets)) == 0
    before = _digest(workdir)
    original = (corpus / "doc03.txt").read_text()
    with open(corpus / "doc03.txt", "a") as f:
        f.write("one more line\n")
    _one_line_error(
        capsys,
        ["train", "--resume", "--run-dir", run, "--set", "train.max_steps=3"],
        "changed since this run started (doc03.txt edited",
        "restore it",
    )
    _one_line_error(capsys, ["eval", run], "doc03.txt edited", "its val split is not the run's", "--data")
    (corpus / "doc03.txt").write_text(original)
    (corpus / "doc05.txt").unlink()
    _one_line_error(capsys, ["train", "--resume", "--run-dir", run], "doc05.txt deleted")
    assert _digest(run) == {
        k.removeprefix("run/"): v for k, v in before.items() if k.startswith("run/")
    }  # tokenizer.json too


# ---------------------------------------------------------------------------------------------- run dirs


def test_a_folder_with_the_users_files_is_refused(capsys, workdir, tiny_overrides):
    mine = workdir / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text('{"my": "notes"}')
    (mine / "loss.png").write_bytes(b"my plot")
    before = _digest(workdir)
    _one_line_error(
        capsys, _train(mine, [*tiny_overrides, "train.max_steps=1"]), "is not empty (holds loss.png, summary.json)"
    )
    assert _digest(workdir) == before


def test_a_failed_start_leaves_nothing_behind_and_the_same_command_then_works(capsys, workdir, tiny_overrides):
    run = workdir / "run"
    sets = [*tiny_overrides, "train.max_steps=1"]
    _one_line_error(capsys, _train(run, [*sets, "train.batch_size=100000"]), "fewer than one batch")
    _one_line_error(capsys, _train(run, [*sets, "train.device=tpu"]), "train.device='tpu' is unknown")
    _one_line_error(capsys, _train(run, [*sets, "train.seed=-1"]), "train.seed=-1")
    assert list(workdir.iterdir()) == []  # no run dir, no staging folder
    assert _main(_train(run, sets)) == 0


def test_a_second_writer_is_refused_while_the_run_dir_is_locked(capsys, run_copy):
    holder = FileLock(run_copy / ".lock")  # another process's lock (a separate open file, as in another process)
    holder.acquire()
    try:
        before = _digest(run_copy)
        _one_line_error(
            capsys,
            ["train", "--resume", "--run-dir", run_copy, "--set", "train.max_steps=5"],
            "in use by another hasten",
        )
        assert _digest(run_copy) == before
    finally:
        holder.release()


def test_disk_full_at_setup_or_when_writing_the_plot_or_summary(capsys, workdir, monkeypatch, tiny_overrides):
    import hasten.plots
    import hasten.trainer.rundir as rundir

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setenv("HASTEN_CACHE", str(workdir.parent / f"{workdir.name}-cache"))  # a cache with no token dir yet
    sets = [*tiny_overrides, "train.max_steps=1"]
    with monkeypatch.context() as m:
        m.setattr(shutil, "copyfile", full)  # the tokenizer copied into the new token dir
        _one_line_error(
            capsys, _train(workdir / "a", sets), "writing token shards", "No space left on device", "run again"
        )
    assert list(workdir.iterdir()) == []
    assert _main(["prepare-data", *[a for s in sets for a in ("--set", s)]]) == 0
    with monkeypatch.context() as m:
        m.setattr(rundir.shutil, "copyfile", full)  # the first file copied into the staging folder
        _one_line_error(
            capsys,
            _train(workdir / "a", sets),
            "creating run dir",
            "No space left on device",
            "run the same command again",
        )
    assert list(workdir.iterdir()) == []
    with monkeypatch.context() as m:
        m.setattr(hasten.plots, "plot_run", full)
        _one_line_error(capsys, _train(workdir / "b", sets), "loss.png failed (No space left on device)", "--resume")
    assert (
        load_checkpoint(workdir / "b" / "checkpoints")["progress"]["step"] == 1
        and not (workdir / "b" / "loss.png").exists()
    )
    real = Path.write_text

    def summary_full(self, *args, **kwargs):
        if self.name.startswith(".summary.") and ".tmp" in self.name:  # atomic_write_text's temporary file
            full()
        return real(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", summary_full)
        _one_line_error(capsys, _train(workdir / "c", sets), "summary.json failed (No space left on device)")
    assert not list((workdir / "c").glob("*summary*"))
    real_open = Path.open

    def metrics_full(self, mode="r", *args, **kwargs):
        if self.name == "metrics.jsonl" and mode == "a":
            full()
        return real_open(self, mode, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Path, "open", metrics_full)
        _one_line_error(
            capsys, _train(workdir / "d", sets), "metrics.jsonl failed at step 0 (No space left on device)", "--resume"
        )


def test_runs_of_one_name_started_in_the_same_second_get_their_own_dirs(capsys, workdir, monkeypatch, tiny_overrides):
    import hasten.cli.train as train_cli

    monkeypatch.setattr(train_cli.time, "strftime", lambda fmt, *args: "20261203-120000")
    argv = ["train", *[a for s in [*tiny_overrides, "train.max_steps=1", "name=same"] for a in ("--set", s)]]
    for _ in range(3):
        assert _main(argv) == 0
    capsys.readouterr()
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == [
        "same-20261203-120000",
        "same-20261203-120000-2",
        "same-20261203-120000-3",
    ]


def test_garbage_in_metrics_jsonl_does_not_stop_resume_or_grow(capsys, run_copy, workdir):
    with open(run_copy / "metrics.jsonl", "ab") as f:
        f.write(bytes(random.Random(0).randrange(256) for _ in range(300)))
    code, lines, _ = _cli(capsys, ["train", "--resume", "--run-dir", run_copy, "--set", "train.max_steps=5"])
    assert code == 0 and not lines, lines
    assert all(json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines())  # cleaned on resume
    with open(run_copy / "metrics.jsonl", "ab") as f:
        f.write(b"\xff\xfe\x00 torn")
    code, lines, _ = _cli(capsys, ["grow", run_copy, "--op", "stack", "--factor", "2", "--out", workdir / "grown"])
    assert code == 0 and not [line for line in lines if "error" in line], lines
    assert (workdir / "grown" / "corpus.json").read_bytes() == (run_copy / "corpus.json").read_bytes()
    assert (
        _main(["train", "--resume", "--run-dir", workdir / "grown", "--set", "train.max_steps=6"]) == 0
    )  # on the same tokens


# ------------------------------------------------------------------------------------ export / import / eval / generate


def test_export_and_import_refuse_a_non_empty_target_unless_forced(capsys, workdir, finished):
    out = workdir / "hf"
    out.mkdir()
    (out / "config.json").write_text("my own config")
    (out / "notes.txt").write_text("keep me")
    before = _digest(workdir)
    _one_line_error(
        capsys, ["export", finished, "--out", out], "is not empty (holds config.json, notes.txt)", "--force"
    )
    assert _digest(workdir) == before
    assert _main(["export", finished, "--out", out, "--force"]) == 0
    assert (out / "notes.txt").read_text() == "keep me" and json.loads((out / "config.json").read_text())[
        "model_type"
    ] == "gpt2"
    _one_line_error(capsys, ["export", finished, "--out", finished, "--force"], "is a hasten run dir")

    imported = workdir / "imported"
    assert _main(["import-hf", out, "--out", imported]) == 0
    state = next(imported.glob("step_*/state.pt"))
    before = state.read_bytes()
    _one_line_error(capsys, ["import-hf", out, "--out", imported], "is not empty")
    assert state.read_bytes() == before
    assert _main(["import-hf", out, "--out", imported, "--force"]) == 0


def test_eval_on_its_val_split_other_data_averaged_weights_and_an_imported_model(capsys, workdir, finished):
    _one_line_error(capsys, ["eval", finished, "--sequences", "-5"], "--sequences=-5 must be >= 1")
    code, _, out = _cli(capsys, ["eval", finished])
    raw = json.loads(out)
    assert code == 0 and raw["split"] == "val" and raw["step"] == 4
    code, _, out = _cli(capsys, ["eval", finished, "--weights", "lawa"])
    assert (
        code == 0 and json.loads(out)["loss"] != raw["loss"]
    )  # the average of the last checkpoints differs from the raw weights
    corpus = _folder_corpus(workdir / "other")
    code, _, out = _cli(capsys, ["eval", finished, "--data", corpus, "--sequences", "4"])
    other = json.loads(out)
    assert code == 0 and other["split"] == "all" and other["data"] == str(corpus) and other["loss"] != raw["loss"]

    assert (
        _main(["export", finished, "--out", workdir / "hf"]) == 0
        and _main(["import-hf", workdir / "hf", "--out", workdir / "m"]) == 0
    )
    _one_line_error(capsys, ["eval", workdir / "m"], "without a training config", "--data")
    code, _, out = _cli(capsys, ["eval", workdir / "m", "--data", corpus, "--sequences", "4"])
    assert code == 0 and json.loads(out)["loss"] == pytest.approx(other["loss"], abs=1e-5)  # the same weights, imported


def test_generate_greedy_and_seeded_sampling_also_from_averaged_weights(capsys, finished):
    def generate(*extra) -> str:
        code, lines, out = _cli(
            capsys, ["generate", finished, "--prompt", "def _main(", "--max-new-tokens", "12", *extra]
        )
        assert code == 0 and not lines, lines
        return out

    greedy = generate()
    assert greedy.startswith("def _main(") and generate() == greedy
    sample = generate("--temperature", "1.0", "--top-k", "50", "--seed", "1")
    assert generate("--temperature", "1.0", "--top-k", "50", "--seed", "1") == sample  # a seed gives the same text
    assert generate("--temperature", "1.0", "--top-k", "50", "--seed", "2") != sample
    assert generate("--weights", "lawa").startswith("def _main(")
    _one_line_error(capsys, ["generate", finished, "--max-new-tokens", "0"], "--max-new-tokens=0 must be >= 1")
    _one_line_error(capsys, ["generate", finished, "--weights", "ema"], "no weight average 'ema'")


# ---------------------------------------------------------------------------------------------- signals and processes


def test_a_second_ctrl_c_stops_at_once_but_a_repeated_sigterm_does_not():
    from types import SimpleNamespace

    from hasten.cli import StopOnSignal

    for sig, second_stops in ((signal.SIGINT, True), (signal.SIGTERM, False)):
        trainer = SimpleNamespace(world_size=1, is_main=False, stop_requested=False, methods=[])
        stop = StopOnSignal(trainer)
        try:
            stop._handle(sig, None)
            assert trainer.stop_requested and stop.signal == sig
            if second_stops:
                with pytest.raises(KeyboardInterrupt):
                    stop._handle(sig, None)
            else:
                stop._handle(sig, None)  # e.g. PR_SET_PDEATHSIG's one signal per thread: still one graceful stop
        finally:
            stop.uninstall()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def _start(run_dir: Path, overrides: list[str], *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hasten", *_train(run_dir, overrides, *extra)]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_training(run_dir: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if (run_dir / "metrics.jsonl").is_file() and '"kind": "train"' in (run_dir / "metrics.jsonl").read_text():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("the run did not start training")


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture
def long_run(tiny_overrides) -> list[str]:
    return [
        *tiny_overrides,
        "train.max_steps=100000",
        "train.log_every=1",
        "train.checkpoint_every=0",
        "train.eval_every=100000",
        "train.device=cpu",
    ]


def test_ctrl_c_checkpoints_at_the_next_step_and_a_concurrent_resume_is_refused(capsys, workdir, long_run):
    run = workdir / "run"
    proc = _start(run, long_run)
    try:
        _wait_for_training(run, proc)
        # a second writer (a real second process's lock is the same flock as this in-process attempt)
        _one_line_error(capsys, ["train", "--resume", "--run-dir", run], "in use by another hasten process")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "stopped by SIGINT at step" in err and "Traceback" not in err
    step = load_checkpoint(run / "checkpoints")["progress"]["step"]
    assert step >= max(r["step"] for r in _rows(run, "train"))  # nothing trained after the checkpoint
    assert _main(["train", "--resume", "--run-dir", run, "--set", f"train.max_steps={step + 2}"]) == 0
    assert load_checkpoint(run / "checkpoints")["progress"]["step"] == step + 2


@pytest.mark.slow  # two launches of 2 ranks (~10 s each on 2 cores)
def test_nproc_reports_the_first_error_once_and_sigterm_stops_every_process(workdir, long_run):
    bad = _start(workdir / "bad", [*long_run, "train.batch_size=3"], "--nproc", "2")
    _, err = bad.communicate(timeout=240)
    lines = [line for line in err.splitlines() if line.strip()]
    assert bad.returncode == 2 and lines == [
        "hasten: error: train.batch_size=3 does not split over 2 ranks; use a multiple"
    ], err
    assert not (workdir / "bad").exists()

    run = workdir / "ddp"
    proc = _start(run, long_run, "--nproc", "2")
    try:
        _wait_for_training(run, proc, timeout=240)
        assert len(_processes_mentioning(str(run))) == 3  # the launcher and two workers
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at step" in err and "Traceback" not in err
    step = load_checkpoint(run / "checkpoints")["progress"]["step"]
    assert step >= max(r["step"] for r in _rows(run, "train"))
    deadline = time.time() + 10
    while _processes_mentioning(str(run)) and time.time() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(run)) == []  # no orphans
