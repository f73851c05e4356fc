"""Environment throughput: the physical limit every training figure is compared with.

    python bench/env_bench.py [--seconds=2] [--rounds=3] [--num_envs=1,2,4,8]

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
Each figure is the median over `rounds` runs of `seconds` seconds each. Prints markdown tables.
"""

import argparse
import statistics
import threading
import time

import ale_py
import numpy as np

from scalable_agent2 import config as config_lib
from scalable_agent2 import environments, py_process
from scalable_agent2.environments import atari, base
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


def _median_call_us(fn, calls: int, rounds: int) -> float:
    """Median over rounds of the mean microseconds per call."""
    per_round = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(calls):
            fn(i % 18)
        per_round.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(per_round)


def round_trip(rounds: int) -> None:
    cfg = config_lib.EnvironmentConfig()
    env = base.FlowEnvironment(atari.AtariEnvironment('pong', cfg, 0, False))
    env.initial()
    atari_us = _median_call_us(env.step, 1000, rounds)
    env.close()
    print('\n| payload | round trip (us) | vs Atari step |')
    print('|---|---|---|')
    print(f'| in-process Atari step (Pong) | {atari_us:.0f} | 1.00 |')
    for name, shape in [('empty call (no frame)', None), *FRAME_SHAPES.items()]:
        with py_process.PyProcess(FrameServer, shape) as proc:
            proc.step(0)
            us = _median_call_us(proc.step, 2000, rounds)
        print(f'| pickled StepOutput, {name} | {us:.0f} | {us / atari_us:.2f} |')
    for name, shape in FRAME_SHAPES.items():
        for shm in (False, True):
            proc = py_process.PyProcess(constant_frame_server, shape)
            with environments.Environment(proc, 'constant', use_shared_memory=shm) as env:
                env.initial()
                us = _median_call_us(env.step, 2000, rounds)
            how = 'shared memory' if shm else 'pipe'
            print(
                f'| `Environment.step`, {name}, frame via {how} | {us:.0f} | {us / atari_us:.2f} |'
            )


def _run_threads(envs, seconds: float) -> float:
    """Steps every env from its own thread for `seconds`; returns env frames per second."""
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


def in_process(seconds: float, rounds: int) -> float:
    env = base.FlowEnvironment(atari.AtariEnvironment('pong', config_lib.EnvironmentConfig(), 0, 0))
    env.initial()
    fps = statistics.median(_run_threads([env], seconds) for _ in range(rounds))
    env.close()
    return fps


def subprocesses(n: int, seconds: float, rounds: int, shm: bool) -> float:
    cfg = config_lib.EnvironmentConfig()
    envs = [
        environments.create_environment('atari/Pong', cfg, i, False, use_shared_memory=shm)
        for i in range(n)
    ]
    try:
        for env in envs:
            env.initial()
        return statistics.median(_run_threads(envs, seconds) for _ in range(rounds))
    finally:
        for env in envs:
            env.close()


def vector_env(n: int, seconds: float, rounds: int) -> float:
    env = ale_py.AtariVectorEnv(
        'pong', n, num_threads=n, repeat_action_probability=0.0, full_action_space=True,
        reward_clipping=False, use_fire_reset=False,
    )  # fmt: skip
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    results = []
    for _ in range(rounds):
        steps = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            env.step(rng.integers(0, 18, size=n))
            steps += n
        results.append(steps * 4 / (time.perf_counter() - start))
    env.close()
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seconds', type=float, default=2.0)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--num_envs', default='1,2,4,8')
    args = parser.parse_args()
    num_envs = [int(n) for n in args.num_envs.split(',')]

    round_trip(args.rounds)

    single = in_process(args.seconds, args.rounds)
    print(f'\n(a) one env in-process: {single:.0f} frames/s')
    print(
        '\n| N | (b) subprocesses, shared memory (frames/s) | (b) / (a) '
        "| (b') subprocesses, frames pickled (frames/s) | (c) ale-py vector env (frames/s) "
        '| (c) / (b) |'
    )
    print('|---|---|---|---|---|---|')
    for n in num_envs:
        sub = subprocesses(n, args.seconds, args.rounds, shm=True)
        pipe = subprocesses(n, args.seconds, args.rounds, shm=False)
        vec = vector_env(n, args.seconds, args.rounds)
        print(
            f'| {n} | {sub:.0f} | {sub / single:.2f} | {pipe:.0f} | {vec:.0f} | {vec / sub:.2f} |'
        )


if __name__ == '__main__':
    main()
