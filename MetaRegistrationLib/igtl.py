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
                   poll_seconds: float = 0.01) -> None:
    """Read frames from a connected ``pyigtl.OpenIGTLinkClient`` until ``on_frame(image, pose)`` returns
    ``False`` or nothing arrives for ``idle_seconds``.

    Each poll takes the latest message per device (older ones of a burst are superseded, as a live view shows only
    the latest frame). The transforms of a poll are applied before its image, so an image is read with the pose
    sent with it; an image that arrives before any transform (with ``transform_device``) waits for one.
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
            frame = frame_from_messages(image, transform)
            image = None
            if not on_frame(*frame):
                return
        if time.monotonic() - last_message > idle_seconds:
            return
        time.sleep(poll_seconds)
