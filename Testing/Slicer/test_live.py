"""Live tracking on slicer-core: a simulated OpenIGTLink stream updates one frame node in place, and the Logic
turns it into registration updates (MetaRegistrationSlicer.live, MetaRegistrationLib.live)."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as a wheel) is not installed")

from MetaRegistrationLib.data import Dataset  # noqa: E402
from MetaRegistrationLib.errors import InputError  # noqa: E402
from MetaRegistrationLib.live import FrameSelection, plane_difference  # noqa: E402
from MetaRegistrationLib.metrics import evaluate_transform  # noqa: E402
from MetaRegistrationLib.registration import run_sweep, sweep_session  # noqa: E402
from MetaRegistrationSlicer import conversions  # noqa: E402
from MetaRegistrationSlicer.logic import MetaRegistrationCoreLogic  # noqa: E402

from slicer_cases import SimulatedStream, shifted_case, started  # noqa: E402, F401 - shifted_case is a fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAME_PERIOD_S = 0.125
"""The 60 frames span 7.5 s: a clinician's sweep across a 4-5 cm gland (PLUS streams 20-30 frames a second; the
frames between these would all be near-duplicates)."""


@pytest.fixture
def real_case(real_data_dir):
    dataset = Dataset(real_data_dir)
    return dataset.load(dataset.split("val")[0])


def _stream(logic, stream: SimulatedStream) -> None:
    """Play the stream in real time: each frame arrives, the GUI's timer polls, the probe moves on."""
    logic.pollLiveTracking()  # the frame there at the start
    for n in range(1, stream.count):
        tick = time.perf_counter()
        stream.show(n)
        logic.pollLiveTracking()
        time.sleep(max(0.0, FRAME_PERIOD_S - (time.perf_counter() - tick)))


def test_a_live_stream_registers_a_subset_like_a_plain_sweep_of_the_accepted_frames(mrml_scene, real_case):
    """60 in-place updates of one frame node under a two-level transform chain, with 0.3 mm / 0.3 degree jitter,
    over a 7.5 s sweep: a sensible subset is accepted, no near-duplicate errors, and the registration equals a
    plain library sweep session fed the accepted frames (TRE to 0.01 mm)."""
    nodes = conversions.caseNodes(mrml_scene, real_case)
    logic = MetaRegistrationCoreLogic(mrml_scene)
    logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"])
    stream = SimulatedStream(mrml_scene, real_case)
    logic.startLiveTracking(stream.frameNode, stream.glandNode)
    with pytest.raises(InputError, match="live tracking is running"):
        logic.addFrame(stream.frameNode, stream.glandNode)
    _stream(logic, stream)
    status = logic.stopLiveTracking()
    counts = logic.liveCounts
    assert counts.seen == 60 and counts.failed == 0, status
    assert counts.accepted + counts.skipped + counts.replaced + counts.unsegmented + counts.dropped == counts.seen
    assert counts.skipped >= 30, status  # the jitter alone makes no new plane
    frames = logic.liveFrames
    assert 3 <= len(frames) <= 20 and len(frames) == counts.accepted, status
    assert logic._session.frame_count == len(frames)
    for a, b in itertools.combinations(frames, 2):  # every acquired plane is new against the others
        distance, angle = plane_difference(a.pose, a.shape, b.pose, b.shape)
        assert distance >= 3.0 or angle >= 5.0
    assert f"{counts.seen} frames seen" in status and "last update" in status

    plain = sweep_session(real_case)
    *_, result = run_sweep(plain, frames)
    expected = evaluate_transform(real_case, result.transform)
    live = evaluate_transform(real_case, logic.lastTransform)
    assert live.tre_mm == pytest.approx(expected.tre_mm, abs=0.01)
    assert live.dsc == pytest.approx(expected.dsc, abs=0.001)


def test_live_frames_without_a_segmentation_get_the_bundled_segmenters_gland(mrml_scene, real_case):
    """No frame segmentation: the bundled segmenter predicts each accepted frame's gland; frames past the gland's
    edge are counted as without gland, not errors. Run without a worker thread (as a script would)."""
    nodes = conversions.caseNodes(mrml_scene, real_case)
    logic = MetaRegistrationCoreLogic(mrml_scene)
    logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"])
    stream = SimulatedStream(mrml_scene, real_case, count=12, jitter_mm=0.0, jitter_degrees=0.0)
    logic.startLiveTracking(stream.frameNode, threaded=False)
    logic.pollLiveTracking()
    for n in range(1, stream.count):
        stream.show(n)
        logic.pollLiveTracking()
    logic.stopLiveTracking()
    counts = logic.liveCounts
    assert counts.failed == 0 and counts.accepted >= 8, counts
    assert logic.reports[-1].registered
    truth = [stream.frame(n).gland for n in range(stream.count)]
    predicted = [frame.gland for frame in logic.liveFrames]
    assert all(p.shape == truth[0].shape and p.any() for p in predicted)


def test_an_rgb_frame_is_read_as_its_intensity(mrml_scene, real_case):
    """A vector (RGB) frame, as some devices stream, reads as the grey frame it shows (BT.601 luma)."""
    stream = SimulatedStream(mrml_scene, real_case, count=3)
    grey, pose = conversions.framePixelsFromNode(stream.frameNode)
    rgb = mrml_scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "RGB frame")
    grey = np.round(grey).clip(0, 255).astype(np.uint8)
    slicer.util.updateVolumeFromArray(rgb, np.repeat(grey[None, :, :, None], 3, axis=-1))
    rgb.SetIJKToRASMatrix(_ijkToRas(stream.frameNode))
    rgb.SetAndObserveTransformNodeID(stream.imageToReference.GetID())
    image, rgbPose = conversions.framePixelsFromNode(rgb)
    assert np.allclose(image, grey, atol=0.01)
    assert np.allclose(rgbPose, pose)


def _ijkToRas(node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix


def test_live_tracking_refuses_what_cannot_be_a_frame_in_one_line(mrml_scene, real_case):
    nodes = conversions.caseNodes(mrml_scene, real_case)
    logic = MetaRegistrationCoreLogic(mrml_scene)
    with pytest.raises(InputError, match="no registration session"):
        logic.startLiveTracking(nodes["TRUS"])
    logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"])
    with pytest.raises(InputError, match="^TRUS: is a 3D volume"):
        logic.startLiveTracking(nodes["TRUS"])
    with pytest.raises(InputError, match="min_distance_mm must be a finite number"):
        FrameSelection(min_distance_mm=float("nan"))
    assert not logic.isLiveTracking


# --- recorded sweeps ----------------------------------------------------------------------------------------------

def _recording(scene, case, layout: str, count: int = 5):
    """A recorded sweep of ``count`` sagittal frames in a sequence browser, its pose either in each frame's
    geometry (``"geometry"``) or in a synchronised ``ImageToReference`` transform sequence (``"transform"``, the
    PLUS layout: every stored image has the same local geometry). Returns (browser, images, glands, frames)."""
    from MetaRegistrationLib.geometry import LPS_TO_RAS
    from MetaRegistrationLib.registration import sweep_frames

    frames = sweep_frames(case, count)
    images = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "Image_Reference sequence")
    glands = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "gland sequence")
    poses = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "ImageToReference sequence")
    pixelToImage = np.diag([*frames[0].spacing, 1.0, 1.0])
    for n, frame in enumerate(frames):
        value = f"{0.5 * n:.3f}"  # seconds, as PLUS time-stamps
        image, gland = conversions.frameNodesFromFrame(scene, frame, f"recorded {n}")
        if layout == "transform":
            for node in (image, gland):
                node.SetIJKToRASMatrix(conversions.matrixFromArray(pixelToImage))
            transform = slicer.vtkMRMLLinearTransformNode()
            transform.SetMatrixTransformToParent(conversions.matrixFromArray(
                LPS_TO_RAS @ frame.pose @ np.linalg.inv(pixelToImage)))
            poses.SetDataNodeAtValue(transform, value)
        images.SetDataNodeAtValue(image, value)
        glands.SetDataNodeAtValue(gland, value)
        scene.RemoveNode(image)
        scene.RemoveNode(gland)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "Recording")
    browser.SetAndObserveMasterSequenceNodeID(images.GetID())
    browser.AddSynchronizedSequenceNode(glands.GetID())
    if layout == "transform":
        browser.AddSynchronizedSequenceNode(poses.GetID())
    browser.SetSelectedItemNumber(0)
    if layout == "transform":  # the proxies sit under the pose proxy, as in a PLUS recording scene
        for sequence in (images, glands):
            browser.GetProxyNode(sequence).SetAndObserveTransformNodeID(browser.GetProxyNode(poses).GetID())
    return browser, images, glands, frames


@pytest.mark.parametrize("layout", ["geometry", "transform"])
def test_a_recording_is_read_through_its_browser_with_each_frames_pose(mrml_scene, shifted_case, tiny_model, layout):
    """Both recording layouts give the registration of the same frames added one by one, and the output transform
    of each update is recorded into a sequence synchronised with the recording's browser."""
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    browser, images, glands, frames = _recording(mrml_scene, shifted_case, layout)
    browser.SetSelectedItemNumber(2)
    logic = started(mrml_scene, nodes, tiny_model)
    reports = logic.addFrameSequence(images, glands, minDistanceMm=1.0)
    assert [r.frames for r in reports] == [1, 2, 3, 4, 5]
    assert browser.GetSelectedItemNumber() == 2  # put back where the user had it
    one_by_one = started(mrml_scene, nodes, tiny_model)
    for n, frame in enumerate(frames):
        one_by_one.addFrame(*conversions.frameNodesFromFrame(mrml_scene, frame, f"single {n}"))
    grid = shifted_case.fixed_image.grid
    np.testing.assert_allclose(logic.lastTransform.map_grid(grid), one_by_one.lastTransform.map_grid(grid),
                               atol=1e-6)
    results = mrml_scene.GetFirstNodeByName("MR to TRUS (MetaRegistration) per frame")
    assert results is not None and results.GetNumberOfDataNodes() == 4  # one per update, from the 2nd frame
    assert browser.IsSynchronizedSequenceNodeID(results.GetID(), False)
    proxy = browser.GetProxyNode(results)
    assert proxy.GetName() == "MR to TRUS (MetaRegistration) at the browsed frame"
    at_end = logic.lastTransform.map_grid(grid)
    browser.SetSelectedItemNumber(4)  # the last frame: the registration at the end
    np.testing.assert_allclose(conversions.transformFromNode(proxy, grid).map_grid(grid), at_end, atol=1e-4)
    browser.SetSelectedItemNumber(1)  # the second frame: the first update's registration, not the last
    assert np.abs(conversions.transformFromNode(proxy, grid).map_grid(grid) - at_end).max() > 1e-3
    # Browsing never touches the session's output transform.
    np.testing.assert_allclose(conversions.transformFromNode(logic.outputTransformNode, grid).map_grid(grid), at_end,
                               atol=1e-4)
    # A second sweep on the same browser reuses the one result sequence.
    logic.reset()
    logic.addFrameSequence(images, glands, minDistanceMm=1.0)
    named = mrml_scene.GetNodesByName("MR to TRUS (MetaRegistration) per frame")
    assert [named.GetItemAsObject(n).GetClassName() for n in range(named.GetNumberOfItems())] == \
        ["vtkMRMLSequenceNode"]
    assert results.GetNumberOfDataNodes() == 4


def test_a_sequence_in_no_browser_is_read_in_each_frames_own_geometry(mrml_scene, shifted_case, tiny_model):
    nodes = conversions.caseNodes(mrml_scene, shifted_case)
    browser, images, glands, _ = _recording(mrml_scene, shifted_case, "geometry")
    mrml_scene.RemoveNode(browser)
    logic = started(mrml_scene, nodes, tiny_model)
    assert logic.addFrameSequence(images, glands, minDistanceMm=1.0)[-1].frames == 5
    assert mrml_scene.GetFirstNodeByName("MR to TRUS (MetaRegistration) per frame") is None
