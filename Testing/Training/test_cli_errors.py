"""Every bad input to ``metareg`` (and ``metareg-app``) is one line naming what is at fault, exit status 2, with
nothing written and the inputs untouched; and ``metareg --help`` stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MetaRegistrationLib import files
from MetaRegistrationLib.evaluation import CASE_COLUMNS
from Training.arguments import adaptation_overrides
from Training.cli import main

from conftest import write_image

ROOT = Path(__file__).resolve().parents[2]


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    """The only line on stderr (the progress bars of a run that fails later write there too: none may run)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


# --- --adapt ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "item, message",
    [
        ("learning_rate=-0.001", "--adapt: learning_rate: input should be greater than 0 (got -0.001)"),
        ("learning_rate=fast", "--adapt: learning_rate: input should be a valid number (got 'fast')"),
        ("learning_rate=nan", "--adapt: learning_rate: input should be a valid number (got 'nan')"),
        ("learning_rate=NaN", "--adapt: learning_rate: input should be a finite number"),
        ("learning_rate=true", "--adapt: learning_rate: input should be a valid number (got True)"),
        ("updates_per_interaction=-1", "--adapt: updates_per_interaction: input should be greater than or equal to 0"),
        ("updates_per_interaction=1.5", "--adapt: updates_per_interaction: input should be a valid integer"),
        ("bending_weight=-100", "--adapt: bending_weight: input should be greater than or equal to 0"),
        ("speed=11", "--adapt: speed: unknown setting (known: learning_rate, updates_per_interaction"),
        ("learning_rate", "--adapt: expected NAME=VALUE, got 'learning_rate'"),
    ],
)
def test_bad_adaptation_overrides_are_one_line_naming_adapt_and_the_key(synthetic_dataset, tiny_model, tmp_path,
                                                                         capsys, item, message):
    out = tmp_path / "out"
    before = snapshot(synthetic_dataset)
    code = main(["evaluate", "--data", str(synthetic_dataset), "--cases", "a", "--method", "meta", "--frames", "2",
                 "--model", str(tiny_model), "--adapt", item, "--out", str(out)])
    line = one_error_line(capsys)
    assert code == 2 and message in line
    assert ".json" not in line and ".safetensors" not in line and "tmp" not in line.split(": error: ")[1]
    assert not out.exists() and snapshot(synthetic_dataset) == before


def test_override_values_are_json_scalars_checked_by_the_settings():
    fields = ("learning_rate", "updates_per_interaction")
    assert adaptation_overrides(["learning_rate=1e-3", "updates_per_interaction=2"], fields) == {
        "learning_rate": 0.001, "updates_per_interaction": 2}
    assert adaptation_overrides(["learning_rate=fast"], fields) == {"learning_rate": "fast"}


def test_adapt_is_refused_for_a_method_without_a_model(synthetic_dataset, tmp_path, capsys):
    assert main(["evaluate", "--data", str(synthetic_dataset), "--method", "identity", "--adapt",
                 "learning_rate=0.002", "--out", str(tmp_path / "out")]) == 2
    assert "--adapt: method 'identity' uses no model" in one_error_line(capsys)


# --- output folders -------------------------------------------------------------------------------------------------

COMMANDS = {
    "evaluate": ["evaluate", "--method", "identity"],
    "pairs": ["pairs", "--frames", "2"],
    "demo": ["demo", "--method", "identity"],
}


def _bad_out(kind: str, data: Path, tmp_path: Path, monkeypatch) -> tuple[Path, str]:
    if kind == "file":
        out = tmp_path / "results.csv"
        out.write_text("mine")
        return out, "exists and is not a folder"
    if kind == "data":
        return data, f"is the data folder {data.resolve()}"
    if kind == "inside-data":
        return data / "fixed_images", f"lies inside the data folder {data.resolve()}"
    if kind == "not-empty":
        out = tmp_path / "old"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        return out, "exists and is not empty; give --overwrite"
    out = tmp_path / "read-only"
    out.mkdir()
    real = files.tempfile.mkdtemp

    def mkdtemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == out.resolve():
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkdtemp", mkdtemp)
    return out, "cannot write there (Permission denied)"


@pytest.mark.parametrize("kind", ["file", "data", "inside-data", "not-empty", "read-only"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_out_folders_are_refused_before_any_work(synthetic_dataset, tmp_path, capsys, monkeypatch, command, kind):
    out, message = _bad_out(kind, synthetic_dataset, tmp_path, monkeypatch)
    before, outside = snapshot(synthetic_dataset), snapshot(tmp_path)
    extra = ["--overwrite"] if kind in ("data", "inside-data") else []  # --overwrite never opens the data folder
    assert main([*COMMANDS[command], "--data", str(synthetic_dataset), "--out", str(out), *extra]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"metareg {command}: error: {out}: ") and message in line
    assert snapshot(synthetic_dataset) == before and snapshot(tmp_path) == outside


def test_overwrite_writes_into_a_folder_that_is_not_empty(synthetic_dataset, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["evaluate", "--data", str(synthetic_dataset), "--method", "identity", "--out", str(out),
                 "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "cases.csv").is_file()


# --- messages naming the case -------------------------------------------------------------------------------------

def test_a_gland_on_one_plane_names_the_case(synthetic_dataset, tiny_model, tmp_path, capsys):
    path = synthetic_dataset / "fixed_labels" / "a.nii.gz"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # (C, k, j, i)
    flat = np.zeros_like(labels[0])
    flat[:, 9, :] = labels[0][:, 9, :]  # the gland on the plane j = 9 only
    labels[0] = flat
    write_image(labels, path)
    code = main(["evaluate", "--data", str(synthetic_dataset), "--cases", "a", "--method", "meta", "--frames", "2",
                 "--model", str(tiny_model), "--out", str(tmp_path / "out")])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("metareg evaluate: error: case a: cannot place 2 distinct frames")
    assert not (tmp_path / "out").exists()
    for command in (["demo", "--data", str(synthetic_dataset), "--case", "a", "--out", str(tmp_path / "demo")],
                    ["benchmark", "--data", str(synthetic_dataset), "--case", "a", "--model", str(tiny_model),
                     "--sweeps", "1", "--reference-repeats", "0"]):
        code = main(command)
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and last.startswith(f"metareg {command[0]}: error: case a: cannot place 10 distinct frames")


# --- metareg compare ------------------------------------------------------------------------------------------------

def _cases_csv(folder: Path, text: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cases.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _good(folder: Path) -> Path:
    rows = [",".join(CASE_COLUMNS), "a,identity,,,1.0,0.9,0.0,0.1", "b,identity,,,2.0,0.8,0.0,0.1"]
    return _cases_csv(folder, "\n".join(rows) + "\n")


@pytest.mark.parametrize(
    "content, message",
    [
        ("case,score\na,1\nb,2\n",
         "not a cases.csv of metareg evaluate: missing column(s) method, frames, tre_mm, dsc"),
        (",".join(CASE_COLUMNS) + "\na,identity,,,1.0,0.9,0,0\nb,identity,,,n/a,0.8,0,0\n",
         "line 3 (case b): column tre_mm is not a number ('n/a')"),
        (",".join(CASE_COLUMNS) + "\na,identity,,,1.0,0.9,0,0\nb,identity,,,nan,0.8,0,0\n",
         "line 3 (case b): column tre_mm is nan, a paired test needs a finite value"),
        (",".join(CASE_COLUMNS) + "\na,identity,,,1.0,0.9,0,0\nb,identity,,\n", "line 3 (case b): has fewer fields"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe", "is not a text (UTF-8 CSV) file"),
    ],
    ids=["foreign-columns", "non-numeric-tre", "nan-tre", "short-row", "binary"],
)
def test_compare_names_the_file_row_and_column(tmp_path, capsys, content, message):
    bad = _cases_csv(tmp_path / "bad", content)
    good = _good(tmp_path / "good")
    assert main(["compare", str(good.parent), str(bad.parent)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"metareg compare: error: {bad}: ") and message in line


# --- metareg-app ----------------------------------------------------------------------------------------------------

def test_app_port_out_of_range_is_one_line(capsys):
    from MetaRegistrationWeb.command import main as app_main

    assert app_main(["--port", "70000"]) == 2
    assert one_error_line(capsys) == "metareg-app: error: --port must be between 1 and 65535, got 70000"


# --- metareg --help -----------------------------------------------------------------------------------------------

def test_help_loads_neither_torch_nor_monai():
    script = ("import sys\nfrom Training.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as exit:\n"
              "    code = exit.code\nprint('HEAVY', sorted(m for m in ('torch', 'monai') if m in sys.modules))\n"
              "sys.exit(code)\n")
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert process.returncode == 0, process.stderr
    assert "usage: metareg" in process.stdout and "HEAVY []" in process.stdout


def test_the_training_domain_is_read_from_a_model_card():
    from MetaRegistrationLib.models import training_domain as card_training_domain

    record = {"fixed_voxel_spacing_mm": {"min": [1.5] * 3, "max": [1.5] * 3}}
    assert card_training_domain({"inputs": {"training_domain": record}}) is record
    assert card_training_domain({"config": {}}) is None


# --- argument errors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--method", "meta", "--frames", "10-2", "--out", "x"], "the range '10-2' of '10-2' runs backwards"),
    (["evaluate", "--method", "meta", "--frames", "2-", "--out", "x"], "expected frame counts like 2,3,10"),
    (["pairs", "--pairs", "0", "--out", "x"], "argument --pairs: pair counts must be >= 1, got '0'"),
    (["evaluate", "--method", "nonsense", "--out", "x"], "argument --method: invalid choice: 'nonsense'"),
    (["nonsense"], "argument COMMAND: invalid choice: 'nonsense'"),
])
def test_argument_errors_are_one_line_without_the_usage_text(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    line = one_error_line(capsys)
    assert line.startswith("metareg") and message in line and line.endswith("--help)")


@pytest.mark.parametrize("argv, message", [
    (["--method", "centroid", "--model", "some-model"], "--model: method 'centroid' uses no model"),
    (["--method", "random-init", "--model", "some-model"], "--model: method 'random-init' uses no model"),
    (["--method", "centroid", "--frames", "2-10"], "--frames: method 'centroid' registers the whole TRUS volume; "
                                                   "frame counts apply to sweep methods"),
])
def test_options_a_method_would_ignore_are_refused(argv, message, synthetic_dataset, tmp_path, capsys):
    assert main(["evaluate", "--data", str(synthetic_dataset), *argv, "--out", str(tmp_path / "out")]) == 2
    assert one_error_line(capsys) == f"metareg evaluate: error: {message}"
    assert not (tmp_path / "out").exists()
