"""The registry-built tests' cases: every method's tiny test runs, declared once in its spec (MethodSpec.test_runs).

The method grid (tests/test_method_grid.py), fault injection (tests/test_fault_injection.py) and the host-sync
count (tests/test_host_syncs.py) take their method rows from here, so a registered method is in all three unless
its spec says, with a reason (`not_tested`), why a test does not apply to it; `uncovered` names what is neither.
"""

from __future__ import annotations

from collections.abc import Mapping

from hasten.methods.registry import registered
from hasten.methods.spec import TEST_KINDS, MethodSpec, TinyRun


def cases(kind: str, specs: Mapping[str, MethodSpec] | None = None) -> dict[str, TinyRun]:
    """`<method>-<variant>` -> its test run, for every registered method's runs that take part in test `kind`."""
    specs = registered() if specs is None else specs
    return {
        f"{name}-{variant}": run
        for name, spec in specs.items()
        for variant, run in spec.test_runs.items()
        if kind in run.tests
    }


def uncovered(specs: Mapping[str, MethodSpec] | None = None) -> list[str]:
    """One line per registered method and test it is neither in nor excused from (with a reason), or names wrongly."""
    specs = registered() if specs is None else specs
    problems = []
    for name, spec in specs.items():
        for variant, run in spec.test_runs.items():
            unknown = sorted(set(run.tests) - set(TEST_KINDS))
            if unknown:
                problems.append(
                    f"{name}-{variant}: unknown test kind(s) {', '.join(unknown)}; use {', '.join(TEST_KINDS)}"
                )
        for kind in TEST_KINDS:
            tested = any(kind in run.tests for run in spec.test_runs.values())
            if not tested and not spec.not_tested.get(kind):
                problems.append(
                    f"{name}: no test run of its spec takes part in the {kind} test; add one "
                    "(MethodSpec.test_runs) or say in not_tested why it does not apply"
                )
            if tested and kind in spec.not_tested:
                problems.append(f"{name}: runs in the {kind} test although not_tested excuses it; drop one of the two")
        if spec.step_cost is None and not spec.not_tested.get("step_cost"):
            problems.append(
                f"{name}: no step_cost (its row in the throughput benchmarks); declare one (MethodSpec.step_cost) or "
                "say in not_tested['step_cost'] why it does not apply"
            )
        if spec.step_cost is not None and "step_cost" in spec.not_tested:
            problems.append(f"{name}: has a step_cost although not_tested excuses it; drop one of the two")
    return problems


# the grid's rows: the baseline and every method's grid runs (train and resume bit-exactly mid-run)
METHOD_OVERRIDES: dict[str, list[str]] = {
    "baseline": [],
    **{name: list(run.overrides) for name, run in cases("grid").items()},
}
