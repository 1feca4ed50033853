"""``metareg live``: register a live OpenIGTLink stream (PLUS) outside Slicer.

Connects to ``--igtl HOST:PORT`` as a ``pyigtl`` client, reads the IMAGE messages of ``--image-device`` with the
TRANSFORM messages of ``--transform-device`` (:mod:`MetaRegistrationLib.igtl`), and feeds them to a registration
session through the live frame selection (:mod:`MetaRegistrationLib.live`: one update running, at most one frame
waiting). The MR and the TRUS grid come from a case of a data set (``--data``, ``--case``), whose labels also give
each update's TRE and DSC. Frame glands are predicted by the bundled frame segmenter (``--frame-glands
predicted``, as in the operating room) or cut from the case's TRUS label at the frame's pose (``true``).

One row per finished update is printed as CSV; the stream ends after ``--idle-timeout`` seconds without a message,
after ``--max-frames`` accepted frames, or on Ctrl-C (the running update is finished first).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from MetaRegistrationLib.data import Dataset, default_data_dir
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.igtl import parse_address, receive_frames
from MetaRegistrationLib.live import FrameSelection, LiveStream
from MetaRegistrationLib.metrics import evaluate_transform
from MetaRegistrationLib.registration import FRAME_GLANDS, sweep_session
from MetaRegistrationLib.sweep import Frame, sample_frame

ROW_COLUMNS = ("frames", "updates", "update_seconds", "tre_mm", "dsc")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--igtl", required=True, metavar="HOST:PORT", help="the OpenIGTLink server (PLUS), e.g. "
                        "127.0.0.1:18944")
    parser.add_argument("--image-device", default="Image", help="device name of the IMAGE messages (default: %(default)s)")
    parser.add_argument("--transform-device", default="ImageToReference",
                        help="device name of the frame's TRANSFORM messages, or 'none' when the pose is in the image "
                             "(default: %(default)s)")
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="data set folder (default: %(default)s)")
    parser.add_argument("--case", required=True, help="case ID in --data: its MR is registered, its TRUS grid holds "
                                                      "the frames, its labels give TRE and DSC")
    parser.add_argument("--model", type=Path, help="model checkpoint (default: the bundled model)")
    parser.add_argument("--frame-glands", choices=FRAME_GLANDS, default="predicted",
                        help="frame glands from the bundled frame segmenter or the case's TRUS label "
                             "(default: %(default)s)")
    parser.add_argument("--min-distance-mm", type=float, default=FrameSelection.min_distance_mm,
                        help="a frame is new when its plane is this far from every acquired one (default: %(default)s)")
    parser.add_argument("--min-angle-degrees", type=float, default=FrameSelection.min_angle_degrees,
                        help="... or turned by this angle (default: %(default)s)")
    parser.add_argument("--max-frames", type=int, default=0, help="stop after this many accepted frames (0: no limit)")
    parser.add_argument("--idle-timeout", type=float, default=5.0,
                        help="stop after this many seconds without a message (default: %(default)s)")
    parser.add_argument("--connect-timeout", type=float, default=10.0,
                        help="seconds to wait for the server (default: %(default)s)")


def follow_stream(args: argparse.Namespace, print_row=print) -> LiveStream:
    """Register the stream ``args`` names; ``print_row(text)`` gets the CSV header and one row per update.
    Returns the finished stream (its ``frames`` are those the session got, its ``counts`` what happened)."""
    try:
        import pyigtl
    except ImportError:
        raise InputError("metareg live needs pyigtl: pip install 'slicer-meta-registration[live]'") from None

    host, port = parse_address(args.igtl)
    selection = FrameSelection(args.min_distance_mm, args.min_angle_degrees)
    dataset = Dataset(args.data)
    case = dataset.load(dataset.select(cases=[args.case])[0])
    session = sweep_session(case, args.model)
    transform_device = None if args.transform_device.lower() == "none" else args.transform_device
    segment = None
    if args.frame_glands == "predicted":
        from MetaRegistrationLib.frame_segmenter import load_frame_segmenter

        segment = load_frame_segmenter().segment_frame
    else:
        def segment(frame: Frame) -> Frame:
            cut = sample_frame(case.fixed_image, case.fixed_labels.array[0], frame.pose, frame.shape)
            return Frame(frame.image, (cut.gland > 0.5).astype(np.float32), frame.pose)

    def finish(frame, result) -> None:
        if result.transform is None:
            return
        metrics = evaluate_transform(case, result.transform)
        print_row(f"{result.frames},{result.updates},{result.seconds:.3f},{metrics.tre_mm:.3f},{metrics.dsc:.4f}")

    stream = LiveStream(lambda frame: session.add_frames([frame]), finish, selection, segment)
    client = pyigtl.OpenIGTLinkClient(host, port, start_now=True)
    try:
        waited = time.monotonic()
        while not client.is_connected():
            if time.monotonic() - waited > args.connect_timeout:
                raise InputError(f"--igtl {args.igtl}: no OpenIGTLink server answered within "
                                 f"{args.connect_timeout:g} s")
            time.sleep(0.05)
        print_row(",".join(ROW_COLUMNS))

        def on_frame(image, pose) -> bool:
            stream.offer(image, pose)
            return not (args.max_frames and stream.counts.accepted >= args.max_frames)

        def on_error(message: str) -> None:
            stream.counts.seen += 1
            stream.counts.unreadable += 1
            stream.counts.last_error = message

        try:
            receive_frames(client, args.image_device, transform_device, on_frame, args.idle_timeout,
                           on_poll=stream.poll, on_error=on_error)
            stream.drain()  # the stream ended: the frame still waiting is registered too
        finally:
            stream.stop()
    finally:
        client.stop()
    return stream


def run(args: argparse.Namespace) -> int:
    stream = follow_stream(args, lambda text: print(text, flush=True))
    print(f"stream ended: {stream.counts.describe()}", file=sys.stderr)
    return 0
