"""Environment throughput: the physical limit every training figure is compared with.

    python bench/env_bench.py [--seconds=1] [--rounds=5] [--num_envs=1,2,4,8]
        [--batch_envs=8,16,32,64] [--parts=round_trip,throughput,batch]

Part 1, subprocess round trip: median time of one `PyProcess` call returning a pickled
`StepOutput` whose frame is uint8 84x84x4 (Atari) or 72x96x3 (DeepMind Lab), next to an empty
call, to `Environment.step` on an environment that costs nothing (frame through the pipe or
through shared memory) and to one in-process Atari step (Pong, 4 frames with the IMPALA
preprocessing). Tells whether pickling
frames through a pipe is a bottleneck (the issue's threshold: > ~20% of an Atari step).

Part 2, random-policy environment frames/s on Pong (frames = agent steps x 4 action repeats):
  (a) one env in-process (`FlowEnvironment`, no subprocess);
  (b) N envs, each in its own subprocess via `create_environment`, each driven by its own
      thread in the parent (as actor threads drive them in training); frames through shared
      memory (the default) and (b') pickled through the pipe;
  (c) ale-py's C++ `AtariVectorEnv` with N envs and N threads, stepped as one batch.
(a) is measured again next to each N. Within a round every variant runs once, in turn, so that
load from other processes affects them alike; each figure is the median over `rounds` rounds
(`seconds` seconds each for throughput; 2 x `rounds` rounds for round trips). Prints markdown
tables; throughput in env frames/s.

Part 3, the environment-only limit of a batched actor: `AtariBatch` (one `AtariVectorEnv` of E
Pong games, the training preprocessing and protocol, E C++ threads capped at the CPU count)
stepped with uniformly random actions through the same `send` / `receive(out)` calls the
`actor.Actor` makes, for E in `--batch_envs`: env frames/s (agent steps x action repeats),
median over `rounds` rounds of `seconds` seconds.
"""

import argparse
import statistics
import threading
import time

import ale_py
import numpy as np

from scalable_agent2 import config as config_lib
from scalable_agent2 import environments, py_process
from scalable_agent2.environments import atari, base, batched
from scalable_agent2.types import StepOutput, StepOutputInfo

FRAME_SHAPES = {'atari 84x84x4': (84, 84, 4), 'dmlab 72x96x3': (72, 96, 3)}


class FrameServer:
    """Returns a `StepOutput` holding a fixed frame: a plain pickled reply through the pipe."""

    def __init__(self, shape: tuple[int, ...] | None):
        frame = None if shape is None else np.zeros(shape, np.uint8)
        self._output = StepOutput(
            np.float32(0), StepOutputInfo(np.float32(0), np.int32(0)), False, (frame, '')
        )

    def step(self, action: int) -> StepOutput:
        del action
        return self._output


class ConstantFrameEnv:
    """A `RawEnvironment` whose steps cost nothing: isolates the transport's cost."""

    num_actions = 18

    def __init__(self, shape: tuple[int, ...]):
        self.observation_spec = base.ObservationSpec(shape, 'uint8', False)
        self._frame = np.full(shape, 7, np.uint8)

    def reset(self):
        return self._frame, ''

    def step(self, action: int):
        return 0.0, False, (self._frame, '')

    def close(self) -> None:
        pass


def constant_frame_server(shape):
    # The same child-side server `create_environment` runs, around a free environment.
    return environments._SharedFrameServer(base.FlowEnvironment(ConstantFrameEnv(shape)))


def _interleaved_medians(fns: dict, rounds: int) -> dict:
    """Calls every measurement once per round, in turn, so that load from other processes
    affects them alike; returns the median of each over the rounds."""
    results = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            results[name].append(fn())
    return {name: statistics.median(values) for name, values in results.items()}


def _us_per_call(fn, calls: int):
    """A measurement: mean microseconds per `fn(action)` over `calls` calls."""

    def measure() -> float:
        start = time.perf_counter()
        for i in range(calls):
            fn(i % 18)
        return (time.perf_counter() - start) / calls * 1e6

    return measure


def round_trip(rounds: int) -> None:
    cfg = config_lib.EnvironmentConfig()
    atari_env = base.FlowEnvironment(atari.AtariEnvironment('pong', cfg, 0, False))
    atari_env.initial()
    to_close = [atari_env]
    fns = {
        'in-process Atari step (Pong, 4 frames + preprocessing)': _us_per_call(atari_env.step, 300)
    }
    for name, shape in [('no frame', None), *FRAME_SHAPES.items()]:
        proc = py_process.PyProcess(FrameServer, shape)
        to_close.append(proc)
        fns[f'`PyProcess` call, pickled `StepOutput`, {name}'] = _us_per_call(proc.step, 500)
    for name, shape in FRAME_SHAPES.items():
        for shm in (False, True):
            proc = py_process.PyProcess(constant_frame_server, shape)
            env = environments.Environment(proc, 'constant', use_shared_memory=shm)
            env.initial()
            to_close.append(env)
            how = 'shared memory' if shm else 'the pipe'
            fns[f'`Environment.step`, {name}, frame through {how}'] = _us_per_call(env.step, 500)
    medians = _interleaved_medians(fns, rounds)
    for thing in to_close:
        thing.close()
    atari_us = next(iter(medians.values()))
    print('\n| what | median per call (us) | / Atari step |')
    print('|---|---|---|')
    for name, us in medians.items():
        print(f'| {name} | {us:.0f} | {us / atari_us:.2f} |')


def _frames_per_second(envs, seconds: float):
    """A measurement: env frames/s with every env stepped from its own thread (as actors)."""

    def measure() -> float:
        counts = [0] * len(envs)
        stop = threading.Event()

        def drive(i, env):
            rng = np.random.default_rng(i)
            while not stop.is_set():
                env.step(int(rng.integers(18)))
                counts[i] += 1

        threads = [threading.Thread(target=drive, args=(i, e)) for i, e in enumerate(envs)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        return sum(counts) * 4 / (time.perf_counter() - start)

    return measure


def _vector_frames_per_second(env, n: int, seconds: float):
    """A measurement: env frames/s of an `AtariVectorEnv` stepped as one batch."""
    rng = np.random.default_rng(0)

    def measure() -> float:
        steps = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            env.step(rng.integers(0, 18, size=n))
            steps += n
        return steps * 4 / (time.perf_counter() - start)

    return measure


def throughput(n: int, seconds: float, rounds: int) -> dict:
    """Medians of (a), (b), (b'), (c) for N = n, measured in turn."""
    cfg = config_lib.EnvironmentConfig()
    local = base.FlowEnvironment(atari.AtariEnvironment('pong', cfg, 0, False))
    shm = [environments.create_environment('atari/Pong', cfg, i, False) for i in range(n)]
    pipe = [
        environments.create_environment('atari/Pong', cfg, i, False, use_shared_memory=False)
        for i in range(n)
    ]
    vector = ale_py.AtariVectorEnv(
        'pong', n, num_threads=n, repeat_action_probability=0.0, full_action_space=True,
        reward_clipping=False, use_fire_reset=False,
    )  # fmt: skip
    vector.reset(seed=0)
    try:
        for env in [local, *shm, *pipe]:
            env.initial()
        return _interleaved_medians(
            {
                'a': _frames_per_second([local], seconds),
                'b': _frames_per_second(shm, seconds),
                'b_pipe': _frames_per_second(pipe, seconds),
                'c': _vector_frames_per_second(vector, n, seconds),
            },
            rounds,
        )
    finally:
        for env in [local, *shm, *pipe, vector]:
            env.close()


def _batch_frames_per_second(batch: batched.EnvironmentBatch, repeats: int, seconds: float):
    """A measurement: env frames/s of an `EnvironmentBatch` stepped with random actions."""
    rng = np.random.default_rng(0)
    actions = rng.integers(0, batch.num_actions, size=(256, batch.num_envs)).astype(np.int32)
    out = batch.empty_outputs()

    def measure() -> float:
        steps = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            batch.send(actions[steps % len(actions)])
            batch.receive(out)
            steps += 1
        return steps * batch.num_envs * repeats / (time.perf_counter() - start)

    return measure


def batch_throughput(num_envs: list[int], seconds: float, rounds: int) -> None:
    """Part 3: `AtariBatch` env frames/s for each E."""
    cfg = config_lib.EnvironmentConfig()
    print('\n| E | `AtariBatch` (Pong), env frames/s | per environment |')
    print('|---|---|---|')
    for n in num_envs:
        batch = atari.AtariBatch(['atari/Pong'] * n, cfg, list(range(n)), False)
        try:
            batch.initial()
            fps = _interleaved_medians(
                {'batch': _batch_frames_per_second(batch, cfg.num_action_repeats, seconds)},
                rounds,
            )['batch']
        finally:
            batch.close()
        print(f'| {n} | {fps:.0f} | {fps / n:.0f} |')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seconds', type=float, default=1.0)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--num_envs', default='1,2,4,8')
    parser.add_argument('--batch_envs', default='8,16,32,64')
    parser.add_argument('--parts', default='round_trip,throughput,batch')
    args = parser.parse_args()
    num_envs = [int(n) for n in args.num_envs.split(',')]
    parts = set(args.parts.split(','))
    unknown = parts - {'round_trip', 'throughput', 'batch'}
    if unknown:
        parser.error(f'unknown --parts {sorted(unknown)}')

    if 'round_trip' in parts:
        round_trip(args.rounds * 2)

    if 'throughput' in parts:
        print(
            '\n| N | (a) 1 env in-process | (b) N subprocesses, shared memory | (b) / (a) '
            "| (b') N subprocesses, frames pickled | (c) ale-py vector env, N envs | (c) / (b) |"
        )
        print('|---|---|---|---|---|---|---|')
        for n in num_envs:
            m = throughput(n, args.seconds, args.rounds)
            print(
                f'| {n} | {m["a"]:.0f} | {m["b"]:.0f} | {m["b"] / m["a"]:.2f} '
                f'| {m["b_pipe"]:.0f} | {m["c"]:.0f} | {m["c"] / m["b"]:.2f} |'
            )

    if 'batch' in parts:
        batch_throughput([int(n) for n in args.batch_envs.split(',')], args.seconds, args.rounds)


if __name__ == '__main__':
    main()
