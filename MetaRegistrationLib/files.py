"""Atomic file output: a reader never sees a half-written file, a failure leaves none; and the check of an output
folder that every command makes before it starts (:func:`check_output_folder`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    The temporary name keeps the suffix so that writers choosing a format by
    extension (SimpleITK, matplotlib) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp" + suffix)
    os.close(handle)
    temporary = Path(temporary)
    # mkstemp creates the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


@contextmanager
def staged_outputs(folder: str | Path) -> Iterator[Path]:
    """Yield a staging folder; on success its files are moved into ``folder``, on error none are.

    Files of ``folder`` that the staging folder does not hold are left alone.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.partial-") as staging:
        yield Path(staging)
        folder.mkdir(exist_ok=True)
        for staged in sorted(Path(staging).iterdir()):
            os.replace(staged, folder / staged.name)


def _probe_writable(folder: Path, subject: Path) -> None:
    """Create and remove a temporary folder in ``folder``: the real test (permissions, ACLs, read-only mounts)."""
    try:
        Path(tempfile.mkdtemp(dir=folder, prefix=".metareg-write-test-")).rmdir()
    except OSError as error:
        where = "there" if folder == subject else f"in {folder}"
        raise InputError(f"{subject}: cannot write {where} ({error.strerror or error})") from None


def check_output_folder(folder: str | Path, overwrite: bool = False, protected: Iterable[str | Path | None] = (),
                        overwrite_hint: str = "--overwrite") -> Path:
    """Check, before any work starts, that results can go into ``folder`` (see :func:`staged_outputs`).

    Refused, each in one line naming ``folder``: a path that exists and is not a folder; a folder that is, or
    lies inside, one of ``protected`` (e.g. the data set read, so that no output lands among the user's data);
    an existing folder that is not empty, unless ``overwrite`` (then files of the same names are replaced, others
    left alone); and a place that cannot be written (the folder, or the nearest folder above it that exists).
    ``None`` entries of ``protected`` are ignored. Nothing is created.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.
    """
    folder = Path(folder)
    resolved = folder.resolve()
    for guarded in protected:
        if guarded is None:
            continue
        guarded = Path(guarded).resolve()
        if resolved == guarded or guarded in resolved.parents:
            where = "is" if resolved == guarded else "lies inside"
            raise InputError(f"{folder}: {where} the data folder {guarded}; choose an output folder outside it "
                             "(nothing is ever written among the input data)")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder; choose a folder for the outputs")
    if folder.is_dir():
        try:
            entries = next(folder.iterdir(), None)
        except OSError as error:
            raise InputError(f"{folder}: cannot be read ({error.strerror or error})") from None
        if entries is not None and not overwrite:
            raise InputError(f"{folder}: exists and is not empty; give {overwrite_hint} to write into it "
                             "(files of the same names are replaced) or choose another folder")
        _probe_writable(folder, folder)
    # The staging folder is made beside ``folder``: its parent (or the nearest existing folder above) must be
    # writable too.
    ancestor = resolved.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{folder}: {ancestor} is not a folder, so {folder} cannot be made")
    _probe_writable(ancestor, folder)
    return folder
