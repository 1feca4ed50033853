"""``metareg live`` on loopback: a pyigtl server sends a 30-frame sweep as IMAGE + TRANSFORM messages, the client
registers it, and the numbers equal a library session fed the frames it accepted."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

pyigtl = pytest.importorskip("pyigtl")

from MetaRegistrationLib.data import Dataset  # noqa: E402
from MetaRegistrationLib.geometry import LPS_TO_RAS, apply_affine  # noqa: E402
from MetaRegistrationLib.metrics import evaluate_transform  # noqa: E402
from MetaRegistrationLib.registration import run_sweep, sweep_session  # noqa: E402
from MetaRegistrationLib.sweep import DEPTH_AXIS, PROBE_AXIS, gland_extent, plane_pose, sample_frame  # noqa: E402
from Training import cli, live  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _send_sweep(server, case, count: int, period_s: float) -> None:
    """PLUS-like messages: per frame a TRANSFORM ImageToReference (RAS), then the IMAGE in its own pixel frame."""
    grid = case.fixed_image.grid
    low, high = gland_extent(case.fixed_labels.array[0])
    shape = (grid.size[PROBE_AXIS], grid.size[DEPTH_AXIS])
    spacing = np.diag([grid.spacing[DEPTH_AXIS], grid.spacing[PROBE_AXIS], 1.0, 1.0])
    while not server.is_connected():
        time.sleep(0.02)
    for j in np.linspace(high + 0.5, low - 0.5, count):
        index_to_world = grid.index_to_world
        pose = plane_pose(apply_affine(index_to_world, [0.0, j, 0.0]), index_to_world[:3, DEPTH_AXIS],
                          index_to_world[:3, PROBE_AXIS])
        frame = sample_frame(case.fixed_image, case.fixed_labels.array[0], pose, shape)
        image_to_reference = LPS_TO_RAS @ pose @ np.linalg.inv(spacing) @ LPS_TO_RAS  # RAS, as Slicer reads it
        server.send_message(pyigtl.TransformMessage(image_to_reference, device_name="ImageToReference"), wait=True)
        server.send_message(pyigtl.ImageMessage(frame.image[None].astype(np.float32), ijk_to_world_matrix=spacing,
                                                device_name="Image"), wait=True)
        time.sleep(period_s)


def test_a_loopback_stream_is_registered_like_a_library_session_of_its_accepted_frames(real_data_dir, capsys):
    dataset = Dataset(real_data_dir)
    case_id = dataset.split("val")[0]
    case = dataset.load(case_id)
    port = _free_port()
    server = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
    sender = threading.Thread(target=_send_sweep, args=(server, case, 30, 0.2), daemon=True)
    sender.start()
    args = cli.build_parser(["live"]).parse_args(["live", "--igtl", f"127.0.0.1:{port}", "--data", str(real_data_dir),
                                                  "--case", case_id, "--frame-glands", "true", "--idle-timeout", "2"])
    rows = []
    try:
        stream = live.follow_stream(args, rows.append)
    finally:
        server.stop()
    sender.join(timeout=10)
    counts = stream.counts
    assert counts.seen >= 25 and counts.failed == 0, counts.describe()
    assert len(stream.frames) >= 3 and counts.skipped > 0, counts.describe()
    assert rows[0] == ",".join(live.ROW_COLUMNS) and len(rows) == len(stream.frames)  # a row per update
    plain = sweep_session(case)
    *_, result = run_sweep(plain, stream.frames)
    expected = evaluate_transform(case, result.transform)
    frames, updates, _, tre_mm, dsc = rows[-1].split(",")
    assert int(frames) == len(stream.frames)
    assert float(tre_mm) == pytest.approx(expected.tre_mm, abs=0.01)
    assert float(dsc) == pytest.approx(expected.dsc, abs=0.001)


def test_a_bad_address_is_one_line(capsys):
    assert cli.main(["live", "--igtl", "localhost", "--case", "x"]) == 2
    assert "--igtl: expected HOST:PORT" in capsys.readouterr().err
