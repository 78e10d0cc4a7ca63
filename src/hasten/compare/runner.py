"""Run every recipe for every seed (reusing finished runs, resuming unfinished ones) and collect curves.

Layout of a report dir:

    REPORT_DIR/runs/<recipe>-seed<k>/          one ordinary run dir per (recipe, seed)
    REPORT_DIR/runs/<baseline>-lr<LR>-seed<k>/  the baseline when --tune-baseline sweeps its LR
    REPORT_DIR/report.md, results.json, loss_vs_{tokens,flops,time}.png

Runs go seed-major (seed 0 of every recipe, then seed 1, ...), so slow drift of a shared machine
hits every recipe alike instead of penalizing whichever recipe ran last. With --jobs N each run gets
cores/N threads (torch and OpenMP), so parallel runs never oversubscribe the cores, and all runs share
one torch.compile cache.

A long grid can be paused between runs: while REPORT_DIR/PAUSE exists no new run starts (runs in flight
finish); REPORT_DIR/.running/ holds one file per run in flight, so a quiet machine is one where it is empty.

REPORT_DIR is compare's own (claim_report_dir): new, empty, or marked by OUTPUT_MARKER (or a compare output from
before the marker), never a run dir or a folder inside a compared corpus; anything else needs --force. SIGTERM /
SIGINT stop the grid like `hasten train`: no new run starts, the runs in flight stop after their step with a
checkpoint (the pool forwards the signal to its workers) and the same command resumes them. A worker dies with
the compare process (die_with_parent), so not even a SIGKILL of it leaves a run training.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hasten.checkpointing.dirs import enclosing_run_dir
from hasten.errors import ConfigError, HastenError
from hasten.files import atomic_write_text
from hasten.layout import COMPARE_MARKER, is_run_dir

DEFAULT_TUNE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # x the recipe's LR: 5 log-spaced values (factor 2 apart)
OUTPUT_MARKER = COMPARE_MARKER  # in a report dir: this folder is hasten compare's output
LEGACY_ENTRIES = {"runs", ".running", "PAUSE"}  # all that an interrupted compare from before OUTPUT_MARKER left

# A SIGTERM / SIGINT received in this process while no run was training: no run starts any more (during a run,
# the trainer's StopOnSignal handles them). In a pool worker, _parent_pid is the compare process.
_stop_signal: int | None = None
_parent_pid: int | None = None


class GridStopped(HastenError):
    """SIGTERM / SIGINT stopped the grid; the runs in flight saved a checkpoint and the same command resumes them."""

    def __init__(self, signum: int):
        super().__init__(
            f"stopped by {signal.Signals(signum).name}: the runs in flight saved a checkpoint; run the same command "
            "again to resume them"
        )
        self.exit_code = 128 + signum


@dataclass
class Recipe:
    name: str  # row name: the recipe file's stem
    path: Path
    overrides: list[str] = field(default_factory=list)  # --set-for NAME:KEY=VALUE


@dataclass
class RunSpec:
    name: str  # run dir name
    recipe: str
    seed: int
    recipe_path: Path
    overrides: list[str]
    run_dir: Path
    threads: int | None = None  # torch / OpenMP threads of this run (cores / jobs)
    lr: float | None = None  # set for baseline LR-sweep runs
    keep_checkpoints: bool = (
        False  # finished runs are marked by summary.json; their checkpoints are deleted unless kept
    )

    @property
    def report_dir(self) -> Path:
        return self.run_dir.parent.parent  # REPORT_DIR/runs/<name>


@dataclass
class CompareOptions:
    recipes: list[Path]
    report_dir: Path
    seeds: int = 1
    budget: int | None = None  # training tokens per run; None = each recipe's own train.max_steps / max_tokens
    baseline: str | None = None  # recipe name; None = the first recipe
    tune_baseline: bool = False
    tune_lrs: list[float] | None = None  # None = the baseline recipe's LR x DEFAULT_TUNE_FACTORS
    tune_seeds: int = 1
    jobs: int = 1
    overrides: list[str] = field(default_factory=list)  # --set, applied to every recipe
    recipe_overrides: dict[str, list[str]] = field(default_factory=dict)  # --set-for NAME:KEY=VALUE
    command: str = ""  # recorded in the report
    tier: str | None = None  # benchmark tier label, recorded in the report
    keep_checkpoints: bool = False
    quiet: bool = False
    force: bool = False  # write into a non-empty --out that is not a compare output (its other files are kept)

    def threads_per_job(self) -> int:
        return max(1, available_cores() // self.jobs)


def available_cores() -> int:
    """Cores this process may run on (the cgroup/affinity limit, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def recipes_from_paths(paths: list[Path], recipe_overrides: dict[str, list[str]]) -> list[Recipe]:
    recipes, seen = [], set()
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist; give YAML files, e.g. benchmarks/recipes/baseline.yaml")
        name = path.stem
        if name in seen:
            raise ConfigError(f"two recipes are named {name!r}; rows are named by file stem, so rename one")
        seen.add(name)
        recipes.append(Recipe(name, path, list(recipe_overrides.get(name, []))))
    unknown = sorted(set(recipe_overrides) - seen)
    if unknown:
        raise ConfigError(
            f"--set-for names recipe(s) {', '.join(unknown)} that are not compared; "
            f"use one of {', '.join(sorted(seen))}"
        )
    return recipes


def base_overrides(opts: CompareOptions) -> list[str]:
    out = ["train.progress_bar=false"]
    if opts.budget is not None:
        if opts.budget < 1:
            raise ConfigError(f"--budget={opts.budget} must be a positive number of training tokens")
        out += [f"train.max_tokens={int(opts.budget)}", "train.max_steps=null"]
    return out + list(opts.overrides)


def run_spec(opts: CompareOptions, recipe: Recipe, seed: int, lr: float | None = None, lr_tag: bool = False) -> RunSpec:
    name = f"{recipe.name}-lr{lr:.3g}-seed{seed}" if lr_tag else f"{recipe.name}-seed{seed}"
    overrides = base_overrides(opts) + recipe.overrides + [f"train.seed={seed}", f"name={name}"]
    if lr is not None:
        overrides.append(f"optim.lr={lr!r}")
    return RunSpec(
        name,
        recipe.name,
        seed,
        recipe.path,
        overrides,
        opts.report_dir / "runs" / name,
        opts.threads_per_job(),
        lr,
        opts.keep_checkpoints,
    )


def load_spec_config(spec: RunSpec):
    from hasten.recipes import load_config

    try:
        return load_config(spec.recipe_path, spec.overrides)
    except ConfigError as err:
        raise ConfigError(f"recipe {spec.recipe} ({spec.recipe_path}): {err}") from None


def refuse_stale(spec: RunSpec):
    """The spec's config; a ConfigError when its run dir, finished or not, was run with a different config (e.g. a
    recipe edited since: a finished run would otherwise be reused as if it were this spec's)."""
    cfg = load_spec_config(spec)
    if (spec.run_dir / "config.yaml").exists():
        stale = _stale_keys(spec.run_dir, cfg)
        if stale:
            raise ConfigError(
                f"{spec.run_dir} was run with a different config ({', '.join(stale[:4])}); "
                "delete it or use another report dir"
            )
    return cfg


def _stale_keys(run_dir: Path, cfg) -> list[str]:
    """Config keys in which a run dir differs from this spec. A key the saved config lacks (added to hasten since
    the run) counts only if this spec sets it away from its default, so grids resume across hasten versions."""
    from hasten.config import RunConfig, config_from_dict
    from hasten.trainer.rundir import config_differences

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    try:
        completed = config_from_dict(_fill_defaults(saved, RunConfig().to_dict())).to_dict()
    except HastenError:
        completed = saved
    return config_differences(completed, cfg.to_dict())


def _fill_defaults(saved: dict, defaults: dict) -> dict:
    out = dict(saved)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict) and key != "methods":
            out[key] = _fill_defaults(out[key], value)
    return out


@contextlib.contextmanager
def _in_flight(spec: RunSpec):
    """Wait while REPORT_DIR/PAUSE exists, then mark the run as in flight in REPORT_DIR/.running/ until it returns."""
    pause = spec.report_dir / "PAUSE"
    if pause.exists():
        print(f"{spec.name}: waiting, {pause} exists (remove it to continue)", file=sys.stderr, flush=True)
        while pause.exists() and _stop_signal is None:
            time.sleep(1)
    marker = spec.report_dir / ".running" / spec.name
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


def execute(spec: RunSpec) -> dict:
    """Train one run to completion: reuse it if finished, resume it if a checkpoint exists, else start it.

    Returns {"name", "status": reused | resumed | trained | failed, "val_loss", "seconds", "error"?}.
    Runs in a worker process with --jobs > 1, so it takes and returns plain data.
    """
    with _torch_threads(spec.threads):
        return _execute(spec)


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """torch's intra-op threads for one run, restored afterwards (an in-process run must not change its caller's)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _execute(spec: RunSpec) -> dict:
    global _stop_signal
    from hasten.checkpointing import latest_good_checkpoint

    stopped = {"name": spec.name, "status": "stopped", "val_loss": None, "seconds": 0.0}
    if _stop_signal is not None:
        return stopped
    cfg = refuse_stale(spec)
    run_dir = spec.run_dir
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        return {"name": spec.name, "status": "reused", "val_loss": summary.get("val_loss"), "seconds": 0.0}
    resume = False
    if (run_dir / "config.yaml").exists():
        if latest_good_checkpoint(run_dir / "checkpoints") is None:
            shutil.rmtree(run_dir)  # died before its first checkpoint: nothing to keep
        else:
            resume = True
    from hasten.recipes import build_trainer
    from hasten.trainer.guard import DivergenceError
    from hasten.trainer.stopping import StopOnSignal

    start = time.perf_counter()
    try:
        with _in_flight(spec):
            if _stop_signal is not None:  # arrived while PAUSE held the run back
                return stopped
            trainer = build_trainer(cfg, run_dir, resume=resume, progress=False)
            stop = StopOnSignal(trainer)
            try:
                if _stop_signal is not None:  # arrived while the run was being set up
                    stop.request(_stop_signal)
                final = trainer.fit()
            finally:
                stop.uninstall()
        if stop.signal is not None:  # stopped after a step with a checkpoint: unfinished, resumed by the next call
            _stop_signal = _stop_signal or stop.signal
            return {**stopped, "seconds": time.perf_counter() - start}
    except DivergenceError as err:  # the spike/NaN guard stopped a diverged run: a result to report, not a usage error
        return {
            "name": spec.name,
            "status": "failed",
            "val_loss": None,
            "seconds": time.perf_counter() - start,
            "error": str(err),
        }
    except HastenError:
        raise
    except Exception as err:  # a diverged or crashed run is reported, the comparison goes on
        return {
            "name": spec.name,
            "status": "failed",
            "val_loss": None,
            "seconds": time.perf_counter() - start,
            "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
        }
    from hasten.model import count_params

    params = count_params(trainer.state.model)
    summary = {
        "run_dir": str(run_dir),
        **trainer.state.progress.to_dict(),
        **final,
        "params": params["total"],
        "params_non_embedding": params["non_embedding"],
    }
    atomic_write_text(summary_path, json.dumps(summary, indent=2))
    if (
        not spec.keep_checkpoints
    ):  # a finished run is reused from metrics.jsonl + summary.json; checkpoints only cost disk
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return {
        "name": spec.name,
        "status": "resumed" if resume else "trained",
        "val_loss": final.get("val_loss"),
        "seconds": time.perf_counter() - start,
    }


def run_all(specs: list[RunSpec], jobs: int = 1, quiet: bool = False) -> list[dict]:
    """Execute the specs in order (sequentially, or `jobs` worker processes), printing one line per run.

    SIGTERM / SIGINT start no further run and stop the runs in flight with a checkpoint, then raise GridStopped.
    """
    global _stop_signal
    if not specs:
        return []
    for spec in specs:  # fail fast on a bad recipe before hours of training
        load_spec_config(spec)
    outcomes: list[dict] = []
    futures: list[Future] = []
    _stop_signal = None

    def note(i: int, out: dict) -> None:
        outcomes.append(out)
        if quiet or out["status"] == "stopped":
            return
        loss = f"val {out['val_loss']:.4f}" if isinstance(out.get("val_loss"), float) else "no val loss"
        extra = f" ({out['error']})" if out.get("error") else ""
        print(
            f"[{i + 1}/{len(specs)}] {out['name']}: {out['status']}, {loss}, {out['seconds']:.0f}s{extra}",
            file=sys.stderr,
            flush=True,
        )

    with _stop_requests(futures):
        if jobs <= 1:
            for i, spec in enumerate(specs):
                if _stop_signal is not None:
                    break
                note(i, execute(spec))
        else:
            with (
                _worker_environment(specs[0].threads),
                ProcessPoolExecutor(
                    max_workers=jobs,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_init,
                    initargs=(os.getpid(),),
                ) as pool,
            ):
                futures += [pool.submit(_pool_execute, spec) for spec in specs]
                for i, future in enumerate(futures):
                    try:
                        note(i, future.result())
                    except CancelledError:  # not started when the stop came
                        continue
                    except BrokenProcessPool:
                        raise HastenError(
                            "a worker process of hasten compare died (killed from outside, e.g. by the OOM killer); "
                            "the runs in flight keep their last checkpoint, so run the same command again to resume"
                        ) from None
    if _stop_signal is not None:
        raise GridStopped(_stop_signal)
    return outcomes


@contextlib.contextmanager
def _stop_requests(futures: list[Future]):
    """While the grid runs, SIGTERM / SIGINT start no new run: pending runs are cancelled and the workers told (they
    stop after their step with a checkpoint); a second Ctrl-C stops at once. A run in this process handles them
    itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame) -> None:
        global _stop_signal
        if _stop_signal is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        _stop_signal = signum
        print(
            f"hasten: {signal.Signals(signum).name} received; no new run starts, "
            "the runs in flight stop after their step with a checkpoint",
            file=sys.stderr,
            flush=True,
        )
        for future in futures:
            future.cancel()
        # a Ctrl-C on a terminal reached them already; a repeat is harmless
        for worker in multiprocessing.active_children():
            os.kill(worker.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _worker_init(parent: int) -> None:
    """A pool worker: remember a stop signal while idle, and die with the compare process (even on its SIGKILL)."""
    global _parent_pid
    from hasten.parallel.launch import die_with_parent

    _parent_pid = parent
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _remember_stop)
    die_with_parent(parent)


def _remember_stop(signum, frame) -> None:
    global _stop_signal
    if (
        _parent_pid is not None and os.getppid() != _parent_pid
    ):  # the compare process is gone: nobody waits for this worker
        os._exit(128 + signum)
    _stop_signal = _stop_signal or signum


def _pool_execute(spec: RunSpec) -> dict:
    out = execute(spec)
    if _parent_pid is not None and os.getppid() != _parent_pid:  # the run stopped because the compare process died
        os._exit(128 + (_stop_signal or signal.SIGTERM))
    return out


@contextlib.contextmanager
def _worker_environment(threads: int | None):
    """Environment the spawned workers inherit: OpenMP/MKL threads fixed before torch loads, one shared compile
    cache."""
    from hasten.config import DataConfig
    from hasten.data.tokenizer import cache_root
    from hasten.parallel.launch import environment

    values = {
        "TORCHINDUCTOR_CACHE_DIR": os.environ.get(
            "TORCHINDUCTOR_CACHE_DIR", str(cache_root(DataConfig().cache_dir) / "inductor")
        )
    }
    if threads is not None:
        values.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with environment(values):
        yield


def seed_major(recipes: list[Recipe], seeds: range, make) -> list[RunSpec]:
    """Interleave recipes: seed 0 of every recipe, then seed 1, ..."""
    return [make(recipe, seed) for seed in seeds for recipe in recipes]


def tune_grid(opts: CompareOptions, baseline: Recipe) -> list[float]:
    if opts.tune_lrs:
        grid = sorted(set(float(x) for x in opts.tune_lrs))
        if len(grid) < 3 or any(x <= 0 for x in grid):
            raise ConfigError(f"--tune-lrs {opts.tune_lrs} must hold at least 3 distinct positive learning rates")
        return grid
    from hasten.recipes import load_config

    base_lr = load_config(baseline.path, base_overrides(opts) + baseline.overrides).optim.lr
    return [float(f"{base_lr * f:.4g}") for f in DEFAULT_TUNE_FACTORS]


def pick_baseline(recipes: list[Recipe], name: str | None) -> Recipe:
    if name is None:
        return recipes[0]
    for recipe in recipes:
        if recipe.name == name:
            return recipe
    raise ConfigError(f"--baseline {name!r} is not one of the compared recipes ({', '.join(r.name for r in recipes)})")


def claim_report_dir(report_dir: Path, force: bool = False, corpora: dict[str, str] | None = None) -> None:
    """Check that `report_dir` may hold compare's output, then mark it so (OUTPUT_MARKER); refused, it writes nothing.

    It must be new, empty or a compare output already (marked, or from before the marker: a results.json of format
    hasten-compare-*, or nothing but runs/ of run dirs, .running/ and PAUSE); another folder needs `force`. Never a run
    dir or inside one, nor inside a compared corpus (`corpora`: recipe name -> data.source), force or not.
    """
    report_dir = Path(report_dir)
    run = enclosing_run_dir(report_dir)
    if run is not None:
        where = (
            "is a hasten run dir"
            if run == report_dir.expanduser().absolute()
            else f"is inside the hasten run dir {run}"
        )
        raise ConfigError(
            f"--out {report_dir} {where}; hasten compare writes its report and runs into a folder of its own"
        )
    for recipe, source in (corpora or {}).items():
        root = _corpus_folder(source)
        if root is not None and (report_dir.resolve() == root or root in report_dir.resolve().parents):
            raise ConfigError(
                f"--out {report_dir} is inside the corpus of recipe {recipe} (data.source={source}), so its report and "
                "runs would become training data; put --out outside it"
            )
    if report_dir.exists() and not report_dir.is_dir():
        raise ConfigError(f"--out {report_dir} is a file; give a new or empty folder")
    entries = sorted(p.name for p in report_dir.iterdir()) if report_dir.is_dir() else []
    if entries and not force and not _is_compare_output(report_dir):
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        raise ConfigError(
            f"--out {report_dir} is not empty (holds {shown}) and is not a hasten compare output; give a new or empty "
            "folder, or --force to write into it (report.md, results.json and the plots there are replaced)"
        )
    if not (report_dir / OUTPUT_MARKER).is_file():
        try:
            atomic_write_text(
                report_dir / OUTPUT_MARKER,
                json.dumps(
                    {
                        "written_by": "hasten compare",
                        "holds": "report.md, results.json, plots and runs/ of one comparison",
                    }
                )
                + "\n",
            )
        except OSError as err:
            raise ConfigError(
                f"cannot write into --out {report_dir} ({err.strerror or err}); give a writable folder"
            ) from None


def _is_compare_output(folder: Path) -> bool:
    if (folder / OUTPUT_MARKER).is_file():
        return True
    try:
        written = json.loads((folder / "results.json").read_text()).get("format", "")
    except (OSError, ValueError, AttributeError):
        written = ""
    if isinstance(written, str) and written.startswith("hasten-compare"):
        return True
    entries = {p.name for p in folder.iterdir()}
    runs = [] if not (folder / "runs").is_dir() else list((folder / "runs").iterdir())
    return (
        entries <= LEGACY_ENTRIES and "runs" in entries and all(is_run_dir(r) or r.name.startswith(".") for r in runs)
    )


def _corpus_folder(source: str) -> Path | None:
    """The folder a local data.source reads (a folder, or a glob's fixed part); None for stdlib, hf: and single
    files."""
    if source == "stdlib" or source.startswith("hf:"):
        return None
    parts = Path(source).expanduser().parts
    glob_at = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
    folder = Path(*parts[:glob_at]) if glob_at else Path(".")
    return folder.resolve() if folder.is_dir() else None


def run_compare(opts: CompareOptions) -> dict:
    """The whole `hasten compare`: (tune the baseline LR,) run everything, write report.md, results.json and plots."""
    from hasten.compare.plots import plot_comparison
    from hasten.compare.report import build_results, write_report

    if opts.seeds < 1 or opts.jobs < 1 or opts.tune_seeds < 1:
        raise ConfigError("--seeds, --jobs and --tune-seeds must be >= 1")
    recipes = recipes_from_paths(opts.recipes, opts.recipe_overrides)
    baseline = pick_baseline(recipes, opts.baseline)
    corpora = {recipe.name: load_spec_config(run_spec(opts, recipe, 0)).data.source for recipe in recipes}
    claim_report_dir(opts.report_dir, opts.force, corpora)
    opts.report_dir.mkdir(parents=True, exist_ok=True)
    seeds = range(opts.seeds)
    tuning = None
    baseline_lr = None
    if opts.tune_baseline:
        grid = tune_grid(opts, baseline)
        tune_seeds = range(min(opts.tune_seeds, opts.seeds))
        sweep = [run_spec(opts, baseline, seed, lr, lr_tag=True) for seed in tune_seeds for lr in grid]
        if not opts.quiet:
            print(
                f"tuning {baseline.name}: optim.lr in {', '.join(f'{x:g}' for x in grid)} ({len(sweep)} runs)",
                file=sys.stderr,
            )
        outcomes = run_all(sweep, opts.jobs, opts.quiet)
        tuning = _tuning_summary(baseline.name, grid, sweep, outcomes)
        baseline_lr = tuning["best_lr"]
        if baseline_lr is None:
            raise HastenError(f"every run of the {baseline.name} LR sweep failed; see {opts.report_dir / 'runs'}")

    def make(recipe: Recipe, seed: int) -> RunSpec:
        if recipe is baseline and baseline_lr is not None:
            return run_spec(opts, recipe, seed, baseline_lr, lr_tag=True)
        return run_spec(opts, recipe, seed)

    specs = seed_major(recipes, seeds, make)
    outcomes = run_all(specs, opts.jobs, opts.quiet)
    runs = {r.name: [(s, s.run_dir) for s in specs if s.recipe == r.name] for r in recipes}
    failed = {o["name"]: o.get("error", "") for o in outcomes if o["status"] == "failed"}
    results = build_results(opts, [r.name for r in recipes], baseline.name, runs, failed, tuning)
    plots = plot_comparison(results, opts.report_dir)
    results["plots"] = {k: p.name for k, p in plots.items()}
    write_report(results, opts.report_dir)
    return results


def _tuning_summary(name: str, grid: list[float], sweep: list[RunSpec], outcomes: list[dict]) -> dict:
    by_name = {o["name"]: o for o in outcomes}
    finals: dict[float, list[float]] = {}
    for spec in sweep:
        loss = by_name.get(spec.name, {}).get("val_loss")
        if isinstance(loss, float) and loss == loss:  # not NaN
            finals.setdefault(spec.lr, []).append(loss)
    means = {lr: sum(v) / len(v) for lr, v in finals.items()}
    best_lr = min(means, key=means.get) if means else None
    return {
        "recipe": name,
        "grid": grid,
        "final_val_loss": {f"{lr:g}": means.get(lr) for lr in grid},
        "best_lr": best_lr,
        "at_edge": best_lr is not None and best_lr in (min(grid), max(grid)),
        "seeds": sorted({s.seed for s in sweep}),
    }
