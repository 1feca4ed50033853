"""``metareg evaluate``: output files, bad input, and agreement with an independent implementation."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MetaRegistrationLib.evaluation import CASE_COLUMNS, SUMMARY_COLUMNS
from MetaRegistrationLib.models import load_model
from Training.cli import main

from conftest import write_image


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_writes_tables_report_and_plots(synthetic_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["evaluate", "--data", str(synthetic_dataset), "--split", "val", "--method", "identity",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cases.csv", "dsc_boxplot.png", "report.md", "summary.csv",
                                                    "tre_boxplot.png"]
    assert (out / "cases.csv").read_text().splitlines()[0] == ",".join(CASE_COLUMNS)
    assert (out / "summary.csv").read_text().splitlines()[0] == ",".join(SUMMARY_COLUMNS)
    (row,) = read_csv(out / "cases.csv")
    assert row["case"] == "b" and row["frames"] == "" and row["updates"] == ""
    # Case b's MR is its TRUS moved by (-4.5, 3, 0) mm, so identity is wrong by exactly that much.
    assert float(row["tre_mm"]) == pytest.approx(np.hypot(4.5, 3.0), abs=0.01)
    (summary,) = read_csv(out / "summary.csv")
    assert summary["n"] == "1" and summary["method"] == "identity"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--cases", "a,zzz"], "no complete case zzz"),
        (["--split", "test"], "has no split 'test'"),
    ],
)
def test_bad_selection_is_one_line_and_writes_nothing(synthetic_dataset, tmp_path, capsys, arguments, message):
    out = tmp_path / "out"
    code = main(["evaluate", "--data", str(synthetic_dataset), *arguments, "--method", "centroid", "--out", str(out)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert message in error[-1] and "Traceback" not in "".join(error)
    assert not out.exists()


def test_bad_file_midway_leaves_no_partial_output_and_inputs_untouched(synthetic_dataset, tmp_path):
    bad = synthetic_dataset / "fixed_images" / "b.nii.gz"
    write_image(np.full((14, 18, 16), 0, np.float32), bad)
    labels = synthetic_dataset / "fixed_labels" / "b.nii.gz"
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))
    write_image(array[:2], labels)  # channel mismatch in the second case
    before = {p: p.read_bytes() for p in synthetic_dataset.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    process = subprocess.run([sys.executable, "-m", "Training.cli", "evaluate", "--data", str(synthetic_dataset),
                              "--method", "centroid", "--out", str(out)], capture_output=True, text=True)
    assert process.returncode == 2
    last = process.stderr.strip().splitlines()[-1]
    assert str(labels) in last and "label channels" in last and "Traceback" not in process.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    assert before == {p: p.read_bytes() for p in synthetic_dataset.rglob("*") if p.is_file()}


# --- Independent implementation of the definitions, in SimpleITK only, for the real-data check ---

def _channel(path: Path, channel: int) -> sitk.Image:
    image = sitk.ReadImage(str(path))
    size = list(image.GetSize())
    return sitk.Cast(sitk.Extract(image, size[:3] + [0], [0, 0, 0, channel]), sitk.sitkFloat64)


def _centre_of_gravity(image: sitk.Image) -> np.ndarray:
    statistics = sitk.LabelIntensityStatisticsImageFilter()
    statistics.Execute(sitk.Cast(image > 0, sitk.sitkUInt8), image)
    return np.array(statistics.GetCenterOfGravity(1))


def independent_tre_and_dsc(root: Path, case_id: str, method: str) -> tuple[float, float]:
    fixed_labels, moving_labels = root / "fixed_labels" / f"{case_id}.nii.gz", root / "moving_labels" / f"{case_id}.nii.gz"
    channels = sitk.ReadImage(str(fixed_labels)).GetSize()[3]
    fixed_gland, moving_gland = _channel(fixed_labels, 0), _channel(moving_labels, 0)
    offset = np.zeros(3)
    if method == "centroid":
        offset = _centre_of_gravity(moving_gland) - _centre_of_gravity(fixed_gland)
    errors = [np.linalg.norm(_centre_of_gravity(_channel(fixed_labels, k)) + offset
                             - _centre_of_gravity(_channel(moving_labels, k))) for k in range(1, channels)]
    warped = sitk.Resample(moving_gland, fixed_gland, sitk.TranslationTransform(3, offset.tolist()),
                           sitk.sitkLinear, 0.0)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(sitk.Cast(fixed_gland > 0.5, sitk.sitkUInt8), sitk.Cast(warped > 0.5, sitk.sitkUInt8))
    return float(np.sqrt(np.mean(np.square(errors)))), overlap.GetDiceCoefficient()


@pytest.mark.real_data
@pytest.mark.parametrize("method", ["identity", "centroid"])
def test_real_cases_match_independent_implementation(real_data_dir, tmp_path, method):
    cases = ["obs000", "obs017"]
    out = tmp_path / method
    assert main(["evaluate", "--data", str(real_data_dir), "--cases", ",".join(cases), "--method", method,
                 "--out", str(out)]) == 0
    rows = {row["case"]: row for row in read_csv(out / "cases.csv")}
    for case_id in cases:
        tre, dsc = independent_tre_and_dsc(real_data_dir, case_id, method)
        assert float(rows[case_id]["tre_mm"]) == pytest.approx(tre, abs=0.01)
        assert float(rows[case_id]["dsc"]) == pytest.approx(dsc, abs=0.001)


def test_compare_pairs_cases_of_two_evaluations(synthetic_dataset, tmp_path, capsys):
    for method in ("identity", "centroid"):
        assert main(["evaluate", "--data", str(synthetic_dataset), "--method", method,
                     "--out", str(tmp_path / method)]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "centroid"), str(tmp_path / "identity")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("2 paired cases: centroid vs identity")
    tre = lines[2].split()
    # Centroid is exact on these cases (pure translations), identity is not.
    assert tre[:3] == ["TRE", "mm", "0.000"] and float(tre[3]) > 3.0
    assert main(["compare", str(tmp_path / "centroid"), str(tmp_path / "nowhere")]) == 2


def test_label_names_the_method_in_the_tables(synthetic_dataset, tmp_path):
    out = tmp_path / "out"
    assert main(["evaluate", "--data", str(synthetic_dataset), "--cases", "a", "--method", "identity",
                 "--label", "world-as-stored", "--out", str(out)]) == 0
    assert read_csv(out / "cases.csv")[0]["method"] == "world-as-stored"
    assert read_csv(out / "summary.csv")[0]["method"] == "world-as-stored"


@pytest.mark.usefixtures("one_torch_thread")
def test_landmark_pairs_are_scored_on_held_out_landmarks_only(synthetic_dataset, tmp_path, capsys):
    """``metareg pairs``: landmark 1 is given as a pair after the sweep, TRE is measured on landmark 2; a count that
    leaves nothing to hold out (2 of 2) is reported, not scored."""
    import torch

    from MetaRegistrationLib.settings import AdaptationSettings
    from MetaRegistrationLib.data import Dataset
    from MetaRegistrationLib.evaluation import LANDMARK_COLUMNS, PAIR_COLUMNS, evaluate_cases
    from MetaRegistrationLib.models import save_model
    from MetaRegistrationLib.network import NetworkConfig, RegistrationNet

    torch.manual_seed(0)
    model = tmp_path / "tiny"
    save_model(model, RegistrationNet(NetworkConfig(num_channel_initial=4)),
               AdaptationSettings(landmark_weight=1.0))
    out = tmp_path / "pairs"
    assert main(["pairs", "--data", str(synthetic_dataset), "--pairs", "1,2", "--frames", "3", "--model", str(model),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no case has a landmark left to hold out" in printed
    rows = read_csv(out / "pairs.csv")
    assert list(rows[0]) == list(PAIR_COLUMNS)
    assert [(row["case"], row["pairs"], row["held_out"]) for row in rows] == [("a", "1", "1"), ("b", "1", "1")]
    # Before the pair: the error of landmark 2 alone after the same sweep (metareg evaluate --method meta).
    sweep = evaluate_cases(Dataset(synthetic_dataset), ["a"], "meta", [3], model)[0]
    assert float(rows[0]["tre_frames_mm"]) == pytest.approx(sweep.landmark_errors_mm[1], abs=1e-4)
    assert float(rows[0]["tre_pairs_mm"]) != pytest.approx(float(rows[0]["tre_frames_mm"]), abs=1e-6)
    landmarks = read_csv(out / "pairs_landmarks.csv")
    assert list(landmarks[0]) == list(LANDMARK_COLUMNS)
    assert [(row["case"], row["landmark"]) for row in landmarks] == [("a", "2"), ("b", "2")]
    assert float(landmarks[0]["tre_frames_mm"]) == pytest.approx(sweep.landmark_errors_mm[1], abs=1e-4)
    assert (out / "pairs_distance.png").stat().st_size > 0
    assert main(["pairs", "--data", str(synthetic_dataset), "--frames", "1", "--out", str(out)]) == 2


@pytest.mark.usefixtures("one_torch_thread")
def test_pair_radii_are_compared_on_the_same_sessions(synthetic_dataset, tiny_model, tmp_path, capsys):
    """``--radius 0,8``: the network alone and the local correction, from one session per case; the correction
    brings the given pair's residual under 0.1 mm, and the far landmarks' rows are the same with both."""
    out = tmp_path / "radii"
    assert main(["pairs", "--data", str(synthetic_dataset), "--radius", "0,8", "--frames", "3", "--folds", "2",
                 "--model", str(tiny_model), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2-fold choice of the radius" in printed
    rows = read_csv(out / "pairs.csv")
    assert [(row["case"], float(row["radius_mm"])) for row in rows] == [("a", 0), ("a", 8), ("b", 0), ("b", 8)]
    network, correction = rows[0], rows[1]
    assert network["tre_frames_mm"] == correction["tre_frames_mm"]
    assert float(correction["residual_mm"]) < min(0.1, float(network["residual_mm"]))


@pytest.mark.usefixtures("one_torch_thread")
def test_pairs_can_come_before_or_between_frames(synthetic_dataset, tiny_model, tmp_path, capsys):
    """``--pairs-after 0`` (before the sweep) and ``1`` (between frames): TRE at the end of the same sweep, against
    it without pairs; the pair is honoured at the end, whenever it came; a frame count out of range is refused."""
    ends = {}
    for after in (0, 1, 3):
        out = tmp_path / f"after{after}"
        assert main(["pairs", "--data", str(synthetic_dataset), "--cases", "a", "--frames", "3", "--pairs-after",
                     str(after), "--model", str(tiny_model), "--out", str(out)]) == 0
        (row,) = read_csv(out / "pairs.csv")
        assert int(row["given_after_frames"]) == after and float(row["residual_mm"]) < 0.1
        ends[after] = row
    # The sweep without pairs is the same whenever the pairs come; what the pairs change depends on when.
    assert ends[0]["tre_frames_mm"] == ends[1]["tre_frames_mm"] == ends[3]["tre_frames_mm"]
    assert ends[0]["tre_pairs_mm"] != ends[3]["tre_pairs_mm"]
    assert "landmark pairs after frame 1" in capsys.readouterr().out
    assert main(["pairs", "--data", str(synthetic_dataset), "--frames", "3", "--pairs-after", "4",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--pairs-after must be 0 to --frames (3), got 4" in capsys.readouterr().err


@pytest.mark.usefixtures("one_torch_thread")
def test_adaptation_settings_can_be_overridden_for_an_evaluation(synthetic_dataset, tmp_path):
    """``--adapt updates_per_interaction=0`` turns ``meta`` into ``meta-noadapt``; a bad name is refused."""
    runs = {}
    for name, extra in (("noadapt", ["--method", "meta-noadapt"]),
                        ("zero-updates", ["--method", "meta", "--adapt", "updates_per_interaction=0"]),
                        ("meta", ["--method", "meta"])):
        assert main(["evaluate", "--data", str(synthetic_dataset), "--cases", "a", "--frames", "3", *extra,
                     "--out", str(tmp_path / name)]) == 0
        runs[name] = read_csv(tmp_path / name / "cases.csv")[0]
    steps = load_model(None).settings.updates_per_interaction  # the bundled model's, at frames 2 and 3
    assert runs["zero-updates"]["updates"] == "0" and runs["meta"]["updates"] == str(2 * steps)
    assert float(runs["zero-updates"]["tre_mm"]) == pytest.approx(float(runs["noadapt"]["tre_mm"]), abs=1e-6)
    assert main(["evaluate", "--data", str(synthetic_dataset), "--method", "meta", "--adapt", "speed=11",
                 "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
