"""The web app's workflow (MetaRegistrationWeb.workflow) on slicer-core's MRML, without a browser."""

from __future__ import annotations

import csv
import threading

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as a wheel) is not installed")
import vtk  # noqa: E402

from MetaRegistrationLib.errors import InputError  # noqa: E402
from MetaRegistrationLib.phantom import make_phantom_case  # noqa: E402
from MetaRegistrationLib.registration import sweep_frames  # noqa: E402
from MetaRegistrationWeb.workflow import EXPORTS, SweepWorkflow, trusViewAxes  # noqa: E402
from MetaRegistrationSlicer import conversions  # noqa: E402
from MetaRegistrationSlicer.logic import SWEEP_COLUMNS  # noqa: E402

FRAMES = 4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_phantom():
    return make_phantom_case(seed=1, scale=0.5)[0]


@pytest.fixture
def workflow(mrml_scene, small_phantom, tiny_model) -> SweepWorkflow:
    return SweepWorkflow(mrml_scene, small_phantom, tiny_model, frameCount=FRAMES)


def place(node, label: str, ras) -> None:
    node.AddControlPointWorld(vtk.vtkVector3d(*ras), label)


def test_the_sweep_goes_frame_by_frame_through_the_logic(workflow, small_phantom):
    assert (workflow.framesAcquired, workflow.framesLeft, workflow.registered) == (0, FRAMES, False)
    first = workflow.acquireNextFrame()
    assert not first.registered and workflow.rows() == []
    reports = [workflow.acquireNextFrame() for _ in range(FRAMES - 1)]
    assert [r.updates for r in reports] == list(range(1, FRAMES))
    rows = workflow.rows()
    assert [row["frames"] for row in rows] == list(range(2, FRAMES + 1))
    assert set(rows[0]) == set(SWEEP_COLUMNS) and all(np.isfinite(row["tre_mm"]) for row in rows)
    # What the views show of the sweep: the acquired gland and one quad per frame plane, on the frames' planes.
    assert workflow.acquiredGland.GetSegmentation().GetNumberOfSegments() == 1
    planes = workflow.framePlanes.GetPolyData()
    assert planes.GetNumberOfCells() == FRAMES
    frames = sweep_frames(small_phantom, FRAMES)
    corner = conversions.rasToLps(planes.GetPoint(0))
    np.testing.assert_allclose(corner, frames[0].pose[:3, 3], atol=1e-6)
    # The registered MR's landmarks follow the output transform.
    assert workflow.nodes["MR points"].GetTransformNodeID() == workflow.logic.outputTransformNode.GetID()
    with pytest.raises(InputError, match="sweep is complete"):
        workflow.prepareNextFrame()


def test_a_clicked_pair_is_an_interaction_and_labels_pair_up(workflow):
    for _ in range(2):
        workflow.acquireNextFrame()
    assert workflow.nextPairLabel() == "P1" and not workflow.hasNewPair()
    trus = workflow.nodes["TRUS points"]
    target = trus.GetNthControlPointPositionWorld(0)
    place(workflow.trusPairPoints, "P1", target)
    assert not workflow.hasNewPair()  # half a pair
    place(workflow.mrPairPoints, "P1", target)  # clicked on the registered MR: stored in MR coordinates
    pair = workflow.pairs()[0]
    expected_mr = workflow.logic.lastTransform.map_points(conversions.rasToLps(target)[None])[0]
    np.testing.assert_allclose(pair["mr"], expected_mr, atol=0.05)
    assert workflow.hasNewPair() and workflow.nextPairLabel() == "P2"
    residual_before = workflow.pairs()[0]["error_mm"]
    assert residual_before == pytest.approx(0.0, abs=0.05)  # clicked on the overlay: phi maps it onto itself
    report = workflow.run(workflow.preparePair())
    assert (report.landmarkPairs, report.updates) == (1, 2)
    assert workflow.rows()[-1]["landmark_pairs"] == 1 and not workflow.hasNewPair()
    with pytest.raises(InputError, match="no new landmark pair"):
        workflow.preparePair()


def test_adaptation_runs_in_a_worker_thread_without_touching_the_scene(workflow, mrml_scene):
    workflow.acquireNextFrame()
    pending = workflow.prepareNextFrame()
    nodes_before = mrml_scene.GetNumberOfNodes()
    modified_before = mrml_scene.GetMTime()
    worker = threading.Thread(target=pending.adapt)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive() and pending.result is not None
    assert (mrml_scene.GetNumberOfNodes(), mrml_scene.GetMTime()) == (nodes_before, modified_before)
    assert workflow.finish(pending).registered


def test_exports_are_written_and_read_back(workflow, mrml_scene, tmp_path):
    with pytest.raises(InputError, match="nothing to export yet"):
        workflow.export("transform", tmp_path)
    for _ in range(2):
        workflow.acquireNextFrame()
    paths = {what: workflow.export(what, tmp_path) for what in EXPORTS}
    assert {path.name for path in paths.values()} == set(EXPORTS.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(EXPORTS.values())  # no temporary left
    with open(paths["table"]) as table:
        assert [float(row["frames"]) for row in csv.DictReader(table)] == [2]
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "read")
    reader = transform.CreateDefaultStorageNode()
    reader.SetFileName(str(paths["transform"]))
    assert reader.ReadData(transform)
    grid = workflow.case.fixed_image.grid
    probe = grid.world_points().reshape(-1, 3)[::997]
    np.testing.assert_allclose(conversions.transformFromNode(transform, grid).map_points(probe),
                               workflow.logic.lastTransform.map_points(probe), atol=1e-3)
    with pytest.raises(InputError, match="unknown export"):
        workflow.export("everything", tmp_path)


def test_reset_forgets_frames_and_pairs(workflow, mrml_scene):
    nodes_at_start = mrml_scene.GetNumberOfNodes()
    for _ in range(2):
        workflow.acquireNextFrame()
    place(workflow.trusPairPoints, "P1", (0, 0, 0))
    workflow.reset()
    frame_nodes = [mrml_scene.GetNthNode(n).GetName() for n in range(mrml_scene.GetNumberOfNodes())
                   if mrml_scene.GetNthNode(n).GetName().startswith("Frame ")]
    assert frame_nodes == [] and mrml_scene.GetNumberOfNodes() > nodes_at_start  # outputs stay, frames go
    assert (workflow.framesAcquired, workflow.rows(), workflow.pairs()) == (0, [], [])
    assert workflow.framePlanes.GetPolyData().GetNumberOfCells() == 0
    assert workflow.acquireNextFrame().frames == 1


def test_the_sagittal_view_looks_along_the_sweep(small_phantom):
    axes = trusViewAxes(small_phantom.fixed_image.grid)
    frame = sweep_frames(small_phantom, 2)[0]
    normal_ras = conversions.lpsToRas(frame.normal)
    assert abs(np.dot(axes["sagittal"][0], normal_ras)) == pytest.approx(1.0, abs=1e-9)
    assert abs(np.dot(axes["axial"][0], normal_ras)) == pytest.approx(0.0, abs=1e-9)


def test_pair_residuals_come_from_metrics_measure(workflow, monkeypatch):
    from MetaRegistrationLib import metrics

    for _ in range(2):
        workflow.acquireNextFrame()
    target = workflow.nodes["TRUS points"].GetNthControlPointPositionWorld(0)
    for label in ("P1", "P2"):
        place(workflow.trusPairPoints, label, target)
        place(workflow.mrPairPoints, label, target)
    place(workflow.trusPairPoints, "P3", target)  # half a pair: no residual
    calls = []
    real = metrics.measure
    monkeypatch.setattr(metrics, "measure", lambda *args, **kwargs: calls.append(kwargs) or real(*args, **kwargs))
    pairs = workflow.pairs()
    assert [pair["label"] for pair in pairs] == ["P1", "P2", "P3"] and pairs[2]["error_mm"] is None
    (call,) = calls  # one call for every complete pair, without the regularity metrics
    assert len(call["fixed_points"]) == 2 and call["regularity"] is False
    expected = real(workflow.logic.lastTransform, workflow.case.fixed_image.grid, fixed_points=call["fixed_points"],
                    moving_points=call["moving_points"]).landmark_errors_mm
    assert [pair["error_mm"] for pair in pairs[:2]] == pytest.approx(list(expected), abs=1e-12)


def test_the_workflow_runs_the_sweep_method_it_is_given(mrml_scene, small_phantom, tiny_model):
    workflow = SweepWorkflow(mrml_scene, small_phantom, tiny_model, frameCount=FRAMES, method="meta-noadapt")
    workflow.acquireNextFrame()
    report = workflow.acquireNextFrame()
    assert report.registered and report.updates == 0  # the registry's meta-noadapt runs no gradient step


def test_the_app_command_refuses_a_method_that_is_not_a_sweep(capsys):
    from MetaRegistrationWeb.command import main

    assert main(["--method", "centroid"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "centroid" in error and "sweep method" in error


def test_an_unexpected_failure_leaves_no_frame_nodes_behind(workflow, mrml_scene, monkeypatch):
    workflow.acquireNextFrame()
    volumes = mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    pending = workflow.prepareNextFrame()
    pending.adapt()
    monkeypatch.setattr(workflow.logic, "finishInteraction", lambda pending: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError):
        workflow.finish(pending)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == volumes
    assert workflow.framesAcquired == 1


def test_the_app_command_refuses_what_the_page_would_report_before_serving(tmp_path, capsys):
    import socket

    from MetaRegistrationWeb.command import main

    assert main(["--data", str(tmp_path / "missing")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "none")]) == 2
    assert "none.json: file not found" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--port", str(port)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"--port {port}: 127.0.0.1:{port} cannot be used" in error


def test_the_workflow_can_predict_the_frames_glands(mrml_scene, real_data_dir):
    """``frameGlands="predicted"``: the simulated frames carry the bundled segmenter's glands, not the label's."""
    from MetaRegistrationLib.data import Dataset
    from MetaRegistrationLib.metrics import dice

    dataset = Dataset(real_data_dir)
    case = dataset.load(dataset.split("val")[0])
    flow = SweepWorkflow(mrml_scene, case, frameCount=4, frameGlands="predicted")
    truth = sweep_frames(case, 4)
    predicted = [frame.gland for frame in flow._sweep]
    assert any(not np.array_equal(p, t.gland) for p, t in zip(predicted, truth))
    assert all(dice(p, t.gland) > 0.5 for p, t in zip(predicted[1:3], truth[1:3]))


def test_a_probe_streamed_over_openigtlink_is_registered_by_live_tracking(mrml_scene, small_phantom):
    """The app's Play path without the browser: the simulated probe (a loopback pyigtl server) streams a sweep,
    the receiver updates nodes in place as OpenIGTLinkIF does, and the Logic's live tracking registers it."""
    import time

    from MetaRegistrationLib.igtl import SimulatedProbe

    flow = SweepWorkflow(mrml_scene, small_phantom)
    probe = SimulatedProbe(small_phantom, count=30, period_s=0.05)
    probe.start()
    try:
        flow.startLive("127.0.0.1", probe.port)
        deadline = time.monotonic() + 60
        while not probe.finished and time.monotonic() < deadline:
            flow.pollLive()
            time.sleep(0.02)
        flow.stopLive()
    finally:
        probe.stop()
    counts = flow.logic.liveCounts
    assert counts.seen >= 10 and counts.failed == 0 and counts.unreadable == 0, counts.describe()
    assert flow.framesAcquired == len(flow.logic.liveFrames) >= 3 and flow.registered
    assert not flow.live and mrml_scene.GetFirstNodeByName("Image_Reference") is None
    assert len(flow.rows()) == flow.framesAcquired - 1  # one sweep-table row per update
