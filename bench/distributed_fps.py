"""Frames/s of distributed mode (1 learner + N actor processes on localhost) beside single-machine
mode with N actor threads, on atari/Pong with the shallow network, in one run.

    python bench/distributed_fps.py [--actors=2,4,8] [--envs_per_actor=1] [--batch_size=4]
        [--single_threads=0] [--warmup_secs=60] [--window_secs=60]

With `--envs_per_actor=E` each of the N actor processes hosts E environments, and single-machine
mode runs N*E environments on `--single_threads` actor threads (0: N), so that both modes step
the same number of environments (the issue's check: 2 actor processes x 16 environments against
32 environments on one machine).

Both modes use the same settings (T=100, 4 action repeats, XLA off as in bench/train_fps.py,
batch `--batch_size`). Distributed mode runs `distributed_train.train_learner` and N
`distributed_train.run_actor` processes (this file re-executed with `--role`), talking through
TF's gRPC runtime on localhost; single-machine mode runs `experiments/experiment.py`. The
training rate is the learner's frame counter read from its progress lines (every second) over a
window that starts `--warmup_secs` after the first line, then the learner is stopped with
SIGINT (the actors then see the closed queue and exit). Per unroll, each actor records the time
to read the parameters, to run the unroll and to enqueue it (the enqueue time includes waiting
for room in the learner's queue, which is how back-pressure shows); medians over the window.
"""

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, 'experiments', 'experiment.py')
LEVEL = 'atari/Pong'
UNROLL = 100
REPEATS = 4
PROGRESS = re.compile(r'frames (\d+)/\d+ ')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def _config(args: argparse.Namespace, job_name: str, task: int):
    from scalable_agent2 import config

    return config.ExperimentConfig(
        logdir=args.logdir,
        level_name=LEVEL,
        agent=config.AgentConfig(torso='shallow'),
        task=task,
        job_name=job_name,
        envs_per_actor=args.envs_per_actor,
        log_interval_secs=1.0,
        save_checkpoint_secs=1e6,
        environment=config.EnvironmentConfig(num_action_repeats=REPEATS),
        learner=config.LearnerConfig(
            batch_size=args.batch_size,
            unroll_length=UNROLL,
            num_action_repeats=REPEATS,
            total_environment_frames=10**10,
            use_xla=False,
        ),
        cluster=config.ClusterConfig(
            learner_address=f'localhost:{args.learner_port}',
            actor_addresses=(f'localhost:{args.port}',) * (task + 1),
            shutdown_grace_secs=5.0,
        ),
    ).validate()


def _role_main(args: argparse.Namespace) -> int:
    from absl import logging

    from scalable_agent2 import distributed_train

    logging.set_verbosity(logging.INFO)
    logging.use_absl_handler()
    if args.role == 'learner':
        distributed_train.train_learner(_config(args, 'learner', 0))
        return 0
    stats = open(args.stats, 'w', buffering=1)  # noqa: SIM115 (open until the process ends)

    def on_unroll(read, unroll, enqueue):
        stats.write(json.dumps([time.time(), read, unroll, enqueue]) + '\n')

    return distributed_train.run_actor(_config(args, 'actor', args.task), on_unroll)


class _Progress:
    """Follows a process's stderr: (wall time, frames) of each progress line."""

    def __init__(self, proc: subprocess.Popen, log_path: str):
        self.points: list[tuple[float, int]] = []
        self._thread = threading.Thread(target=self._read, args=(proc, log_path), daemon=True)
        self._thread.start()

    def _read(self, proc, log_path):
        with open(log_path, 'w') as log:
            for line in proc.stderr:
                log.write(line)
                m = PROGRESS.search(line)
                if m:
                    self.points.append((time.time(), int(m.group(1))))

    def wait_first(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while not self.points:
            if time.monotonic() > deadline:
                raise RuntimeError('no progress line from the learner')
            time.sleep(0.5)
        return self.points[0][0]


def _rate(points: list[tuple[float, int]], start: float, end: float) -> dict:
    window = [(t, f) for t, f in points if start <= t <= end]
    if len(window) < 2:
        return {'fps': float('nan'), 'median_interval_fps': float('nan')}
    rates = [
        (f1 - f0) / (t1 - t0)
        for (t0, f0), (t1, f1) in zip(window, window[1:], strict=False)
        if t1 > t0
    ]
    (t0, f0), (t1, f1) = window[0], window[-1]
    return {'fps': (f1 - f0) / (t1 - t0), 'median_interval_fps': statistics.median(rates)}


def _stop(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_distributed(num_actors: int, args: argparse.Namespace, tmp: str) -> dict:
    learner_port = _free_port()
    logdir = os.path.join(tmp, f'dist{num_actors}')
    base = [sys.executable, os.path.abspath(__file__), f'--logdir={logdir}']
    base += [f'--learner_port={learner_port}', f'--batch_size={args.batch_size}']
    base += [f'--envs_per_actor={args.envs_per_actor}']
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    learner = subprocess.Popen(
        [*base, '--role=learner', f'--port={learner_port}'],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    progress = _Progress(learner, os.path.join(tmp, f'dist{num_actors}_learner.log'))
    actors, stats = [], []
    for i in range(num_actors):
        stats.append(os.path.join(tmp, f'dist{num_actors}_actor{i}.jsonl'))
        log = open(os.path.join(tmp, f'dist{num_actors}_actor{i}.log'), 'w')  # noqa: SIM115
        actors.append(
            subprocess.Popen(
                [*base, '--role=actor', f'--task={i}', f'--port={_free_port()}']
                + [f'--stats={stats[-1]}'],
                stdout=log,
                stderr=log,
                env=env,
            )
        )
    try:
        first = progress.wait_first(args.startup_secs)
        start = first + args.warmup_secs
        time.sleep(max(0.0, start + args.window_secs - time.time()))
        end = time.time()
    finally:
        _stop(learner)
        for a in actors:
            try:
                a.wait(timeout=30)
            except subprocess.TimeoutExpired:
                a.kill()
                a.wait()
    result = _rate(progress.points, start, end)
    reads, enqueues, unrolls = [], [], []
    for path in stats:
        with open(path) as f:
            for line in f:
                t, read, unroll, enqueue = json.loads(line)
                if start <= t <= end:
                    reads.append(read)
                    unrolls.append(unroll)
                    enqueues.append(enqueue)
    ms = lambda xs: 1000.0 * statistics.median(xs) if xs else float('nan')  # noqa: E731
    result.update(
        read_ms=ms(reads), unroll_ms=ms(unrolls), enqueue_ms=ms(enqueues), unrolls=len(reads)
    )
    return result


def run_single(num_actors: int, args: argparse.Namespace, tmp: str) -> dict:
    logdir = os.path.join(tmp, f'single{num_actors}')
    num_envs = num_actors * args.envs_per_actor
    cmd = [
        sys.executable,
        EXPERIMENT,
        f'--level_name={LEVEL}',
        '--network=shallow',
        f'--num_actors={num_envs}',
        f'--num_actor_threads={min(num_envs, args.single_threads or num_actors)}',
        f'--batch_size={args.batch_size}',
        f'--unroll_length={UNROLL}',
        f'--num_action_repeats={REPEATS}',
        '--total_environment_frames=10000000000',
        '--nouse_xla',
        '--log_interval_secs=1',
        '--save_checkpoint_secs=1000000',
        f'--logdir={logdir}',
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    progress = _Progress(proc, os.path.join(tmp, f'single{num_actors}.log'))
    try:
        first = progress.wait_first(args.startup_secs)
        start = first + args.warmup_secs
        time.sleep(max(0.0, start + args.window_secs - time.time()))
        end = time.time()
    finally:
        _stop(proc)
    return _rate(progress.points, start, end)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--actors', default='2,4,8')
    parser.add_argument('--envs_per_actor', type=int, default=1)
    parser.add_argument('--single_threads', type=int, default=0, help='0: as many as actors')
    parser.add_argument('--batch_size', type=int, default=4)
    parser.add_argument('--warmup_secs', type=float, default=60.0)
    parser.add_argument('--window_secs', type=float, default=60.0)
    parser.add_argument('--startup_secs', type=float, default=300.0)
    # Internal: the role of a re-executed process.
    parser.add_argument('--role', choices=['learner', 'actor'])
    parser.add_argument('--logdir', default='')
    parser.add_argument('--learner_port', type=int, default=0)
    parser.add_argument('--port', type=int, default=0)
    parser.add_argument('--task', type=int, default=0)
    parser.add_argument('--stats', default='')
    args = parser.parse_args()
    if args.role:
        code = _role_main(args)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # Skips TF's teardown of remote contexts.

    print(
        f'{LEVEL}, shallow net, T={UNROLL}, batch {args.batch_size}, XLA off, '
        f'{args.envs_per_actor} environments per actor process; '
        f'warm-up {args.warmup_secs:g}s, window {args.window_secs:g}s; {os.cpu_count()} CPUs'
    )
    header = (
        f'{"actors":>6} | {"single fps":>10} | {"dist fps":>8} | {"dist/single":>11} | '
        f'{"read ms":>7} | {"enqueue ms":>10} | {"unroll ms":>9} | {"unrolls":>7}'
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.actors.split(',')]:
            single = run_single(n, args, tmp)
            dist = run_distributed(n, args, tmp)
            print(
                f'{n:>6} | {single["fps"]:>10.0f} | {dist["fps"]:>8.0f} | '
                f'{dist["fps"] / single["fps"]:>11.2f} | {dist["read_ms"]:>7.1f} | '
                f'{dist["enqueue_ms"]:>10.1f} | {dist["unroll_ms"]:>9.0f} | {dist["unrolls"]:>7}',
                flush=True,
            )


if __name__ == '__main__':
    main()
