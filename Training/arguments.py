"""Command-line arguments that several ``metareg`` subcommands share (``evaluate``, ``pairs``, ``demo``), and how
each is checked; the subcommands import it, ``metareg --help`` does not (see :mod:`Training.cli`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from MetaRegistrationLib.data import default_data_dir
from MetaRegistrationLib.errors import InputError


def counts(text: str, what: str = "frame") -> list[int]:
    """Parse ``2,3,10`` (or a range ``2-10``, or both) into sorted distinct counts >= 1 of ``what``."""
    found: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} counts like 2,3,10 or 2-10, got {text!r}") from None
        if first < 1:
            raise argparse.ArgumentTypeError(f"{what} counts must be >= 1, got {text!r}")
        if last < first:
            raise argparse.ArgumentTypeError(f"the range {part.strip()!r} of {text!r} runs backwards; write "
                                             f"{last}-{first}")
        found.update(range(first, last + 1))
    return sorted(found)


def frame_counts(text: str) -> list[int]:
    """``--frames 2,3,10`` or ``2-10``: see :func:`counts`."""
    return counts(text, "frame")


def pair_counts(text: str) -> list[int]:
    """``--pairs 1,2`` or ``1-3``: see :func:`counts`."""
    return counts(text, "pair")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data`` and the case selection ``--split`` / ``--cases``
    (:meth:`~MetaRegistrationLib.data.Dataset.select`)."""
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="data set folder (default: %(default)s)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--split", help="a split named in the data set's split.json, e.g. val")
    which.add_argument("--cases", help="comma-separated case IDs (default: every case)")


def add_output_arguments(parser: argparse.ArgumentParser, help_text: str, default: Path | None = None) -> None:
    """``--out`` and ``--overwrite`` (see :func:`~MetaRegistrationLib.files.check_output_folder`)."""
    if default is None:
        parser.add_argument("--out", type=Path, required=True, help=help_text)
    else:
        parser.add_argument("--out", type=Path, default=default, help=f"{help_text} (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --out folder that is not empty (files of the same names are replaced)")


def adaptation_overrides(items: Sequence[str], fields: Sequence[str]) -> dict[str, Any]:
    """``--adapt NAME=VALUE`` arguments as ``{NAME: value}``.

    Each value is read as a JSON scalar (``0.002``, ``1e-3``, ``2``, ``true``; anything else stays a string), so
    that its type is checked by the settings' validation rather than guessed here: ``--adapt
    learning_rate=fast`` is refused as not a number, ``updates_per_interaction=1.5`` as not an integer.

    Raises:
        InputError: naming ``--adapt`` and the argument, for one without ``=`` or with an unknown ``NAME``.
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key:
            raise InputError(f"--adapt: expected NAME=VALUE, got {item!r}")
        if key not in fields:
            raise InputError(f"--adapt: {key}: unknown setting (known: {', '.join(fields)})")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text.strip()
        if isinstance(value, (dict, list)):
            value = text.strip()  # a scalar is expected: leave it to the validation to refuse
        overrides[key] = value
    return overrides
