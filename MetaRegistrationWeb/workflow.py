"""The web app's workflow on one case, through the Slicer module's Logic (this package holds no registration code).

A :class:`SweepWorkflow` puts a case into a MRML scene as a clinician has it (MR, its segmentation and
landmarks, the TRUS volume), simulates the tracked probe's sagittal sweep one frame at a time (the frames of
``metareg evaluate``: right to left, uniformly over the TRUS gland), gives each frame and each clicked landmark
pair to ``MetaRegistrationCoreLogic`` as an interaction, and keeps what the views show in step: the gland of the
acquired frames, their planes, and the registered MR's outputs. It needs no trame: tests drive it on a bare
``slicer-core`` scene.

An interaction runs in three steps (``MetaRegistrationCoreLogic.prepareFrame``): ``prepare*`` here reads
nodes, ``PendingInteraction.adapt()`` may run in a worker thread, :meth:`SweepWorkflow.finish` writes nodes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import vtk

from MetaRegistrationLib.data import Case
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.files import atomic_path
from MetaRegistrationLib.geometry import apply_affine
from MetaRegistrationLib.live import FrameSelection
from MetaRegistrationLib import metrics
from MetaRegistrationLib.registration import SWEEP_FRAMES, sweep_frames
from MetaRegistrationLib.sweep import rasterise_frames
from MetaRegistrationSlicer import conversions
from MetaRegistrationSlicer.logic import MetaRegistrationCoreLogic, PendingInteraction, InteractionReport

ACQUIRED_GLAND_COLOR = (0.2, 0.9, 0.3)
"""The TRUS gland of the acquired frames (green); the warped MR gland keeps the Logic's colour (orange)."""
EXPORTS = {"transform": "MR-to-TRUS.h5", "warped-mr": "MR-registered.nrrd", "table": "sweep.csv",
           "scene": "scene.mrb"}
"""What the app exports, with the file name each is written as."""
FIRST_FRAME_SECONDS = 10.0
"""How long :meth:`SweepWorkflow.startLive` waits for the stream's first frame."""


class SweepWorkflow:
    """One case, a simulated sweep and landmark pairs on a MRML scene.

    Args:
        scene: the scene to fill (the app's ``SlicerApp().scene`` or a bare ``slicer.vtkMRMLScene``).
        case: the MR/TRUS pair; its landmark labels become the fiducials the TRE read-out uses, never
            interactions.
        modelPath: the model (stem of ``.safetensors`` + ``.json``); the bundled meta-initialisation if omitted.
        frameCount: frames in the simulated sweep.
        method: the sweep method of ``MetaRegistrationLib.registration.METHODS`` that registers it.
        frameGlands: the frames' glands from the case's TRUS label (``"true"``) or the bundled frame segmenter
            (``"predicted"``, as in the operating room, where no one draws them).
    """

    def __init__(self, scene, case: Case, modelPath: str | Path | None = None, frameCount: int = SWEEP_FRAMES,
                 method: str = "meta", frameGlands: str = "true"):
        self.scene = scene
        self.case = case
        self.frameGlands = frameGlands
        self._receiver = None  # the OpenIGTLink receiver while the probe streams (startLive)
        self._acquiredBeforeLive = []
        self.logic = MetaRegistrationCoreLogic(scene)
        self.nodes = conversions.caseNodes(scene, case)
        self._sweep = sweep_frames(case, frameCount, frameGlands)
        self._acquired = []
        self._frameNodes = []  # (volume, labelmap) of each frame handed to the Logic, the last one maybe pending
        self.mrPairPoints = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "MR pair points")
        self.trusPairPoints = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "TRUS pair points")
        for node, color in ((self.mrPairPoints, (1.0, 0.8, 0.2)), (self.trusPairPoints, (0.3, 0.8, 1.0))):
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(color)
        for node in (self.nodes["MR points"], self.nodes["TRUS points"], self.mrPairPoints, self.trusPairPoints):
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetOccludedVisibility(True)  # landmarks inside the gland surface stay visible
        self._shownOutputs = None  # (transform ID, segmentation ID) that _showRegistration set up
        self.acquiredGland = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TRUS gland (acquired frames)")
        self.acquiredGland.CreateDefaultDisplayNodes()
        self.acquiredGland.GetDisplayNode().SetOpacity2DFill(0.25)
        self.framePlanes = scene.AddNewNodeByClass("vtkMRMLModelNode", "Acquired frame planes")
        self.framePlanes.CreateDefaultDisplayNodes()
        # Opaque outlines: translucent surfaces are not drawn by the web app's software renderer.
        planesDisplay = self.framePlanes.GetDisplayNode()
        planesDisplay.SetColor(0.3, 0.8, 1.0)
        planesDisplay.SetRepresentation(planesDisplay.WireframeRepresentation)
        planesDisplay.SetLineWidth(2)
        self.logic.startSession(self.nodes["MR"], self.nodes["MR segmentation"], self.nodes["TRUS"],
                                modelPath=str(modelPath) if modelPath else None, resampleVolume=True, method=method)
        self.logic.trackSweep(self.nodes["MR points"], self.nodes["TRUS points"], self.nodes["TRUS segmentation"])

    # --- the sweep ------------------------------------------------------------------------------------------------

    @property
    def framesAcquired(self) -> int:
        return len(self._acquired)

    @property
    def framesLeft(self) -> int:
        return len(self._framesToAcquire())

    def _framesToAcquire(self) -> list:
        """The sweep's frames whose planes are new against every acquired frame (a live stream may have taken
        some), in order."""
        rule = FrameSelection()
        acquired = [(frame.pose, frame.shape) for frame in self._acquired]
        return [frame for frame in self._sweep if rule.differs(frame.pose, frame.shape, acquired)]

    @property
    def registered(self) -> bool:
        return self.logic.lastTransform is not None

    def prepareNextFrame(self) -> PendingInteraction:
        """The next frame of the sweep as tracked frame nodes, read by the Logic (``adapt()`` it next)."""
        left = self._framesToAcquire()
        if not left:
            raise InputError(f"the sweep is complete: all {len(self._sweep)} of its planes are acquired")
        frame = left[0]
        volume, label = conversions.frameNodesFromFrame(self.scene, frame, f"Frame {len(self._acquired) + 1}")
        for node in (volume, label):
            node.SetHideFromEditors(True)  # inputs of the Logic, not things to look at
        self._frameNodes.append((volume, label))
        try:
            return self.logic.prepareFrame(volume, label)
        except Exception:  # whatever failed, the frame was not acquired: its nodes go
            self._removeFrameNodes(1)
            raise

    def preparePair(self) -> PendingInteraction:
        """The landmark pairs placed (matched by label) and not given yet, read by the Logic."""
        return self.logic.prepareLandmarks(self.mrPairPoints, self.trusPairPoints)

    def finish(self, pending: PendingInteraction) -> InteractionReport:
        """Write the outputs of an adapted interaction and refresh what the views show of the sweep."""
        try:
            report = self.logic.finishInteraction(pending)
        except Exception:  # the Logic rolled the session back, whatever failed: the frame was not acquired
            if pending.frame is not None:
                self._removeFrameNodes(1)
            raise
        if pending.frame is not None:
            self._acquired.append(pending.frame)
            self._showAcquiredFrames()
        if self.registered:
            self._showRegistration()
        return report

    def run(self, pending: PendingInteraction) -> InteractionReport:
        """Adapt and finish in the calling thread."""
        pending.adapt()
        return self.finish(pending)

    # --- the live probe (OpenIGTLink) --------------------------------------------------------------------------

    def startLive(self, host: str, port: int) -> str:
        """Receive a streamed sweep from the OpenIGTLink server ``host:port`` (the app's simulated probe, or PLUS)
        into nodes, as OpenIGTLinkIF does, and register it with the Logic's live tracking; the frames' glands come
        from the streamed ``Gland`` image, or from the frame segmenter with ``frameGlands="predicted"``."""
        from .igtl_receiver import IgtlNodeReceiver

        self._receiver = IgtlNodeReceiver(self.scene, host, port)
        self._acquiredBeforeLive = list(self._acquired)
        glands = None if self.frameGlands == "predicted" else self._receiver.glandNode
        try:
            deadline = time.monotonic() + FIRST_FRAME_SECONDS  # the image node exists once a frame has come
            while self._receiver.frameNode.GetImageData() is None or self._receiver.glandNode.GetImageData() is None:
                if time.monotonic() > deadline:
                    raise InputError(f"no frame from the OpenIGTLink server {host}:{port} within "
                                     f"{FIRST_FRAME_SECONDS:g} s")
                self._receiver.update()
                time.sleep(0.02)
            return self.logic.startLiveTracking(self._receiver.frameNode, glands)
        except Exception:
            self._endReceiver()
            raise

    def pollLive(self) -> InteractionReport | None:
        """Apply the messages received, then let the Logic read the frame, finish and start updates; returns the
        report of an update finished now."""
        self._receiver.update()
        return self._showLive(self.logic.pollLiveTracking())

    def stopLive(self) -> InteractionReport | None:
        """Stop receiving; the running update is finished and shown (returned)."""
        try:
            self.logic.stopLiveTracking()
            return self._showLive(self.logic.lastLiveReport)
        finally:
            self._endReceiver()

    @property
    def live(self) -> bool:
        return self._receiver is not None

    def _showLive(self, report):
        if report is not None:
            self._acquired = self._acquiredBeforeLive + self.logic.liveFrames
            self._showAcquiredFrames()
            if self.registered:
                self._showRegistration()
        return report

    def _endReceiver(self) -> None:
        if self._receiver is not None:
            self._receiver.stop()
            for node in self._receiver.nodes:
                self.scene.RemoveNode(node)
            self._receiver = None

    def acquireNextFrame(self) -> InteractionReport:
        return self.run(self.prepareNextFrame())

    def reset(self) -> InteractionReport:
        """Back to no frame and no pair: the session returns to the initialisation."""
        report = self.logic.reset()
        self._acquired = []
        self._removeFrameNodes(len(self._frameNodes))
        for node in (self.mrPairPoints, self.trusPairPoints):
            node.RemoveAllControlPoints()
        self._showAcquiredFrames()
        return report

    def _removeFrameNodes(self, count: int) -> None:
        """Remove the last ``count`` frames' nodes from the scene."""
        for _ in range(count):
            for node in self._frameNodes.pop():
                self.scene.RemoveNode(node)

    def _showAcquiredFrames(self) -> None:
        grid = self.case.fixed_image.grid
        segmentation = self.acquiredGland.GetSegmentation()
        if not self._acquired:
            segmentation.RemoveAllSegments()
            self.framePlanes.SetAndObservePolyData(vtk.vtkPolyData())
            return
        _, gland, _ = rasterise_frames(self._acquired, grid)
        conversions.segmentationFromMask(self.acquiredGland, gland > 0.5, grid, "TRUS gland (acquired)",
                                         ACQUIRED_GLAND_COLOR)
        self.framePlanes.SetAndObservePolyData(_planesPolyData(self._acquired))

    def _showRegistration(self) -> None:
        """Once per set of output nodes: the MR landmarks and pair points follow the registration (children of the
        output transform), the warped MR gland shows as contours in the slices and as a surface in 3D (the surface
        then follows each update by itself)."""
        outputs = (self.logic.outputTransformNode.GetID(), self.logic.outputSegmentationNode.GetID())
        if outputs == self._shownOutputs:
            return
        for node in (self.nodes["MR points"], self.mrPairPoints):
            node.SetAndObserveTransformNodeID(outputs[0])
        segmentationNode = self.logic.outputSegmentationNode
        segmentationNode.CreateClosedSurfaceRepresentation()
        display = segmentationNode.GetDisplayNode()
        display.SetVisibility2DFill(False)
        display.SetSliceIntersectionThickness(2)
        self._shownOutputs = outputs

    # --- landmark pairs -------------------------------------------------------------------------------------------

    def nextPairLabel(self) -> str:
        """The label the next clicked pair gets: P1, P2, ... (an MR point and a TRUS point share it)."""
        used = {node.GetNthControlPointLabel(n) for node in (self.mrPairPoints, self.trusPairPoints)
                for n in range(node.GetNumberOfControlPoints())}
        number = 1
        while f"P{number}" in used:
            number += 1
        return f"P{number}"

    def pairs(self) -> list[dict]:
        """Placed pairs, ``{"label", "mr", "trus", "error_mm"}``: LPS points (the MR point in MR coordinates) or
        None, and for a complete pair under a registration its residual ``|phi(p_TRUS) - p_MR|`` (else None), from
        ``MetaRegistrationLib.metrics.measure`` like every other number the app shows."""
        mr = conversions.pointsFromMarkups(self.mrPairPoints, world=False)
        trus = conversions.pointsFromMarkups(self.trusPairPoints, world=True)
        labels = sorted(set(mr) | set(trus), key=lambda text: (len(text), text))
        complete = [label for label in labels if label in mr and label in trus]
        residuals = {}
        if complete and self.registered:
            measured = metrics.measure(self.logic.lastTransform, self.case.fixed_image.grid,
                                       fixed_points=np.array([trus[label] for label in complete]),
                                       moving_points=np.array([mr[label] for label in complete]), regularity=False)
            residuals = dict(zip(complete, (float(error) for error in measured.landmark_errors_mm)))
        return [{"label": label, "mr": mr.get(label), "trus": trus.get(label), "error_mm": residuals.get(label)}
                for label in labels]

    def hasNewPair(self) -> bool:
        """Whether a pair is complete (both points placed) and not given to the registration yet."""
        given = set(self.logic.givenLandmarkLabels)
        return any(pair["mr"] is not None and pair["trus"] is not None and pair["label"] not in given
                   for pair in self.pairs())

    # --- read-outs and exports ------------------------------------------------------------------------------------

    def rows(self) -> list[dict]:
        """The evaluation panel's rows: one per registration update (``MetaRegistrationSlicer.logic.SWEEP_COLUMNS``)."""
        return self.logic.sweepRows

    def export(self, what: str, folder: str | Path) -> Path:
        """Write one of :data:`EXPORTS` into ``folder`` (atomically) and return its path."""
        if what not in EXPORTS:
            raise InputError(f"unknown export {what!r}; choose one of {', '.join(EXPORTS)}")
        path = Path(folder) / EXPORTS[what]
        if what == "table":
            return self.logic.saveTableCsv(self.logic.sweepTableNode, path)
        if what == "scene":
            warnings = vtk.vtkObject.GetGlobalWarningDisplay()
            vtk.vtkObject.GlobalWarningDisplayOff()  # the MRB writer reports every file it zips
            try:
                with atomic_path(path) as temporary:
                    if not self.scene.WriteToMRB(str(temporary)):
                        raise InputError(f"{path}: the scene could not be written")
            finally:
                vtk.vtkObject.SetGlobalWarningDisplay(warnings)
            return path
        node = self.logic.outputTransformNode if what == "transform" else self.logic.outputVolumeNode
        if node is None:
            raise InputError(f"nothing to export yet: the first registration comes with the second frame ({what})")
        return self.logic.saveNode(node, path)


def _planesPolyData(frames) -> vtk.vtkPolyData:
    """The frames' rectangles in RAS, one quad each, for the 3D view."""
    points = vtk.vtkPoints()
    cells = vtk.vtkCellArray()
    for frame in frames:
        rows, columns = frame.shape
        corners = np.array([[0, 0, 0], [columns - 1, 0, 0], [columns - 1, rows - 1, 0], [0, rows - 1, 0]], float)
        ras = conversions.lpsToRas(apply_affine(frame.pose, corners))
        cells.InsertNextCell(4)
        for corner in ras:
            cells.InsertCellPoint(points.InsertNextPoint(*corner))
    polyData = vtk.vtkPolyData()
    polyData.SetPoints(points)
    polyData.SetPolys(cells)
    return polyData


def trusViewAxes(grid) -> dict:
    """Slice orientations on the TRUS axes (``MetaRegistrationLib.sweep``: i depth, j the sweep, k the probe), RAS.

    Returns:
        ``{"sagittal": (normal, transverse), "axial": (normal, transverse), "centre": point}``: the sagittal plane
        is the plane of the frames (normal j, probe axis across the view), the axial plane lies across the probe
        axis (normal k); the centre is the TRUS volume's.
    """
    directions = conversions.rasIndexToWorld(grid)[:3, :3]
    unit = directions / np.linalg.norm(directions, axis=0)
    depth, sweep, probe = unit.T
    centre = conversions.lpsToRas(apply_affine(grid.index_to_world, (np.array(grid.size) - 1) / 2))
    return {"sagittal": (sweep, probe), "axial": (probe, sweep), "centre": centre}
