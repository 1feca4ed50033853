"""The bundled prostate segmenter of one 2D TRUS frame, for frames that arrive without a gland segmentation.

A frame's gland (:class:`~MetaRegistrationLib.sweep.Frame.gland`) is an input of the registration; in the
operating room no one draws it, so the live mode, ``metareg`` (``--frame-glands predicted``) and the web app
predict it with this network when no segmentation comes with the frame.

The network is MONAI's ``BasicUNet`` (2D, one input channel, one logit), trained by ``metareg-train segmenter``
(:mod:`Training.segmenter`) on planes of the training split's TRUS volumes with their gland labels. It sees
frames at the pixel size it was trained at (``pixel_mm`` of its card, 1.5 mm for the bundled one): a frame of
another pixel size is resampled to it and the prediction resampled back (nearest). Intensities are scaled per
frame by :func:`normalise_intensity`, so the gain of the scanner does not matter. The prediction is
thresholded at 0.5 and only its largest connected region is kept (the gland is one region on a sagittal plane).

Shapes: a frame image is ``(V, U)`` pixels (rows ``v``, columns ``u``, as in :class:`~MetaRegistrationLib.sweep.Frame`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import CheckpointError, InputError
from .sweep import Frame

BUNDLED_FRAME_SEGMENTER = Path(__file__).resolve().parent / "bundled_models" / "frame-segmenter"
"""Stem of the bundled frame segmenter (the one place that names it)."""

_LOW_PERCENTILE, _HIGH_PERCENTILE = 1.0, 99.0


@dataclass(frozen=True)
class SegmenterConfig:
    """The frame segmenter's architecture and input convention (the card's ``config``).

    Attributes:
        features: ``BasicUNet`` feature counts, five levels and the last block (4 poolings, so inputs are padded
            to a multiple of 16 pixels).
        pixel_mm: the pixel size in mm the network was trained at; frames are resampled to it.
        dropout: ``BasicUNet``'s dropout in training (none at inference).
    """

    features: tuple[int, ...] = (16, 32, 64, 128, 256, 16)
    pixel_mm: float = 1.5
    dropout: float = 0.0

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.features) - 2)


class SegmenterNet(torch.nn.Module):
    """``BasicUNet`` from a (1, 1, H, W) normalised frame to (1, 1, H, W) gland logits; H and W multiples of
    :attr:`SegmenterConfig.size_multiple`."""

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.config = config
        self.unet = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=tuple(config.features),
                              norm=("instance", {"affine": True}), dropout=config.dropout)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.unet(image)


def frame_logits(network: SegmenterNet, images: torch.Tensor) -> torch.Tensor:
    """Gland logits (B, 1, H, W) of normalised frames (B, 1, H, W) of any size: padded (edge values) to the
    network's size multiple and cropped back."""
    height, width = images.shape[-2:]
    multiple = network.config.size_multiple
    padded = F.pad(images, (0, -width % multiple, 0, -height % multiple), mode="replicate")
    return network(padded)[..., :height, :width]


def _config_from(values: dict) -> SegmenterConfig:
    known = {f.name for f in dataclasses.fields(SegmenterConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown segmenter config keys {', '.join(unknown)}")
    config = SegmenterConfig(**{**values, "features": tuple(values.get("features", SegmenterConfig.features))})
    if len(config.features) != 6 or not config.pixel_mm > 0:
        raise ValueError("a segmenter needs 6 feature counts and a positive pixel_mm")
    return config


def normalise_intensity(image: np.ndarray) -> np.ndarray:
    """A frame's pixels scaled so that its 1st and 99th percentiles are 0 and 1 (clipped to [0, 1]), float32.

    Per-frame scaling makes the segmenter indifferent to the scanner's gain and the image's units (0..255,
    0..1, 12-bit). A constant frame becomes all zeros.
    """
    image = np.asarray(image, dtype=np.float32)
    low, high = np.percentile(image, [_LOW_PERCENTILE, _HIGH_PERCENTILE])
    if not high > low:
        return np.zeros_like(image)
    return np.clip((image - low) / (high - low), 0.0, 1.0).astype(np.float32)


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a boolean mask (the mask itself when it has at most one)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(np.argmax(sizes)))


class FrameSegmenter:
    """A trained frame segmenter: :meth:`segment` a frame's pixels, :meth:`segment_frame` a whole frame.

    Attributes:
        network: the :class:`SegmenterNet`, in eval mode on the CPU.
        config: its :class:`SegmenterConfig`.
        card: its checkpoint card (``{}`` for one never saved).
    """

    def __init__(self, network: SegmenterNet, card: dict | None = None):
        self.network = network.eval()
        self.config = network.config
        self.card = card or {}

    def probability(self, image: np.ndarray, spacing: tuple[float, float] | None = None) -> np.ndarray:
        """The gland probability (V, U) of a frame's pixels.

        Args:
            image: (V, U) pixel values (any units).
            spacing: pixel size in mm along (u, v); the network's ``pixel_mm`` when omitted.
        """
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2:
            raise InputError(f"a frame to segment must be a 2D (V, U) image, got shape {image.shape}")
        rows, columns = image.shape
        u_mm, v_mm = spacing or (self.config.pixel_mm, self.config.pixel_mm)
        size = (max(1, round(rows * v_mm / self.config.pixel_mm)), max(1, round(columns * u_mm / self.config.pixel_mm)))
        tensor = torch.from_numpy(normalise_intensity(image))[None, None]
        if size != (rows, columns):
            tensor = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
        with torch.inference_mode():
            probability = torch.sigmoid(frame_logits(self.network, tensor))
        if size != (rows, columns):
            probability = F.interpolate(probability, size=(rows, columns), mode="bilinear", align_corners=False)
        return probability[0, 0].numpy()

    def segment(self, image: np.ndarray, spacing: tuple[float, float] | None = None) -> np.ndarray:
        """The gland (V, U) float32 0/1 of a frame's pixels: probability above 0.5, largest region only."""
        return largest_region(self.probability(image, spacing) > 0.5).astype(np.float32)

    def segment_frame(self, frame: Frame) -> Frame:
        """The frame with its gland replaced by the prediction (the image and pose are shared, not copied)."""
        return Frame(frame.image, self.segment(frame.image, frame.spacing), frame.pose)


def _build(config: dict) -> SegmenterNet:
    return SegmenterNet(_config_from(config))


def load_frame_segmenter(path: str | Path | None = None) -> FrameSegmenter:
    """Load a frame segmenter checkpoint (the bundled one by default).

    Raises:
        CheckpointError: naming the file if it is missing, tampered with, not a segmenter or does not fit.
    """
    stem = BUNDLED_FRAME_SEGMENTER if path is None else Path(path)
    network, card = load_checkpoint(stem, _build)
    if card.get("kind") != "frame-segmenter":
        raise CheckpointError(f"{stem}.json: is not a frame segmenter card (its kind is {card.get('kind')!r})")
    return FrameSegmenter(network, card)


def save_frame_segmenter(path: str | Path, network: SegmenterNet, provenance: dict | None = None,
                         description: dict | None = None) -> None:
    """Save a frame segmenter so that :func:`load_frame_segmenter` restores it."""
    save_checkpoint(path, network, dataclasses.asdict(network.config), provenance,
                    {"kind": "frame-segmenter", **(description or {})})
