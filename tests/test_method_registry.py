"""A method is declared once, in its folder's spec: the registry-built tests, the command line, the comparison plots'
markers and the README's method table all follow from it. A throwaway method added in a temporary folder through its
spec alone runs in the method grid, fault injection and host-sync tests and appears in the table; a method missing
from a test or from the README's table fails."""

from __future__ import annotations

import importlib
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from hasten.cli import build_parser, main
from hasten.errors import ConfigError
from hasten.methods import registry
from hasten.methods.spec import TEST_KINDS, TinyRun
from hasten.recipes import load_config
from tests.method_grid import cases, uncovered
from tests.test_fault_injection import check_sigkill_and_resume_is_bit_exact
from tests.test_host_syncs import check_no_host_sync_between_sync_points, fit_counting_host_reads
from tests.test_method_grid import check_trains_and_resumes_bit_exactly

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- methods:begin -->", "<!-- methods:end -->"

THROWAWAY = '''
"""A throwaway method: counts its steps (its state), reports the count every `every` steps, marks step 4."""

from dataclasses import dataclass
from pathlib import Path

from hasten.methods.spec import MethodSpec, PlotMarker, TinyRun
from hasten.trainer.method import Method


@dataclass
class CountConfig:
    every: int = 2


class Count(Method):
    name = "count"

    def __init__(self, cfg: CountConfig):
        self.cfg, self.seen = cfg, 0

    def after_step(self, ctx):
        self.seen += 1
        if ctx.state.progress.step == 4:
            ctx.log("event", 4, event="count_marker", tokens=ctx.state.progress.tokens)
        return {"count/seen": float(self.seen)} if ctx.state.progress.step % self.cfg.every == 0 else None

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = int(state["seen"])


def add_parser(subparsers):
    subparsers.add_parser("count-steps", help="the throwaway method's own command").set_defaults(func=lambda args: 0)


SPECS = (MethodSpec("count", "a throwaway step counter", "none", Path(__file__).with_name("README.md"), CountConfig,
                    lambda cfg, run_cfg: Count(cfg), order=50, commands=(add_parser,),
                    markers=(PlotMarker("count", "count marker", "-.", event="count_marker"),),
                    test_runs={"every2": TinyRun(("methods.count={every: 2}",), kill_at=("step:5", "save:8"))},
                    step_cost=("methods.count={every: 2}",)),)
'''
# the command line of a process that registers the throwaway folder first (what its line in registry.FOLDERS does)
LAUNCH = (
    "import sys; sys.path.insert(0, {path!r}); import throwaway_method; from hasten.methods import registry; "
    "registry.FOLDERS += (throwaway_method,); from hasten.cli import main; sys.exit(main())"
)


def readme_table() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def readme_table_problem() -> str | None:
    """Why the README's method table is not the registry's (None when it is)."""
    if readme_table() != registry.method_table(ROOT):
        return (
            f"README.md's method table is not the registry's: paste the output of `hasten methods` between {BEGIN} "
            f"and {END}"
        )
    return None


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    """The throwaway method's folder, registered (its line in registry.FOLDERS) for this test."""
    folder = tmp_path / "methods" / "throwaway_method"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(textwrap.dedent(THROWAWAY))
    (folder / "README.md").write_text("# count\n\nA throwaway method card.\n")
    monkeypatch.syspath_prepend(str(folder.parent))
    module = importlib.import_module("throwaway_method")
    monkeypatch.setattr(registry, "FOLDERS", (*registry.FOLDERS, module))
    yield folder
    sys.modules.pop("throwaway_method", None)


def test_every_registered_method_is_in_every_registry_built_test_or_says_why():
    assert not uncovered(), "\n".join(uncovered())
    for kind in TEST_KINDS:
        tested = {name.split("-")[0] for name in cases(kind)}
        assert tested == {name for name, spec in registry.registered().items() if kind not in spec.not_tested}, kind


def test_muon_is_a_method_switched_on_by_the_optimizer():
    spec = registry.registered()["muon"]
    assert spec.switch == ("optim.name", "muon") and spec.card.is_file() and spec.card.parent.name == "muon"
    assert {kind for run in spec.test_runs.values() for kind in run.tests} == set(TEST_KINDS)
    with pytest.raises(ConfigError, match=r"muon is switched on by optim.name: muon, not by a methods section"):
        load_config(None, ["methods.muon={}"])


def test_a_method_missing_from_a_test_is_named():
    specs = registry.registered()
    lone = replace(specs["ema"], test_runs={"grid_only": TinyRun(("methods.ema={decay: 0.9}",), tests=("grid",))})
    assert uncovered({"ema": lone}) == [
        "ema: no test run of its spec takes part in the faults test; add one (MethodSpec.test_runs) or say in "
        "not_tested why it does not apply",
        "ema: no test run of its spec takes part in the host_syncs test; add one (MethodSpec.test_runs) or say in "
        "not_tested why it does not apply",
    ]
    excused = replace(lone, not_tested={"faults": "a reason", "host_syncs": "another"})
    assert uncovered({"ema": excused}) == []
    assert uncovered({"ema": replace(excused, step_cost=None)}) == [
        "ema: no step_cost (its row in the throughput benchmarks); declare one (MethodSpec.step_cost) or say in "
        "not_tested['step_cost'] why it does not apply"
    ]
    assert uncovered({"ema": replace(specs["ema"], test_runs={})})  # no runs at all: named too


def test_the_readme_method_table_is_the_registrys(capsys):
    assert readme_table_problem() is None, readme_table_problem()
    assert main(["methods"]) == 0
    assert capsys.readouterr().out.strip() == readme_table()


def test_a_method_missing_from_the_readme_table_fails(throwaway):
    assert "| `count` | a throwaway step counter |" in registry.method_table(ROOT)
    assert readme_table_problem() is not None  # the README was not regenerated with the new method


@pytest.mark.slow  # a grid run, a fault-injection chain (3 processes) and a host-sync run of the throwaway (~1 min)
def test_a_throwaway_method_runs_in_every_registry_built_test_through_its_spec_alone(
    tmp_path, tiny_overrides, throwaway, monkeypatch
):
    overrides = ["methods.count={every: 2}"]
    assert all(cases(kind)["count-every2"].overrides == tuple(overrides) for kind in TEST_KINDS)
    assert "count-steps" in build_parser().format_help()  # its command
    assert any(marker.name == "count" for marker in registry.plot_markers())  # its plot marker
    assert registry.step_costs()["count"] == overrides  # its row in the throughput benchmarks
    assert not uncovered()

    check_trains_and_resumes_bit_exactly(tmp_path / "grid", tiny_overrides, overrides, "count")
    hasten = [sys.executable, "-c", LAUNCH.format(path=str(throwaway.parent))]  # fault injection kills real processes
    check_sigkill_and_resume_is_bit_exact(
        tmp_path / "faults", tiny_overrides, "count", overrides, ("step:5", "save:8"), hasten
    )
    check_no_host_sync_between_sync_points(
        tmp_path / "host_syncs",
        tiny_overrides,
        lambda trainer: fit_counting_host_reads(trainer, monkeypatch),
        overrides,
    )
