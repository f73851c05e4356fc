#!/usr/bin/env bash
# DMLab-30 on one learner and NUM_ACTORS actor processes, with the original's published learner
# flags (Espeholt et al. 2018, scalable_agent README), kept in experiments/configs/dmlab30.flags:
#   batch 32, entropy_cost 0.0033391318945337044, learning_rate 0.00031866995608948655,
#   10e9 frames, soft_asymmetric reward clipping, 150 actors.
#
#   DATASET_PATH=/path/to/brady_konkle_oliva2008 experiments/dmlab30_distributed.sh
#
# Everything runs on this host by default. For other hosts, run the learner line on the learner
# host and the actor lines on the actor hosts with the same LEARNER_ADDRESS and ACTOR_ADDRESSES
# (comma-separated host:port per task; default: the learner's host, ports 8001+i), or set
# TF_CONFIG. TF's gRPC runtime is unauthenticated: use a trusted network only.
# Extra arguments are passed to every process, after the defaults here (so they override them) (e.g. --logdir=..., --total_environment_frames=...).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
NUM_ACTORS=${NUM_ACTORS:-150}
LEARNER_ADDRESS=${LEARNER_ADDRESS:-localhost:8000}
ACTOR_ADDRESSES=${ACTOR_ADDRESSES:-}
LOGDIR=${LOGDIR:-/tmp/agent_dmlab30}
DATASET_PATH=${DATASET_PATH:-}

COMMON=(
  --flagfile=experiments/configs/dmlab30.flags
  --num_actors="$NUM_ACTORS"
  --learner_address="$LEARNER_ADDRESS"
  --actor_addresses="$ACTOR_ADDRESSES"
  --logdir="$LOGDIR"
  --dataset_path="$DATASET_PATH"
  "$@"
)

# Ctrl-C stops everything started here.
trap 'kill 0' INT TERM

"$PYTHON" experiments/experiment.py --job_name=learner --task=0 "${COMMON[@]}" &
learner=$!

for i in $(seq 0 $((NUM_ACTORS - 1))); do
  experiments/supervise_actor.sh "$PYTHON" experiments/experiment.py --job_name=actor \
    --task="$i" "${COMMON[@]}" &
done

# The actors exit 0 once the learner closes its queue at the frame budget.
wait "$learner"
wait
