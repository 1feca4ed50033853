"""``pip install .`` (not editable) gives a working product: the wheel's contents, and its commands run from an
unrelated folder (the installed-package smoke test that CI runs as part of ``make test``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from MetaRegistrationLib.data import default_data_dir

ROOT = Path(__file__).resolve().parents[1]
APP_START_SECONDS = 90


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of the tracked files (the checkout stays clean)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(base / "dist"), str(source)], check=True, capture_output=True)
    (built,) = (base / "dist").glob("*.whl")
    return built


def test_the_wheel_holds_the_library_the_module_logic_the_web_app_the_model_and_the_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("MetaRegistrationLib/bundled_models/meta-init.safetensors",
                     "MetaRegistrationLib/bundled_models/meta-init.json",
                     "MetaRegistrationSlicer/logic.py", "MetaRegistrationSlicer/conversions.py",
                     "MetaRegistrationWeb/app.py", "Training/cli.py", "Training/configs/meta.yaml"):
        assert required in names, f"{required} is not in {wheel.name}"
    assert not any(name.startswith(("Testing/", "Training/runs/", "docs/")) for name in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("metareg =", "metareg-train =", "metareg-app ="):
        assert script in scripts


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A new virtual environment with the wheel installed (not editable). Its dependencies come from this test
    environment's site-packages through a ``.pth`` line (so torch is not downloaded again); the project's own
    packages come only from the wheel."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    return venv / "bin"


def run_installed(bin_dir: Path, command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("PYTHONPATH", "METAREG_DATA"):
        environment.pop(name, None)
    return subprocess.run([str(bin_dir / command[0]), *command[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=environment)


def test_installed_commands_use_the_installed_packages(installed, tmp_path):
    code = ("import MetaRegistrationLib, MetaRegistrationSlicer, MetaRegistrationWeb, Training; "
            "print(MetaRegistrationLib.__file__, MetaRegistrationSlicer.__file__, Training.__file__)")
    result = run_installed(installed, ["python", "-c", code], tmp_path)
    assert result.returncode == 0, result.stderr
    assert str(ROOT) not in result.stdout  # nothing comes from the checkout


def test_installed_demo_runs_from_an_unrelated_folder(installed, tmp_path):
    result = run_installed(installed, ["metareg", "demo", "--out", "demo-output"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "after (meta)" in result.stdout
    assert (tmp_path / "demo-output" / "demo.png").is_file()


def test_installed_evaluate_runs_on_the_data_from_an_unrelated_folder(installed, tmp_path, synthetic_dataset):
    real = default_data_dir()
    data, cases = (real, "obs000") if (real / "fixed_images").is_dir() else (synthetic_dataset, "a")
    result = run_installed(installed, ["metareg", "evaluate", "--data", str(data), "--cases", cases,
                                       "--method", "meta", "--frames", "2,3", "--out", "evaluation"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "evaluation" / "cases.csv").read_text().count("\n") == 3  # header + 2 frame counts


def test_installed_web_app_serves_its_page(installed, tmp_path):
    port = free_port()
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "VTK_DEFAULT_OPENGL_WINDOW": "vtkEGLRenderWindow"}
    log = tmp_path / "app.log"
    with open(log, "w") as output:
        server = subprocess.Popen([str(installed / "metareg-app"), "--port", str(port)], cwd=tmp_path,
                                  stdout=output, stderr=subprocess.STDOUT, env=environment)
        try:
            deadline = time.monotonic() + APP_START_SECONDS
            while True:
                assert server.poll() is None, f"metareg-app exited with {server.returncode}:\n{log.read_text()}"
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                        assert response.status == 200
                        break
                except OSError:
                    assert time.monotonic() < deadline, f"no page within {APP_START_SECONDS} s:\n{log.read_text()}"
                    time.sleep(1)
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_installed_default_data_is_shared_beside_the_working_folder(installed, tmp_path, synthetic_dataset):
    """Without --data an installed command reads ../shared/data/mrus-prostate, as a checkout does beside it."""
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "mrus-prostate").symlink_to(synthetic_dataset)
    (tmp_path / "work").mkdir()
    result = run_installed(installed, ["metareg", "evaluate", "--cases", "a", "--method", "centroid", "--out",
                                       "evaluation"], tmp_path / "work")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "work" / "evaluation" / "cases.csv").is_file()
