"""`hasten compare`: the cost-to-target / speedup / Welch numbers on synthetic curves, and the pipeline end to end."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
from scipy import stats

from hasten.compare.metrics import (
    MAX_RESOLUTION,
    Curve,
    cost_to_target,
    crossing_bracket,
    curve_from_rows,
    mean_curve,
    paired_difference,
    paired_speedups,
    ratio_estimate,
    speedup,
    welch_p,
)
from hasten.compare.report import (
    BEGIN,
    CARD_BEGIN,
    CARD_END,
    END,
    build_results,
    fmt_speedup,
    readme_block,
    render_report,
    update_readme,
)
from hasten.compare.runner import CompareOptions, RunSpec
from hasten.errors import ConfigError


def _curve(losses, tokens_per_eval=100.0, seconds_per_eval=2.0):
    n = len(losses)
    return Curve(
        step=[10 * i for i in range(n)],
        loss=list(losses),
        tokens=[tokens_per_eval * i for i in range(n)],
        flops=[3.0 * tokens_per_eval * i for i in range(n)],
        train_time=[seconds_per_eval * i for i in range(n)],
    )


# --------------------------------------------------------------------------- metrics on synthetic curves


def test_cost_to_target_interpolates_between_evals():
    c = _curve([6.0, 5.0, 4.0, 3.0])  # tokens 0, 100, 200, 300
    assert cost_to_target(c, 4.5) == pytest.approx(150.0)
    assert cost_to_target(c, 3.25, "tokens") == pytest.approx(275.0)
    assert cost_to_target(c, 3.25, "train_time") == pytest.approx(5.5)
    assert cost_to_target(c, 4.0) == pytest.approx(200.0)  # exactly at an eval
    assert cost_to_target(c, 7.0) == 0.0  # already below at the first eval
    assert cost_to_target(c, 2.9) is None  # never reached


def test_cost_to_target_takes_the_first_crossing():
    c = _curve([6.0, 4.0, 5.0, 3.0])  # dips below 4.5 at eval 1, then a spike
    assert cost_to_target(c, 4.5) == pytest.approx(75.0)


def test_speedup_and_mean_curve():
    assert speedup(300.0, 150.0) == pytest.approx(2.0)
    assert speedup(300.0, None) is None
    a, b = _curve([6.0, 5.0, 4.0]), _curve([6.0, 4.0, 3.0, 2.0])
    m = mean_curve([a, b])
    assert m.step == [0, 10, 20] and m.loss == pytest.approx([6.0, 4.5, 3.5])


def test_curve_from_rows_skips_missing_keys_and_dedups_resumed_steps():
    rows = [
        {"kind": "eval", "step": 0, "tokens": 0, "val_loss": 6.0},
        {"kind": "train", "step": 1, "tokens": 10, "loss": 5.9},
        {"kind": "eval", "step": 5, "tokens": 50, "val_loss": 5.0, "lawa/val_loss": 4.9},
        {"kind": "eval", "step": 5, "tokens": 50, "val_loss": 5.0, "lawa/val_loss": 4.9},
    ]
    assert curve_from_rows(rows).step == [0, 5]
    lawa = curve_from_rows(rows, "lawa/val_loss")
    assert lawa.step == [5] and lawa.loss == [4.9]


def test_paired_difference_is_scipys_paired_t():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(2, 7)
        a = [rng.gauss(3.0, 0.1) for _ in range(n)]
        b = [x + rng.gauss(0.05, 0.02) for x in a]
        est = paired_difference(a, b)
        diffs = [x - y for x, y in zip(a, b)]
        mean = sum(diffs) / n
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)  # the textbook interval, computed independently
        assert est.value == pytest.approx(mean) and est.n == n
        assert (est.low, est.high) == pytest.approx((mean - half, mean + half))
        assert est.p == pytest.approx(float(stats.ttest_rel(a, b).pvalue))
        assert est.excludes(0.0) == (est.high < 0 or est.low > 0)


def test_paired_difference_edge_cases():
    one = paired_difference([3.0], [3.5])
    assert one.value == pytest.approx(-0.5) and one.low is None and one.p is None
    exact = paired_difference([1.0, 2.0], [1.5, 2.5])  # the same difference on every seed: no spread
    assert (exact.value, exact.low, exact.high, exact.p) == pytest.approx((-0.5, -0.5, -0.5, 0.0))
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])


def test_ratio_estimate_is_a_geometric_mean_with_a_log_t_interval():
    ratios = [1.2, 1.5, 1.3, 1.1]
    est = ratio_estimate(ratios)
    logs = [math.log(r) for r in ratios]
    mean, sd = sum(logs) / 4, math.sqrt(sum((x - sum(logs) / 4) ** 2 for x in logs) / 3)
    half = float(stats.t.ppf(0.975, 3)) * sd / 2
    assert est.value == pytest.approx(math.exp(mean)) and est.value == pytest.approx((1.2 * 1.5 * 1.3 * 1.1) ** 0.25)
    assert (est.low, est.high) == pytest.approx((math.exp(mean - half), math.exp(mean + half)))
    assert est.excludes(1.0)
    assert not ratio_estimate([0.9, 1.1, 1.05]).excludes(1.0)
    with pytest.raises(ValueError):
        ratio_estimate([1.0, 0.0])


def test_welch_p_matches_scipy_and_edge_cases():
    a, b = [3.1, 3.3, 3.2], [3.6, 3.5, 3.9, 3.7]
    assert welch_p(a, b) == pytest.approx(float(stats.ttest_ind(a, b, equal_var=False).pvalue))
    assert welch_p([1.0], [1.0, 2.0]) is None
    assert welch_p([1.0, 1.0], [2.0, 2.0]) == 0.0 and welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0


def test_crossing_bracket_is_the_pair_of_evaluations_around_the_first_crossing():
    c = _curve([6.0, 5.0, 4.0, 3.0, 2.0])
    assert crossing_bracket(c, 3.5) == (200.0, 300.0) and crossing_bracket(c, 3.5, "flops") == (600.0, 900.0)
    assert crossing_bracket(c, 4.0) == (100.0, 200.0)  # at an evaluation: from the one before
    assert crossing_bracket(c, 7.0) == (0.0, 0.0) and crossing_bracket(c, 1.0) is None


def _run_dirs(
    tmp_path,
    curves: dict[str, list[list[float]]],
    tokens_per_eval: dict[str, int],
    optimizer_flops: bool = True,
    seconds_per_eval: dict[str, float] | None = None,
):
    runs = {}
    for name, seeds in curves.items():
        runs[name] = []
        for seed, losses in enumerate(seeds):
            d = tmp_path / "runs" / f"{name}-seed{seed}"
            seconds = (seconds_per_eval or {}).get(name, 2.0)
            _write_run(d, losses, tokens_per_eval=tokens_per_eval[name], seconds_per_eval=seconds)
            if not optimizer_flops and name != "base":  # a run logged before optimizer FLOPs were recorded
                rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
                (d / "metrics.jsonl").write_text(
                    "".join(json.dumps({k: v for k, v in r.items() if k != "optimizer_flops"}) + "\n" for r in rows)
                )
            runs[name].append((RunSpec(d.name, name, seed, Path("x.yaml"), [], d), d))
    return runs


def test_a_crossing_between_evaluations_further_apart_than_allowed_is_refused(tmp_path):
    """A row that crosses between evaluations 10 % of the budget apart gets no speedup (the interpolation would decide
    it); the same row evaluated every 2 % gets one, with its resolution recorded; the report says why one is refused."""
    base = [
        [6.0 - 3.0 * i / 50 for i in range(51)],
        [6.0 - 3.1 * i / 50 for i in range(51)],
    ]  # 51 evals, 1000 tokens each
    coarse = [
        [6.0 - 3.5 * i / 10 for i in range(11)],
        [6.0 - 3.6 * i / 10 for i in range(11)],
    ]  # 10 evals of 5000 tokens
    dense = [[6.0 - 3.5 * i / 50 for i in range(51)], [6.0 - 3.6 * i / 50 for i in range(51)]]
    runs = _run_dirs(
        tmp_path, {"base": base, "coarse": coarse, "dense": dense}, {"base": 1000, "coarse": 5000, "dense": 1000}
    )
    opts = CompareOptions(recipes=[], report_dir=tmp_path, seeds=2, budget=50_000)
    res = build_results(opts, ["base", "coarse", "dense"], "base", runs, {}, None)
    rows = {r["name"]: r for r in res["rows"]}
    assert res["max_resolution"] == MAX_RESOLUTION
    assert rows["coarse"]["reached"]["tokens"] == 2 and rows["coarse"]["resolution"]["tokens"] == pytest.approx(0.1)
    for axis in ("tokens", "model_flops", "flops"):
        assert rows["coarse"]["speedup"][axis] is None and "unresolved" in rows["coarse"]["refused"][axis]
        assert rows["dense"]["speedup"][axis] is not None and rows["dense"]["resolution"][axis] == pytest.approx(0.02)
    assert rows["dense"]["speedup"]["tokens"]["value"] == pytest.approx(math.sqrt((3.5 / 3.0) * (3.6 / 3.1)), rel=1e-3)
    text = render_report(res)
    assert "unresolved: evaluations 10.0% of the run apart" in text and "| 2.0% |" in text
    # the same coarse row is accepted where a coarser resolution is allowed
    loose = build_results(opts, ["base", "coarse"], "base", runs, {}, None, max_resolution=0.15)
    assert next(r for r in loose["rows"] if r["name"] == "coarse")["speedup"]["tokens"] is not None


def test_slower_steps_do_not_make_a_dense_crossing_unresolved_in_seconds(tmp_path):
    """A row whose steps take twice the baseline's seconds, evaluated every 2 % of its tokens, crosses within 2 % of
    its run in seconds as in tokens: its wall-clock speedup is resolved (as a share of the baseline's seconds the
    bracket would be 4 %, over the limit)."""
    base = [[6.0 - 3.0 * i / 50 for i in range(51)], [6.0 - 3.1 * i / 50 for i in range(51)]]
    slow = [[6.0 - 3.5 * i / 50 for i in range(51)], [6.0 - 3.6 * i / 50 for i in range(51)]]
    runs = _run_dirs(
        tmp_path, {"base": base, "slow": slow}, {"base": 1000, "slow": 1000}, seconds_per_eval={"slow": 4.0}
    )
    opts = CompareOptions(recipes=[], report_dir=tmp_path, seeds=2, budget=50_000)
    row = next(r for r in build_results(opts, ["base", "slow"], "base", runs, {}, None)["rows"] if r["name"] == "slow")
    assert row["resolution"]["train_time"] == pytest.approx(0.02) and "train_time" not in row["refused"]
    tokens, seconds = row["speedup"]["tokens"]["value"], row["speedup"]["train_time"]["value"]
    assert seconds == pytest.approx(tokens / 2, rel=1e-6)  # the same crossing, at twice the seconds per token


def test_total_flops_add_the_optimizer_and_are_refused_where_not_recorded(tmp_path):
    rows = [
        {"kind": "eval", "step": 0, "tokens": 0, "flops": 0.0, "optimizer_flops": 0.0, "val_loss": 6.0},
        {"kind": "eval", "step": 5, "tokens": 50, "flops": 300.0, "optimizer_flops": 60.0, "val_loss": 5.0},
    ]
    curve = curve_from_rows(rows)
    assert curve.flops == [0.0, 360.0] and curve.axis("model_flops") == [0.0, 300.0] and curve.optimizer_counted
    old = curve_from_rows([{k: v for k, v in r.items() if k != "optimizer_flops"} for r in rows])
    assert old.flops == [0.0, 300.0] and not old.optimizer_counted
    base = [[6.0 - 3.0 * i / 50 for i in range(51)]] * 2
    fast = [[6.0 - 3.5 * i / 50 for i in range(51)]] * 2
    runs = _run_dirs(tmp_path, {"base": base, "fast": fast}, {"base": 1000, "fast": 1000}, optimizer_flops=False)
    res = build_results(
        CompareOptions(recipes=[], report_dir=tmp_path, seeds=2, budget=50_000),
        ["base", "fast"],
        "base",
        runs,
        {},
        None,
    )
    row = next(r for r in res["rows"] if r["name"] == "fast")
    assert row["speedup"]["model_flops"] is not None and row["speedup"]["flops"] is None
    assert row["refused"][
        "flops"
    ] == "optimizer FLOPs not recorded" and "optimizer FLOPs not recorded" in render_report(res)


def test_paired_speedups_use_each_seeds_own_target():
    base = [_curve([6.0, 5.0, 4.0, 3.0]), _curve([6.0, 5.0, 4.5, 3.5])]  # targets 3.0 and 3.5, budget 300 tokens
    row = [_curve([6.0, 4.0, 3.0, 2.5]), _curve([6.0, 4.0, 3.8, 3.6])]
    # seed 0 reaches 3.0 at 200 tokens (1.5x); seed 1 never reaches 3.5
    assert paired_speedups(row, base, "tokens") == [pytest.approx(1.5), None]
    assert paired_speedups(row, base, "train_time") == [pytest.approx(6.0 / 4.0), None]


# --------------------------------------------------------------------------- report from synthetic run dirs


def _write_run(run_dir: Path, losses, extra=None, tokens_per_eval=100, events=(), seconds_per_eval=2.0):
    run_dir.mkdir(parents=True)
    rows = []
    for i, loss in enumerate(losses):
        row = {
            "kind": "eval",
            "step": 10 * i,
            "tokens": tokens_per_eval * i,
            "flops": 3.0 * tokens_per_eval * i,
            "optimizer_flops": 0.0,
            "train_time": seconds_per_eval * i,
            "val_loss": loss,
        }
        if extra is not None and i > 0:
            row["lawa/val_loss"] = extra[i]
        rows.append(row)
        rows.append(
            {
                "kind": "train",
                "step": 10 * i + 1,
                "tokens": tokens_per_eval * i + 10,
                "flops": 3.0 * (tokens_per_eval * i + 10),
                "train_time": seconds_per_eval * (i + 0.1),
                "seq_len": 64 if i > 1 else 16,
                "loss": loss,
            }
        )
    rows += [
        {"kind": "event", "step": 1, "event": event, "tokens": tok}  # what a growth logs
        for tok in events
        for event in ("state_replaced", "growth")
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_one_seed_wallclock_speedup_from_a_faster_moment_is_flagged_as_noise(tmp_path):
    """Same FLOPs per step, half the seconds (a quieter machine): one seed cannot show time/FLOP differs, so † it."""
    runs = {}
    for name, seconds in (("base", 2.0), ("same", 1.0)):
        d = tmp_path / "runs" / f"{name}-seed0"
        _write_run(d, [6.0, 5.0, 4.0, 3.0], seconds_per_eval=seconds)
        runs[name] = [(RunSpec(d.name, name, 0, Path("x.yaml"), [], d), d)]
    res = build_results(
        CompareOptions(recipes=[], report_dir=tmp_path, seeds=1, budget=300),
        ["base", "same"],
        "base",
        runs,
        {},
        None,
        max_resolution=1.0,
    )
    row = next(r for r in res["rows"] if r["name"] == "same")
    assert row["speedup"]["flops"]["value"] == pytest.approx(1.0) and row["speedup"]["train_time"][
        "value"
    ] == pytest.approx(2.0)
    assert row["time_per_flop"]["value"] == pytest.approx(0.5) and row["time_per_flop"]["low"] is None
    assert row["wallclock_noise"] and "†" in fmt_speedup(row, "train_time")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy notes the identical seeds of the `avg` rows
def test_results_speedup_not_reached_and_averaged_rows(tmp_path):
    runs = {}
    curves = {
        "base": ([6.0, 5.0, 4.0, 3.0], [6.0, 5.0, 4.2, 3.2], None),  # target = 3.1
        "fast": (
            [6.0, 4.0, 3.0, 2.9],
            [6.0, 4.0, 3.1, 3.0],
            None,
        ),  # mean 6, 4, 3.05, 2.95 -> crosses 3.1 at 197.5 tokens
        "slow": ([6.0, 5.5, 5.0, 4.0], [6.0, 5.5, 5.0, 4.2], None),  # never: gap 4.1 - 3.1 = 1.0
        "avg": ([6.0, 5.0, 4.0, 3.3], [6.0, 5.0, 4.0, 3.3], [0, 4.5, 3.5, 3.0]),
    }
    for name, (s0, s1, extra) in curves.items():
        runs[name] = []
        for seed, losses in enumerate((s0, s1)):
            d = tmp_path / "runs" / f"{name}-seed{seed}"
            _write_run(d, losses, extra, events=(150,) if name == "slow" else ())
            runs[name].append((RunSpec(d.name, name, seed, Path("x.yaml"), [], d), d))
    opts = CompareOptions(recipes=[], report_dir=tmp_path, seeds=2, budget=300)
    res = build_results(
        opts, list(curves), "base", runs, {}, None, max_resolution=1.0
    )  # evaluations 1/3 of the budget apart
    rows = {r["name"]: r for r in res["rows"]}
    assert res["target_loss"] == pytest.approx(3.1)  # the seed mean, drawn in the plots
    assert rows["base"]["speedup"]["tokens"]["value"] == 1.0 and rows["base"]["delta"] is None
    # paired by seed: seed 0 must reach 3.0 (at 200 tokens, 1.5x), seed 1 must reach 3.2 (at 188.9 tokens)
    s1 = 300 / (100 + 100 * (4.0 - 3.2) / (4.0 - 3.1))
    assert rows["fast"]["per_seed_speedup"]["tokens"] == pytest.approx([1.5, s1])
    assert rows["fast"]["speedup"]["tokens"]["value"] == pytest.approx(math.sqrt(1.5 * s1))
    assert (
        rows["fast"]["speedup"]["tokens"]["low"]
        < rows["fast"]["speedup"]["tokens"]["value"]
        < rows["fast"]["speedup"]["tokens"]["high"]
    )
    assert rows["fast"]["delta"]["value"] == pytest.approx(-0.15) and rows["fast"]["p"] is not None
    assert rows["fast"]["speedup"]["train_time"]["value"] == pytest.approx(rows["fast"]["speedup"]["tokens"]["value"])
    assert rows["fast"]["time_per_flop"]["value"] == pytest.approx(1.0) and not rows["fast"]["wallclock_noise"]
    assert rows["slow"]["speedup"]["tokens"] is None and rows["slow"]["reached"]["tokens"] == 0
    assert rows["slow"]["gap"] == pytest.approx(1.0)
    assert rows["avg [lawa]"]["metric"] == "lawa/val_loss"
    assert rows["avg [lawa]"]["vs_raw"] == pytest.approx(3.0 - 3.3)
    # the averaged curve (4.5, 3.5, 3.0 at 100..300 tokens): seed 0 reaches 3.0 at 300 (1x), seed 1 reaches 3.2 at 260
    assert rows["avg [lawa]"]["per_seed_speedup"]["tokens"] == pytest.approx([1.0, 300 / 260])
    markers = res["curves"]["slow"]["markers"]
    assert {m["kind"] for m in markers} == {"growth", "seq_len_full"}
    assert next(m for m in markers if m["kind"] == "growth")["flops"] == pytest.approx(450.0)
    text = render_report(res)
    assert (
        "not reached (0/2 seeds; gap +1.000)" in text
        and "| slow | 2 |" in text
        and "avg [lawa]" in text
        and "3.1000" in text
    )
    assert "-0.1500 [" in text  # the paired delta with its interval

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{BEGIN}\nold\n{END}\ntail\n")
    update_readme(readme, readme_block(res, "benchmarks/results/quick/report.md"))
    new = readme.read_text()
    assert "old" not in new and "| fast |" in new and new.endswith(f"{END}\ntail\n")
    readme.write_text("no markers\n")
    with pytest.raises(ConfigError, match="results:begin"):
        update_readme(readme, readme_block(res, "r.md"))
    card = tmp_path / "card.md"  # a method card's block has its own markers; the README's are left alone
    card.write_text(f"# card\n{BEGIN}\nkept\n{END}\n{CARD_BEGIN}\nold\n{CARD_END}\n")
    update_readme(card, "new", CARD_BEGIN, CARD_END)
    assert card.read_text() == f"# card\n{BEGIN}\nkept\n{END}\n{CARD_BEGIN}\nnew\n{CARD_END}\n"


# --------------------------------------------------------------------------- end to end


def test_compare_cli_end_to_end_reuses_and_resumes(tmp_path, cache_dir, capsys):
    from hasten.cli import main

    common = (
        f"model: tiny\ndata: {{max_docs: 60, vocab_size: 512, cache_dir: {cache_dir}}}\nschedule: {{warmup_steps: 2}}\n"
        "train: {batch_size: 4, max_steps: 6, eval_every: 3, eval_sequences: 4, checkpoint_every: 3, log_every: 1,"
        " tensorboard: false, peak_flops: 1.0e10}\n"
    )
    (tmp_path / "_base.yaml").write_text(common)
    (tmp_path / "slow.yaml").write_text("base: _base.yaml\noptim: {lr: 1.0e-3}\n")
    (tmp_path / "fast.yaml").write_text("base: _base.yaml\noptim: {lr: 1.0e-2}\n")
    out = tmp_path / "report"
    argv = [
        "compare",
        str(tmp_path / "slow.yaml"),
        str(tmp_path / "fast.yaml"),
        "--seeds",
        "2",
        "--out",
        str(out),
        "--keep-checkpoints",
    ]
    assert main(argv) == 0
    for name in (
        "report.md",
        "results.json",
        "loss_vs_tokens.png",
        "loss_vs_flops.png",
        "loss_vs_time.png",
        "stability.png",
    ):
        assert (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in res["rows"]] == ["slow", "fast"] and res["baseline"] == "slow"
    assert all(len(r["final_losses"]) == 2 for r in res["rows"])
    assert res["rows"][1]["paired"] and res["rows"][1]["delta"]["low"] is not None
    for run in res["stability"]["slow"]["runs"]:  # the trainer's own stability rows reach the report
        assert (
            run["train_rows"] == 6
            and run["max_exp_avg_sq"] > 0
            and run["max_grad_norm"] > 0
            and run["spike_events"] is not None
        )
    first = {r["name"]: r["final_losses"] for r in res["rows"]}
    capsys.readouterr()

    # a killed run: no summary and its newest checkpoint gone -> resumed from step 3, bit-exactly
    run = out / "runs" / "fast-seed1"
    (run / "summary.json").unlink()
    shutil.rmtree(sorted((run / "checkpoints").glob("step_*"))[-1])
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("reused") == 3 and "fast-seed1: resumed" in err
    res = json.loads((out / "results.json").read_text())
    assert {r["name"]: r["final_losses"] for r in res["rows"]} == first

    # a changed recipe does not silently reuse stale runs
    (tmp_path / "fast.yaml").write_text("base: _base.yaml\noptim: {lr: 2.0e-2}\n")
    assert main(argv) == 2
    assert "different config" in capsys.readouterr().err


def test_tune_grid_and_pick(tmp_path):
    from hasten.compare.runner import Recipe, _tuning_summary, run_spec, tune_grid

    recipe_path = tmp_path / "base.yaml"
    recipe_path.write_text("model: tiny\ndata: {vocab_size: 512}\noptim: {lr: 2.0e-3}\ntrain: {max_steps: 10}\n")
    opts = CompareOptions(recipes=[recipe_path], report_dir=tmp_path, budget=1000)
    recipe = Recipe("base", recipe_path)
    grid = tune_grid(opts, recipe)
    assert len(grid) >= 5 and grid[len(grid) // 2] == pytest.approx(2e-3)
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert all(r == pytest.approx(ratios[0], rel=1e-3) and r > 1 for r in ratios)  # log-spaced
    sweep = [run_spec(opts, recipe, 0, lr, lr_tag=True) for lr in grid]
    assert "train.max_tokens=1000" in sweep[0].overrides and f"optim.lr={grid[0]!r}" in sweep[0].overrides
    losses = [5.0, 4.0, 3.5, 3.7, float("nan")]  # the largest LR diverged
    summary = _tuning_summary("base", grid, sweep, [{"name": s.name, "val_loss": x} for s, x in zip(sweep, losses)])
    assert summary["best_lr"] == grid[2] and not summary["at_edge"]
    assert summary["final_val_loss"][f"{grid[4]:g}"] is None
    opts.tune_lrs = [1e-3, 2e-3]
    with pytest.raises(ConfigError, match="at least 3"):
        tune_grid(opts, recipe)


# --------------------------------------------------------------------------- stability section


def _write_stability_run(run_dir: Path, ratios, grad_norms, sq_max, events=(), final_loss=3.0, duplicate_step=None):
    """Train rows with the StabilityMonitor keys (spike counters derived from `ratios` with threshold 1.5), two
    evals."""
    run_dir.mkdir(parents=True)
    rows = [{"kind": "eval", "step": 0, "tokens": 0, "flops": 0.0, "train_time": 0.0, "val_loss": 6.0}]
    spikes, above = 0, False
    for i, (ratio, gn) in enumerate(zip(ratios, grad_norms)):
        step = i + 1
        if ratio is not None and ratio > 1.5 and not above:
            spikes += 1
        above = ratio is not None and ratio > 1.5
        row = {
            "kind": "train",
            "step": step,
            "tokens": 100 * step,
            "flops": 300.0 * step,
            "train_time": 0.1 * step,
            "loss": 4.0,
            "grad_norm": gn,
            "loss_ratio": ratio,
            "loss_spike_events": float(spikes),
            "nonfinite_losses": 0.0,
        }
        if step % 2 == 1:  # Adam moments are logged every log_every (=2) steps and at step 1
            row["adam/exp_avg_sq/max"] = sq_max[i]
        rows.append(row)
        if step == duplicate_step:  # a resumed run logs the step again; the plotted series keeps the last row
            rows.append({**row, "loss_ratio": 1.0})
    rows += [{"kind": "event", "step": 2, **e} for e in events]
    n = len(ratios)
    rows.append(
        {
            "kind": "eval",
            "step": n,
            "tokens": 100 * n,
            "flops": 300.0 * n,
            "train_time": 0.1 * n,
            "val_loss": final_loss,
        }
    )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_stability_section_numbers_table_and_plot(tmp_path):
    from hasten.compare.plots import plot_stability

    spec = {  # recipe -> per seed: ratios, grad norms, exp_avg_sq maxima, events, failed?
        "base": [
            (
                [1.0, 1.7, 1.2, 1.6, 1.9, 1.1],
                [1.0, 8.0, 2.0, 3.0, 4.0, 1.0],
                [1e-3, 0, 5e-3, 0, 2e-2, 0],
                [
                    {"event": "skipped_nonfinite", "skipped_total": 1},
                    {"event": "skipped_nonfinite", "skipped_total": 2},
                    {"event": "rollback", "rollbacks": 1},
                ],
                False,
            ),
            ([1.0, 1.2, 2.5, float("nan")], [1.0, 2.0, 30.0, 6.0], [1e-3, 0, 4e-1, 0], [], True),
        ],  # diverged at step 4
        "slw": [
            ([1.0, 1.1, 1.05, 1.2, 1.0, 1.0], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0], [1e-4, 0, 2e-4, 0, 3e-4, 0], [], False),
            ([1.0, 1.3, 1.0, 1.4, 1.0, 1.0], [0.5, 1.5, 0.7, 0.8, 0.9, 1.0], [1e-4, 0, 4e-4, 0, 1e-4, 0], [], False),
        ],
    }
    runs, failed = {}, {}
    for name, seeds in spec.items():
        runs[name] = []
        for seed, (ratios, gns, sq, events, diverged) in enumerate(seeds):
            d = tmp_path / "runs" / f"{name}-seed{seed}"
            _write_stability_run(d, ratios, gns, sq, events, duplicate_step=2 if name == "base" and seed == 0 else None)
            runs[name].append((RunSpec(d.name, name, seed, Path("x.yaml"), [], d), d))
            if diverged:
                failed[d.name] = "DivergenceError: ..."
    opts = CompareOptions(recipes=[], report_dir=tmp_path, seeds=2, budget=600)
    res = build_results(opts, list(spec), "base", runs, failed, None)
    st = res["stability"]
    base, slw = st["base"], st["slw"]
    # the diverged seed is in the stability numbers though not in the loss rows
    assert (
        base["seeds"] == [0, 1]
        and base["diverged"] == 1
        and next(r for r in res["rows"] if r["name"] == "base")["seeds"] == [0]
    )
    b0, b1 = base["runs"]
    assert (b0["spike_events"], b1["spike_events"]) == (2, 1)  # 1.7 | 1.6, 1.9 (one event) ; 2.5
    assert b0["max_loss_ratio"] == pytest.approx(1.9) and b1["max_loss_ratio"] == pytest.approx(2.5)  # nan ignored
    assert b0["max_grad_norm"] == 8.0 and b1["max_grad_norm"] == 30.0
    assert b0["max_exp_avg_sq"] == pytest.approx(2e-2) and b1["max_exp_avg_sq"] == pytest.approx(4e-1)
    assert b0["skipped_steps"] == 2 and b0["rollbacks"] == 1 and b1["skipped_steps"] == 0
    assert base["mean"]["spike_events"] == pytest.approx(1.5)
    assert base["mean"]["max_loss_ratio"] == pytest.approx((1.9 + 2.5) / 2)
    assert base["mean"]["max_grad_norm"] == pytest.approx(19.0)
    assert base["mean"]["max_exp_avg_sq"] == pytest.approx((2e-2 + 4e-1) / 2)
    assert base["mean"]["skipped_steps"] == pytest.approx(1.0)
    assert (
        slw["diverged"] == 0
        and slw["mean"]["spike_events"] == 0
        and slw["mean"]["max_loss_ratio"] == pytest.approx(1.3)
    )
    assert slw["mean"]["max_grad_norm"] == pytest.approx((1.0 + 1.5) / 2)
    # series: last row per step wins (the duplicate step 2 reads 1.0), the max still saw the 1.7
    assert b0["series"]["step"] == [1, 2, 3, 4, 5, 6] and b0["series"]["loss_ratio"][1] == 1.0
    assert b1["series"]["loss_ratio"][3] is None
    assert b0["series"]["exp_avg_sq_max"][1] is None and b0["series"]["exp_avg_sq_max"][2] == pytest.approx(5e-3)
    assert base["mean_series"]["step"] == [1, 2, 3, 4]  # steps both seeds logged
    assert slw["mean_series"]["loss_ratio"] == pytest.approx([1.0, 1.2, 1.025, 1.3, 1.0, 1.0])
    text = render_report(res)
    assert "## Stability" in text
    line = next(x for x in text.splitlines() if x.startswith("| base | 2 |"))
    assert "| 1/2 |" in line and "| 1.5 |" in line and "| 2.200 |" in line
    json.dumps(res)  # results.json stays serialisable
    path = plot_stability(st, tmp_path, ["base", "slw"])
    assert path is not None and path.name == "stability.png" and path.stat().st_size > 0
    assert plot_stability({"x": {"runs": []}}, tmp_path) is None


def test_an_in_process_run_leaves_the_callers_thread_count_alone(tmp_path, cache_dir):
    import torch

    from hasten.compare.runner import execute

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: tiny\ndata: {{max_docs: 60, vocab_size: 512, cache_dir: {cache_dir}}}\n"
        "train: {batch_size: 4, max_steps: 2, eval_every: 2, eval_sequences: 2, tensorboard: false, "
        "progress_bar: false}\n"
    )
    before = torch.get_num_threads()
    spec = RunSpec("r-seed0", "r", 0, recipe, ["train.seed=0"], tmp_path / "runs" / "r-seed0", threads=before + 1)
    assert execute(spec)["status"] == "trained"
    assert torch.get_num_threads() == before
