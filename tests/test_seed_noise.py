"""benchmarks/seed_noise.py: crossing init and data-order seeds of a finished run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import seed_noise  # noqa: E402

from hasten.compare.runner import RunSpec, execute  # noqa: E402


def test_crossing_reuses_the_diagonal_and_tells_init_from_data(tmp_path, tiny_overrides):
    grid = tmp_path / "grid" / "runs"
    for seed in (0, 1):  # the grid's runs, finished as `hasten compare` finishes them (summary.json)
        name = f"tiny-abc-seed{seed}"
        spec = RunSpec(
            name,
            "tiny",
            seed,
            None,
            tiny_overrides + ["train.max_steps=8", f"train.seed={seed}", f"name={name}"],
            grid / name,
        )
        assert execute(spec)["status"] == "trained"
    out = tmp_path / "noise"
    assert (
        seed_noise.main(["--run", str(grid / "tiny-abc-seed0"), "--seeds", "0", "1", "--jobs", "1", "--out", str(out)])
        == 0
    )
    trained = sorted(p.name for p in (out / "runs").iterdir())
    assert trained == ["init0-data1", "init1-data0"]  # the diagonal is the grid's own runs
    finals = json.loads((out / "results.json").read_text())
    assert finals["init0-data0"] == json.loads((grid / "tiny-abc-seed0" / "summary.json").read_text())["val_loss"]
    assert len(set(finals.values())) == 4  # four different runs
    assert "| init 1 |" in (out / "README.md").read_text() and (out / "curves.png").is_file()
    # a rerun trains nothing and writes the same table
    assert (
        seed_noise.main(["--run", str(grid / "tiny-abc-seed0"), "--seeds", "0", "1", "--jobs", "1", "--out", str(out)])
        == 0
    )
    assert json.loads((out / "results.json").read_text()) == finals


def test_bad_input_is_one_line(tmp_path, capsys):
    assert seed_noise.main(["--run", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "has no config.yaml" in capsys.readouterr().err
    run = tmp_path / "run-seed0"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    assert seed_noise.main(["--run", str(run), "--jobs", "0", "--out", str(tmp_path / "out")]) == 2
    assert "--jobs=0 must be >= 1" in capsys.readouterr().err
    assert seed_noise.main(["--run", str(run), "--seeds", "0", "0", "--out", str(tmp_path / "out")]) == 2
    assert "repeats a seed" in capsys.readouterr().err
    users = tmp_path / "notes"
    users.mkdir()
    (users / "README.md").write_text("mine")
    assert seed_noise.main(["--run", str(run), "--out", str(users)]) == 2
    assert "did not write" in capsys.readouterr().err and (users / "README.md").read_text() == "mine"
