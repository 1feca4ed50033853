"""The module's dependency list and installer (MetaRegistrationSlicer.dependencies), with faked installed versions:
versions are checked, an old package is upgraded, torch goes through SlicerPyTorch, what Slicer ships never
through pip."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from MetaRegistrationSlicer import dependencies
from MetaRegistrationSlicer.dependencies import DependencyError

ROOT = Path(__file__).resolve().parents[2]

SATISFIED = {"torch": "2.13.0+cpu", "monai": "1.6.1", "safetensors": "0.8.0", "matplotlib": "3.11.2",
             "pydantic": "2.14.4", "numpy": "2.4.6", "SimpleITK": "2.5.7", "scipy": "1.17.1"}


class Environment:
    """Installed versions that pip and the PyTorch extension change, as the real ones would."""

    def __init__(self, **changes):
        self.versions = {**SATISFIED, **changes}
        self.pip_calls, self.torch_calls, self.constraints = [], [], []

    def version(self, name):
        return self.versions.get(name)

    def pip(self, arguments):
        self.pip_calls.append(list(arguments))
        self.constraints = Path(arguments[arguments.index("--constraint") + 1]).read_text().split()
        for argument in arguments[:arguments.index("--constraint")]:
            name = re.split(r"[<>=!~]", argument)[0]
            self.versions[name] = {"monai": "1.6.1", "safetensors": "0.8.0", "pydantic": "2.14.4"}.get(name, "9.0")

    def torch(self, requirement):
        self.torch_calls.append(requirement)
        self.versions["torch"] = "2.13.0+cu130"

    def install(self, loaded=()):
        return dependencies.installDependencies(pipInstall=self.pip, installTorch=self.torch, version=self.version,
                                                loaded=set(loaded))


def test_the_requirements_file_lists_each_dependency_once_with_its_provider():
    listed = {d.name: d.provider for d in dependencies.readRequirements()}
    assert listed == {"torch": "pytorch-extension", "monai": "pip", "safetensors": "pip", "matplotlib": "pip",
                      "pydantic": "pip", "numpy": "slicer", "SimpleITK": "slicer", "scipy": "slicer"}


def test_every_requirement_is_a_dependency_of_the_library_too():
    """requirements.txt is what Slicer installs; pyproject.toml what pip installs for the library: the same names."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ]", requirement)[0].lower() for requirement in project}
    assert {d.name.lower() for d in dependencies.readRequirements()} <= names


def test_versions_are_checked_not_only_presence(monkeypatch):
    environment = Environment(monai="1.2.0", safetensors=None)
    problems = dependencies.checkDependencies(version=environment.version)
    assert [p.message for p in problems] == ["monai 1.2.0 is installed, monai<1.7,>=1.4 is needed",
                                             "safetensors is not installed (needs safetensors>=0.4)"]
    assert dependencies.checkDependencies(version=Environment().version) == []


def test_an_old_monai_is_upgraded_and_what_slicer_ships_is_pinned():
    environment = Environment(monai="1.2.0", matplotlib=None)
    installed = environment.install()
    assert installed == ["monai<1.7,>=1.4", "matplotlib>=3.7"]
    assert [call[:2] for call in environment.pip_calls] == [installed]
    # pip may not replace torch or what Slicer ships while it installs the rest.
    assert sorted(environment.constraints) == ["SimpleITK==2.5.7", "numpy==2.4.6", "scipy==1.17.1",
                                               "torch==2.13.0+cpu"]
    assert environment.torch_calls == []


def test_torch_comes_from_the_pytorch_extension_with_the_version_range():
    environment = Environment(torch="2.1.0")
    assert environment.install() == []
    assert environment.torch_calls == [">=2.13.0"] and environment.pip_calls == []


def test_packages_slicer_ships_are_never_installed():
    environment = Environment(SimpleITK="2.1.0", monai=None)
    with pytest.raises(DependencyError, match=r"^SimpleITK 2.1.0 is installed, SimpleITK>=2.3 is needed: it comes "
                                              r"with 3D Slicer and is never reinstalled"):
        environment.install()
    assert environment.pip_calls == [] and environment.torch_calls == []  # nothing installed before refusing


def test_an_upgraded_package_already_imported_asks_for_a_restart():
    environment = Environment(monai="1.2.0")
    with pytest.raises(DependencyError, match="^monai upgraded, but the old version is already imported: restart"):
        environment.install(loaded={"monai"})


def test_what_the_installer_could_not_fix_is_reported():
    environment = Environment(pydantic="1.10")
    environment.pip = lambda arguments: environment.pip_calls.append(arguments)  # pip "succeeds" and changes nothing
    with pytest.raises(DependencyError, match="^still not satisfied after installing: pydantic 1.10 is installed"):
        environment.install()


def test_torch_is_installed_through_pytorch_utils_with_keywords(monkeypatch):
    calls = []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            calls.append((askConfirmation, forceComputationBackend, torchVersionRequirement))
            return types.ModuleType("torch")

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    dependencies._installTorchWithPyTorchExtension(">=2.4")
    assert calls == [(False, None, ">=2.4")]
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # the extension is not installed
    with pytest.raises(DependencyError, match="needs the PyTorch extension"):
        dependencies._installTorchWithPyTorchExtension(">=2.4")


def test_a_bad_requirements_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("monai>=1.4\nnot a requirement!\n")
    with pytest.raises(DependencyError, match=r"requirements.txt:2: not a pip requirement"):
        dependencies.readRequirements(path)
    path.write_text("numpy>=1  # provided-by: conda\n")
    with pytest.raises(DependencyError, match=r"requirements.txt:1: unknown provider 'conda'"):
        dependencies.readRequirements(path)
