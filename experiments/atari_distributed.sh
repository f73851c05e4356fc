#!/usr/bin/env bash
# Atari (one game, or atari57 round-robin over tasks) on one learner and NUM_ACTORS actor
# processes, with the paper's Atari hyperparameters from experiments/configs/atari.flags
# (Espeholt et al. 2018, appendix: shallow feed-forward network, minimal action set, batch 32,
# unroll 20, learning rate 0.0006, entropy 0.01, RMSProp epsilon 0.01, gradient norm clipped at
# 40, 200M frames, 48 actors). Pass --network=deep --use_lstm for IMPALA-deep.
#
#   LEVEL=atari/Pong NUM_ACTORS=8 experiments/atari_distributed.sh --logdir=/tmp/pong
#
# Hosts: as dmlab30_distributed.sh (LEARNER_ADDRESS, ACTOR_ADDRESSES or TF_CONFIG; trusted
# network only). Extra arguments are passed to every process and override the defaults here.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
NUM_ACTORS=${NUM_ACTORS:-48}
LEVEL=${LEVEL:-atari/Pong}
LEARNER_ADDRESS=${LEARNER_ADDRESS:-localhost:8000}
ACTOR_ADDRESSES=${ACTOR_ADDRESSES:-}
LOGDIR=${LOGDIR:-/tmp/agent_atari}

COMMON=(
  --flagfile=experiments/configs/atari.flags
  --level_name="$LEVEL"
  --num_actors="$NUM_ACTORS"
  --learner_address="$LEARNER_ADDRESS"
  --actor_addresses="$ACTOR_ADDRESSES"
  --logdir="$LOGDIR"
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
