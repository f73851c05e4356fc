#!/usr/bin/env bash
# Runs one actor command and restarts it while its learner is away.
#
#   experiments/supervise_actor.sh python experiments/experiment.py --job_name=actor --task=3 ...
#
# The actor exits 0 when the learner finished (it closed the unroll queue): the loop ends.
# It exits 75 when the learner went away mid-run (crash, kill, restart from a checkpoint): the
# loop waits RESTART_DELAY_SECS and starts the same command, which waits for the learner (up to
# --connect_timeout_secs) and rejoins. Any other status (a bad flag, no learner within the
# timeout) ends the loop with that status.
set -u
RESTART_DELAY_SECS=${RESTART_DELAY_SECS:-5}
while true; do
  "$@"
  status=$?
  if [ "$status" -eq 0 ]; then
    exit 0
  elif [ "$status" -eq 75 ]; then
    echo "supervise_actor: learner lost; restarting in ${RESTART_DELAY_SECS}s: $*" >&2
    sleep "$RESTART_DELAY_SECS"
  else
    echo "supervise_actor: actor exited with status $status; not restarting: $*" >&2
    exit "$status"
  fi
done
