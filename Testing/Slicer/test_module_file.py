"""MetaRegistration.py itself, run on slicer-core's MRML: the Slicer application's Python parts it imports (qt,
ScriptedLoadableModule, parameterNodeWrapper) are replaced by minimal stand-ins, so that its Logic and its
self-test run here as they do in 3D Slicer."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import types
import unittest
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as a wheel) is not installed")

from MetaRegistrationLib.quality import QualitySignals  # noqa: E402
from MetaRegistrationSlicer import dependencies  # noqa: E402

MODULE_FILE = Path(__file__).resolve().parents[2] / "MetaRegistration" / "MetaRegistration.py"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _ScriptedLoadableModuleTest(unittest.TestCase):
    displayed: list[str] = []

    def delayDisplay(self, message, msec=None):
        type(self).displayed.append(message)


def _stand_ins() -> dict[str, types.ModuleType]:
    qt = types.ModuleType("qt")
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget"):
        setattr(scripted, name, type(name, (), {"__init__": lambda self, *args: None}))
    scripted.ScriptedLoadableModuleLogic = type("ScriptedLoadableModuleLogic", (),
                                                {"__init__": lambda self, *args: None})
    scripted.ScriptedLoadableModuleTest = _ScriptedLoadableModuleTest
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = lambda choices: choices
    return {"qt": qt, "slicer.ScriptedLoadableModule": scripted, "slicer.parameterNodeWrapper": wrapper}


@pytest.fixture
def module_file(monkeypatch, mrml_scene):
    """MetaRegistration.py imported with the stand-ins, on a scene set as ``slicer.mrmlScene``."""
    for name, module in _stand_ins().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer, "mrmlScene", mrml_scene, raising=False)
    spec = importlib.util.spec_from_file_location("MetaRegistrationModuleFile", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _ScriptedLoadableModuleTest.displayed = []
    return module


def test_self_test_passes(module_file, mrml_scene):
    module_file.MetaRegistrationTest().runTest()
    assert _ScriptedLoadableModuleTest.displayed[-1] == "Test passed"


def test_self_test_skips_with_a_message_and_installs_nothing_without_dependencies(module_file, mrml_scene,
                                                                                  monkeypatch):
    torch = next(d for d in dependencies.readRequirements() if d.name == "torch")
    monkeypatch.setattr(dependencies, "checkDependencies", lambda: [dependencies.Problem(torch, None)])

    def no_install(*args, **kwargs):
        raise AssertionError("the self-test installed something")

    monkeypatch.setattr(dependencies, "installDependencies", no_install)
    monkeypatch.setattr(slicer.util, "pip_install", no_install)
    nodes = mrml_scene.GetNumberOfNodes()
    module_file.MetaRegistrationTest().runTest()
    (message,) = _ScriptedLoadableModuleTest.displayed
    assert message.startswith("Test skipped: dependencies missing (torch is not installed (needs torch>=")
    assert mrml_scene.GetNumberOfNodes() <= nodes


def test_module_logic_installs_through_the_dependency_module(module_file, monkeypatch):
    calls = []
    monkeypatch.setattr(dependencies, "installDependencies", lambda **kwargs: calls.append(kwargs) or ["x>=1"])
    module_file.MetaRegistrationLogic().installDependencies()
    assert calls == [{"pipInstall": slicer.util.pip_install}]
    assert module_file.MetaRegistrationLogic.missingDependencies() == []  # this environment has everything


def test_the_quality_label_shows_the_update_line_in_red_on_a_folding_alarm(module_file):
    widget = module_file.MetaRegistrationWidget.__new__(module_file.MetaRegistrationWidget)
    label = types.SimpleNamespace(text="", styleSheet="")
    widget.ui = types.SimpleNamespace(qualityLabel=label)
    calm = QualitySignals(0.0, False, 0.9, 0.2, 0.5, 0.8, "high")
    widget._showQuality(calm)
    assert (label.text, label.styleSheet) == (calm.describe(), "")
    folded = dataclasses.replace(calm, fold_pct=0.5, fold_alarm=True)
    widget._showQuality(folded)
    assert label.text == folded.describe() and "red" in label.styleSheet
    widget._showQuality(None)  # a reset, or a frame that registered nothing
    assert (label.text, label.styleSheet) == ("", "")
