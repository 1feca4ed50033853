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

A folder is created only once the config and the data have passed every check, so a refused run leaves none. It
is built complete (``config.yaml``, ``git_commit.txt``) in a hidden sibling, ``.NAME.creating-PID-XXXX``, that one
``os.rename`` turns into the run folder: killed anywhere, a start leaves a run or no folder, and what a killed
start left beside it (also ``.NAME.partial-*`` of older versions) is removed by the next start or resume. A run
may start in a folder that does not exist or is empty; a folder holding nothing but ``config.yaml`` and
``git_commit.txt`` (a run that never got to its first episode), or only what an interrupted start left there, may
be started again (the old folder is moved aside in one rename, then removed); any other folder is refused.

Checkpoints are crash-safe: at every instant ``latest`` names one complete pair (and its optimiser state). A
checkpoint writes, each atomically, (1) the optimiser state, (2) the weights and (3) the card of a new version,
then (4) replaces the pointer and only then (5) removes the older versions; a run stopped anywhere in between
resumes from the version the pointer names. Finishing writes ``final``, points ``latest`` at it and removes the
checkpoints and the optimiser state: a finished run keeps weights only.

If the pointer is missing, or names a pair that does not load, a resumed run continues from the newest complete
pair whose checksum matches (``final``, else the highest ``checkpoint-NNNNNN``), says so in one notice line, and
puts the pointer back; newer versions that do not load are kept until the run rewrites them. With no such pair,
it is refused, unless nothing shows that a checkpoint was ever saved (no complete-looking pair, no log row after
the first checkpoint, no validation row): then the run stopped before its first checkpoint and starts over.

Runs written before versioned checkpoints hold a plain pair ``latest.safetensors`` + ``latest.json`` (and
``latest-optimizer.pt``). They resume from that pair as they are; their first new checkpoint replaces it by the
same steps (the pointer replaces the old card, then the old weights go).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import platform
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from MetaRegistrationLib.checkpoint import (CARD_SUFFIX, WEIGHTS_SUFFIX, checkpoint_files, resolve_checkpoint,
                                            write_pointer)
from MetaRegistrationLib.errors import CheckpointError, InputError
from MetaRegistrationLib.files import atomic_path, check_output_folder, write_text_atomic
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
STAGING = ".creating-"
"""``.NAME.creating-PID-XXXX``: the hidden sibling a new run folder ``NAME`` is built in."""
REPLACED = ".replaced-"
"""``.NAME.replaced-PID-XXXX``: a never-started run folder moved aside by a new start, then removed."""
LEGACY_STAGING = ".partial-"
"""``.NAME.partial-XXXX``: the staging folder of older versions (left by a start killed while creating)."""
_VERSION = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d{{6,}})(?:{re.escape(WEIGHTS_SUFFIX)}|"
                      rf"{re.escape(CARD_SUFFIX)}|{re.escape(OPTIMIZER_SUFFIX)})$")
_LEFTOVER = re.compile(rf"^(?:{re.escape(STAGING)}|{re.escape(REPLACED)})(\d+)-|^{re.escape(LEGACY_STAGING)}")


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


def hardware(device: torch.device = torch.device("cpu"), ranks: int = 1) -> str:
    """The device training runs on (and how many ranks ran it), in words."""
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    else:
        where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, CPU"
    return where + (f", {ranks} ranks (torchrun)" if ranks > 1 else "")


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
        notice: ``None`` if the pointer named the checkpoint; else why it did not, and which checkpoint the run
            resumes from instead (one line, to show the user).
    """

    checkpoint: Path
    model: Model
    episodes_done: int
    wall_seconds: float
    notice: str | None = None

    @property
    def recovered(self) -> bool:
        """Whether the checkpoint was found without the pointer (which resuming puts back)."""
        return self.notice is not None


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
            InputError: if ``path`` is a file, a folder holding a run that got to its first episode, a folder
                holding anything else but no run (no ``config.yaml``), lies in ``data``, or cannot be written.
        """
        if self.path.is_dir():
            try:
                entries = list(self.path.iterdir())
            except OSError as error:
                raise InputError(f"{self.path}: cannot be read ({error.strerror or error})") from None
            others = [entry for entry in entries if entry.name not in CREATION_FILES and not _temporary(entry)]
            if self.config_path.is_file():
                if others:
                    raise InputError(f"{self.path}: already holds a run; use --resume to continue it or choose a "
                                     f"new folder")
            elif others or any(entry.name == CONFIG_FILE for entry in entries):
                raise InputError(f"{self.path}: holds no run (no {CONFIG_FILE}) but is not empty; choose an empty "
                                 f"or a new folder for the run")
        check_output_folder(self.path, overwrite=True, protected=(data,))

    def create(self, config: TrainConfig) -> None:
        """Create the folder, complete: ``config.yaml`` and ``git_commit.txt`` are written into a hidden sibling,
        which one ``os.rename`` makes the run folder (see the module docstring). What a killed start of this run
        left beside it is removed first.

        Raises:
            InputError: naming the folder, if it cannot be written.
        """
        commit = git_commit()
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.remove_leftovers()
            staging = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=self._sibling(STAGING)))
            try:
                _write_durably(staging / COMMIT_FILE, commit + "\n")
                _write_durably(staging / CONFIG_FILE, text)
                os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private
                self._move_into_place(staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        except OSError as error:
            raise InputError(f"{self.path}: cannot be created ({error.strerror or error})") from None
        self.created = True

    def _move_into_place(self, staging: Path) -> None:
        """Rename the built folder ``staging`` to ``path``: over nothing or an empty folder in one rename; a folder
        that :meth:`check_can_start` let a new run replace is first moved aside (one rename), then removed."""
        if not self.path.is_dir() or next(self.path.iterdir(), None) is None:
            if os.name == "nt" and self.path.is_dir():  # Windows renames onto no folder, even an empty one
                self.path.rmdir()
            os.rename(staging, self.path)
            return
        aside = self.path.with_name(f"{self._sibling(REPLACED)}{secrets.token_hex(4)}")
        os.rename(self.path, aside)
        try:
            os.rename(staging, self.path)
        except BaseException:
            os.rename(aside, self.path)
            raise
        shutil.rmtree(aside, ignore_errors=True)

    def _sibling(self, kind: str) -> str:
        """The name prefix of this process's hidden sibling of ``kind`` (:data:`STAGING`, :data:`REPLACED`)."""
        return f".{self.path.name}{kind}{os.getpid()}-"

    def remove_leftovers(self) -> None:
        """Remove what starts of this run killed while creating its folder left beside it: their staging folders
        and the folders they were replacing (those of a process still running are left alone)."""
        prefix = f".{self.path.name}"
        for entry in self.path.parent.iterdir():
            if not entry.name.startswith(prefix):
                continue
            match = _LEFTOVER.match(entry.name[len(prefix):])
            if match is None or entry.is_symlink() or not entry.is_dir():
                continue
            if match.group(1) is not None and _running(int(match.group(1))):
                continue
            shutil.rmtree(entry, ignore_errors=True)

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

    def resume_point(self, config: TrainConfig | None = None) -> ResumePoint | None:
        """The checkpoint to continue from: the one ``latest`` names; if the pointer is missing or names a pair
        that does not load, the newest complete one (with a notice, see the module docstring); or ``None`` if the
        run stopped before its first checkpoint (it then starts over).

        Args:
            config: the run's config; its ``checkpoint_every`` lets ``log.csv`` show that a checkpoint was saved.

        Raises:
            CheckpointError: naming the pointer (or the file at fault), if no complete checkpoint is left although
                one was saved.
        """
        pointer = checkpoint_files(self.latest)[1]
        broken = None
        if pointer.exists():
            try:
                return self._load_point(resolve_checkpoint(self.latest))
            except CheckpointError as error:
                problem = str(error)
            try:
                broken = resolve_checkpoint(self.latest)
            except CheckpointError:
                pass
        else:
            problem = f"{pointer}: file not found"
        for stem in self._candidates():
            if stem == broken:
                continue
            try:
                point = self._load_point(stem)
            except CheckpointError:
                continue
            number = _version_number(stem.name)
            if number is not None and number != point.episodes_done:
                continue
            if self.mode == "conventional" and stem != self.final and not optimizer_state_path(stem).is_file():
                continue
            done = point.episodes_done
            return dataclasses.replace(point, notice=f"{problem}; resuming from {stem.name} (after {done} "
                                                     f"episode{'' if done == 1 else 's'}), the newest complete "
                                                     f"checkpoint")
        if broken is None and not pointer.exists():
            evidence = self._checkpoint_evidence(config)
            if evidence is None:
                return None
            raise CheckpointError(f"{problem}, and no complete checkpoint is left to resume from, although "
                                  f"{evidence}; nothing was changed (start a new run folder, or put the checkpoint "
                                  f"back)")
        raise CheckpointError(f"{problem}; no other complete checkpoint is left to resume from (nothing was "
                              f"changed)")

    def _load_point(self, checkpoint: Path) -> ResumePoint:
        """The resume point of the pair ``checkpoint``.

        Raises:
            CheckpointError: naming the file, if the pair does not load or its card lacks the episodes done.
        """
        model = load_model(checkpoint)
        provenance = model.card["provenance"]
        done = provenance.get("episodes_done")
        if isinstance(done, bool) or not isinstance(done, int) or done < 0:
            raise CheckpointError(f"{checkpoint_files(checkpoint)[1]}: provenance.episodes_done must be a count of "
                                  f"episodes, got {done!r}")
        return ResumePoint(checkpoint, model, done, float(provenance.get("wall_seconds", 0.0)))

    def _versions(self) -> list[tuple[int, Path]]:
        """The checkpoint versions any file of which is here, as (episodes, stem), newest first."""
        versions = {}
        for entry in self.path.iterdir():
            number = _version_number(entry.name)
            if number is not None:
                versions[number] = self.path / f"{CHECKPOINT_PREFIX}{number:06d}"
        return sorted(versions.items(), reverse=True)

    def _candidates(self) -> list[Path]:
        """The pairs a run without a working pointer may resume from, newest first (``final``, then versions)."""
        return [self.final, *(stem for _, stem in self._versions())]

    def _checkpoint_evidence(self, config: TrainConfig | None) -> str | None:
        """What shows that a checkpoint was saved (in words), or ``None``: a pair with both files, the old plain
        ``latest`` weights, a log row of an episode after the first checkpoint, or a validation row."""
        for stem in (self.final, self.latest, *(stem for _, stem in self._versions())):
            weights, card = checkpoint_files(stem)
            if weights.exists() and (card.exists() or stem == self.latest):
                return f"{weights.name} is there"
        _, rows = _read_rows(self.validation_path)
        if rows:
            return f"{self.validation_path.name} records the validation of one"
        if config is not None:
            logged = [episode for episode, _ in _numbered(_read_rows(self.log_path)[1], "episode")]
            if logged and max(logged) >= config.checkpoint_every:
                return f"{self.log_path.name} records {max(logged) + 1} episodes (a checkpoint is saved every " \
                       f"{config.checkpoint_every})"
        return None

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
                tensors and numbers (random bytes, or a pickle that would run code), or does not fit ``optimizer``.
        """
        path = optimizer_state_path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"{path}: file not found; a conventional run resumes with the optimiser state "
                                  f"of its checkpoint {checkpoint.name}")
        try:
            # Plain tensors and numbers only: weights_only loading executes no code.
            state = torch.load(path, weights_only=True)
        except (RuntimeError, EOFError, OSError) as error:  # a truncated or damaged torch.save archive
            reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
            raise CheckpointError(f"{path}: cannot be read as optimiser state, it is truncated or corrupt "
                                  f"({reason})") from None
        except Exception:  # noqa: BLE001 - the weights-only unpickler fails on garbage in many ways
            # Not an archive torch.save wrote: either random bytes or a pickle of something else, such as code,
            # which the weights-only unpickler refuses; nothing of it ran.
            raise CheckpointError(f"{path}: refused, it is not plain optimiser state (it is corrupt, or a pickle "
                                  f"that loading would run code from)") from None
        try:
            optimizer.load_state_dict(state)
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: does not fit this run's optimiser ({type(error).__name__}: "
                                  f"{error})") from None

    def forget_after(self, episodes_done: int, start: ResumePoint | None = None) -> None:
        """Prepare to continue after ``episodes_done`` episodes, from ``start`` (``None``: from the beginning):
        put the pointer back if ``start`` was found without it, remove the files a stopped run left half-made and
        the versions ``start`` supersedes, then drop the log rows of later episodes (done by a stopped run after
        its checkpoint; the resumed run does them again), the validation rows of later checkpoints and incomplete
        rows."""
        with self._writing(self.latest):
            self.remove_leftovers()
            if start is not None and start.recovered:
                write_pointer(self.latest, start.checkpoint)
            self.remove_superseded(keep_newer=start is not None and start.recovered)
        with self._writing(self.log_path):
            _keep_rows(self.log_path, "episode", lambda episode: episode < episodes_done)
        with self._writing(self.validation_path):
            _keep_rows(self.validation_path, "episodes_done", lambda done: done <= episodes_done)

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
            try:
                current = resolve_checkpoint(self.latest)
            except CheckpointError:  # the pointer is missing or broken: final is what it must name
                current = None
            if current not in (self.latest, self.final):
                write_pointer(self.latest, self.final)
            self.remove_superseded()

    def remove_superseded(self, keep_newer: bool = False) -> None:
        """Remove what the pair ``latest`` names does not need: other checkpoint versions and their optimiser
        state, an older run's plain ``latest`` pair once a pointer replaced its card, temporary files.

        Args:
            keep_newer: keep the versions newer than the one ``latest`` names (it was found without the pointer:
                they do not load, and stay until the run rewrites them or finishes).
        """
        current = resolve_checkpoint(self.latest) if checkpoint_files(self.latest)[1].exists() else None
        keep = set() if current is None else {*checkpoint_files(current), optimizer_state_path(current)}
        keep.add(checkpoint_files(self.latest)[1])
        superseded = [self.path / (LATEST + WEIGHTS_SUFFIX), optimizer_state_path(self.latest)] \
            if current != self.latest else []
        newest_kept = None if current is None else _version_number(current.name + CARD_SUFFIX)
        for entry in sorted(self.path.iterdir()):
            number = _version_number(entry.name)
            if keep_newer and number is not None and newest_kept is not None and number > newest_kept:
                continue
            if entry not in keep and (number is not None or _temporary(entry) or entry in superseded):
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


def _version_number(name: str) -> int | None:
    """The episodes of the checkpoint version a file named ``name`` belongs to (its weights, card or optimiser
    state), or ``None`` for any other file."""
    match = _VERSION.match(name)
    return None if match is None else int(match.group(1))


def _temporary(entry: Path) -> bool:
    """Whether ``entry`` is a temporary file an atomic write left (``.NAME.*.tmp*``)."""
    return entry.name.startswith(".") and ".tmp" in entry.name and entry.is_file()


def _write_durably(path: Path, text: str) -> None:
    """Write a new file and flush it to disk (it is renamed into place with its folder)."""
    with open(path, "x", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _running(pid: int) -> bool:
    """Whether another process with id ``pid`` is running (a process's own leftovers are not in use)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    except OSError:
        return False
    return True


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
