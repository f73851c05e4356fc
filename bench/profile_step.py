"""Op-level profile of one learner step and one inference call (TensorFlow profiler).

    python bench/profile_step.py [--cases=learner_ff,learner_lstm,inference_ff,inference_lstm]
        [--batch=32] [--unroll=20] [--actions=6] [--steps=10] [--top=12] [--logdir=/tmp/prof]
        [--allocator=bfc|malloc]

Each case builds the shallow agent (84x84x4 uint8 frames, as Pong), runs a few untimed calls,
times --steps calls (wall and process CPU time), then records --steps more with
`tf.profiler.experimental` and reads the trace back (`*.xplane.pb`). It prints the medians and,
per op type, the op time per call
summed over TensorFlow's executor threads (so shares are of the op time, which can exceed the
wall time when ops run side by side). Python, argument conversion and the executor's own work
are the difference between the CPU time and the op time.

For a before/after comparison run it twice in one job, the first time with an older source tree
first on PYTHONPATH (e.g. `git archive <commit> | tar -x -C /tmp/old`, `PYTHONPATH=/tmp/old`).
"""

import argparse
import collections
import glob
import os
import shutil
import statistics
import sys
import time

# Before TensorFlow starts: the host allocator the CLI uses (tf_startup), unless
# --allocator=malloc (TensorFlow's default, as before the CLI changed it).
if '--allocator=malloc' not in sys.argv:
    os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

import learner_bench  # noqa: E402

from scalable_agent2 import config, learner, networks, policy  # noqa: E402
from scalable_agent2.types import StepOutput  # noqa: E402

FRAME_SHAPE = (84, 84, 4)
# Ops that only contain other ops (their time is counted in what they call).
CONTAINERS = {'StatefulPartitionedCall', 'PartitionedCall', 'While', 'If', 'StatelessWhile'}


def _op_type(event_name: str) -> str | None:
    # TensorFlow ops are traced as 'node_name:OpType'; the executor's own events as 'A::B'.
    if ':' not in event_name or '::' in event_name or event_name.startswith('EagerLocalExecute'):
        return None
    op_type = event_name.rsplit(':', 1)[1]
    return None if op_type in CONTAINERS or not op_type else op_type


def op_times(logdir: str) -> collections.Counter:
    """Seconds per op type, summed over the host's executor threads, from the newest trace."""
    path = sorted(glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, 'rb') as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if plane.name != '/host:CPU':
            continue
        for line in plane.lines:
            if not line.name.startswith('tf_Compute'):
                continue
            for event in line.events:
                op_type = _op_type(plane.event_metadata[event.metadata_id].name)
                if op_type is not None:
                    totals[op_type] += event.duration_ps * 1e-12
    return totals


def profile(call, steps: int, logdir: str) -> tuple[float, float, collections.Counter]:
    """(median wall seconds, median CPU seconds, op seconds by type) per call: `steps` timed
    calls, then `steps` traced ones for the op times."""
    for _ in range(3):
        call()
    walls, cpus = [], []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    shutil.rmtree(logdir, ignore_errors=True)
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        call()
    tf.profiler.experimental.stop()
    per_call = collections.Counter({k: v / steps for k, v in op_times(logdir).items()})
    return statistics.median(walls), statistics.median(cpus), per_call


def learner_call(use_lstm: bool, b: int, t: int, num_actions: int):
    agent = networks.ImpalaAgent(
        config.AgentConfig(num_actions=num_actions, torso='shallow', use_lstm=use_lstm)
    )
    lrn = learner.Learner(agent, config.LearnerConfig(batch_size=b, unroll_length=t))
    batch = learner_bench.synthetic_batch(FRAME_SHAPE, t, b, num_actions)
    return lambda: tf.nest.map_structure(lambda x: x.numpy(), lrn.step(batch)), b * t


def inference_call(use_lstm: bool, b: int, num_actions: int):
    """The actor's policy call on numpy inputs (as `actor.Actor` makes it), outputs to numpy."""
    agent = networks.ImpalaAgent(
        config.AgentConfig(num_actions=num_actions, torso='shallow', use_lstm=use_lstm)
    )
    step = policy.make_policy(agent)
    rng = np.random.default_rng(0)
    env_output = StepOutput(
        reward=np.zeros([b], np.float32),
        info=(),
        done=np.zeros([b], np.bool_),
        observation=(rng.integers(0, 256, (b, *FRAME_SHAPE), dtype=np.uint8), ()),
    )
    last_action = np.zeros([b], np.int32)
    state = tf.nest.map_structure(lambda x: x.numpy(), agent.initial_state(b))

    def call():
        out, new_state = step(last_action, env_output, state)
        return tf.nest.map_structure(np.asarray, (out, new_state))

    return call, b


def report(name, wall, cpu, per_call, agent_steps: int, top: int) -> None:
    total = sum(per_call.values())
    print(
        f'\n### {name}: {wall * 1e3:.2f} ms wall and {cpu * 1e3:.2f} ms CPU per call; per agent '
        f'step {wall / agent_steps * 1e3:.3f} ms wall, {cpu / agent_steps * 1e3:.3f} ms CPU; '
        f'op time {total * 1e3:.2f} ms per call'
    )
    print('| op type | ms per call | share of op time |')
    print('|---|---|---|')
    for op_type, secs in per_call.most_common(top):
        print(f'| {op_type} | {secs * 1e3:.2f} | {secs / total:.1%} |')
    rest = total - sum(s for _, s in per_call.most_common(top))
    print(
        f'| (other {max(len(per_call) - top, 0)} types) | {rest * 1e3:.2f} | {rest / total:.1%} |'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cases', default='learner_ff,learner_lstm,inference_ff,inference_lstm')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--unroll', type=int, default=20)
    parser.add_argument('--actions', type=int, default=6)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--top', type=int, default=12)
    parser.add_argument('--logdir', default='/tmp/profile_step')
    parser.add_argument(
        '--allocator', default='bfc', choices=['bfc', 'malloc'], help='host memory allocator'
    )
    args = parser.parse_args()
    print(
        f'TensorFlow {tf.__version__}; package {os.path.dirname(networks.__file__)}; '
        f'B={args.batch}, T={args.unroll}, {args.actions} actions; allocator {args.allocator}'
    )
    for case in args.cases.split(','):
        kind, core = case.split('_')
        use_lstm = core == 'lstm'
        if kind == 'learner':
            call, agent_steps = learner_call(use_lstm, args.batch, args.unroll, args.actions)
        elif kind == 'inference':
            call, agent_steps = inference_call(use_lstm, args.batch, args.actions)
        else:
            raise ValueError(f'unknown case {case!r}')
        wall, cpu, per_call = profile(call, args.steps, os.path.join(args.logdir, case))
        report(case, wall, cpu, per_call, agent_steps, args.top)


if __name__ == '__main__':
    main()
