#!/usr/bin/env bash
# The GPU one-shot (SPEC 7): on one CUDA GPU, within about 8 minutes in all,
#   1. the GPU tests (pytest -m gpu),
#   2. the SPEC 7 kernel suite on a reduced grid that still answers the targets
#      (bf16; d 64 and 128; N 1k, 4k, 16k; forward and forward+backward; ours, eager,
#      torch.compile, FlexAttention, SDPA),
#   3. a few minutes of the `small` search on the fused kernels,
# writing JSON, Markdown and PNG into the folder given, with the environment and the raw
# output of every step. Without CUDA it says so, prints its plan and exits 0 (a dry run).
#
#   benchmarks/gpu_check.sh OUT_DIR
#
# Each step has its own time limit; a step that fails or runs out of time is recorded and
# the next one still runs. Every step's exit status is in OUT_DIR/summary.json.
set -uo pipefail

out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
mkdir -p "$out"

TESTS_LIMIT=${TESTS_LIMIT:-150}
SUITE_LIMIT=${SUITE_LIMIT:-210}
SEARCH_LIMIT=${SEARCH_LIMIT:-120}
SEARCH_EVALUATIONS=${SEARCH_EVALUATIONS:-24}

steps=(
  "tests|$TESTS_LIMIT|$python -m pytest -m gpu -q -x --no-header -p no:cacheprovider"
  "suite|$SUITE_LIMIT|$python -m genomec bench -o $out/suite --lengths 1024 4096 16384 --head-dims 64 128 --dtypes bf16 --json"
  "search|$SEARCH_LIMIT|$python -m genomec search --preset small --evaluations $SEARCH_EVALUATIONS --out $out/search-small --no-progress --json"
)

if ! $python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA GPU here; dry run. On a GPU these steps would run (name, time limit in s, command):"
  for step in "${steps[@]}"; do
    IFS='|' read -r name limit command <<<"$step"
    echo "  $name  ${limit}s  $command"
  done
  echo "  then $out/summary.json and summary.md: the environment, every step's exit status and wall time"
  exit 0
fi

$python - "$out/environment.json" <<'EOF'
import json, platform, subprocess, sys, datetime
import torch, triton, transformers
info = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "gpu": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
    "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
    "transformers": transformers.__version__, "python": platform.python_version(),
}
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
except Exception as e:
    info["nvidia_smi"] = f"unavailable: {e}"
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(f"gpu_check: {info['gpu']}, torch {info['torch']}, triton {info['triton']}")
EOF

statuses=()
for step in "${steps[@]}"; do
  IFS='|' read -r name limit command <<<"$step"
  echo "gpu_check: $name (limit ${limit}s): $command"
  start=$(date +%s)
  timeout --signal=INT --kill-after=15 "$limit" $command >"$out/$name.out" 2>"$out/$name.err"
  status=$?
  seconds=$(( $(date +%s) - start ))
  echo "gpu_check: $name exit $status after ${seconds}s"
  tail -n 3 "$out/$name.out"
  statuses+=("$name:$status:$seconds")
done

$python - "$out" "${statuses[@]}" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
steps = []
for item in sys.argv[2:]:
    name, status, seconds = item.split(":")
    steps.append({"step": name, "exit": int(status), "seconds": int(seconds),
                  "timed_out": int(status) in (124, 137), "stdout_tail": (out / f"{name}.out").read_text()[-4000:],
                  "stderr_tail": (out / f"{name}.err").read_text()[-4000:]})
summary = {"environment": json.loads((out / "environment.json").read_text()), "steps": steps}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
lines = [f"# GPU check: {summary['environment']['gpu']}", "", "| step | exit | seconds |", "|---|---|---|"]
lines += [f"| {s['step']} | {s['exit']}{' (time limit)' if s['timed_out'] else ''} | {s['seconds']} |" for s in steps]
suite = out / "suite" / "results.md"
if suite.exists():
    lines += ["", "## Kernel suite", "", suite.read_text()]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines[:4 + len(steps)]))
EOF
