#!/bin/bash
# Training frames/s of the package in another source tree (e.g. an older commit), for comparing
# commits on the same machine:
#   git worktree add /tmp/old 959a741
#   bench/train_rate_of_tree.sh /tmp/old old --level_name=atari/Pong --num_actors=16 ...
#   bench/train_rate_of_tree.sh .        new --level_name=atari/Pong --num_actors=16 ...
# Runs TREE/experiments/experiment.py with this checkout's Python ($PYTHON, default
# .venv/bin/python) and TREE first on PYTHONPATH for 130 s, then prints the learner's frame rate
# between 30 s and 75 s after its first progress line. Run it alone on the machine.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
tree="$(cd "${1:?usage: train_rate_of_tree.sh TREE LABEL FLAGS...}" && pwd)"
label="${2:?label}"
shift 2
logdir="$(mktemp -d "/tmp/train_rate_${label}_XXXX")"
log="$logdir.log"
cd "$tree"
PYTHONPATH="$tree" timeout -s INT 130 "$python" experiments/experiment.py "$@" \
  --logdir="$logdir" --log_interval_secs=1 --total_environment_frames=1e9 >"$log" 2>&1 || true
"$python" - "$log" "$label" <<'PY'
import re
import sys

points = []
for line in open(sys.argv[1]):
    m = re.match(r'I\d{4} (\d+):(\d+):([\d.]+) .*frames (\d+)/', line)
    if m:
        h, mi, s, f = m.groups()
        points.append((int(h) * 3600 + int(mi) * 60 + float(s), int(f)))
if not points:
    sys.exit(f'{sys.argv[2]}: no progress lines in {sys.argv[1]}')
t0 = points[0][0]
a = min(points, key=lambda p: abs(p[0] - t0 - 30))
b = min(points, key=lambda p: abs(p[0] - t0 - 75))
print(f'{sys.argv[2]}: {(b[1] - a[1]) / (b[0] - a[0]):.0f} frames/s over {b[0] - a[0]:.0f} s')
PY
