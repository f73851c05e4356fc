"""Learner steps/s and frames/s on synthetic batches, XLA on and off, and over batch sizes.

    python bench/learner_bench.py [--cases=atari,dmlab,sweep] [--steps=3] [--warmup=1]
        [--sweep=8,32,128] [--sweep_case=atari] [--sweep_xla=0] [--dmlab_b=32] [--dmlab_t=100]

The full dmlab case (B=32, T=100: 3,232 frames of 72x96 through the ResNet, forward and
backward) needs a GPU: on a 2-core, 24 GiB CPU machine its XLA compile ran for over 5 minutes
and the process grew past 20 GiB, so use e.g. --dmlab_b=8 --dmlab_t=20 there.

Cases:
  atari: shallow net, 84x84x4 uint8 frames, B=32, T=20, 18 actions; XLA on, then off.
  dmlab: deep net, 72x96x3 uint8 frames with instructions, B=32, T=100, 9 actions; XLA on/off.
  sweep: step time for each B in --sweep (default Atari shape; --sweep_case=dmlab for
         the deep net; XLA off unless --sweep_xla=1), to check that cost grows ~linearly with B.

Each configuration builds a fresh agent and learner, times its first step (trace + compile)
separately, runs --warmup more untimed steps, then times --steps steps (metrics fetched to host each
step) and reports the median. Frames/s counts B*T*4 environment frames per step (4 action
repeats), as the learner's frame counter does.
"""

import argparse
import statistics
import time

import numpy as np
import sonnet as snt
import tensorflow as tf

from scalable_agent2 import config, learner, networks
from scalable_agent2.types import ActorOutput, AgentOutput, StepOutput, StepOutputInfo

REPEATS = 4
CASES = {
    # name: (torso, frame shape, T, num_actions, use_instruction)
    'atari': ('shallow', (84, 84, 4), 20, 18, False),
    'dmlab': ('deep', (72, 96, 3), 100, 9, True),
}
INSTRUCTIONS = ['', 'go to the red ball', 'pick up the green key then the door', 'find apple']


def synthetic_batch(frame_shape, t, b, num_actions, core_size=256, seed=0) -> ActorOutput:
    """A random `ActorOutput` with `[T+1, B, ...]` fields (about 1% episode ends)."""
    rng = np.random.default_rng(seed)
    lead = (t + 1, b)
    env_outputs = StepOutput(
        reward=tf.constant(rng.normal(size=lead), tf.float32),
        info=StepOutputInfo(tf.zeros(lead), tf.zeros(lead, tf.int32)),
        done=tf.constant(rng.random(lead) < 0.01),
        observation=(
            tf.constant(rng.integers(0, 256, size=lead + frame_shape, dtype=np.uint8)),
            tf.constant(rng.choice(INSTRUCTIONS, size=lead)),
        ),
    )
    agent_outputs = AgentOutput(
        action=tf.constant(rng.integers(0, num_actions, size=lead), tf.int32),
        policy_logits=tf.constant(rng.normal(size=lead + (num_actions,)), tf.float32),
        baseline=tf.constant(rng.normal(size=lead), tf.float32),
    )
    zeros = tf.zeros([b, core_size])
    return ActorOutput(
        tf.fill([b], 'level'), snt.LSTMState(zeros, zeros), env_outputs, agent_outputs
    )


def time_learner(
    case: str, b: int, use_xla: bool, steps: int, warmup: int, t: int | None = None
) -> dict:
    torso, frame_shape, case_t, num_actions, use_instruction = CASES[case]
    t = t or case_t
    agent = networks.ImpalaAgent(
        config.AgentConfig(num_actions=num_actions, torso=torso, use_instruction=use_instruction)
    )
    lrn = learner.Learner(
        agent, config.LearnerConfig(batch_size=b, unroll_length=t, use_xla=use_xla)
    )
    batch = synthetic_batch(frame_shape, t, b, num_actions)
    start = time.perf_counter()
    lrn.step(batch)['total_loss'].numpy()
    first = time.perf_counter() - start
    for _ in range(warmup):  # Allocators, caches.
        lrn.step(batch)['total_loss'].numpy()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        metrics = lrn.step(batch)
        tf.nest.map_structure(lambda x: x.numpy(), metrics)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        'case': case,
        'B': b,
        'T': t,
        'xla': use_xla,
        'first_s': first,
        'median_s': median,
        'steps_per_s': 1.0 / median,
        'frames_per_s': b * t * REPEATS / median,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cases', default='atari,dmlab,sweep')
    parser.add_argument('--steps', type=int, default=3, help='timed steps per configuration')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps after the first')
    parser.add_argument('--sweep', default='8,32,128', help='batch sizes for the sweep case')
    parser.add_argument('--sweep_xla', type=int, default=0, help='1: sweep with XLA on')
    parser.add_argument('--sweep_case', default='atari', choices=sorted(CASES))
    parser.add_argument('--dmlab_b', type=int, default=32, help='B for the dmlab case')
    parser.add_argument('--dmlab_t', type=int, default=100, help='T for the dmlab case')
    args = parser.parse_args()
    devices = [d.name for d in tf.config.list_logical_devices()]
    print(f'TensorFlow {tf.__version__}; devices: {devices}')
    print('| case | B | T | XLA | first step (s) | median step (s) | steps/s | frames/s |')
    print('|---|---|---|---|---|---|---|---|')
    sweep = []

    def report(row):
        print(
            f'| {row["case"]} | {row["B"]} | {row["T"]} | {"on" if row["xla"] else "off"} | '
            f'{row["first_s"]:.1f} | {row["median_s"]:.3f} | {row["steps_per_s"]:.2f} | '
            f'{row["frames_per_s"]:.0f} |',
            flush=True,
        )

    for case in args.cases.split(','):
        if case in CASES:
            b, t = (args.dmlab_b, args.dmlab_t) if case == 'dmlab' else (32, None)
            for use_xla in (True, False):
                report(time_learner(case, b, use_xla, args.steps, args.warmup, t))
        elif case == 'sweep':
            for b in [int(x) for x in args.sweep.split(',')]:
                sweep.append(
                    time_learner(args.sweep_case, b, bool(args.sweep_xla), args.steps, args.warmup)
                )
                report(sweep[-1])
        else:
            raise ValueError(f'unknown case {case!r}; expected atari, dmlab or sweep')
    if len(sweep) > 1:
        base = sweep[0]
        for r in sweep[1:]:
            print(
                f'B {base["B"]} -> {r["B"]}: batch x{r["B"] / base["B"]:.0f}, '
                f'step time x{r["median_s"] / base["median_s"]:.2f}'
            )


if __name__ == '__main__':
    main()
