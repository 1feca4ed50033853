"""The extension as the Slicer ExtensionsIndex sees it: its metadata, and the built extension's layout rebuilt from
MetaRegistration/CMakeLists.txt (the bundled model resolves there).

slicerMacroBuildScriptedModule and ctkMacroCompilePythonScript put the module's scripts and resources, the
library's scripts and the library's resources (LIBRARY_RESOURCES) into one ``qt-scripted-modules`` folder, at the
paths listed (module files relative to MetaRegistration/, library files relative to the repository root).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from test_module import MODULE, ROOT, cmake_lists


def install_like_cmake(destination: Path) -> Path:
    lists = cmake_lists()
    listed = [(MODULE, item) for name in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES") for item in lists[name]]
    listed += [(ROOT, item) for name in ("LIBRARY_PYTHON_SCRIPTS", "LIBRARY_RESOURCES") for item in lists[name]]
    for base, item in listed:
        target = destination / item
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(base / item, target)
    return destination


def test_the_bundled_model_loads_from_the_installed_extension_layout(tmp_path):
    modules = install_like_cmake(tmp_path / "lib" / "Slicer-5.10" / "qt-scripted-modules")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "  # Slicer puts qt-scripted-modules on sys.path
            "import MetaRegistrationLib.models as models; "
            "network, settings, card = models.load_model(); "
            "print(models.__file__); print(models.BUNDLED_MODEL); print(card['weights']['sha256'])")
    result = subprocess.run([sys.executable, "-c", code, str(modules)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    library_file, model_stem, checksum = result.stdout.split()
    assert Path(library_file).is_relative_to(modules)
    assert Path(model_stem) == modules / "MetaRegistrationLib" / "bundled_models" / "meta-init"
    assert len(checksum) == 64


def extension_settings() -> dict[str, str]:
    text = (ROOT / "CMakeLists.txt").read_text()
    return dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"\)', text))


def repository_path(url: str) -> Path:
    """The file in this repository that a raw.githubusercontent.com URL of the main branch names."""
    match = re.fullmatch(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(.+)", url)
    assert match, f"{url}: not a raw URL of the main branch"
    return ROOT / match.group(1)


def test_the_extension_meets_the_extensions_index_checklist():
    assert "Apache License" in (ROOT / "LICENSE.txt").read_text()[:200]
    (project,) = re.findall(r"^project\((\w+)\)", (ROOT / "CMakeLists.txt").read_text(), flags=re.M)
    assert project == "MetaRegistration" and not project.startswith("Slicer")
    settings = extension_settings()
    for url in (settings["EXTENSION_ICONURL"], *settings["EXTENSION_SCREENSHOTURLS"].split()):
        assert repository_path(url).is_file(), url
    repository = settings["EXTENSION_HOMEPAGE"].split("#")[0]
    assert repository in settings["EXTENSION_CONTRIBUTORS"]  # the project and its repository, no invented people
    entry = json.loads((ROOT / "docs" / f"{project}.json").read_text())
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                       "slicer-extension-catalog-entry-schema-")
    assert entry["category"] == settings["EXTENSION_CATEGORY"] == "Registration"
    assert entry["build_dependencies"] == settings["EXTENSION_DEPENDS"].split() == ["PyTorch"]
    assert entry["scm_url"].removesuffix(".git") == repository
