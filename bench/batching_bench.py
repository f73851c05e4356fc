"""Calls/s of one-step shallow-agent inference from many actor threads, with and without batching.

    python bench/batching_bench.py [--threads=16,48] [--rounds=3] [--seconds=3]

Each of N threads loops on one agent step (84x84x4 uint8 frame, 18 actions, LSTM 256, inputs
with leading dimension 1) for `--seconds`, in one of these modes:
  direct: every thread calls the `tf.function` itself (batch of 1);
  python: through `dynamic_batching` (default implementation: list + threading.Condition);
  queue:  through `dynamic_batching` with `implementation='queue'` (tf.queue.FIFOQueue);
  python_half: as python but `minimum_batch_size=N // 2, timeout_ms=5` (less greedy).
Batched modes use `maximum_batch_size=N`; python and queue use the default minimum (1) and
timeout, as the single-machine training loop does. Modes alternate within each round so that
load from other processes hits them alike; the table gives the median over rounds of total
calls/s, the ratio to `direct`, and (batched modes) the histogram of batch sizes over all rounds.

Uses `networks.ImpalaAgent(AgentConfig(num_actions=18, torso='shallow'))` when
`scalable_agent2/networks.py` exists, else an equivalent Sonnet shallow conv + LSTM agent here.
"""

import argparse
import collections
import statistics
import sys
import threading
import time

import numpy as np
import sonnet as snt
import tensorflow as tf

from scalable_agent2 import config, dynamic_batching, types

NUM_ACTIONS = 18
MODES = ('direct', 'python', 'queue', 'python_half')


class _ShallowAgent(snt.Module):
    """The paper's shallow agent: conv 16 8x8/4, conv 32 4x4/2, linear 256, LSTM 256, heads."""

    def __init__(self, num_actions: int):
        super().__init__(name='shallow_agent')
        self._num_actions = num_actions
        self._torso = snt.Sequential(
            [
                snt.Conv2D(16, 8, stride=4, padding='VALID'),
                tf.nn.relu,
                snt.Conv2D(32, 4, stride=2, padding='VALID'),
                tf.nn.relu,
                snt.Flatten(),
                snt.Linear(256),
                tf.nn.relu,
            ]
        )
        self._core = snt.LSTM(256)
        self._policy = snt.Linear(num_actions)
        self._baseline = snt.Linear(1)

    def initial_state(self, batch_size: int):
        return self._core.initial_state(batch_size)

    def __call__(self, inputs, core_state):
        last_action, env_output = inputs
        frame, _ = env_output.observation
        torso = self._torso(tf.cast(frame, tf.float32) / 255.0)
        reward = tf.clip_by_value(env_output.reward, -1.0, 1.0)[:, None]
        one_hot = tf.one_hot(last_action, self._num_actions)
        core_input = tf.concat([torso, reward, one_hot], axis=1)
        # Reset the state where the episode ended before this observation.
        not_done = tf.cast(~env_output.done, tf.float32)[:, None]
        core_state = tf.nest.map_structure(lambda s: s * not_done, core_state)
        core_output, core_state = self._core(core_input, core_state)
        logits = self._policy(core_output)
        action = tf.random.categorical(logits, 1, dtype=tf.int32)[:, 0]
        baseline = self._baseline(core_output)[:, 0]
        return types.AgentOutput(action, logits, baseline), core_state


def _make_agent():
    try:
        from scalable_agent2 import networks  # noqa: PLC0415 - written by another developer.
    except ImportError:
        return _ShallowAgent(NUM_ACTIONS), 'bench-local Sonnet shallow agent (networks.py absent)'
    agent = networks.ImpalaAgent(config.AgentConfig(num_actions=NUM_ACTIONS, torso='shallow'))
    return agent, 'networks.ImpalaAgent(torso=shallow)'


def _one_step_inputs(agent, seed: int):
    rng = np.random.default_rng(seed)
    env_output = types.StepOutput(
        reward=np.array([0.5], np.float32),
        info=types.StepOutputInfo(np.array([0.0], np.float32), np.array([0], np.int32)),
        done=np.array([False]),
        observation=(
            rng.integers(0, 256, [1, 84, 84, 4]).astype(np.uint8),
            tf.constant([b'']),
        ),
    )
    # As in the actor loop: the environment's outputs are numpy arrays, the last action and
    # the core state are the tensors that the previous step returned.
    return tf.constant([0], tf.int32), env_output, agent.initial_state(1)


def _run_threads(fn, inputs, seconds: float, batch_sizes: collections.Counter | None) -> float:
    """Runs one thread per input tuple calling fn in a loop; returns total calls/s."""
    stop = threading.Event()
    start = threading.Barrier(len(inputs) + 1)
    counts = [0] * len(inputs)
    errors = []

    def actor(i):
        args = inputs[i]
        local = collections.Counter()
        start.wait()
        try:
            while not stop.is_set():
                _, batch_size = fn(*args)
                counts[i] += 1
                local[int(batch_size.numpy()[0])] += 1
        except Exception as e:  # noqa: BLE001 - reported below.
            errors.append(e)
        if batch_sizes is not None:
            with lock:
                batch_sizes.update(local)

    lock = threading.Lock()
    threads = [threading.Thread(target=actor, args=(i,), daemon=True) for i in range(len(inputs))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', default='16,48')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--seconds', type=float, default=3.0)
    parser.add_argument('--modes', default=','.join(MODES))
    parser.add_argument(
        '--switch_interval_ms', type=float, default=None, help='sys.setswitchinterval (GIL)'
    )
    args = parser.parse_args()
    modes = args.modes.split(',')
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)

    agent, agent_name = _make_agent()

    @tf.function
    def inference(last_action, env_output, core_state):
        agent_output, new_state = agent((last_action, env_output), core_state)
        batch_size = tf.shape(last_action)[0]
        return (agent_output, new_state), tf.fill([batch_size], batch_size)

    print(
        f'agent: {agent_name}; TF {tf.__version__}; rounds={args.rounds} x {args.seconds}s; '
        f'GIL switch interval {sys.getswitchinterval() * 1000:g} ms'
    )
    print()
    print('| threads | mode | calls/s (median) | vs direct | batch sizes (size: batches) |')
    print('|---|---|---|---|---|')
    for num_threads in [int(n) for n in args.threads.split(',')]:
        inputs = [_one_step_inputs(agent, seed) for seed in range(num_threads)]
        inference(*inputs[0])  # Trace once here, not in 16 threads at once.
        fns = {}
        for mode in modes:
            if mode == 'direct':
                fns[mode] = inference
            elif mode in ('python', 'queue'):
                fns[mode] = dynamic_batching.batch_fn_with_options(
                    maximum_batch_size=num_threads, implementation=mode
                )(inference)
            elif mode == 'python_half':
                fns[mode] = dynamic_batching.batch_fn_with_options(
                    minimum_batch_size=num_threads // 2,
                    maximum_batch_size=num_threads,
                    timeout_ms=5,
                )(inference)
            else:
                raise ValueError(f'unknown mode {mode!r}; expected one of {MODES}')
        rates = {mode: [] for mode in modes}
        histograms = {mode: collections.Counter() for mode in modes}
        for mode in modes:  # Warm-up: tracing and first calls.
            _run_threads(fns[mode], inputs, 0.5, None)
        for _ in range(args.rounds):
            for mode in modes:
                rates[mode].append(_run_threads(fns[mode], inputs, args.seconds, histograms[mode]))
        for mode in modes:
            median = statistics.median(rates[mode])
            ratio = median / statistics.median(rates['direct']) if 'direct' in rates else 0.0
            hist = ''
            if mode != 'direct':
                # Per-call counts of size b come from b callers per batch.
                hist = ', '.join(f'{b}: {n // b}' for b, n in sorted(histograms[mode].items()))
            print(f'| {num_threads} | {mode} | {median:,.0f} | {ratio:.2f}x | {hist} |')
        for fn in fns.values():
            if isinstance(fn, dynamic_batching.BatchedFunction):
                fn.close()


if __name__ == '__main__':
    main()
