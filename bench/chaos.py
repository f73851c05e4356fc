"""Chaos run: training that survives killed environments, actors and a killed learner.

    python bench/chaos.py [--level=cartpole|pong] [--minutes=10] [--total_environment_frames=N]
        [--env_kill_secs=30] [--distributed] [--num_actors=N] [--actor_kill_secs=60]
        [--learner_kill_secs=T] [--save_checkpoint_secs=20] [--logdir=DIR] [--json=PATH]
        [--startup_secs=300] [--seed=1]

Runs the real command line (`experiments/experiment.py`) on CartPole (MLP agent, default) or
Pong (the `pong.flags` preset with `--num_actors` actors) for at most `--minutes` from the first
progress line (start-up, up to `--startup_secs`, is not counted), and meanwhile:

* every `--env_kill_secs`: SIGKILL of a random environment subprocess (an actor must recreate it
  and training go on);
* with `--distributed` (learner and actors as separate processes on localhost):
  every `--actor_kill_secs` SIGKILL of a random actor process, which this script restarts (as a
  cluster manager would); once, at `--learner_kill_secs` (default: a third of the time), SIGKILL
  of the learner, which this script restarts: it resumes from its latest checkpoint and the
  actors, which exit with status 75 when they lose it, are restarted and rejoin.

The run ends when the learner reaches `--total_environment_frames` (exit 0) or, at the time
limit, with SIGINT (the learner saves a checkpoint). The report (stdout, and JSON with
`--json`): frames trained, the budget and whether it was reached, kills done, environment
restarts logged by the actors, actor and learner restarts, checkpoints saved, exit statuses.
The default budget is what this 2-core development machine trains in about 60% of the time
(CartPole ~1500 frames/s with 16 environments, ~400 distributed; Pong ~700, ~300 distributed),
leaving room for the restarts; set it for your machine.
"""

import argparse
import glob
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from scalable_agent2 import py_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, 'experiments', 'experiment.py')
EXIT_LEARNER_LOST = 75  # distributed.EXIT_LEARNER_LOST (not imported: no TensorFlow here).

LEVELS = {
    'cartpole': [
        '--level_name=gym/CartPole-v1',
        '--network=mlp',
        '--num_action_repeats=1',
        '--unroll_length=20',
        '--batch_size=8',
        '--learning_rate=0.004',
        '--entropy_cost=0.01',
        '--nouse_xla',
    ],
    'pong': [
        f'--flagfile={os.path.join(ROOT, "experiments", "configs", "pong.flags")}',
        '--nouse_xla',
    ],
}
# Training frames/s assumed for the default budget (2 loaded cores; see docs/BENCHMARKS.md).
ASSUMED_FPS = {'cartpole': 1500, 'pong': 700}
# Distributed on one machine: 5 processes with their own TensorFlow runtimes share the cores,
# and each actor restart costs a TensorFlow start-up (CartPole measured ~420 frames/s).
ASSUMED_FPS_DISTRIBUTED = {'cartpole': 400, 'pong': 300}

# A single-environment actor's line, or a batched actor's (one environment of its batch).
ENV_DIED = re.compile(
    r'Environment (?:of \S+|\d+ \(\S+\) of a batch) died \((?P<cause>.*)\); '
    r'recreating it \(restart \d+\)'
)
STOPPED = re.compile(r'Training stopped at (\d+) environment frames \((\d+) learner steps')
PROGRESS = re.compile(r'frames (\d+)/(\d+) ')
RESUMED = re.compile(r'Resumed from checkpoint \S+ at (\d+) environment frames')


# --------------------------------------------------------------------------------------------
# Processes.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


class Job:
    """One command-line process whose stderr goes to a log file (appended across restarts)."""

    def __init__(self, name: str, argv: list[str], logdir: str):
        self.name = name
        self.argv = argv
        self.log_path = os.path.join(logdir, f'chaos_{name}.log')
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.exit_codes: list[int] = []

    def start(self) -> None:
        with open(self.log_path, 'a') as log:
            log.write(f'--- chaos: start {self.starts + 1} of {self.name}\n')
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, EXPERIMENT, *self.argv],
                cwd=ROOT,
                stdout=log,
                stderr=log,
                env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2'),
                start_new_session=True,  # Its own process group: killed whole at the end.
            )
        self.starts += 1

    def poll(self) -> int | None:
        """The exit status once it has exited (recorded once), else None."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is not None and len(self.exit_codes) < self.starts:
            self.exit_codes.append(code)
        return code

    def running(self) -> bool:
        return self.proc is not None and self.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.running():
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.poll()

    def kill_group(self) -> None:
        """SIGKILL of whatever is left of it (its process group: environments included)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.wait(10)

    def log(self) -> str:
        try:
            with open(self.log_path, errors='replace') as f:
                return f.read()
        except OSError:
            return ''


# --------------------------------------------------------------------------------------------
# The run.


def build_jobs(args: argparse.Namespace, logdir: str, budget: int) -> tuple[Job, list[Job]]:
    common = [
        *LEVELS[args.level],
        f'--num_actors={args.num_actors}',
        f'--logdir={logdir}',
        f'--total_environment_frames={budget}',
        f'--save_checkpoint_secs={args.save_checkpoint_secs}',
        '--log_interval_secs=2',
        f'--seed={args.seed}',
    ]
    if not args.distributed:
        return Job('trainer', common, logdir), []
    learner_port = free_port()
    actor_ports = [free_port() for _ in range(args.num_actors)]
    common += [
        f'--learner_address=localhost:{learner_port}',
        '--actor_addresses=' + ','.join(f'localhost:{p}' for p in actor_ports),
        '--connect_timeout_secs=300',
        '--shutdown_grace_secs=5',
    ]
    learner = Job('learner', ['--job_name=learner', '--task=0', *common], logdir)
    actors = [
        Job(f'actor{i}', ['--job_name=actor', f'--task={i}', *common], logdir)
        for i in range(args.num_actors)
    ]
    return learner, actors


def wait_for_training(job: Job, deadline: float) -> bool:
    """Waits until the learner logs progress (training has begun); False if it exits first."""
    while time.monotonic() < deadline:
        if not job.running():
            return False
        if PROGRESS.search(job.log()):
            return True
        time.sleep(0.5)
    return False


def run(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    logdir = args.logdir or tempfile.mkdtemp(prefix=f'chaos_{args.level}_')
    os.makedirs(logdir, exist_ok=True)
    fps = (ASSUMED_FPS_DISTRIBUTED if args.distributed else ASSUMED_FPS)[args.level]
    budget = args.total_environment_frames or int(0.6 * args.minutes * 60 * fps)
    learner, actors = build_jobs(args, logdir, budget)
    events: list[str] = []
    start = time.monotonic()

    def note(text: str) -> None:
        line = f'[{time.monotonic() - start:7.1f}s] {text}'
        events.append(line)
        print(line, flush=True)

    learner.start()
    for a in actors:
        a.start()
    kills = {'environment': 0, 'actor': 0, 'learner': 0}
    learner_kill_at = (
        args.learner_kill_secs if args.learner_kill_secs is not None else args.minutes * 60 / 3
    )
    learner_killed = False
    interrupted = False
    try:
        if not wait_for_training(learner, start + args.startup_secs):
            note(f'{learner.name} did not start training; see {learner.log_path}')
            return report(args, logdir, budget, learner, actors, kills, events, 0.0)
        note(f'training has begun; budget {budget} frames; logdir {logdir}')
        began = time.monotonic()
        deadline = began + args.minutes * 60
        next_env_kill = began + args.env_kill_secs
        next_actor_kill = began + args.actor_kill_secs
        while True:
            now = time.monotonic()
            code = learner.poll()
            if code is not None:
                if learner_killed and learner.starts == 1:
                    learner.start()  # The one learner restart: resumes from its checkpoint.
                    note('learner restarted')
                    continue
                note(f'{learner.name} exited with status {code}')
                break
            if now >= deadline and not interrupted:
                note('time limit: SIGINT to the learner (it saves a checkpoint)')
                learner.kill(signal.SIGINT)
                interrupted = True
            if interrupted:
                if learner.wait(120) is None:
                    learner.kill_group()
                continue
            # Restart the actors killed here or that lost the learner (status 75), as a
            # cluster manager would; any other failure is left for the report.
            for a in actors:
                status = a.poll()
                if status in (-signal.SIGKILL, EXIT_LEARNER_LOST) and a.starts == len(a.exit_codes):
                    a.start()
                    note(f'{a.name} exited with status {status}; restarted')
            if now >= next_env_kill:
                holders = [learner, *actors] if actors else [learner]
                victims = [
                    (j, pid)
                    for j in holders
                    if j.running()
                    for pid in py_process.worker_pids(j.proc.pid)
                ]
                if victims:
                    job, pid = rng.choice(victims)
                    os.kill(pid, signal.SIGKILL)
                    kills['environment'] += 1
                    note(f'SIGKILL environment pid {pid} of {job.name}')
                next_env_kill = now + args.env_kill_secs
            if actors and now >= next_actor_kill:
                running = [a for a in actors if a.running()]
                if running:
                    victim = rng.choice(running)
                    victim.kill()
                    kills['actor'] += 1
                    note(f'SIGKILL {victim.name}')
                next_actor_kill = now + args.actor_kill_secs
            if actors and not learner_killed and now - began >= learner_kill_at:
                learner.kill()
                learner.wait(30)
                learner_killed = True
                kills['learner'] += 1
                note('SIGKILL learner')
            time.sleep(0.5)
        # Connected actors see the closed queue within the learner's grace period and exit 0;
        # one restarted too late to see it waits for a learner that is gone: killed below.
        for a in actors:
            if a.wait(15) is None:
                note(f'{a.name} still running after the learner; killed')
    finally:
        for job in [learner, *actors]:
            job.poll()
            job.kill_group()
    return report(args, logdir, budget, learner, actors, kills, events, time.monotonic() - start)


def report(args, logdir, budget, learner, actors, kills, events, wall_secs) -> dict:
    learner_log = learner.log()
    stopped = STOPPED.findall(learner_log)
    progress = PROGRESS.findall(learner_log)
    if stopped:
        frames, steps = (int(x) for x in stopped[-1])
    else:  # Killed without a final line: the last progress line.
        frames, steps = (int(progress[-1][0]) if progress else 0), None
    logs = [learner_log] + [a.log() for a in actors]
    env_restarts = [m.group('cause') for log in logs for m in ENV_DIED.finditer(log)]
    checkpoint_files = sorted(glob.glob(os.path.join(logdir, 'ckpt-*.index')))
    return {
        'level': args.level,
        'distributed': args.distributed,
        'num_actors': args.num_actors,
        'minutes_limit': args.minutes,
        'wall_secs': round(wall_secs, 1),
        'frames_trained': frames,
        'learner_steps': steps,
        'budget': budget,
        'reached_budget': frames >= budget,
        'kills': kills,
        'environment_restarts_logged': len(env_restarts),
        'environment_exit_codes': sorted(
            {int(c) for cause in env_restarts for c in re.findall(r'exit code (-?\d+)', cause)}
        ),
        'actor_restarts': sum(max(0, a.starts - 1) for a in actors),
        'actor_exit_codes': {a.name: a.exit_codes for a in actors},
        'learner_starts': learner.starts,
        'learner_exit_codes': learner.exit_codes,
        'resumed_from_frames': [int(x) for x in RESUMED.findall(learner_log)],
        'checkpoints_saved': learner_log.count('Saved checkpoint'),
        'checkpoint_files_left': [os.path.basename(p) for p in checkpoint_files],
        'logdir': logdir,
        'events': events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--level', choices=sorted(LEVELS), default='cartpole')
    parser.add_argument('--minutes', type=float, default=10.0)
    parser.add_argument('--total_environment_frames', type=int, default=0)
    parser.add_argument('--env_kill_secs', type=float, default=30.0)
    parser.add_argument('--distributed', action='store_true')
    parser.add_argument(
        '--num_actors',
        type=int,
        default=None,
        help='Environments (single-machine, default 16) or actor processes (--distributed, '
        'default 4). Fewer than ~16 environments for 20 random kills can trip the per-environment '
        'crash-loop limit (more than 5 deaths of one environment in 10 minutes) by design.',
    )
    parser.add_argument('--actor_kill_secs', type=float, default=60.0)
    parser.add_argument('--learner_kill_secs', type=float, default=None)
    parser.add_argument('--save_checkpoint_secs', type=int, default=20)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument(
        '--startup_secs', type=float, default=300.0, help='Limit for training to begin.'
    )
    parser.add_argument('--logdir', default='')
    parser.add_argument('--json', default='', help='Also write the report here.')
    args = parser.parse_args()
    if args.num_actors is None:
        args.num_actors = 4 if args.distributed else 16
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k != 'events'}, indent=2))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    sys.exit(0 if result['reached_budget'] else 1)


if __name__ == '__main__':
    main()
