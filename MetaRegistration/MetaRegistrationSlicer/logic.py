"""``MetaRegistrationCoreLogic``: everything the MetaRegistration module does, on any MRML scene, without Qt.

The module's Logic (``MetaRegistration.MetaRegistrationLogic``) is this class
mixed with Slicer's ``ScriptedLoadableModuleLogic``; tests and scripts use it
directly on a ``slicer-core`` scene. Every call converts its nodes with
:mod:`.conversions` and hands the work to ``MetaRegistrationLib``: this class
holds no registration code of its own.

Console example (3D Slicer's Python console)::

    logic = slicer.util.getModuleLogic("MetaRegistration")
    logic.startSession(mrVolume, mrSegmentation, trusVolume)
    for frame, frameSegmentation in frames:
        report = logic.addFrame(frame, frameSegmentation)   # adapts from the second frame on
        print(report.status)
    logic.addLandmarks(mrFiducials, trusFiducials)          # pairs matched by control point label
    mrVolume.SetAndObserveTransformNodeID(logic.outputTransformNode.GetID())  # overlay the MR on the TRUS
    result = logic.evaluate(mrFiducials, trusFiducials, logic.outputTransformNode, mrSegmentation, trusSegmentation)

Input nodes are never modified; outputs go to new nodes or to the nodes given.
Torch and the library are imported on first use, not with this module, so that
Slicer can list the module before its dependencies are installed.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import slicer

OUTPUT_TRANSFORM_NAME = "MR to TRUS (MetaRegistration)"
OUTPUT_VOLUME_NAME = "MR registered to TRUS"
OUTPUT_SEGMENTATION_NAME = "MR segmentation registered to TRUS"
EVALUATION_TABLE_NAME = "MetaRegistration evaluation"
SWEEP_TABLE_NAME = "MetaRegistration sweep"
SWEEP_COLUMNS = ("frames", "updates", "landmark_pairs", "tre_mm", "dsc", "seconds")


@dataclass
class InteractionReport:
    """What one interaction did on the scene (a frame, landmark pairs, a start or a reset), for the GUI and the
    console: the library's ``AdaptationResult`` timings plus the time to write the output nodes, and a status line.

    Attributes:
        frames, landmarkPairs, updates: totals in the session after the interaction.
        registered: whether a registration exists (from the second frame on).
        preparationSeconds, updateSeconds, predictSeconds: the library's timings
            (initial alignment and inputs; gradient steps; prediction).
        outputSeconds: writing the output nodes.
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
    outputSeconds: float = 0.0
    cancelled: bool = False
    status: str = ""
    unmatchedLabels: list[str] = field(default_factory=list)

    @property
    def totalSeconds(self) -> float:
        return self.preparationSeconds + self.updateSeconds + self.predictSeconds + self.outputSeconds


@dataclass
class EvaluationReport:
    """Accuracy of one transform, as the evaluation panel shows it (definitions: ``MetaRegistrationLib.metrics``).

    Attributes:
        labels: landmark labels found in both markups nodes, with ``pointErrorsMm`` their
            errors ``|phi(p_TRUS) - p_MR|``.
        treMm: RMS of the point errors. dsc: warped MR gland vs TRUS gland.
        foldPercent: % of TRUS voxels where ``phi`` folds. hd95Mm: 95th percentile Hausdorff distance.
        movingOnlyLabels, fixedOnlyLabels: labels without a partner, left out.
    """

    labels: list[str]
    pointErrorsMm: list[float]
    treMm: float
    dsc: float
    foldPercent: float
    hd95Mm: float
    movingOnlyLabels: list[str] = field(default_factory=list)
    fixedOnlyLabels: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        text = (f"TRE {self.treMm:.2f} mm over {len(self.labels)} landmark pairs, DSC {self.dsc:.3f}, "
                f"folding {self.foldPercent:.2f} %")
        unmatched = [f"MR only: {', '.join(self.movingOnlyLabels)}"] if self.movingOnlyLabels else []
        unmatched += [f"TRUS only: {', '.join(self.fixedOnlyLabels)}"] if self.fixedOnlyLabels else []
        return text + (f" (unmatched labels left out; {'; '.join(unmatched)})" if unmatched else "")


class PendingInteraction:
    """An interaction read from its nodes and not yet run (see ``MetaRegistrationCoreLogic.prepareFrame``).

    ``adapt()`` runs the library's gradient steps; it reads and writes no MRML node, so a front end may call it in
    a worker thread. An input error is kept and raised, naming the nodes, by ``finishInteraction``.
    """

    def __init__(self, run: Callable[[], object], description: str, newLandmarkLabels: Sequence[str] = (),
                 unmatchedLabels: Sequence[str] = ()):
        self._run = run
        self.description = description
        self.newLandmarkLabels = list(newLandmarkLabels)
        self.unmatchedLabels = list(unmatchedLabels)
        self.frame = None  # the MetaRegistrationLib.sweep.Frame of a frame interaction
        self.result = None  # MetaRegistrationLib.adaptation.AdaptationResult, once adapted
        self.error = None

    def adapt(self) -> None:
        from MetaRegistrationLib.errors import InputError

        try:
            self.result = self._run()
        except InputError as error:
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


class MetaRegistrationCoreLogic:
    """Interactive MR-to-TRUS registration on a MRML scene (see the module docstring for an example).

    Args:
        scene: the scene to create output nodes in; ``slicer.mrmlScene`` if omitted.
    """

    def __init__(self, scene=None):
        self._scene = scene
        self._session = None
        self._inputs: _SessionInputs | None = None
        self._givenLandmarkLabels: list[str] = []
        self._sweepTracking = None
        self._cancelRequested = False
        self.outputTransformNode = None
        self.outputVolumeNode = None
        self.outputSegmentationNode = None
        self.sweepTableNode = None
        self.sweepPlotChartNode = None
        self.evaluationTableNode = None
        self._sweepRows: list[tuple] = []
        self.lastTransform = None
        self.reports: list[InteractionReport] = []
        self.statusText = "No session: select the MR, its segmentation and the TRUS volume, then start."

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    @property
    def hasSession(self) -> bool:
        return self._session is not None

    @property
    def givenLandmarkLabels(self) -> list[str]:
        """Labels of the landmark pairs given to the session so far."""
        return list(self._givenLandmarkLabels)

    @property
    def sweepRows(self) -> list[dict]:
        """The rows of :attr:`sweepTableNode` (one per update since :meth:`trackSweep`), keyed by ``SWEEP_COLUMNS``."""
        return [dict(zip(SWEEP_COLUMNS, row)) for row in self._sweepRows]

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

    # --- session ------------------------------------------------------------------------------------------------

    def startSession(self, movingVolume, movingSegmentation, fixedVolume, modelPath: str | None = None,
                     device: str = "cpu", movingSegmentId: str | None = None, outputTransform=None,
                     outputVolume=None, outputSegmentation=None, resampleVolume: bool = False) -> InteractionReport:
        """Start registering an MR to a TRUS sweep (a session already running is replaced).

        Args:
            movingVolume: the MR scalar volume (read in its own coordinates).
            movingSegmentation: the MR prostate segmentation node (its gland segment: ``movingSegmentId``,
                the only segment, or the one named "prostate" or "gland") or a labelmap volume (voxels > 0).
            fixedVolume: the 3D TRUS volume giving the TRUS geometry (world coordinates); results live on its grid.
            modelPath: a model checkpoint stem (``NAME`` of ``NAME.safetensors`` + ``NAME.json``); the bundled
                meta-learned model (``MetaRegistrationLib.models.BUNDLED_MODEL``) if omitted.
            device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
            outputTransform, outputVolume, outputSegmentation: nodes to write the results to; new nodes are
                created at the first registration when omitted (the resampled MR only if ``resampleVolume``).

        Raises:
            MetaRegistrationLib.errors.MetaRegistrationError: with a one-line message naming the node at fault;
                the running session, if any, is then unchanged.
        """
        from MetaRegistrationLib.adaptation import AdaptationSession
        from MetaRegistrationLib.data import Volume
        from MetaRegistrationLib.errors import InputError
        from MetaRegistrationLib.models import load_model

        from . import conversions

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
        network, settings, _ = load_model(modelPath)
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        session = AdaptationSession(network, movingImage,
                                    Volume(movingGland[None], movingImage.grid, movingImage.source),
                                    fixedGrid, settings=settings, device=device)
        # Everything is checked: only now does the new session replace the old one.
        self._session = session
        self._inputs = _SessionInputs(conversions.nodeName(movingVolume), movingImage, movingGland, segments,
                                      fixedGrid, conversions.nodeName(fixedVolume),
                                      resampleVolume or outputVolume is not None)
        # Outputs given now replace those of a previous session, which are otherwise reused.
        if outputTransform is not None:
            self.outputTransformNode = outputTransform
        if outputVolume is not None:
            self.outputVolumeNode = outputVolume
        if outputSegmentation is not None:
            self.outputSegmentationNode = outputSegmentation
        self._givenLandmarkLabels = []
        self.reports = []
        self.lastTransform = None
        self._sweepTracking = None  # its TRUS gland was read on the previous session's grid
        self._resetSweepTable()
        report = InteractionReport(status=f"Session started: {self._inputs.movingVolumeName} to "
                                     f"{self._inputs.fixedVolumeName} on {device}; add tracked frames "
                                     "(the first update needs 2)")
        self.statusText = report.status
        return report

    def endSession(self) -> None:
        """Forget the session and the output nodes (e.g. when the scene closes); input and output nodes stay."""
        self._session = None
        self._inputs = None
        self._sweepTracking = None
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
        from MetaRegistrationLib.errors import InputError

        if self._session is None:
            raise InputError("no registration session: start one with the MR, its segmentation and the TRUS volume")
        return self._session

    def addFrame(self, frameVolume, frameSegmentation, segmentId: str | None = None) -> InteractionReport:
        """Add one tracked TRUS frame and its gland segmentation; from the second frame on, adapt the network and
        refresh the outputs.

        Args:
            frameVolume: a single-slice scalar volume whose IJK-to-RAS (and any linear parent transform) places it
                in the TRUS world.
            frameSegmentation: its gland: a segmentation node or labelmap volume, on the frame's plane or 3D.

        Raises:
            MetaRegistrationLib.errors.MetaRegistrationError: naming the node (a 3D volume, an empty gland, a frame
                outside the TRUS volume, a plane already acquired); the session is then unchanged.
        """
        return self.runInteraction(self.prepareFrame(frameVolume, frameSegmentation, segmentId))

    # An interaction in three steps, so that a front end can keep its event loop free while the network adapts:
    # ``prepare*`` reads the nodes (main thread), ``PendingInteraction.adapt()`` touches no node and may run in a
    # worker thread, ``finishInteraction`` writes the outputs (main thread). ``runInteraction`` does all three.

    def prepareFrame(self, frameVolume, frameSegmentation, segmentId: str | None = None) -> PendingInteraction:
        """Read a frame's nodes for :meth:`addFrame` (the checks that need no network happen here)."""
        from . import conversions

        session = self._requireSession()
        frame = conversions.frameFromNodes(frameVolume, frameSegmentation, segmentId)
        pending = PendingInteraction(lambda: session.add_frames([frame]), conversions.nodeName(frameVolume))
        pending.frame = frame
        return pending

    def runInteraction(self, pending: PendingInteraction) -> InteractionReport:
        """Adapt and write the outputs of a prepared interaction, in the calling thread."""
        pending.adapt()
        return self.finishInteraction(pending)

    def finishInteraction(self, pending: PendingInteraction) -> InteractionReport:
        """Write the outputs of an adapted interaction (main thread) and report it.

        Raises:
            MetaRegistrationLib.errors.MetaRegistrationError: the adaptation's error, naming the node(s) at fault;
                the session is then unchanged.
        """
        from MetaRegistrationLib.errors import InputError

        if pending.error is not None:
            raise InputError(f"{pending.description}: {pending.error}") from None
        if pending.result is None:
            raise RuntimeError("finishInteraction() before the interaction's adapt()")
        self._givenLandmarkLabels += pending.newLandmarkLabels
        return self._afterInteraction(pending.result, pending.unmatchedLabels)

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

    def addFrameSequence(self, frameSequence, segmentationSequence,
                         progress: Callable[[int, str], None] | None = None) -> list[InteractionReport]:
        """Add the frames of a sequence node, in order, each with the item of ``segmentationSequence`` at the same
        index value (a sequence of segmentation or labelmap nodes)."""
        from MetaRegistrationLib.errors import InputError

        from . import conversions

        for sequence, what in ((frameSequence, "frame"), (segmentationSequence, "segmentation")):
            if sequence is None or not sequence.IsA("vtkMRMLSequenceNode"):
                raise InputError(f"no {what} sequence given" if sequence is None else
                                 f"{conversions.nodeName(sequence)}: is not a sequence node")
        pairs = []
        for n in range(frameSequence.GetNumberOfDataNodes()):
            value = frameSequence.GetNthIndexValue(n)
            label = segmentationSequence.GetDataNodeAtValue(value)
            if label is None:
                raise InputError(f"{conversions.nodeName(segmentationSequence)}: has no item at index value "
                                 f"{value!r} for frame {n + 1} of {conversions.nodeName(frameSequence)}")
            pairs.append((frameSequence.GetNthDataNode(n), label))
        return self.addFrames(pairs, progress)

    def addLandmarks(self, movingLandmarks, fixedLandmarks) -> InteractionReport:
        """Add the landmark pairs (MR point, TRUS point) matched by control point label that were not given yet,
        as one interaction. Labels in one node only are reported in the result, not used.

        Raises:
            MetaRegistrationLib.errors.MetaRegistrationError: naming the nodes when no label matches or every
                matched pair was given before; the session is then unchanged.
        """
        return self.runInteraction(self.prepareLandmarks(movingLandmarks, fixedLandmarks))

    def prepareLandmarks(self, movingLandmarks, fixedLandmarks) -> PendingInteraction:
        """Read the landmark pairs of :meth:`addLandmarks` (MR points in the MR's own coordinates, TRUS in world)."""
        from MetaRegistrationLib.errors import InputError

        from . import conversions

        session = self._requireSession()
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
                                  [labels[n] for n in new], unmatched)

    def reset(self) -> InteractionReport:
        """Forget every frame and landmark pair; the outputs return to the identity (no registration)."""
        from MetaRegistrationLib.geometry import Transform

        session = self._requireSession()
        session.reset()
        self._givenLandmarkLabels = []
        self.reports = []
        self.lastTransform = None
        self._resetSweepTable()
        seconds = self._writeOutputs(Transform(np.eye(4)), create=False)
        report = InteractionReport(outputSeconds=seconds, status="Reset: 0 frames; outputs show no registration")
        self.statusText = report.status
        return report

    def cancel(self) -> None:
        """Stop a running interaction after its current gradient step, and a frame loop before its next frame."""
        self._cancelRequested = True
        if self._session is not None:
            self._session.cancel()

    def _afterInteraction(self, result, unmatched: Sequence[str] = ()) -> InteractionReport:
        """Write the outputs of a library ``AdaptationResult`` and report it."""
        outputSeconds = 0.0
        if result.transform is not None:
            self.lastTransform = result.transform
            outputSeconds = self._writeOutputs(result.transform, create=True)
        report = InteractionReport(
            frames=result.frames, landmarkPairs=len(self._givenLandmarkLabels), updates=result.updates,
            registered=result.transform is not None, preparationSeconds=result.preparation_seconds,
            updateSeconds=sum(result.update_seconds), predictSeconds=result.predict_seconds,
            outputSeconds=outputSeconds, cancelled=result.cancelled, unmatchedLabels=list(unmatched))
        report.status = result.status[:1].upper() + result.status[1:]
        if report.registered:
            report.status += f"; {report.totalSeconds:.2f} s"
        if unmatched:
            report.status += f"; unmatched landmark labels left out: {', '.join(unmatched)}"
        self.reports.append(report)
        if result.transform is not None and self._sweepTracking is not None:
            self._appendSweepRow(report)
        self.statusText = report.status
        return report

    # --- outputs ------------------------------------------------------------------------------------------------

    def _writeOutputs(self, transform, create: bool) -> float:
        """Write ``phi`` to the output transform, the warped MR segments and (if asked) the resampled MR; returns
        the seconds taken. Nodes are created when missing only if ``create``."""
        import time

        from MetaRegistrationLib.geometry import resample

        from . import conversions

        start = time.perf_counter()
        inputs = self._inputs
        grid = inputs.fixedGrid
        scene = self.scene
        # An output node the user deleted is replaced, not written to unseen.
        for name in ("outputTransformNode", "outputSegmentationNode", "outputVolumeNode"):
            node = getattr(self, name)
            if node is not None and node.GetScene() is None:
                setattr(self, name, None)
        if self.outputTransformNode is None and create:
            self.outputTransformNode = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", OUTPUT_TRANSFORM_NAME)
        if self.outputTransformNode is not None:
            conversions.setGridTransform(self.outputTransformNode, transform, grid)
        if self.outputSegmentationNode is None and create:
            self.outputSegmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", OUTPUT_SEGMENTATION_NAME)
            self.outputSegmentationNode.CreateDefaultDisplayNodes()
        if self.outputSegmentationNode is not None:
            wasModifying = self.outputSegmentationNode.StartModify()
            for name, color, mask, maskGrid in inputs.segments:
                warped = resample(mask, maskGrid, transform, grid) > 0.5
                conversions.segmentationFromMask(self.outputSegmentationNode, warped, grid, name, color)
            self.outputSegmentationNode.EndModify(wasModifying)
        if inputs.resampleVolume:
            if self.outputVolumeNode is None and create:
                self.outputVolumeNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", OUTPUT_VOLUME_NAME)
                self.outputVolumeNode.CreateDefaultDisplayNodes()
            if self.outputVolumeNode is not None:
                image = inputs.movingImage
                conversions.updateVolumeNode(self.outputVolumeNode, resample(image.array[0], image.grid, transform,
                                                                             grid), grid)
        return time.perf_counter() - start

    # --- evaluation ---------------------------------------------------------------------------------------------

    def evaluate(self, movingLandmarks, fixedLandmarks, transformNode, movingSegmentation, fixedSegmentation,
                 movingVolume=None, fixedVolume=None, tableNode=None, movingSegmentId: str | None = None,
                 fixedSegmentId: str | None = None) -> EvaluationReport:
        """Accuracy of a transform node (as the MR's parent) from landmark pairs matched by label and two glands.

        Args:
            movingLandmarks, fixedLandmarks: MR (own coordinates) and TRUS (world) markups fiducial nodes.
            transformNode: the transform made the MR's parent (e.g. :attr:`outputTransformNode`).
            movingSegmentation, fixedSegmentation: MR and TRUS gland (segmentation or labelmap nodes).
            movingVolume, fixedVolume: reference geometries of the glands; by default the session's MR and TRUS,
                or else each segmentation's own geometry. DSC and folding are computed on the TRUS grid.
            tableNode: table to fill (a new one if omitted, kept in :attr:`evaluationTableNode`).

        Raises:
            MetaRegistrationLib.errors.MetaRegistrationError: naming the node at fault.
        """
        from MetaRegistrationLib.data import Case, Volume
        from MetaRegistrationLib.metrics import evaluate_transform, point_errors, rms

        from . import conversions

        labels, moving, fixed, movingOnly, fixedOnly = conversions.matchLandmarks(movingLandmarks, fixedLandmarks)
        movingGrid = self._referenceGrid(movingVolume, movingSegmentation, movingSegmentId, world=False)
        fixedGrid = self._referenceGrid(fixedVolume, fixedSegmentation, fixedSegmentId, world=True)
        movingGland = conversions.glandOnGrid(movingSegmentation, movingGrid, movingSegmentId, world=False,
                                              role="MR gland")
        fixedGland = conversions.glandOnGrid(fixedSegmentation, fixedGrid, fixedSegmentId, world=True,
                                             role="TRUS gland")
        transform = conversions.transformFromNode(transformNode, fixedGrid)
        movingLabels = Volume(movingGland[None], movingGrid, conversions.nodeName(movingSegmentation))
        fixedLabels = Volume(fixedGland[None], fixedGrid, conversions.nodeName(fixedSegmentation))
        metrics = evaluate_transform(Case("slicer", movingLabels, movingLabels, fixedLabels, fixedLabels), transform)
        errors = point_errors(transform, fixed, moving)
        report = EvaluationReport(labels, [float(e) for e in errors], rms(errors), metrics.dsc, metrics.fold_pct,
                                  metrics.hd95_mm, movingOnly, fixedOnly)
        if tableNode is None:
            tableNode = self.scene.AddNewNodeByClass("vtkMRMLTableNode", EVALUATION_TABLE_NAME)
        self.evaluationTableNode = tableNode
        rows = [(f"landmark {label} error", error, "mm") for label, error in zip(labels, report.pointErrorsMm)]
        rows += [("RMS TRE", report.treMm, "mm"), ("gland DSC", report.dsc, ""),
                 ("folding", report.foldPercent, "%"), ("gland HD95", report.hd95Mm, "mm")]
        _fillTable(tableNode, ("measure", "value", "unit"), rows)
        tableNode.SetAttribute("MetaRegistration.UnmatchedLabels",
                               ", ".join([f"{label} (MR only)" for label in movingOnly]
                                         + [f"{label} (TRUS only)" for label in fixedOnly]))
        self.statusText = report.status
        return report

    def _referenceGrid(self, volumeNode, labelNode, segmentId, world: bool):
        """The grid a gland is evaluated on: the volume given, the session's, or the label's own."""
        from . import conversions

        if volumeNode is not None:
            return conversions.gridFromVolumeNode(volumeNode, world=world)
        if self._inputs is not None:
            return self._inputs.fixedGrid if world else self._inputs.movingImage.grid
        return conversions.labelFromNode(labelNode, segmentId, world=world)[1]

    def trackSweep(self, movingLandmarks, fixedLandmarks, fixedSegmentation=None, tableNode=None) -> None:
        """Measure TRE (and DSC when the TRUS gland is given) after every update of the session, into a table
        (:attr:`sweepTableNode`, columns ``SWEEP_COLUMNS``) plotted as TRE per frame (:attr:`sweepPlotChartNode`).

        The landmarks and the gland are read now; they are not given to the registration.
        """
        from . import conversions

        self._requireSession()
        labels, moving, fixed, _, _ = conversions.matchLandmarks(movingLandmarks, fixedLandmarks)
        fixedGland = None
        if fixedSegmentation is not None:
            fixedGland = conversions.glandOnGrid(fixedSegmentation, self._inputs.fixedGrid, world=True,
                                                 role="TRUS gland")
        self._sweepTracking = (moving, fixed, fixedGland)
        scene = self.scene
        if tableNode is not None:
            self.sweepTableNode = tableNode
        elif self.sweepTableNode is None or self.sweepTableNode.GetScene() is None:
            self.sweepTableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", SWEEP_TABLE_NAME)
        self._resetSweepTable()
        if self.sweepPlotChartNode is None or self.sweepPlotChartNode.GetScene() is None:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", "TRE per frame")
            series.SetXColumnName("frames")
            series.SetYColumnName("tre_mm")
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "TRE across the sweep")
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
            chart.SetXAxisTitle("frames acquired")
            chart.SetYAxisTitle("RMS TRE (mm)")
            self.sweepPlotChartNode = chart
        self.sweepPlotChartNode.GetNthPlotSeriesNode(0).SetAndObserveTableNodeID(self.sweepTableNode.GetID())

    def _resetSweepTable(self) -> None:
        self._sweepRows = []
        if self.sweepTableNode is not None:
            _fillTable(self.sweepTableNode, SWEEP_COLUMNS, [])

    def _appendSweepRow(self, report: InteractionReport) -> None:
        from MetaRegistrationLib.geometry import resample
        from MetaRegistrationLib.metrics import dice, point_errors, rms

        moving, fixed, fixedGland = self._sweepTracking
        transform = self.lastTransform
        dsc = float("nan")
        if fixedGland is not None:
            inputs = self._inputs
            warped = resample(inputs.movingGland, inputs.movingImage.grid, transform, inputs.fixedGrid) > 0.5
            dsc = dice(warped, fixedGland > 0.5)
        self._sweepRows.append((report.frames, report.updates, report.landmarkPairs,
                                rms(point_errors(transform, fixed, moving)), dsc, report.totalSeconds))
        _fillTable(self.sweepTableNode, SWEEP_COLUMNS, self._sweepRows)

    @staticmethod
    def saveTableCsv(tableNode, path: str | Path) -> Path:
        """Write a table node as CSV (header = column names), atomically: a reader never sees half a file."""
        from MetaRegistrationLib.files import write_text_atomic

        table = tableNode.GetTable()
        columns = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([column.GetName() for column in columns])
        for row in range(table.GetNumberOfRows()):
            writer.writerow([_csvValue(column.GetValue(row)) for column in columns])
        write_text_atomic(path, buffer.getvalue())
        return Path(path)

    @staticmethod
    def saveNode(node, path: str | Path) -> Path:
        """Write a node with its default storage node (format from the extension: ``.h5`` transform, ``.nrrd``
        volume, ``.seg.nrrd``, ``.mrk.json``), atomically; the node keeps no reference to the file.

        Raises:
            MetaRegistrationLib.errors.MetaRegistrationError: naming the node and the file when writing fails.
        """
        from MetaRegistrationLib.errors import InputError
        from MetaRegistrationLib.files import atomic_path

        from . import conversions

        path = Path(path)
        with atomic_path(path) as temporary:
            writer = node.CreateDefaultStorageNode()
            writer.SetFileName(str(temporary))
            if not writer.WriteData(node):
                raise InputError(f"{conversions.nodeName(node)}: could not be written to {path}")
        return path

    # --- batch evaluation ---------------------------------------------------------------------------------------

    def evaluateFolder(self, dataDir: str | Path, outputDir: str | Path, method: str = "meta",
                       frames: Iterable[int] = range(2, 11), modelPath: str | None = None,
                       cases: Sequence[str] | None = None, split: str | None = None, label: str | None = None,
                       progress: Callable[[str], None] | None = None):
        """Run the sweep simulation of ``metareg evaluate`` on a data folder (layout of ``mrus-prostate``) and write
        the same outputs into ``outputDir`` (``MetaRegistrationLib.report.OUTPUT_FILES``: ``cases.csv``,
        ``summary.csv``, ``report.md`` and the TRE and DSC box plots; all or none).

        Args:
            method: a method of ``MetaRegistrationLib.registration.METHODS`` ("meta", "centroid", ...).
            frames: frame counts to report for sweep methods.
            cases / split: the case IDs, or a split of the folder's ``split.json`` (default: every case).
            progress: called with each case ID when it is done.

        Returns:
            ``(rows, summary)``: ``MetaRegistrationLib.evaluation`` case and summary rows.
        """
        from MetaRegistrationLib.data import Dataset
        from MetaRegistrationLib.evaluation import evaluate_cases, summarise
        from MetaRegistrationLib.report import write_evaluation

        dataset = Dataset(dataDir)
        caseIds = list(cases) if cases else dataset.split(split) if split else dataset.case_ids()
        frameCounts = sorted(set(frames))
        rows = evaluate_cases(dataset, caseIds, method, frameCounts, modelPath,
                              progress=progress, label=label)
        summary = summarise(rows)
        command = (f"MetaRegistrationLogic.evaluateFolder({str(dataDir)!r}, {str(outputDir)!r}, method={method!r}, "
                   f"frames={frameCounts}, modelPath={modelPath!r}, cases={cases!r}, split={split!r})")
        write_evaluation(outputDir, rows, summary, command, dataDir)
        self.statusText = f"Evaluated {len(caseIds)} cases with {label or method}: {Path(outputDir)}"
        return rows, summary


def _csvValue(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def _fillTable(tableNode, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    """Replace a table node's content: one column per name, typed by its first value (strings if no row)."""
    import vtk

    table = tableNode.GetTable()
    wasModifying = tableNode.StartModify()
    tableNode.RemoveAllColumns()
    for index, name in enumerate(columns):
        values = [row[index] for row in rows]
        numeric = bool(values) and all(isinstance(v, (int, float, np.floating, np.integer)) for v in values)
        array = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        array.SetName(name)
        for value in values:
            array.InsertNextValue(float(value) if numeric else str(value))
        table.AddColumn(array)
    tableNode.Modified()
    tableNode.EndModify(wasModifying)
