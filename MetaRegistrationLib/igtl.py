"""Tracked frames from an OpenIGTLink stream (PLUS) outside Slicer, through ``pyigtl``.

PLUS sends each frame as an IMAGE message (pixels and the image's IJK-to-world matrix, in the RAS or LPS the
message names) and its pose as a TRANSFORM message (``ImageToReference``). TRANSFORM matrices carry no coordinate
flag; they are read as RAS, as 3D Slicer's OpenIGTLinkIF reads them, so one PLUS server serves Slicer and this
client alike. The frame's pose in the TRUS world (LPS) is then ``ImageToReference @ IJKToImage``, the same chain
Slicer applies to the image node under its transform (:mod:`MetaRegistrationSlicer.conversions`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from .errors import InputError
from .geometry import LPS_TO_RAS
from .sweep import frame_intensity, plane_pose


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``--igtl``) as (host, port).

    Raises:
        InputError: for text that is not HOST:PORT with a port in 1..65535.
    """
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--igtl: expected HOST:PORT (e.g. 127.0.0.1:18944), got {text!r}")
    return host, int(port)


def frame_from_messages(image_message, transform_message=None) -> tuple[np.ndarray, np.ndarray]:
    """A frame's intensities (V, U) and pose (4, 4, LPS) from an IMAGE message and (optionally) its TRANSFORM.

    Raises:
        InputError: naming the device for an image that is not one slice, or a pose that is not finite.
    """
    name = getattr(image_message, "device_name", "IMAGE")
    pixels = np.asarray(image_message.image)
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    if pixels.ndim != 4 or pixels.shape[0] != 1:
        raise InputError(f"{name}: an IMAGE message of shape {pixels.shape} (k, j, i, components) is not one slice")
    image = frame_intensity(pixels[0])
    ijk_to_world = np.asarray(image_message.ijk_to_world_matrix, dtype=float)
    if getattr(image_message, "world_coordinate_system", "lps") == "ras":
        ijk_to_world = LPS_TO_RAS @ ijk_to_world
    if transform_message is not None:
        ijk_to_world = LPS_TO_RAS @ np.asarray(transform_message.matrix, dtype=float) @ LPS_TO_RAS @ ijk_to_world
    if not np.isfinite(ijk_to_world).all() or not np.isfinite(image).all():
        raise InputError(f"{name}: the frame or its pose holds NaN or infinite values")
    return image, plane_pose(ijk_to_world[:3, 3], ijk_to_world[:3, 0], ijk_to_world[:3, 1])


def receive_frames(client, image_device: str, transform_device: str | None,
                   on_frame: Callable[[np.ndarray, np.ndarray], bool], idle_seconds: float = 5.0,
                   poll_seconds: float = 0.01, on_poll: Callable[[], None] | None = None,
                   on_error: Callable[[str], None] | None = None) -> None:
    """Read frames from a connected ``pyigtl.OpenIGTLinkClient`` until ``on_frame(image, pose)`` returns
    ``False`` or nothing arrives for ``idle_seconds``; ``on_poll()`` is called at every poll (to finish updates
    while no frame arrives), ``on_error(message)`` for a message that is not a frame (the stream goes on).

    Each poll takes the latest message per device (older ones of a burst are superseded, as a live view shows only
    the latest frame). The transforms of a poll are applied before its image, so an image is read with the latest
    pose received with or before it; an image that arrives before any transform (with ``transform_device``) waits
    for one.
    """
    transform = None
    image = None
    last_message = time.monotonic()
    while True:
        messages = client.get_latest_messages()
        if messages:
            last_message = time.monotonic()
        for message in messages:
            if message.device_name == transform_device and message.message_type == "TRANSFORM":
                transform = message
        for message in messages:
            if message.device_name == image_device and message.message_type == "IMAGE":
                image = message
        if image is not None and (transform is not None or transform_device is None):
            try:
                frame = frame_from_messages(image, transform)
            except InputError as error:
                frame = None
                if on_error is not None:
                    on_error(str(error))
            image = None
            if frame is not None and not on_frame(*frame):
                return
        if on_poll is not None:
            on_poll()
        if time.monotonic() - last_message > idle_seconds:
            return
        time.sleep(poll_seconds)


def simulated_sweep_poses(case, count: int, jitter_mm: float = 0.0, jitter_degrees: float = 0.0, seed: int = 0
                          ) -> list[np.ndarray]:
    """Poses (4, 4, LPS) of a probe sweeping the case's TRUS gland right to left in ``count`` frames: sagittal
    planes from just past the gland's highest j to just past its lowest, each moved by a random tracker jitter
    of ``jitter_mm`` per axis and turned by ``jitter_degrees`` (sd) about each axis."""
    from scipy.spatial.transform import Rotation

    from .geometry import apply_affine
    from .sweep import DEPTH_AXIS, PROBE_AXIS, gland_extent

    grid = case.fixed_image.grid
    low, high = gland_extent(case.fixed_labels.array[0])
    rng = np.random.default_rng(seed)
    index_to_world = grid.index_to_world
    poses = []
    for j in np.linspace(high + 0.5, low - 0.5, count):
        turn = (Rotation.from_euler("xyz", rng.normal(0.0, jitter_degrees, 3), degrees=True).as_matrix()
                if jitter_degrees else np.eye(3))
        origin = apply_affine(index_to_world, [0.0, j, 0.0]) + rng.normal(0.0, jitter_mm, 3)
        poses.append(plane_pose(origin, turn @ index_to_world[:3, DEPTH_AXIS], turn @ index_to_world[:3, PROBE_AXIS]))
    return poses


class SimulatedProbe:
    """A stand-in for PLUS: a ``pyigtl`` server on 127.0.0.1 that streams a case's TRUS as a tracked probe would.

    Each frame goes out as a TRANSFORM ``ImageToReference`` (RAS, the pose of the image's pixel frame), then an
    IMAGE ``Gland`` (the TRUS label cut at that pose: what a segmenter upstream would stream with the frame) and
    the IMAGE ``Image`` (pixels, in the image's own pixel frame: IJK-to-world is the pixel spacing), one frame every
    ``period_s`` seconds once a client is connected. The web app's Play and the loopback tests use it.
    """

    IMAGE_DEVICE, GLAND_DEVICE, TRANSFORM_DEVICE = "Image", "Gland", "ImageToReference"

    def __init__(self, case, count: int = 60, period_s: float = 0.125, jitter_mm: float = 0.3, port: int = 0):
        import socket

        import pyigtl

        from .sweep import DEPTH_AXIS, PROBE_AXIS

        if port == 0:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        self.port = port
        self.case, self.period_s = case, period_s
        self.poses = simulated_sweep_poses(case, count, jitter_mm)
        grid = case.fixed_image.grid
        self.shape = (grid.size[PROBE_AXIS], grid.size[DEPTH_AXIS])
        self._pixel_frame = np.diag([grid.spacing[DEPTH_AXIS], grid.spacing[PROBE_AXIS], 1.0, 1.0])
        self._server = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
        self._stop = False
        self.sent = 0
        self._thread = None

    def start(self) -> None:
        import threading

        self._thread = threading.Thread(target=self._send, name="simulated-probe", daemon=True)
        self._thread.start()

    @property
    def finished(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def _send(self) -> None:
        import pyigtl

        from .sweep import sample_frame

        while not self._server.is_connected():
            if self._stop:
                return
            time.sleep(0.02)
        for pose in self.poses:
            if self._stop:
                return
            tick = time.monotonic()
            frame = sample_frame(self.case.fixed_image, self.case.fixed_labels.array[0], pose, self.shape)
            image_to_reference = LPS_TO_RAS @ pose @ np.linalg.inv(self._pixel_frame) @ LPS_TO_RAS
            self._server.send_message(pyigtl.TransformMessage(image_to_reference, device_name=self.TRANSFORM_DEVICE),
                                      wait=True)
            for device, pixels in ((self.GLAND_DEVICE, (frame.gland > 0.5).astype(np.uint8)),
                                   (self.IMAGE_DEVICE, frame.image.astype(np.float32))):
                self._server.send_message(pyigtl.ImageMessage(pixels[None], ijk_to_world_matrix=self._pixel_frame,
                                                              device_name=device), wait=True)
            self.sent += 1
            time.sleep(max(0.0, self.period_s - (time.monotonic() - tick)))

    def stop(self) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server.stop()
