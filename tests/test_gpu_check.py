"""benchmarks/gpu_check.py cannot rot: its dry version (tiny models on CPU, the same code paths as on a GPU
except compilation) runs here, and its record has every part."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hasten.methods.registry import step_costs

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_gpu_check_dry_run_writes_a_complete_record(tmp_path, cache_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("HASTEN_CACHE", cache_dir)
    import gpu_check

    assert gpu_check.main(["--dry", "--out", str(tmp_path / "record")]) == 0
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["mode"] == "dry" and record["skipped"] == []
    models = record["parts"]["models"]
    assert set(models) == {"tiny", "tiny-llama"}
    for m in models.values():
        for loop in ("trainer", "bare"):
            assert m[loop]["tokens_per_s"] > 0 and 0 < m[loop]["mfu"] < 1
        assert m["trainer_speed_vs_bare"] > 0
    methods = record["parts"]["methods"]["results"]
    # every method that declares a per-step cost, and growth's step
    assert set(methods) == {"(none)", "growth (G_stack x2 at one step)", *step_costs()}
    assert {"adam_mini", "blockwise", "muon", "seqlen_warmup", "lawa", "ema", "swa"} <= set(methods)
    assert all(m["step_s"] > 0 and m["overhead"] is not None for m in methods.values())
    growth = methods["growth (G_stack x2 at one step)"]
    assert growth["growth_step_s"] > 0 and growth["small_step_s"] > 0
    text = (tmp_path / "record.md").read_text()
    assert "DRY RUN" in text and "| tiny-llama | 4 x 64 | hasten trainer |" in text


def test_vendor_peaks_match_device_names():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert gpu_check.vendor_peak("NVIDIA H100 80GB HBM3") == 989.4e12
    assert gpu_check.vendor_peak("NVIDIA H100 PCIe") == 756e12
    assert gpu_check.vendor_peak("NVIDIA H200") == 989.4e12
    assert gpu_check.vendor_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_check.vendor_peak("NVIDIA L40S") == 362e12  # not L4's
    assert gpu_check.vendor_peak("Some Future GPU") is None
