"""Live tracking: the frames PLUS streams over OpenIGTLink into one image node, turned into registration updates.

OpenIGTLinkIF updates one image node in place (its image data, and its ``ImageToReference`` parent transform or
its IJK-to-RAS) 20-30 times a second. :meth:`LiveTrackingMixin.startLiveTracking` observes that node (image data
modified; transform modified anywhere in its parent chain, which MRML forwards to the node) and only marks it as
changed: the frame is read at the next :meth:`~LiveTrackingMixin.pollLiveTracking`, so an image and its pose that
arrive as two messages are read together, and a burst of events costs one read. Reading, frame selection and
writing the outputs happen in ``pollLiveTracking`` on the main thread; the gradient steps run in a worker thread
(:class:`MetaRegistrationLib.live.LiveStream`: one update running, at most one frame waiting, newer frames replace
the waiting one; its docstring states the selection rule).

Who calls ``pollLiveTracking``: the module's Widget from a 50 ms ``QTimer``; a console user can do the same::

    logic.startLiveTracking(slicer.util.getNode("Image_Reference"))
    timer = qt.QTimer(); timer.timeout.connect(logic.pollLiveTracking); timer.start(50)
    ...
    timer.stop(); logic.stopLiveTracking()

The frame's gland comes from ``frameSegmentationNode`` when one is given (a segmenter upstream updates it with the
frame), otherwise from the bundled frame segmenter (:mod:`MetaRegistrationLib.frame_segmenter`).
"""

from __future__ import annotations

import vtk

import slicer
from MetaRegistrationLib.errors import InputError, MetaRegistrationError

class LiveTrackingMixin:
    """``startLiveTracking`` / ``pollLiveTracking`` / ``stopLiveTracking`` for ``MetaRegistrationCoreLogic``."""

    def _initLive(self) -> None:
        self._liveStream = None  # MetaRegistrationLib.live.LiveStream while tracking
        self._lastLiveStream = None  # the stream of the last live tracking, for its counts and frames
        self._liveNode = self._liveSegmentation = self._liveSegmentId = None
        self._liveNodeName = ""
        self._liveObservations: list = []
        self._liveChanged = False
        self._frameSegmenter = None
        self._frameDescription = ""
        self.lastLiveReport = None

    @property
    def isLiveTracking(self) -> bool:
        return self._liveStream is not None

    @property
    def liveCounts(self):
        """The current (or last) stream's ``MetaRegistrationLib.live.StreamCounts``; ``None`` before any."""
        stream = self._liveStream or self._lastLiveStream
        return stream.counts if stream is not None else None

    @property
    def liveFrames(self) -> list:
        """The library frames the current (or last) live stream added to the session, in order."""
        stream = self._liveStream or self._lastLiveStream
        return list(stream.frames) if stream is not None else []

    def frameSegmenter(self):
        """The bundled frame segmenter, loaded once."""
        if self._frameSegmenter is None:
            from MetaRegistrationLib.frame_segmenter import load_frame_segmenter

            self._frameSegmenter = load_frame_segmenter()
        return self._frameSegmenter

    def startLiveTracking(self, frameNode, frameSegmentationNode=None, segmentId: str | None = None,
                          minDistanceMm: float = 3.0, minAngleDegrees: float = 5.0, threaded: bool = True) -> str:
        """Start registering the frames streamed into ``frameNode`` (module docstring); returns the status line.

        Args:
            frameNode: the single-slice scalar or RGB volume node OpenIGTLinkIF updates in place.
            frameSegmentationNode: a segmentation or labelmap updated with each frame; ``None``: the bundled
                frame segmenter predicts the gland.
            minDistanceMm, minAngleDegrees: the frame selection thresholds
                (:class:`MetaRegistrationLib.live.FrameSelection`).
            threaded: run the gradient steps in a worker thread (``False``: inside ``pollLiveTracking``).

        Raises:
            MetaRegistrationLib.errors.MetaRegistrationError: one line naming the node, when there is no session,
                live tracking already runs, or the node cannot be read as a frame now.
        """
        from MetaRegistrationLib.live import FrameSelection, LiveStream

        from . import conversions

        self._requireSession()
        if self._liveStream is not None:
            raise InputError(f"live tracking already runs on {conversions.nodeName(self._liveNode)}; stop it first")
        selection = FrameSelection(float(minDistanceMm), float(minAngleDegrees))
        conversions.framePixelsFromNode(frameNode)  # a node that cannot be a frame fails now, in one line
        segment = None if frameSegmentationNode is not None else self.frameSegmenter().segment_frame
        self._frameDescription = f"{conversions.nodeName(frameNode)} (live)"
        self._liveStream = LiveStream(self._adaptInWorker, self._finishFrame, selection, segment,
                                      list(self._framePlanes), threaded=threaded)
        self._lastLiveStream = None
        self._liveNode, self._liveSegmentation, self._liveSegmentId = frameNode, frameSegmentationNode, segmentId
        # ModifiedEvent: a new IJK-to-RAS (a pose sent in the image's own matrix) fires only that.
        self._liveObservations = [(frameNode, frameNode.AddObserver(event, self._onLiveNodeModified))
                                  for event in (slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent,
                                                slicer.vtkMRMLTransformableNode.TransformModifiedEvent,
                                                vtk.vtkCommand.ModifiedEvent)]
        self._liveChanged = True  # the frame there now is the first one
        self.statusText = (f"Live tracking {conversions.nodeName(frameNode)} (glands "
                           f"{'from ' + conversions.nodeName(frameSegmentationNode) if frameSegmentationNode else 'predicted'}"
                           f"; new plane: {selection.min_distance_mm:g} mm or {selection.min_angle_degrees:g} degrees)")
        return self.statusText

    def _onLiveNodeModified(self, caller, event) -> None:
        self._liveChanged = True

    def pollLiveTracking(self):
        """Read the frame if it changed, finish an update whose steps are done and start the next (main thread).

        Returns:
            The ``InteractionReport`` of an update finished by this call, else ``None``. Nothing raises: a frame
            that cannot be read is counted as unreadable, an update that fails as failed, each with its message in
            the status.
        """
        from . import conversions

        stream = self._liveStream
        if stream is None:
            return None
        self.lastLiveReport = None
        if self._liveChanged:
            self._liveChanged = False
            try:
                image, pose = conversions.framePixelsFromNode(self._liveNode)
                stream.offer(image, pose, self._glandReader(self._liveSegmentation, self._liveSegmentId, image, pose))
            except Exception as error:  # noqa: BLE001 - counted and shown; a timer tick must not raise
                stream.counts.seen += 1
                stream.counts.unreadable += 1
                stream.counts.last_error = str(error)
        stream.poll()
        self.statusText = f"Live: {stream.counts.describe()}"
        return self.lastLiveReport

    @staticmethod
    def _glandReader(labelNode, segmentId, image, pose):
        """``None`` (the segmenter's gland), or a callable reading ``labelNode``'s gland on the frame (``None`` where
        it holds none) that the stream calls only for a new plane."""
        if labelNode is None:
            return None

        def read():
            import numpy as np
            from MetaRegistrationLib.sweep import Frame

            from . import conversions

            try:
                return conversions.glandOnFrame(labelNode, Frame(image, np.zeros_like(image), pose), segmentId)
            except conversions.EmptyGlandError:
                return None

        return read

    def _adaptInWorker(self, frame):
        """Worker thread: the gradient steps of one accepted frame (touches no MRML node)."""
        pending = self.prepareLibraryFrame(frame, self._frameDescription)
        pending.adapt()
        return pending

    def _finishFrame(self, frame, pending) -> None:
        """Main thread: write the outputs of a finished update (raises its error, counted by the stream)."""
        self.lastLiveReport = self.finishInteraction(pending)

    def stopLiveTracking(self, apply: bool = True) -> str:
        """Stop observing the frame node: the running update is finished and applied (``apply=False``: dropped, as
        when the session ends), a waiting frame dropped. Returns the final status line (frames seen / accepted /
        skipped, last update time); ``lastLiveReport`` is the update applied here, if any."""
        stream = self._liveStream
        if stream is None:
            return self.statusText
        for node, tag in self._liveObservations:
            node.RemoveObserver(tag)
        self._liveObservations = []
        self.lastLiveReport = None
        stream.stop(apply=apply)
        self._liveStream, self._lastLiveStream = None, stream
        self._liveNode = self._liveSegmentation = self._liveSegmentId = None
        self.statusText = f"Live tracking stopped: {stream.counts.describe()}"
        if stream.counts.dropped:
            self.statusText += "; the frame waiting at the stop was dropped"
        return self.statusText

    def _refuseWhileLive(self) -> None:
        """Other interactions would race the live stream's worker for the session: refuse them while it runs."""
        if self._liveStream is not None:
            raise InputError("live tracking is running: stop it before adding frames, pairs or resetting by hand")

    # --- recorded sweeps ------------------------------------------------------------------------------------------

    def addFrameSequence(self, frameSequence, segmentationSequence=None, progress=None, browserNode=None,
                         minDistanceMm: float = 3.0, minAngleDegrees: float = 5.0) -> list:
        """Add a recorded sweep (a sequence of frames) item by item, through the live frame selection.

        Where the pose is: a PLUS/SlicerIGT recording keeps the image sequence and an ``ImageToReference``
        transform sequence in one sequence browser, and a sequence stores no parent transforms. So when
        ``frameSequence`` is in a browser (``browserNode``, or the scene's browser that holds it) the browser is
        stepped to each item and the frame read from its proxy node with every transform above it, as the
        Sequences module shows it; the browser is put back on its item afterwards. A sequence in no browser is read
        item by item in each frame's own geometry (the pose in its IJK-to-RAS).

        The gland of each frame: the item of ``segmentationSequence`` at the same index value (its proxy, when it
        is in the browser), or the bundled frame segmenter's when ``segmentationSequence`` is ``None``.

        With a browser, the output transform after each update is recorded into a sequence synchronised with it
        (:data:`RESULT_SEQUENCE_NAME`, browsed in a transform node of its own, :data:`RESULT_PROXY_NAME`), so
        scrubbing the browser shows the registration as it was at each frame; the output transform keeps the
        session's latest.

        ``progress(index, status)`` is called after each item; :meth:`cancel` stops before the next one.

        Returns:
            The ``InteractionReport`` of every frame added (near-duplicates are skipped and counted in the status).

        Raises:
            MetaRegistrationLib.errors.MetaRegistrationError: naming the sequence for a missing item, or the frame
                whose update failed (the frames before it stay in the session).
        """
        import numpy as np
        from MetaRegistrationLib.live import FrameSelection, LiveStream
        from MetaRegistrationLib.sweep import Frame

        from . import conversions

        self._requireSession()
        self._refuseWhileLive()
        for sequence, what in ((frameSequence, "frame"), (segmentationSequence, "segmentation")):
            if sequence is None and what == "segmentation":
                continue
            if sequence is None or not sequence.IsA("vtkMRMLSequenceNode"):
                raise InputError(f"no {what} sequence given" if sequence is None else
                                 f"{conversions.nodeName(sequence)}: is not a sequence node")
        browser = browserNode or self._browserOf(frameSequence)
        reports = []

        def finish(frame, pending):
            reports.append(self.finishInteraction(pending))

        segment = None if segmentationSequence is not None else self.frameSegmenter().segment_frame
        stream = LiveStream(self._adaptInWorker, finish, FrameSelection(float(minDistanceMm), float(minAngleDegrees)),
                            segment, list(self._framePlanes), threaded=False)
        results = _ResultRecorder(self, frameSequence, browser)
        selected = browser.GetSelectedItemNumber() if browser is not None else None
        self._cancelRequested = False
        try:
            for n in range(frameSequence.GetNumberOfDataNodes()):
                if self._cancelRequested:
                    break
                value = frameSequence.GetNthIndexValue(n)
                self._frameDescription = f"{conversions.nodeName(frameSequence)} item {n + 1} ({value})"
                frameNode, glandNode = self._recordedNodes(frameSequence, segmentationSequence, browser, n, value)
                try:
                    image, pose = conversions.framePixelsFromNode(frameNode)
                    before = len(reports)
                    stream.offer(image, pose, self._glandReader(glandNode, None, image, pose))
                except InputError as error:
                    raise InputError(f"{self._frameDescription}: {error}") from None
                stream.poll()
                if stream.counts.failed:
                    raise InputError(stream.counts.last_error)
                if len(reports) > before and reports[-1].registered:
                    results.record(value)
                if progress is not None:
                    progress(n, f"{self._frameDescription}: {stream.counts.describe()}")
        finally:
            if browser is not None:
                browser.SetSelectedItemNumber(selected)
            results.synchronise()
        if reports:
            reports[-1].status += f"; sweep: {stream.counts.describe()}"
            self.statusText = reports[-1].status
        return reports

    def _browserOf(self, sequence):
        """The scene's sequence browser that holds ``sequence`` (master or synchronised), or ``None``."""
        for n in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
            browser = self.scene.GetNthNodeByClass(n, "vtkMRMLSequenceBrowserNode")
            if browser.IsSynchronizedSequenceNodeID(sequence.GetID(), True):
                return browser
        return None

    def _recordedNodes(self, frameSequence, segmentationSequence, browser, n: int, value: str):
        """(frame node, gland node or ``None``) of item ``n`` (index value ``value``) of a recording."""
        from . import conversions

        if browser is None:
            frameNode = frameSequence.GetNthDataNode(n)
        else:
            master = browser.GetMasterSequenceNode()
            browser.SetSelectedItemNumber(master.GetItemNumberFromIndexValue(value, False))
            frameNode = browser.GetProxyNode(frameSequence)
        glandNode = None
        if segmentationSequence is not None:
            synchronised = browser is not None and browser.IsSynchronizedSequenceNodeID(segmentationSequence.GetID(),
                                                                                          True)
            glandNode = (browser.GetProxyNode(segmentationSequence) if synchronised
                         else segmentationSequence.GetDataNodeAtValue(value))
            if glandNode is None:
                raise InputError(f"{conversions.nodeName(segmentationSequence)}: has no item at index value "
                                 f"{value!r} for frame {n + 1} of {conversions.nodeName(frameSequence)}")
        return frameNode, glandNode


RESULT_SEQUENCE_NAME = "MR to TRUS (MetaRegistration) per frame"
RESULT_PROXY_NAME = "MR to TRUS (MetaRegistration) at the browsed frame"


class _ResultRecorder:
    """The output transform after each update of a recorded sweep, as a sequence synchronised with its browser,
    whose proxy is a transform node of its own (:data:`RESULT_PROXY_NAME`): stepping the browser shows the
    registration as it was at that frame there, and never overwrites the session's output transform. A browser
    keeps one such sequence: the next recorded sweep on it replaces its items."""

    def __init__(self, logic, frameSequence, browser):
        self._logic, self._frameSequence, self._browser = logic, frameSequence, browser
        self.sequence = None

    def _existing(self):
        sequences = vtk.vtkCollection()
        self._browser.GetSynchronizedSequenceNodes(sequences, True)
        for n in range(sequences.GetNumberOfItems()):
            sequence = sequences.GetItemAsObject(n)
            if sequence.GetName() == RESULT_SEQUENCE_NAME:
                return sequence
        return None

    def record(self, value: str) -> None:
        transform = self._logic.outputTransformNode
        if self._browser is None or transform is None:
            return
        if self.sequence is None:
            self.sequence = self._existing()
            if self.sequence is None:
                self.sequence = self._logic.scene.AddNewNodeByClass("vtkMRMLSequenceNode", RESULT_SEQUENCE_NAME)
            self.sequence.RemoveAllDataNodes()
            self.sequence.SetIndexName(self._frameSequence.GetIndexName())
            self.sequence.SetIndexUnit(self._frameSequence.GetIndexUnit())
            self.sequence.SetIndexType(self._frameSequence.GetIndexType())
        self.sequence.SetDataNodeAtValue(transform, value)

    def synchronise(self) -> None:
        if self.sequence is None or self._browser.IsSynchronizedSequenceNodeID(self.sequence.GetID(), False):
            return
        self._browser.AddSynchronizedSequenceNodeID(self.sequence.GetID())
        proxy = self._browser.GetProxyNode(self.sequence)  # the Sequences logic, when present, has made one
        if proxy is None:
            proxy = self._logic.scene.AddNewNodeByClass("vtkMRMLGridTransformNode", RESULT_PROXY_NAME)
            self._browser.AddProxyNode(proxy, self.sequence, False)
        self._browser.SetOverwriteProxyName(self.sequence, False)
        self._browser.SetSaveChanges(self.sequence, False)
        proxy.SetName(RESULT_PROXY_NAME)  # adding it named it after the sequence
