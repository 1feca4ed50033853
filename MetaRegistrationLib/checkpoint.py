"""Self-describing model checkpoints that load without executing code.

A checkpoint is a pair of files with one stem:

``<stem>.safetensors``
    The weights (a ``state_dict``) in the safetensors format: tensors only, no pickle.
``<stem>.json``
    The card: format version, library version, the architecture config the
    network is rebuilt from, training provenance, the SHA-256 of the weights file
    and the creation time.

Both files are written atomically (a temporary file in the same folder, then
``os.replace``), so a failed save never leaves a half-written file under either
name (nor a temporary file). Loading checks the checksum before reading a tensor and loads the weights
strictly, so a tampered file or a network that does not fit is an error naming
the file, never a silently wrong model.

A stem may also be a *pointer*: ``<stem>.json`` holding ``{"format": "metaregistration-checkpoint-pointer",
"checkpoint": NAME}`` names the pair ``NAME`` in the same folder, and :func:`read_card` and
:func:`load_checkpoint` follow it. Replacing the pointer (one ``os.replace``, :func:`write_pointer`) moves a
name such as a training run's ``latest`` from one complete pair to another, so a reader never sees a pair
whose two renames were cut apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from . import __version__
from .errors import CheckpointError

FORMAT = "metaregistration-checkpoint"
FORMAT_VERSION = 1
POINTER_FORMAT = "metaregistration-checkpoint-pointer"
POINTER_FORMAT_VERSION = 1
CARD_FIELDS = ("format", "format_version", "library_version", "created", "weights", "config", "provenance")
"""The card fields :func:`save_checkpoint` writes itself; a card's description may add others."""
WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"
_LISTED = 5  # names shown per kind of mismatch before "and N more"


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """The (weights, card) paths of a checkpoint given either file or their common stem."""
    path = Path(path)
    for suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX):
        if path.name.endswith(suffix):
            path = path.with_name(path.name[: -len(suffix)])
            break
    return path.with_name(path.name + WEIGHTS_SUFFIX), path.with_name(path.name + CARD_SUFFIX)


def _write_temporary(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new temporary file beside ``path`` and return its path; nothing is left on failure."""
    # A fresh name opened exclusively (not mkstemp, whose 0600 mode would outlive the rename).
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and one ``os.replace``; nothing is left on failure."""
    temporary = _write_temporary(path, data)
    try:
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: dict,
                    provenance: dict | None = None, description: dict | None = None) -> tuple[Path, Path]:
    """Save a model's weights and card.

    Args:
        path: either file of the pair or their stem, e.g. ``runs/x/model`` or ``runs/x/model.json``.
        model: any module; its ``state_dict`` is saved.
        config: the JSON-serialisable architecture config the loader's builder
            rebuilds the network from.
        provenance: JSON-serialisable facts about how the weights were made
            (data, split, commit, training config...), or ``None``.
        description: further top-level card fields describing the model (a model card's name, license,
            intended use, inputs and outputs...), or ``None``; none may be one of :data:`CARD_FIELDS`.

    Returns:
        The (weights, card) paths written.

    Raises:
        CheckpointError: if the config, provenance or description is not JSON-serialisable, the description
            names a field of the format, or a file cannot be written.
    """
    weights_path, card_path = checkpoint_files(path)
    description = description or {}
    reserved = [key for key in description if key in CARD_FIELDS]
    if reserved:
        raise CheckpointError(f"{card_path}: the description may not set {', '.join(reserved)} (written by the "
                              f"checkpoint format itself)")
    # clone() unties shared tensors, which safetensors refuses; loading copies into each anyway.
    tensors = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in model.state_dict().items()}
    weights = save_safetensors(tensors)
    card = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights": {"file": weights_path.name, "sha256": hashlib.sha256(weights).hexdigest(), "tensors": len(tensors)},
        "config": config,
        "provenance": provenance or {},
        **description,
    }
    try:
        text = json.dumps(card, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{card_path}: the config, provenance or description cannot be written as JSON "
                              f"({error})") from None
    # Both files are complete on disk before either name changes, so the two renames are
    # all that can be interrupted; a pair cut between them fails its checksum on loading.
    written: list[tuple[Path, Path]] = []
    target = weights_path
    try:
        weights_path.parent.mkdir(parents=True, exist_ok=True)
        for target, data in ((weights_path, weights), (card_path, text.encode("utf-8"))):
            written.append((_write_temporary(target, data), target))
        for temporary, target in written:
            os.replace(temporary, target)
    except OSError as error:
        raise CheckpointError(f"{target}: cannot be written ({error.strerror or error})") from None
    finally:
        for temporary, _ in written:
            temporary.unlink(missing_ok=True)
    return weights_path, card_path


def write_pointer(path: str | Path, target: str | Path) -> Path:
    """Make the stem ``path`` point at the checkpoint ``target`` (a pair in the same folder), atomically.

    Returns:
        The pointer file, ``<stem>.json``; it replaces whatever was there (a card or an older pointer).

    Raises:
        CheckpointError: if ``target`` is in another folder or the pointer cannot be written.
    """
    _, pointer_path = checkpoint_files(path)
    target_card = checkpoint_files(target)[1]
    if target_card.parent.resolve() != pointer_path.parent.resolve():
        raise CheckpointError(f"{pointer_path}: can only point at a checkpoint in its own folder, not {target}")
    name = target_card.name[: -len(CARD_SUFFIX)]
    pointer = {"format": POINTER_FORMAT, "format_version": POINTER_FORMAT_VERSION, "checkpoint": name}
    try:
        _write_atomic(pointer_path, (json.dumps(pointer, indent=2) + "\n").encode("utf-8"))
    except OSError as error:
        raise CheckpointError(f"{pointer_path}: cannot be written ({error.strerror or error})") from None
    return pointer_path


def _read_json(card_path: Path) -> object:
    """The parsed JSON of a card or pointer file; a missing or unparsable file is a one-line error naming it."""
    if not card_path.is_file():
        raise CheckpointError(f"{card_path}: file not found (a checkpoint is a pair <stem>{WEIGHTS_SUFFIX} "
                              f"+ <stem>{CARD_SUFFIX})")
    try:
        return json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{card_path}: is not valid JSON ({error})") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """The stem of the pair that ``path`` (either file or the stem) names: its own, or its pointer's target.

    Raises:
        CheckpointError: if the card is missing or not JSON, or it is a pointer of a newer format, to a name
            that is not a checkpoint in the same folder, or to a checkpoint whose card is missing.
    """
    if Path(path).is_dir():
        raise CheckpointError(f"{path}: is a folder; give a checkpoint: the stem NAME of NAME{WEIGHTS_SUFFIX} + "
                              f"NAME{CARD_SUFFIX} (or either file), e.g. {Path(path) / 'latest'}")
    _, card_path = checkpoint_files(path)
    stem = card_path.with_name(card_path.name[: -len(CARD_SUFFIX)])
    pointer = _read_json(card_path)
    if not isinstance(pointer, dict) or pointer.get("format") != POINTER_FORMAT:
        return stem
    version = pointer.get("format_version")
    if not isinstance(version, int) or version > POINTER_FORMAT_VERSION:
        raise CheckpointError(f"{card_path}: is a checkpoint pointer of format version {version!r}; this library "
                              f"({__version__}) reads versions up to {POINTER_FORMAT_VERSION}")
    name = pointer.get("checkpoint")
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name:
        raise CheckpointError(f"{card_path}: points at {name!r}, which is not the name of a checkpoint in its folder")
    target = stem.with_name(name)
    if not checkpoint_files(target)[1].is_file():
        raise CheckpointError(f"{card_path}: points at checkpoint {name!r}, whose card {name}{CARD_SUFFIX} "
                              f"is not there")
    return target


def read_card(path: str | Path) -> dict:
    """The card of a checkpoint (either file or the stem, or a pointer to it), checked for the fields loading
    needs.

    Raises:
        CheckpointError: if the card is missing, not JSON, not a checkpoint card or
            from a newer format.
    """
    _, card_path = checkpoint_files(resolve_checkpoint(path))
    card = _read_json(card_path)
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise CheckpointError(f"{card_path}: is not a checkpoint card (no \"format\": \"{FORMAT}\")")
    version = card.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{card_path}: has format version {version!r}; this library "
                              f"({__version__}) reads versions up to {FORMAT_VERSION}")
    missing = [key for key in ("config", "weights") if not isinstance(card.get(key), dict)]
    if not missing and not isinstance(card["weights"].get("sha256"), str):
        missing.append("weights.sha256")
    if missing:
        raise CheckpointError(f"{card_path}: is not a complete checkpoint card, missing {', '.join(missing)}")
    return card


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _architecture_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str | None:
    """What differs between a model's state_dict and loaded tensors, in words, or ``None``."""
    problems = []
    missing = [name for name in expected if name not in found]
    unexpected = sorted(name for name in found if name not in expected)
    if missing:
        problems.append(f"missing {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    shapes = [f"shape of {name} is {tuple(found[name].shape)} not {tuple(tensor.shape)}"
              for name, tensor in expected.items() if name in found and found[name].shape != tensor.shape]
    if shapes:
        problems.append(_listed(shapes))
    return "; ".join(problems) or None


def load_checkpoint(path: str | Path,
                    build_model: Callable[[dict], torch.nn.Module]) -> tuple[torch.nn.Module, dict]:
    """Rebuild a network from its card and load its weights, verified and strictly.

    Args:
        path: either file of the pair or their stem, or a pointer to the pair (see :func:`write_pointer`).
        build_model: builds the untrained network from the card's ``config``.

    Returns:
        ``(model, card)``: the model with its weights (in the mode the builder
        left it), and the card as a dict.

    Raises:
        CheckpointError: one line naming the file and the problem: a missing file,
            a bad card, a checksum mismatch (the weights were modified or are
            corrupt), a config the builder rejects, or weights that do not fit the
            architecture.
    """
    weights_path, card_path = checkpoint_files(resolve_checkpoint(path))
    card = read_card(card_path)
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: file not found (its card {card_path.name} is there)")
    data = weights_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != card["weights"]["sha256"]:
        raise CheckpointError(f"{weights_path}: checksum mismatch, the file was modified or is corrupt "
                              f"(its SHA-256 differs from the one in {card_path.name})")
    try:
        tensors = load_safetensors(data)
    except SafetensorError as error:
        raise CheckpointError(f"{weights_path}: cannot be read as safetensors ({error})") from None
    try:
        model = build_model(card["config"])
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{card_path}: its config does not build a network ({type(error).__name__}: "
                              f"{error})") from None
    mismatch = _architecture_mismatch(model.state_dict(), tensors)
    if mismatch:
        raise CheckpointError(f"{weights_path}: does not match the architecture in {card_path.name}: {mismatch}")
    model.load_state_dict(tensors, strict=True)
    return model, card
