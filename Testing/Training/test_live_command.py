"""``metareg live`` on loopback: a pyigtl server sends a 30-frame sweep as IMAGE + TRANSFORM messages, the client
registers it, and the numbers equal a library session fed the frames it accepted."""

from __future__ import annotations

import pytest

pyigtl = pytest.importorskip("pyigtl")

from MetaRegistrationLib.data import Dataset  # noqa: E402
from MetaRegistrationLib.igtl import SimulatedProbe  # noqa: E402
from MetaRegistrationLib.metrics import evaluate_transform  # noqa: E402
from MetaRegistrationLib.registration import run_sweep, sweep_session  # noqa: E402
from Training import cli, live  # noqa: E402


def test_a_loopback_stream_is_registered_like_a_library_session_of_its_accepted_frames(real_data_dir, capsys):
    dataset = Dataset(real_data_dir)
    case_id = dataset.split("val")[0]
    case = dataset.load(case_id)
    probe = SimulatedProbe(case, count=30, period_s=0.2, jitter_mm=0.0)
    probe.start()
    args = cli.build_parser(["live"]).parse_args(["live", "--igtl", f"127.0.0.1:{probe.port}", "--data",
                                                  str(real_data_dir), "--case", case_id, "--frame-glands", "true",
                                                  "--idle-timeout", "2"])
    rows = []
    try:
        stream = live.follow_stream(args, rows.append)
    finally:
        probe.stop()
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
