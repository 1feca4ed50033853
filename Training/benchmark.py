"""``metareg benchmark``: time one adaptation update and one prediction, against a plain MONAI LocalNet step.

Interactive use needs, on two CPU cores at the TRUS grid (47 x 63 x 44 voxels),
one adaptation update (forward, loss, backward, Adam step) within 0.5 s and one
prediction (forward, warp of the MR gland) within 0.2 s. Every timing repeats the
same call on the same input and reports the median, after warm-up calls that
let torch settle its allocations and kernels.

Without ``--data`` the case is the phantom of :mod:`MetaRegistrationLib.phantom`
(the real grid sizes); with it, the case is read by
:mod:`MetaRegistrationLib.data` (its errors reach the CLI as one-line messages).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import BendingEnergyLoss, DiceLoss, MultiScaleLoss
from monai.networks.blocks import Warp
from monai.networks.nets import LocalNet

from MetaRegistrationLib.data import Case, Dataset, Volume
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.geometry import Grid, initial_alignment, warp
from MetaRegistrationLib.losses import DICE_SCALES_MM, registration_loss
from MetaRegistrationLib.network import NetworkConfig, RegistrationNet, make_inputs
from MetaRegistrationLib.phantom import make_phantom_case
from MetaRegistrationLib.sweep import SAGITTAL_AXIS

UPDATE_BUDGET_S = 0.5
PREDICT_BUDGET_S = 0.2
WARMUP_CALLS = 2
ACQUIRED_PLANES = 10
"""Frames in the benchmark's acquired-frame mask: sagittal planes of constant j (see MetaRegistrationLib.sweep)."""

LEARNING_RATE = 1e-3
REFERENCE_CHANNELS = 16
REFERENCE_MULTIPLE = 16
"""The reference LocalNet's input is zero-padded to a multiple of this: it needs 2**3 for its three
down-samplings, and 16 gives the 48 x 64 x 48 its time was first quoted on."""


@dataclass
class Pair:
    """A fixed/moving pair as (1, 1, k, j, i) tensors with their grids.

    Attributes:
        name: the case ID.
        fixed_image, fixed_gland: on ``fixed_grid``.
        moving_image, moving_gland: on ``moving_grid``.
        initial: (4, 4) initial alignment, fixed world -> moving world.
    """

    name: str
    fixed_grid: Grid
    moving_grid: Grid
    fixed_image: torch.Tensor
    fixed_gland: torch.Tensor
    moving_image: torch.Tensor
    moving_gland: torch.Tensor
    initial: torch.Tensor


def case_pair(case: Case) -> Pair:
    """The benchmark's pair from a case: images and gland (label channel 0), initial alignment by FOV centres."""
    # The field-of-view centres need no label, so the inputs do not depend on the full TRUS gland.
    initial = initial_alignment("fov-centre", case.fixed_image.grid, case.moving_image.grid)

    def tensor(volume: Volume) -> torch.Tensor:
        return torch.as_tensor(volume.array[:1], dtype=torch.float32)[None]

    return Pair(case.case_id, case.fixed_image.grid, case.moving_image.grid, tensor(case.fixed_image),
                tensor(case.fixed_labels), tensor(case.moving_image), tensor(case.moving_labels),
                torch.as_tensor(initial, dtype=torch.float32))


def load_case(root: str | Path | None, case_id: str | None) -> Case:
    """A case of a data set folder (its first case if ``case_id`` is ``None``), or the phantom without a folder."""
    if root is None:
        return make_phantom_case(seed=0)[0]
    dataset = Dataset(root)
    if case_id is None:
        ids = dataset.case_ids()
        if not ids:
            raise InputError(f"{root}: the data set has no complete case")
        case_id = ids[0]
    return dataset.load(case_id)


def acquired_mask(shape_kji: tuple[int, int, int], planes: int = ACQUIRED_PLANES) -> torch.Tensor:
    """(1, 1, k, j, i) mask of ``planes`` evenly spread sagittal frames (planes of constant j)."""
    mask = np.zeros(shape_kji, dtype=np.float32)
    positions = np.linspace(0, shape_kji[SAGITTAL_AXIS] - 1, planes).round().astype(int)
    index = [slice(None)] * 3
    index[SAGITTAL_AXIS] = positions
    mask[tuple(index)] = 1.0
    return torch.as_tensor(mask)[None, None]


def _median_seconds(call: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``call`` over ``repeats`` runs after ``warmup`` untimed ones."""
    times = []
    for index in range(warmup + repeats):
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels run asynchronously: wait before reading the clock
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_update_and_predict(pair: Pair, config: NetworkConfig, repeats: int, device: torch.device,
                            warmup: int = WARMUP_CALLS) -> tuple[float, float]:
    """Median seconds of one adaptation update and of one prediction with a fresh :class:`RegistrationNet`."""
    torch.manual_seed(0)
    net = RegistrationNet(config).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    fixed_image, fixed_gland, moving_image, moving_gland, initial = (
        t.to(device) for t in (pair.fixed_image, pair.fixed_gland, pair.moving_image, pair.moving_gland, pair.initial))
    mask = acquired_mask(pair.fixed_grid.array_shape).to(device)
    # MR resampled through the initial alignment: computed once per case, not per update.
    moving_on_fixed = warp(torch.cat([moving_image, moving_gland], dim=1), pair.moving_grid, pair.fixed_grid, initial)
    inputs = make_inputs(fixed_image, fixed_gland, mask, moving_on_fixed[:, :1], moving_on_fixed[:, 1:])
    spacing = pair.fixed_grid.spacing

    def update() -> None:
        displacement = net(inputs)
        warped = warp(moving_gland, pair.moving_grid, pair.fixed_grid, initial, displacement)
        loss = registration_loss(warped, fixed_gland, displacement, spacing, mask=mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    @torch.inference_mode()
    def predict() -> torch.Tensor:
        return warp(moving_gland, pair.moving_grid, pair.fixed_grid, initial, net(inputs))

    return (_median_seconds(update, repeats, warmup, device),
            _median_seconds(predict, repeats, warmup, device))


def time_reference_step(pair: Pair, repeats: int, device: torch.device, warmup: int = 1,
                        num_channel_initial: int = REFERENCE_CHANNELS) -> float:
    """Median seconds of one training step of plain MONAI LocalNet on the full-resolution pair.

    The setting quoted before this project's network was designed: the fixed
    image and the initially aligned MR as two channels, zero-padded to a
    multiple of 16 (48 x 64 x 48 for this data), ``MultiScaleLoss(DiceLoss)``
    over the same scales (in voxels, as MONAI takes them) plus
    ``BendingEnergyLoss``, and an Adam step.
    """
    torch.manual_seed(0)
    net = LocalNet(spatial_dims=3, in_channels=2, num_channel_initial=num_channel_initial,
                   extract_levels=(0, 1, 2, 3)).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    moving = torch.cat([pair.moving_image, pair.moving_gland], dim=1).to(device)
    moving_on_fixed = warp(moving, pair.moving_grid, pair.fixed_grid, pair.initial.to(device))
    size = pair.fixed_image.shape[2:]
    padding = [amount for n in reversed(size) for amount in (0, -n % REFERENCE_MULTIPLE)]
    images = F.pad(torch.cat([pair.fixed_image.to(device), moving_on_fixed[:, :1]], dim=1) / 255.0, padding)
    moving_gland = F.pad(moving_on_fixed[:, 1:], padding)
    fixed_gland = F.pad(pair.fixed_gland.to(device), padding)
    label_loss = MultiScaleLoss(DiceLoss(), scales=list(DICE_SCALES_MM))
    bending = BendingEnergyLoss()
    with warnings.catch_warnings():
        # MONAI's notes on its own internals (native grid_sample, indexing deprecations): nothing a user can act on.
        warnings.simplefilter("ignore", UserWarning)
        warper = Warp()

        def step() -> None:
            ddf = net(images)
            loss = label_loss(fixed_gland, warper(moving_gland, ddf)) + bending(ddf)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return _median_seconds(step, repeats, warmup, device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``benchmark`` options to ``parser``."""
    parser.add_argument("--data", metavar="DIR", help="data set folder; without it the built-in phantom case "
                        "(the real grid sizes) is used")
    parser.add_argument("--case", metavar="ID", help="case of --data to time (default: its first case)")
    parser.add_argument("--repeats", type=int, default=20, metavar="N",
                        help=f"timed calls of update and predict, after {WARMUP_CALLS} warm-up calls (default: 20)")
    parser.add_argument("--reference-repeats", type=int, default=3, metavar="N",
                        help="timed steps of the plain MONAI LocalNet reference, after one warm-up "
                             "(default: 3; 0 skips it)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed ``args``; prints a table or one JSON object; returns 0."""
    if args.repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {args.repeats}")
    if args.reference_repeats < 0:
        raise InputError(f"--reference-repeats must be 0 or more, got {args.reference_repeats}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA device on this machine")
    if args.case is not None and args.data is None:
        raise InputError("--case needs --data")
    device = torch.device(args.device)
    pair = case_pair(load_case(args.data, args.case))
    config = NetworkConfig()
    update_s, predict_s = time_update_and_predict(pair, config, args.repeats, device)
    reference_s = time_reference_step(pair, args.reference_repeats, device) if args.reference_repeats else None
    result = {
        "case": pair.name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fixed_shape_kji": list(pair.fixed_grid.array_shape),
        "repeats": args.repeats,
        "reference_repeats": args.reference_repeats,
        "network": dataclasses.asdict(config),
        "update_median_s": update_s,
        "predict_median_s": predict_s,
        "reference_step_median_s": reference_s,
        "update_budget_s": UPDATE_BUDGET_S,
        "predict_budget_s": PREDICT_BUDGET_S,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"case {pair.name}, fixed grid (k, j, i) = {pair.fixed_grid.array_shape}, device {device}, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    print(f"{'step':<16}{'median s':>10}{'budget s':>10}{'repeats':>9}")
    rows = [("update", update_s, f"{UPDATE_BUDGET_S:g}", args.repeats),
            ("predict", predict_s, f"{PREDICT_BUDGET_S:g}", args.repeats)]
    if reference_s is not None:
        rows.append(("reference_step", reference_s, "-", args.reference_repeats))
    for name, seconds, budget, repeats in rows:
        print(f"{name:<16}{seconds:>10.3f}{budget:>10}{repeats:>9}")
    return 0
