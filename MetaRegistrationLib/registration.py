"""The registry of registration methods: every method the CLI, the Slicer Logic and the web app can run, by name.

A :class:`Method` says how it builds its transform from what is available:

- a *whole-volume* method (``sweep=False``) sees the whole TRUS volume and yields one :class:`MethodResult`;
- a *sweep* method (``sweep=True``) sees only the tracked frames acquired so far (image, gland label, pose), the
  MR with its gland, and any landmark pairs given; it runs as an :class:`~.adaptation.AdaptationSession`
  (:meth:`Method.start_session`, what the interactive front ends use) and, on a case, yields one result per
  frame count of a simulated sweep.

A new method is one :func:`register_method` call here; ``metareg evaluate --method``, ``evaluateFolder`` and
``startSession(method=...)`` of the Slicer Logic and the web app find it by name.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .adaptation import F_MIN, AdaptationResult, AdaptationSession
from .alignment import ALIGNMENT_METHODS, initial_alignment
from .checkpoint import checkpoint_files
from .data import Case, Volume
from .errors import InputError
from .geometry import Grid, Transform
from .models import BUNDLED_MODEL, Model, ModelSource, load_model
from .network import RegistrationNet
from .settings import AdaptationSettings
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


CaseRegistration = Callable[..., Iterator[MethodResult]]
"""``(case, frame_counts, model, precision="auto", device="cpu", frame_glands="true") -> results``; methods without
a model ignore ``model``, ``precision`` and ``device``, whole-volume methods ``frame_glands``."""
FRAME_GLANDS = ("true", "predicted")
"""Where a sweep's frame glands come from: the TRUS gland label, or the bundled frame segmenter
(:mod:`.frame_segmenter`), as in the operating room."""
SessionFactory = Callable[..., AdaptationSession]
"""``(model, moving_image, moving_labels, fixed_grid, device="cpu", precision="auto", spread=True) -> session`` of a
sweep method (the arguments of :class:`~.adaptation.AdaptationSession`; ``spread=False`` skips the quality signals'
jackknife spread, which costs a prediction per frame group at every update)."""


@dataclass(frozen=True)
class Method:
    """A registration method.

    Attributes:
        name: what users type (``--method``, ``method=``).
        description: one line for help texts and tables.
        register: registers a case (evaluation); see :data:`CaseRegistration`.
        uses_model: whether a model (``--model``) changes what it does.
        session: for a sweep method, builds its interactive session; ``None`` for a whole-volume method.
    """

    name: str
    description: str
    register: CaseRegistration
    uses_model: bool = False
    session: SessionFactory | None = None

    @property
    def sweep(self) -> bool:
        """Whether the method adapts over acquired frames (and so reports per frame count)."""
        return self.session is not None

    def start_session(self, moving_image: Volume, moving_labels: Volume, fixed_grid: Grid,
                      model: ModelSource = None, device: str | torch.device = "cpu",
                      precision: str = "auto", spread: bool = True) -> AdaptationSession:
        """An interactive session of this sweep method (the MR gland, channel 0 of ``moving_labels``, only);
        ``spread=False``: no jackknife spread in the quality signals (:mod:`.quality`)."""
        if self.session is None:
            raise InputError(f"method {self.name!r} registers whole volumes; an interactive sweep needs one of "
                             f"{', '.join(name for name, method in METHODS.items() if method.sweep)}")
        return self.session(model, moving_image, moving_labels, fixed_grid, device, precision, spread)


METHODS: dict[str, Method] = {}
"""Every registered method, by name, in registration order."""


def register_method(method: Method) -> Method:
    """Add a method to :data:`METHODS` (a name may be registered once)."""
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called ``name``.

    Raises:
        InputError: naming the unknown method and the known ones.
    """
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


# --- whole-volume alignments --------------------------------------------------------------------------------------

def _alignment(name: str) -> CaseRegistration:
    def register(case: Case, frame_counts: Sequence[int], model: ModelSource, precision: str = "auto",
                 device: str | torch.device = "cpu", frame_glands: str = "true") -> Iterator[MethodResult]:
        start = time.perf_counter()
        # These baselines use the whole TRUS volume (and, for "centroid", its whole gland label).
        matrix = initial_alignment(name, case.fixed_image.grid, case.moving_image.grid,
                                   case.fixed_labels.array[0], case.moving_labels.array[0])
        yield MethodResult(Transform(matrix), time.perf_counter() - start)

    return register


ALIGNMENT_DESCRIPTIONS = {
    "identity": "world coordinates as stored (no alignment)",
    "fov-centre": "the TRUS field-of-view centre onto the MR's",
    "centroid": "the whole TRUS gland's centroid onto the MR gland's",
}
for _name in ALIGNMENT_METHODS:
    register_method(Method(_name, f"initial alignment from the whole TRUS volume: {ALIGNMENT_DESCRIPTIONS[_name]}",
                           _alignment(_name)))


# --- sweep methods ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _load_model_version(model_path: Path | None, modified_ns: int) -> Model:
    return load_model(model_path)


def _model(source: ModelSource) -> Model:
    """The model of ``source``; one on disk is loaded once per version of its card (sessions copy the network,
    so one loaded model serves every case)."""
    if isinstance(source, Model):
        return source
    path = None if source is None else Path(source)
    card = checkpoint_files(BUNDLED_MODEL if path is None else path)[1]
    return _load_model_version(path, card.stat().st_mtime_ns if card.exists() else 0)


def _untrained_model() -> Model:
    torch.manual_seed(0)
    return Model(RegistrationNet(), AdaptationSettings(), {})


def _session_factory(adapt: bool = True, untrained: bool = False) -> SessionFactory:
    def start(model: ModelSource, moving_image: Volume, moving_labels: Volume, fixed_grid: Grid,
              device: str | torch.device = "cpu", precision: str = "auto", spread: bool = True) -> AdaptationSession:
        network, settings, _ = _untrained_model() if untrained else _model(model)
        if not adapt:
            settings = dataclasses.replace(settings, updates_per_interaction=0)
        if not spread:
            settings = dataclasses.replace(settings, spread_groups=0)
        return AdaptationSession(network, moving_image, moving_labels, fixed_grid, settings=settings, device=device,
                                 precision=precision)

    return start


def sweep_frames(case: Case, count: int = SWEEP_FRAMES, frame_glands: str = "true") -> list[Frame]:
    """The ``count`` frames of a right-to-left sweep over the case's TRUS gland, in acquisition order, with their
    glands from the label (``"true"``) or the bundled frame segmenter (``"predicted"``; a frame where it finds no
    gland is left out, as the live mode skips it)."""
    if frame_glands not in FRAME_GLANDS:
        raise InputError(f"frame glands must be one of {', '.join(FRAME_GLANDS)}, got {frame_glands!r}")
    gland = case.fixed_labels.array[0]
    frames = [extract_frame(case.fixed_image, gland, p) for p in sweep_positions(gland, count)]
    if frame_glands == "predicted":
        segmenter = _frame_segmenter()
        frames = [frame for frame in map(segmenter.segment_frame, frames) if frame.gland.any()]
    return frames


@functools.lru_cache(maxsize=1)
def _frame_segmenter():
    from .frame_segmenter import load_frame_segmenter

    return load_frame_segmenter()


def run_sweep(session: AdaptationSession, frames: Sequence[Frame]) -> Iterator[AdaptationResult]:
    """Give ``frames`` to ``session`` as a sweep acquires them: the first ``F_MIN - 1`` together (no update
    yet), then one interaction per frame; yields the result of each frame from the ``F_MIN``-th on."""
    session.add_frames(frames[: F_MIN - 1])
    for frame in frames[F_MIN - 1:]:
        yield session.add_frames([frame])


def sweep_session(case: Case, model: ModelSource = None, method: str = "meta", precision: str = "auto",
                  device: str | torch.device = "cpu", spread: bool = True) -> AdaptationSession:
    """A session of the sweep method ``method`` for ``case``. The session takes the MR gland (channel 0) only: no
    landmark label leaks into the registration. ``spread``: see :meth:`Method.start_session`."""
    return get_method(method).start_session(case.moving_image, case.moving_labels, case.fixed_image.grid, model,
                                            device=device, precision=precision, spread=spread)


def _sweep(name: str) -> CaseRegistration:
    def register(case: Case, frame_counts: Sequence[int], model: ModelSource, precision: str = "auto",
                 device: str | torch.device = "cpu", frame_glands: str = "true") -> Iterator[MethodResult]:
        counts = sorted(set(frame_counts)) or [SWEEP_FRAMES]
        if counts[0] < F_MIN:
            raise InputError(f"a sweep method registers from {F_MIN} frames on; frame counts {counts} start lower")
        session = sweep_session(case, model, name, precision, device, spread=False)  # its rows report no quality
        frames = sweep_frames(case, counts[-1], frame_glands)
        for result in run_sweep(session, frames):
            # With predicted glands a frame may be left out: the sweep's end is then reported at its own count.
            if result.frames in counts or result.frames == len(frames) < counts[-1]:
                yield MethodResult(result.transform, result.seconds, result.frames, result.updates)

    return register


register_method(Method("meta", "the network (bundled or --model) adapted over a right-to-left sweep, one update (the "
                       "model's gradient steps) per frame from the second frame on", _sweep("meta"), uses_model=True,
                       session=_session_factory()))
register_method(Method("meta-noadapt", "the same network predicting from the sweep's frames, no gradient update",
                       _sweep("meta-noadapt"), uses_model=True, session=_session_factory(adapt=False)))
register_method(Method("random-init", "a randomly initialised network (seed 0) adapted like meta",
                       _sweep("random-init"), session=_session_factory(untrained=True)))

BEST_METHOD = "meta"
"""The default of the demo: the bundled model adapted over a sweep (docs/RESULTS.md has its numbers)."""


def run_method(name: str, case: Case, frame_counts: Sequence[int] = (), model: ModelSource = None,
               precision: str = "auto", device: str | torch.device = "cpu", frame_glands: str = "true"
               ) -> Iterator[MethodResult]:
    """Register ``case`` with the named method (a model-based one uses ``model``, the bundled model by
    default, with the network's arithmetic ``precision`` on ``device``); yields its results in order."""
    return get_method(name).register(case, frame_counts, model, precision, device, frame_glands)
