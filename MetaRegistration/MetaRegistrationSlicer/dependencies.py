"""The module's Python dependencies: one list (``Resources/requirements.txt``), checked by version, installed once.

Each line of ``requirements.txt`` is a pip requirement; a trailing tag says who provides it:

- no tag: installed with pip on first use (after one confirmation);
- ``# provided-by: slicer``: shipped with 3D Slicer (numpy, SimpleITK, scipy): checked, never installed, since
  reinstalling a package Slicer links against can break Slicer;
- ``# provided-by: pytorch-extension``: torch, installed only through the SlicerPyTorch extension
  (``PyTorchUtilsLogic().installTorch``), which picks the CPU or CUDA build; the line's version range is passed on.

Versions are read with ``importlib.metadata`` and compared with ``packaging`` (which Slicer ships), so that a
package another extension installed in an older version (an old MONAI) is upgraded or reported, not taken as
present. Nothing here imports torch or the library, and nothing installs at import: the Logic calls
:func:`installDependencies` when the user confirms.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import tempfile
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from MetaRegistrationLib.errors import MetaRegistrationError

REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"
"""The one dependency list (beside MetaRegistration.py in the source, build and install trees)."""

PIP = "pip"
SLICER = "slicer"
PYTORCH_EXTENSION = "pytorch-extension"
PROVIDERS = (PIP, SLICER, PYTORCH_EXTENSION)
TAG = "provided-by:"

IMPORT_NAMES = {"pyyaml": "yaml"}
"""Distribution name (lower case) -> top-level module name, where they differ."""


class DependencyError(MetaRegistrationError):
    """A dependency is missing or too old and cannot be (or was not) installed; the message says what to do."""


@dataclass(frozen=True)
class Dependency:
    """One line of ``requirements.txt``: the requirement and who provides it (:data:`PROVIDERS`)."""

    requirement: Requirement
    provider: str = PIP

    @property
    def name(self) -> str:
        return self.requirement.name

    @property
    def moduleName(self) -> str:
        """The module ``import`` names (the distribution name for all but a few)."""
        return IMPORT_NAMES.get(self.name.lower(), self.name)


@dataclass(frozen=True)
class Problem:
    """A dependency whose installed version (``None``: not installed) does not satisfy its requirement."""

    dependency: Dependency
    installed: str | None

    @property
    def message(self) -> str:
        requirement = self.dependency.requirement
        wanted = f"{requirement.name}{requirement.specifier}"
        if self.installed is None:
            return f"{requirement.name} is not installed (needs {wanted})"
        return f"{requirement.name} {self.installed} is installed, {wanted} is needed"


def readRequirements(path: str | Path = REQUIREMENTS_FILE) -> list[Dependency]:
    """The dependencies listed in a requirements file (see the module docstring for the format).

    Raises:
        DependencyError: naming the file and line of a requirement pip would not understand or an unknown tag.
    """
    path = Path(path)
    dependencies = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text, _, comment = line.partition("#")
        if not text.strip():
            continue
        provider = PIP
        if comment.strip().startswith(TAG):
            provider = comment.strip()[len(TAG):].strip()
            if provider not in PROVIDERS:
                raise DependencyError(f"{path}:{number}: unknown provider {provider!r} "
                                      f"(expected one of {', '.join(PROVIDERS)})")
        try:
            requirement = Requirement(text.strip())
        except InvalidRequirement as error:
            raise DependencyError(f"{path}:{number}: not a pip requirement ({error})") from None
        dependencies.append(Dependency(requirement, provider))
    return dependencies


def installedVersion(name: str) -> str | None:
    """The installed version of a distribution, or ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _satisfies(requirement: Requirement, version: str | None) -> bool:
    if version is None:
        return False
    try:
        parsed = Version(version)
    except InvalidVersion:
        return False
    # A local build tag (torch 2.13.0+cpu) or a pre-release that is installed still counts.
    return requirement.specifier.contains(parsed, prereleases=True) or \
        requirement.specifier.contains(Version(parsed.public), prereleases=True)


def checkDependencies(dependencies: Sequence[Dependency] | None = None,
                      version: Callable[[str], str | None] = installedVersion) -> list[Problem]:
    """The dependencies whose installed version is missing or outside its range (none: all is well).

    Args:
        dependencies: what to check; ``requirements.txt`` by default.
        version: the installed version of a distribution name (tests pass a fake).
    """
    dependencies = readRequirements() if dependencies is None else dependencies
    problems = []
    for dependency in dependencies:
        if dependency.requirement.marker is not None and not dependency.requirement.marker.evaluate():
            continue
        installed = version(dependency.name)
        if not _satisfies(dependency.requirement, installed):
            problems.append(Problem(dependency, installed))
    return problems


def describeProblems(problems: Sequence[Problem]) -> str:
    """The problems as one line, for a confirmation dialog or an error."""
    return "; ".join(problem.message for problem in problems)


def _constraints(dependencies: Sequence[Dependency], version: Callable[[str], str | None]) -> list[str]:
    """pip constraints holding what Slicer and SlicerPyTorch provide at their installed versions, so that pip
    never replaces them while installing the rest (it picks versions of the rest that fit, or fails)."""
    pinned = []
    for dependency in dependencies:
        installed = version(dependency.name)
        if dependency.provider != PIP and installed is not None:
            pinned.append(f"{dependency.name}=={installed}")
    return pinned


def installDependencies(pipInstall: Callable[[list[str]], object],
                        installTorch: Callable[[str], object] | None = None,
                        dependencies: Sequence[Dependency] | None = None,
                        version: Callable[[str], str | None] = installedVersion,
                        loaded: Container[str] = sys.modules) -> list[str]:
    """Bring every dependency into its range: torch through SlicerPyTorch, the pip ones with pip (upgrading an
    old version), nothing Slicer ships. Returns the requirements given to pip (empty when nothing was needed).

    Args:
        pipInstall: installs a list of pip arguments (``slicer.util.pip_install`` in Slicer).
        installTorch: installs torch for a version range such as ``">=2.13.0"`` (default: through the SlicerPyTorch
            extension's ``PyTorchUtilsLogic().installTorch``).
        dependencies, version: as :func:`checkDependencies`.
        loaded: the modules imported in this process (an upgraded one needs a restart).

    Raises:
        DependencyError: before installing anything when a package Slicer ships is missing or too old (update
            Slicer) or the PyTorch extension is missing; after installing, naming what is still wrong (with
            "restart Slicer" when an old version was already imported).
    """
    dependencies = readRequirements() if dependencies is None else dependencies
    problems = checkDependencies(dependencies, version)
    if not problems:
        return []
    shipped = [problem for problem in problems if problem.dependency.provider == SLICER]
    if shipped:
        raise DependencyError(f"{describeProblems(shipped)}: it comes with 3D Slicer and is never reinstalled by "
                              "MetaRegistration; use a newer Slicer")
    wasImported = {problem.dependency.name for problem in problems
                   if problem.installed is not None and problem.dependency.moduleName in loaded}
    torchProblems = [problem for problem in problems if problem.dependency.provider == PYTORCH_EXTENSION]
    for problem in torchProblems:
        (installTorch or _installTorchWithPyTorchExtension)(str(problem.dependency.requirement.specifier))
    pipRequirements = [str(problem.dependency.requirement) for problem in problems
                       if problem.dependency.provider == PIP]
    if pipRequirements:
        # Pinning what Slicer and torch provide keeps pip from "upgrading" them as a dependency of the rest.
        handle, constraints = tempfile.mkstemp(prefix="MetaRegistration-constraints-", suffix=".txt")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write("\n".join(_constraints(dependencies, version)) + "\n")
            pipInstall([*pipRequirements, "--constraint", constraints])
        finally:
            os.unlink(constraints)
    importlib.invalidate_caches()
    remaining = checkDependencies(dependencies, version)
    if remaining:
        raise DependencyError(f"still not satisfied after installing: {describeProblems(remaining)}; see the "
                              "Python console for the installer's log")
    stale = sorted(wasImported)
    if stale:
        raise DependencyError(f"{', '.join(stale)} upgraded, but the old version is already imported: restart "
                              "3D Slicer to use the new one")
    return pipRequirements


def _installTorchWithPyTorchExtension(versionRequirement: str) -> None:
    """torch in ``versionRequirement`` through the SlicerPyTorch extension (which picks the CPU or CUDA build)."""
    try:
        import PyTorchUtils
    except ImportError:
        raise DependencyError("MetaRegistration needs the PyTorch extension (SlicerPyTorch): install it from the "
                              "Extensions Manager and restart 3D Slicer") from None
    # Keywords only: older SlicerPyTorch releases take (askConfirmation, forceComputationBackend,
    # torchVersionRequirement) positionally, newer ones add more after them.
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                          torchVersionRequirement=versionRequirement)
    if torch is None:
        raise DependencyError("PyTorch was not installed; see the PyTorch Utils module for details")
