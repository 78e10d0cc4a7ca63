"""Bad input gets one clear line on stderr and exit code 2: no traceback, and nothing already on disk
is overwritten. The CLI runs in process (`hasten.cli.main`) so every case costs milliseconds, except
the few that need a real run dir."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import shutil
import typing
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import hasten.checkpointing.files as ck
from hasten.cli import main
from hasten.config import DataConfig, GuardConfig, OptimConfig, RunConfig, ScheduleConfig, TrainConfig
from hasten.errors import ConfigError
from hasten.model import GPT, ModelConfig
from hasten.optim.builder import build_optimizer
from hasten.recipes import load_config
from tests.helpers import cli, one_line_error


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _train(run_dir, overrides, *extra):
    argv = ["train", "--run-dir", str(run_dir)]
    for item in overrides:
        argv += ["--set", item]
    return argv + list(extra)


def _corpus(tmp_path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _small_data(cache_dir, folder) -> list[str]:
    return [
        "model=tiny",
        f"data.source={folder}",
        "data.vocab_size=300",
        f"data.cache_dir={cache_dir}",
        "train.max_steps=2",
        "train.progress_bar=false",
        "train.tensorboard=false",
        "train.peak_flops=1e10",
    ]


# ---------------------------------------------------------------------------------------------- corpus


def test_empty_corpus(tmp_path, capsys, cache_dir):
    folder = _corpus(tmp_path, {"a.txt": b"", "b.txt": b"   \n\n"})
    one_line_error(capsys, _train(tmp_path / "run", _small_data(cache_dir, folder)), "no usable text", "empty: 2")
    assert not (tmp_path / "run").exists()  # a failed start leaves nothing that would block the same command


def test_only_binary_or_non_utf8_files_is_refused(tmp_path, capsys, cache_dir):
    folder = _corpus(tmp_path, {"a.bin": b"\x00\x01\x02" * 100, "b.txt": "caf\u00e9".encode("latin-1") * 50})
    one_line_error(capsys, _train(tmp_path / "run", _small_data(cache_dir, folder)), "binary: 1", "not_utf8: 1")


def test_binary_and_non_utf8_files_are_skipped_with_a_count(tmp_path, capsys, cache_dir):
    text = "def f(x):\n    return x + 1\n" * 30
    folder = _corpus(
        tmp_path,
        {"a.bin": b"\x00\xff" * 50, "b.txt": b"\xff\xfe bad", **{f"t{i}.txt": text.encode() for i in range(4)}},
    )
    code = main(
        [
            "prepare-data",
            "--set",
            "model=tiny",
            "--set",
            f"data.source={folder}",
            "--set",
            "data.vocab_size=300",
            "--set",
            f"data.cache_dir={cache_dir}",
            "--set",
            "data.val_fraction=0.3",
            "--set",
            "train.max_steps=1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "skipped binary: 1 (a.bin), not_utf8: 1 (b.txt)" in out


def test_corpus_shorter_than_one_batch(tmp_path, capsys, cache_dir):
    folder = _corpus(tmp_path, {f"t{i}.txt": b"short text number %d\n" % i for i in range(4)})
    one_line_error(
        capsys,
        _train(tmp_path / "run", [*_small_data(cache_dir, folder), "data.val_fraction=0.3"]),
        "fewer than one batch",
    )


def test_missing_corpus(tmp_path, capsys, cache_dir):
    one_line_error(capsys, _train(tmp_path / "run", _small_data(cache_dir, tmp_path / "nope")), "matches no files")


def _offline_load_dataset(name, split=None, **kwargs):
    raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")


def test_empty_source_corrupt_parquet_and_offline_hf_dataset(tmp_path, capsys, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data.source "" used to read the whole current folder
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 4)
    before = _tree_digest(tmp_path)
    for source, fragment in (
        ("", "data.source is empty"),
        ("bad.parquet", "not a readable parquet file"),
        ("hf:nobody-here/no-such-dataset", "could not be loaded (ConnectionError"),
    ):
        if source.startswith("hf:"):  # offline: what datasets raises then (its offline switch is read once, at import)
            monkeypatch.setattr(pytest.importorskip("datasets"), "load_dataset", _offline_load_dataset)
        one_line_error(capsys, _train(tmp_path / "run", _small_data(cache_dir, source)), fragment)
        assert _tree_digest(tmp_path) == before


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.n_heads=3", "does not divide"),
        ("train.seq_len=9999", "exceeds model max_seq_len"),
        ("train.max_stepz=5", "did you mean 'max_steps'"),
        ("optim.betta1=0.9", "did you mean 'beta1'"),
        ("model.n_layer=2", "did you mean 'n_layers'"),
        ("train.guard.spike_ration=2", "did you mean 'spike_ratio'"),
        ("optim.lr=nan", "finite number"),
        ("optim.lr=.inf", "finite number"),
        ("optim.lr=-1", "must be positive"),
        ("train.batch_size=abc", "must be an integer"),
        ("train.micro_batch_size=3", "must divide"),
        ("model=tinny", "did you mean 'tiny'"),
        ("methods.lawaa.k=2", "did you mean 'lawa'"),
        ("train.dtype=float8", "unknown"),
        ("train.max_steps", "must look like key.path=value"),
        ("train.device=tpu", "train.device='tpu' is unknown"),
        ("train.seed=-1", "train.seed=-1 must be in"),
        ("train.data_seed=-1", "train.data_seed=-1 must be in"),
        ("methods.growth.stages.0.at_steps=5", "methods.growth.stages is not a list here"),
        ("0.at_steps=5", "starts with a list index"),
    ],
)
def test_invalid_config_values(tmp_path, capsys, override, fragment):
    run = tmp_path / "run"
    one_line_error(
        capsys,
        [
            "train",
            "--run-dir",
            str(run),
            "--set",
            "model=tiny",
            "--set",
            "data.vocab_size=512",
            "--set",
            "train.max_steps=2",
            "--set",
            override,
        ],
        fragment,
    )
    assert not run.exists()


def test_set_addresses_one_element_of_a_list():
    stages = (
        "methods.growth.stages=[{dim: depth, op: stack, factor: 2, at_steps: 5}, "
        "{dim: depth, op: stack, factor: 2, at_steps: 9}]"
    )
    cfg = load_config(
        None, ["model=tiny", "data.vocab_size=512", "train.max_steps=20", stages, "methods.growth.stages.1.at_steps=12"]
    )
    assert [s["at_steps"] for s in cfg.methods["growth"]["stages"]] == [5, 12]
    assert cfg.methods["growth"]["stages"][1]["op"] == "stack"  # the rest of the element is kept
    with pytest.raises(ConfigError, match="has 2 element"):
        load_config(
            None,
            ["model=tiny", "data.vocab_size=512", "train.max_steps=20", stages, "methods.growth.stages.2.at_steps=1"],
        )


def test_bad_recipe_files(tmp_path, capsys):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(128, 256)) * 2)
    one_line_error(capsys, ["train", str(binary)], "not a readable UTF-8 text file")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    one_line_error(capsys, ["train", str(broken)], "not valid YAML")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    one_line_error(capsys, ["train", str(listed)], "must be a YAML mapping")
    one_line_error(capsys, ["train", str(tmp_path / "missing.yaml")], "does not exist")


# ---------------------------------------------------------------------------------------------- run dirs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_overrides):
    """A real (2-step) run dir with its config, metrics and checkpoint."""
    run = tmp_path_factory.mktemp("runs") / "done"
    assert main(_train(run, [*tiny_overrides, "train.max_steps=2"])) == 0
    return run


@pytest.fixture
def run_copy(tmp_path, finished_run):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    return copy


def test_run_dir_that_holds_another_run(capsys, tiny_overrides, run_copy):
    before = _tree_digest(run_copy)
    one_line_error(capsys, _train(run_copy, [*tiny_overrides, "train.max_steps=2"]), "already holds a run")
    assert _tree_digest(run_copy) == before


def test_resume_with_a_different_config(capsys, tiny_overrides, run_copy):
    before = _tree_digest(run_copy)
    one_line_error(
        capsys,
        _train(run_copy, [*tiny_overrides, "train.max_steps=2", "model.n_layers=3"], "--resume"),
        "config differs",
        "model",
    )
    one_line_error(
        capsys, _train(run_copy, [*tiny_overrides, "train.max_steps=2", "optim.lr=1e-2"], "--resume"), "optim.lr"
    )
    assert _tree_digest(run_copy) == before


def test_run_dir_that_cannot_be_created(tmp_path, capsys, tiny_overrides):
    (tmp_path / "a-file").write_text("mine")
    before = _tree_digest(tmp_path)
    for run_dir, fragment in (
        (tmp_path / "a-file" / "run", "a-file is a file"),
        (tmp_path / "a-file", "is a file"),
        (Path("/proc/hasten-nope"), "cannot create run dir /proc/hasten-nope"),
    ):
        one_line_error(capsys, _train(run_dir, [*tiny_overrides, "train.max_steps=1"]), fragment)
    assert _tree_digest(tmp_path) == before


def test_resume_of_a_dir_without_a_run(tmp_path, capsys):
    one_line_error(capsys, ["train", "--resume", "--run-dir", str(tmp_path / "none")], "not a run dir")
    one_line_error(capsys, ["train", "--resume"], "needs --run-dir")


def test_resume_with_an_unreadable_config_yaml(capsys, run_copy):
    (run_copy / "config.yaml").write_bytes(b"\xff\xfe\x00garbage: [")
    before = _tree_digest(run_copy)
    one_line_error(capsys, ["train", "--resume", "--run-dir", str(run_copy)], "config.yaml")
    assert _tree_digest(run_copy) == before


def test_resume_when_every_checkpoint_is_broken(capsys, tiny_overrides, run_copy):
    for state in (run_copy / "checkpoints").glob("step_*/state.pt"):
        state.write_bytes(state.read_bytes()[:100])
    before = _tree_digest(run_copy)
    code, lines, _ = cli(capsys, _train(run_copy, [*tiny_overrides, "train.max_steps=2"], "--resume"))
    assert code == 2 and lines == [lines[0]] and "every checkpoint" in lines[0] and "broken" in lines[0]
    assert _tree_digest(run_copy) == before


def test_eval_of_a_broken_or_missing_checkpoint(tmp_path, capsys, run_copy):
    one_line_error(capsys, ["eval", str(tmp_path / "missing")], "does not exist")
    (ckpt,) = (run_copy / "checkpoints").glob("step_*")
    (ckpt / "manifest.json").unlink()
    one_line_error(capsys, ["eval", str(ckpt)], "no manifest.json")


def test_disk_full_while_saving(tmp_path, capsys, monkeypatch, tiny_overrides):
    real_write = ck._write_file
    calls = {"n": 0}

    def fills_up(path, data):  # the first checkpoint (step 1) fits, then the disk is full
        if Path(path).name == "state.pt":
            calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, data)

    monkeypatch.setattr(ck, "_write_file", fills_up)
    run = tmp_path / "run"
    line = one_line_error(
        capsys,
        _train(run, [*tiny_overrides, "train.max_steps=2", "train.checkpoint_every=1"]),
        "saving checkpoint at step 2 failed",
        "No space left on device",
        "previous checkpoint is intact",
    )
    assert "Traceback" not in line
    ckpts = run / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["step_00000001"]  # no half checkpoint, no temp dir
    assert ck.verify_checkpoint(ckpts / "step_00000001") is None


# ---------------------------------------------------------------------------------------------- fuzzing

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "train": TrainConfig,
    "train.guard": GuardConfig,
    "model": ModelConfig,
}
KEYS = [
    f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls) if f.name != "guard"
]
KEYS += [
    "name",
    "model",
    "methods",
    "train.nonsense",
    "methods.lawa.k",
    "methods.ema.decay",
    "methods.seqlen_warmup.min_len",
]

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["tiny", "adamw", "cosine", "bfloat16", "cpu", "1e3", "-0", "nan", "stdlib", "[1, 2]", "{a: 1}"]),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.sampled_from(["a", "k", "preset"]), st.integers(-3, 3), max_size=2),
)


def _nest(key: str, value) -> dict:
    out: dict = {}
    cursor = out
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=4))
# failures the fuzz found in CI: accepted by load_config, then refused (or crashed) building the model/optimizer
@example([("model.d_ff", 7.205759403792794e16)])
@example([("optim.block_overrides", {"a": 0})])
@example([("optim.lr_ratios", {"a": 0})])
def test_config_fuzz_is_valid_or_config_error(pairs):
    """Random values of random types for random keys: a valid RunConfig or a one-line ConfigError, nothing else."""
    from hasten.config import merge_layer

    values: dict = {"model": "tiny", "data": {"vocab_size": 512}, "train": {"max_steps": 2}}
    for key, value in pairs:
        values = merge_layer(values, _nest(key, value))
    try:
        cfg = load_config(None, base=values)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err)
        return
    assert isinstance(cfg, RunConfig)
    mcfg = cfg.model_config()  # a config that validates also builds ...
    if mcfg.n_layers * mcfg.d_model <= 10**5:  # ... its model and optimizer (on the meta device: no memory)
        with torch.device("meta"):
            model = GPT(mcfg)
        build_optimizer(model, cfg.optim)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(KEYS), st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=16))
def test_set_override_fuzz_is_valid_or_config_error(key, raw):
    """`--set key=<any text>` goes through the YAML parser first; it must still end in a RunConfig or a ConfigError."""
    try:
        load_config(None, ["model=tiny", "data.vocab_size=512", "train.max_steps=2", f"{key}={raw}"])
    except ConfigError as err:
        assert "\n" not in str(err)


def test_fuzz_keys_cover_every_section():
    assert {k.split(".")[0] for k in KEYS} >= {"data", "optim", "schedule", "train", "model"}
    assert typing.get_type_hints(TrainConfig)["guard"] is GuardConfig
