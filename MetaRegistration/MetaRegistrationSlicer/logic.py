"""``MetaRegistrationCoreLogic``: everything the MetaRegistration module does, on any MRML scene, without Qt.

The module's Logic (``MetaRegistration.MetaRegistrationLogic``) is this class
mixed with Slicer's ``ScriptedLoadableModuleLogic``; tests, scripts and the web
app use it directly on a ``slicer-core`` scene. This file holds the session, its
interactions and their output nodes; the evaluation calls come from
:mod:`.evaluation`, table and file writing from :mod:`.tables`, the dependency
check from :mod:`.dependencies`. Every call converts its nodes with
:mod:`.conversions` and hands the work to ``MetaRegistrationLib``: no
registration or metric code lives here.

Console example (3D Slicer's Python console)::

    logic = slicer.util.getModuleLogic("MetaRegistration")
    logic.startSession(mrVolume, mrSegmentation, trusVolume)   # or logic.startSessionUsingParameterNode(p)
    for frame, frameSegmentation in frames:
        report = logic.addFrame(frame, frameSegmentation)   # adapts from the second frame on
        print(report.status)
    logic.addLandmarks(mrFiducials, trusFiducials)          # pairs matched by control point label
    mrVolume.SetAndObserveTransformNodeID(logic.outputTransformNode.GetID())  # overlay the MR on the TRUS
    result = logic.evaluate(mrFiducials, trusFiducials, logic.outputTransformNode, mrSegmentation, trusSegmentation)

Input nodes are never modified; outputs go to new nodes or to the nodes given.
An interaction is all or nothing: when it fails, at any step, the session
(frames, landmark pairs, updates, network and optimiser) and the output nodes
are left as they were, and the error names the node at fault in one line.
Torch and the registration library are imported on first use, not with this
module, so that Slicer can list the module before its dependencies are installed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

import slicer
from MetaRegistrationLib.errors import InputError, MetaRegistrationError

from . import tables
from .live import LiveTrackingMixin
from .evaluation import (  # noqa: F401 - part of this module's API
    EVALUATION_TABLE_NAME,
    SWEEP_COLUMNS,
    SWEEP_TABLE_NAME,
    EvaluationMixin,
    EvaluationReport,
)

OUTPUT_TRANSFORM_NAME = "MR to TRUS (MetaRegistration)"
OUTPUT_VOLUME_NAME = "MR registered to TRUS"
OUTPUT_SEGMENTATION_NAME = "MR segmentation registered to TRUS"
OUTPUT_ATTRIBUTES = ("outputTransformNode", "outputSegmentationNode", "outputVolumeNode")


@dataclass
class InteractionReport:
    """What one interaction did on the scene (a frame, landmark pairs, a start or a reset), for the GUI and the
    console: the library's ``AdaptationResult`` timings plus the time to write the output nodes, and a status line.

    Attributes:
        frames, landmarkPairs, updates: totals in the session after the interaction.
        registered: whether a registration exists (from the second frame on).
        preparationSeconds, updateSeconds, predictSeconds, qualitySeconds: the library's timings
            (initial alignment and inputs; gradient steps; prediction; quality signals).
        quality: the update's quality signals (``MetaRegistrationLib.quality.QualitySignals``), or ``None``
            when the interaction registered nothing.
        outputSeconds: computing and writing the output nodes.
        cancelled: the gradient steps were stopped by :meth:`MetaRegistrationCoreLogic.cancel`.
        status: one line for a status bar.
        unmatchedLabels: landmark labels found in one markups node only.
    """

    frames: int = 0
    landmarkPairs: int = 0
    updates: int = 0
    registered: bool = False
    preparationSeconds: float = 0.0
    updateSeconds: float = 0.0
    predictSeconds: float = 0.0
    qualitySeconds: float = 0.0
    outputSeconds: float = 0.0
    quality: object = None
    cancelled: bool = False
    status: str = ""
    unmatchedLabels: list[str] = field(default_factory=list)

    @property
    def totalSeconds(self) -> float:
        return (self.preparationSeconds + self.updateSeconds + self.predictSeconds + self.qualitySeconds
                + self.outputSeconds)


class PendingInteraction:
    """An interaction read from its nodes and not yet run (see ``MetaRegistrationCoreLogic.prepareFrame``).

    ``adapt()`` runs the library's gradient steps; it reads and writes no MRML node, so a front end may call it in
    a worker thread. It raises nothing: an error is kept (the library has then rolled the session back) and raised
    by ``finishInteraction``, naming the nodes.
    """

    def __init__(self, run: Callable[[], object], description: str, newLandmarkLabels: Sequence[str] = (),
                 unmatchedLabels: Sequence[str] = (), session=None):
        self._run = run
        self.description = description
        self.newLandmarkLabels = list(newLandmarkLabels)
        self.unmatchedLabels = list(unmatchedLabels)
        self.session = session  # the MetaRegistrationLib AdaptationSession it runs on
        self.frame = None  # the MetaRegistrationLib.sweep.Frame of a frame interaction
        self.result = None  # MetaRegistrationLib.adaptation.AdaptationResult, once adapted
        self.error = None
        self.snapshot = None  # the session before adapt(), restored if finishInteraction fails

    def adapt(self) -> None:
        try:
            if self.session is not None:
                self.snapshot = self.session.snapshot()
            self.result = self._run()
        except Exception as error:  # noqa: BLE001 - handed to finishInteraction, on the main thread
            self.error = error


@dataclass
class _SessionInputs:
    """What a session was started from, converted once (the input nodes are not read again)."""

    movingVolumeName: str
    movingImage: object  # MetaRegistrationLib.data.Volume
    movingGland: np.ndarray
    segments: list  # (name, color, mask, grid) of every MR segment, for the warped segmentation
    fixedGrid: object  # MetaRegistrationLib.geometry.Grid
    fixedVolumeName: str
    resampleVolume: bool
    movingVolumeId: str = ""
    fixedVolumeId: str = ""
    shownUnderTransform: tuple = ()  # the MR nodes placed under the output transform at each registration


@dataclass
class _Outputs:
    """The output nodes' new content, computed before any node is touched."""

    gridTransform: object | None  # vtkOrientedGridTransform holding phi, for the transform node
    segments: list | None  # (name, color, mask) on the TRUS grid, for the segmentation node
    volume: np.ndarray | None  # the resampled MR (k, j, i) on the TRUS grid


class _NodeChanges:
    """Undo for the output nodes of one interaction: each node's content before it is written, and the nodes
    created, so that a failure part-way through writing leaves the scene as it was."""

    def __init__(self, scene, logic):
        self._scene = scene
        self._logic = logic
        self._attributes = {name: getattr(logic, name) for name in OUTPUT_ATTRIBUTES}
        self._backups = []
        self._created = []

    def created(self, node):
        self._created.append(node)
        return node

    def existing(self, node):
        backup = type(node)()
        backup.CopyContent(node)
        self._backups.append((node, backup))
        return node

    def undo(self) -> None:
        for node, backup in reversed(self._backups):
            node.CopyContent(backup)
        for node in self._created:
            if node.GetScene() is None:
                continue
            if node.IsA("vtkMRMLDisplayableNode"):  # removing a node leaves its display nodes in the scene
                for display in [node.GetNthDisplayNode(n) for n in range(node.GetNumberOfDisplayNodes())]:
                    if display is not None:
                        self._scene.RemoveNode(display)
            self._scene.RemoveNode(node)
        for name, node in self._attributes.items():
            setattr(self._logic, name, node)


class MetaRegistrationCoreLogic(EvaluationMixin, LiveTrackingMixin):
    """Interactive MR-to-TRUS registration on a MRML scene (see the module docstring for an example).

    Args:
        scene: the scene to create output nodes in; ``slicer.mrmlScene`` if omitted.
    """

    saveTableCsv = staticmethod(tables.saveTableCsv)
    saveNode = staticmethod(tables.saveNode)

    def __init__(self, scene=None):
        self._scene = scene
        self._session = None
        self._inputs: _SessionInputs | None = None
        self._givenLandmarkLabels: list[str] = []
        self._frameNames: list[str] = []  # the node each of the session's frames came from, for messages
        self._framePlanes: list = []  # (pose, shape) of the session's frames, for the live frame selection
        self._cancelRequested = False
        self._initLive()
        self.outputTransformNode = None
        self.outputVolumeNode = None
        self.outputSegmentationNode = None
        self._initEvaluation()
        self.lastTransform = None
        self.reports: list[InteractionReport] = []
        self.statusText = "No session: select the MR, its segmentation and the TRUS volume, then start."

    @property
    def scene(self):
        """The scene given, else ``slicer.mrmlScene``.

        Raises:
            InputError: when there is neither (a headless caller that gave no scene).
        """
        scene = self._scene if self._scene is not None else getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise InputError("no MRML scene: give one to MetaRegistrationCoreLogic(scene) or set slicer.mrmlScene")
        return scene

    @property
    def hasSession(self) -> bool:
        return self._session is not None

    @property
    def givenLandmarkLabels(self) -> list[str]:
        """Labels of the landmark pairs given to the session so far."""
        return list(self._givenLandmarkLabels)

    @staticmethod
    def missingInputs(movingVolume, movingSegmentation, fixedVolume) -> str:
        """What a session still needs, as the Start button's text ("" when nothing is missing)."""
        if movingVolume is None:
            return "Select the MR volume"
        if movingSegmentation is None:
            return "Select the MR prostate segmentation"
        if fixedVolume is None:
            return "Select the TRUS volume"
        return ""

    @staticmethod
    def modelPathOf(path) -> str | None:
        """The model chosen in the GUI, or ``None`` (the bundled model) when the path field is empty."""
        text = str(path or "").strip()
        return None if text in ("", ".") else text

    # --- session ------------------------------------------------------------------------------------------------

    def startSession(self, movingVolume, movingSegmentation, fixedVolume, modelPath: str | None = None,
                     device: str = "cpu", movingSegmentId: str | None = None, outputTransform=None,
                     outputVolume=None, outputSegmentation=None, resampleVolume: bool = False,
                     method: str = "meta", precision: str = "auto", movingLandmarks=None,
                     showUnderTransform: bool = True) -> InteractionReport:
        """Start registering an MR to a TRUS sweep (a session already running is replaced).

        Args:
            movingVolume: the MR scalar volume (read in its own coordinates).
            movingSegmentation: the MR prostate segmentation node (its gland segment: ``movingSegmentId``,
                the only segment, or the one named "prostate" or "gland") or a labelmap volume (voxels > 0).
            fixedVolume: the 3D TRUS volume giving the TRUS geometry (world coordinates); results live on its grid.
            modelPath: a model checkpoint stem (``NAME`` of ``NAME.safetensors`` + ``NAME.json``); the bundled
                meta-learned model (``MetaRegistrationLib.models.BUNDLED_MODEL``) if omitted.
            device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
            precision: the network's arithmetic, ``"auto"`` (bf16 where the hardware has it), ``"fp32"`` or
                ``"bf16"`` (``MetaRegistrationLib.precision``).
            outputTransform, outputVolume, outputSegmentation: nodes to write the results to; new nodes are
                created at the first registration when omitted (the resampled MR only if ``resampleVolume``).
            method: a sweep method of ``MetaRegistrationLib.registration.METHODS`` ("meta", "meta-noadapt",
                "random-init"); the registry builds the session.
            showUnderTransform: at each registration, put the MR volume, its segmentation and ``movingLandmarks``
                (the MR fiducials, if given) under the output transform, so Slicer shows them on the TRUS without
                resampling (as SlicerElastix does); they are read in their own coordinates, so this changes
                nothing the registration sees. The resampled MR (``resampleVolume``) is then only for export.

        Raises:
            MetaRegistrationLib.errors.MetaRegistrationError: with a one-line message naming the node at fault
                (or the scene, the method, the model); the running session, if any, is then unchanged.
        """
        from MetaRegistrationLib.data import Geometry, Volume, check_training_domain
        from MetaRegistrationLib.models import resolve_model, training_domain
        from MetaRegistrationLib.registration import get_method

        from . import conversions

        self.scene  # noqa: B018 - a logic without a scene fails now, not at the first registration
        self._refuseWhileLive()
        registered = get_method(method)
        for output in (outputTransform, outputVolume, outputSegmentation):
            if output is not None and output in (movingVolume, movingSegmentation, fixedVolume):
                raise InputError(f"{conversions.nodeName(output)}: is an input; choose another output node")
        if movingVolume is None:
            raise InputError("no MR volume selected")
        if fixedVolume is None:
            raise InputError("no TRUS volume selected: it gives the geometry that frames are placed in")
        if movingSegmentation is None:
            raise InputError(f"{conversions.nodeName(movingVolume)}: no prostate segmentation of this MR selected")
        movingImage = conversions.volumeFromNode(movingVolume, world=False)
        movingGland = conversions.glandOnGrid(movingSegmentation, movingImage.grid, movingSegmentId,
                                              role="MR gland")
        fixedGrid = conversions.gridFromVolumeNode(fixedVolume, world=True)
        if min(fixedGrid.size) < 2:
            raise InputError(f"{conversions.nodeName(fixedVolume)}: is a single slice; the TRUS geometry must be 3D")
        segments = self._segmentsOf(movingSegmentation, movingSegmentId, movingGland, movingImage.grid)
        model = resolve_model(modelPath) if registered.uses_model else None
        domainWarnings = check_training_domain(
            movingImage, Geometry(fixedGrid, conversions.nodeName(fixedVolume)),
            training_domain(model.card) if model is not None else None)
        session = registered.start_session(movingImage,
                                           Volume(movingGland[None], movingImage.grid, movingImage.source),
                                           fixedGrid, model=model, device=device, precision=precision)
        # Everything is checked: only now does the new session replace the old one.
        self._session = session
        shown = (movingVolume, movingSegmentation) + ((movingLandmarks,) if movingLandmarks is not None else ())
        self._inputs = _SessionInputs(conversions.nodeName(movingVolume), movingImage, movingGland, segments,
                                      fixedGrid, conversions.nodeName(fixedVolume),
                                      resampleVolume or outputVolume is not None, movingVolume.GetID() or "",
                                      fixedVolume.GetID() or "", shown if showUnderTransform else ())
        # Outputs given now replace those of a previous session, which are otherwise reused.
        if outputTransform is not None:
            self.outputTransformNode = outputTransform
        if outputVolume is not None:
            self.outputVolumeNode = outputVolume
        if outputSegmentation is not None:
            self.outputSegmentationNode = outputSegmentation
        self._givenLandmarkLabels = []
        self._frameNames = []
        self._framePlanes = []
        self._lastLiveStream = None
        self.reports = []
        self.lastTransform = None
        self._sweepTracking = None  # its TRUS gland was read on the previous session's grid
        self._resetSweepTable()
        report = InteractionReport(status=f"Session started: {self._inputs.movingVolumeName} to "
                                          f"{self._inputs.fixedVolumeName} with {registered.name} on "
                                          f"{session.device} ({session.precision}); add tracked frames (the first update needs 2)"
                                          + "".join(f"; warning: {warning}" for warning in domainWarnings))
        self.statusText = report.status
        return report

    def startSessionUsingParameterNode(self, parameterNode) -> InteractionReport:
        """:meth:`startSession` from the module's parameter node (what the Start button does), then
        :meth:`trackSweep` when its ``trackSweep`` is set.

        ``parameterNode`` is a ``MetaRegistrationParameterNode`` or any object with its fields (``movingVolume``,
        ``movingSegmentation``, ``fixedVolume``, ``modelPath``, ``device``, ``outputTransform``, ``outputVolume``,
        ``outputSegmentation``, ``resampleVolume``, ``showUnderTransform``, ``trackSweep``, ``movingLandmarks``,
        ``fixedLandmarks``,
        ``fixedSegmentation``).

        Raises:
            MetaRegistrationLib.errors.MetaRegistrationError: as :meth:`startSession`, and when the sweep is to be
                tracked without both landmark nodes; the running session, if any, is then unchanged.
        """
        from . import conversions

        p = parameterNode
        tracking = None
        if p.trackSweep:
            if not (p.movingLandmarks and p.fixedLandmarks):
                raise InputError("tracking TRE across the sweep needs the MR and the TRUS landmarks: select both "
                                 "or turn tracking off")
            if p.fixedVolume is None:
                raise InputError("no TRUS volume selected: it gives the geometry that frames are placed in")
            # Read before the session starts, so that bad landmarks leave the running session as it was.
            tracking = self._readSweepTracking(p.movingLandmarks, p.fixedLandmarks, p.fixedSegmentation,
                                               conversions.gridFromVolumeNode(p.fixedVolume, world=True))
        report = self.startSession(p.movingVolume, p.movingSegmentation, p.fixedVolume,
                                   modelPath=self.modelPathOf(p.modelPath), device=p.device,
                                   outputTransform=p.outputTransform, outputVolume=p.outputVolume,
                                   outputSegmentation=p.outputSegmentation, resampleVolume=p.resampleVolume,
                                   movingLandmarks=p.movingLandmarks, showUnderTransform=p.showUnderTransform)
        if tracking is not None:
            self._startSweepTracking(tracking)
        return report

    def endSession(self) -> None:
        """Forget the session and the output nodes (e.g. when the scene closes); input and output nodes stay."""
        self.stopLiveTracking(apply=False)
        self._lastLiveStream = None
        self._session = None
        self._inputs = None
        self._sweepTracking = None
        self._frameNames = []
        self._framePlanes = []
        self.outputTransformNode = self.outputVolumeNode = self.outputSegmentationNode = None
        self.sweepTableNode = self.sweepPlotChartNode = self.evaluationTableNode = None
        self.lastTransform = None
        self.reports = []
        self.statusText = "No session"

    def _segmentsOf(self, movingSegmentation, movingSegmentId, movingGland, movingGrid) -> list:
        """Every non-empty MR segment (the gland first) as (name, color, mask, grid), for the warped segmentation."""
        from . import conversions

        if not movingSegmentation.IsA("vtkMRMLSegmentationNode"):
            return [("gland", (0.9, 0.5, 0.2), movingGland, movingGrid)]
        segmentation = movingSegmentation.GetSegmentation()
        glandId = conversions.segmentIdOf(movingSegmentation, movingSegmentId)
        ids = [glandId] + [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())
                           if segmentation.GetNthSegmentID(n) != glandId]
        segments = []
        for segmentId in ids:
            mask, grid, _ = conversions.labelFromNode(movingSegmentation, segmentId)
            if mask.any():
                segment = segmentation.GetSegment(segmentId)
                segments.append((segment.GetName(), tuple(segment.GetColor()), mask.astype(np.float32), grid))
        return segments

    def _requireSession(self):
        if self._session is None:
            raise InputError("no registration session: start one with the MR, its segmentation and the TRUS volume")
        return self._session

    # --- interactions -------------------------------------------------------------------------------------------

    def addFrame(self, frameVolume, frameSegmentation, segmentId: str | None = None) -> InteractionReport:
        """Add one tracked TRUS frame and its gland segmentation; from the second frame on, adapt the network and
        refresh the outputs.

        Args:
            frameVolume: a single-slice scalar volume whose IJK-to-RAS (and any linear parent transform) places it
                in the TRUS world.
            frameSegmentation: its gland: a segmentation node or labelmap volume, on the frame's plane or 3D.

        Raises:
            MetaRegistrationLib.errors.MetaRegistrationError: naming the node (a 3D volume, an empty gland, NaN
                values, a frame outside the TRUS volume, a plane already acquired); the session is then unchanged.
        """
        return self.runInteraction(self.prepareFrame(frameVolume, frameSegmentation, segmentId))

    # An interaction in three steps, so that a front end can keep its event loop free while the network adapts:
    # ``prepare*`` reads the nodes (main thread), ``PendingInteraction.adapt()`` touches no node and may run in a
    # worker thread, ``finishInteraction`` writes the outputs (main thread). ``runInteraction`` does all three.
    # One interaction at a time: a failed finishInteraction restores the session to before its adapt().

    def prepareFrame(self, frameVolume, frameSegmentation, segmentId: str | None = None) -> PendingInteraction:
        """Read a frame's nodes for :meth:`addFrame` (the checks that need no network happen here)."""
        from . import conversions

        self._requireSession()
        self._refuseWhileLive()
        return self.prepareLibraryFrame(conversions.frameFromNodes(frameVolume, frameSegmentation, segmentId),
                                        conversions.nodeName(frameVolume))

    def prepareLibraryFrame(self, frame, description: str) -> PendingInteraction:
        """An interaction adding a library ``Frame`` (already read from its nodes) named ``description``."""
        session = self._requireSession()
        pending = PendingInteraction(lambda: session.add_frames([frame]), description, session=session)
        pending.frame = frame
        return pending

    def runInteraction(self, pending: PendingInteraction) -> InteractionReport:
        """Adapt and write the outputs of a prepared interaction, in the calling thread."""
        pending.adapt()
        return self.finishInteraction(pending)

    def finishInteraction(self, pending: PendingInteraction) -> InteractionReport:
        """Write the outputs of an adapted interaction (main thread) and report it.

        Raises:
            MetaRegistrationLib.errors.MetaRegistrationError: the adaptation's error, naming the node(s) at fault.
            Any error of the adaptation or of writing the outputs leaves the session and the output nodes as they
            were before the interaction.
        """
        if pending.error is not None:
            raise self._namedError(pending) from None
        if pending.result is None:
            raise RuntimeError("finishInteraction() before the interaction's adapt()")
        if pending.session is not self._session or pending.result.frames != self._session.frame_count:
            # A reset or a new session came in between (the session the result belongs to is gone): drop it.
            raise InputError(f"{pending.description}: the session was reset or restarted while this interaction "
                             "ran; it was not applied")
        try:
            return self._commit(pending)
        except BaseException:
            if pending.session is not None and pending.snapshot is not None:
                pending.session.restore(pending.snapshot)
            raise

    def _namedError(self, pending: PendingInteraction) -> BaseException:
        """The error of an interaction, its message starting with the node(s) the user gave."""
        from MetaRegistrationLib.adaptation import FrameError

        error = pending.error
        if isinstance(error, FrameError):
            message = f"{pending.description}: {error.problem}"
            if error.acquired is not None and error.acquired <= len(self._frameNames):
                message += f" (the plane of {self._frameNames[error.acquired - 1]})"
            return InputError(message)
        if isinstance(error, MetaRegistrationError):
            return type(error)(f"{pending.description}: {error}")
        return error

    def _commit(self, pending: PendingInteraction) -> InteractionReport:
        """Compute every output, then write the nodes (undone if writing fails), then update this Logic."""
        result = pending.result
        start = time.perf_counter()
        outputs = self._computeOutputs(result.transform, create=True) if result.transform is not None else None
        computeSeconds = time.perf_counter() - start
        sweepMetrics = self._sweepMetrics(result.transform) if result.transform is not None else None
        report = InteractionReport(
            frames=result.frames, landmarkPairs=len(self._givenLandmarkLabels) + len(pending.newLandmarkLabels),
            updates=result.updates, registered=result.transform is not None,
            preparationSeconds=result.preparation_seconds, updateSeconds=sum(result.update_seconds),
            predictSeconds=result.predict_seconds, qualitySeconds=result.quality_seconds, quality=result.quality,
            cancelled=result.cancelled, unmatchedLabels=list(pending.unmatchedLabels))
        changes = _NodeChanges(self.scene, self)
        sweepRows = None
        try:
            if outputs is not None:
                start = time.perf_counter()
                self._writeOutputs(outputs, create=True, changes=changes)
                report.outputSeconds = computeSeconds + time.perf_counter() - start
            if sweepMetrics is not None:
                sweepRows = self._sweepRowsWith(report, sweepMetrics)
                if self.sweepTableNode is None or self.sweepTableNode.GetScene() is None:
                    self.sweepTableNode = changes.created(
                        self.scene.AddNewNodeByClass("vtkMRMLTableNode", SWEEP_TABLE_NAME))
                else:
                    changes.existing(self.sweepTableNode)
                tables.fillTable(self.sweepTableNode, SWEEP_COLUMNS, sweepRows)
        except BaseException:
            changes.undo()
            raise
        # Nothing can fail from here on.
        self._givenLandmarkLabels += pending.newLandmarkLabels
        if pending.frame is not None:
            self._frameNames.append(pending.description)
            self._framePlanes.append((pending.frame.pose, pending.frame.shape))
        if result.transform is not None:
            self.lastTransform = result.transform
            self._showUnderOutputTransform()
        if sweepRows is not None:
            self._sweepRows = sweepRows
        report.status = result.status[:1].upper() + result.status[1:]
        if report.registered:
            report.status += f"; {report.totalSeconds:.2f} s"
        if pending.unmatchedLabels:
            report.status += f"; unmatched landmark labels left out: {', '.join(pending.unmatchedLabels)}"
        self.reports.append(report)
        self.statusText = report.status
        return report

    def addFrames(self, frames: Iterable, progress: Callable[[int, str], None] | None = None) -> list[InteractionReport]:
        """Add frames one at a time, as a sweep acquires them: ``frames`` yields ``(frameVolume, frameSegmentation)``.

        ``progress(index, status)`` is called after each frame; :meth:`cancel` stops before the next one.
        A bad frame stops the loop with its error; the frames before it stay in the session.
        """
        self._requireSession()
        self._cancelRequested = False
        reports = []
        for index, (frameVolume, frameSegmentation) in enumerate(frames):
            if self._cancelRequested:
                break
            reports.append(self.addFrame(frameVolume, frameSegmentation))
            if progress is not None:
                progress(index, reports[-1].status)
        return reports

    def addLandmarks(self, movingLandmarks, fixedLandmarks) -> InteractionReport:
        """Add the landmark pairs (MR point, TRUS point) matched by control point label that were not given yet,
        as one interaction. Labels in one node only are reported in the result, not used.

        Raises:
            MetaRegistrationLib.errors.MetaRegistrationError: naming the nodes when no label matches, every
                matched pair was given before, or a point is not finite; the session is then unchanged.
        """
        return self.runInteraction(self.prepareLandmarks(movingLandmarks, fixedLandmarks))

    def prepareLandmarks(self, movingLandmarks, fixedLandmarks) -> PendingInteraction:
        """Read the landmark pairs of :meth:`addLandmarks` (MR points in the MR's own coordinates, TRUS in world)."""
        from . import conversions

        session = self._requireSession()
        self._refuseWhileLive()
        labels, moving, fixed, movingOnly, fixedOnly = conversions.matchLandmarks(movingLandmarks, fixedLandmarks)
        new = [n for n, label in enumerate(labels) if label not in self._givenLandmarkLabels]
        if not new:
            raise InputError(f"{conversions.nodeName(movingLandmarks)} and {conversions.nodeName(fixedLandmarks)}: "
                             f"no new landmark pair (already given: {', '.join(labels)})")
        movingNew, fixedNew = moving[new], fixed[new]
        description = (f"{conversions.nodeName(movingLandmarks)} / {conversions.nodeName(fixedLandmarks)} "
                       f"(new pairs: {', '.join(labels[n] for n in new)})")
        unmatched = [f"{label} (MR only)" for label in movingOnly] + [f"{label} (TRUS only)" for label in fixedOnly]
        return PendingInteraction(lambda: session.add_landmarks(movingNew, fixedNew), description,
                                  [labels[n] for n in new], unmatched, session=session)

    def reset(self) -> InteractionReport:
        """Forget every frame and landmark pair; the outputs return to the identity (no registration)."""
        from MetaRegistrationLib.geometry import Transform

        session = self._requireSession()
        self._refuseWhileLive()
        start = time.perf_counter()
        outputs = self._computeOutputs(Transform(np.eye(4)), create=False)
        state = session.snapshot()
        changes = _NodeChanges(self.scene, self)
        try:
            session.reset()
            self._writeOutputs(outputs, create=False, changes=changes)
            if self.sweepTableNode is not None:
                tables.fillTable(changes.existing(self.sweepTableNode), SWEEP_COLUMNS, [])
        except BaseException:
            changes.undo()
            session.restore(state)
            raise
        self._sweepRows = []
        self._givenLandmarkLabels = []
        self._frameNames = []
        self._framePlanes = []
        self._lastLiveStream = None
        self.reports = []
        self.lastTransform = None
        report = InteractionReport(outputSeconds=time.perf_counter() - start,
                                   status="Reset: 0 frames; outputs show no registration")
        self.statusText = report.status
        return report

    def cancel(self) -> None:
        """Stop a running interaction after its current gradient step, and a frame loop before its next frame."""
        self._cancelRequested = True
        if self._session is not None:
            self._session.cancel()

    # --- outputs ------------------------------------------------------------------------------------------------

    def _showUnderOutputTransform(self) -> None:
        """Record the inputs on the output transform (node references ``movingVolume`` and ``fixedVolume``, as a
        registration module's result names what it registered) and put the MR nodes chosen at the start under it."""
        transform = self._liveOutput("outputTransformNode")
        if transform is None:
            return
        for role, nodeId in (("movingVolume", self._inputs.movingVolumeId), ("fixedVolume", self._inputs.fixedVolumeId)):
            if nodeId and transform.GetNodeReferenceID(role) != nodeId:
                transform.SetNodeReferenceID(role, nodeId)
        for node in self._inputs.shownUnderTransform:
            if node.GetScene() is not None and node.GetTransformNodeID() != transform.GetID():
                node.SetAndObserveTransformNodeID(transform.GetID())

    def _liveOutput(self, name: str):
        """An output node, or ``None`` when there is none or the user deleted it (it is then replaced, not written
        to unseen)."""
        node = getattr(self, name)
        return node if node is not None and node.GetScene() is not None else None

    def _computeOutputs(self, transform, create: bool) -> _Outputs:
        """The new content of the output nodes that :meth:`_writeOutputs` will write (reads and writes no node)."""
        from MetaRegistrationLib.geometry import resample

        from . import conversions

        inputs = self._inputs
        grid = inputs.fixedGrid
        gridTransform = segments = volume = None
        if create or self._liveOutput("outputTransformNode") is not None:
            gridTransform = conversions.gridTransformFrom(transform, grid)
        if create or self._liveOutput("outputSegmentationNode") is not None:
            segments = [(name, color, resample(mask, maskGrid, transform, grid) > 0.5)
                        for name, color, mask, maskGrid in inputs.segments]
        if inputs.resampleVolume and (create or self._liveOutput("outputVolumeNode") is not None):
            image = inputs.movingImage
            volume = resample(image.array[0], image.grid, transform, grid)
        return _Outputs(gridTransform, segments, volume)

    def _writeOutputs(self, outputs: _Outputs, create: bool, changes: _NodeChanges) -> None:
        """Write ``phi`` to the output transform, the warped MR segments and (if asked) the resampled MR, creating
        missing nodes only if ``create``; ``changes`` records what to undo."""
        from . import conversions

        grid = self._inputs.fixedGrid
        scene = self.scene
        for name in OUTPUT_ATTRIBUTES:
            setattr(self, name, self._liveOutput(name))
        if outputs.gridTransform is not None:
            if self.outputTransformNode is None and create:
                self.outputTransformNode = changes.created(
                    scene.AddNewNodeByClass("vtkMRMLGridTransformNode", OUTPUT_TRANSFORM_NAME))
            elif self.outputTransformNode is not None:
                changes.existing(self.outputTransformNode)
            if self.outputTransformNode is not None:
                self.outputTransformNode.SetAndObserveTransformFromParent(outputs.gridTransform)
        if outputs.segments is not None:
            if self.outputSegmentationNode is None and create:
                self.outputSegmentationNode = changes.created(
                    scene.AddNewNodeByClass("vtkMRMLSegmentationNode", OUTPUT_SEGMENTATION_NAME))
                self.outputSegmentationNode.CreateDefaultDisplayNodes()
            elif self.outputSegmentationNode is not None:
                changes.existing(self.outputSegmentationNode)
            if self.outputSegmentationNode is not None:
                wasModifying = self.outputSegmentationNode.StartModify()
                try:
                    for name, color, mask in outputs.segments:
                        conversions.segmentationFromMask(self.outputSegmentationNode, mask, grid, name, color)
                finally:
                    self.outputSegmentationNode.EndModify(wasModifying)
        if outputs.volume is not None:
            if self.outputVolumeNode is None and create:
                self.outputVolumeNode = changes.created(
                    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", OUTPUT_VOLUME_NAME))
                self.outputVolumeNode.CreateDefaultDisplayNodes()
            elif self.outputVolumeNode is not None:
                changes.existing(self.outputVolumeNode)
            if self.outputVolumeNode is not None:
                conversions.updateVolumeNode(self.outputVolumeNode, outputs.volume, grid)
