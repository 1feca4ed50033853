"""The module's Logic (MetaRegistrationSlicer.logic) on slicer-core's MRML: sessions, outputs, evaluation, errors."""

from __future__ import annotations

import collections
import csv
import hashlib

import numpy as np
import pytest
import torch

slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as a wheel) is not installed")
import vtk  # noqa: E402

from MetaRegistrationLib.settings import AdaptationSettings  # noqa: E402
from MetaRegistrationLib.data import Case, Dataset, Volume  # noqa: E402
from MetaRegistrationLib.errors import InputError  # noqa: E402
from MetaRegistrationLib.evaluation import evaluate_cases  # noqa: E402
from MetaRegistrationLib.geometry import Grid, Transform, resample, translation  # noqa: E402
from MetaRegistrationLib.metrics import evaluate_transform  # noqa: E402
from MetaRegistrationLib.models import save_model  # noqa: E402
from MetaRegistrationLib.network import RegistrationNet  # noqa: E402
from MetaRegistrationLib.registration import sweep_frames  # noqa: E402
from MetaRegistrationLib.report import OUTPUT_FILES  # noqa: E402
from MetaRegistrationLib.sweep import extract_frame, plane_pose, sweep_positions  # noqa: E402
from MetaRegistrationSlicer import conversions  # noqa: E402
from MetaRegistrationSlicer.logic import SWEEP_COLUMNS, MetaRegistrationCoreLogic  # noqa: E402

from conftest import blob  # noqa: E402

SHIFT_LPS = np.array([4.5, -3.0, 1.5])
"""The synthetic MR is its TRUS moved by this: the true phi is x + SHIFT_LPS."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shifted_case() -> Case:
    """A case whose MR is its TRUS translated by SHIFT_LPS, on real-data-like axes (RAS-identity directions)."""
    shape = (16, 22, 18)  # (k, j, i)
    gland = (blob(shape, (8, 11, 9), 4.0) > 0.35).astype(np.float32)
    landmarks = [blob(shape, centre, 1.0) for centre in ((6, 9, 8), (10, 13, 10), (8, 10, 12))]
    image = (60 + 120 * gland + 50 * sum(landmarks)).astype(np.float32)
    labels = np.stack([gland, *landmarks])
    direction = np.diag([-1.0, -1.0, 1.0])
    fixed = Grid.from_arrays(shape[::-1], (1.5, 1.5, 1.5), (-1.5, -1.5, 1.5), direction)
    moving = Grid.from_arrays(shape[::-1], (1.5, 1.5, 1.5), np.array(fixed.origin) + SHIFT_LPS, direction)
    return Case("shifted", Volume(image[None], moving, "MR"), Volume(labels, moving, "MR labels"),
                Volume(image[None], fixed, "TRUS"), Volume(labels, fixed, "TRUS labels"))


def frame_nodes(scene, case: Case, count: int | None = None) -> list[tuple]:
    """Tracked frame nodes of a right-to-left sweep: ``count`` frames, or every plane holding gland."""
    gland = case.fixed_labels.array[0]
    if count is None:
        low, high = np.flatnonzero(gland.any(axis=(0, 2)))[[0, -1]]
        count = high - low + 1
    frames = [extract_frame(case.fixed_image, gland, p) for p in sweep_positions(gland, count)]
    return [conversions.frameNodesFromFrame(scene, frame, f"frame {n}") for n, frame in enumerate(frames, 1)]


def checksum(node) -> str:
    """What a node holds, as a digest: voxels and geometry, segments, control points, its parent transform."""
    digest = hashlib.sha256()
    if node.IsA("vtkMRMLVolumeNode"):
        digest.update(slicer.util.arrayFromVolume(node).tobytes())
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        digest.update(conversions.arrayFromMatrix(matrix).tobytes())
    if node.IsA("vtkMRMLSegmentationNode"):
        segmentation = node.GetSegmentation()
        for n in range(segmentation.GetNumberOfSegments()):
            mask, grid, _ = conversions.labelFromNode(node, segmentation.GetNthSegmentID(n))
            digest.update(mask.tobytes() + repr(grid).encode())
    if node.IsA("vtkMRMLMarkupsNode"):
        digest.update(slicer.util.arrayFromMarkupsControlPoints(node).tobytes())
    digest.update(str(node.GetTransformNodeID() if node.IsA("vtkMRMLTransformableNode") else "").encode())
    return digest.hexdigest()


def node_classes(scene) -> collections.Counter:
    return collections.Counter(scene.GetNthNode(n).GetClassName() for n in range(scene.GetNumberOfNodes()))


def world_points(markups) -> np.ndarray:
    return np.array([markups.GetNthControlPointPositionWorld(n) for n in range(markups.GetNumberOfControlPoints())])


def started(scene, nodes, model, **kwargs) -> MetaRegistrationCoreLogic:
    logic = MetaRegistrationCoreLogic(scene)
    logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"], modelPath=str(model), **kwargs)
    return logic


# --- a session with a known answer ------------------------------------------------------------------------------

def test_known_shift_session_overlays_mr_on_trus(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    frames = frame_nodes(mrml_scene, shifted_case)
    logic = started(mrml_scene, nodes, tiny_model, resampleVolume=True)
    reports = logic.addFrames(frames)
    assert [r.frames for r in reports] == list(range(1, len(frames) + 1))
    assert not reports[0].registered and "needs 2" in reports[0].status
    assert all(r.registered and r.updates == n for n, r in enumerate(reports[1:], 1))
    assert all(r.updateSeconds > 0 and r.predictSeconds > 0 and r.outputSeconds > 0 for r in reports[1:])
    assert logic.statusText.startswith(f"{len(frames)} frames, 0 landmark pairs, {len(frames) - 1} updates; ")
    # The transform maps the TRUS fiducials onto the MR fiducials (FromParent = phi) ...
    mr_points, trus_points = world_points(nodes["MR points"]), world_points(nodes["TRUS points"])
    from_parent = logic.outputTransformNode.GetTransformFromParent()
    mapped = np.array([from_parent.TransformPoint(p) for p in trus_points])
    assert np.abs(mapped - mr_points).max() < 0.5
    # ... and as the MR's parent it carries the MR fiducials onto the TRUS fiducials when hardened.
    moved = conversions.markupsFromPoints(mrml_scene, conversions.pointsFromMarkups(nodes["MR points"], False), "moved")
    moved.SetAndObserveTransformNodeID(logic.outputTransformNode.GetID())
    slicer.vtkSlicerTransformLogic().hardenTransform(moved)
    assert np.abs(slicer.util.arrayFromMarkupsControlPoints(moved) - trus_points).max() < 0.5
    # The warped MR gland and the resampled MR lie on the TRUS.
    warped = conversions.glandOnGrid(logic.outputSegmentationNode, shifted_case.fixed_image.grid)
    assert evaluate_transform(shifted_case, logic.lastTransform).dsc > 0.95
    assert np.mean(warped == shifted_case.fixed_labels.array[0]) > 0.99
    resampled = conversions.volumeFromNode(logic.outputVolumeNode)
    assert resampled.grid == shifted_case.fixed_image.grid
    mr = shifted_case.moving_image
    np.testing.assert_allclose(resampled.array[0], resample(mr.array[0], mr.grid, logic.lastTransform, resampled.grid),
                               atol=1e-4)
    inner = (slice(3, -3),) * 3
    assert np.median(np.abs(resampled.array[0] - shifted_case.fixed_image.array[0])[inner]) < 1.0


def test_inputs_are_unchanged_and_outputs_are_new_nodes(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    frames = frame_nodes(mrml_scene, shifted_case, 4)
    inputs = list(nodes.values()) + [node for pair in frames for node in pair]
    before = {node.GetID(): checksum(node) for node in inputs}
    classes = node_classes(mrml_scene)
    logic = started(mrml_scene, nodes, tiny_model, resampleVolume=True)
    logic.addFrames(frames)
    logic.addLandmarks(nodes["MR points"], nodes["TRUS points"])
    logic.evaluate(nodes["MR points"], nodes["TRUS points"], logic.outputTransformNode, nodes["MR segmentation"],
                   nodes["TRUS segmentation"])
    logic.reset()
    assert {node.GetID(): checksum(node) for node in inputs} == before
    added = node_classes(mrml_scene) - classes
    assert added == collections.Counter({
        "vtkMRMLGridTransformNode": 1, "vtkMRMLSegmentationNode": 1, "vtkMRMLSegmentationDisplayNode": 1,
        "vtkMRMLScalarVolumeNode": 1, "vtkMRMLScalarVolumeDisplayNode": 1, "vtkMRMLTableNode": 1}), added
    assert not (node_classes(mrml_scene) - added) - classes


def test_user_chosen_output_nodes_are_used(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "my transform")
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my segmentation")
    volume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my volume")
    logic = started(mrml_scene, nodes, tiny_model, outputTransform=transform, outputSegmentation=segmentation,
                    outputVolume=volume)
    logic.addFrames(frame_nodes(mrml_scene, shifted_case, 2))
    assert (logic.outputTransformNode, logic.outputSegmentationNode, logic.outputVolumeNode) == (
        transform, segmentation, volume)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert volume.GetImageData().GetDimensions() == shifted_case.fixed_image.grid.size


def test_sequence_is_consumed_frame_by_frame_like_single_frames(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    frames = frame_nodes(mrml_scene, shifted_case, 4)
    images = mrml_scene.AddNewNodeByClass("vtkMRMLSequenceNode", "frames")
    glands = mrml_scene.AddNewNodeByClass("vtkMRMLSequenceNode", "frame glands")
    for n, (image, gland) in enumerate(frames):
        images.SetDataNodeAtValue(image, str(n))
        glands.SetDataNodeAtValue(gland, str(n))
    seen = []
    from_sequence = started(mrml_scene, nodes, tiny_model)
    reports = from_sequence.addFrameSequence(images, glands, progress=lambda index, status: seen.append(index))
    assert seen == [0, 1, 2, 3] and [r.frames for r in reports] == [1, 2, 3, 4]
    one_by_one = started(mrml_scene, nodes, tiny_model)
    for image, gland in frames:
        one_by_one.addFrame(image, gland)
    np.testing.assert_allclose(from_sequence.lastTransform.map_grid(shifted_case.fixed_image.grid),
                               one_by_one.lastTransform.map_grid(shifted_case.fixed_image.grid), atol=1e-6)


def test_landmark_pairs_are_interactions_matched_by_label(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    logic = started(mrml_scene, nodes, tiny_model)
    logic.addFrames(frame_nodes(mrml_scene, shifted_case, 3))
    nodes["MR points"].AddControlPoint(vtk.vtkVector3d(*conversions.lpsToRas(
        shifted_case.moving_image.grid.fov_centre())), "MR only")
    report = logic.addLandmarks(nodes["MR points"], nodes["TRUS points"])
    assert report.landmarkPairs == 3 and report.updates == 3 and report.unmatchedLabels == ["MR only (MR only)"]
    assert "unmatched landmark labels left out: MR only (MR only)" in report.status
    with pytest.raises(InputError, match="^MR landmarks and TRUS landmarks: no new landmark pair"):
        logic.addLandmarks(nodes["MR points"], nodes["TRUS points"])
    nodes["TRUS points"].AddControlPoint(vtk.vtkVector3d(*conversions.lpsToRas(
        shifted_case.fixed_image.grid.fov_centre())), "MR only")
    assert logic.addLandmarks(nodes["MR points"], nodes["TRUS points"]).landmarkPairs == 4
    nodes["MR points"].AddControlPoint(vtk.vtkVector3d(500, 0, 0), "far")
    nodes["TRUS points"].AddControlPoint(vtk.vtkVector3d(0, 0, 0), "far")
    with pytest.raises(InputError, match=r"^MR landmarks / TRUS landmarks \(new pairs: far\): MR landmark 1 .*outside"):
        logic.addLandmarks(nodes["MR points"], nodes["TRUS points"])


def test_reset_returns_outputs_to_identity(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    logic = started(mrml_scene, nodes, tiny_model)
    logic.addFrames(frame_nodes(mrml_scene, shifted_case, 2))
    report = logic.reset()
    assert report.frames == 0 and logic.reports == [] and logic.lastTransform is None
    point = conversions.lpsToRas(shifted_case.fixed_image.grid.fov_centre())
    np.testing.assert_allclose(logic.outputTransformNode.GetTransformFromParent().TransformPoint(point), point)
    assert logic.addFrames(frame_nodes(mrml_scene, shifted_case, 2))[-1].updates == 1


# --- evaluation -------------------------------------------------------------------------------------------------

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
    assert [r["measure"] for r in rows] == ["landmark L1 error", "landmark L2 error", "landmark L3 error", "RMS TRE",
                                            "gland DSC", "folding", "gland HD95"]
    assert float(rows[3]["value"]) == pytest.approx(library.tre_mm, abs=1e-9)
    assert sorted(p.name for p in path.parent.iterdir()) == ["panel.csv"]  # no temporary left behind


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


# --- bad input --------------------------------------------------------------------------------------------------

def session_state(logic) -> tuple:
    transform = logic.outputTransformNode
    return (logic._session.frame_count if logic.hasSession else None, len(logic.reports),
            None if transform is None else slicer.util.arrayFromGridTransform(transform).copy().tobytes())


def test_bad_input_names_the_node_and_leaves_the_session_unchanged(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    logic = started(mrml_scene, nodes, tiny_model)
    frames = frame_nodes(mrml_scene, shifted_case, 3)
    logic.addFrames(frames[:2])
    state = session_state(logic)
    session = logic._session
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "empty MR gland")
    conversions.updateVolumeNode(empty, np.zeros(shifted_case.moving_image.grid.array_shape, np.uint8),
                                 shifted_case.moving_image.grid)
    far = extract_frame(shifted_case.fixed_image, shifted_case.fixed_labels.array[0], 10)
    far.pose = plane_pose(far.pose[:3, 3] + [0, 0, 500], far.pose[:3, 0], far.pose[:3, 1])
    far_nodes = conversions.frameNodesFromFrame(mrml_scene, far, "far frame")
    other = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "unlabelled points")
    other.AddControlPoint(vtk.vtkVector3d(0, 0, 0), "X")
    cases = [
        (lambda: logic.startSession(nodes["MR"], None, nodes["TRUS"], modelPath=str(tiny_model)),
         "^MR: no prostate segmentation of this MR selected$"),
        (lambda: logic.startSession(nodes["MR"], empty, nodes["TRUS"], modelPath=str(tiny_model)),
         "^empty MR gland: the MR gland is empty$"),
        (lambda: logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"], outputVolume=nodes["MR"]),
         "^MR: is an input; choose another output node$"),
        (lambda: logic.addFrame(*far_nodes), "^far frame: frame 3 lies outside the TRUS grid"),
        (lambda: logic.addFrame(nodes["TRUS"], frames[2][1]),
         r"^TRUS: is a 3D volume \(18x22x16 voxels\); a single-slice \(2D\) frame is expected$"),
        (lambda: logic.addFrame(frames[0][0], frames[0][1]), "^frame 1: frame 3 lies on a plane already acquired$"),
        (lambda: logic.addLandmarks(nodes["MR points"], other),
         r"^MR landmarks and unlabelled points: no control point label in common \(MR: L1, L2, L3; TRUS: X\)$"),
        (lambda: logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"],
                                    modelPath=str(tiny_model) + "-missing"), "tiny-missing"),
    ]
    for call, message in cases:
        with pytest.raises(InputError if "missing" not in message else Exception, match=message):
            call()
        assert logic._session is session and session_state(logic) == state
    assert logic.addFrame(*frames[2]).frames == 3


def test_calls_before_a_session_say_what_is_missing(mrml_scene, shifted_case):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    logic = MetaRegistrationCoreLogic(mrml_scene)
    with pytest.raises(InputError, match="^no registration session"):
        logic.addFrames(frame_nodes(mrml_scene, shifted_case, 2))
    with pytest.raises(InputError, match="^no TRUS volume selected"):
        logic.startSession(nodes["MR"], nodes["MR segmentation"], None)


# --- real data --------------------------------------------------------------------------------------------------

@pytest.mark.real_data
def test_real_case_as_slicer_nodes_matches_the_library_meta_method(mrml_scene, real_data_dir, tmp_path):
    """A real case fed to the Logic as 10 Slicer frame nodes gives the TRE and DSC of ``metareg evaluate
    --method meta`` on that case with the same model (an untrained one: the bundled model may not exist)."""
    torch.manual_seed(0)
    model = tmp_path / "untrained"
    save_model(model, RegistrationNet(), AdaptationSettings())
    dataset = Dataset(real_data_dir)
    case_id = dataset.split("val")[0]
    (expected,) = evaluate_cases(dataset, [case_id], "meta", [10], model)
    case = dataset.load(case_id)
    nodes = conversions.caseNodes(mrml_scene, case)
    logic = MetaRegistrationCoreLogic(mrml_scene)
    logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"], modelPath=str(model))
    frames = [conversions.frameNodesFromFrame(mrml_scene, frame, f"frame {n}")
              for n, frame in enumerate(sweep_frames(case, 10), 1)]
    assert logic.addFrames(frames)[-1].updates == 9
    through_node = evaluate_transform(case, conversions.transformFromNode(logic.outputTransformNode,
                                                                          case.fixed_image.grid))
    assert through_node.tre_mm == pytest.approx(expected.tre_mm, abs=0.01)
    assert through_node.dsc == pytest.approx(expected.dsc, abs=0.001)
    # The evaluation panel, from fiducials at the landmark centroids, gives the same numbers.
    panel = logic.evaluate(nodes["MR points"], nodes["TRUS points"], logic.outputTransformNode,
                           nodes["MR segmentation"], nodes["TRUS segmentation"])
    assert panel.treMm == pytest.approx(expected.tre_mm, abs=0.01)
    assert panel.dsc == pytest.approx(expected.dsc, abs=0.001)


def test_a_deleted_output_node_is_recreated(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    logic = started(mrml_scene, nodes, tiny_model)
    frames = frame_nodes(mrml_scene, shifted_case, 3)
    logic.addFrames(frames[:2])
    deleted = logic.outputTransformNode
    mrml_scene.RemoveNode(deleted)
    logic.addFrame(*frames[2])
    assert logic.outputTransformNode is not deleted and logic.outputTransformNode.GetScene() is mrml_scene


def test_start_button_text_says_what_is_missing(mrml_scene, shifted_case):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    missing = MetaRegistrationCoreLogic.missingInputs
    assert missing(None, None, None) == "Select the MR volume"
    assert missing(nodes["MR"], None, nodes["TRUS"]) == "Select the MR prostate segmentation"
    assert missing(nodes["MR"], nodes["MR segmentation"], None) == "Select the TRUS volume"
    assert missing(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"]) == ""


def test_evaluation_without_a_session_uses_the_glands_own_geometry(mrml_scene, shifted_case):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    truth = mrml_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "true phi")
    grid = shifted_case.fixed_image.grid
    conversions.setGridTransform(truth, Transform(translation(SHIFT_LPS)), grid)
    report = MetaRegistrationCoreLogic(mrml_scene).evaluate(
        nodes["MR points"], nodes["TRUS points"], truth, nodes["MR labelmap"], nodes["TRUS labelmap"])
    assert report.treMm < 1e-6 and report.dsc == 1.0 and report.foldPercent == 0.0
