"""MetaRegistration: interactive, meta-learned MR-to-TRUS prostate registration in 3D Slicer.

The module file in the scripted-module template's five parts: Module, parameter
node, Widget, Logic, Test. The Logic is ``MetaRegistrationCoreLogic``
(``MetaRegistrationSlicer/logic.py``, a plain class tested headlessly on
slicer-core's MRML) mixed with Slicer's ``ScriptedLoadableModuleLogic``; the
Widget only reads the GUI and calls it (the Start button is one call,
``startSessionUsingParameterNode``). Torch and the registration library are
imported on first use, after the dependencies (``Resources/requirements.txt``,
checked by ``MetaRegistrationSlicer/dependencies.py``) are installed, never when
Slicer loads this file.
"""

import logging
import os
import pathlib
import threading
from typing import Annotated, Optional, Union

import qt
import vtk

import slicer
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSequenceNode,
    vtkMRMLTransformNode,
)
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

import MetaRegistrationSlicer
from MetaRegistrationSlicer import dependencies
from MetaRegistrationSlicer.logic import MetaRegistrationCoreLogic

README_URL = "https://github.com/SlicerMetaRegistration/SlicerMetaRegistration#use-in-3d-slicer"
POLL_INTERVAL_MS = 50
"""How often the GUI polls a running update (and, in live mode, the streamed frame node)."""


#
# Module
#


class MetaRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MetaRegistration"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["The SlicerMetaRegistration project (https://github.com/SlicerMetaRegistration/SlicerMetaRegistration)"]
        self.parent.helpText = (
            "Registers a pre-operative prostate MR to tracked transrectal ultrasound (TRUS) frames during the "
            "sweep: each new frame (a single-slice volume with its gland segmentation) or clicked landmark pair "
            "adapts a meta-learned network in a few gradient steps, and the MR, its segmentation and its "
            "fiducials are shown on the TRUS at once. The evaluation panel reports TRE from landmark fiducials "
            f"and the gland DSC. See the <a href=\"{README_URL}\">README</a> for the workflow and the Python "
            "console API (<code>slicer.util.getModuleLogic(\"MetaRegistration\")</code>)."
        )
        self.parent.acknowledgementText = (
            "Built on 3D Slicer, MONAI and PyTorch (through the SlicerPyTorch extension). The interactive "
            "meta-registration follows the few-shot adaptation literature for MR-to-TRUS prostate registration; "
            "the test data are the public MR-TRUS prostate pairs of the DeepReg demos."
        )


#
# Parameter node
#


@parameterNodeWrapper
class MetaRegistrationParameterNode:
    """What the GUI holds; the Logic's calls take the same nodes as arguments.

    movingVolume, movingSegmentation: the MR and its prostate segmentation (read in their own coordinates).
    fixedVolume: the 3D TRUS volume giving the TRUS geometry.
    frameVolume, frameSegmentation: the tracked frame to add, with its gland.
    frameSequence, frameSegmentationSequence: a recorded sweep, consumed frame by frame.
    movingLandmarks, fixedLandmarks: MR and TRUS fiducials, paired by control point label.
    fixedSegmentation: the TRUS gland, for evaluation only.
    outputTransform, outputVolume, outputSegmentation: where results go (created at the first update if empty).
    showUnderTransform: put the MR, its segmentation and its fiducials under the output transform (default).
    resampleVolume: also resample the MR onto the TRUS grid at every update (for export).
    """

    movingVolume: vtkMRMLScalarVolumeNode
    movingSegmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]
    fixedVolume: vtkMRMLScalarVolumeNode
    frameVolume: vtkMRMLScalarVolumeNode
    frameSegmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]
    frameSequence: vtkMRMLSequenceNode
    frameSegmentationSequence: vtkMRMLSequenceNode
    movingLandmarks: vtkMRMLMarkupsFiducialNode
    fixedLandmarks: vtkMRMLMarkupsFiducialNode
    fixedSegmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]
    outputTransform: vtkMRMLTransformNode
    outputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    resampleVolume: bool = False
    showUnderTransform: bool = True
    trackSweep: bool = False
    modelPath: pathlib.Path
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


#
# Widget
#


class MetaRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._liveTimer = None
        self._backgroundTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MetaRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MetaRegistrationLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.startButton.connect("clicked(bool)", self.onStartButton)
        self.ui.addFrameButton.connect("clicked(bool)", self.onAddFrameButton)
        self.ui.liveButton.connect("toggled(bool)", self.onLiveButton)
        self.ui.addSequenceButton.connect("clicked(bool)", self.onAddSequenceButton)
        self.ui.addLandmarksButton.connect("clicked(bool)", self.onAddLandmarksButton)
        self.ui.resetButton.connect("clicked(bool)", self.onResetButton)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluateButton)
        self.ui.saveCsvButton.connect("clicked(bool)", self.onSaveCsvButton)
        self.ui.progressBar.hide()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._stopLive()
        self.removeObservers()

    def onReload(self) -> None:
        """Developer mode's Reload: the project's packages first (Slicer's reload re-runs only this file, which
        would keep the old MetaRegistrationSlicer and MetaRegistrationLib modules), then this file."""
        MetaRegistrationSlicer.reloadPackages()
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self._stopLive()
        self.setParameterNode(None)
        self.logic.endSession()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[MetaRegistrationParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        """Each button says what it still needs, and is enabled only when it has it."""
        p = self._parameterNode
        if p is None:
            return
        missing = self.logic.missingInputs(p.movingVolume, p.movingSegmentation, p.fixedVolume)
        self.ui.startButton.enabled = not missing and not self._running and not self.logic.isLiveTracking
        self.ui.startButton.text = missing or ("Restart session" if self.logic.hasSession else "Start session")
        live = self.logic.isLiveTracking
        session = self.logic.hasSession and not self._running and not live
        liveMissing = not self.logic.hasSession and "Start a session first" or not p.frameVolume and "Select a frame"
        self.ui.liveButton.enabled = live or (self.logic.hasSession and not self._running and not liveMissing)
        self.ui.liveButton.text = ("Stop live tracking" if live else liveMissing or
                                   ("Live (glands from the frame segmentation)" if p.frameSegmentation
                                    else "Live (glands predicted)"))
        frameMissing = (not self.logic.hasSession and "Start a session first"
                        or not p.frameVolume and "Select a frame"
                        or not p.frameSegmentation and "Select the frame's gland segmentation")
        self.ui.addFrameButton.enabled = session and not frameMissing
        self.ui.addFrameButton.text = frameMissing or "Add frame"
        sequenceMissing = (not self.logic.hasSession and "Start a session first"
                           or not p.frameSequence and "Select a frame sequence"
                           or not p.frameSegmentationSequence and "Select the gland sequence")
        self.ui.addSequenceButton.enabled = self._running or (session and not sequenceMissing)
        self.ui.addSequenceButton.text = "Cancel" if self._running else (sequenceMissing or "Add every frame")
        landmarksMissing = (not self.logic.hasSession and "Start a session first"
                            or not (p.movingLandmarks and p.fixedLandmarks) and "Select MR and TRUS landmarks")
        self.ui.addLandmarksButton.enabled = session and not landmarksMissing
        self.ui.addLandmarksButton.text = landmarksMissing or "Add landmark pairs"
        self.ui.resetButton.enabled = session
        evaluationMissing = (not (p.movingLandmarks and p.fixedLandmarks) and "Select MR and TRUS landmarks"
                             or not p.outputTransform and "No transform yet"
                             or not (p.movingSegmentation and p.fixedSegmentation) and "Select both glands")
        self.ui.evaluateButton.enabled = not evaluationMissing and not self._running
        self.ui.evaluateButton.text = evaluationMissing or "Evaluate"
        self.ui.saveCsvButton.enabled = self.logic.evaluationTableNode is not None

    def _showReport(self, report) -> None:
        """Status, quality, timings, and the result on the TRUS at the first registration."""
        self.ui.statusLabel.text = report.status
        self._showQuality(report.quality)
        if report.registered:
            self.ui.timingsLabel.text = (f"alignment and inputs {report.preparationSeconds:.2f} s, "
                                         f"updates {report.updateSeconds:.2f} s, prediction "
                                         f"{report.predictSeconds:.2f} s, outputs {report.outputSeconds:.2f} s")
        p = self._parameterNode
        # Hand the created output nodes back to the GUI so that the next session reuses them.
        with slicer.util.NodeModify(p):
            p.outputTransform = self.logic.outputTransformNode
            p.outputVolume = self.logic.outputVolumeNode
            p.outputSegmentation = self.logic.outputSegmentationNode
        firstRegistration = report.registered and sum(r.registered for r in self.logic.reports) == 1
        overlay = self.logic.outputVolumeNode or (p.movingVolume if p.showUnderTransform else None)
        if firstRegistration and overlay is not None:  # the resampled MR, or the MR under the transform
            slicer.util.setSliceViewerLayers(background=p.fixedVolume, foreground=overlay, foregroundOpacity=0.5)
        self._updateButtons()

    def _showQuality(self, quality) -> None:
        """The update's quality signals on one line, red on a folding alarm; empty when nothing was registered."""
        self.ui.qualityLabel.text = quality.describe() if quality is not None else ""
        self.ui.qualityLabel.styleSheet = "color: red;" if quality is not None and quality.fold_alarm else ""

    def _ensureDependencies(self) -> bool:
        """Install what requirements.txt lists and is missing or too old, after one confirmation."""
        problems = self.logic.missingDependencies()
        if not problems:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                f"MetaRegistration needs Python packages that are missing or too old: {'; '.join(problems)}. "
                "Install them now (PyTorch through the SlicerPyTorch extension, the rest with pip; nothing that "
                "comes with Slicer is replaced)? This can take several minutes.",
                "Install dependencies"):
            return False
        self.logic.installDependencies()
        return True

    def onStartButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to start the registration session.", waitCursor=True):
            if not self._ensureDependencies():
                return
            report = self.logic.startSessionUsingParameterNode(self._parameterNode)
            if self._parameterNode.trackSweep:
                self.ui.evaluationTableView.setMRMLTableNode(self.logic.sweepTableNode)
            self._showReport(report)

    def onAddFrameButton(self) -> None:
        """Read the frame now, adapt in a worker thread (the GUI stays responsive), write the outputs when done."""
        pending = None
        with slicer.util.tryWithErrorDisplay("Failed to add the frame.", waitCursor=True):
            p = self._parameterNode
            pending = self.logic.prepareFrame(p.frameVolume, p.frameSegmentation)
        if pending is None:
            return
        worker = threading.Thread(target=pending.adapt, name="metareg-add-frame", daemon=True)
        self._running = True
        self.ui.statusLabel.text = f"Adapting to {pending.description}..."
        self._updateButtons()
        worker.start()

        def finishWhenDone():
            if worker.is_alive():
                return
            self._backgroundTimer.stop()
            self._running = False
            try:
                with slicer.util.tryWithErrorDisplay("Failed to add the frame."):
                    self._showReport(self.logic.finishInteraction(pending))
            finally:
                self._updateButtons()

        self._backgroundTimer = qt.QTimer()
        self._backgroundTimer.timeout.connect(finishWhenDone)
        self._backgroundTimer.start(POLL_INTERVAL_MS)

    def onLiveButton(self, checked: bool) -> None:
        """Start or stop live tracking of the selected frame node; a timer polls the Logic on the main thread (it
        reads frames and writes outputs there, the gradient steps run in its worker thread)."""
        if not checked:
            self._stopLive()
            return
        if self.logic.isLiveTracking:
            return
        started = False
        with slicer.util.tryWithErrorDisplay("Failed to start live tracking.", waitCursor=True):
            if self._ensureDependencies():
                p = self._parameterNode
                self.ui.statusLabel.text = self.logic.startLiveTracking(p.frameVolume, p.frameSegmentation)
                started = True
        if not started:
            self._uncheckLive()
            return
        self._liveTimer = qt.QTimer()
        self._liveTimer.timeout.connect(self._onLiveTimer)
        self._liveTimer.start(POLL_INTERVAL_MS)
        self._updateButtons()

    def _onLiveTimer(self) -> None:
        report = self.logic.pollLiveTracking()
        if report is not None:
            self._showReport(report)
        self.ui.statusLabel.text = self.logic.statusText  # frames seen / accepted / skipped, last update time

    def _stopLive(self) -> None:
        if self._liveTimer is not None:
            self._liveTimer.stop()
            self._liveTimer = None
        if self.logic is not None and self.logic.isLiveTracking:
            self.logic.cancel()  # the running update stops after its current gradient step
            status = self.logic.stopLiveTracking()
            if self.logic.lastLiveReport is not None:  # the update finished at the stop: its outputs too
                self._showReport(self.logic.lastLiveReport)
            self.ui.statusLabel.text = status
        self._uncheckLive()
        self._updateButtons()

    def _uncheckLive(self) -> None:
        if self.ui.liveButton.checked:
            self.ui.liveButton.blockSignals(True)
            self.ui.liveButton.checked = False
            self.ui.liveButton.blockSignals(False)

    def onAddSequenceButton(self) -> None:
        if self._running:
            self.logic.cancel()
            return
        p = self._parameterNode
        count = p.frameSequence.GetNumberOfDataNodes()
        self._running = True
        self.ui.progressBar.maximum = count
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self._updateButtons()

        def progress(index, status):
            self.ui.progressBar.value = index + 1
            self.ui.statusLabel.text = status
            slicer.app.processEvents()  # keeps the GUI, and its Cancel button, responsive between frames

        try:
            with slicer.util.tryWithErrorDisplay("Failed to add the frame sequence.", waitCursor=True):
                reports = self.logic.addFrameSequence(p.frameSequence, p.frameSegmentationSequence, progress)
                if reports:
                    self._showReport(reports[-1])
        finally:
            self._running = False
            self.ui.progressBar.hide()
            self._updateButtons()

    def onAddLandmarksButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to add the landmark pairs.", waitCursor=True):
            p = self._parameterNode
            self._showReport(self.logic.addLandmarks(p.movingLandmarks, p.fixedLandmarks))

    def onResetButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to reset the session.", waitCursor=True):
            self._showReport(self.logic.reset())

    def onEvaluateButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to evaluate the registration.", waitCursor=True):
            p = self._parameterNode
            report = self.logic.evaluate(p.movingLandmarks, p.fixedLandmarks, p.outputTransform,
                                         p.movingSegmentation, p.fixedSegmentation, movingVolume=p.movingVolume,
                                         fixedVolume=p.fixedVolume, tableNode=self.logic.evaluationTableNode)
            self.ui.evaluationTableView.setMRMLTableNode(self.logic.evaluationTableNode)
            self.ui.statusLabel.text = report.status
            self._updateButtons()

    def onSaveCsvButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to save the table.", waitCursor=True):
            path = qt.QFileDialog.getSaveFileName(None, "Save evaluation table", "metaregistration-evaluation.csv",
                                                  "CSV files (*.csv)")
            if path:
                self.logic.saveTableCsv(self.logic.evaluationTableNode, path)
                self.ui.statusLabel.text = f"Saved {path}"


#
# Logic
#


class MetaRegistrationLogic(ScriptedLoadableModuleLogic, MetaRegistrationCoreLogic):
    """The module's Logic: ``MetaRegistrationCoreLogic`` (every registration, output and evaluation call, and
    ``startSessionUsingParameterNode``) on ``slicer.mrmlScene``, plus what needs the Slicer application: the
    parameter node and installing dependencies. From the Python console:
    ``slicer.util.getModuleLogic("MetaRegistration")``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        MetaRegistrationCoreLogic.__init__(self)

    def getParameterNode(self):
        return MetaRegistrationParameterNode(super().getParameterNode())

    @staticmethod
    def missingDependencies() -> list:
        """What ``Resources/requirements.txt`` needs and is not installed in its version range, one line each
        (empty when everything is in place)."""
        return [problem.message for problem in dependencies.checkDependencies()]

    def installDependencies(self) -> None:
        """Install torch through SlicerPyTorch (in the range requirements.txt gives), then the pip packages of
        requirements.txt, upgrading old versions; never the packages Slicer ships (those are only checked).

        Raises:
            MetaRegistrationSlicer.dependencies.DependencyError: saying what is still wrong and what to do.
        """
        installed = dependencies.installDependencies(pipInstall=slicer.util.pip_install)
        logging.info(f"MetaRegistration dependencies in place (installed with pip: {', '.join(installed) or 'none'})")


#
# Test
#


class MetaRegistrationTest(ScriptedLoadableModuleTest):
    """Runs in 3D Slicer (Developer mode, Reload and Test, or ctest): a synthetic phantom through the Logic.

    It installs nothing: without the dependencies it says so and stops (start a session from the module's panel
    to install them)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MetaRegistrationSession()

    def test_MetaRegistrationSession(self):
        problems = MetaRegistrationLogic.missingDependencies()
        if problems:
            self.delayDisplay(f"Test skipped: dependencies missing ({'; '.join(problems)}); start a session from "
                              "the module's panel to install them")
            return

        import tempfile

        import numpy as np
        import torch

        from MetaRegistrationLib.geometry import Transform
        from MetaRegistrationLib.metrics import evaluate_transform
        from MetaRegistrationLib.models import save_model
        from MetaRegistrationLib.network import RegistrationNet
        from MetaRegistrationLib.phantom import make_phantom_case
        from MetaRegistrationLib.registration import sweep_frames
        from MetaRegistrationLib.settings import AdaptationSettings
        from MetaRegistrationSlicer import conversions

        logic = MetaRegistrationLogic()
        self.delayDisplay("Building a synthetic MR/TRUS phantom")
        case, _ = make_phantom_case(seed=0, scale=0.5)
        scene = slicer.mrmlScene
        nodes = conversions.caseNodes(scene, case)
        torch.manual_seed(0)
        modelPath = os.path.join(tempfile.mkdtemp(), "untrained")
        save_model(modelPath, RegistrationNet(), AdaptationSettings())

        self.delayDisplay("Registering over a sweep of 6 frames")
        logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"], modelPath=modelPath, device="cpu",
                           resampleVolume=True)
        frames = [conversions.frameNodesFromFrame(scene, frame, f"frame {n}")
                  for n, frame in enumerate(sweep_frames(case, 6), 1)]
        reports = logic.addFrames(frames)
        self.assertEqual(reports[-1].frames, 6)
        self.assertTrue(reports[-1].registered)
        before = evaluate_transform(case, Transform(np.eye(4))).dsc
        after = evaluate_transform(case, logic.lastTransform).dsc
        self.assertGreater(after, before)

        self.delayDisplay("Evaluating from landmark fiducials")
        result = logic.evaluate(nodes["MR points"], nodes["TRUS points"], logic.outputTransformNode,
                                nodes["MR segmentation"], nodes["TRUS segmentation"])
        self.assertAlmostEqual(result.dsc, after, places=6)
        self.assertEqual(logic.evaluationTableNode.GetNumberOfRows(), 2 * len(result.labels) + 5)
        path = os.path.join(tempfile.mkdtemp(), "evaluation.csv")
        logic.saveTableCsv(logic.evaluationTableNode, path)
        self.assertTrue(os.path.exists(path))

        logic.reset()
        self.assertEqual(len(logic.reports), 0)
        self.delayDisplay("Test passed")
