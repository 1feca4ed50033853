"""The web app (``metareg-app``) driven in headless Chromium as a clinician uses it.

The app runs in its own process on a free loopback port; Playwright drives Debian's Chromium (``make test``
installs it; ``playwright install`` is never used). Every wait has a bound, and the server started here is
stopped here. Run with ``-s`` to see the click-to-result latency of each frame.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from MetaRegistrationLib.metrics import evaluate_transform
from MetaRegistrationLib.models import load_model
from MetaRegistrationLib.phantom import make_phantom_case
from MetaRegistrationLib.registration import sweep_frames, sweep_session

pytest.importorskip("trame_slicer", reason="the web app's extra (trame-slicer) is not installed")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

CHROMIUM = os.environ.get("METAREG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_SECONDS = 120
RESULT_SECONDS = 30
"""Bound on waiting for one frame's result in the page (the target, 3 s, is measured and printed, not asserted)."""
FRAMES = 10
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """``metareg-app`` (the phantom case) on a free loopback port, stopped after the module's tests."""
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "server.log"
    env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow")
    with log.open("w") as output:
        server = subprocess.Popen([sys.executable, "-m", "MetaRegistrationWeb.command", "--port", str(port)], cwd=REPO,
                                  env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if server.poll() is not None:
                pytest.fail(f"metareg-app exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"metareg-app did not answer within {SERVER_START_SECONDS} s:\n"
                                f"{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM}: no Chromium; `make test` installs Debian's chromium (or set METAREG_CHROMIUM)")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(RESULT_SECONDS * 1000)
    page.goto(app_url)
    page.wait_for_selector("#reset:not([disabled])")
    page.click("#reset")  # each test starts from 0 frames (the server is shared)
    page.wait_for_function("document.querySelector('#frames-acquired').textContent.trim() === '0'")
    wait_for_views_to_settle(page)
    yield page
    context.close()


def load_case(page, data_dir: str, case_id: str) -> None:
    """Fill the case fields and press Load (empty fields: the phantom)."""
    page.fill("#data-dir", data_dir)
    page.fill("#case-id", case_id)
    page.click("#load-case")


def wait_for_views_to_settle(page, seconds: float = 2.0) -> None:
    """Give the server-rendered views time to stream their latest image."""
    page.wait_for_selector(".image-display-area")
    time.sleep(seconds)


def view(page, name: str):
    """The element of a Slicer view: "sagittal" (left, large), "axial" (top right) or "3d"."""
    return page.query_selector_all(".image-display-area")[{"sagittal": 0, "axial": 1, "3d": 2}[name]]


def click_in(page, element, fx: float, fy: float) -> None:
    box = element.bounding_box()
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])


def text(page, selector: str) -> str:
    return page.inner_text(selector).strip()


def point(cell_text: str) -> np.ndarray:
    """An LPS point as the pairs table writes it: "MR x, y, z"."""
    return np.array([float(value) for value in cell_text.split(" ", 1)[1].split(",")])


def screenshot_array(element) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(element.screenshot()), format="png")[..., :3]


def number(page, selector: str) -> float:
    """The finite number an element shows."""
    value = float(text(page, selector))
    assert np.isfinite(value), f"{selector} shows {value}"
    return value


def quality_readouts(page) -> dict:
    """The quality panel's numbers and spread level (after the second update: all are computable)."""
    readouts = {name: number(page, f"#quality-{name}") for name in ("fold", "fit", "change-median", "change-p95",
                                                                     "spread")}
    readouts["spread_level"] = text(page, "#quality-spread-level")
    assert readouts["spread_level"] in ("small", "medium", "large")
    return readouts


def library_reference(mr_point: np.ndarray, trus_point: np.ndarray):
    """TRE and DSC the library computes for the phantom's sweep of FRAMES frames, then the landmark pair."""
    case, _ = make_phantom_case(0)
    session = sweep_session(case, None)  # the bundled model, as the app uses
    for frame in sweep_frames(case, FRAMES):
        session.add_frames([frame])
    result = session.add_landmarks(mr_point[None], trus_point[None])
    return evaluate_transform(case, result.transform)


def test_a_clinician_sweeps_places_a_pair_and_reads_the_evaluation(page):
    sagittal_before = screenshot_array(view(page, "sagittal"))
    assert text(page, "#frames-acquired") == "0"
    assert page.query_selector("#quality") is None  # no registration, no quality signals

    latencies = []
    for frames in range(1, FRAMES + 1):
        start = time.perf_counter()
        page.click("#acquire")
        page.wait_for_function(f"document.querySelector('#frames-acquired').textContent.trim() === '{frames}'")
        if frames >= 2:
            page.wait_for_function(f"document.querySelectorAll('#sweep-table tbody tr').length === {frames - 1}")
        latencies.append(time.perf_counter() - start)
        if frames == 2:  # the first registration: no previous one to have moved from
            assert 0 <= number(page, "#quality-fit") <= 1 and number(page, "#quality-fold") >= 0
            assert page.query_selector("#quality-change") is None
        page.wait_for_selector("#acquire:not([disabled])" if frames < FRAMES else "#acquire[disabled]")
    print("\nclick-to-result seconds per frame:", " ".join(f"{seconds:.2f}" for seconds in latencies),
          f"(max {max(latencies):.2f})")
    assert "10 frames" in text(page, "#status")

    # One landmark pair: the MR point on the registered MR in the sagittal view, the TRUS point in the axial view.
    page.click("#place-mr")
    click_in(page, view(page, "sagittal"), 0.5, 0.5)
    page.wait_for_selector("#pairs .pair-mr")
    page.click("#place-trus")
    click_in(page, view(page, "axial"), 0.5, 0.55)
    page.wait_for_function("document.querySelectorAll('#sweep-table tbody tr').length === 10")
    page.wait_for_selector("#acquire[disabled]")  # all frames acquired, and not busy with the pair any more
    last_row = [cell.strip() for cell in page.inner_text("#sweep-table tbody tr:last-child").split("\t")]
    steps = load_model(None).settings.updates_per_interaction  # per interaction: 9 of frames, then the pair's
    assert last_row[:3] == ["10", str(10 * steps), "1"]  # frames, updates (gradient steps in all), pairs
    tre, dsc = float(text(page, "#tre-value")), float(text(page, "#dsc-value"))
    quality = quality_readouts(page)
    alarm_shown = page.query_selector("#quality-alarm") is not None

    assert text(page, "#pairs .pair-error").endswith(" mm")  # the pair's residual after the update
    mr_point = point(text(page, "#pairs .pair-mr"))
    trus_point = point(text(page, "#pairs .pair-trus"))
    expected = library_reference(mr_point, trus_point)
    assert tre == pytest.approx(expected.tre_mm, abs=0.01)
    assert dsc == pytest.approx(expected.dsc, abs=0.001)

    wait_for_views_to_settle(page)
    sagittal_after = screenshot_array(view(page, "sagittal"))
    # The registered MR overlay (and the gland contours) changed what the sagittal view shows.
    assert np.abs(sagittal_after - sagittal_before).mean() > 0.02

    with page.expect_download() as download:
        page.click("#export-table")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert len(rows) == 10 and float(rows[-1]["tre_mm"]) == pytest.approx(tre, abs=0.001)
    # The quality panel shows the Logic's last row: the alarm only when it rang.
    assert alarm_shown == (float(rows[-1]["fold_alarm"]) == 1)
    assert quality["spread"] == pytest.approx(float(rows[-1]["spread_mm"]), abs=0.005)
    assert quality["spread_level"] == rows[-1]["spread_level"] == last_row[7]


def test_a_bad_case_shows_a_message_and_the_app_keeps_working(page, tmp_path):
    page.click("#acquire")
    page.wait_for_function("document.querySelector('#frames-acquired').textContent.trim() === '1'")
    load_case(page, str(tmp_path), "no-such-case")
    page.wait_for_selector("#error")
    assert str(tmp_path) in text(page, "#error")
    assert text(page, "#frames-acquired") == "1"  # the open case is kept
    # The server still serves: the phantom loads again and a frame can be acquired.
    load_case(page, "", "")
    page.wait_for_function("document.querySelector('#frames-acquired').textContent.trim() === '0'")
    page.click("#acquire")
    page.wait_for_function("document.querySelector('#frames-acquired').textContent.trim() === '1'")


def test_play_acquires_frame_after_frame_until_paused(page):
    page.click("#play")
    page.wait_for_function("Number(document.querySelector('#frames-acquired').textContent) >= 3")
    page.click("#play")  # now "Pause"
    page.wait_for_selector("#acquire:not([disabled])")  # paused, and the running update finished
    paused_at = int(text(page, "#frames-acquired"))
    time.sleep(3)
    assert int(text(page, "#frames-acquired")) == paused_at < FRAMES
    assert len(page.query_selector_all("#sweep-table tbody tr")) == paused_at - 1
