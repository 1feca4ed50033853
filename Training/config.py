"""The training config: :class:`TrainConfig` read from a YAML file (``Training/configs/*.yaml``) and validated.

Every setting is typed and range-checked by pydantic in strict mode (the pattern of
:mod:`MetaRegistrationLib.settings`): a value of the wrong type (``episodes: six``, ``episodes: 6.5``,
``f_min: "2"``), an unknown key or a value out of range (a negative learning rate, ``f_min`` above ``f_max``)
is one :class:`~MetaRegistrationLib.errors.InputError` line naming the file and the key, raised before a run
folder is created.

YAML 1.1, which PyYAML implements, reads ``1e-3`` as a string (it wants ``1.0e-3``); the config loader also
resolves YAML 1.2 floats such as ``1e-3`` as numbers, so a config means what it says, and a string where a
number belongs stays an error.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.network import NetworkConfig
from MetaRegistrationLib.settings import (STRICT, AdaptationSettings, NonNegativeFloat, NonNegativeInt, PositiveFloat,
                                          PositiveInt, validated)

MODES = ("meta", "conventional")
"""Training modes: Reptile meta-training, or the conventional (non-meta) baseline."""

UnitFraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
NonEmptyText = Annotated[str, Field(min_length=1)]


@dataclass(frozen=True, config=STRICT)
class AugmentationConfig:
    """Random affine of the MR's pose (no flips), about its gland centroid.

    Attributes:
        rotation_deg: largest rotation about each world axis, degrees (0..180).
        scale: largest relative scaling along each axis (0 <= scale < 1): factors in [1 - scale, 1 + scale].
        translation_mm: largest shift along each world axis, mm (>= 0).
    """

    rotation_deg: Annotated[float, Field(ge=0, le=180, allow_inf_nan=False)] = 5.0
    scale: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.05
    translation_mm: NonNegativeFloat = 5.0


@dataclass(frozen=True, config=STRICT)
class TrainConfig:
    """A training run; every field may be set in the YAML file.

    Attributes:
        mode: ``meta`` (Reptile) or ``conventional`` (one Adam step per episode on a persistent optimiser).
        data: data set folder; empty for ``../shared/data/mrus-prostate`` (or ``$METAREG_DATA``).
        train_split, val_split: split names in the data set's ``split.json``.
        seed: seeds the initial weights and, with the episode number, every episode (>= 0).
        episodes: episodes in the run (>= 1).
        inner_steps: Adam steps per Reptile episode (>= 1; unused in conventional mode).
        meta_batch: Reptile episodes per outer update, whose adapted weights are averaged (batched Reptile,
            :mod:`.reptile`; >= 1, 1 is serial Reptile; meta mode only). It must divide ``checkpoint_every`` and
            ``episodes``, and under ``torchrun`` be a multiple of the number of ranks, which share it.
        inner_learning_rate: Adam step size of the inner steps (and of the conventional optimiser) (> 0).
        beta_meta_start, beta_meta_end: the Reptile step size at the first and the last episode (0..1).
        f_min, f_max: the range of the number of random sagittal frames of an episode (1 <= f_min <= f_max).
        full_volume_input: the network sees the whole TRUS volume and gland instead of frames.
        checkpoint_every: episodes between checkpoints (>= 1); the last episode always checkpoints.
        validate_every: episodes between validations (a multiple of ``checkpoint_every``: validation sweeps the
            checkpoint just saved), or 0 for none; the last episode always validates unless 0.
        validate_cases: the first this many cases of ``val_split`` are validated on (>= 1).
        threads: torch threads, 0 for torch's default.
        precision: the network's arithmetic in the inner steps (``MetaRegistrationLib.precision``): ``fp32`` (the
            default, so that runs made before bf16 resume as they were trained), ``bf16`` or ``auto``.
    """

    mode: Literal["meta", "conventional"] = "meta"
    data: str = ""
    train_split: NonEmptyText = "train"
    val_split: NonEmptyText = "val"
    seed: NonNegativeInt = 0
    episodes: PositiveInt = 2000
    inner_steps: PositiveInt = 10
    inner_learning_rate: PositiveFloat = 1e-3
    beta_meta_start: UnitFraction = 0.5
    beta_meta_end: UnitFraction = 0.0
    f_min: PositiveInt = 2
    f_max: PositiveInt = 10
    full_volume_input: bool = False
    checkpoint_every: PositiveInt = 25
    validate_every: NonNegativeInt = 250
    validate_cases: PositiveInt = 12
    meta_batch: PositiveInt = 1
    threads: NonNegativeInt = 0
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    adaptation: AdaptationSettings = dataclasses.field(default_factory=AdaptationSettings)
    augmentation: AugmentationConfig = dataclasses.field(default_factory=AugmentationConfig)

    @field_validator("f_max")
    @classmethod
    def _not_below_f_min(cls, f_max: int, info: ValidationInfo) -> int:
        f_min = info.data.get("f_min")
        if f_min is not None and f_max < f_min:
            raise PydanticCustomError("frame_range", "must be at least f_min ({f_min})", {"f_min": f_min})
        return f_max

    @field_validator("meta_batch")
    @classmethod
    def _whole_batches(cls, batch: int, info: ValidationInfo) -> int:
        if batch > 1 and info.data.get("mode") == "conventional":
            raise PydanticCustomError("meta_batch_mode", "must be 1 in conventional mode (batched Reptile is meta "
                                      "mode's)")
        for name in ("episodes", "checkpoint_every"):
            value = info.data.get(name)
            if value is not None and value % batch:
                raise PydanticCustomError("whole_batches", "must divide {name} ({value})",
                                          {"name": name, "value": value})
        return batch

    @field_validator("validate_every")
    @classmethod
    def _at_checkpoints(cls, validate_every: int, info: ValidationInfo) -> int:
        every = info.data.get("checkpoint_every")
        if every is not None and validate_every % every:
            raise PydanticCustomError("validation_schedule", "must be 0 or a multiple of checkpoint_every ({every})",
                                      {"every": every})
        return validate_every

    @classmethod
    def from_dict(cls, values: object, source: str) -> TrainConfig:
        """Validate a parsed YAML mapping (nested sections as mappings, lists for tuples).

        Raises:
            InputError: one line naming ``source`` and each key at fault.
        """
        values = dict(_named_by_text(values, source))
        if "network" in values:
            values["network"] = NetworkConfig.from_dict(_named_by_text(values["network"], source, "network"),
                                                        source, prefix="network")
        for name, kind in (("adaptation", AdaptationSettings), ("augmentation", AugmentationConfig)):
            if name in values:
                values[name] = validated(kind, _named_by_text(values[name], source, name), source, prefix=name)
        return validated(cls, values, source)

    def to_dict(self) -> dict:
        """Plain lists and dicts (JSON and YAML safe); :meth:`from_dict` reads it back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def checkpoint_due(self, episodes_done: int) -> bool:
        """Whether the run checkpoints after ``episodes_done`` episodes."""
        return episodes_done % self.checkpoint_every == 0 or episodes_done == self.episodes

    def validation_due(self, episodes_done: int) -> bool:
        """Whether the run validates (the checkpoint just saved) after ``episodes_done`` episodes."""
        return bool(self.validate_every) and (episodes_done % self.validate_every == 0
                                              or episodes_done == self.episodes)


def _named_by_text(values: object, source: str, prefix: str = "") -> Mapping:
    """``values``, checked to be a mapping whose keys are text (YAML allows numbers and more as keys)."""
    where = f"{source}: {prefix}" if prefix else source
    if not isinstance(values, Mapping):
        raise InputError(f"{where}: must be a mapping of settings, got {type(values).__name__}")
    keys = [key for key in values if not isinstance(key, str)]
    if keys:
        raise InputError(f"{where}: setting names must be text, got {keys[0]!r}")
    return values


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads YAML 1.2 floats with an exponent and no dot (``1e-3``) as floats."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_config(path: Path) -> TrainConfig:
    """Read and validate a YAML config file.

    Raises:
        InputError: one line naming ``path``: missing, unreadable, not YAML, not a mapping, or a setting at fault.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: is not a text (UTF-8 YAML) file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        values = yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError as error:
        raise InputError(f"{path}: is not valid YAML ({str(error).splitlines()[0]})") from None
    return TrainConfig.from_dict({} if values is None else values, str(path))


def differences(given: TrainConfig, saved: TrainConfig) -> list[str]:
    """The settings in which two configs differ, as ``key: given vs saved`` (nested keys dotted)."""
    def flat(values: dict, prefix: str = "") -> dict:
        items = {}
        for key, value in values.items():
            items.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
        return items

    mine, theirs = flat(given.to_dict()), flat(saved.to_dict())
    return [f"{key}: {mine[key]!r} vs {theirs[key]!r}" for key in mine if mine[key] != theirs[key]]
