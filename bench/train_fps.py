"""Training frames/s of `experiments/experiment.py` on atari/Pong (shallow net), beside two limits.

    python bench/train_fps.py [--actors=4,8,16] [--batch_sizes=8,32] [--warmup_secs=60]
        [--window_secs=60] [--limit_secs=10]

For every (num_actors, batch_size) the real CLI trains Pong with the shallow network and the
original hyperparameters otherwise (T=100, 4 action repeats, LSTM on) and XLA off (on CPU
XLA makes the learner step ~2x slower and compiles for minutes; see the learner section of
docs/BENCHMARKS.md); the training
rate is read from its progress log (the learner's frame counter) over a steady-state window that
starts after `--warmup_secs` (tracing, XLA compilation, queues filling), then the run is stopped
with SIGINT. In the same run, for each configuration:

  * env-only limit: `num_actors` environment subprocesses stepped with random actions by as many
    threads (no agent, no learner): the most frames/s the environments can give.
  * combined limit: the CPU time one agent step costs = env step (one env, round trip) +
    batched inference per step (agent step on a batch of `num_actors`, divided by it) + learner
    time per step (one learner step on a synthetic [T+1, B] batch, divided by B*T), spread over
    all cores: `cores / cost * 4` frames/s. Work of the three kinds can overlap on separate cores
    but not exceed them, so this is the best a perfectly pipelined system can reach.

The training rate is measured between the first and the last frame-counter change seen in the
window (progress lines every second); per-step costs are medians of repeated timings.
"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

# TensorFlow and the package are imported inside the functions: environment subprocesses
# re-import this module (multiprocessing's forkserver/spawn), and should not load TensorFlow.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, 'experiments', 'experiment.py')
LEVEL = 'atari/Pong'
REPEATS = 4
UNROLL = 100
PROGRESS = re.compile(r'frames (\d+)/\d+ ')


def train_rate(num_actors: int, batch_size: int, warmup: float, window: float) -> dict:
    """Runs the CLI, returns frames/s over the window after warm-up (median and overall)."""
    with tempfile.TemporaryDirectory() as logdir:
        cmd = [
            sys.executable,
            EXPERIMENT,
            f'--level_name={LEVEL}',
            '--network=shallow',
            f'--num_actors={num_actors}',
            f'--batch_size={batch_size}',
            f'--logdir={logdir}',
            '--log_interval_secs=1',
            '--save_checkpoint_secs=100000',
            '--nouse_xla',
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        points: list[tuple[float, int]] = []
        start = time.monotonic()

        def read():
            for line in proc.stderr:
                m = PROGRESS.search(line)
                if m:
                    points.append((time.monotonic() - start, int(m.group(1))))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while time.monotonic() - start < warmup + window and proc.poll() is None:
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    inside = [(t, f) for t, f in points if warmup <= t <= warmup + window]
    # The frame counter moves in learner steps (B*T*4 frames); measure between the first and
    # the last change seen in the window.
    changes = [p1 for p0, p1 in zip(inside, inside[1:], strict=False) if p1[1] != p0[1]]
    if len(changes) < 2:
        return {'rate': float('nan'), 'learner_steps': len(changes)}
    (t0, f0), (t1, f1) = changes[0], changes[-1]
    return {'rate': (f1 - f0) / (t1 - t0), 'learner_steps': len(changes) - 1}


def env_only_rate(num_envs: int, seconds: float) -> float:
    """Frames/s of `num_envs` env subprocesses stepped by as many threads, random actions."""
    from scalable_agent2 import config, environments

    env_config = config.EnvironmentConfig()
    envs = [
        environments.create_environment(LEVEL, env_config, seed=i, is_test=False)
        for i in range(num_envs)
    ]
    counts = [0] * num_envs
    stop = threading.Event()

    def run(i):
        rng = np.random.default_rng(i)
        env = envs[i]
        env.initial()
        while not stop.is_set():
            env.step(int(rng.integers(env.num_actions)))
            counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(num_envs)]
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)  # Warm-up.
        c0, t0 = sum(counts), time.monotonic()
        time.sleep(seconds)
        c1, t1 = sum(counts), time.monotonic()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        for env in envs:
            env.close()
    return (c1 - c0) / (t1 - t0) * REPEATS


def env_step_seconds(steps: int = 500) -> float:
    """Median seconds per agent step of one env subprocess (round trip included)."""
    from scalable_agent2 import config, environments

    env = environments.create_environment(LEVEL, config.EnvironmentConfig(), seed=0, is_test=False)
    try:
        env.initial()
        rng = np.random.default_rng(0)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            env.step(int(rng.integers(env.num_actions)))
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    finally:
        env.close()


def model_step_seconds(num_actors: int, batch_size: int, rounds: int) -> tuple[float, float]:
    """(inference s per agent step at batch num_actors, learner s per agent step at B x T)."""
    import tensorflow as tf

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import learner_bench  # bench/ is not a package.

    from scalable_agent2 import config, environments, learner, networks, train

    env = environments.create_environment(LEVEL, config.EnvironmentConfig(), seed=0, is_test=False)
    try:
        spec, num_actions = env.observation_spec, env.num_actions
    finally:
        env.close()
    agent = networks.ImpalaAgent(config.AgentConfig(num_actions=num_actions, torso='shallow'))
    train.create_agent_variables(agent, spec)

    @tf.function
    def infer(last_action, env_output, state):
        return agent((last_action, env_output), state)

    dummy = train.dummy_env_output(spec)
    batched = tf.nest.map_structure(lambda x: np.repeat(x, num_actors, axis=0), dummy)
    state = agent.initial_state(num_actors)
    actions = np.zeros([num_actors], np.int32)
    infer(actions, batched, state)
    times = []
    for _ in range(rounds * 10):
        start = time.perf_counter()
        tf.nest.map_structure(lambda x: x.numpy(), infer(actions, batched, state))
        times.append(time.perf_counter() - start)
    inference = statistics.median(times) / num_actors

    lrn = learner.Learner(
        agent, config.LearnerConfig(batch_size=batch_size, unroll_length=UNROLL, use_xla=False)
    )
    batch = learner_bench.synthetic_batch(tuple(spec.frame_shape), UNROLL, batch_size, num_actions)
    lrn.step(batch)['total_loss'].numpy()  # Trace.
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        tf.nest.map_structure(lambda x: x.numpy(), lrn.step(batch))
        times.append(time.perf_counter() - start)
    return inference, statistics.median(times) / (batch_size * UNROLL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--actors', default='4,8,16')
    parser.add_argument('--batch_sizes', default='8,32')
    parser.add_argument('--warmup_secs', type=float, default=60.0)
    parser.add_argument('--window_secs', type=float, default=60.0)
    parser.add_argument('--limit_secs', type=float, default=10.0, help='env-only window')
    parser.add_argument('--rounds', type=int, default=5, help='timed learner steps per B')
    args = parser.parse_args()
    import tensorflow as tf

    cores = os.cpu_count()
    actors = [int(x) for x in args.actors.split(',')]
    batch_sizes = [int(x) for x in args.batch_sizes.split(',')]
    print(f'TensorFlow {tf.__version__}; {cores} cores; level {LEVEL}, shallow net, T={UNROLL}')

    env_s = env_step_seconds()
    print(f'env step (one subprocess, round trip): {env_s * 1e3:.3f} ms', flush=True)
    env_limits = {n: env_only_rate(n, args.limit_secs) for n in actors}
    for n, rate in env_limits.items():
        print(f'env-only limit, {n} envs: {rate:.0f} frames/s', flush=True)
    costs = {}
    for n in actors:
        for b in batch_sizes:
            costs[n, b] = model_step_seconds(n, b, args.rounds)
            inf, lrn = costs[n, b]
            print(
                f'model cost per agent step (actors {n}, B {b}): inference {inf * 1e3:.3f} ms, '
                f'learner {lrn * 1e3:.3f} ms',
                flush=True,
            )

    print()
    print(
        '| actors | B | train frames/s | learner steps timed | env-only limit | combined limit '
        '| train / combined | train / env-only |'
    )
    print('|---|---|---|---|---|---|---|---|')
    for n in actors:
        for b in batch_sizes:
            rate = train_rate(n, b, args.warmup_secs, args.window_secs)
            inf, lrn = costs[n, b]
            combined = cores / (env_s + inf + lrn) * REPEATS
            print(
                f'| {n} | {b} | {rate["rate"]:.0f} | {rate["learner_steps"]} | '
                f'{env_limits[n]:.0f} | {combined:.0f} | {rate["rate"] / combined:.2f} | '
                f'{rate["rate"] / env_limits[n]:.2f} |',
                flush=True,
            )


if __name__ == '__main__':
    main()
