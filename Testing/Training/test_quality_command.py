"""``metareg quality``: every update's true TRE beside its quality signals, the correlation tables and the
stability over sweep orders."""

from __future__ import annotations

import csv

import pytest

from MetaRegistrationLib.updates import UPDATE_COLUMNS
from Training.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_writes_one_row_per_update_and_the_tables(synthetic_dataset, tiny_model, tmp_path, capsys):
    out = tmp_path / "quality"
    assert main(["quality", "--data", str(synthetic_dataset), "--frames", "3", "--orders",
                 "right-to-left,left-to-right", "--folds", "2", "--model", str(tiny_model), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["quality.md", "quality_plot.png", "updates.csv"]
    with open(out / "updates.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(UPDATE_COLUMNS)
    # 2 cases x 2 orders x 2 updates (frames 2 and 3)
    assert [(r["case"], r["order"], r["frames"]) for r in rows] == [
        (case, order, frames) for case in ("a", "b") for order in ("right-to-left", "left-to-right")
        for frames in ("2", "3")]
    assert all(r["spread_level"] in ("small", "medium", "large") for r in rows)
    assert "jackknife spread (mm)" in printed and "on each of 2 folds" in printed
    assert "Stability over acquisition orders at 3 frames, 2 cases" in printed
    assert "Command: `metareg" in (out / "quality.md").read_text()


def test_bad_arguments_are_one_line_errors(synthetic_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["quality", "--data", str(synthetic_dataset), "--orders", "sideways", "--out", str(tmp_path / "x")])
    assert "sweep orders are some of right-to-left" in capsys.readouterr().err
    assert main(["quality", "--data", str(synthetic_dataset), "--frames", "1", "--out", str(tmp_path / "y")]) == 2
    assert "--frames must be at least 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
