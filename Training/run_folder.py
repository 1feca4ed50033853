"""The folder of a training run: creating it, its logs and checkpoints, and what a resumed run continues from.

Files::

    config.yaml                           the resolved TrainConfig: it alone reproduces the run
    git_commit.txt                        the commit the run started at
    log.csv                               one row per episode: episode, case, loss, beta_meta, wall_seconds
    val.csv                               one row per validation: episodes_done, median_tre_mm, mean_dsc
    checkpoint-NNNNNN.safetensors/.json   the newest checkpoint, after NNNNNN episodes
    checkpoint-NNNNNN-optimizer.pt        its Adam state (conventional mode)
    latest.json                           a pointer at the newest checkpoint (``checkpoint.write_pointer``)
    final.safetensors/.json               the trained model, once the run is finished

A folder is created only once the config and the data have passed every check, from files staged beside it, so a
refused run leaves none; a folder holding nothing but ``config.yaml`` and ``git_commit.txt`` (a run that never
got to its first episode) may be started again.

Checkpoints are crash-safe: at every instant ``latest`` names one complete pair (and its optimiser state). A
checkpoint writes, each atomically, (1) the optimiser state, (2) the weights and (3) the card of a new version,
then (4) replaces the pointer and only then (5) removes the older versions; a run stopped anywhere in between
resumes from the version the pointer names. Finishing writes ``final``, points ``latest`` at it and removes the
checkpoints and the optimiser state: a finished run keeps weights only.

Runs written before versioned checkpoints hold a plain pair ``latest.safetensors`` + ``latest.json`` (and
``latest-optimizer.pt``). They resume from that pair as they are; their first new checkpoint replaces it by the
same steps (the pointer replaces the old card, then the old weights go).
"""

from __future__ import annotations

import csv
import io
import pickle
import platform
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from MetaRegistrationLib.checkpoint import (CARD_SUFFIX, WEIGHTS_SUFFIX, checkpoint_files, resolve_checkpoint,
                                            write_pointer)
from MetaRegistrationLib.errors import CheckpointError, InputError
from MetaRegistrationLib.files import atomic_path, check_output_folder, staged_outputs, write_text_atomic
from MetaRegistrationLib.models import Model, load_model, save_model
from MetaRegistrationLib.network import RegistrationNet
from MetaRegistrationLib.settings import AdaptationSettings

from .config import TrainConfig, differences, load_config

CONFIG_FILE = "config.yaml"
COMMIT_FILE = "git_commit.txt"
LOG_FILE = "log.csv"
VALIDATION_FILE = "val.csv"
CREATION_FILES = (CONFIG_FILE, COMMIT_FILE)
"""What a run folder holds from its creation until its first episode is logged."""
LATEST = "latest"
FINAL = "final"
CHECKPOINT_PREFIX = "checkpoint-"
OPTIMIZER_SUFFIX = "-optimizer.pt"


def git_commit() -> str:
    """The checkout's commit (with ``-dirty`` for uncommitted changes), or ``unknown``."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def hardware() -> str:
    """The device training runs on, in words."""
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, CPU"


def optimizer_state_path(checkpoint: Path) -> Path:
    """The file of a checkpoint's optimiser state (conventional mode), beside its pair."""
    return checkpoint.with_name(checkpoint.name + OPTIMIZER_SUFFIX)


@dataclass(frozen=True)
class ResumePoint:
    """What a resumed run continues from: its latest checkpoint.

    Attributes:
        checkpoint: the stem of the checkpoint's pair (the pointer's target, or ``latest`` in an older run).
        model: the network, its adaptation settings and card.
        episodes_done: episodes the checkpoint had trained.
        wall_seconds: training time (s) up to it, episodes only.
    """

    checkpoint: Path
    model: Model
    episodes_done: int
    wall_seconds: float


class RunFolder:
    """The run folder at ``path`` of a run in ``mode`` (for the resume command its messages show)."""

    def __init__(self, path: str | Path, mode: str):
        self.path = Path(path)
        self.mode = mode
        self.created = False
        """Whether :meth:`create` made the folder (in this process)."""

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    @property
    def validation_path(self) -> Path:
        return self.path / VALIDATION_FILE

    @property
    def latest(self) -> Path:
        """Stem of the newest checkpoint (a pointer, or a plain pair in an older run)."""
        return self.path / LATEST

    @property
    def final(self) -> Path:
        """Stem of the trained model."""
        return self.path / FINAL

    def resume_command(self) -> str:
        return f"metareg-train {self.mode} --run {self.path} --resume"

    # --- starting and resuming -------------------------------------------------------------------------------

    def check_can_start(self, data: Path) -> None:
        """Check that a new run can be created here (nothing is created).

        Args:
            data: the data set folder, which the run folder must not be (or lie in).

        Raises:
            InputError: if ``path`` is a file, a folder holding anything but the files of a run that never got to
                its first episode, lies in ``data``, or cannot be written.
        """
        if self.path.is_dir() and any(entry.name not in CREATION_FILES for entry in self.path.iterdir()):
            raise InputError(f"{self.path}: already holds a run; use --resume to continue it or choose a new folder")
        check_output_folder(self.path, overwrite=True, protected=(data,))

    def create(self, config: TrainConfig) -> None:
        """Create the folder with ``git_commit.txt``, then ``config.yaml``: a folder holding ``config.yaml`` holds
        both, and is a run.

        Raises:
            InputError: naming the folder, if it cannot be written.
        """
        try:
            with staged_outputs(self.path) as staging:
                (staging / COMMIT_FILE).write_text(git_commit() + "\n", encoding="utf-8")
            write_text_atomic(self.config_path, yaml.safe_dump(config.to_dict(), sort_keys=False))
        except OSError as error:
            raise InputError(f"{self.path}: cannot be created ({error.strerror or error})") from None
        self.created = True

    def config_to_resume(self, given: Path | None = None) -> TrainConfig:
        """The run's saved config; a ``given`` config file must say the same.

        Raises:
            InputError: if the folder holds no run (no ``config.yaml``), a config is invalid, or ``given`` differs
                from the saved one (naming the settings that differ).
        """
        config = None if given is None else load_config(given)
        if not self.config_path.is_file():
            raise InputError(f"{self.path}: nothing to resume (no {CONFIG_FILE})")
        saved = load_config(self.config_path)
        changed = [] if config is None else differences(config, saved)
        if changed:
            raise InputError(f"{given}: differs from the run's {self.config_path} ({'; '.join(changed)}); resume "
                             f"without --config, or start a new run folder")
        return saved

    def resume_point(self) -> ResumePoint | None:
        """The latest checkpoint, or ``None`` if the run stopped before its first one (it then starts over).

        Raises:
            CheckpointError: naming the file, if the checkpoint does not load or its card lacks the episodes done.
        """
        if not checkpoint_files(self.latest)[1].exists():
            return None
        checkpoint = resolve_checkpoint(self.latest)
        model = load_model(checkpoint)
        provenance = model.card["provenance"]
        done = provenance.get("episodes_done")
        if isinstance(done, bool) or not isinstance(done, int) or done < 0:
            raise CheckpointError(f"{checkpoint_files(checkpoint)[1]}: provenance.episodes_done must be a count of "
                                  f"episodes, got {done!r}")
        return ResumePoint(checkpoint, model, done, float(provenance.get("wall_seconds", 0.0)))

    def final_is_complete(self) -> bool:
        """Whether the trained model's pair is there and loads (its checksum matches)."""
        try:
            load_model(self.final)
        except CheckpointError:
            return False
        return True

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, checkpoint: Path) -> None:
        """Restore a conventional run's optimiser from the state saved with ``checkpoint``.

        Raises:
            CheckpointError: naming the file, if it is missing, truncated or corrupt, holds anything but plain
                tensors and numbers (a pickle that would run code), or does not fit ``optimizer``.
        """
        path = optimizer_state_path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"{path}: file not found; a conventional run resumes with the optimiser state "
                                  f"of its checkpoint {checkpoint.name}")
        try:
            # Plain tensors and numbers only: weights_only loading executes no code.
            state = torch.load(path, weights_only=True)
        except pickle.UnpicklingError:
            raise CheckpointError(f"{path}: refused, it is not plain optimiser state (loading it would run "
                                  f"code)") from None
        except (RuntimeError, EOFError, OSError) as error:
            reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
            raise CheckpointError(f"{path}: cannot be read as optimiser state, it is truncated or corrupt "
                                  f"({reason})") from None
        try:
            optimizer.load_state_dict(state)
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: does not fit this run's optimiser ({type(error).__name__}: "
                                  f"{error})") from None

    def forget_after(self, episodes_done: int) -> None:
        """Prepare to continue after ``episodes_done`` episodes: drop the log rows of later episodes (done by a
        stopped run after its checkpoint; the resumed run does them again), the validation rows of later
        checkpoints, incomplete rows, and files a stopped run left half-made."""
        with self._writing(self.log_path):
            _keep_rows(self.log_path, "episode", lambda episode: episode < episodes_done)
        with self._writing(self.validation_path):
            _keep_rows(self.validation_path, "episodes_done", lambda done: done <= episodes_done)
        with self._writing(self.path):
            self.remove_superseded()

    def validated_at(self, episodes_done: int) -> bool:
        """Whether ``val.csv`` holds the validation after ``episodes_done`` episodes."""
        _, rows = _read_rows(self.validation_path)
        return any(done == episodes_done for done, _ in _numbered(rows, "episodes_done"))

    # --- writing ------------------------------------------------------------------------------------------------

    def log_episode(self, row: dict) -> None:
        """Append one episode's row to ``log.csv``."""
        self._append_row(self.log_path, row)

    def log_validation(self, row: dict) -> None:
        """Append one validation's row to ``val.csv``."""
        self._append_row(self.validation_path, row)

    def save_checkpoint(self, network: RegistrationNet, settings: AdaptationSettings, provenance: dict,
                        episodes_done: int, optimizer: torch.optim.Optimizer | None) -> Path:
        """Save a new checkpoint version and point ``latest`` at it (the steps of the module docstring).

        Returns:
            The stem of the new version's pair.

        Raises:
            InputError, CheckpointError: one line naming the file that could not be written, and how to resume.
        """
        checkpoint = self.path / f"{CHECKPOINT_PREFIX}{episodes_done:06d}"
        if optimizer is not None:
            state = io.BytesIO()
            torch.save(optimizer.state_dict(), state)
            with self._writing(optimizer_state_path(checkpoint)), \
                    atomic_path(optimizer_state_path(checkpoint)) as temporary:
                temporary.write_bytes(state.getvalue())
        self._save_and_point(checkpoint, network, settings, provenance)
        return checkpoint

    def finish(self, network: RegistrationNet, settings: AdaptationSettings, provenance: dict) -> Path:
        """Save the trained model as ``final``, point ``latest`` at it and remove the checkpoints.

        Returns:
            The stem of the trained model's pair.
        """
        self._save_and_point(self.final, network, settings, provenance)
        return self.final

    def complete_finish(self) -> None:
        """Complete what :meth:`finish` was stopped in after ``final`` was saved: point ``latest`` at it and remove
        the checkpoints (an older run's plain ``latest`` pair is left as it is)."""
        with self._writing(self.latest):
            if resolve_checkpoint(self.latest) != self.latest:
                write_pointer(self.latest, self.final)
            self.remove_superseded()

    def remove_superseded(self) -> None:
        """Remove what the pair ``latest`` names does not need: older checkpoint versions and their optimiser
        state, an older run's plain ``latest`` pair once a pointer replaced its card, temporary files."""
        current = resolve_checkpoint(self.latest) if checkpoint_files(self.latest)[1].exists() else None
        keep = set() if current is None else {*checkpoint_files(current), optimizer_state_path(current)}
        keep.add(checkpoint_files(self.latest)[1])
        superseded = [self.path / (LATEST + WEIGHTS_SUFFIX), optimizer_state_path(self.latest)] \
            if current != self.latest else []
        for entry in sorted(self.path.iterdir()):
            versioned = entry.name.startswith(CHECKPOINT_PREFIX) and entry.name.endswith(
                (WEIGHTS_SUFFIX, CARD_SUFFIX, OPTIMIZER_SUFFIX))
            temporary = entry.name.startswith(".") and ".tmp" in entry.name and entry.is_file()
            if entry not in keep and (versioned or temporary or entry in superseded):
                entry.unlink(missing_ok=True)

    def _save_and_point(self, checkpoint: Path, network: RegistrationNet, settings: AdaptationSettings,
                        provenance: dict) -> None:
        with self._writing(checkpoint):
            save_model(checkpoint, network, settings, provenance)
            write_pointer(self.latest, checkpoint)
            self.remove_superseded()

    def _append_row(self, path: Path, row: dict) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(row), lineterminator="\n")
        if not path.exists() or not path.stat().st_size:
            writer.writeheader()
        writer.writerow(row)
        with self._writing(path), open(path, "a", newline="", encoding="utf-8") as handle:
            handle.write(text.getvalue())

    @contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """Report a failed write (a full disk...) as one line naming the file and how the run resumes."""
        hint = f"the run can be resumed once it is fixed: {self.resume_command()}"
        try:
            yield
        except CheckpointError as error:
            raise CheckpointError(f"{error}; {hint}") from None
        except OSError as error:
            raise InputError(f"{path}: cannot be written ({error.strerror or error}); {hint}") from None


def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """The columns and complete rows of a CSV log: a row a stopped run cut short (a missing column, or the last
    line without its line end) is left out."""
    if not path.exists():
        return [], []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    reader = csv.DictReader(lines)
    rows = [row for row in reader if None not in row and None not in row.values() and "" not in row.values()]
    return list(reader.fieldnames or []), rows


def _numbered(rows: list[dict], column: str) -> list[tuple[int, dict]]:
    """The rows with a whole number in ``column``, with that number."""
    return [(int(row[column]), row) for row in rows if row[column].isdigit()]


def _keep_rows(path: Path, column: str, keep: Callable[[int], bool]) -> None:
    """Rewrite a CSV log with only its complete rows whose ``column`` passes ``keep``, unless that is all of it.
    A log without a complete header line holds nothing and is removed."""
    if not path.exists():
        return
    columns, rows = _read_rows(path)
    if not columns:
        path.unlink()
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(row for number, row in _numbered(rows, column) if keep(number))
    if text.getvalue() != path.read_text(encoding="utf-8"):
        write_text_atomic(path, text.getvalue())
