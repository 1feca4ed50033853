"""Streamed frames (OpenIGTLink, a tracked probe at 20-30 frames a second) turned into registration updates.

A tracker's jitter makes every streamed frame differ a little from the last, so "new image" does not mean "new
information". :class:`FrameSelection` accepts a frame only when its plane differs enough from every plane acquired
so far (the rule below); :class:`LiveStream` runs at most one update at a time in a worker thread and keeps at most
one accepted frame waiting: a newer accepted frame replaces the waiting one. Nothing queues up, so the registration
is never more than one update behind the probe, whatever the frame rate.

The selection rule, with ``d(a, b)`` the distance in mm from the centre pixel of ``a`` to the plane of ``b`` (the
larger of the two directions) and ``angle(a, b)`` the angle between the planes' normals (0 to 90 degrees)::

    accept(f)  <=>  for every acquired frame a:  d(f, a) >= min_distance_mm  or  angle(f, a) >= min_angle_degrees

Defaults: 3 mm (two 1.5 mm voxels of the TRUS grid, a tenth of a gland's width) and 5 degrees (a radial sweep
of 10 frames over a 60-degree fan steps about 6 degrees). A frame that moves only within its own plane (the probe
pushed along its axis) shows no new plane and is skipped. Jitter of 0.3 mm and 0.3 degrees is far below both.

What this absorbs: a streamed frame costs the main thread a plane comparison (and, once its update starts, a
segmentation when it brings no gland), well under a millisecond, so the frame rate is not the limit; the updates
are: one runs at a time, the registration follows the probe with a lag of at most two updates (the running one and
the waiting one), and with the 3 mm rule a probe is followed plane by plane up to 3 mm per update time. The
measured update time is in docs/RESULTS.md ("Live mode").

Threads: :meth:`LiveStream.offer` and :meth:`LiveStream.poll` are called on one thread (a GUI's main thread);
the ``adapt`` callable runs in the worker thread and must not touch what the main thread uses (in Slicer: no MRML
node); ``finish`` runs on the calling thread inside :meth:`LiveStream.poll`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .sweep import Frame


@dataclass(frozen=True)
class FrameSelection:
    """When a streamed frame is new enough to be worth an update (module docstring): distance in mm, angle in
    degrees."""

    min_distance_mm: float = 3.0
    min_angle_degrees: float = 5.0

    def __post_init__(self):
        for name in ("min_distance_mm", "min_angle_degrees"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"frame selection: {name} must be a finite number >= 0, got {value!r}")

    def differs(self, pose: np.ndarray, shape: tuple[int, int], acquired: list[tuple[np.ndarray, tuple[int, int]]]
                ) -> bool:
        """Whether a frame of ``pose`` (4, 4) and ``shape`` (V, U) differs from every acquired (pose, shape)."""
        return all(self._differ(pose, shape, other, other_shape) for other, other_shape in acquired)

    def _differ(self, a: np.ndarray, a_shape, b: np.ndarray, b_shape) -> bool:
        distance, angle = plane_difference(a, a_shape, b, b_shape)
        return distance >= self.min_distance_mm or angle >= self.min_angle_degrees


def _centre(pose: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows, columns = shape
    return pose[:3, :3] @ np.array([(columns - 1) / 2, (rows - 1) / 2, 0.0]) + pose[:3, 3]


def plane_difference(a: np.ndarray, a_shape: tuple[int, int], b: np.ndarray, b_shape: tuple[int, int]
                     ) -> tuple[float, float]:
    """(distance mm, angle degrees) between two frame planes given by their poses (4, 4) and shapes (V, U): the
    larger distance from one frame's centre pixel to the other's plane, and the angle between their normals."""
    normal_a, normal_b = a[:3, 2], b[:3, 2]
    distance = max(abs(float((_centre(a, a_shape) - b[:3, 3]) @ normal_b)),
                   abs(float((_centre(b, b_shape) - a[:3, 3]) @ normal_a)))
    cosine = min(1.0, abs(float(normal_a @ normal_b)))
    return distance, math.degrees(math.acos(cosine))


@dataclass
class StreamCounts:
    """What happened to the frames of a stream.

    Attributes:
        seen: frames read (one per change of the frame's image or pose that was polled).
        accepted: frames that started an update.
        skipped: near-duplicates of an acquired (or the waiting) plane, skipped silently.
        replaced: accepted frames dropped while waiting, for a newer one.
        unsegmented: frames whose gland (given, or the segmenter's) is empty (a plane beside the gland), skipped.
        unreadable: frames that could not be read (the front end's reading failed: a bad image or pose).
        failed: accepted frames whose update (or segmentation) ended in an error (the session then stays as it
            was).
        dropped: a frame still waiting when the stream stopped.
        last_update_seconds: wall time of the last finished update, from its start to its outputs.
        last_error: the last error's message, or "".
    """

    seen: int = 0
    accepted: int = 0
    skipped: int = 0
    replaced: int = 0
    unsegmented: int = 0
    unreadable: int = 0
    failed: int = 0
    dropped: int = 0
    last_update_seconds: float = float("nan")
    last_error: str = ""

    def describe(self) -> str:
        text = (f"{self.seen} frames seen, {self.accepted} accepted, {self.skipped} skipped as near-duplicates, "
                f"{self.replaced} replaced while waiting")
        if self.unsegmented:
            text += f", {self.unsegmented} without gland"
        if self.unreadable:
            text += f", {self.unreadable} unreadable ({self.last_error})"
        if self.failed:
            text += f", {self.failed} failed ({self.last_error})"
        if math.isfinite(self.last_update_seconds):
            text += f"; last update {self.last_update_seconds:.2f} s"
        return text


@dataclass
class _Waiting:
    frame: Frame
    needs_gland: bool  # the segmenter puts its gland on when the update starts


@dataclass
class _Running:
    frame: Frame
    future: Future
    started: float


class LiveStream:
    """Frames in, at most one update running and one frame waiting (module docstring).

    Args:
        adapt: ``adapt(frame) -> token`` runs one update with the frame, in the worker thread.
        finish: ``finish(frame, token)`` (calling thread) applies a finished update; an exception it raises is
            counted as failed and kept in ``counts.last_error``, and the frame is not acquired.
        selection: the frame selection rule.
        segment: ``segment(frame) -> Frame`` puts a gland on a frame that came without one (the frame segmenter);
            ``None`` when every frame brings its gland.
        acquired: (pose, shape) of the frames already in the session, which new frames must differ from.
        threaded: run ``adapt`` in a worker thread (``False``: inside :meth:`poll`, for scripts and tests).
    """

    def __init__(self, adapt: Callable[[Frame], object], finish: Callable[[Frame, object], None],
                 selection: FrameSelection = FrameSelection(), segment: Callable[[Frame], Frame] | None = None,
                 acquired: list[tuple[np.ndarray, tuple[int, int]]] | None = None, threaded: bool = True):
        self._adapt, self._finish, self._segment = adapt, finish, segment
        self.selection = selection
        self.counts = StreamCounts()
        self.acquired: list[tuple[np.ndarray, tuple[int, int]]] = list(acquired or [])
        self.frames: list[Frame] = []  # the frames this stream added to the session, in order
        self._waiting: _Waiting | None = None
        self._running: _Running | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metareg-live") if threaded else None

    def offer(self, image: np.ndarray, pose: np.ndarray, gland=None) -> str:
        """Consider one streamed frame: ``image`` (V, U), ``pose`` (4, 4) as :class:`~.sweep.Frame`, and its gland:
        an array, a callable returning one (or ``None`` when there is none), called only once the plane is new
        (a label node is read only then), or ``None`` for the segmenter's (run when the frame's update starts, so
        a frame replaced while waiting costs nothing).

        Returns what happened: ``"accepted"`` (waiting for the worker), ``"replaced"`` (it replaced the waiting
        frame), ``"skipped"`` (a near-duplicate) or ``"unsegmented"`` (its given gland is empty). Call
        :meth:`poll` to start and finish updates."""
        self.counts.seen += 1
        shape = tuple(np.shape(image))
        planes = self.acquired + ([(self._running.frame.pose, self._running.frame.shape)] if self._running else [])
        if self._waiting is not None:
            planes.append((self._waiting.frame.pose, self._waiting.frame.shape))
        if not self.selection.differs(pose, shape, planes):
            self.counts.skipped += 1
            return "skipped"
        if callable(gland):
            gland = gland()
            if gland is None:
                self.counts.unsegmented += 1
                return "unsegmented"
        if gland is not None and not (np.asarray(gland) > 0.5).any():
            self.counts.unsegmented += 1
            return "unsegmented"
        if gland is None and self._segment is None:
            raise ValueError("a frame without gland needs a LiveStream with a segmenter")
        frame = Frame(image, np.zeros(shape, dtype=np.float32) if gland is None else gland, pose)
        outcome = "accepted"
        if self._waiting is not None:
            self.counts.replaced += 1
            outcome = "replaced"
        self._waiting = _Waiting(frame, needs_gland=gland is None)
        return outcome

    def poll(self) -> bool:
        """Finish an update whose worker is done and start the waiting frame's; returns whether an update was
        finished. Never blocks on a running update (except when not threaded, where the update runs here)."""
        finished = False
        if self._running is not None and self._running.future.done():
            self._complete()
            finished = True
        if self._running is None and self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            frame = waiting.frame
            if waiting.needs_gland:
                try:
                    frame = self._segment(frame)
                except Exception as error:  # noqa: BLE001 - counted and shown; the stream goes on
                    self.counts.failed += 1
                    self.counts.last_error = str(error)
                    return finished
                if not (frame.gland > 0.5).any():
                    self.counts.unsegmented += 1
                    return finished
            self.counts.accepted += 1
            future = (self._executor.submit(self._adapt, frame) if self._executor is not None
                      else _run_now(self._adapt, frame))
            self._running = _Running(frame, future, time.perf_counter())
            if self._executor is None:
                self._complete()
                finished = True
        return finished

    def _complete(self) -> None:
        running, self._running = self._running, None
        try:
            self._finish(running.frame, running.future.result())
        except Exception as error:  # noqa: BLE001 - a failed update is counted and shown, the stream goes on
            self.counts.failed += 1
            self.counts.last_error = str(error)
            return
        finally:
            self.counts.last_update_seconds = time.perf_counter() - running.started
        self.acquired.append((running.frame.pose, running.frame.shape))
        self.frames.append(running.frame)

    def wait(self, apply: bool = True) -> None:
        """Block until the running update (if any) is finished, and apply it (``apply=False``: drop it, as when
        the session it belongs to is being discarded); the waiting frame is not started."""
        if self._running is not None:
            self._running.future.exception()  # waits
            if apply:
                self._complete()
            else:
                self._running = None

    def drain(self) -> None:
        """Run the waiting frame too (the end of a stream that nobody stops by hand) and wait for it."""
        self.wait()
        if self._waiting is not None:
            self.poll()
            self.wait()

    def stop(self, apply: bool = True) -> None:
        """Finish the running update (``apply``: see :meth:`wait`), drop the waiting frame (counted) and release the
        worker thread."""
        self.wait(apply)
        if self._waiting is not None:
            self.counts.dropped += 1
            self._waiting = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def _run_now(adapt: Callable[[Frame], object], frame: Frame) -> Future:
    future: Future = Future()
    try:
        future.set_result(adapt(frame))
    except Exception as error:  # noqa: BLE001 - raised again by future.result() in _complete
        future.set_exception(error)
    return future

