"""``Training/gpu/train_one_gpu.sh`` works before a GPU is ever at hand: on the CPU, with a tiny config, it starts
a run, stops at its time limit, resumes it and prints the throughput line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from training_runs import read_rows, tiny_config, write_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "Training" / "gpu" / "train_one_gpu.sh"


def _script(run: Path, minutes: str, config: Path) -> str:
    result = subprocess.run(["bash", str(SCRIPT), str(run), minutes, str(config)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable,
                                                         "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_gpu_script_runs_resumes_and_reports_on_the_cpu(synthetic_dataset, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", tiny_config(synthetic_dataset, episodes=4, meta_batch=2,
                                                              checkpoint_every=2, validate_every=0))
    run = tmp_path / "run"
    first = _script(run, "1e-6", config)  # stops after its first outer step
    assert "device cpu: CPU" in first
    assert "episodes 2 in the run, 2 this call" in first and "episodes/s training" in first
    assert not (run / "final.safetensors").exists()
    second = _script(run, "8", config)
    assert "episodes 4 in the run, 2 this call" in second
    assert (run / "final.safetensors").exists()
    assert [int(row["episode"]) for row in read_rows(run / "log.csv")] == [0, 1, 2, 3]
