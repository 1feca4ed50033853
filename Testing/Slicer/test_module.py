"""The Slicer module's files, checked without Slicer: the module file's parts, the .ui against the Widget and the
parameter node, CMakeLists against what the module imports and loads, and lazy imports."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from MetaRegistrationLib.checkpoint import checkpoint_files
from MetaRegistrationLib.models import BUNDLED_MODEL

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "MetaRegistration"
MODULE_FILE = MODULE / "MetaRegistration.py"
UI_FILE = MODULE / "Resources" / "UI" / "MetaRegistration.ui"
PROJECT_PACKAGES = {"MetaRegistrationSlicer": MODULE, "MetaRegistrationLib": ROOT}
"""The folder holding each of the project's packages."""

# The parameter node wrapper's GUI connectors (Slicer's parameterNodeWrapper/guiConnectors.py): widget class ->
# what field types it can show.
CONNECTORS = {
    "qMRMLNodeComboBox": lambda annotation: "vtkMRML" in annotation,
    "QCheckBox": lambda annotation: annotation == "bool",
    "QComboBox": lambda annotation: "Choice(" in annotation,
    "ctkPathLineEdit": lambda annotation: annotation.startswith("pathlib.Path"),
    "QLineEdit": lambda annotation: annotation == "str",
    "QSpinBox": lambda annotation: annotation == "int",
    "ctkSliderWidget": lambda annotation: annotation.startswith("Annotated[float"),
}


def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text())


def ui_widgets() -> dict[str, ElementTree.Element]:
    return {w.get("name"): w for w in ElementTree.parse(UI_FILE).iter("widget")}


def parameter_fields() -> dict[str, str]:
    (node,) = [c for c in module_tree().body
               if isinstance(c, ast.ClassDef) and c.name == "MetaRegistrationParameterNode"]
    return {item.target.id: ast.unparse(item.annotation) for item in node.body if isinstance(item, ast.AnnAssign)}


def test_module_file_has_the_templates_five_parts_in_order():
    classes = [(c.name, [ast.unparse(b) for b in c.bases], [ast.unparse(d) for d in c.decorator_list])
               for c in module_tree().body if isinstance(c, ast.ClassDef)]
    assert [name for name, _, _ in classes] == ["MetaRegistration", "MetaRegistrationParameterNode",
                                                "MetaRegistrationWidget", "MetaRegistrationLogic",
                                                "MetaRegistrationTest"]
    bases = {name: b for name, b, _ in classes}
    assert bases["MetaRegistration"] == ["ScriptedLoadableModule"]
    assert classes[1][2] == ["parameterNodeWrapper"]
    assert bases["MetaRegistrationWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    # The Logic is the headless core logic: no registration code lives in the module file.
    assert bases["MetaRegistrationLogic"] == ["ScriptedLoadableModuleLogic", "MetaRegistrationCoreLogic"]
    assert bases["MetaRegistrationTest"] == ["ScriptedLoadableModuleTest"]


def test_every_widget_the_code_uses_is_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used, "the Widget uses no widget of the .ui file?"
    assert sorted(used - set(ui_widgets())) == []


def test_the_quality_line_is_a_word_wrapped_label_the_report_fills():
    label = ui_widgets()["qualityLabel"]
    assert label.get("class") == "QLabel"
    assert label.findtext("property[@name='wordWrap']/bool") == "true"
    widget = class_node("MetaRegistrationWidget")
    assert "self._showQuality" in method_calls(widget, "_showReport")
    assert "quality.describe" in method_calls(widget, "_showQuality")


def test_every_slicer_parameter_name_is_a_field_of_a_type_its_widget_can_show():
    fields = parameter_fields()
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = (name, widget.get("class"))
    assert sorted(set(bound) - set(fields)) == [], "SlicerParameterName without a parameter node field"
    assert sorted(set(fields) - set(bound)) == [], "parameter node field without a widget"
    for field, (name, widget_class) in bound.items():
        assert CONNECTORS[widget_class](fields[field]), f"{name} ({widget_class}) cannot show {field}: {fields[field]}"


def test_every_mrml_widget_gets_the_scene():
    root = ElementTree.parse(UI_FILE).getroot()
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml = {name for name, w in ui_widgets().items() if w.get("class", "").startswith("qMRML")} - {"MetaRegistration"}
    assert mrml and mrml == receivers


# --- CMakeLists lists everything the module needs -------------------------------------------------------------

def cmake_lists() -> dict[str, list[str]]:
    text = (MODULE / "CMakeLists.txt").read_text()
    lists = {}
    for name, body in re.findall(r"set\((\w+)\s+(.*?)\)", text, flags=re.S):
        lists[name] = [item.replace("${MODULE_NAME}", "MetaRegistration") for item in body.split()]
    return lists


def module_path(name: str) -> Path | None:
    """The file of a project module ``a.b``, or None for a module from elsewhere."""
    top, *rest = name.split(".")
    if top == "MetaRegistration" and not rest:
        return MODULE_FILE
    if top not in PROJECT_PACKAGES:
        return None
    base = PROJECT_PACKAGES[top] / top / Path(*rest) if rest else PROJECT_PACKAGES[top] / top
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module imported anywhere in a file (function-level imports included)."""
    package = ".".join(path.relative_to(PROJECT_PACKAGES.get(path.parent.name, MODULE)).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = path.parent.name
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def reached_files() -> tuple[set[Path], set[str]]:
    """Project files reachable by imports from the module file, and the other top-level modules they import."""
    seen, external, todo = set(), set(), [MODULE_FILE]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports_of(path):
            target = module_path(name)
            if target is None:
                external.add(name.split(".")[0])
            elif target.is_file():
                todo.append(target)
                init = target.parent / "__init__.py"
                if init.is_file():
                    todo.append(init)
    return seen, external


def resources_loaded() -> set[str]:
    """Resource paths the code builds: ``resourcePath("X")``, and path expressions through "Resources"."""
    found = set()
    for path in (MODULE_FILE, *(MODULE / "MetaRegistrationSlicer").glob("*.py")):
        text = path.read_text()
        found.update("Resources/" + match for match in re.findall(r'resourcePath\("([^"]+)"\)', text))
        for chain in re.findall(r'"Resources"((?:\s*[,/]\s*"[^"]+")+)', text):
            found.add("/".join(["Resources", *re.findall(r'"([^"]+)"', chain)]))
    return found


def test_every_file_the_module_imports_or_loads_is_listed_in_cmakelists():
    lists = cmake_lists()
    scripts = {MODULE / s for s in lists["MODULE_PYTHON_SCRIPTS"]} | {ROOT / s for s in lists["LIBRARY_PYTHON_SCRIPTS"]}
    files, _ = reached_files()
    assert sorted(str(p.relative_to(ROOT)) for p in files - scripts) == []
    listed_resources = set(lists["MODULE_PYTHON_RESOURCES"])
    loaded = resources_loaded()
    assert "Resources/UI/MetaRegistration.ui" in loaded
    assert loaded <= listed_resources, f"loaded but not listed: {sorted(loaded - listed_resources)}"
    assert "Resources/Icons/MetaRegistration.png" in listed_resources  # Slicer shows it in the module list
    bundled = {str(path.relative_to(ROOT)) for path in checkpoint_files(BUNDLED_MODEL)}
    assert bundled <= set(lists["LIBRARY_RESOURCES"])
    missing = [str(p) for p in scripts | {MODULE / r for r in listed_resources} | {ROOT / r for r in
                                                                                 lists["LIBRARY_RESOURCES"]}
               if not p.exists()]
    assert missing == []


SHIPPED_WITH_SLICER = {"slicer", "vtk", "qt", "ctk", "numpy", "packaging", "__main__"}
"""Modules 3D Slicer itself provides (packaging: the dependency check reads versions with it)."""
COMES_WITH = {"pydantic_core": "pydantic"}
"""Modules installed as a part of a listed requirement."""


def test_third_party_imports_are_provided_by_slicer_pytorch_or_requirements():
    _, external = reached_files()
    requirements = {re.split(r"[<>=!~ ]", line)[0].strip().lower()
                    for line in (MODULE / "Resources" / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")}
    provided = SHIPPED_WITH_SLICER | {"PyTorchUtils"}
    unknown = {name for name in external - set(sys.stdlib_module_names) - provided
               if COMES_WITH.get(name, name).lower() not in requirements}
    assert unknown == set()


SLICER_MODULES = ("MetaRegistrationSlicer", "MetaRegistrationSlicer.logic", "MetaRegistrationSlicer.evaluation",
                  "MetaRegistrationSlicer.tables", "MetaRegistrationSlicer.dependencies")
"""What MetaRegistration.py imports when Slicer starts, and the module's other headless modules."""
NOT_AT_LOAD = ("torch", "monai", "safetensors", "pydantic", "matplotlib")
"""Installed on first use (requirements.txt): none may be imported before, or the module would not load."""


def test_importing_the_slicer_modules_loads_neither_torch_nor_monai():
    """Slicer imports the module file at start-up, before the dependencies are installed: its modules may use
    the library's torch-free modules at the top, never torch, MONAI or another package installed on first use."""
    pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as a wheel) is not installed")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import importlib; "
            f"[importlib.import_module(name) for name in {SLICER_MODULES!r}]; "
            f"print([m for m in {NOT_AT_LOAD!r} if m in sys.modules]); "
            "print(sorted(m for m in sys.modules if m.startswith('MetaRegistrationLib.')))")
    result = subprocess.run([sys.executable, "-c", code, str(MODULE)], capture_output=True, text=True, check=True)
    loaded, library = result.stdout.strip().splitlines()[-2:]
    assert loaded == "[]"
    # the library's torch-free modules: errors, atomic files, and the quality signals' column names
    assert library == "['MetaRegistrationLib.errors', 'MetaRegistrationLib.files', 'MetaRegistrationLib.quality']"


# --- the module file against SlicerElastix and SlicerTotalSegmentator -------------------------------------------

def class_node(name: str) -> ast.ClassDef:
    (node,) = [c for c in module_tree().body if isinstance(c, ast.ClassDef) and c.name == name]
    return node


def method_calls(classDef: ast.ClassDef, method: str) -> list[str]:
    """The calls made in a method, in source order, as dotted names."""
    (function,) = [f for f in classDef.body if isinstance(f, ast.FunctionDef) and f.name == method]
    calls = [c for c in ast.walk(function) if isinstance(c, ast.Call)]
    return [ast.unparse(c.func) for c in sorted(calls, key=lambda c: (c.lineno, c.col_offset))]


def test_reload_reloads_the_project_packages_before_the_module_file():
    calls = method_calls(class_node("MetaRegistrationWidget"), "onReload")
    assert calls == ["MetaRegistrationSlicer.reloadPackages", "ScriptedLoadableModuleWidget.onReload"]


def test_reload_packages_imports_every_loaded_project_module_again(tmp_path):
    """In a subprocess: reloading in this one would leave the other tests with two InputError classes."""
    pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as a wheel) is not installed")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import MetaRegistrationSlicer.logic as old; "
            "import MetaRegistrationLib.errors as oldErrors; import MetaRegistrationSlicer; "
            "names = MetaRegistrationSlicer.reloadPackages(); "
            "new, errors = sys.modules['MetaRegistrationSlicer.logic'], sys.modules['MetaRegistrationLib.errors']; "
            "print(sorted(names)); print(new is not old, errors is not oldErrors, new.InputError is errors.InputError, "
            "new.tables is sys.modules['MetaRegistrationSlicer.tables'])")
    result = subprocess.run([sys.executable, "-c", code, str(MODULE)], capture_output=True, text=True, check=True)
    names, checks = result.stdout.strip().splitlines()[-2:]
    assert "'MetaRegistrationSlicer.logic'" in names and "'MetaRegistrationLib.errors'" in names
    assert checks == "True True True True"


def test_start_button_is_one_logic_call():
    calls = method_calls(class_node("MetaRegistrationWidget"), "onStartButton")
    assert "self.logic.startSessionUsingParameterNode" in calls
    assert not any(call.endswith((".startSession", ".trackSweep")) for call in calls)


def test_requirements_txt_is_the_only_dependency_list():
    text = MODULE_FILE.read_text()
    assert "REQUIRED_IMPORTS" not in text and "find_spec" not in text
    logic = class_node("MetaRegistrationLogic")
    assert "dependencies.checkDependencies" in method_calls(logic, "missingDependencies")
    assert "dependencies.installDependencies" in method_calls(logic, "installDependencies")


def test_self_test_installs_nothing_and_builds_its_nodes_with_case_nodes():
    test = class_node("MetaRegistrationTest")
    calls = [call for function in test.body if isinstance(function, ast.FunctionDef)
             for call in method_calls(test, function.name)]
    assert not [call for call in calls if "install" in call.lower() or "pip" in call.lower()]
    assert "conversions.caseNodes" in calls
    assert "MetaRegistrationLogic.missingDependencies" in calls
