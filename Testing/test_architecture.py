"""The dependency rule, read from the source: front ends import the library, never the reverse.

::

        Training (metareg, metareg-train)      MetaRegistrationWeb (metareg-app)     MetaRegistration.py (Slicer GUI)
                     |                                   |                                     |
                     |                                   +------> MetaRegistrationSlicer <-----+
                     |                                                   |
                     +---------------------> MetaRegistrationLib <------+

Each layer may import itself and the layers below it; nothing imports a front end. No project file edits
``sys.path``: the packages are installed (``pyproject.toml``), and Slicer puts the module's folder on its path.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "MetaRegistrationLib": ROOT / "MetaRegistrationLib",
    "MetaRegistrationSlicer": ROOT / "MetaRegistration" / "MetaRegistrationSlicer",
    "MetaRegistration": ROOT / "MetaRegistration" / "MetaRegistration.py",
    "Training": ROOT / "Training",
    "MetaRegistrationWeb": ROOT / "MetaRegistrationWeb",
}
ALLOWED = {
    "MetaRegistrationLib": {"MetaRegistrationLib"},
    "MetaRegistrationSlicer": {"MetaRegistrationSlicer", "MetaRegistrationLib"},
    "MetaRegistration": {"MetaRegistration", "MetaRegistrationSlicer", "MetaRegistrationLib"},
    "Training": {"Training", "MetaRegistrationLib"},
    "MetaRegistrationWeb": {"MetaRegistrationWeb", "MetaRegistrationSlicer", "MetaRegistrationLib"},
}
"""Which project layers each layer may import."""


def files_of(layer: str) -> list[Path]:
    path = LAYERS[layer]
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


def imported_layers(path: Path, layer: str) -> set[str]:
    """The project layers a file imports (at any depth of the file; relative imports stay in the layer)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [layer] if node.level else [node.module or ""]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in LAYERS)
    return found


def import_graph() -> dict[str, set[str]]:
    """Layer -> the other layers it imports."""
    return {layer: set().union(*(imported_layers(p, layer) for p in files_of(layer))) - {layer} for layer in LAYERS}


def test_front_ends_stand_on_the_library_and_nothing_imports_a_front_end():
    graph = import_graph()
    violations = {layer: sorted(imports - ALLOWED[layer]) for layer, imports in graph.items()
                  if imports - ALLOWED[layer]}
    assert violations == {}
    assert graph["MetaRegistrationLib"] == set()
    assert graph["Training"] == {"MetaRegistrationLib"}
    assert graph["MetaRegistrationWeb"] == {"MetaRegistrationSlicer", "MetaRegistrationLib"}


def test_the_rule_catches_an_edge_into_a_front_end(tmp_path):
    offending = tmp_path / "offending.py"
    offending.write_text("def f():\n    from MetaRegistrationWeb import command\n")
    assert imported_layers(offending, "MetaRegistrationLib") == {"MetaRegistrationWeb"}


def test_no_project_file_edits_sys_path():
    edits = []
    for layer in LAYERS:
        for path in files_of(layer):
            for node in ast.walk(ast.parse(path.read_text())):
                target = node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    else None
                if target is not None and ast.unparse(target) == "sys.path":
                    edits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert edits == []
