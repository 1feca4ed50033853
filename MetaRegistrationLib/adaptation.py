"""Few-shot adaptation of the registration network during a live TRUS sweep.

An :class:`AdaptationSession` starts from a (meta-learned) network and the MR
with its gland label. Each interaction (new tracked frames, or clinician
landmark pairs) runs a few gradient steps on what has been acquired so far and
returns the updated registration; the steps continue from the weights the previous
interaction left, or, with ``settings.restart``, start again from the initial network
(order-independent: docs/RESULTS.md, issue 11, stability). Meta-training (``Training.reptile``) runs the
same :func:`adaptation_step` on the same :class:`RegistrationProblem`, with full
labels instead of the acquired frames.

What a session may use at each moment: the MR and its labels, the frames acquired
so far (image, gland label, pose) and the landmark pairs given so far. The
initial alignment is recomputed from exactly that at every interaction
(:func:`alignment.frames_gland_alignment`), unless the caller fixes one.

An interaction is all or nothing. Its inputs are checked before any step (a NaN or
infinite pixel, pose, point, weight or setting is refused), and any error after
that, however late (a gradient step, a non-finite loss or displacement, the
prediction, or the caller's own outputs through :meth:`AdaptationSession.snapshot`
and :meth:`AdaptationSession.restore`), leaves the session exactly as it was:
frames, landmark pairs, updates, network weights and optimiser state.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .alignment import frames_gland_alignment, initial_alignment
from .data import Volume
from .devices import torch_device
from .precision import resolve_precision
from .errors import InputError, MetaRegistrationError
from .geometry import Grid, Transform, apply_affine, sample, warp
from .landmarks import corrected
from .losses import LossTerms, registration_loss_terms, target_scale_space
from .network import RegistrationNet, make_inputs
from .quality import QualitySignals, quality_signals
from .settings import AdaptationSettings
from .sweep import Frame, rasterise_frames

F_MIN = 2
"""Frames needed before the first update (the literature's F_min)."""

SAME_POSE_TOLERANCE = 1e-3
"""Two frames whose pose matrices agree to this (mm, and unitless in the rotation) are the same plane."""


class FrameError(InputError):
    """A frame given to :meth:`AdaptationSession.add_frames` was refused.

    Attributes:
        index: the frame's number (1-based) within the frames given to that call; count: how many were given.
        problem: what is wrong, without the frame's number (a front end names the frame its own way).
        acquired: for a plane already acquired, the number (1-based) of the session's frame on that plane.
    """

    def __init__(self, index: int, count: int, problem: str, acquired: int | None = None):
        self.index, self.count, self.problem, self.acquired = index, count, problem, acquired
        where = f"frame {index} of the {count} given" if count > 1 else "the frame given"
        super().__init__(f"{where} {problem}" + (f" (frame {acquired} of the session)" if acquired else ""))


class AdaptationError(MetaRegistrationError):
    """The adaptation diverged (a non-finite loss or displacement); the session was rolled back."""


@dataclass
class RegistrationProblem:
    """What the network sees and what its loss compares, for one case on one fixed grid.

    Attributes:
        inputs: (1, 5, k, j, i) network inputs (``network.make_inputs``).
        moving_labels: (1, C, mk, mj, mi) MR labels the loss warps.
        target_labels: (1, C, k, j, i) TRUS labels they are compared with.
        mask: (1, 1, k, j, i) voxels where the targets are known, or ``None`` for everywhere.
        initial: (4, 4) initial alignment, fixed world -> moving world.
        landmarks_moving, landmarks_fixed: (N, 3) world points of landmark pairs, or ``None``.
    """

    inputs: torch.Tensor
    moving_labels: torch.Tensor
    moving_grid: Grid
    fixed_grid: Grid
    target_labels: torch.Tensor
    mask: torch.Tensor | None
    initial: torch.Tensor
    landmarks_moving: torch.Tensor | None = None
    landmarks_fixed: torch.Tensor | None = None
    target_blurred: list[torch.Tensor] | None = None
    """The targets' side of the Dice term (``losses.target_scale_space``), filled at the problem's first step."""


def build_problem(moving_image: torch.Tensor, moving_labels: torch.Tensor, moving_grid: Grid, fixed_grid: Grid,
                  initial: np.ndarray, acquired_image: torch.Tensor, acquired_gland: torch.Tensor,
                  acquired_mask: torch.Tensor, target_labels: torch.Tensor, target_mask: torch.Tensor | None,
                  ) -> RegistrationProblem:
    """Resample the MR through ``initial`` and assemble a :class:`RegistrationProblem`.

    Args:
        moving_image: (1, 1, mk, mj, mi); moving_labels: (1, C, mk, mj, mi), channel 0 the gland.
        acquired_image, acquired_gland, acquired_mask: (1, 1, k, j, i) sparse TRUS input.
        target_labels: (1, C', k, j, i) the loss's targets, matching the first C' moving channels.
    """
    initial_tensor = torch.as_tensor(initial, dtype=moving_image.dtype, device=moving_image.device)
    with torch.no_grad():
        on_fixed = warp(torch.cat([moving_image, moving_labels[:, :1]], dim=1), moving_grid, fixed_grid,
                        initial_tensor)
    inputs = make_inputs(acquired_image, acquired_gland, acquired_mask, on_fixed[:, :1], on_fixed[:, 1:])
    return RegistrationProblem(inputs, moving_labels[:, : target_labels.shape[1]], moving_grid, fixed_grid,
                               target_labels, target_mask, initial_tensor)


def problem_loss(model: RegistrationNet, problem: RegistrationProblem, settings: AdaptationSettings
                 ) -> tuple[torch.Tensor, LossTerms, torch.Tensor]:
    """The adaptation objective: (total, its Dice and bending terms, the displacement)."""
    displacement = model(problem.inputs)
    total, terms = displacement_loss(displacement, problem, settings)
    return total, terms, displacement


def displacement_loss(displacement: torch.Tensor, problem: RegistrationProblem, settings: AdaptationSettings
                      ) -> tuple[torch.Tensor, LossTerms]:
    """The adaptation objective of a displacement (1, 3, k, j, i) in mm on ``problem``'s fixed grid: (total, its
    Dice and bending terms). Batched meta-training (``Training.reptile``) calls it on each episode's slice of a
    vectorised network's output."""
    warped = warp(problem.moving_labels, problem.moving_grid, problem.fixed_grid, problem.initial, displacement)
    if problem.target_blurred is None:
        problem.target_blurred = target_scale_space(problem.target_labels, problem.fixed_grid.spacing, problem.mask)
    terms = registration_loss_terms(warped, problem.target_labels, displacement, problem.fixed_grid.spacing,
                                    problem.mask, bending_weight=settings.bending_weight,
                                    target_blurred=problem.target_blurred)
    total = terms.total
    if problem.landmarks_fixed is not None and settings.landmark_weight > 0:
        # phi(p_f) = A (p_f + u(p_f)) must land on the clinician's MR point p_m.
        at_points = sample(displacement, torch.as_tensor(problem.fixed_grid.world_to_index),
                           problem.landmarks_fixed[None], padding_mode="border")[0].T
        mapped = (problem.landmarks_fixed + at_points) @ problem.initial[:3, :3].T + problem.initial[:3, 3]
        total = total + settings.landmark_weight * ((mapped - problem.landmarks_moving) ** 2).sum(-1).mean()
    return total, terms


def adaptation_step(model: RegistrationNet, optimizer: torch.optim.Optimizer, problem: RegistrationProblem,
                    settings: AdaptationSettings) -> float:
    """One gradient step on ``problem``; returns the loss before the step."""
    total, _, _ = problem_loss(model, problem, settings)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return float(total.detach())


@dataclass
class AdaptationResult:
    """What one interaction computed in the library: the transform and the timings of its steps (the Slicer
    Logic turns it into an ``InteractionReport``, which adds its node outputs and a status line).

    Attributes:
        transform: the registration after this interaction (``None`` before the first update).
        frames: frames acquired so far; updates: gradient steps run so far in the session.
        update_seconds: wall time of each gradient step of this interaction.
        preparation_seconds: wall time of the initial alignment and the network inputs.
        predict_seconds: wall time of the prediction.
        quality: the update's quality signals (:mod:`.quality`), ``None`` before the first update.
        quality_seconds: wall time of the quality signals (the spread's predictions included).
        cancelled: ``True`` if :meth:`AdaptationSession.cancel` stopped the steps early.
        status: a one-line summary for a GUI.
    """

    transform: Transform | None
    frames: int
    updates: int
    update_seconds: list[float] = field(default_factory=list)
    preparation_seconds: float = 0.0
    predict_seconds: float = 0.0
    quality: QualitySignals | None = None
    quality_seconds: float = 0.0
    cancelled: bool = False
    status: str = ""

    @property
    def seconds(self) -> float:
        """Total wall time of the interaction."""
        return sum(self.update_seconds) + self.preparation_seconds + self.predict_seconds + self.quality_seconds


@dataclass(frozen=True)
class SessionState:
    """Everything an interaction changes in an :class:`AdaptationSession`, as :meth:`AdaptationSession.snapshot`
    took it. The accumulators and landmark arrays are held by reference: the session replaces them, never
    writes into them."""

    model: dict
    optimizer: dict
    groups: tuple
    frame_poses: tuple
    landmarks_moving: np.ndarray
    landmarks_fixed: np.ndarray
    updates: int
    problem: RegistrationProblem | None
    registration: Transform | None


def _cloned(value):
    """A copy of a (nested dict and list of) tensors, for a snapshot (a few times faster than ``copy.deepcopy``)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        copied = type(value)((key, _cloned(item)) for key, item in value.items())
        if hasattr(value, "_metadata"):  # a module state_dict's versions, which load_state_dict reads
            copied._metadata = value._metadata
        return copied
    if isinstance(value, list):
        return [_cloned(item) for item in value]
    return value


def _check_finite(array, what: str) -> None:
    """Refuse NaN or infinite values, naming what holds them."""
    if not np.isfinite(np.asarray(array, dtype=float)).all():
        raise InputError(f"{what}: holds NaN or infinite values")


class AdaptationSession:
    """Registration of one MR to a TRUS sweep as it is acquired.

    Memory is bounded whatever the number of frames: acquired frames are written
    into fixed-size accumulators on the TRUS grid, not kept: one per group of the
    quality signals' jackknife (frame ``n`` goes to group ``n mod groups``), whose
    sum is what the registration sees.

    Args:
        model: the initial network (copied; the caller's is never changed).
        moving_image: the MR, (1, mk, mj, mi) with its grid.
        moving_labels: MR labels (C, mk, mj, mi); channel 0, the gland, is used.
        fixed_grid: the TRUS grid that frames are placed in and results are defined on.
        initial: ``"frames"`` (recompute from the acquired gland at each interaction),
            an alignment name of :func:`alignment.initial_alignment` that needs no TRUS
            label, or a 4x4 fixed-world -> moving-world matrix.
        settings: adaptation settings.
        device: where the network runs (:func:`devices.torch_device`).
        precision: ``auto``, ``fp32`` or ``bf16`` (:mod:`precision`): the network's arithmetic.

    Raises:
        InputError: for an empty MR gland, or NaN or infinite values in the MR, its labels, the TRUS grid, the
            network's weights or the settings; a device or precision this machine lacks.
    """

    def __init__(self, model: RegistrationNet, moving_image: Volume, moving_labels: Volume, fixed_grid: Grid,
                 initial: str | np.ndarray = "frames", settings: AdaptationSettings = AdaptationSettings(),
                 device: str | torch.device = "cpu", precision: str = "auto"):
        _check_finite(moving_image.array, moving_image.source)
        _check_finite(moving_labels.array, moving_labels.source)
        _check_finite(fixed_grid.index_to_world, f"the TRUS grid ({fixed_grid.describe()})")
        if not (moving_labels.array[0] > 0.5).any():
            raise InputError(f"{moving_labels.source}: the MR gland label (channel 0) is empty")
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
                raise InputError(f"the network's weight {name} holds NaN or infinite values")
        _check_settings(settings)
        self.device = torch_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.settings = settings
        self.fixed_grid = fixed_grid
        self.moving_grid = moving_image.grid
        self._initial_model = copy.deepcopy(model).to(self.device).train()
        self._initial_model.precision = self.precision
        self._moving_gland = moving_labels.array[0]
        self._moving_image = torch.as_tensor(moving_image.array[None], device=self.device)
        self._moving_labels = torch.as_tensor(moving_labels.array[None, :1], device=self.device)
        self._fixed_alignment = None if isinstance(initial, str) and initial == "frames" else \
            initial_alignment(initial, fixed_grid, self.moving_grid)
        self._cancel = threading.Event()
        self.reset()

    def snapshot(self) -> SessionState:
        """The session's state now, for :meth:`restore` (a caller whose own step after an interaction fails, such
        as writing its outputs, restores the session to before that interaction)."""
        return SessionState(_cloned(self.model.state_dict()), _cloned(self.optimizer.state_dict()), self._groups,
                            tuple(self.frame_poses), self._landmarks_moving, self._landmarks_fixed, self.updates,
                            self._problem, self._registration)

    def restore(self, state: SessionState) -> None:
        """Return to a :meth:`snapshot` of this session (taken since its last :meth:`reset`)."""
        self.model.load_state_dict(state.model)
        # load_state_dict keeps the given tensors, which the next steps update in place: give it a copy.
        self.optimizer.load_state_dict(_cloned(state.optimizer))
        self._groups = state.groups
        self.frame_poses = list(state.frame_poses)
        self._landmarks_moving, self._landmarks_fixed = state.landmarks_moving, state.landmarks_fixed
        self.updates = state.updates
        self._problem = state.problem
        self._registration = state.registration

    def reset(self) -> None:
        """Forget every interaction and return to the initial network."""
        self.model = copy.deepcopy(self._initial_model)
        self._restart()
        # Per group: (image sum, gland sum, hits) on the TRUS grid, or None before its first frame.
        self._groups: tuple = (None,) * max(1, self.settings.spread_groups)
        self.frame_poses: list[np.ndarray] = []
        self._landmarks_moving = np.zeros((0, 3))
        self._landmarks_fixed = np.zeros((0, 3))
        self.updates = 0
        self._problem: RegistrationProblem | None = None
        self._registration: Transform | None = None  # the last update's, for the quality signals' change

    def _restart(self) -> None:
        """The initial network's weights and a fresh optimiser (the acquired frames and pairs are kept)."""
        self.model.load_state_dict(self._initial_model.state_dict())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.settings.learning_rate)

    def _clock(self) -> float:
        """Seconds for timing; waits for queued GPU work so that it is counted where it was issued."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @property
    def frame_count(self) -> int:
        return len(self.frame_poses)

    def cancel(self) -> None:
        """Ask a running update (from another thread) to stop after its current gradient step."""
        self._cancel.set()

    def add_frames(self, frames: Sequence[Frame]) -> AdaptationResult:
        """Add tracked frames and, from the second frame on, adapt and predict.

        Raises:
            FrameError: for a frame with NaN or infinite pixels or pose, outside the TRUS grid, with an empty
                gland label, or on a plane already acquired (numbered within ``frames``).
            AdaptationError: when the adaptation diverges.
            In every case, and for any other error, the session is unchanged.
        """
        self._cancel.clear()  # a cancel() from now on, even while frames are checked, stops this interaction
        _check_settings(self.settings)
        frames = list(frames)
        rasterised = []
        poses = list(self.frame_poses)
        for index, frame in enumerate(frames, start=1):
            problem, acquired = None, None
            for what, values in (("pixels", frame.image), ("gland label", frame.gland), ("pose", frame.pose)):
                if not np.isfinite(values).all():
                    problem = f"has NaN or infinite values in its {what}"
                    break
            if problem is None:
                same = [n for n, pose in enumerate(poses, start=1)
                        if np.allclose(frame.pose, pose, atol=SAME_POSE_TOLERANCE)]
                if same and same[0] <= self.frame_count:
                    problem, acquired = "lies on a plane already acquired", same[0]
                elif same:
                    problem = f"lies on the plane of frame {same[0] - self.frame_count} of the {len(frames)} given"
            if problem is None and not (frame.gland > 0.5).any():
                problem = "has an empty gland label"
            if problem is None:
                image, gland, mask = rasterise_frames([frame], self.fixed_grid)
                if not mask.any():
                    problem = f"lies outside the TRUS grid ({self.fixed_grid.describe()})"
            if problem is not None:
                raise FrameError(index, len(frames), problem, acquired)
            poses.append(frame.pose)
            rasterised.append((image, gland, mask, frame.pose))
        state = self.snapshot()
        try:
            # New arrays, never in place: a snapshot holds the old ones.
            for image, gland, mask, pose in rasterised:
                groups = list(self._groups)
                group = self.frame_count % len(groups)
                added = (image * mask, gland * mask, mask)
                groups[group] = added if groups[group] is None else tuple(
                    total + new for total, new in zip(groups[group], added))
                self._groups = tuple(groups)
                self.frame_poses.append(pose)
            return self._interact()
        except BaseException:
            self.restore(state)
            raise

    def add_landmarks(self, moving_points: np.ndarray, fixed_points: np.ndarray) -> AdaptationResult:
        """Add clinician landmark pairs (MR world point, TRUS world point), LPS mm, shape (N, 3) each.

        Raises:
            InputError: for mismatched shapes, a NaN or infinite coordinate, or a point outside its image.
            AdaptationError: when the adaptation diverges.
            In every case, and for any other error, the session is unchanged.
        """
        self._cancel.clear()
        _check_settings(self.settings)
        moving_points = np.asarray(moving_points, dtype=float).reshape(-1, 3)
        fixed_points = np.asarray(fixed_points, dtype=float).reshape(-1, 3)
        if moving_points.shape != fixed_points.shape:
            raise InputError(f"landmark pairs need as many MR points as TRUS points, got {len(moving_points)} "
                             f"and {len(fixed_points)}")
        for name, points, grid in (("MR", moving_points, self.moving_grid), ("TRUS", fixed_points, self.fixed_grid)):
            not_finite = np.flatnonzero(~np.isfinite(points).all(axis=1))
            if not_finite.size:
                raise InputError(f"{name} landmark {not_finite[0] + 1} has a NaN or infinite coordinate "
                                 f"({points[not_finite[0]].tolist()})")
            index = apply_affine(grid.world_to_index, points)
            outside = np.flatnonzero(((index < -0.5) | (index > np.asarray(grid.size) - 0.5)).any(axis=1))
            if outside.size:
                raise InputError(f"{name} landmark {outside[0] + 1} at {np.round(points[outside[0]], 1).tolist()} mm "
                                 f"lies outside the {name} image")
        state = self.snapshot()
        try:
            self._landmarks_moving = np.vstack([self._landmarks_moving, moving_points])
            self._landmarks_fixed = np.vstack([self._landmarks_fixed, fixed_points])
            return self._interact()
        except BaseException:
            self.restore(state)
            raise

    def _acquired(self, leave_out: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image, gland, mask) (k, j, i) float32 of the frames acquired, but those of group ``leave_out``."""
        kept = [group for n, group in enumerate(self._groups) if group is not None and n != leave_out]
        image_sum, gland_sum, hits = (sum(parts) for parts in zip(*kept))
        divisor = np.maximum(hits, 1)
        return ((image_sum / divisor).astype(np.float32), (gland_sum / divisor).astype(np.float32),
                (hits > 0).astype(np.float32))

    def _build(self, leave_out: int | None = None) -> tuple[RegistrationProblem, float]:
        """The problem of everything acquired so far (but frame group ``leave_out``), and the seconds it took
        (alignment included)."""
        start = self._clock()
        image, gland, mask = self._acquired(leave_out)
        initial = self._fixed_alignment if self._fixed_alignment is not None else \
            frames_gland_alignment(self._moving_gland, self.moving_grid, gland, mask, self.fixed_grid)
        as_tensor = lambda a: torch.as_tensor(a[None, None], device=self.device)  # noqa: E731
        problem = build_problem(self._moving_image, self._moving_labels, self.moving_grid, self.fixed_grid, initial,
                                as_tensor(image), as_tensor(gland), as_tensor(mask), as_tensor(gland),
                                as_tensor(mask))
        if len(self._landmarks_fixed):
            problem.landmarks_moving = torch.as_tensor(self._landmarks_moving, dtype=torch.float32, device=self.device)
            problem.landmarks_fixed = torch.as_tensor(self._landmarks_fixed, dtype=torch.float32, device=self.device)
        return problem, self._clock() - start

    def _interact(self) -> AdaptationResult:
        if self.frame_count < F_MIN:
            return AdaptationResult(None, self.frame_count, self.updates,
                                status=f"{self.frame_count} frame acquired; the first update needs {F_MIN}")
        self._problem, preparation_seconds = self._build()
        step_seconds, cancelled = [], False
        for step in range(self.settings.updates_per_interaction):
            if self._cancel.is_set():
                cancelled = True
                break
            if step == 0 and self.settings.restart:  # not before: a cancel before any step keeps the weights
                self._restart()
            start = self._clock()
            loss = adaptation_step(self.model, self.optimizer, self._problem, self.settings)
            step_seconds.append(self._clock() - start)
            self.updates += 1
            if not np.isfinite(loss):
                raise AdaptationError(f"the adaptation diverged: the loss of update {self.updates} is {loss}; the "
                                      "session is unchanged (lower the learning rate or check the inputs)")
        start = self._clock()
        transform = self.predict()
        predict_seconds = self._clock() - start
        if not np.isfinite(transform.displacement).all():
            raise AdaptationError(f"the adaptation diverged: the displacement after update {self.updates} holds NaN "
                                  "or infinite values; the session is unchanged (lower the learning rate)")
        start = self._clock()
        quality = self._quality(transform)
        quality_seconds = self._clock() - start
        self._registration = transform
        status = (f"{self.frame_count} frames, {len(self._landmarks_fixed)} landmark pairs, {self.updates} updates"
                  + (" (cancelled)" if cancelled else ""))
        return AdaptationResult(transform, self.frame_count, self.updates, step_seconds, preparation_seconds,
                                predict_seconds, quality, quality_seconds, cancelled, status)

    def _quality(self, transform: Transform) -> QualitySignals:
        """The quality signals of a new registration (:mod:`.quality`): the spread's replicates leave out each
        frame group in turn, when at least two groups hold frames."""
        filled = [n for n, group in enumerate(self._groups) if group is not None]
        replicates = [self._registration_of(self._build(leave_out=n)[0]) for n in filled] if len(filled) > 1 else []
        _, gland, mask = self._acquired()
        return quality_signals(transform, self._registration, replicates, self._moving_gland, self.moving_grid,
                               gland, mask)

    def predict(self) -> Transform:
        """The registration from the current network and everything acquired so far: the network's field,
        corrected to honour the landmark pairs given (``settings.landmark_radius_mm``, :mod:`.landmarks`).

        Raises:
            InputError: before the second frame has been acquired.
        """
        if self._problem is None:
            if self.frame_count < F_MIN:
                raise InputError(f"no registration yet: {self.frame_count} frame(s) acquired, {F_MIN} needed")
            self._problem, _ = self._build()
        return self._registration_of(self._problem)

    def _registration_of(self, problem: RegistrationProblem) -> Transform:
        """The current network's registration of ``problem``, corrected to honour the landmark pairs."""
        with torch.inference_mode():
            displacement = self.model(problem.inputs)[0].double().cpu().numpy()
        transform = Transform(problem.initial.double().cpu().numpy(), displacement, self.fixed_grid)
        if len(self._landmarks_fixed) and self.settings.landmark_radius_mm > 0:
            transform, _ = corrected(transform, self._landmarks_fixed, self._landmarks_moving,
                                     self.settings.landmark_radius_mm)
        return transform


def _check_settings(settings: AdaptationSettings) -> None:
    """Refuse settings with a NaN or infinite number (validated settings have none; a forged object may)."""
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if isinstance(value, float) and not np.isfinite(value):
            raise InputError(f"adaptation setting {item.name} is {value}; a finite number is needed")
