#!/usr/bin/env bash
# Reruns the learning results of docs/RESULTS.md on this machine: train, test mode, curve.
#
#   experiments/results.sh pong|breakout|cartpole [OUT_DIR]
#
# Each writes OUT_DIR/<name> (checkpoints, summaries, test_results.json) and
# OUT_DIR/<name>.png. Run it alone on the machine: the wall times in RESULTS.md were measured so.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
name=${1:?usage: experiments/results.sh pong|breakout|cartpole [OUT_DIR]}
out=${2:-/tmp/scalable_agent2_results}
logdir="$out/$name"
case "$name" in
  pong)
    train=(--flagfile=experiments/configs/pong.flags)
    test=(--flagfile=experiments/configs/pong.flags --test_num_episodes=10)
    ;;
  breakout)
    # The batch-4 preset of 2026-12-03, which RESULTS.md's Breakout figures were measured with.
    common=(--flagfile=experiments/configs/pong.flags --level_name=atari/Breakout --batch_size=4)
    train=("${common[@]}" --total_environment_frames=1e7)
    test=("${common[@]}" --test_num_episodes=10)
    ;;
  cartpole)
    common=(--level_name=gym/CartPole-v1 --network=mlp --nouse_lstm)
    train=("${common[@]}" --num_actors=8 --batch_size=8 --unroll_length=20 --learning_rate=0.001
      --entropy_cost=0.001 --epsilon=1e-5 --max_grad_norm=40 --total_environment_frames=1e6)
    test=("${common[@]}" --test_num_episodes=10)
    ;;
  *)
    echo "unknown result '$name': pong, breakout or cartpole" >&2
    exit 2
    ;;
esac
mkdir -p "$out"
start=$(date +%s)
"$PYTHON" experiments/experiment.py "${train[@]}" --logdir="$logdir"
echo "$name: trained in $(($(date +%s) - start)) s"
"$PYTHON" experiments/experiment.py --mode=test "${test[@]}" --logdir="$logdir"
"$PYTHON" -m scalable_agent2.plot --logdir="$logdir" --output="$out/$name.png"
echo "$name: $logdir/test_results.json, $out/$name.png"
