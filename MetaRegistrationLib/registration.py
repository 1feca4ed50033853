"""Registration methods by name: what ``metareg evaluate --method`` and the Slicer Logic run.

A method registers one case and yields one :class:`MethodResult` per evaluation
point: a single result for a method that sees the whole TRUS volume, or one per
frame count for a method that adapts over a sweep of frames.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .data import Case
from .errors import InputError
from .geometry import ALIGNMENT_METHODS, Transform, initial_alignment


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


MethodFunction = Callable[[Case, Sequence[int]], Iterator[MethodResult]]


def _alignment_method(name: str) -> MethodFunction:
    def run(case: Case, frame_counts: Sequence[int]) -> Iterator[MethodResult]:
        start = time.perf_counter()
        # These baselines use the whole TRUS volume (and, for "centroid", its whole gland label).
        matrix = initial_alignment(name, case.fixed_image.grid, case.moving_image.grid,
                                   case.fixed_labels.array[0], case.moving_labels.array[0])
        yield MethodResult(Transform(matrix), time.perf_counter() - start)

    run.__doc__ = f"Initial alignment {name!r} only, from the whole TRUS volume."
    return run


METHODS: dict[str, MethodFunction] = {name: _alignment_method(name) for name in ALIGNMENT_METHODS}
"""Every method ``metareg evaluate`` accepts, by name."""

BEST_METHOD = "centroid"
"""The most accurate method so far on the val split (docs/RESULTS.md): the default of the demo."""


def run_method(name: str, case: Case, frame_counts: Sequence[int] = ()) -> Iterator[MethodResult]:
    """Register ``case`` with the named method; yields its results in order."""
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](case, frame_counts)
