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


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: dict,
                    provenance: dict | None = None) -> tuple[Path, Path]:
    """Save a model's weights and card.

    Args:
        path: either file of the pair or their stem, e.g. ``runs/x/model`` or ``runs/x/model.json``.
        model: any module; its ``state_dict`` is saved.
        config: the JSON-serialisable architecture config the loader's builder
            rebuilds the network from.
        provenance: JSON-serialisable facts about how the weights were made
            (data, split, commit, training config...), or ``None``.

    Returns:
        The (weights, card) paths written.

    Raises:
        CheckpointError: if the config or provenance is not JSON-serialisable or
            a file cannot be written.
    """
    weights_path, card_path = checkpoint_files(path)
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
    }
    try:
        text = json.dumps(card, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{card_path}: the config or provenance cannot be written as JSON ({error})") from None
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


def read_card(path: str | Path) -> dict:
    """The card of a checkpoint (either file or the stem), checked for the fields loading needs.

    Raises:
        CheckpointError: if the card is missing, not JSON, not a checkpoint card or
            from a newer format.
    """
    _, card_path = checkpoint_files(path)
    if not card_path.is_file():
        raise CheckpointError(f"{card_path}: file not found (a checkpoint is a pair <stem>{WEIGHTS_SUFFIX} "
                              f"+ <stem>{CARD_SUFFIX})")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{card_path}: is not valid JSON ({error})") from None
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
        path: either file of the pair or their stem.
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
    weights_path, card_path = checkpoint_files(path)
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
