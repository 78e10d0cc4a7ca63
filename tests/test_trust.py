"""Trust boundaries (issue 24): a checkpoint from elsewhere runs no code in any loader, checkpoints written before
the change still load, and what comes from a user's files (a config.yaml, corpus.json, a run name, an output folder)
is checked before it is used: one line naming the problem and the fix, exit 2, nothing outside the run dir changed.

Most cases run `hasten.cli.main` in process on tiny models; the signal cases need real processes."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hasten.checkpointing import MANIFEST_FILE, STATE_FILE, load_checkpoint
from hasten.checkpointing.files import read_state
from hasten.cli import main
from tests.helpers import cli as _cli
from tests.helpers import one_line_error as _one_line_error

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pre-trust"


def _main(argv) -> int:
    return main([str(a) for a in argv])


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root (run dir locks aside: a refused command may take and release one)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """The test's current folder: anything written outside the run dir (relative paths included) shows up here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def overrides(tiny_overrides) -> list[str]:
    return [*tiny_overrides, "train.max_steps=4", "train.checkpoint_every=2", "train.eval_every=2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, overrides) -> Path:
    run = tmp_path_factory.mktemp("runs") / "finished"
    assert _main(["train", "--run-dir", run, *_sets(overrides)]) == 0
    return run


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, overrides) -> Path:
    run = tmp_path_factory.mktemp("runs") / "sharded"
    assert _main(["train", "--run-dir", run, *_sets([*overrides, "train.checkpoint_format=sharded"])]) == 0
    return run


# ---------------------------------------------------------------------------------------------- no code from data


class _Payload:
    """Pickles as a call of exec: whatever unpickles it with plain pickle creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _rehash(checkpoint: Path) -> None:
    """Rewrite a checkpoint's manifest for its current files, as an attacker would: it then passes verification."""
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())
    for name in manifest["files"]:
        data = (checkpoint / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (checkpoint / MANIFEST_FILE).write_text(json.dumps(manifest))


def _newest(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step_*"))[-1]


def _plant_state_payload(run: Path, marker: Path) -> Path:
    """Every checkpoint's state.pt of `run` gets a payload beside its real state; returns the newest state.pt."""
    for checkpoint in (run / "checkpoints").glob("step_*"):
        state = torch.load(checkpoint / STATE_FILE, weights_only=False)  # our own file, before the payload
        state["progress"]["note"] = _Payload(marker)
        torch.save(state, checkpoint / STATE_FILE)
        _rehash(checkpoint)
    return _newest(run) / STATE_FILE


def _plant_metadata_payload(run: Path, marker: Path) -> Path:
    """Every sharded checkpoint's DCP .metadata of `run` becomes a payload; returns the newest one."""
    for checkpoint in (run / "checkpoints").glob("step_*"):
        (checkpoint / "dcp" / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
        _rehash(checkpoint)
    return _newest(run) / "dcp" / ".metadata"


def _loaders(run: Path, out: Path, overrides: list[str]) -> dict[str, list]:
    """The eight commands that load a checkpoint a user was given, each pointed at `run`."""
    return {
        "eval": ["eval", run],
        "generate": ["generate", run, "--max-new-tokens", "2"],
        "export": ["export", run, "--out", out / "hf"],
        "train --resume": ["train", "--resume", "--run-dir", run],
        "train --from": ["train", "--from", run, "--run-dir", out / "fork"],
        "grow": ["grow", run, "--op", "stack", "--factor", "2", "--out", out / "grown"],
        "sharpness": ["sharpness", run, "--batches", "1", "--out", out / "sharpness"],
        "train.init_from": ["train", "--run-dir", out / "new", *_sets([*overrides, f"train.init_from={run}"])],
    }


@pytest.mark.parametrize(
    "loader", ["eval", "generate", "export", "train --resume", "train --from", "grow", "sharpness", "train.init_from"]
)
def test_a_payload_checkpoint_runs_no_code_in_any_loader(capsys, workdir, finished, overrides, loader):
    run, marker = workdir / "downloaded", workdir / "PWNED"
    shutil.copytree(finished, run)
    state = _plant_state_payload(run, marker)
    torch.load(state, weights_only=False)  # the payload is real: plain unpickling runs it
    assert marker.exists()
    marker.unlink()
    before = _digest(workdir)
    _one_line_error(capsys, _loaders(run, workdir, overrides)[loader], str(state), "would run code", "builtins.exec")
    assert not marker.exists()
    assert _digest(workdir) == before  # nothing written: no fork, grown run, export, report, or changed run


@pytest.mark.parametrize("loader", ["eval", "train --resume"])
def test_a_payload_in_a_sharded_checkpoints_metadata_runs_no_code(capsys, workdir, sharded, overrides, loader):
    run, marker = workdir / "downloaded", workdir / "PWNED"
    shutil.copytree(sharded, run)
    metadata = _plant_metadata_payload(run, marker)
    before = _digest(workdir)
    _one_line_error(capsys, _loaders(run, workdir, overrides)[loader], str(metadata), "would run code", "builtins.exec")
    assert not marker.exists() and _digest(workdir) == before


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("model_config", {"d_model": 32, "backdoor": 1}, "has a model config hasten cannot build"),
        ("model_config", {"d_model": 2**40}, "has a model config hasten cannot build"),
        ("progress", [1, 2, 3], "holds a list as its progress"),
        ("config", "name: x", "holds a str as its config"),
    ],
)
def test_a_checkpoint_of_plain_values_that_hasten_cannot_use_is_one_line(
    capsys, workdir, finished, key, value, fragment
):
    run = workdir / "downloaded"
    shutil.copytree(finished, run)
    state = read_state(_newest(run) / STATE_FILE)
    state[key] = value
    torch.save(state, _newest(run) / STATE_FILE)
    _rehash(_newest(run))
    _one_line_error(capsys, ["eval", run], str(_newest(run)), fragment)


def test_a_clean_sharded_checkpoint_still_loads(capsys, sharded):
    code, _, out = _cli(capsys, ["eval", sharded])
    assert code == 0 and json.loads(out)["step"] == 4


@pytest.fixture
def old_runs(workdir) -> Path:
    """The committed runs written before #24, in the test's folder (their corpus path is relative to it)."""
    shutil.copytree(FIXTURE / "corpus", workdir / "corpus")
    shutil.copytree(FIXTURE / "runs", workdir / "runs")
    return workdir / "runs"


def test_checkpoints_written_before_the_change_still_evaluate_generate_and_export(capsys, old_runs):
    for run, average, step in ((old_runs / "growth-ema", "ema", 7), (old_runs / "lawa-swa", "lawa", 8)):
        for weights in ("raw", average):
            code, _, out = _cli(capsys, ["eval", run, "--weights", weights])
            assert code == 0 and json.loads(out)["step"] == step, out
        code, _, out = _cli(capsys, ["generate", run, "--prompt", "The ", "--max-new-tokens", "3"])
        assert code == 0 and out.startswith("The ")
    assert _main(["export", old_runs / "lawa-swa", "--out", old_runs.parent / "hf"]) == 0


def test_checkpoints_written_before_the_change_still_resume(capsys, old_runs):
    for run, step in ((old_runs / "growth-ema", 7), (old_runs / "lawa-swa", 8)):
        rows = len((run / "metrics.jsonl").read_text().splitlines())
        code, lines, _ = _cli(capsys, ["train", "--resume", "--run-dir", run])
        assert code == 0, lines
        state = load_checkpoint(run / "checkpoints")
        assert state["progress"]["step"] == 12 and step < 12
        assert len((run / "metrics.jsonl").read_text().splitlines()) > rows  # continued, not restarted
    growth = load_checkpoint(old_runs / "growth-ema" / "checkpoints")
    # the ramp, resumed mid-way, ended
    assert growth["model_config"]["d_model"] == 16 and growth["methods"]["growth"]["ramp"] is None


@pytest.fixture
def exported(workdir, finished) -> Path:
    assert _main(["export", finished, "--out", workdir / "hf"]) == 0
    return workdir / "hf"


def test_import_hf_of_a_truncated_safetensors_file_is_one_line(capsys, workdir, exported):
    weights = exported / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _one_line_error(
        capsys, ["import-hf", exported, "--out", workdir / "imported"], str(weights), "truncated or damaged"
    )
    assert not (workdir / "imported").exists()


def test_import_hf_of_a_pickle_that_would_run_code_is_one_line(capsys, workdir, exported):
    from safetensors.torch import load_file

    tensors = load_file(exported / "model.safetensors")
    (exported / "model.safetensors").unlink()
    marker, weights = workdir / "PWNED", exported / "pytorch_model.bin"
    torch.save({**tensors, "payload": _Payload(marker)}, weights)
    _one_line_error(
        capsys, ["import-hf", exported, "--out", workdir / "imported"], str(weights), "would run code", "builtins.exec"
    )
    assert not marker.exists() and not (workdir / "imported").exists()
    torch.save(tensors, weights)  # the same weights without the payload import as before
    assert _main(["import-hf", exported, "--out", workdir / "imported"]) == 0


# ---------------------------------------------------------------------------------------------- resume keeps history


@pytest.fixture
def run_copy(workdir, finished) -> Path:
    copy = workdir / "copy"
    shutil.copytree(finished, copy)
    return copy


def test_resume_refuses_a_run_whose_checkpoints_are_gone_and_the_advice_works(capsys, workdir, run_copy):
    shutil.rmtree(run_copy / "checkpoints")
    before = _digest(workdir)
    line = _one_line_error(
        capsys,
        ["train", "--resume", "--run-dir", run_copy],
        "no checkpoint",
        "checkpoints up to step 4",
        "restore checkpoints/",
        "start over in a new run dir",
    )
    assert _digest(workdir) == before  # metrics.jsonl and summary.json kept, nothing retrained
    advice = line[line.index("hasten train ") :].split()
    assert (
        _main([*advice[1:-1], workdir / "again"]) == 0
    )  # `hasten train RUN/config.yaml --run-dir NEW_DIR` starts over


def test_resume_and_fork_refuse_a_config_yaml_edited_against_the_checkpoint(capsys, workdir, run_copy):
    config = run_copy / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("batch_size: 8", "batch_size: 4").replace("lr: 0.003", "lr: 0.001"))
    before = _digest(workdir)
    for argv in (
        ["train", "--resume", "--run-dir", run_copy],
        ["train", "--from", run_copy, "--run-dir", workdir / "fork"],
    ):
        _one_line_error(
            capsys,
            argv,
            str(config),
            "train.batch_size 8 -> 4",
            "optim.lr 0.003 -> 0.001",
            "put the checkpoint's values back",
        )
        assert _digest(workdir) == before
    config.write_text(
        original.replace("max_steps: 4", "max_steps: 6")
    )  # a budget: what a stopped continuation leaves behind
    assert _main(["train", "--resume", "--run-dir", run_copy]) == 0
    assert load_checkpoint(run_copy / "checkpoints")["progress"]["step"] == 6


# ----------------------------------------------------------------------------------------- paths stay where they belong


def test_a_run_name_cannot_leave_the_runs_folder(capsys, workdir, overrides):
    (workdir / "project").mkdir()
    os.chdir(workdir / "project")  # the default run dir is runs/NAME-TIMESTAMP under the current folder
    for name in ("../../escaped", "a/b", ".."):
        _one_line_error(
            capsys, ["train", *_sets([*overrides, f"name={name}"])], f"name={name!r} must be a plain name", "--run-dir"
        )
    assert [p.name for p in workdir.rglob("*")] == ["project"]


def test_export_and_import_refuse_any_folder_inside_a_run_even_with_force(capsys, workdir, run_copy, exported):
    step = _newest(run_copy)
    (run_copy / "tensorboard").mkdir()
    before = _digest(workdir)
    for out in (step, run_copy / "tensorboard", run_copy / "checkpoints", run_copy / "hf"):
        for force in ([], ["--force"]):
            _one_line_error(
                capsys, ["export", run_copy, "--out", out, *force], f"is inside the hasten run dir {run_copy}"
            )
            _one_line_error(
                capsys, ["import-hf", exported, "--out", out, *force], f"is inside the hasten run dir {run_copy}"
            )
    _one_line_error(capsys, ["export", run_copy, "--out", run_copy, "--force"], "is a hasten run dir")
    assert _digest(workdir) == before and not (run_copy / "hf").exists()


def test_grow_into_a_run_or_onto_a_full_disk_is_one_line_and_the_retry_works(capsys, workdir, monkeypatch, run_copy):
    import errno

    import hasten.checkpointing.files as files

    grow = ["grow", run_copy, "--op", "stack", "--factor", "2", "--out"]
    _one_line_error(capsys, [*grow, run_copy / "grown"], f"is inside the run dir {run_copy}")
    before = _digest(workdir)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(files, "_write_file", full)  # the checkpoint, after metrics.jsonl, tokenizer and corpus were written
        _one_line_error(
            capsys,
            [*grow, workdir / "grown"],
            "creating grown run dir",
            "No space left on device",
            "run the same command again",
        )
    assert _digest(workdir) == before and sorted(p.name for p in workdir.iterdir()) == ["copy"]  # no half-written --out
    code, _, _ = _cli(capsys, [*grow, workdir / "grown"])
    assert code == 0 and load_checkpoint(workdir / "grown" / "checkpoints")["model_config"]["n_layers"] == 4


# ---------------------------------------------------------------------------------------------- one line for each


def test_eval_of_a_run_with_a_corrupt_corpus_json_is_one_line(capsys, workdir, run_copy):
    for garbage in ("{not json", "[1, 2]", '{"split_version": "two"}'):
        (run_copy / "corpus.json").write_text(garbage)
        _one_line_error(capsys, ["eval", run_copy], str(run_copy / "corpus.json"), "is unreadable", "restore it")


def test_eval_of_a_run_without_a_checkpoint_yet_says_so(capsys, workdir, run_copy):
    for checkpoint in _newest(run_copy).parent.iterdir():
        shutil.rmtree(checkpoint)
    for target in (run_copy, run_copy / "checkpoints"):
        line = _one_line_error(capsys, ["eval", target], f"run {run_copy} has no checkpoint yet", "--resume")
        assert "manifest" not in line
    _one_line_error(capsys, ["eval", workdir], f"{workdir} is not a checkpoint")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--temperature", "nan"], "--temperature=nan must be a number >= 0"),
        (["--temperature", "inf"], "--temperature=inf must be a number >= 0"),
        (["--num-samples", "0"], "--num-samples=0 must be >= 1"),
        (["--num-samples", "-2"], "--num-samples=-2 must be >= 1"),
    ],
)
def test_generate_refuses_values_it_cannot_use(capsys, finished, argv, fragment):
    _one_line_error(capsys, ["generate", finished, *argv], fragment)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--nproc", "0"], "--nproc=0 must be >= 1"),
        (["--nproc", "-1"], "--nproc=-1 must be >= 1"),
        (["--stop-at-step", "0"], "--stop-at-step=0 must be >= 1"),
        (["--stop-at-step", "-3"], "--stop-at-step=-3 must be >= 1"),
    ],
)
def test_train_refuses_unusable_process_counts_and_stop_steps(capsys, workdir, overrides, argv, fragment):
    _one_line_error(capsys, ["train", "--run-dir", workdir / "run", *_sets(overrides), *argv], fragment)
    assert list(workdir.iterdir()) == []


def test_a_stop_step_the_run_has_passed_is_refused_before_anything_is_written(capsys, workdir, run_copy):
    before = _digest(workdir)
    for argv in (["--resume", "--run-dir", run_copy], ["--from", run_copy, "--run-dir", workdir / "fork"]):
        _one_line_error(
            capsys,
            ["train", *argv, "--stop-at-step", "3", "--set", "train.max_steps=8"],
            "--stop-at-step=3 must be above 4",
        )
        assert _digest(workdir) == before
    assert _main(["train", "--resume", "--run-dir", run_copy, "--stop-at-step", "6", "--set", "train.max_steps=8"]) == 0
    assert load_checkpoint(run_copy / "checkpoints")["progress"]["step"] == 6


def test_a_model_too_large_to_allocate_is_one_line(capsys, workdir, overrides):
    huge = "model={preset: tiny, vocab_size: 16777216, d_model: 16777216, n_heads: 1, d_ff: 1}"
    _one_line_error(
        capsys,
        ["train", "--run-dir", workdir / "run", *_sets([*overrides, huge])],
        "parameters",
        "more than this machine can allocate",
        "pick a smaller model",
    )
    assert list(workdir.iterdir()) == []


def test_a_full_disk_in_the_tensorboard_writer_thread_is_one_line(capsys, workdir, monkeypatch, overrides):
    import errno

    from tensorboard.summary.writer import record_writer

    real, writes = record_writer.RecordWriter.write, []

    def nearly_full(self, data):  # room for the first few events only
        writes.append(len(data))
        if len(writes) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", nearly_full)  # called in TensorBoard's own writer thread
    run = workdir / "run"
    _one_line_error(
        capsys,
        ["train", "--run-dir", run, *_sets([*overrides, "train.tensorboard=true"])],
        f"TensorBoard events to {run / 'tensorboard'} failed",
        "No space left on device",
        "train.tensorboard=false",
    )
    monkeypatch.undo()
    assert _main(["train", "--resume", "--run-dir", run, "--set", "train.tensorboard=false"]) == 0  # the advice works


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _wait_for(condition, proc: subprocess.Popen, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _trained(run: Path) -> bool:
    return (run / "metrics.jsonl").is_file() and '"kind": "train"' in (run / "metrics.jsonl").read_text()


@pytest.fixture
def long_run(tiny_overrides) -> list[str]:
    return [
        *tiny_overrides,
        "train.max_steps=100000",
        "train.log_every=1",
        "train.checkpoint_every=4",
        "train.eval_every=100000",
        "train.device=cpu",
    ]


@pytest.mark.slow  # a launch of 2 ranks (~10 s on 2 cores)
def test_a_worker_killed_under_nproc_is_named_by_rank_and_signal(workdir, long_run):
    run = workdir / "ddp"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hasten", "train", "--run-dir", str(run), *_sets(long_run), "--nproc", "2"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: _trained(run), proc, 240, "training")
        [rank1] = [
            pid for pid in _processes_mentioning(str(run)) if b"RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes()
        ]
        os.kill(rank1, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert lines[-1].startswith("hasten: error: rank 1 was killed by SIGKILL") and "--resume" in lines[-1], err
    deadline = time.time() + 10
    while _processes_mentioning(str(run)) and time.time() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(run)) == []


@pytest.mark.parametrize("sigterm_rank", [0, 1])
def test_a_rank_the_agent_stopped_with_sigterm_is_not_named_as_the_cause(tmp_path, capsys, sigterm_rank):
    """A rank stuck in a collective with a killed one can die of the agent's SIGTERM before it reports (seen on CI):
    the rank killed by another signal is the cause, whatever the rank order."""
    from hasten.parallel.launch import _launch_outcome

    killed_rank = 1 - sigterm_rank
    code = _launch_outcome(tmp_path, 1, {sigterm_rank: signal.SIGTERM, killed_rank: signal.SIGKILL})
    assert code == 1
    assert capsys.readouterr().err.startswith(f"hasten: error: rank {killed_rank} was killed by SIGKILL")


def test_of_ranks_killed_by_one_signal_the_first_recorded_is_named(tmp_path, capsys):
    """A rank that ignores the agent's SIGTERM while stuck in a collective gets its SIGKILL 30 s later, recorded after
    the rank killed from outside."""
    from hasten.parallel.launch import _launch_outcome

    assert _launch_outcome(tmp_path, 1, {1: signal.SIGKILL, 0: signal.SIGKILL}) == 1
    assert capsys.readouterr().err.startswith("hasten: error: rank 1 was killed by SIGKILL")


def test_a_rank_killed_with_sigterm_alone_is_named(tmp_path, capsys):
    from hasten.parallel.launch import _launch_outcome

    assert _launch_outcome(tmp_path, 1, {1: signal.SIGTERM}) == 1
    assert capsys.readouterr().err.startswith("hasten: error: rank 1 was killed by SIGTERM")


# --------------------------------------------------------------------------------------- compare keeps train's contract


def _recipes(
    folder: Path, cache_dir: str, source: str = "stdlib", steps: int = 4, names=("slow", "fast")
) -> list[Path]:
    """Tiny recipes for `hasten compare` (a long `steps` keeps them training until a signal)."""
    folder.mkdir(exist_ok=True)
    where = "" if source == "stdlib" else f", source: {source}"
    data = f"{{max_docs: 60, vocab_size: 512, cache_dir: {cache_dir}{where}}}"
    (folder / "_base.yaml").write_text(
        f"model: tiny\ndata: {data}\nschedule: {{warmup_steps: 2}}\n"
        f"train: {{batch_size: 4, max_steps: {steps}, eval_every: 100000, eval_sequences: 4, checkpoint_every: 4,"
        " log_every: 1, tensorboard: false, peak_flops: 1.0e10, device: cpu}\n"
    )
    paths = []
    for name, lr in zip(names, ("1.0e-3", "1.0e-2")):
        (folder / f"{name}.yaml").write_text(f"base: _base.yaml\noptim: {{lr: {lr}}}\n")
        paths.append(folder / f"{name}.yaml")
    return paths


def test_compare_refuses_an_out_folder_of_the_users_files_unless_forced(capsys, workdir, cache_dir):
    from hasten.compare.runner import OUTPUT_MARKER, claim_report_dir

    recipes = _recipes(workdir / "recipes", cache_dir)
    mine = workdir / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my report")
    (mine / "results.json").write_text('{"mine": true}')
    before = _digest(workdir)
    _one_line_error(
        capsys,
        ["compare", *recipes, "--out", mine],
        "is not empty (holds report.md, results.json)",
        "not a hasten compare output",
        "--force",
    )
    assert _digest(workdir) == before
    claim_report_dir(mine, force=True)  # what --force does before the runs: the folder is marked, the user's files stay
    assert (mine / OUTPUT_MARKER).is_file() and _digest(workdir) == {
        **before,
        f"mine/{OUTPUT_MARKER}": _digest(mine)[OUTPUT_MARKER],
    }
    claim_report_dir(mine)  # from now on it is compare's own: no --force needed


def test_compare_never_writes_into_a_run_dir_or_a_compared_corpus(capsys, workdir, cache_dir, finished):
    corpus = workdir / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"doc{i}.txt").write_text("the model reads data and learns to predict each next token\n" * 20)
    recipes = _recipes(workdir / "recipes", cache_dir, source=str(corpus))
    shutil.copytree(finished, workdir / "run")
    before = _digest(workdir)
    for force in ([], ["--force"]):
        _one_line_error(capsys, ["compare", *recipes, "--out", workdir / "run", *force], "is a hasten run dir")
        _one_line_error(
            capsys, ["compare", *recipes, "--out", workdir / "run" / "reports", *force], "is inside the hasten run dir"
        )
        for out in (corpus, corpus / "reports"):
            _one_line_error(
                capsys, ["compare", *recipes, "--out", out, *force], "is inside the corpus of recipe slow", "outside it"
            )
    assert _digest(workdir) == before and not (corpus / "reports").exists()


def test_compare_outputs_from_before_the_marker_are_its_own(workdir):
    from hasten.compare.runner import OUTPUT_MARKER, _is_compare_output, claim_report_dir

    repo = Path(__file__).resolve().parents[1]
    assert _is_compare_output(
        repo / "benchmarks" / "results" / "standard"
    )  # benchmarks/speedup.py's records, read only
    with_results = workdir / "reported"
    with_results.mkdir()
    (with_results / "results.json").write_text(json.dumps({"format": "hasten-compare-2"}))
    interrupted = workdir / "interrupted"
    (interrupted / "runs" / ".half-started.starting-x").mkdir(parents=True)  # a grid stopped before its first report
    (interrupted / ".running").mkdir()
    for folder in (with_results, interrupted):
        claim_report_dir(folder)
        assert (folder / OUTPUT_MARKER).is_file()
    (interrupted / "notes.txt").write_text("mine")  # a folder with something else in it is not one
    (interrupted / OUTPUT_MARKER).unlink()
    assert not _is_compare_output(interrupted)


def _workers(pid: int) -> list[int]:
    """The pool workers among a process's children (multiprocessing's resource tracker aside)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            spawned = b"spawn_main" in (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and spawned:  # the field after the state is the parent's pid
            out.append(int(stat.parent.name))
    return out


def _alive(pids: list[int], wait: float = 60) -> list[int]:
    """Those of `pids` still running after up to `wait` seconds (zombies count as gone)."""

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.time() + wait
    while any(map(running, pids)) and time.time() < deadline:
        time.sleep(0.2)
    return [pid for pid in pids if running(pid)]


def _events(run: Path, event: str) -> int:
    path = run / "metrics.jsonl"
    return path.read_text().count(f'"event": "{event}"') if path.is_file() else 0


@pytest.mark.slow  # three launches of a 2-worker grid (~1 min on 2 cores)
def test_compare_workers_stop_with_a_checkpoint_die_with_it_and_the_rerun_resumes(workdir, cache_dir):
    recipes = _recipes(workdir / "recipes", cache_dir, steps=100000)
    out = workdir / "out"
    runs = [out / "runs" / "slow-seed0", out / "runs" / "fast-seed0"]
    command = [sys.executable, "-m", "hasten", "compare", *map(str, recipes), "--jobs", "2", "--out", str(out)]

    def launch(ready) -> tuple[subprocess.Popen, list[int]]:
        proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: all(ready(run) for run in runs), proc, 240, "both runs training")
        return proc, _workers(proc.pid)

    def steps() -> list[int]:
        return [load_checkpoint(run / "checkpoints")["progress"]["step"] for run in runs]

    proc, workers = launch(_trained)  # SIGTERM: the workers stop after their step with a checkpoint, the grid exits 143
    assert len(workers) == 2
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("hasten: stopped by SIGTERM") and _alive(workers) == []
    first = steps()
    assert all(step > 0 for step in first)

    proc, workers = launch(
        lambda run: _events(run, "resumed") == 1
    )  # the rerun resumes; SIGKILL of the grid ends its workers
    proc.kill()
    proc.communicate(timeout=60)
    assert _alive(workers) == []  # none left training (nor holding its run's lock)
    second = steps()
    assert all(b > a for a, b in zip(first, second))  # they checkpointed on their way out

    proc, workers = launch(lambda run: _events(run, "resumed") == 2)  # and a Ctrl-C stops it as SIGTERM does
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in err, err
    assert _alive(workers) == [] and all(b >= a for a, b in zip(second, steps()))


@pytest.mark.slow  # one launch of a grid run in process (~15 s on 2 cores)
def test_compare_in_one_process_stops_its_run_with_a_checkpoint_and_starts_no_other(workdir, cache_dir):
    recipes = _recipes(workdir / "recipes", cache_dir, steps=100000)
    out = workdir / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hasten", "compare", *map(str, recipes), "--out", str(out)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = out / "runs" / "slow-seed0"
    _wait_for(lambda: _trained(first), proc, 240, "the first run training")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert load_checkpoint(first / "checkpoints")["progress"]["step"] > 0 and not (first / "summary.json").exists()
    assert not (out / "runs" / "fast-seed0").exists() and list((out / ".running").iterdir()) == []
