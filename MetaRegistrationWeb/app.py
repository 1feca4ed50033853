"""``metareg-app``: the interactive sweep in a web browser, on 3D Slicer's own views (trame-slicer).

The page has a side panel (case, sweep, overlay, landmark pairs, evaluation, exports) and three Slicer views:
the TRUS sagittal plane (the plane of the frames; it follows the last acquired frame), the TRUS axial plane
(across the probe axis) and a 3D view. The TRUS is the background of the slice views, the registered MR the
foreground (opacity slider); the warped MR gland (orange) shows as a contour against the TRUS gland of the acquired
frames (green); the frames' planes, the gland surface and the landmarks show in 3D. Volume rendering is off: on a
software renderer it would cost seconds per frame. Under the sweep controls the last update's quality signals
(``MetaRegistrationLib.quality``, from the Logic's sweep table) need no ground truth: folding (with an alarm),
fit to the acquired gland, how far the registration moved, and its spread (which does not predict the error).

Every action goes through :class:`MetaRegistrationWeb.workflow.SweepWorkflow`, hence the Slicer module's Logic.
"Acquire" adds the next frame of the sweep; "Play" streams a simulated probe's sweep over OpenIGTLink (a loopback
``pyigtl`` server standing in for PLUS, received into nodes as OpenIGTLinkIF would) into the Logic's live tracking,
so the frame selection and the one-pending-update stream run as in the operating room.
The gradient steps of an interaction run in a worker thread, so the page keeps answering (a progress bar shows)
while the network adapts. Errors show in the page; the server keeps running.

Element ids the browser tests use: ``acquire``, ``play``, ``reset``, ``place-mr``, ``place-trus``,
``frames-acquired``, ``tre-value``, ``dsc-value``, ``status``, ``error``, ``case-id``, ``data-dir``, ``load-case``,
``export-transform``, ``export-warped-mr``, ``export-table``, ``export-scene``; the quality read-outs ``quality``
(absent before the first registration), ``quality-alarm`` (present only on a folding alarm), ``quality-fold``,
``quality-fit``, ``quality-change`` (absent at the first update) with ``quality-change-median`` and
``quality-change-p95``, ``quality-spread`` and ``quality-spread-level`` (absent without a spread); the views carry
``data-view`` = ``sagittal``, ``axial`` or ``3d``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import sys
import tempfile

import numpy as np

from MetaRegistrationLib.errors import MetaRegistrationError
from MetaRegistrationLib.quality import FOLDING_ALARM_PCT, SPREAD_CAVEAT

from . import workflow as workflow_module

LOGGER = logging.getLogger(__name__)
PLAY_FRAMES = 60
"""Frames the simulated probe streams over one sweep of the gland while playing."""
PLAY_FRAME_SECONDS = 0.125
"""The probe's frame period: a 60-frame sweep takes 7.5 s."""
PLAY_POLL_SECONDS = 0.05
"""How often the app applies received messages and polls the live tracking (as Slicer's module does)."""
SWEEP_TABLE_COLUMNS = (("frames", "frames"), ("updates", "updates"), ("pairs", "pairs"), ("TRE mm", "tre"),
                       ("inverse TRE mm", "inverse_tre"), ("DSC", "dsc"), ("spread mm", "spread"),
                       ("spread level", "spread_level"), ("s", "seconds"))
"""The evaluation panel's table: (title, key of a page row)."""
SPREAD_CAPTION = ("Spread: how far the registration moves when each group of the frames is left out of its inputs "
                  f"in turn; {SPREAD_CAVEAT}: it is not a confidence.")


class MetaRegistrationWebApp:
    """The trame server, the Slicer views and the side panel around one :class:`SweepWorkflow`.

    Args:
        dataDir, caseId: the case to open (``caseId`` defaults to the folder's first case); the synthetic phantom
            when ``dataDir`` is None.
        modelPath: the model; the bundled meta-initialisation when None.
        method: the sweep method (``MetaRegistrationLib.registration.METHODS``) that registers the case.
        server: a trame server (a new one when None).
    """

    def __init__(self, dataDir: str | None = None, caseId: str | None = None, modelPath: str | None = None,
                 method: str = "meta", server=None, frameGlands: str = "true"):
        from trame.app import get_server
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.server = server or get_server(client_type="vue3")
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicerApp = SlicerApp()
        register_rca_factories(self.slicerApp.view_manager, self.server)
        self.layoutManager = LayoutManager(self.slicerApp.scene, self.slicerApp.view_manager, self.server)
        self.layoutManager.register_layout_dict({"MetaRegistration": _layout()})
        self.modelPath = modelPath
        self.method = method
        self.frameGlands = frameGlands
        self.workflow: workflow_module.SweepWorkflow | None = None
        self._playing = False
        self._pairWaiting = False
        self._observations = []
        self.state.update({
            "trame__title": "MetaRegistration", "data_dir": dataDir or "", "case_id": caseId or "",
            "case_label": "", "busy": False, "playing": False, "error": "", "status": "",
            "frames_acquired": 0, "frames_total": 0, "registered": False, "opacity": 0.5, "rows": [],
            "tre": "", "dsc": "", "plot": "", "pairs": [], "placing": "", "quality": {},
        })
        self.state.change("opacity")(self._onOpacity)
        self.ctrl.on_client_connected.add(self._fitViews)
        self._buildUi()
        self.layoutManager.set_layout("MetaRegistration")
        self._guarded(self._load, dataDir, caseId)

    # --- case -----------------------------------------------------------------------------------------------------

    def _load(self, dataDir: str | None, caseId: str | None) -> None:
        """Open a case (the phantom when ``dataDir`` is empty); a bad case leaves the current one open."""
        from MetaRegistrationLib.phantom import open_case

        case = open_case(dataDir or None, (caseId or None) if dataDir else None)
        label = f"{case.case_id} ({dataDir})" if dataDir else "synthetic phantom"
        scene = self.slicerApp.scene
        self._stopObserving()
        scene.Clear(False)  # views, slice nodes and the interaction node are singletons: they stay
        self.workflow = None
        self.workflow = workflow_module.SweepWorkflow(scene, case, self.modelPath, method=self.method,
                                                      frameGlands=self.frameGlands)
        for node in (self.workflow.mrPairPoints, self.workflow.trusPairPoints):
            node.SetControlPointLabelFormat("P%d")  # the n-th MR point pairs with the n-th TRUS point
            self._observations.append((node, node.AddObserver(node.PointPositionDefinedEvent, self._onPointPlaced)))
        self._showCase()
        self.state.update({"case_label": label, "case_id": case.case_id if dataDir else "", "error": ""})
        self._refresh(self.workflow.logic.statusText)

    def _stopObserving(self) -> None:
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []

    def _showCase(self) -> None:
        """TRUS in the background of the slice views, oriented on the TRUS axes; the registered MR in the foreground
        once it exists; models, segmentations and markups in their views."""
        nodes = self.workflow.nodes
        for name in ("MR", "MR segmentation", "TRUS segmentation", "MR labelmap", "TRUS labelmap"):
            for n in range(nodes[name].GetNumberOfDisplayNodes()):
                nodes[name].GetNthDisplayNode(n).SetVisibility(False)
        self.slicerApp.display_manager.show_volume_in_slice_background(nodes["TRUS"])
        self.slicerApp.display_manager.show_volume_in_slice_foreground(None)  # until this case's first registration
        grid = self.workflow.case.fixed_image.grid
        axes = workflow_module.trusViewAxes(grid)
        for view in self.slicerApp.view_manager.get_slice_views():
            normal, transverse = axes[view.get_singleton_tag()]
            view.get_view_node().SetSliceToRASByNTP(*normal, *transverse, *axes["centre"], 0)
        self._fitViews()

    def _fitViews(self, *_) -> None:
        """Fit the views to the TRUS (again when a page connects: a view's size is known only then)."""
        for view in self.slicerApp.view_manager.get_slice_views():
            view.fit_view_to_content()
            view.schedule_render()
        self._fitThreeD()

    def _fitThreeD(self) -> None:
        """Frame what the 3D view holds, seen obliquely (the frame planes would be edge-on or face-on otherwise)."""
        for view in self.slicerApp.view_manager.get_threed_views():
            view.reset_view()
            camera = view.renderer().GetActiveCamera()
            camera.Azimuth(40)
            camera.Elevation(25)
            view.renderer().ResetCamera()
            view.schedule_render()

    def _showRegisteredMr(self) -> None:
        volume = self.workflow.logic.outputVolumeNode
        for view in self.slicerApp.view_manager.get_slice_views():
            if view.get_foreground_volume_id() != volume.GetID():
                view.set_foreground_volume_id(volume.GetID())
            view.set_foreground_opacity(float(self.state.opacity))

    def _onOpacity(self, opacity, **_):
        for view in self.slicerApp.view_manager.get_slice_views():
            view.set_foreground_opacity(float(opacity))

    # --- interactions ---------------------------------------------------------------------------------------------

    def acquireNextFrame(self) -> None:
        """Acquire the next frame of the sweep and adapt (the button). The work runs as a task of its own, so that
        the page's other messages (pause, the opacity slider) are answered meanwhile."""
        if self.state.busy or self.workflow is None:
            return
        self.state.busy = True  # now, not when the task starts: a second click must not start a second frame
        asyncio.ensure_future(self._interact(self.workflow.prepareNextFrame))

    def togglePlay(self) -> None:
        """Play: the simulated probe sweeps the gland and streams its frames over OpenIGTLink (a loopback server, as
        PLUS would), which the workflow receives into nodes and registers with the Logic's live tracking, until the
        sweep ends or Pause is pressed (the running update is finished first)."""
        if self.state.busy and not self._playing:
            return
        self._playing = not self._playing
        self.state.playing = self._playing
        if self._playing:
            asyncio.ensure_future(self._play())

    async def _play(self) -> None:
        from MetaRegistrationLib.igtl import SimulatedProbe

        flow = self.workflow
        probe = None
        try:
            probe = SimulatedProbe(flow.case, count=PLAY_FRAMES, period_s=PLAY_FRAME_SECONDS)
            probe.start()
            self._refresh(flow.startLive("127.0.0.1", probe.port))
            self.state.flush()
            while self._playing and self.workflow is flow and not probe.finished:
                self._showLiveReport(flow.pollLive())
                await asyncio.sleep(PLAY_POLL_SECONDS)
            if self.workflow is flow:
                self._showLiveReport(flow.stopLive())
        except Exception as error:  # noqa: BLE001 - shown in the page; the server keeps serving
            self._showFailure(error, "play")
        finally:
            if flow.live:
                flow.stopLive()
            if probe is not None:
                probe.stop()
            self._playing = False
            self.state.playing = False
            self.state.flush()

    def _showLiveReport(self, report) -> None:
        """Refresh the page after a live update (and the status line, frames seen / accepted, at every poll)."""
        flow = self.workflow
        if report is not None:
            if flow.registered:
                self._showRegisteredMr()
            if flow.logic.liveFrames:
                self._followFrame(flow.logic.liveFrames[-1])
            self._refresh(flow.logic.statusText)
        else:
            self.state.status = flow.logic.statusText
        self.state.flush()

    async def _interact(self, prepare) -> None:
        """Prepare (main thread), adapt (worker thread), write the outputs (main thread), refresh the page."""
        self.state.update({"busy": True, "error": ""})
        self.state.flush()
        try:
            pending = prepare()
            await asyncio.to_thread(pending.adapt)
            firstRegistration = not self.workflow.registered
            report = self.workflow.finish(pending)
            if self.workflow.registered:
                self._showRegisteredMr()
                if firstRegistration:
                    self._fitThreeD()
            if pending.frame is not None:
                self._followFrame(pending.frame)
            self._refresh(report.status)
        except Exception as error:  # noqa: BLE001 - shown in the page; the server keeps serving
            self._showFailure(error, "interaction")
        finally:
            self.state.busy = False
            self.state.flush()
        if self._pairWaiting and self.workflow is not None:
            self._pairWaiting = False
            self._startPair()

    def _followFrame(self, frame) -> None:
        """Move the sagittal view onto the frame just acquired."""
        from MetaRegistrationSlicer.conversions import lpsToRas

        centre = lpsToRas(frame.pose[:3, 3] + frame.pose[:3, :2] @ (np.array(frame.shape[::-1]) - 1) / 2)
        for view in self.slicerApp.view_manager.get_slice_views():
            if view.get_singleton_tag() == "sagittal":
                view.get_view_node().JumpSliceByOffsetting(*centre)

    def reset(self) -> None:
        if self.state.busy or self.workflow is None:
            return
        self._guarded(lambda: self._refresh(self.workflow.reset().status))

    def placePoint(self, side: str) -> None:
        """Enter place mode for one point of a pair: ``side`` is "mr" (click on the registered MR) or "trus"."""
        if self.workflow is None:
            return
        if side == "mr" and not self.workflow.registered:
            self._showError("place the MR point on the registered MR: acquire 2 frames first")
            return
        node = self.workflow.mrPairPoints if side == "mr" else self.workflow.trusPairPoints
        self.slicerApp.markups_logic.place_node(node, persistent=False)
        self.state.placing = side

    def _onPointPlaced(self, *_):
        """A point was clicked: when it completes a pair, the pair is an interaction."""
        self.state.placing = ""
        self.state.pairs = self._pairRows()
        if self.workflow.hasNewPair():
            self._startPair()
        self.state.flush()

    def _startPair(self) -> None:
        """Give the new pair(s) to the registration now, or after the running interaction when busy."""
        if self.state.busy:
            self._pairWaiting = True
            return
        self.state.busy = True
        asyncio.ensure_future(self._interact(self.workflow.preparePair))

    def load(self) -> None:
        """The Load button: the case of the data folder and case ID fields (the phantom with no folder)."""
        if self.state.busy:
            return
        self._guarded(self._load, self.state.data_dir.strip() or None, self.state.case_id.strip() or None)

    async def export(self, what: str):
        """Bytes of an export (:data:`workflow.EXPORTS`) for the browser's download."""
        try:
            with tempfile.TemporaryDirectory() as folder:
                path = self.workflow.export(what, folder)
                return self.server.protocol.addAttachment(path.read_bytes())
        except MetaRegistrationError as error:
            self._showError(error)
            self.state.flush()
            return None

    # --- page state -----------------------------------------------------------------------------------------------

    def _guarded(self, action, *args) -> None:
        try:
            action(*args)
        except Exception as error:  # noqa: BLE001 - shown in the page; the server keeps serving
            self._showFailure(error, "action")

    def _showFailure(self, error: Exception, what: str) -> None:
        """A user error shows as its one line; anything else is a bug: logged with its traceback, and shown too."""
        if not isinstance(error, MetaRegistrationError):
            LOGGER.exception("%s failed", what)
        self._showError(error)

    def _showError(self, error) -> None:
        text = str(error)
        self.state.error = text[:1].upper() + text[1:]
        self.state.status = "Error: see the message"

    def _refresh(self, status: str) -> None:
        """Copy the workflow's read-outs into the page state."""
        flow = self.workflow
        rows = flow.rows()
        last = rows[-1] if rows else None
        self.state.update({
            "status": status, "frames_acquired": flow.framesAcquired,
            "frames_total": flow.framesAcquired + flow.framesLeft, "registered": flow.registered,
            "rows": [{"frames": r["frames"], "updates": r["updates"], "pairs": r["landmark_pairs"],
                      "tre": f"{r['tre_mm']:.3f}", "inverse_tre": f"{r['inverse_tre_mm']:.3f}",
                      "dsc": f"{r['dsc']:.4f}", "spread": _number(r["spread_mm"], 2), "spread_level": r["spread_level"],
                      "seconds": f"{r['seconds']:.2f}"}
                     for r in rows],
            "tre": f"{last['tre_mm']:.3f}" if last else "", "dsc": f"{last['dsc']:.4f}" if last else "",
            "quality": _qualityReadouts(last) if last else {},
            "plot": _plotDataUrl(rows), "pairs": self._pairRows(),
        })

    def _pairRows(self) -> list[dict]:
        given = set(self.workflow.logic.givenLandmarkLabels)

        def text(point):
            return "" if point is None else ", ".join(f"{value:.4f}" for value in point)

        return [{"label": p["label"], "mr": text(p["mr"]), "trus": text(p["trus"]),
                 "error": "" if p["error_mm"] is None else f"{p['error_mm']:.2f} mm",
                 "used": "yes" if p["label"] in given else "no"} for p in self.workflow.pairs()]

    # --- page -----------------------------------------------------------------------------------------------------

    def _buildUi(self) -> None:
        from trame.widgets import html
        from trame.widgets import vuetify3 as v3
        from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout

        with SinglePageWithDrawerLayout(self.server, full_height=True) as layout:
            layout.title.set_text("MetaRegistration: MR to live TRUS")
            with layout.toolbar:
                v3.VSpacer()
                html.Span("{{ case_label }}", classes="text-body-2 mr-4")
            with layout.drawer as drawer:
                drawer.width = 460
                with html.Div(classes="pa-3 text-body-2"):
                    self._casePanel(v3, html)
                    self._sweepPanel(v3, html)
                    self._pairPanel(v3, html)
                    self._evaluationPanel(v3, html)
            with layout.content:
                with html.Div(style="position: relative; width: 100%; height: calc(100vh - 64px);"
                                    "display: flex;"):
                    self.layoutManager.initialize_layout_grid(layout)
        self.ui = layout

    def _casePanel(self, v3, html) -> None:
        html.Div("Case", classes="text-subtitle-1")
        v3.VTextField(v_model=("data_dir",), label="Data folder (empty: phantom)", density="compact",
                      hide_details=True, id="data-dir")
        with html.Div(classes="d-flex align-center mt-1"):
            v3.VTextField(v_model=("case_id",), label="Case ID", density="compact", hide_details=True, id="case-id")
            v3.VBtn("Load", click=self.load, disabled=("busy",), classes="ml-2", id="load-case")
        v3.VAlert(v_if=("error",), text=("error",), type="error", density="compact", classes="mt-2", id="error",
                  closable=True, click_close="error = ''")

    def _sweepPanel(self, v3, html) -> None:
        html.Div("Sweep", classes="text-subtitle-1 mt-3")
        with html.Div(classes="d-flex align-center"):
            v3.VBtn("Acquire next frame", click=self.acquireNextFrame, color="primary", id="acquire",
                    disabled=("busy || playing || frames_acquired >= frames_total",))
            v3.VBtn(text=("playing ? 'Pause' : 'Play'",), click=self.togglePlay, classes="ml-2", id="play",
                    disabled=("!playing && frames_acquired >= frames_total",))
            v3.VBtn("Reset", click=self.reset, classes="ml-2", variant="outlined", id="reset",
                    disabled=("busy || playing",))
        html.Div("Frames acquired: <span id='frames-acquired'>{{ frames_acquired }}</span> / {{ frames_total }}",
                 classes="mt-2")
        v3.VProgressLinear(indeterminate=("busy",), model_value=0, color="primary", classes="my-1", id="busy")
        html.Div("{{ status }}", id="status", classes="text-caption")
        self._qualityPanel(v3, html)
        v3.VSlider(v_model=("opacity",), min=0, max=1, step=0.05, label="MR overlay", density="compact",
                   hide_details=True, classes="mt-2")

    def _qualityPanel(self, v3, html) -> None:
        """The last update's quality signals (``quality`` page state); hidden before the first registration."""
        with html.Div(v_if=("quality.fold",), id="quality", classes="mt-2"):
            html.Div("Quality of the last update (no ground truth)", classes="text-subtitle-2")
            v3.VAlert(v_if=("quality.alarm",), type="error", density="compact", id="quality-alarm",
                      text=f"Folding alarm: the registration folds more than {FOLDING_ALARM_PCT} % of the TRUS "
                           "voxels; tissue does not fold, do not trust this registration")
            html.Div("Folding <b id='quality-fold'>{{ quality.fold }}</b> % of the TRUS voxels")
            html.Div("Fit to the acquired gland (DSC) <b id='quality-fit'>{{ quality.fit }}</b>")
            html.Div("Moved since the previous update: median <b id='quality-change-median'>"
                     "{{ quality.change_median }}</b> mm, p95 <b id='quality-change-p95'>{{ quality.change_p95 }}</b>"
                     " mm", v_if=("quality.change_median",), id="quality-change")
            with html.Div(v_if=("quality.spread_level",), classes="d-flex align-center"):
                html.Span("Spread <b id='quality-spread'>{{ quality.spread }}</b> mm")
                v3.VChip("{{ quality.spread_level }}", size="small", classes="ml-1", id="quality-spread-level")
            html.Div(SPREAD_CAPTION, classes="text-caption")

    def _pairPanel(self, v3, html) -> None:
        html.Div("Landmark pairs", classes="text-subtitle-1 mt-3")
        html.Div("Click 'MR point' then a feature on the registered MR, 'TRUS point' then the same feature on the "
                 "TRUS. A complete pair refines the registration; its residual error is shown (the case's own "
                 "landmarks below are never given to it).", classes="text-caption")
        with html.Div(classes="d-flex align-center mt-1"):
            v3.VBtn("MR point", click=(self.placePoint, "['mr']"), disabled=("busy || !registered",), id="place-mr",
                    color=("placing === 'mr' ? 'amber' : undefined",))
            v3.VBtn("TRUS point", click=(self.placePoint, "['trus']"), disabled=("busy",), id="place-trus",
                    classes="ml-2", color=("placing === 'trus' ? 'light-blue' : undefined",))
        with v3.VTable(density="compact", v_if=("pairs.length",), id="pairs"):
            with html.Tbody():
                with html.Tr(v_for="p in pairs", key="p.label"):
                    html.Td("{{ p.label }}")
                    html.Td("MR {{ p.mr }}", classes="pair-mr")
                    html.Td("TRUS {{ p.trus }}", classes="pair-trus")
                    html.Td("{{ p.error }}", classes="pair-error")
                    html.Td("{{ p.used === 'yes' ? 'used' : 'waiting' }}")

    def _evaluationPanel(self, v3, html) -> None:
        html.Div("Evaluation (case landmarks, never used by the registration)", classes="text-subtitle-1 mt-3")
        html.Div("TRE <b id='tre-value'>{{ tre }}</b> mm, DSC <b id='dsc-value'>{{ dsc }}</b>",
                 v_if=("tre",))
        with v3.VTable(density="compact", id="sweep-table", height=200, fixed_header=True):
            with html.Thead():
                with html.Tr():
                    for title, _ in SWEEP_TABLE_COLUMNS:
                        html.Th(title, classes="px-1")
            with html.Tbody():
                with html.Tr(v_for="r in rows", key="r.updates"):
                    for _, key in SWEEP_TABLE_COLUMNS:
                        html.Td(f"{{{{ r.{key} }}}}", classes="px-1")
        html.Img(src=("plot",), v_if=("plot",), style="width: 100%;", id="plot")
        with html.Div(classes="d-flex flex-wrap mt-2"):
            for what, filename in workflow_module.EXPORTS.items():
                trigger = self.ctrl.trigger_name(self.export)
                v3.VBtn(filename, size="small", variant="tonal", classes="mr-1 mb-1", id=f"export-{what}",
                        prepend_icon="mdi-download",
                        disabled=("!registered",) if what in ("transform", "warped-mr") else False,
                        click=f"utils.download('{filename}', trigger('{trigger}', ['{what}']), "
                              "'application/octet-stream')")


def _layout():
    """TRUS sagittal (large, left), TRUS axial and 3D (right)."""
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

    sagittal = ViewLayoutDefinition.slice_view("Sagittal", label="sagittal", color="#EFD64D")
    axial = ViewLayoutDefinition.slice_view("Axial", label="axial", color="#F34A33")
    threeD = ViewLayoutDefinition.threed_view(label="3d")
    return Layout(LayoutDirection.Horizontal, [sagittal, Layout(LayoutDirection.Vertical, [axial, threeD])],
                  flex_sizes=["3", "2"])


def _number(value: float, digits: int) -> str:
    """A number with ``digits`` decimals; "" for NaN (not computable)."""
    return "" if np.isnan(value) else f"{value:.{digits}f}"


def _qualityReadouts(row: dict) -> dict:
    """The quality panel's texts from a sweep table row (``QUALITY_COLUMNS``; "" where not computable)."""
    return {"fold": f"{row['fold_pct']:.2f}", "alarm": bool(row["fold_alarm"]), "fit": f"{row['acquired_dsc']:.2f}",
            "change_median": _number(row["change_median_mm"], 1), "change_p95": _number(row["change_p95_mm"], 1),
            "spread": _number(row["spread_mm"], 2), "spread_level": row["spread_level"]}


def _plotDataUrl(rows: list[dict]) -> str:
    """TRE, spread (both mm) and DSC against frames as a PNG data URL ("" with no row)."""
    if not rows:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = [r["frames"] + 0.1 * r["landmark_pairs"] for r in rows]
    figure, treAxis = plt.subplots(figsize=(4.2, 2.2), dpi=100)
    lines = treAxis.plot(frames, [r["tre_mm"] for r in rows], "o-", color="tab:red", label="TRE")
    lines += treAxis.plot(frames, [r["spread_mm"] for r in rows], "^:", color="tab:orange", label="spread")
    treAxis.set_xlabel("frames acquired")
    treAxis.set_ylabel("mm")
    dscAxis = treAxis.twinx()
    lines += dscAxis.plot(frames, [r["dsc"] for r in rows], "s--", color="tab:blue", label="DSC")
    dscAxis.set_ylabel("DSC", color="tab:blue")
    dscAxis.legend(handles=lines, fontsize="x-small", loc="best")  # the top axes: drawn over every line
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def main(dataDir: str | None, caseId: str | None, modelPath: str | None, port: int, method: str = "meta",
         frameGlands: str = "true") -> int:
    """Serve the app on 127.0.0.1:``port`` until interrupted (the ``metareg-app`` command)."""
    import os

    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    sys.argv = sys.argv[:1]  # trame reads its own options from the command line; ours are parsed already
    app = MetaRegistrationWebApp(dataDir, caseId, modelPath, method, frameGlands=frameGlands)
    app.server.start(port=port, host="127.0.0.1", open_browser=False, timeout=0)
    return 0
