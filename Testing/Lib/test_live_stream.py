"""Live frame selection and the one-running, one-waiting stream (MetaRegistrationLib.live)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from MetaRegistrationLib.live import FrameSelection, LiveStream, plane_difference
from MetaRegistrationLib.sweep import plane_pose

SHAPE = (10, 20)


def _pose(x_mm: float = 0.0, tilt_degrees: float = 0.0) -> np.ndarray:
    """A sagittal-like frame at x = ``x_mm`` (normal along x), turned about the frame's v axis."""
    angle = np.radians(tilt_degrees)
    u_step = np.array([np.sin(angle), np.cos(angle), 0.0]) * 1.5
    return plane_pose([x_mm, 0.0, 0.0], u_step, [0.0, 0.0, 1.5])


def test_plane_difference_measures_distance_and_angle():
    distance, angle = plane_difference(_pose(0.0), SHAPE, _pose(4.0), SHAPE)
    assert distance == pytest.approx(4.0) and angle == pytest.approx(0.0, abs=1e-6)
    _, angle = plane_difference(_pose(0.0), SHAPE, _pose(0.0, 7.0), SHAPE)
    assert angle == pytest.approx(7.0)


def test_selection_accepts_new_planes_and_skips_jitter():
    rule = FrameSelection(3.0, 5.0)
    acquired = [(_pose(0.0), SHAPE)]
    assert not rule.differs(_pose(0.3, 0.3), SHAPE, acquired)
    assert rule.differs(_pose(3.2), SHAPE, acquired)
    assert rule.differs(_pose(0.0, 6.0), SHAPE, acquired)


def _stream(threaded: bool, release: threading.Event | None = None):
    added = []

    def adapt(frame):
        if release is not None:
            release.wait(5)
        return len(added)

    stream = LiveStream(adapt, lambda frame, token: added.append(frame), FrameSelection(3.0, 5.0),
                        threaded=threaded)
    return stream, added


def test_without_a_thread_each_new_plane_is_an_update_and_duplicates_are_counted():
    stream, added = _stream(threaded=False)
    image = np.zeros(SHAPE, np.float32)
    gland = np.ones(SHAPE, np.float32)
    outcomes = []
    for x in (0.0, 0.2, 3.5, 3.6, 7.0):
        outcomes.append(stream.offer(image, _pose(x), gland))
        stream.poll()
    assert outcomes == ["accepted", "skipped", "accepted", "skipped", "accepted"]
    assert len(added) == 3 and stream.counts.accepted == 3 and stream.counts.skipped == 2


def test_while_an_update_runs_a_newer_frame_replaces_the_waiting_one():
    release = threading.Event()
    stream, added = _stream(threaded=True, release=release)
    image, gland = np.zeros(SHAPE, np.float32), np.ones(SHAPE, np.float32)
    stream.offer(image, _pose(0.0), gland)
    stream.poll()  # frame 1 runs, blocked until released
    assert stream.offer(image, _pose(4.0), gland) == "accepted"
    assert stream.offer(image, _pose(8.0), gland) == "replaced"
    assert stream.offer(image, _pose(8.1), gland) == "skipped"  # a near-duplicate of the waiting frame
    release.set()
    stream.wait()
    stream.poll()  # starts the waiting frame (x = 8)
    stream.stop()
    assert [round(frame.pose[0, 3], 1) for frame in added] == [0.0, 8.0]
    counts = stream.counts
    assert (counts.seen, counts.accepted, counts.replaced, counts.skipped, counts.dropped) == (4, 2, 1, 1, 0)


def test_a_failed_update_is_counted_and_the_stream_goes_on():
    def adapt(frame):
        raise ValueError("boom")

    stream = LiveStream(adapt, lambda frame, token: None, threaded=False)
    stream.offer(np.zeros(SHAPE, np.float32), _pose(0.0), np.ones(SHAPE, np.float32))
    stream.poll()
    assert stream.counts.failed == 1 and stream.counts.last_error == "boom" and not stream.frames


def test_the_segmenter_runs_when_an_update_starts_and_an_empty_gland_is_skipped():
    segmented = []

    def segment(frame):
        segmented.append(frame)
        return frame  # no gland found

    stream = LiveStream(lambda frame: None, lambda frame, token: None, segment=segment, threaded=False)
    image = np.zeros(SHAPE, np.float32)
    assert stream.offer(image, _pose(0.0)) == "accepted"
    assert stream.offer(image, _pose(4.0)) == "replaced"  # replaced while waiting: never segmented
    stream.poll()
    assert len(segmented) == 1 and stream.counts.unsegmented == 1 and stream.counts.accepted == 0


def test_a_given_gland_is_read_only_for_a_new_plane_and_an_empty_one_is_skipped():
    reads = []
    stream = LiveStream(lambda frame: None, lambda frame, token: None, threaded=False)
    image, gland = np.zeros(SHAPE, np.float32), np.ones(SHAPE, np.float32)
    stream.offer(image, _pose(0.0), gland)
    stream.poll()
    assert stream.offer(image, _pose(0.1), lambda: reads.append(1) or gland) == "skipped" and not reads
    assert stream.offer(image, _pose(5.0), lambda: None) == "unsegmented"
    assert stream.offer(image, _pose(9.0), np.zeros(SHAPE, np.float32)) == "unsegmented"
