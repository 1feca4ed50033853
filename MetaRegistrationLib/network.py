"""The registration network: a small LocalNet that predicts a dense displacement field.

The network sees the TRUS (fixed) frames acquired so far and the MR (moving)
resampled onto the TRUS grid through the initial alignment, and predicts the
displacement ``u`` of :mod:`MetaRegistrationLib.geometry`: (B, 3, k, j, i) in mm,
channels = world axes (x, y, z), on the fixed grid, so that
``phi(x) = A @ (x + u(x))``.

Why MONAI's ``LocalNet``
    It is the encoder-decoder of the weakly-supervised MR-to-TRUS registration
    papers this project follows (Hu et al., Medical Image Analysis 2018): residual
    down blocks, additive up-sampling, and a displacement extracted at several
    decoder levels and averaged. Using MONAI's implementation keeps the
    architecture recognisable and tested; four local changes fit it to
    interactive use:

    * batch norm becomes instance norm with affine parameters. Adaptation and
      meta-learning run one case at a time; instance norm behaves the same in
      train and eval mode, keeps no running statistics, and leaves a state dict of
      parameters only, which Reptile can interpolate and safetensors can store.
    * the per-level displacements are resized trilinearly (as in DeepReg's
      original LocalNet) instead of MONAI's nearest default, which would make the
      field blocky and its bending energy meaningless.
    * the inputs are average-pooled by ``input_downsample`` and the displacement
      is upsampled trilinearly back to the fixed grid: at 3 mm one adaptation step
      fits the interactive budget on two CPU cores.
    * the finest level's kernels are ``first_kernel_size`` (5) wide, not
      LocalNet's 7: 7 voxels were 5.6 mm at DeepReg's 0.8 mm, 5 voxels are
      already 15 mm at 3 mm; and 5 runs on oneDNN, which PyTorch does not use
      for 3x3x3 kernels at batch size 1 on the CPU, so the network's forward and
      backward pass is about a third faster than with either 7 or 3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from monai.networks.blocks.regunet_block import RegistrationExtractionBlock
from monai.networks.nets import LocalNet
from pydantic import Field, field_validator
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError
from torch import nn

from .settings import STRICT, NonNegativeInt, PositiveInt, validated

INPUT_CHANNELS = ("fixed_image", "fixed_gland", "acquired_mask", "moving_image", "moving_gland")
"""The network's input channels in order, as :func:`make_inputs` stacks them."""

OUTPUT_INIT_STD = 1e-4
"""Standard deviation of the output convolutions' initial weights: the initial
displacement is of the order of 1e-3 mm (near identity) but not exactly zero, so
every layer receives a gradient from the first step on."""


MIN_DEEPEST_SIZE = 3
"""Voxels along each axis at the encoder's deepest level, at least (inputs are padded to it). Instance norm needs
more than one; and with two along the first spatial axis, torch 2.13's bf16 convolution weight gradient on the
CPU (oneDNN) is wrong, different from one run to the next and up to 1e37 (seen on this project's CPU; real data
here has 3 x 4 x 3 at the deepest level, so only inputs under 33 voxels along an axis are padded more)."""


@dataclass(frozen=True, config=STRICT)
class NetworkConfig:
    """The architecture of a :class:`RegistrationNet`; stored in every checkpoint.

    A pydantic dataclass in strict mode (see :mod:`.settings`): a wrong type, an unknown key or a value out of
    range is refused when it is built. ``dataclasses.asdict(config)`` is JSON-serialisable and
    :meth:`from_dict` reads it back (JSON lists as tuples).

    Attributes:
        in_channels: number of input channels (``len(INPUT_CHANNELS)`` for
            :func:`make_inputs`) (>= 1).
        num_channel_initial: feature channels at the finest level; doubled at
            each coarser level (>= 1).
        extract_levels: decoder levels (0 = finest) whose displacement is
            extracted and averaged; the deepest one sets the encoder depth
            (a non-empty tuple of distinct integers >= 0).
        input_downsample: factor by which the inputs are average-pooled before
            the encoder; the displacement is upsampled back to the fixed grid (>= 1).
        first_kernel_size: convolution kernel size of the finest encoder level
            (odd, >= 1; the other levels use 3).
    """

    in_channels: PositiveInt = len(INPUT_CHANNELS)
    num_channel_initial: PositiveInt = 8
    extract_levels: Annotated[tuple[NonNegativeInt, ...], Field(min_length=1)] = (0, 1, 2, 3)
    input_downsample: PositiveInt = 2
    first_kernel_size: PositiveInt = 5

    @field_validator("extract_levels")
    @classmethod
    def _distinct(cls, levels: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(levels)) != len(levels):
            raise PydanticCustomError("distinct_levels", "must not repeat a level")
        return levels

    @field_validator("first_kernel_size")
    @classmethod
    def _odd(cls, size: int) -> int:
        if size % 2 == 0:
            raise PydanticCustomError("odd_kernel", "must be odd")
        return size

    @property
    def depth(self) -> int:
        """Number of down-sampling steps in the encoder."""
        return max(self.extract_levels)

    @property
    def size_multiple(self) -> int:
        """Inputs are zero-padded to a multiple of this many voxels along each axis."""
        return self.input_downsample * 2**self.depth

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "network config", prefix: str = "") -> NetworkConfig:
        """Build a config from a mapping such as ``dataclasses.asdict(config)`` read back from JSON or YAML,
        whose lists stand for tuples.

        Args:
            values: the fields by name.
            source, prefix: what the values came from and their parent key, for the message (see
                :func:`.settings.validated`).

        Raises:
            InputError: (a ``ValueError``) one line naming ``source`` and each unknown key or invalid value.
        """
        if isinstance(values, Mapping) and isinstance(values.get("extract_levels"), list):
            values = {**values, "extract_levels": tuple(values["extract_levels"])}
        return validated(cls, values, source, prefix)


class _LocalNet(LocalNet):
    """MONAI's LocalNet with a chosen finest-level kernel size and trilinear resizing of the per-level outputs."""

    def __init__(self, first_kernel_size: int, **kwargs):
        self.first_kernel_size = first_kernel_size
        super().__init__(**kwargs)

    def build_layers(self) -> None:
        # LocalNet passes kernel sizes [7, 3, 3, ...] to RegUNet, which stores them before building.
        self.encode_kernel_sizes = [self.first_kernel_size, *self.encode_kernel_sizes[1:]]
        super().build_layers()

    def build_output_block(self) -> nn.Module:
        return RegistrationExtractionBlock(
            spatial_dims=self.spatial_dims,
            extract_levels=self.extract_levels,
            num_channels=self.num_channels,
            out_channels=self.out_channels,
            kernel_initializer=self.out_kernel_initializer,
            activation=self.out_activation,
            mode="trilinear",
            align_corners=False,
        )


def _batch_norm_to_instance_norm(module: nn.Module) -> None:
    """Replace every ``BatchNorm3d`` inside ``module`` by an affine ``InstanceNorm3d``, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm3d):
            setattr(module, name, nn.InstanceNorm3d(child.num_features, affine=True))
        else:
            _batch_norm_to_instance_norm(child)


class RegistrationNet(nn.Module):
    """LocalNet-style network: network inputs on the fixed grid -> displacement ``u`` in mm.

    Shape contract:
        inputs: (B, ``config.in_channels``, k, j, i) on the fixed grid (any size;
            padded internally to a multiple of ``config.size_multiple``).
        output: (B, 3, k, j, i) displacement in mm, channels = world axes
            (x, y, z) as :mod:`MetaRegistrationLib.geometry` defines; fp32 whatever the precision.

    Attributes:
        precision: ``"fp32"``, or ``"bf16"`` to run the LocalNet under bf16 autocast (weights and output stay fp32;
            see :mod:`MetaRegistrationLib.precision`). A run-time choice, like ``train()``/``eval()``: it is not
            saved with the weights, and a deep copy keeps it.
    """

    def __init__(self, config: NetworkConfig | None = None):
        super().__init__()
        self.config = config or NetworkConfig()
        self.precision = "fp32"
        self.local_net = _LocalNet(
            first_kernel_size=self.config.first_kernel_size,
            spatial_dims=3,
            in_channels=self.config.in_channels,
            num_channel_initial=self.config.num_channel_initial,
            extract_levels=self.config.extract_levels,
            out_channels=3,
            mode="trilinear",
            align_corners=False,
        )
        _batch_norm_to_instance_norm(self.local_net)
        for layer in self.local_net.output_block.modules():
            if isinstance(layer, nn.Conv3d):
                nn.init.normal_(layer.weight, std=OUTPUT_INIT_STD)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Predict the displacement (B, 3, k, j, i) in mm for inputs (B, in_channels, k, j, i).

        Raises:
            ValueError: if ``inputs`` is not (B, in_channels, k, j, i).
        """
        if inputs.dim() != 5 or inputs.shape[1] != self.config.in_channels:
            raise ValueError(f"inputs must be (B, {self.config.in_channels}, k, j, i), "
                             f"got shape {tuple(inputs.shape)}")
        size = inputs.shape[2:]
        multiple = self.config.size_multiple
        padded = [max(-(-n // multiple), MIN_DEEPEST_SIZE) * multiple for n in size]
        # F.pad lists (before, after) pairs from the last axis backwards; padding only
        # after keeps voxel (0, 0, 0) in place, so cropping is a plain slice.
        padding = [amount for n, p in zip(reversed(size), reversed(padded)) for amount in (0, p - n)]
        x = F.pad(inputs, padding)
        factor = self.config.input_downsample
        if factor > 1:
            x = F.avg_pool3d(x, factor)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            displacement = self.local_net(x)
        displacement = displacement.float()
        if factor > 1:
            # Millimetres do not scale with the grid, so the values are only resampled.
            displacement = F.interpolate(displacement, scale_factor=factor, mode="trilinear", align_corners=False)
        return displacement[:, :, : size[0], : size[1], : size[2]]


def make_inputs(
    fixed_image: torch.Tensor,
    fixed_gland: torch.Tensor,
    acquired_mask: torch.Tensor,
    moving_image_on_fixed: torch.Tensor,
    moving_gland_on_fixed: torch.Tensor,
    intensity_max: float = 255.0,
) -> torch.Tensor:
    """Stack the network's input channels, in the order of :data:`INPUT_CHANNELS`.

    Every argument is (B, 1, k, j, i) on the fixed grid. The TRUS image and gland
    are kept only where ``acquired_mask`` is 1 (the frames acquired so far; ones
    everywhere for a whole volume); the mask itself is a channel, so the network
    can tell "not acquired" from "dark". The MR image and gland must already be
    resampled onto the fixed grid through the initial alignment
    (``geometry.warp(moving, moving_grid, fixed_grid, initial)``).

    Images are divided by ``intensity_max`` (255 for this data), a fixed scale
    rather than a per-volume one, so the input does not change meaning as frames
    accumulate.

    Returns:
        (B, 5, k, j, i): TRUS image, TRUS gland, acquired mask, MR image, MR gland.

    Raises:
        ValueError: if the shapes differ or are not (B, 1, k, j, i).
    """
    named = {
        "fixed_image": fixed_image,
        "fixed_gland": fixed_gland,
        "acquired_mask": acquired_mask,
        "moving_image_on_fixed": moving_image_on_fixed,
        "moving_gland_on_fixed": moving_gland_on_fixed,
    }
    expected = tuple(fixed_image.shape)
    for name, tensor in named.items():
        if tensor.dim() != 5 or tensor.shape[1] != 1 or tuple(tensor.shape) != expected:
            raise ValueError(f"{name} must be (B, 1, k, j, i) like fixed_image {expected}, "
                             f"got shape {tuple(tensor.shape)}")
    mask = acquired_mask.to(fixed_image.dtype)
    return torch.cat(
        [
            fixed_image / intensity_max * mask,
            fixed_gland * mask,
            mask,
            moving_image_on_fixed / intensity_max,
            moving_gland_on_fixed,
        ],
        dim=1,
    )
