"""The Logic's evaluation (MetaRegistrationSlicer.evaluation) on slicer-core's MRML: the panel, the sweep table and
a data folder, every number from MetaRegistrationLib.metrics.measure."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as a wheel) is not installed")
import vtk  # noqa: E402

from MetaRegistrationLib import metrics  # noqa: E402
from MetaRegistrationLib.errors import InputError  # noqa: E402
from MetaRegistrationLib.geometry import Transform, translation  # noqa: E402
from MetaRegistrationLib.metrics import evaluate_transform  # noqa: E402
from MetaRegistrationLib.report import OUTPUT_FILES  # noqa: E402
from MetaRegistrationSlicer import conversions  # noqa: E402
from MetaRegistrationSlicer.logic import SWEEP_COLUMNS, MetaRegistrationCoreLogic  # noqa: E402

from slicer_cases import SHIFT_LPS, frame_nodes, shifted_case, started  # noqa: E402, F401 - a fixture

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the evaluation panel and the sweep table -------------------------------------------------------------------

def test_evaluation_panel_equals_the_library_and_saves_csv(mrml_scene, shifted_case, tiny_model, tmp_path):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    logic = started(mrml_scene, nodes, tiny_model)
    logic.addFrames(frame_nodes(mrml_scene, shifted_case, 3))
    nodes["TRUS points"].AddControlPoint(vtk.vtkVector3d(1, 2, 3), "TRUS only")
    # The library's numbers for the transform the node holds, from the label channels.
    library = evaluate_transform(shifted_case, conversions.transformFromNode(logic.outputTransformNode,
                                                                             shifted_case.fixed_image.grid))
    report = logic.evaluate(nodes["MR points"], nodes["TRUS points"], logic.outputTransformNode,
                            nodes["MR segmentation"], nodes["TRUS labelmap"])
    assert report.labels == ["L1", "L2", "L3"] and report.fixedOnlyLabels == ["TRUS only"]
    np.testing.assert_allclose(report.pointErrorsMm, library.landmark_errors_mm, atol=1e-9)
    assert report.treMm == pytest.approx(library.tre_mm, abs=1e-9)
    assert report.dsc == pytest.approx(library.dsc, abs=1e-9)
    assert report.foldPercent == pytest.approx(library.fold_pct, abs=1e-9)
    assert "TRUS only: TRUS only" in report.status
    table = logic.evaluationTableNode
    assert table.GetAttribute("MetaRegistration.UnmatchedLabels") == "TRUS only (TRUS only)"
    path = logic.saveTableCsv(table, tmp_path / "evaluation" / "panel.csv")
    rows = list(csv.DictReader(open(path)))
    under = [f"landmark {label} error, MR point under the transform" for label in ("L1", "L2", "L3")]
    assert [r["measure"] for r in rows] == ["landmark L1 error", "landmark L2 error", "landmark L3 error", *under,
                                            "RMS TRE", "RMS TRE, MR points under the transform", "gland DSC",
                                            "folding", "gland HD95"]
    assert float(rows[6]["value"]) == pytest.approx(library.tre_mm, abs=1e-9)
    assert float(rows[7]["value"]) == pytest.approx(library.inverse_tre_mm, abs=1e-9)
    assert sorted(p.name for p in path.parent.iterdir()) == ["panel.csv"]  # no temporary left behind


def test_inverse_tre_is_what_mr_fiducials_under_the_transform_show(mrml_scene, shifted_case, tiny_model):
    """The panel's "MR point under the transform" errors are the distances Slicer itself shows: the MR fiducials
    made children of the output transform (VTK inverts the grid transform) against the TRUS fiducials."""
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    logic = started(mrml_scene, nodes, tiny_model)
    logic.addFrames(frame_nodes(mrml_scene, shifted_case, 4))
    report = logic.evaluate(nodes["MR points"], nodes["TRUS points"], logic.outputTransformNode,
                            nodes["MR segmentation"], nodes["TRUS labelmap"])
    mr, trus = nodes["MR points"], nodes["TRUS points"]
    mr.SetAndObserveTransformNodeID(logic.outputTransformNode.GetID())
    shown = []
    for n in range(mr.GetNumberOfControlPoints()):
        label = mr.GetNthControlPointLabel(n)
        partner = next(m for m in range(trus.GetNumberOfControlPoints()) if trus.GetNthControlPointLabel(m) == label)
        onTrus, trusPoint = [0.0] * 3, [0.0] * 3
        mr.GetNthControlPointPositionWorld(n, onTrus)
        trus.GetNthControlPointPositionWorld(partner, trusPoint)
        shown.append(float(np.linalg.norm(np.subtract(onTrus, trusPoint))))
    np.testing.assert_allclose(report.inversePointErrorsMm, shown, atol=0.05)
    # and not the resampling direction's errors, which differ where phi is not a translation
    assert report.inverseTreMm != pytest.approx(report.treMm, abs=1e-6)


def test_tre_per_frame_is_tabulated_and_plotted(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    logic = started(mrml_scene, nodes, tiny_model)
    logic.trackSweep(nodes["MR points"], nodes["TRUS points"], nodes["TRUS segmentation"])
    logic.addFrames(frame_nodes(mrml_scene, shifted_case, 4))
    table = logic.sweepTableNode
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == list(SWEEP_COLUMNS)
    assert list(slicer.util.arrayFromTableColumn(table, "frames")) == [2, 3, 4]
    final = evaluate_transform(shifted_case, logic.lastTransform)
    assert slicer.util.arrayFromTableColumn(table, "tre_mm")[-1] == pytest.approx(final.tre_mm, abs=1e-9)
    assert slicer.util.arrayFromTableColumn(table, "dsc")[-1] == pytest.approx(final.dsc, abs=1e-9)
    series = logic.sweepPlotChartNode.GetNthPlotSeriesNode(0)
    assert series.GetTableNode() is table and series.GetYColumnName() == "tre_mm"


def test_evaluate_folder_writes_the_tables_of_metareg_evaluate(mrml_scene, synthetic_dataset, tiny_model, tmp_path):
    from Training.cli import main

    logic = MetaRegistrationCoreLogic(mrml_scene)
    rows, summary = logic.evaluateFolder(synthetic_dataset, tmp_path / "slicer", method="meta", frames=[2, 3],
                                         modelPath=str(tiny_model), split="val")
    assert [(r.case, r.frames) for r in rows] == [("b", 2), ("b", 3)] and len(summary) == 2
    assert main(["evaluate", "--data", str(synthetic_dataset), "--split", "val", "--method", "meta", "--frames",
                 "2,3", "--model", str(tiny_model), "--out", str(tmp_path / "cli")]) == 0

    def without_seconds(path):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(open(path))]

    assert without_seconds(tmp_path / "slicer" / "cases.csv") == without_seconds(tmp_path / "cli" / "cases.csv")
    assert (tmp_path / "slicer" / "summary.csv").read_text() == (tmp_path / "cli" / "summary.csv").read_text()
    # The same files: tables, report and box plots.
    assert sorted(p.name for p in (tmp_path / "slicer").iterdir()) == sorted(OUTPUT_FILES)
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == sorted(OUTPUT_FILES)
    assert "evaluateFolder(" in (tmp_path / "slicer" / "report.md").read_text()




def test_evaluation_without_a_session_uses_the_glands_own_geometry(mrml_scene, shifted_case):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    truth = mrml_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "true phi")
    grid = shifted_case.fixed_image.grid
    conversions.setGridTransform(truth, Transform(translation(SHIFT_LPS)), grid)
    report = MetaRegistrationCoreLogic(mrml_scene).evaluate(
        nodes["MR points"], nodes["TRUS points"], truth, nodes["MR labelmap"], nodes["TRUS labelmap"])
    assert report.treMm < 1e-6 and report.dsc == 1.0 and report.foldPercent == 0.0


# --- one metrics entry point ------------------------------------------------------------------------------------

def test_the_panel_and_the_sweep_table_measure_through_metrics_measure(mrml_scene, shifted_case, tiny_model,
                                                                       monkeypatch):
    calls = []
    real = metrics.measure

    def spy(*args, **kwargs):
        calls.append(kwargs.get("regularity", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(metrics, "measure", spy)
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    logic = started(mrml_scene, nodes, tiny_model)
    logic.trackSweep(nodes["MR points"], nodes["TRUS points"], nodes["TRUS segmentation"])
    logic.addFrames(frame_nodes(mrml_scene, shifted_case, 3))
    assert calls == [False, False]  # one sweep row per registration, without the costly regularity metrics
    logic.evaluate(nodes["MR points"], nodes["TRUS points"], logic.outputTransformNode, nodes["MR segmentation"],
                   nodes["TRUS segmentation"])
    assert calls == [False, False, True]


METRIC_FUNCTIONS = {"dice", "point_errors", "rms", "folding_percent", "hd95", "evaluate_transform"}


def test_no_front_end_computes_a_metric_of_its_own():
    """The Slicer side and the web app's workflow import no metric but ``measure`` (and no other way round it)."""
    files = [*sorted((ROOT / "MetaRegistration" / "MetaRegistrationSlicer").glob("*.py")),
             ROOT / "MetaRegistrationWeb" / "workflow.py"]
    for path in files:
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and (node.module or "").endswith("metrics") for alias in node.names}
        attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                      and ast.unparse(node.value) == "metrics"}
        assert not (imported | attributes) & METRIC_FUNCTIONS, path.name


# --- a data folder ----------------------------------------------------------------------------------------------

def test_evaluate_folder_selects_cases_through_the_data_set(mrml_scene, synthetic_dataset, tiny_model, tmp_path):
    logic = MetaRegistrationCoreLogic(mrml_scene)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="no complete case zz"):
        logic.evaluateFolder(synthetic_dataset, out, cases=["a", "zz"], modelPath=str(tiny_model))
    with pytest.raises(InputError, match="not both"):
        logic.evaluateFolder(synthetic_dataset, out, cases=["a"], split="val", modelPath=str(tiny_model))
    with pytest.raises(InputError, match="^unknown method 'elastix'"):  # before the folder is read
        logic.evaluateFolder(tmp_path / "no such folder", out, method="elastix")
    assert not out.exists()
    rows, _ = logic.evaluateFolder(synthetic_dataset, out, method="centroid", cases="b,a")
    assert [(r.case, r.method, r.frames) for r in rows] == [("b", "centroid", None), ("a", "centroid", None)]
