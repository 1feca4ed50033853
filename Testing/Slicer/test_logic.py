"""The module's Logic (MetaRegistrationSlicer.logic) on slicer-core's MRML: sessions, interactions, outputs, and
bad input (an interaction that fails, however late, leaves the session and the outputs as they were)."""

from __future__ import annotations

import collections
import copy
import re
import types

import numpy as np
import pytest
import torch

slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as a wheel) is not installed")
import vtk  # noqa: E402

from MetaRegistrationLib import adaptation  # noqa: E402
from MetaRegistrationLib.adaptation import AdaptationError  # noqa: E402
from MetaRegistrationLib.data import Dataset  # noqa: E402
from MetaRegistrationLib.errors import InputError  # noqa: E402
from MetaRegistrationLib.evaluation import evaluate_cases  # noqa: E402
from MetaRegistrationLib.geometry import resample  # noqa: E402
from MetaRegistrationLib.metrics import evaluate_transform  # noqa: E402
from MetaRegistrationLib.models import save_model  # noqa: E402
from MetaRegistrationLib.network import RegistrationNet  # noqa: E402
from MetaRegistrationLib.registration import sweep_frames  # noqa: E402
from MetaRegistrationLib.settings import AdaptationSettings  # noqa: E402
from MetaRegistrationLib.sweep import extract_frame, plane_pose  # noqa: E402
from MetaRegistrationSlicer import conversions  # noqa: E402
from MetaRegistrationSlicer.logic import OUTPUT_ATTRIBUTES, MetaRegistrationCoreLogic  # noqa: E402

from slicer_cases import (  # noqa: E402, F401 - shifted_case is a fixture
    checksum,
    frame_nodes,
    node_classes,
    shifted_case,
    started,
    world_points,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    # Only the MR volume and its segmentation changed: they are shown under the output transform (the default).
    output = logic.outputTransformNode
    assert [nodes[name].GetTransformNodeID() for name in ("MR", "MR segmentation")] == [output.GetID()] * 2
    assert output.GetNodeReferenceID("movingVolume") == nodes["MR"].GetID()
    assert output.GetNodeReferenceID("fixedVolume") == nodes["TRUS"].GetID()
    for name in ("MR", "MR segmentation"):
        nodes[name].SetAndObserveTransformNodeID(None)
    assert {node.GetID(): checksum(node) for node in inputs} == before
    added = node_classes(mrml_scene) - classes
    assert added == collections.Counter({
        "vtkMRMLGridTransformNode": 1, "vtkMRMLSegmentationNode": 1, "vtkMRMLSegmentationDisplayNode": 1,
        "vtkMRMLScalarVolumeNode": 1, "vtkMRMLScalarVolumeDisplayNode": 1,
        "vtkMRMLTableNode": 2}), added  # the sweep table (one row per update, quality signals) and the evaluation
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
    reports = from_sequence.addFrameSequence(images, glands, progress=lambda index, status: seen.append(index),
                                             minDistanceMm=0.0)
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
        (lambda: logic.addFrame(*far_nodes), r"^far frame: lies outside the TRUS grid \(18x22x16 voxels"),
        (lambda: logic.addFrame(nodes["TRUS"], frames[2][1]),
         r"^TRUS: is a 3D volume \(18x22x16 voxels\); a single-slice \(2D\) frame is expected$"),
        # The node the user gave, and the node of the frame already on that plane (not the session's "frame 3").
        (lambda: logic.addFrame(frames[0][0], frames[0][1]),
         r"^frame 1: lies on a plane already acquired \(the plane of frame 1\)$"),
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


# --- methods from the registry ----------------------------------------------------------------------------------

def test_the_session_comes_from_the_method_registry(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    logic = MetaRegistrationCoreLogic(mrml_scene)
    start = logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"], modelPath=str(tiny_model),
                               method="meta-noadapt")
    assert start.status.startswith("Session started: MR to TRUS with meta-noadapt on cpu")
    report = logic.addFrames(frame_nodes(mrml_scene, shifted_case, 3))[-1]
    assert report.registered and report.updates == 0  # the method predicts without adapting
    session = logic._session
    with pytest.raises(InputError, match="^method 'centroid' registers whole volumes; an interactive sweep needs"):
        started(mrml_scene, nodes, tiny_model, method="centroid")
    with pytest.raises(InputError, match="^unknown method 'elastix'; choose one of"):
        logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"], method="elastix")
    assert logic._session is session


def test_a_device_torch_cannot_use_is_one_line_and_keeps_the_session(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    logic = MetaRegistrationCoreLogic(mrml_scene)
    logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"], modelPath=str(tiny_model))
    session = logic._session
    for device, problem in (("tpu", "not a device"), ("xpu", "not supported"), ("gpu!", "not a device"),
                            *([("cuda", "torch sees no CUDA device")] if not torch.cuda.is_available() else [])):
        with pytest.raises(InputError, match=f"^device '{re.escape(device)}': {problem}"):
            logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"], modelPath=str(tiny_model),
                               device=device)
    assert logic._session is session


def test_images_far_from_the_training_domain_are_warned_about_in_the_status(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    nodes["TRUS"].SetSpacing(100.0, 100.0, 100.0)  # a units mix-up: metres read as centimetres, say
    logic = MetaRegistrationCoreLogic(mrml_scene)
    report = logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"], modelPath=str(tiny_model))
    assert "; warning: TRUS: voxel spacing 100x100x100 mm" in report.status
    assert "\n" not in report.status


# --- the Start button's entry point -----------------------------------------------------------------------------

def parameter_node(nodes, **changes) -> types.SimpleNamespace:
    """What the module's parameter node holds, as plain attributes."""
    fields = dict(movingVolume=nodes["MR"], movingSegmentation=nodes["MR segmentation"], fixedVolume=nodes["TRUS"],
                  modelPath=None, device="cpu", outputTransform=None, outputVolume=None, outputSegmentation=None,
                  resampleVolume=True, showUnderTransform=True, trackSweep=False, movingLandmarks=nodes["MR points"],
                  fixedLandmarks=nodes["TRUS points"], fixedSegmentation=nodes["TRUS segmentation"])
    return types.SimpleNamespace(**{**fields, **changes})


def test_start_using_the_parameter_node_starts_and_tracks_the_sweep(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    logic = MetaRegistrationCoreLogic(mrml_scene)
    report = logic.startSessionUsingParameterNode(parameter_node(nodes, modelPath=tiny_model, trackSweep=True))
    assert report.status.startswith("Session started: MR to TRUS with meta on cpu")
    logic.addFrames(frame_nodes(mrml_scene, shifted_case, 3))
    assert [row["frames"] for row in logic.sweepRows] == [2, 3]
    assert logic.outputVolumeNode is not None  # resampleVolume came from the parameter node
    # Tracking asked without landmarks: refused before anything changes.
    session = logic._session
    with pytest.raises(InputError, match="^tracking TRE across the sweep needs the MR and the TRUS landmarks"):
        logic.startSessionUsingParameterNode(parameter_node(nodes, modelPath=tiny_model, trackSweep=True,
                                                            fixedLandmarks=None))
    other = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "unlabelled points")
    other.AddControlPoint(vtk.vtkVector3d(0, 0, 0), "X")
    with pytest.raises(InputError, match="no control point label in common"):
        logic.startSessionUsingParameterNode(parameter_node(nodes, modelPath=tiny_model, trackSweep=True,
                                                            fixedLandmarks=other))
    assert logic._session is session and len(logic.sweepRows) == 2
    # Without tracking, the landmarks are not read.
    logic.startSessionUsingParameterNode(parameter_node(nodes, modelPath=str(tiny_model), fixedLandmarks=other))
    assert logic._session is not session


# --- no scene ---------------------------------------------------------------------------------------------------

def test_a_logic_without_a_scene_fails_at_start_in_one_line(mrml_scene, shifted_case, tiny_model, monkeypatch):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    monkeypatch.delattr(slicer, "mrmlScene", raising=False)
    logic = MetaRegistrationCoreLogic()
    with pytest.raises(InputError, match=r"^no MRML scene: give one to MetaRegistrationCoreLogic\(scene\) or set "
                                         r"slicer.mrmlScene$"):
        logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"], modelPath=str(tiny_model))
    assert not logic.hasSession
    monkeypatch.setattr(slicer, "mrmlScene", mrml_scene, raising=False)
    logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"], modelPath=str(tiny_model))
    assert logic.addFrames(frame_nodes(mrml_scene, shifted_case, 2))[-1].registered


# --- an interaction is all or nothing ---------------------------------------------------------------------------

def full_state(logic) -> dict:
    """Everything an interaction may change: the session (frames, pairs, updates, weights, optimiser state), the
    Logic's bookkeeping and the output nodes' content."""
    session = logic._session
    outputs = {name: checksum(node) for name in OUTPUT_ATTRIBUTES if (node := getattr(logic, name)) is not None}
    return {
        "counts": (session.frame_count, len(session._landmarks_fixed), session.updates),
        "poses": [pose.tobytes() for pose in session.frame_poses],
        "weights": {name: tensor.clone() for name, tensor in session.model.state_dict().items()},
        "optimizer": copy.deepcopy(session.optimizer.state_dict()["state"]),
        "logic": (len(logic.reports), logic.givenLandmarkLabels, list(logic.sweepRows), logic.statusText,
                  logic.lastTransform, tuple(getattr(logic, name) for name in OUTPUT_ATTRIBUTES)),
        "outputs": outputs,
        "nodes": node_classes(logic.scene),
    }


def assert_same_state(after: dict, before: dict) -> None:
    assert after["counts"] == before["counts"] and after["poses"] == before["poses"]
    assert after["weights"].keys() == before["weights"].keys()
    assert all(torch.equal(after["weights"][name], before["weights"][name]) for name in before["weights"])
    assert after["optimizer"].keys() == before["optimizer"].keys()
    for key, state in before["optimizer"].items():
        assert all(torch.equal(torch.as_tensor(after["optimizer"][key][name]), torch.as_tensor(value))
                   for name, value in state.items())
    assert after["logic"] == before["logic"]
    assert after["outputs"] == before["outputs"] and after["nodes"] == before["nodes"]


def failing_after(monkeypatch, module, name: str, calls: int = 1):
    """Make ``module.name`` raise a RuntimeError after its real work, from its ``calls``-th call on."""
    real = getattr(module, name)
    count = [0]

    def fail(*args, **kwargs):
        result = real(*args, **kwargs)
        count[0] += 1
        if count[0] >= calls:
            raise RuntimeError(f"injected failure in {name}")
        return result

    monkeypatch.setattr(module, name, fail)


@pytest.mark.parametrize("where", ["gradient step", "prediction", "output segmentation", "output volume",
                                   "sweep table"])
def test_a_late_failure_leaves_session_and_outputs_as_they_were(mrml_scene, shifted_case, tiny_model, monkeypatch,
                                                                where):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    frames = frame_nodes(mrml_scene, shifted_case, 4)
    logic = started(mrml_scene, nodes, tiny_model, resampleVolume=True)
    reference = started(mrml_scene, nodes, tiny_model, resampleVolume=True)
    for each in (logic, reference):
        each.trackSweep(nodes["MR points"], nodes["TRUS points"], nodes["TRUS segmentation"])
        each.addFrames(frames[:2])
        each.addLandmarks(nodes["MR points"], nodes["TRUS points"])  # so that pairs and optimiser state exist
    before = full_state(logic)
    with monkeypatch.context() as patch:
        if where == "gradient step":
            failing_after(patch, adaptation, "adaptation_step")
        elif where == "prediction":
            failing_after(patch, adaptation.AdaptationSession, "predict")
        elif where == "output segmentation":  # the transform node is written before it: it must be put back
            failing_after(patch, conversions, "segmentationFromMask")
        elif where == "output volume":
            failing_after(patch, conversions, "updateVolumeNode")
        else:
            from MetaRegistrationSlicer import tables

            failing_after(patch, tables, "fillTable")
        with pytest.raises(RuntimeError, match="injected failure in "):
            logic.addFrame(*frames[2])
    assert_same_state(full_state(logic), before)
    # The next frame works, as if the failed one had never been tried.
    report = logic.addFrame(*frames[2])
    expected = reference.addFrame(*frames[2])
    assert (report.frames, report.updates, report.landmarkPairs) == (expected.frames, expected.updates, 3) == (3, 3, 3)
    np.testing.assert_array_equal(logic.lastTransform.displacement, reference.lastTransform.displacement)
    assert [row["tre_mm"] for row in logic.sweepRows] == [row["tre_mm"] for row in reference.sweepRows]


def test_a_failure_at_the_first_registration_removes_the_output_nodes_it_created(mrml_scene, shifted_case,
                                                                                   tiny_model, monkeypatch):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    frames = frame_nodes(mrml_scene, shifted_case, 2)
    logic = started(mrml_scene, nodes, tiny_model, resampleVolume=True)
    logic.addFrame(*frames[0])
    before = full_state(logic)
    with monkeypatch.context() as patch:
        failing_after(patch, conversions, "updateVolumeNode")  # the last output written
        with pytest.raises(RuntimeError):
            logic.addFrame(*frames[1])
    assert_same_state(full_state(logic), before)
    assert logic.outputTransformNode is None and logic.outputSegmentationNode is None
    assert logic.addFrame(*frames[1]).registered and logic.outputVolumeNode.GetScene() is mrml_scene


def test_a_failed_reset_keeps_the_session(mrml_scene, shifted_case, tiny_model, monkeypatch):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    logic = started(mrml_scene, nodes, tiny_model)
    logic.addFrames(frame_nodes(mrml_scene, shifted_case, 2))
    before = full_state(logic)
    with monkeypatch.context() as patch:
        failing_after(patch, conversions, "segmentationFromMask")
        with pytest.raises(RuntimeError):
            logic.reset()
    assert_same_state(full_state(logic), before)
    assert logic.reset().frames == 0


def test_an_adaptation_error_from_a_worker_is_raised_by_finish_naming_the_node(mrml_scene, shifted_case,
                                                                               tiny_model, monkeypatch):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    frames = frame_nodes(mrml_scene, shifted_case, 3)
    logic = started(mrml_scene, nodes, tiny_model)
    logic.addFrames(frames[:2])
    before = full_state(logic)
    pending = logic.prepareFrame(*frames[2])
    with monkeypatch.context() as patch:
        patch.setattr(adaptation, "adaptation_step", lambda *args: float("nan"))
        pending.adapt()  # raises nothing: the error waits for the main thread
    assert isinstance(pending.error, AdaptationError)
    with pytest.raises(AdaptationError, match=r"^frame 3: the adaptation diverged: the loss of update 2 is nan"):
        logic.finishInteraction(pending)
    assert_same_state(full_state(logic), before)
    assert logic.addFrame(*frames[2]).frames == 3


def test_an_interaction_prepared_before_a_restart_is_not_applied(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    frames = frame_nodes(mrml_scene, shifted_case, 3)
    logic = started(mrml_scene, nodes, tiny_model)
    logic.addFrames(frames[:2])
    pending = logic.prepareFrame(*frames[2])
    pending.adapt()  # in a worker thread, while the user restarts the session
    logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"], modelPath=str(tiny_model))
    with pytest.raises(InputError, match=r"^frame 3: the session was reset or restarted while this interaction ran"):
        logic.finishInteraction(pending)
    assert logic._session.frame_count == 0 and logic.reports == []
    logic.addFrames(frames[:2])
    pending = logic.prepareFrame(*frames[2])
    pending.adapt()
    logic.reset()
    with pytest.raises(InputError, match=r"^frame 3: the session was reset or restarted"):
        logic.finishInteraction(pending)
    assert logic._session.frame_count == 0 and logic.lastTransform is None


# --- NaN and infinite values ------------------------------------------------------------------------------------

def test_non_finite_landmarks_and_poses_are_refused_before_any_step(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    frames = frame_nodes(mrml_scene, shifted_case, 3)
    logic = started(mrml_scene, nodes, tiny_model)
    logic.addFrames(frames[:2])
    nan_mr = conversions.markupsFromPoints(mrml_scene, conversions.pointsFromMarkups(nodes["MR points"], False),
                                           "NaN MR points")
    nan_mr.SetNthControlPointPosition(1, float("nan"), 0.0, 0.0)
    tracked = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "broken tracking")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, float("inf"))
    tracked.SetMatrixTransformToParent(matrix)
    frames[2][0].SetAndObserveTransformNodeID(tracked.GetID())
    before = full_state(logic)
    with pytest.raises(InputError, match=r"^NaN MR points: point 'L2' has a NaN or infinite coordinate"):
        logic.addLandmarks(nan_mr, nodes["TRUS points"])
    with pytest.raises(InputError, match=r"^frame 3: its pose .* holds NaN or infinite values$"):
        logic.addFrame(*frames[2])
    assert_same_state(full_state(logic), before)
    assert np.isfinite(logic._session.predict().displacement).all()
    frames[2][0].SetAndObserveTransformNodeID(None)
    assert logic.addLandmarks(nodes["MR points"], nodes["TRUS points"]).landmarkPairs == 3


def test_the_mr_is_shown_under_the_transform_which_hardens_inverts_and_exports(mrml_scene, shifted_case, tiny_model,
                                                                                tmp_path):
    """The default overlay: MR, its segmentation and its fiducials under the output transform. Hardening a copy
    of the MR fiducials carries them onto the TRUS by phi^-1, and the transform exported as .h5 and read back in
    SimpleITK maps the TRUS fiducials as the node does (0.1 mm)."""
    import SimpleITK as sitk

    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    logic = started(mrml_scene, nodes, tiny_model, movingLandmarks=nodes["MR points"])
    logic.addFrames(frame_nodes(mrml_scene, shifted_case, 4))
    output = logic.outputTransformNode
    assert all(nodes[name].GetTransformNodeID() == output.GetID()
               for name in ("MR", "MR segmentation", "MR points"))
    mr = conversions.pointsFromMarkups(nodes["MR points"], world=False)
    copy_of_mr = conversions.markupsFromPoints(mrml_scene, mr, "MR points copy")
    copy_of_mr.SetAndObserveTransformNodeID(output.GetID())
    slicer.vtkSlicerTransformLogic().hardenTransform(copy_of_mr)
    hardened = conversions.pointsFromMarkups(copy_of_mr, world=False)
    labels = sorted(mr)
    expected = logic.lastTransform.inverse_map_points(np.array([mr[label] for label in labels]))
    np.testing.assert_allclose([hardened[label] for label in labels], expected, atol=0.05)
    path = logic.saveNode(output, tmp_path / "mr-to-trus.h5")
    exported = sitk.ReadTransform(str(path))
    trus = conversions.pointsFromMarkups(nodes["TRUS points"], world=True)
    node_mapping = conversions.transformFromNode(output, shifted_case.fixed_image.grid)
    for label, point in trus.items():
        through_file = np.array(exported.TransformPoint(tuple(float(x) for x in point)))
        assert np.linalg.norm(through_file - node_mapping.map_points(point)) < 0.1, label
