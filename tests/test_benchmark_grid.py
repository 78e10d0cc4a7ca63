"""benchmarks/speedup.py: the standard grid's definitions (fair tuning, regime) and the smoke tier end to end."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import speedup  # noqa: E402

from hasten.compare import grid as engine  # noqa: E402
from hasten.recipes import load_config  # noqa: E402


def _grid(tier: str = "standard", out: Path = ROOT / "benchmarks" / "runs" / "unused", **kwargs) -> engine.Grid:
    return engine.Grid(speedup.TIERS[tier], speedup.ROWS, out, jobs=kwargs.pop("jobs", 2), command="x", **kwargs)


def _ctx(preset: str = "bench-d64") -> engine.Ctx:
    tier = speedup.TIERS["standard"]
    ctx = engine.Ctx(preset, engine.size_budget(tier, preset), tier.batch, tier.seq, lr=5e-3)
    # what the compositions build on: the parts' chosen knobs (first candidates stand in for the tuned ones)
    rows = {r.name: r for r in speedup.ROWS}
    for name in ("muon", "gstack", "slw", "lawa"):
        ctx.chosen[name] = rows[name].candidates(ctx)[1]
    ctx.chosen["muon_gstack"] = rows["muon_gstack"].candidates(ctx)[0]
    ctx.chosen["muon_slw"] = rows["muon_slw"].candidates(ctx)[0]
    ctx.chosen["baseline"] = {"lr": 1.0}
    ctx.chosen["combined"] = rows["combined"].candidates(ctx)[1]
    return ctx


def test_every_row_gets_the_same_tuning_budget_and_every_candidate_loads():
    ctx = _ctx()
    grid = _grid()
    names = set()
    tuned = [row for row in speedup.ROWS if row.tuned]
    for row in tuned:
        candidates = row.candidates(ctx) + (row.second_round(ctx) if row.second_round else [])
        runs = engine.TUNING_RUNS * (2 if row.second_round else 1)
        assert len(candidates) == runs, (
            row.name
        )  # equal tuning effort: as many runs as the baseline's LR sweep (and round)
        settings = [tuple(row.settings(ctx, k)) for k in candidates]
        assert len(set(settings)) == runs, f"{row.name}: two tuning runs are the same configuration"
        for knobs in candidates:
            spec = grid.spec(ctx, row, knobs, 0)
            cfg = load_config(spec.recipe_path, spec.overrides)
            assert cfg.train.max_tokens == ctx.budget and cfg.train.eval_sequences is None
            names.add(spec.name)
    assert len(names) == engine.TUNING_RUNS * (
        len(tuned) + sum(bool(r.second_round) for r in tuned)
    )  # distinct run dirs
    assert {r.name for r in speedup.ROWS if r.second_round} == {
        "baseline",
        "combined",
    }  # the same extra effort for both


def test_ablations_drop_one_part_of_combined_and_keep_the_rest():
    ctx, grid = _ctx(), _grid()
    rows = {r.name: r for r in speedup.ROWS}
    knobs = ctx.chosen["combined"]
    full = load_config(*_args(grid.spec(ctx, rows["combined"], knobs, 1, dense=True)))
    no_slw = load_config(*_args(grid.spec(ctx, rows["combined_no_slw"], knobs, 1, dense=True)))
    no_muon = load_config(*_args(grid.spec(ctx, rows["combined_no_muon"], knobs, 1, dense=True)))
    assert (
        "seqlen_warmup" in full.methods and "seqlen_warmup" not in no_slw.methods and "seqlen_warmup" in no_muon.methods
    )
    assert full.optim.name == no_slw.optim.name == "muon" and no_muon.optim.name == "adamw"
    assert full.optim.lr == no_slw.optim.lr and no_muon.optim.lr == pytest.approx(
        full.optim.lr / knobs["base"], rel=1e-3
    )
    assert full.train.batch_size == no_slw.train.batch_size == no_muon.train.batch_size == 2 * ctx.batch
    assert full.methods["lawa"] == no_slw.methods["lawa"] == no_muon.methods["lawa"]
    assert full.methods["seqlen_warmup"] == no_muon.methods["seqlen_warmup"]


def _args(spec):
    return spec.recipe_path, spec.overrides


def test_held_out_runs_of_crossing_rows_evaluate_every_2_percent_of_the_budget():
    ctx, grid = _ctx(), _grid()
    row = {r.name: r for r in speedup.ROWS}["combined"]
    sparse = load_config(*_args(grid.spec(ctx, row, ctx.chosen["combined"], 1)))
    dense = load_config(*_args(grid.spec(ctx, row, ctx.chosen["combined"], 1, dense=True)))
    assert sparse.train.eval_every_tokens is None and dense.train.eval_every_tokens == ctx.budget // engine.DENSE_EVALS
    assert ctx.budget / dense.train.eval_every_tokens >= 50
    # the tuning runs of the committed grid keep their names: the dense setting only enters held-out runs
    assert (
        grid.spec(ctx, row, ctx.chosen["combined"], 0).name
        != grid.spec(ctx, row, ctx.chosen["combined"], 0, dense=True).name
    )


def test_the_regime_is_20_tokens_per_parameter_inside_one_epoch():
    tier = speedup.TIERS["standard"]
    budgets = {p: engine.size_budget(tier, p) for p in [tier.main, *tier.ladder]}
    for preset, budget in budgets.items():
        ratio = budget / engine.non_embedding_params(preset)
        assert 20.0 <= ratio < 20.1 and budget % (tier.batch * tier.seq) == 0
    assert (
        budgets["bench-d32"] < budgets["bench-d48"] < budgets["bench-d64"] < 14_000_000
    )  # the stdlib train split at vocab 512


def test_growth_rows_grow_into_the_baseline_model():
    from hasten.methods.growth.config import GrowthConfig, final_model_config

    ctx = _ctx("bench-d48")
    grid = _grid()
    rows = {r.name: r for r in speedup.ROWS}
    base = load_config(
        grid.spec(ctx, rows["baseline"], {"lr": 1.0}, 0).recipe_path,
        grid.spec(ctx, rows["baseline"], {"lr": 1.0}, 0).overrides,
    ).model_config()
    for name, candidate in (
        ("gstack", 1),
        ("staged", 1),
        ("muon_gstack", 1),
        ("combined", 4),
    ):  # combined's 5th adds G_stack
        spec = grid.spec(ctx, rows[name], rows[name].candidates(ctx)[candidate], 0)
        cfg = load_config(spec.recipe_path, spec.overrides)
        stages = GrowthConfig(**cfg.methods["growth"]).stage_configs()
        final = final_model_config(cfg.model_config(), stages)
        assert final.dropout == (
            0.1 if name == "staged" else 0.0
        )  # staged trains with Shen et al.'s dropout (symmetry breaking)
        assert replace(final, dropout=0.0) == base, name


def _tree_digest(root: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_smoke_tier_runs_the_whole_grid_from_scratch(tmp_path, cache_dir):
    from hasten.compare.runner import claim_report_dir

    out = tmp_path / "smoke"
    claim_report_dir(out)  # an earlier smoke's output
    (out / "stale").write_text("a run from an earlier smoke")  # the smoke tier never reuses anything
    src = _tree_digest(ROOT / "src")
    assert speedup.main(["--tier", "smoke", "--jobs", "1", "--out", str(out)]) == 0
    assert _tree_digest(ROOT / "src") == src  # benchmark results live in benchmarks/results and the README block only
    assert not (out / "stale").exists()
    report = (out / "report.md").read_text()
    for section in ("## Regime", "## Tuning", "## Scale ladder", "## Results", "tokens per parameter"):
        assert section in report, section
    results = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    tier = speedup.TIERS["smoke"]
    assert set(rows) >= set(tier.rows)
    assert results["tuning_seed"] == 0 and results["held_out_seeds"] == list(tier.seeds)
    record = results["tuning_rows"]["baseline"]
    changed = record["chosen"] >= tier.candidates  # the second round moved the baseline's choice on seed 0
    assert ("baseline_first_round" in rows) == changed and ("## Baseline check" in report) == changed
    if changed:  # the first round's pick re-checked on the held-out seeds, in the baseline's own run dirs
        first = min(record["candidates"][: tier.candidates], key=lambda c: c["final"])
        for seed in tier.seeds:  # the first round's best settings, on each held-out seed
            assert (out / "runs" / first["run"].replace("-seed0", f"-seed{seed}") / "summary.json").is_file(), seed
        assert {r["name"] for r in results["baseline_check"]["rows"]} >= {"muon", "combined [lawa]"}
    for name in tier.rows:  # every row ran on every held-out paired seed, and was tuned with the same number of runs
        if name == "baseline_first_round" and not changed:
            continue
        assert rows[name]["seeds"] == list(tier.seeds) and rows[name]["paired"]
        if speedup.ROWS[[r.name for r in speedup.ROWS].index(name)].tuned:
            extra = tier.candidates if name in ("baseline", "combined") else 0
            assert len(results["tuning_rows"][name]["candidates"]) == tier.candidates + extra, name
    for run in (out / "runs").iterdir():  # held-out runs of rows that cross evaluate densely; tuning runs never do
        config = (run / "config.yaml").read_text()
        if run.name.endswith("-seed0") or "-baseline-" in run.name:
            assert "eval_every_tokens: null" in config, run.name
    assert any("eval_every_tokens: 122" in (r / "config.yaml").read_text() for r in (out / "runs").iterdir())
    assert rows["muon"]["delta"]["low"] is not None and rows["lawa [lawa]"]["metric"] == "lawa/val_loss"
    # LAWA's row is its own averaged weights, not EMA's or SWA's that ride along in the same runs
    assert [r["name"] for r in results["rows"] if r["recipe"] == "lawa" and r["quoted"]] == ["lawa [lawa]"]
    claim = results["papers"]["lawa"]
    block = engine.results_block(results, "report.md")
    assert [line.split(" |")[0] for line in block.splitlines() if claim in line] == ["| lawa", "| lawa [lawa]"]
    card = engine.card_block(results, speedup.CARD_ROWS["lawa"], "../report.md")  # the averaging card's block
    assert "| lawa [ema] |" in card and "| baseline |" in card and "| muon |" not in card
    assert "- `lawa` (lawa/val_loss)" in card and "- `muon` (" not in card and "[report.md](../report.md)" in card
    assert set(results["ladder"]) == {tier.main, *tier.ladder}
    for name in ("ladder.png", "loss_vs_flops.png", "ladder-d48/report.md"):
        assert (out / name).stat().st_size > 0, name
    # records: config, metrics and summary of every run; no checkpoints left behind
    runs = list((out / "runs").iterdir())
    assert runs and all((r / "summary.json").exists() and (r / "config.yaml").exists() for r in runs)
    assert not any((r / "checkpoints").exists() for r in runs)

    # an interim report of an unfinished grid: one tuning candidate of gstack and muon's seed 1 not run yet
    gstack = results["tuning_rows"]["gstack"]["candidates"][1]["run"]
    muon_seed1 = next(r for r in runs if r.name.startswith("d32-muon-") and r.name.endswith("-seed1"))
    for run in (out / "runs" / gstack, muon_seed1):
        (run / "summary.json").unlink()
    interim = engine.run_grid(_grid("smoke", out, jobs=1, interim=True))
    assert interim["interim"] and not (out / "runs" / gstack / "summary.json").exists()  # nothing was trained
    rows = {r["name"]: r for r in interim["rows"]}
    assert (
        "gstack" not in rows and "muon_gstack" not in rows and "combined" not in rows
    )  # still tuning, or built on a row that is
    assert rows["muon"]["seeds"] == [2] and rows["baseline"]["seeds"] == [1, 2] and rows["lawa"]["seeds"] == [1, 2]
    assert interim["tuning_rows"]["gstack"]["chosen"] is None and interim["tuning_rows"]["gstack"]["unfinished"] == 1
    report = (out / "report.md").read_text()
    assert (
        "## Interim" in report
        and "`gstack` (still tuning)" in report
        and "`muon` (1/2 seeds)" in report
        and "not run yet" in report
    )
    assert "Interim results" in engine.results_block(interim, "report.md")


def test_every_method_card_has_a_benchmark_block_of_rows_the_grid_runs():
    from hasten.compare.report import CARD_BEGIN, CARD_END
    from hasten.methods import registry

    rows = {r.name: r for r in speedup.ROWS}
    shown = [name for names in speedup.CARD_ROWS.values() for name in names]
    for method, names in speedup.CARD_ROWS.items():
        text = Path(registry.registered()[method].card).read_text()
        assert text.index(CARD_BEGIN) < text.index(CARD_END), method
        assert set(names) <= set(rows), method
    # every row but the baseline and combined's family is in one card
    others = {n for n, r in rows.items() if n != "baseline" and "combined" not in (n, r.ablates, r.first_round_of)}
    assert sorted(shown) == sorted(others - {"baseline_first_round"})


def test_a_recipe_is_quoted_by_the_row_marked_as_its_own():
    rows = [
        {"name": name, "recipe": "lawa", "metric": metric}
        for name, metric in [
            ("lawa", "val_loss"),
            ("lawa [ema]", "ema/val_loss"),
            ("lawa [lawa]", "lawa/val_loss"),
            ("lawa [swa]", "swa/val_loss"),
        ]
    ]
    assert engine.quoted_row(rows, "lawa")["name"] == "lawa"  # unmarked, several averaged rows: the raw one
    assert engine.quoted_row(rows[:2], "lawa")["name"] == "lawa [ema]"  # unmarked, one averaged row: that one
    rows[2]["quoted"] = True
    assert engine.quoted_row(rows, "lawa")["name"] == "lawa [lawa]"
    assert engine.quoted_row(rows, "muon") is None


@pytest.mark.parametrize("bad", [["--tier", "nope"]])
def test_bad_tier_is_rejected(bad):
    with pytest.raises(SystemExit) as err:
        speedup.main(bad)
    assert err.value.code == 2


def test_a_folder_that_is_not_a_comparison_is_never_cleared_or_written(tmp_path, capsys):
    """--out pointing at the user's files is refused with one line (the smoke tier used to clear its --out)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert speedup.main(["--tier", "smoke", "--jobs", "1", "--out", str(mine)]) == 2
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert "not a hasten compare output" in capsys.readouterr().err


def test_a_finished_run_of_an_edited_recipe_is_refused_not_reused(tmp_path):
    """Run dirs are named by the settings, not the recipe text: a run finished before a recipe edit must not count."""
    import yaml

    from hasten.errors import ConfigError

    ctx, rows = _ctx(), {r.name: r for r in speedup.ROWS}
    grid = _grid("standard", tmp_path, jobs=1, interim=True)
    spec = grid.spec(ctx, rows["staged"], {"at": 0.25}, 0)
    saved = load_config(spec.recipe_path, spec.overrides).to_dict()
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "summary.json").write_text(json.dumps({"val_loss": 3.0}))
    (spec.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    grid.run([spec])  # the same config: reused
    saved["model"]["dropout"] = 0.0  # what the staged recipe said before dropout was added
    (spec.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="different config"):
        grid.run([spec])
