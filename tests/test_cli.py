"""The `hasten` command line: info, prepare-data, train, eval, and exit code 2 on user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hasten.cli import main
from hasten.model import GPT, count_params, flops_per_token, model_config


def test_info_cpu_small_through_the_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "hasten", "info", "cpu-small"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    cfg = model_config("cpu-small")
    with torch.device("meta"):
        counts = count_params(GPT(cfg))
    assert result.stdout.startswith("model cpu-small")
    assert f"params total        {counts['total']:,}" in result.stdout
    assert f"params non-embedding {counts['non_embedding']:,}" in result.stdout
    assert f"{flops_per_token(cfg, cfg.max_seq_len):,.0f}" in result.stdout
    assert "gpt2, 4 layers, d_model 128" in result.stdout


def test_prepare_data(capsys, tiny_overrides):
    assert main(["prepare-data", *[a for o in tiny_overrides for a in ("--set", o)]]) == 0
    out = capsys.readouterr().out
    assert "train /" in out and "val tokens" in out and "vocab 512" in out
    token_dir = Path(out.split("token dir:")[1].split("(")[0].strip())
    tokenizer = Path(out.split("tokenizer:")[1].split("\n")[0].strip())
    assert (token_dir / "shard_000000.bin").is_file() and (token_dir / "hasten-tokens.json").is_file()
    assert tokenizer.is_file() and (token_dir / "tokenizer.json").read_bytes() == tokenizer.read_bytes()
    manifest = json.loads((token_dir / "hasten-tokens.json").read_text())
    assert manifest["complete"]
    assert f"{sum(s['documents'] for s in manifest['shards'])} documents" in out


def test_train_then_eval(tmp_path, capsys, tiny_overrides):
    run_dir = tmp_path / "run"
    overrides = [*tiny_overrides, "train.max_steps=8", "train.checkpoint_every=4", "train.eval_every=4"]
    assert main(["train", "--run-dir", str(run_dir), *[a for o in overrides for a in ("--set", o)]]) == 0
    out = capsys.readouterr().out
    assert "done: val loss" in out

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    eval_rows = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train_rows] == [1, 4, 8]  # log_every=4, plus the first step
    assert [r["step"] for r in eval_rows] == [0, 4, 8]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train_rows)
    assert (run_dir / "config.yaml").is_file()
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert checkpoints == ["step_00000004", "step_00000008"]
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 8 and summary["tokens"] == 8 * 8 * 64
    assert summary["val_loss"] == eval_rows[-1]["val_loss"]

    assert main(["eval", str(run_dir)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 8 and result["sequences"] == 8
    assert result["checkpoint"].endswith("step_00000008")
    # the same fixed windows and weights as the trainer's final evaluation
    assert abs(result["val_loss"] - summary["val_loss"]) < 1e-5


def test_bad_key_exits_2_with_one_line(capsys, tiny_overrides, tmp_path):
    code = main(["train", "--run-dir", str(tmp_path / "never"), "--set", "model=tiny", "--set", "train.max_step=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.strip() == "hasten: error: unknown key train.max_step: did you mean 'max_steps'?"
    assert not (tmp_path / "never").exists()
    assert main(["prepare-data", "--set", "data.vocab=512"]) == 2
    assert "did you mean 'vocab_size'?" in capsys.readouterr().err
    assert main(["info", "tiny-gtp"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_stop_at_step_then_resume_finishes_the_same_run(tmp_path, capsys, tiny_overrides):
    sets = [arg for o in tiny_overrides + ["train.max_steps=12"] for arg in ("--set", o)]
    assert main(["train", *sets, "--run-dir", str(tmp_path / "chunked"), "--stop-at-step", "5"]) == 0
    assert json.loads((tmp_path / "chunked" / "summary.json").read_text())["step"] == 5
    assert main(["train", "--resume", "--run-dir", str(tmp_path / "chunked")]) == 0
    assert main(["train", *sets, "--run-dir", str(tmp_path / "straight")]) == 0
    chunked = json.loads((tmp_path / "chunked" / "summary.json").read_text())
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert chunked["step"] == straight["step"] == 12
    assert chunked["val_loss"] == straight["val_loss"]


def test_info_lists_presets_and_takes_a_recipe_or_a_model_mapping(tmp_path, capsys):
    from hasten.model import PRESETS

    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["preset", "family", "layers", "d_model", "heads", "params", "non-embedding"]
    for name in PRESETS:
        cfg = model_config(name)
        with torch.device("meta"):
            counts = count_params(GPT(cfg))
        row = next(line.split() for line in lines if line.split()[0] == name)
        assert row[1:4] == [cfg.family, str(cfg.n_layers), str(cfg.d_model)]
        assert row[-2:] == [f"{counts['total']:,}", f"{counts['non_embedding']:,}"]

    assert main(["info", "{preset: cpu-small, d_model: 64}"]) == 0
    cfg = model_config({"preset": "cpu-small", "d_model": 64})
    with torch.device("meta"):
        total = count_params(GPT(cfg))["total"]
    assert f"params total        {total:,}" in capsys.readouterr().out
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {preset: tiny, n_layers: 3}\ntrain: {seq_len: 32, max_steps: 5}\ndata: {vocab_size: 512}\n"
    )
    assert main(["info", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "gpt2, 3 layers, d_model 32" in out and "(FLOPs at seq 32)" in out
    assert main(["info", "{preset: tiny, n_layer: 3}"]) == 2
    assert "did you mean 'n_layers'" in capsys.readouterr().err


def test_version_and_usage_errors_are_one_line(capsys):
    from hasten import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"hasten {__version__}"
    for argv in (["train", "--nproc", "two"], ["eval"], ["nonsense"]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("hasten: error:"), err


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal():
    import io

    from hasten.trainer.logger import ProgressBar

    stream = io.StringIO()  # a log file or pipe: no carriage-return bar, one line per update that is due
    bar = ProgressBar(total_steps=10, initial=0, enabled=True, stream=stream, plain_every=3600)
    for step in range(1, 11):
        bar.update(1)
        bar.update(0, loss=f"{5 - step * 0.1:.3f}", val=None)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines == ["train step 1/10 (10%) loss=4.900", "train step 10/10 (100%) loss=4.000"]
    assert "\r" not in stream.getvalue()
    quiet = io.StringIO()
    ProgressBar(total_steps=10, initial=0, enabled=False, stream=quiet).update(1, loss="1")
    assert quiet.getvalue() == ""
