"""Typed, range-checked settings: how a session adapts, and the one-line error every front end shows.

Settings arrive from YAML configs, model cards (JSON), ``--adapt NAME=VALUE`` arguments and the Slicer GUI.
Each settings class is a pydantic dataclass in strict mode: a value of the wrong type (the string ``"1e-3"``, the
float ``6.5`` for a count, ``True`` for a number), an unknown key, or a value out of range is refused when the
object is built, and :func:`validated` turns pydantic's report into one line naming the source and the key.
(pydantic, rather than hand-written checks, so that a new field states its type and range once, in its
annotation.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass

from .errors import InputError

STRICT = ConfigDict(strict=True, extra="forbid")
"""The pydantic config of every settings class: no type coercion, no unknown keys."""

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]

Settings = TypeVar("Settings")


@dataclass(frozen=True, config=STRICT)
class AdaptationSettings:
    """How a session adapts; stored with a model so training and use agree.

    Attributes:
        learning_rate: Adam step size of each update (> 0).
        updates_per_interaction: gradient steps run by each ``add_frames`` / ``add_landmarks`` call (>= 0; 0 runs
            the network without adapting it).
        restart: where each interaction's steps start. ``False``: from the weights the previous interaction left
            (the steps accumulate along the sweep, so the result depends on the order of the frames); ``True``:
            from the initial network, with a fresh optimiser, on everything acquired so far, as the meta-training's
            inner loop does (the result depends only on the frames and pairs acquired, not on their order).
        bending_weight: weight of the bending energy (mm**-2) against the Dice term (>= 0).
        landmark_weight: weight of the mean squared landmark-pair distance (mm**2) in the gradient steps (>= 0).
        landmark_radius_mm: radius of the local Gaussian correction that makes the registration honour the
            landmark pairs (:mod:`.landmarks`), or 0 for none (>= 0). 20 mm was chosen by a 5-fold choice on the
            train split (docs/RESULTS.md, issue 11); models saved without it get it. (The bundled model, which
            adapts with ``restart``, stores 15 mm, chosen the same way for that adaptation.)
        spread_groups: groups the acquired frames are dealt into for the jackknife spread of each update's
            quality signals (:mod:`.quality`); each costs one more prediction per update; 0 or 1: no spread.
    """

    learning_rate: PositiveFloat = 1e-3
    updates_per_interaction: NonNegativeInt = 1
    restart: bool = False
    bending_weight: NonNegativeFloat = 1.0
    landmark_weight: NonNegativeFloat = 0.01
    landmark_radius_mm: NonNegativeFloat = 20.0
    spread_groups: NonNegativeInt = 4


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """pydantic's report as one line: ``key: problem (got value)`` for each problem, ``; ``-separated."""
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "") or "value"
        message = item["msg"][:1].lower() + item["msg"][1:]
        if item["type"] == "unexpected_keyword_argument":
            problems.append(f"{key}: unknown setting")
        elif item["type"] == "missing_argument":
            problems.append(f"{key}: missing")
        else:
            problems.append(f"{key}: {message} (got {item.get('input')!r})")
    return "; ".join(problems)


def validated(kind: type[Settings], values: Any, source: str, prefix: str = "") -> Settings:
    """``kind(**values)``, or an :class:`InputError` naming ``source`` and each key at fault.

    Args:
        kind: a settings class (a pydantic dataclass with the :data:`STRICT` config).
        values: a mapping of its fields (anything else is refused, naming ``source``).
        source: what the values came from, for the message (a file, ``--adapt``, a node).
        prefix: the keys' parent in ``source`` (e.g. ``adaptation``), shown before each key.
    """
    if not isinstance(values, Mapping):
        where = f"{source}: {prefix}" if prefix else source
        raise InputError(f"{where}: must be a mapping of settings, got {type(values).__name__}")
    try:
        return kind(**values)
    except ValidationError as error:
        raise InputError(f"{source}: {describe_validation_error(error, prefix)}") from None


def replaced(settings: Settings, source: str, **changes: Any) -> Settings:
    """``settings`` with ``changes``, validated like :func:`validated` (for overrides such as ``--adapt``)."""
    return validated(type(settings), {**dataclasses.asdict(settings), **changes}, source)
