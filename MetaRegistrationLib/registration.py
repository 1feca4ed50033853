"""Registration methods by name: what ``metareg evaluate --method`` and the Slicer Logic run.

A method registers one case and yields one :class:`MethodResult` per evaluation
point: a single result for a method that sees the whole TRUS volume, or one per
frame count for a method that adapts over a sweep of frames.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .adaptation import F_MIN, AdaptationSession, AdaptationSettings, UpdateResult
from .checkpoint import checkpoint_files
from .data import Case
from .errors import InputError
from .geometry import ALIGNMENT_METHODS, Transform, initial_alignment
from .models import BUNDLED_MODEL, load_model
from .network import RegistrationNet
from .sweep import Frame, extract_frame, sweep_positions

SWEEP_FRAMES = 10
"""Frames in an evaluation sweep when no frame counts are asked for (the literature's F_max)."""


@dataclass
class MethodResult:
    """One registration result and what it cost.

    Attributes:
        transform: fixed world -> moving world (see geometry).
        seconds: wall time to compute it (for a sweep: that frame's update and prediction).
        frames: TRUS frames seen, or ``None`` for a method that sees the whole volume.
        updates: gradient updates run so far, or ``None`` where that does not apply.
    """

    transform: Transform
    seconds: float
    frames: int | None = None
    updates: int | None = None


MethodFunction = Callable[[Case, Sequence[int], "Path | None"], Iterator[MethodResult]]
"""``(case, frame_counts, model_path) -> results``; methods without a model ignore ``model_path``."""


def _alignment_method(name: str) -> MethodFunction:
    def run(case: Case, frame_counts: Sequence[int], model_path: Path | None) -> Iterator[MethodResult]:
        start = time.perf_counter()
        # These baselines use the whole TRUS volume (and, for "centroid", its whole gland label).
        matrix = initial_alignment(name, case.fixed_image.grid, case.moving_image.grid,
                                   case.fixed_labels.array[0], case.moving_labels.array[0])
        yield MethodResult(Transform(matrix), time.perf_counter() - start)

    run.__doc__ = f"Initial alignment {name!r} only, from the whole TRUS volume."
    return run


@functools.lru_cache(maxsize=4)
def _load_model_version(model_path: Path | None, modified_ns: int):
    return load_model(model_path)


def _cached_model(model_path: Path | None):
    """The model at ``model_path``, loaded once per version of its card (sessions copy the network,
    so one loaded model serves every case)."""
    card = checkpoint_files(BUNDLED_MODEL if model_path is None else model_path)[1]
    return _load_model_version(model_path, card.stat().st_mtime_ns if card.exists() else 0)


def sweep_frames(case: Case, count: int = SWEEP_FRAMES) -> list[Frame]:
    """The ``count`` frames of a right-to-left sweep over the case's TRUS gland, in acquisition order."""
    gland = case.fixed_labels.array[0]
    return [extract_frame(case.fixed_image, gland, p) for p in sweep_positions(gland, count)]


def run_sweep(session: AdaptationSession, frames: Sequence[Frame]) -> Iterator[UpdateResult]:
    """Give ``frames`` to ``session`` as a sweep acquires them: the first ``F_MIN - 1`` together (no update
    yet), then one interaction per frame; yields the result of each frame from the ``F_MIN``-th on."""
    session.add_frames(frames[: F_MIN - 1])
    for frame in frames[F_MIN - 1:]:
        yield session.add_frames([frame])


def _untrained_model():
    torch.manual_seed(0)
    return RegistrationNet(), AdaptationSettings(), {}


def sweep_session(case: Case, model_path: Path | None, adapt: bool = True, untrained: bool = False
                  ) -> AdaptationSession:
    """A session for ``case`` with the model at ``model_path`` (the bundled one when None; a randomly initialised
    network when ``untrained``); ``adapt=False`` runs no gradient step. The session takes the MR gland (channel 0)
    only: no landmark label leaks into the registration."""
    network, settings, _ = _untrained_model() if untrained else _cached_model(model_path)
    if not adapt:
        settings = dataclasses.replace(settings, updates_per_interaction=0)
    return AdaptationSession(network, case.moving_image, case.moving_labels, case.fixed_image.grid, settings=settings)


def _sweep_method(adapt: bool, untrained: bool = False) -> MethodFunction:
    def run(case: Case, frame_counts: Sequence[int], model_path: Path | None) -> Iterator[MethodResult]:
        counts = sorted(set(frame_counts)) or [SWEEP_FRAMES]
        if counts[0] < F_MIN:
            raise InputError(f"a sweep method registers from {F_MIN} frames on; frame counts {counts} start lower")
        session = sweep_session(case, model_path, adapt, untrained)
        for result in run_sweep(session, sweep_frames(case, counts[-1])):
            if result.frames in counts:
                yield MethodResult(result.transform, result.seconds, result.frames, result.updates)

    run.__doc__ = ("The network adapted over a right-to-left sweep, one update per frame from the second frame on."
                   if adapt else "The network without adaptation, predicting from the frames of a sweep.")
    if untrained:
        run.__doc__ += " The network is randomly initialised (seed 0), not trained."
    return run


METHODS: dict[str, MethodFunction] = {
    **{name: _alignment_method(name) for name in ALIGNMENT_METHODS},
    "meta": _sweep_method(adapt=True),
    "meta-noadapt": _sweep_method(adapt=False),
    "random-init": _sweep_method(adapt=True, untrained=True),
}
"""Every method ``metareg evaluate`` accepts, by name."""

BEST_METHOD = "meta"
"""The default of the demo: the bundled model adapted over a sweep (docs/RESULTS.md has its numbers)."""


def run_method(name: str, case: Case, frame_counts: Sequence[int] = (),
               model_path: str | Path | None = None) -> Iterator[MethodResult]:
    """Register ``case`` with the named method (a model-based one uses ``model_path``, the bundled model by
    default); yields its results in order."""
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](case, frame_counts, None if model_path is None else Path(model_path))
