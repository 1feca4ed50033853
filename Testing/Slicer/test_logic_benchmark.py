"""``python -m MetaRegistrationSlicer.benchmark``: the Logic's overhead over the library's interaction, headless."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as a wheel) is not installed")

from MetaRegistrationSlicer import benchmark  # noqa: E402


def test_the_logic_benchmark_times_both_paths_on_the_same_frames(tiny_model, capsys):
    assert benchmark.main(["--model", str(tiny_model), "--sweeps", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["case"] == "phantom-0" and result["interactions"] == 9  # frames 2..10 of one sweep
    for key in ("library_interaction_median_s", "logic_interaction_median_s", "read_frame_median_s",
                "outputs_median_s"):
        assert 0 < result[key] < 60, key
    assert result["logic_interaction_median_s"] > result["outputs_median_s"]
    assert result["logic_overhead_budget_s"] == benchmark.LOGIC_OVERHEAD_BUDGET_S


def test_a_bad_case_is_one_line(capsys):
    assert benchmark.main(["--data", "/nonexistent", "--sweeps", "1"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "/nonexistent" in error
