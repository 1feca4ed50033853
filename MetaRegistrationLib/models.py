"""Loading and saving registration models: a network plus the adaptation settings it was trained for.

A model is a checkpoint pair (``NAME.safetensors`` + ``NAME.json``, see
:mod:`MetaRegistrationLib.checkpoint`) whose card's ``config`` holds
``{"network": NetworkConfig fields, "adaptation": AdaptationSettings fields}``.
The bundled meta-learned initialisation lives in the Slicer module's
``Resources/Models`` folder, beside this library in the source tree.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .adaptation import AdaptationSettings
from .checkpoint import load_checkpoint, save_checkpoint
from .errors import CheckpointError
from .network import NetworkConfig, RegistrationNet

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "MetaRegistration" / "Resources" / "Models" / "meta-init"
"""Stem of the bundled meta-learned initialisation."""


def model_config(network: NetworkConfig, adaptation: AdaptationSettings) -> dict:
    """The checkpoint ``config`` of a model."""
    return {"network": dataclasses.asdict(network), "adaptation": dataclasses.asdict(adaptation)}


def _build(config: dict) -> RegistrationNet:
    return RegistrationNet(NetworkConfig.from_dict(config["network"]))


def load_model(path: str | Path | None = None) -> tuple[RegistrationNet, AdaptationSettings, dict]:
    """Load a model (the bundled one by default): ``(network, adaptation settings, card)``.

    Raises:
        CheckpointError: naming the file, if it is missing, tampered with or does not fit.
    """
    path = BUNDLED_MODEL if path is None else Path(path)
    network, card = load_checkpoint(path, _build)
    try:
        settings = AdaptationSettings(**card["config"].get("adaptation", {}))
    except TypeError as error:
        raise CheckpointError(f"{path}: its adaptation settings are not understood ({error})") from None
    return network.train(), settings, card


def save_model(path: str | Path, network: RegistrationNet, settings: AdaptationSettings,
               provenance: dict | None = None) -> None:
    """Save a model so that :func:`load_model` restores it."""
    save_checkpoint(path, network, model_config(network.config, settings), provenance)
