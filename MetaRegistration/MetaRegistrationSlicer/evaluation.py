"""Evaluation on the scene: the evaluation panel, TRE across a sweep, and a data folder like ``metareg evaluate``.

Every number comes from ``MetaRegistrationLib.metrics.measure`` (the definitions are written there once); this
module reads the nodes, calls it, and fills tables (:mod:`.tables`).

:class:`EvaluationMixin` is a part of ``MetaRegistrationCoreLogic`` (``.logic``), which provides ``scene``, the
session's inputs (``_inputs``: the MR, its gland and the TRUS grid, or ``None``), ``lastTransform``,
``_requireSession()`` and ``statusText``. Torch and the library's numerical modules are imported on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import slicer
from MetaRegistrationLib.quality import QUALITY_COLUMNS

from . import tables

EVALUATION_TABLE_NAME = "MetaRegistration evaluation"
SWEEP_TABLE_NAME = "MetaRegistration sweep"
SWEEP_COLUMNS = ("frames", "updates", "landmark_pairs", "tre_mm", "inverse_tre_mm", "dsc", "seconds",
                 *QUALITY_COLUMNS)
"""The sweep table's columns, one row per update: totals after the interaction; when the sweep is tracked
(:meth:`EvaluationMixin.trackSweep`) its RMS TRE in both directions (``tre_mm``: ``|phi(p_TRUS) - p_MR|``,
``inverse_tre_mm``: ``|phi^-1(p_MR) - p_TRUS|``, what a user sees with MR fiducials under the output transform)
and gland DSC, NaN otherwise; its seconds; and its quality signals (``MetaRegistrationLib.quality``), which need
no ground truth."""


@dataclass
class EvaluationReport:
    """Accuracy of one transform, as the evaluation panel shows it (definitions: ``MetaRegistrationLib.metrics``).

    Attributes:
        labels: landmark labels found in both markups nodes, with ``pointErrorsMm`` their
            errors ``|phi(p_TRUS) - p_MR|`` (the resampling direction) and ``inversePointErrorsMm`` their errors
            ``|phi^-1(p_MR) - p_TRUS|`` (what the MR fiducials under the transform show against the TRUS ones).
        treMm, inverseTreMm: RMS of the point errors of each direction. dsc: warped MR gland vs TRUS gland.
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
    inversePointErrorsMm: list[float] = field(default_factory=list)
    inverseTreMm: float = float("nan")

    @property
    def status(self) -> str:
        text = (f"TRE {self.treMm:.2f} mm (MR points under the transform: {self.inverseTreMm:.2f} mm) over "
                f"{len(self.labels)} landmark pairs, DSC {self.dsc:.3f}, folding {self.foldPercent:.2f} %")
        unmatched = [f"MR only: {', '.join(self.movingOnlyLabels)}"] if self.movingOnlyLabels else []
        unmatched += [f"TRUS only: {', '.join(self.fixedOnlyLabels)}"] if self.fixedOnlyLabels else []
        return text + (f" (unmatched labels left out; {'; '.join(unmatched)})" if unmatched else "")


@dataclass
class SweepTracking:
    """What :meth:`EvaluationMixin.trackSweep` read: paired LPS points (N, 3) and the TRUS gland on the session's
    TRUS grid (``None``: no DSC column)."""

    movingPoints: np.ndarray
    fixedPoints: np.ndarray
    fixedGland: np.ndarray | None


class EvaluationMixin:
    """The Logic's evaluation calls (see the module docstring for what the host class provides)."""

    def _initEvaluation(self) -> None:
        self.sweepTableNode = None
        self.sweepPlotChartNode = None
        self.evaluationTableNode = None
        self._sweepTracking: SweepTracking | None = None
        self._sweepRows: list[tuple] = []

    @property
    def sweepRows(self) -> list[dict]:
        """The rows of :attr:`sweepTableNode` (one per update since :meth:`trackSweep`), keyed by ``SWEEP_COLUMNS``."""
        return [dict(zip(SWEEP_COLUMNS, row)) for row in self._sweepRows]

    # --- the evaluation panel -----------------------------------------------------------------------------------

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
            MetaRegistrationLib.errors.MetaRegistrationError: naming the node at fault; no table is then changed.
        """
        from MetaRegistrationLib.metrics import measure

        from . import conversions

        labels, moving, fixed, movingOnly, fixedOnly = conversions.matchLandmarks(movingLandmarks, fixedLandmarks)
        movingGrid = self._referenceGrid(movingVolume, movingSegmentation, movingSegmentId, world=False)
        fixedGrid = self._referenceGrid(fixedVolume, fixedSegmentation, fixedSegmentId, world=True)
        movingGland = conversions.glandOnGrid(movingSegmentation, movingGrid, movingSegmentId, world=False,
                                              role="MR gland")
        fixedGland = conversions.glandOnGrid(fixedSegmentation, fixedGrid, fixedSegmentId, world=True,
                                             role="TRUS gland")
        transform = conversions.transformFromNode(transformNode, fixedGrid)
        metrics = measure(transform, fixedGrid, moving_gland=movingGland, moving_grid=movingGrid,
                          fixed_gland=fixedGland, fixed_points=fixed, moving_points=moving)
        report = EvaluationReport(labels, [float(e) for e in metrics.landmark_errors_mm], metrics.tre_mm,
                                  metrics.dsc, metrics.fold_pct, metrics.hd95_mm, movingOnly, fixedOnly,
                                  [float(e) for e in metrics.inverse_landmark_errors_mm], metrics.inverse_tre_mm)
        if tableNode is None:
            tableNode = self.scene.AddNewNodeByClass("vtkMRMLTableNode", EVALUATION_TABLE_NAME)
        self.evaluationTableNode = tableNode
        rows = [(f"landmark {label} error", error, "mm") for label, error in zip(labels, report.pointErrorsMm)]
        rows += [(f"landmark {label} error, MR point under the transform", error, "mm")
                 for label, error in zip(labels, report.inversePointErrorsMm)]
        rows += [("RMS TRE", report.treMm, "mm"), ("RMS TRE, MR points under the transform", report.inverseTreMm, "mm"),
                 ("gland DSC", report.dsc, ""),
                 ("folding", report.foldPercent, "%"), ("gland HD95", report.hd95Mm, "mm")]
        tables.fillTable(tableNode, ("measure", "value", "unit"), rows)
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

    # --- TRE across the sweep -----------------------------------------------------------------------------------

    def trackSweep(self, movingLandmarks, fixedLandmarks, fixedSegmentation=None, tableNode=None) -> None:
        """Measure TRE (and DSC when the TRUS gland is given) after every update of the session, into the sweep
        table (:attr:`sweepTableNode`, columns ``SWEEP_COLUMNS``) plotted as TRE per frame
        (:attr:`sweepPlotChartNode`). Without it the table holds the updates' quality signals only.

        The landmarks and the gland are read now; they are not given to the registration.
        """
        self._requireSession()
        tracking = self._readSweepTracking(movingLandmarks, fixedLandmarks, fixedSegmentation,
                                           self._inputs.fixedGrid)
        self._startSweepTracking(tracking, tableNode)

    def _readSweepTracking(self, movingLandmarks, fixedLandmarks, fixedSegmentation, fixedGrid) -> SweepTracking:
        """Read what :meth:`trackSweep` measures against (raises before anything changes)."""
        from . import conversions

        _, moving, fixed, _, _ = conversions.matchLandmarks(movingLandmarks, fixedLandmarks)
        fixedGland = None
        if fixedSegmentation is not None:
            fixedGland = conversions.glandOnGrid(fixedSegmentation, fixedGrid, world=True, role="TRUS gland")
        return SweepTracking(moving, fixed, fixedGland)

    def _startSweepTracking(self, tracking: SweepTracking, tableNode=None) -> None:
        self._sweepTracking = tracking
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
            tables.fillTable(self.sweepTableNode, SWEEP_COLUMNS, [])

    def _sweepMetrics(self, transform) -> tuple[float, float, float]:
        """(RMS TRE, inverse RMS TRE, DSC) of a new registration for the sweep table, NaN when the sweep is not
        tracked. Reads and writes no node."""
        if self._sweepTracking is None:
            return (float("nan"),) * 3
        from MetaRegistrationLib.metrics import measure

        tracking, inputs = self._sweepTracking, self._inputs
        metrics = measure(transform, inputs.fixedGrid, moving_gland=inputs.movingGland,
                          moving_grid=inputs.movingImage.grid, fixed_gland=tracking.fixedGland,
                          fixed_points=tracking.fixedPoints, moving_points=tracking.movingPoints, regularity=False)
        return metrics.tre_mm, metrics.inverse_tre_mm, metrics.dsc

    def _sweepRowsWith(self, report, sweepMetrics: tuple[float, float, float]) -> list[tuple]:
        """The sweep table's rows with the row of ``report`` added (not stored yet)."""
        treMm, inverseTreMm, dsc = sweepMetrics
        return self._sweepRows + [(report.frames, report.updates, report.landmarkPairs, treMm, inverseTreMm, dsc,
                                   report.totalSeconds, *report.quality.row())]

    # --- a data folder, like `metareg evaluate` -----------------------------------------------------------------

    def evaluateFolder(self, dataDir: str | Path, outputDir: str | Path, method: str = "meta",
                       frames: Iterable[int] = range(2, 11), modelPath: str | None = None,
                       cases: Sequence[str] | str | None = None, split: str | None = None, label: str | None = None,
                       progress: Callable[[str], None] | None = None):
        """Run the sweep simulation of ``metareg evaluate`` on a data folder (layout of ``mrus-prostate``) and write
        the same outputs into ``outputDir`` (``MetaRegistrationLib.report.OUTPUT_FILES``: ``cases.csv``,
        ``summary.csv``, ``report.md`` and the TRE and DSC box plots; all or none).

        Args:
            method: a method of ``MetaRegistrationLib.registration.METHODS`` ("meta", "centroid", ...).
            frames: frame counts to report for sweep methods.
            cases / split: the case IDs (a list, or one comma-separated string), or a split of the folder's
                ``split.json`` (not both; default: every case). Each case is checked to exist before any is read.
            progress: called with each case ID when it is done.

        Returns:
            ``(rows, summary)``: ``MetaRegistrationLib.evaluation`` case and summary rows.

        Raises:
            MetaRegistrationLib.errors.InputError: for an unknown method, a missing split or case, naming it.
        """
        from MetaRegistrationLib.data import Dataset
        from MetaRegistrationLib.evaluation import evaluate_cases, summarise
        from MetaRegistrationLib.registration import get_method
        from MetaRegistrationLib.report import write_evaluation

        registered = get_method(method)  # an unknown name fails before the folder is read
        dataset = Dataset(dataDir)
        caseIds = dataset.select(split=split, cases=cases if cases else None)
        frameCounts = sorted(set(frames))
        rows = evaluate_cases(dataset, caseIds, registered.name, frameCounts, modelPath, progress=progress,
                              label=label)
        summary = summarise(rows)
        command = (f"MetaRegistrationLogic.evaluateFolder({str(dataDir)!r}, {str(outputDir)!r}, method={method!r}, "
                   f"frames={frameCounts}, modelPath={modelPath!r}, cases={cases!r}, split={split!r})")
        write_evaluation(outputDir, rows, summary, command, dataDir)
        self.statusText = f"Evaluated {len(caseIds)} cases with {label or method}: {Path(outputDir)}"
        return rows, summary
