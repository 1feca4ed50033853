"""Loading and saving registration models: a network plus the adaptation settings it was trained for.

A model is a checkpoint pair (``NAME.safetensors`` + ``NAME.json``, see
:mod:`MetaRegistrationLib.checkpoint`) whose card's ``config`` holds
``{"network": NetworkConfig fields, "adaptation": AdaptationSettings fields}``.
The bundled meta-learned initialisation is package data of this library
(``bundled_models/``): it travels with the library into a wheel and, copied by
``MetaRegistration/CMakeLists.txt``, into a built Slicer extension.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple, Union

from .settings import AdaptationSettings, validated
from .checkpoint import checkpoint_files, load_checkpoint, resolve_checkpoint, save_checkpoint
from .errors import CheckpointError, InputError
from .network import NetworkConfig, RegistrationNet

BUNDLED_MODEL = Path(__file__).resolve().parent / "bundled_models" / "meta-init"
"""Stem of the bundled meta-learned initialisation (the one place that names it)."""


def model_config(network: NetworkConfig, adaptation: AdaptationSettings) -> dict:
    """The checkpoint ``config`` of a model."""
    return {"network": dataclasses.asdict(network), "adaptation": dataclasses.asdict(adaptation)}


def _build(config: dict) -> RegistrationNet:
    return RegistrationNet(NetworkConfig.from_dict(config["network"]))


class Model(NamedTuple):
    """A registration model in memory: the network, the adaptation settings it is used with, and its card
    (``{}`` for a model that was never saved)."""

    network: RegistrationNet
    settings: AdaptationSettings
    card: dict


ModelSource = Union[str, Path, Model, None]
"""Where a model comes from: a checkpoint stem or file, a model in memory, or ``None`` for the bundled one."""


def load_model(path: str | Path | None = None) -> Model:
    """Load a model (the bundled one by default).

    Raises:
        CheckpointError: naming the file, if it is missing, tampered with or does not fit, or if its adaptation
            settings have a wrong type, an unknown key or a value out of range.
    """
    path = resolve_checkpoint(BUNDLED_MODEL if path is None else path)  # through a run's ``latest`` pointer
    network, card = load_checkpoint(path, _build)
    card_path = checkpoint_files(path)[1]
    try:
        settings = validated(AdaptationSettings, card["config"].get("adaptation", {}), str(card_path),
                             prefix="config.adaptation")
    except InputError as error:
        raise CheckpointError(str(error)) from None
    for name, tensor in network.state_dict().items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise CheckpointError(f"{checkpoint_files(path)[0]}: weight {name} holds NaN or infinite values")
    return Model(network.train(), settings, card)


def training_domain(card: dict) -> dict | None:
    """A model card's training-domain record (``inputs.training_domain``, as ``metareg-train bundle`` writes it:
    voxel spacing and field of view of the training images), or ``None`` (then
    :func:`~MetaRegistrationLib.data.check_training_domain` uses the library's defaults)."""
    inputs = card.get("inputs")
    domain = inputs.get("training_domain") if isinstance(inputs, dict) else None
    return domain if isinstance(domain, dict) else None


def resolve_model(source: ModelSource) -> Model:
    """The model a :data:`ModelSource` names (loaded from disk unless it is already a :class:`Model`)."""
    return source if isinstance(source, Model) else load_model(source)


def save_model(path: str | Path, network: RegistrationNet, settings: AdaptationSettings,
               provenance: dict | None = None) -> None:
    """Save a model so that :func:`load_model` restores it."""
    save_checkpoint(path, network, model_config(network.config, settings), provenance)
