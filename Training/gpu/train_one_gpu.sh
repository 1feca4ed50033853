#!/usr/bin/env bash
# Train (or resume) the bundled model's configuration on one GPU for a fixed time, with the batched engine.
#
#   Training/gpu/train_one_gpu.sh [RUN_FOLDER] [MINUTES] [CONFIG]
#
# RUN_FOLDER  default Training/runs/meta-gpu; resumed if it holds a run, else started from CONFIG
# MINUTES     default 8: training checkpoints and stops after this many minutes (--time-limit), leaving time
#             to copy the run folder off a machine lent for 10
# CONFIG      default Training/configs/meta-gpu.yaml (meta.yaml with meta_batch 8)
#
# Needs the project's Python dependencies (pip install -e . or PYTHONPATH) with a CUDA build of torch, and the
# data set ($METAREG_DATA, or ../shared/data/mrus-prostate). DEVICE=cpu runs it on the CPU (the tests do, with a
# tiny config). Prints the hardware, then one line: episodes done, wall seconds and episodes per second.
set -euo pipefail
cd "$(dirname "$0")/../.."
run=${1:-Training/runs/meta-gpu}
minutes=${2:-8}
config=${3:-Training/configs/meta-gpu.yaml}
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$python" - "$device" <<'PY'
import sys, torch
device = sys.argv[1]
name = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else "CPU"
print(f"torch {torch.__version__}, device {device}: {name}", flush=True)
PY
done_before=$("$python" -c "import csv,sys; print(sum(1 for _ in csv.DictReader(open(sys.argv[1]))))" \
  "$run/log.csv" 2>/dev/null || echo 0)
if [ -f "$run/config.yaml" ]; then
  what=(--resume)
else
  what=(--config "$config")
fi
start=$(date +%s.%N)
status=0
"$python" -m Training.train meta --run "$run" "${what[@]}" --device "$device" --time-limit "$minutes" || status=$?
end=$(date +%s.%N)
"$python" - "$run/log.csv" "$done_before" "$start" "$end" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
before = int(sys.argv[2])
trained = len(rows) - before
training_s = float(rows[-1]["wall_seconds"]) - (float(rows[before - 1]["wall_seconds"]) if before else 0.0)
wall_s = float(sys.argv[4]) - float(sys.argv[3])
print(f"episodes {len(rows)} in the run, {trained} this call: {trained / max(training_s, 1e-9):.2f} episodes/s "
      f"training ({training_s:.0f} s), {wall_s:.0f} s wall with start-up, loading and validation")
PY
exit $status
