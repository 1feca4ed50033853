"""``metareg demo``: the built-in phantom registered with the current best method."""

from __future__ import annotations

import re

from MetaRegistrationLib.registration import BEST_METHOD
from Training.cli import main


def test_demo_registers_the_phantom_and_draws_the_figure(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out / "demo.png").stat().st_size > 10_000
    tre = {name.strip(): float(value) for name, value in
           re.findall(r"^(before \(identity\)|after \(\S+\)|known true transform)\s+([\d.]+)", printed, re.M)}
    assert set(tre) == {"before (identity)", f"after ({BEST_METHOD})", "known true transform"}
    assert tre[f"after ({BEST_METHOD})"] < 0.5 * tre["before (identity)"]
    assert tre["known true transform"] < 0.5


def test_demo_case_needs_data(tmp_path, capsys):
    assert main(["demo", "--case", "a", "--out", str(tmp_path / "out")]) == 2
    assert "--case needs --data" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_on_a_data_folder_opens_its_first_case(synthetic_dataset, tmp_path, capsys):
    assert main(["demo", "--data", str(synthetic_dataset), "--method", "centroid", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("case a: 2 landmarks") and "known true transform" not in printed
    assert (tmp_path / "out" / "demo.png").is_file()


def test_demo_refuses_an_out_folder_that_is_not_empty(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "exists and is not empty; give --overwrite" in error[0]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
