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


def test_demo_needs_both_data_and_case(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "give both --data and --case" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
