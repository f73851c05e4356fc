"""Training frames/s of `experiments/experiment.py` (atari/Pong, shallow net, LSTM on, XLA off by
default), beside the environment-only and the combined limits, over a sweep of actors, threads
and shapes.

    python bench/train_fps.py [--level_name=atari/Pong] [--network=shallow|deep]
        [--actors=16,32,64] [--threads=1,2,4] [--shapes=32x20,8x100]
        [--warmup_secs=60] [--window_secs=60] [--limit_secs=10] [--rounds=5] [--json=PATH]
        [--tree=DIR] [--quick] [-- extra experiment.py flags]

`--quick` is a smoke run: 16 actors, 2 threads, B=32 T=20, short windows (a minute or two in
all, most of it start-up). For every (num_actors, num_actor_threads, B, T) the real CLI trains
`--level_name` (e.g. a DeepMind Lab level) with `--network`, the LSTM, 4 action repeats and
XLA off (on CPU XLA makes the learner step ~2x slower and compiles for minutes; see the learner
section of docs/BENCHMARKS.md), and this measures, over a steady window that starts
`--warmup_secs` after the first progress line (tracing, queues filling):

  * training frames/s: the learner's frame counter from its progress log (every second),
    between the first and the last change seen in the window;
  * process-tree CPU %: CPU seconds of the training process and all its descendants (the
    environment processes) over the window, per wall second (200 % = both cores of a 2-core
    machine busy);
  * peak memory: the largest sum of PSS (proportional set size, shared pages split between the
    processes sharing them) over the process tree, sampled every second from start to stop.

In the same run, as limits:

  * env-only limit (per num_actors): the same `num_actors` environments stepped with random
    actions, each by its own thread (no agent, no learner): the most frames/s they can give.
  * combined limit (per num_actors, B, T): the CPU time one agent step costs = environment step
    (CPU of this process and the environment process over many steps) + inference (agent step on
    a batch of `num_actors`, CPU time divided by the batch) + learner (one learner step on a
    synthetic [T+1, B] batch, CPU time divided by B*T), spread over all cores:
    `cores / cost * 4` frames/s. Work of the three kinds can overlap on separate cores but not
    exceed them, so this is the best a perfectly pipelined system can reach.

`--tree=DIR` trains with the package of another source tree (e.g. an older commit checked out
with `git worktree add /tmp/old 959a741`): DIR's `experiments/experiment.py`, DIR first on
PYTHONPATH, this checkout's Python. Two invocations that differ only in `--tree` give a
before/after comparison on one machine; the limits are this checkout's either way.

Extra flags after `--` go to every training run (e.g. `-- --intra_op_threads=1`); the model
costs are measured with the TensorFlow thread pools `--intra_op_threads`/`--inter_op_threads`
of this script (default: as the CLI's, one thread per core each).
"""

import argparse
import json
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
DEFAULT_LEVEL = 'atari/Pong'
REPEATS = 4
PROGRESS = re.compile(r'frames (\d+)/\d+ ')
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')


# --------------------------------------------------------------------------------------------
# Process-tree CPU and memory (Linux /proc).


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live descendants (their reaped children too)."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f'/proc/{p}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime: fields 14-17 of stat (1-based), 12-15 after the name.
        total += sum(int(x) for x in fields[11:15])
    return total / CLOCK_TICKS


def tree_pss_bytes(pid: int) -> int:
    """Sum of PSS over `pid` and its live descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f'/proc/{p}/smaps_rollup') as f:
                for line in f:
                    if line.startswith('Pss:'):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


# --------------------------------------------------------------------------------------------
# Training runs.


def train_rate(
    num_actors: int,
    threads: int,
    batch_size: int,
    unroll: int,
    warmup: float,
    window: float,
    extra_flags: list[str],
    startup: float = 600.0,
    tree: str = ROOT,
    level: str = DEFAULT_LEVEL,
    network: str = 'shallow',
) -> dict:
    """Runs the CLI of source tree `tree`; frames/s and tree CPU % over the window that starts
    `warmup` seconds after the first progress line, and the peak PSS from start to stop."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (tree, env.get('PYTHONPATH')) if p)
    with tempfile.TemporaryDirectory() as logdir:
        cmd = [
            sys.executable,
            os.path.join(tree, 'experiments', 'experiment.py'),
            f'--level_name={level}',
            f'--network={network}',
            '--use_lstm',
            f'--num_actors={num_actors}',
            f'--num_actor_threads={threads}',
            f'--batch_size={batch_size}',
            f'--unroll_length={unroll}',
            f'--num_action_repeats={REPEATS}',
            f'--logdir={logdir}',
            '--log_interval_secs=1',
            '--save_checkpoint_secs=100000',
            '--nouse_xla',
            *extra_flags,
        ]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tree, env=env
        )
        points: list[tuple[float, int]] = []
        tail: list[str] = []
        start = time.monotonic()

        def read():
            for line in proc.stderr:
                tail.append(line)
                del tail[:-20]
                m = PROGRESS.search(line)
                if m:
                    points.append((time.monotonic() - start, int(m.group(1))))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        peak_pss = 0
        cpu_start = cpu_end = None
        # The warm-up starts at the first progress line (start-up takes long on a busy machine).
        while not points and proc.poll() is None and time.monotonic() - start < startup:
            peak_pss = max(peak_pss, tree_pss_bytes(proc.pid))
            time.sleep(0.5)
        first = points[0][0] if points else float('inf')
        while time.monotonic() - start < first + warmup + window and proc.poll() is None:
            peak_pss = max(peak_pss, tree_pss_bytes(proc.pid))
            now = time.monotonic() - start
            if cpu_start is None and now >= first + warmup:
                cpu_start = (now, tree_cpu_seconds(proc.pid))
            time.sleep(1.0)
        if cpu_start is not None and proc.poll() is None:
            cpu_end = (time.monotonic() - start, tree_cpu_seconds(proc.pid))
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    out = {'rate': float('nan'), 'learner_steps': 0, 'cpu_percent': float('nan')}
    out['peak_pss_gib'] = peak_pss / 2**30
    if cpu_start is not None and cpu_end is not None and cpu_end[0] > cpu_start[0]:
        out['cpu_percent'] = 100.0 * (cpu_end[1] - cpu_start[1]) / (cpu_end[0] - cpu_start[0])
    inside = [(t, f) for t, f in points if first + warmup <= t <= first + warmup + window]
    # The frame counter moves in learner steps (B*T*4 frames); measure between the first and
    # the last change seen in the window.
    changes = [p1 for p0, p1 in zip(inside, inside[1:], strict=False) if p1[1] != p0[1]]
    if len(changes) >= 2:
        (t0, f0), (t1, f1) = changes[0], changes[-1]
        out.update(rate=(f1 - f0) / (t1 - t0), learner_steps=len(changes) - 1)
    if not points:
        out['error'] = ''.join(tail[-5:]).strip()
    return out


# --------------------------------------------------------------------------------------------
# Limits.


def env_only_rate(num_envs: int, seconds: float, level: str) -> float:
    """Frames/s of `num_envs` env subprocesses, each stepped by its own thread, random actions."""
    from scalable_agent2 import config, environments

    env_config = config.EnvironmentConfig()
    envs = [
        environments.create_environment(level, env_config, seed=i, is_test=False)
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
        time.sleep(min(2.0, seconds))  # Warm-up.
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


def env_step_cpu_seconds(steps: int, level: str) -> float:
    """CPU seconds per agent step of one env subprocess: this process + the env's, per step."""
    from scalable_agent2 import config, environments

    env = environments.create_environment(level, config.EnvironmentConfig(), seed=0, is_test=False)
    try:
        env.initial()
        rng = np.random.default_rng(0)
        for _ in range(20):
            env.step(int(rng.integers(env.num_actions)))
        start = tree_cpu_seconds(os.getpid())
        for _ in range(steps):
            env.step(int(rng.integers(env.num_actions)))
        return (tree_cpu_seconds(os.getpid()) - start) / steps
    finally:
        env.close()


class ModelCosts:
    """CPU seconds per agent step of inference (batch `num_actors`) and of the learner (B x T)."""

    def __init__(self, rounds: int, level: str, network: str):
        from scalable_agent2 import builder, config, environments, networks, policy

        env = environments.create_environment(
            level, config.EnvironmentConfig(), seed=0, is_test=False
        )
        try:
            self.spec = builder.EnvironmentSpec.of(env)
        finally:
            env.close()
        self.agent = networks.ImpalaAgent(
            # Without the instruction encoder, which a DeepMind Lab agent also runs.
            config.AgentConfig(num_actions=self.spec.num_actions, torso=network, use_lstm=True)
        )
        builder.create_agent_variables(self.agent, self.spec.observation_spec)
        self.policy = policy.make_policy(self.agent)
        self.rounds = rounds

    @staticmethod
    def _cpu_per_call(fn, calls: int) -> float:
        fn()  # Trace.
        times = []
        for _ in range(calls):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        return statistics.median(times)

    def inference(self, num_actors: int) -> float:
        import tensorflow as tf

        from scalable_agent2 import builder

        dummy = builder.dummy_env_output(self.spec.observation_spec)
        inputs = tf.nest.map_structure(lambda x: np.repeat(x, num_actors, axis=0), dummy)
        inputs = inputs._replace(info=(), observation=(inputs.observation[0], ()))
        state = self.agent.initial_state(num_actors)
        actions = np.zeros([num_actors], np.int32)

        def call():
            tf.nest.map_structure(lambda x: x.numpy(), self.policy(actions, inputs, state))

        return self._cpu_per_call(call, self.rounds * 10) / num_actors

    def learner(self, batch_size: int, unroll: int) -> float:
        import tensorflow as tf

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import learner_bench  # bench/ is not a package.

        from scalable_agent2 import config, learner

        lrn = learner.Learner(
            self.agent,
            config.LearnerConfig(batch_size=batch_size, unroll_length=unroll, use_xla=False),
        )
        batch = learner_bench.synthetic_batch(
            tuple(self.spec.observation_spec.frame_shape),
            unroll,
            batch_size,
            self.spec.num_actions,
        )

        def call():
            tf.nest.map_structure(lambda x: x.numpy(), lrn.step(batch))

        return self._cpu_per_call(call, self.rounds) / (batch_size * unroll)


# --------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(',') if x.strip()]


def _shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(','):
        b, t = item.lower().split('x')
        out.append((int(b), int(t)))
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if '--' in argv:
        i = argv.index('--')
        argv, extra = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--level_name', default=DEFAULT_LEVEL, help='the level trained')
    parser.add_argument('--network', default='shallow', choices=['shallow', 'deep'])
    parser.add_argument('--actors', default='16,32,64', help='num_actors values')
    parser.add_argument('--threads', default='1,2,4', help='num_actor_threads values')
    parser.add_argument('--shapes', default='32x20,8x100', help='BxT learner batch shapes')
    parser.add_argument('--warmup_secs', type=float, default=60.0)
    parser.add_argument('--window_secs', type=float, default=60.0)
    parser.add_argument('--limit_secs', type=float, default=10.0, help='env-only window')
    parser.add_argument('--rounds', type=int, default=5, help='timed learner steps per shape')
    parser.add_argument('--env_steps', type=int, default=2000, help='steps timed for env CPU')
    parser.add_argument('--intra_op_threads', type=int, default=0)
    parser.add_argument('--inter_op_threads', type=int, default=0)
    parser.add_argument('--json', default='', help='also write one JSON record per line here')
    parser.add_argument(
        '--tree', default=ROOT, help='train with the package of this source tree (default: here)'
    )
    parser.add_argument(
        '--allocator',
        default='bfc',
        choices=['bfc', 'malloc'],
        help="host allocator for the model costs and every training run: 'bfc' (the CLI's "
        "since tf_startup.use_fast_allocator) or 'malloc' (TensorFlow's default, for a --tree "
        'older than that)',
    )
    parser.add_argument(
        '--quick',
        action='store_true',
        help='smoke run: 16 actors, 2 threads, 32x20, short windows (overrides those flags)',
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.actors, args.threads, args.shapes = '16', '2', '32x20'
        args.warmup_secs, args.window_secs, args.limit_secs = 10.0, 15.0, 3.0
        args.rounds, args.env_steps = 2, 300
    actors, threads, shapes = _ints(args.actors), _ints(args.threads), _shapes(args.shapes)
    tree = os.path.abspath(args.tree)
    if not os.path.isfile(os.path.join(tree, 'experiments', 'experiment.py')):
        sys.exit(f'--tree={args.tree}: no experiments/experiment.py there')

    if args.allocator == 'bfc':  # Before TensorFlow starts here; training runs inherit it.
        os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')
    else:
        os.environ.pop('TF_CPU_ALLOCATOR_USE_BFC', None)
    from scalable_agent2 import workers

    workers.configure_tf_threads(args.intra_op_threads, args.inter_op_threads)
    import tensorflow as tf

    cores = os.cpu_count()
    print(
        f'TensorFlow {tf.__version__}; {cores} cores; {args.level_name}, {args.network} net with '
        'LSTM, XLA off, '
        f'{REPEATS} action repeats; extra flags {extra or "none"}; package of {tree}; '
        f'allocator {args.allocator}',
        flush=True,
    )
    records = []

    def record(**fields):
        records.append(fields)
        if args.json:
            with open(args.json, 'a') as f:
                f.write(json.dumps(fields) + '\n')

    env_s = env_step_cpu_seconds(args.env_steps, args.level_name)
    print(f'env step CPU (this process + env process): {env_s * 1e3:.3f} ms', flush=True)
    env_limits = {n: env_only_rate(n, args.limit_secs, args.level_name) for n in actors}
    for n, rate in env_limits.items():
        print(f'env-only limit, {n} envs: {rate:.0f} frames/s', flush=True)
        record(kind='env_only', num_actors=n, frames_per_second=rate)
    costs = ModelCosts(args.rounds, args.level_name, args.network)
    inference = {n: costs.inference(n) for n in actors}
    learner_cost = {(b, t): costs.learner(b, t) for b, t in shapes}
    for n in actors:
        print(f'inference CPU per agent step, batch {n}: {inference[n] * 1e3:.3f} ms', flush=True)
    for (b, t), c in learner_cost.items():
        print(f'learner CPU per agent step, B {b} T {t}: {c * 1e3:.3f} ms', flush=True)

    print()
    print(
        '| actors | threads | B | T | train frames/s | learner steps timed | tree CPU % '
        '| peak PSS GiB | env-only limit | combined limit | train / combined | train / env-only |'
    )
    print('|---|---|---|---|---|---|---|---|---|---|---|---|')
    for b, t in shapes:
        for n in actors:
            combined = cores / (env_s + inference[n] + learner_cost[b, t]) * REPEATS
            for k in threads:
                if k > n:
                    continue
                rate = train_rate(
                    n,
                    k,
                    b,
                    t,
                    args.warmup_secs,
                    args.window_secs,
                    extra,
                    tree=tree,
                    level=args.level_name,
                    network=args.network,
                )
                print(
                    f'| {n} | {k} | {b} | {t} | {rate["rate"]:.0f} | {rate["learner_steps"]} | '
                    f'{rate["cpu_percent"]:.0f} | {rate["peak_pss_gib"]:.2f} | '
                    f'{env_limits[n]:.0f} | {combined:.0f} | {rate["rate"] / combined:.2f} | '
                    f'{rate["rate"] / env_limits[n]:.2f} |',
                    flush=True,
                )
                if 'error' in rate:
                    print(f'  no progress line; last output: {rate["error"]}', flush=True)
                record(
                    kind='train',
                    tree=tree,
                    num_actors=n,
                    num_actor_threads=k,
                    batch_size=b,
                    unroll_length=t,
                    env_only_limit=env_limits[n],
                    combined_limit=combined,
                    **rate,
                )


if __name__ == '__main__':
    main()
