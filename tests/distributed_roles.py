"""Learner and actor processes with synthetic unrolls, for tests/distributed_test.py.

Run as `python -m tests.distributed_roles learner|actor --flag=value ...` from the repository
root. Each process writes one JSON line per event to `--out` (flushed at once), so a test can
follow it while it runs, and kills itself after `--max_secs` whatever happens.

The learner's "agent" is two small variables; update k sets them to `initial + k`, so any
published version determines the values an actor must read.
"""

import argparse
import faulthandler
import json
import os
import signal
import sys
import threading
import time

import numpy as np

from scalable_agent2 import distributed
from scalable_agent2.types import ActorOutput, AgentOutput, StepOutput, StepOutputInfo

FRAME_SHAPE = (2, 2, 1)
NUM_ACTIONS = 3
STATE_SIZE = 4
UNROLL_LENGTH = 3
VARIABLE_SHAPES = ((3, 2), (4,))


def initial_state() -> tuple[np.ndarray, np.ndarray]:
    return (np.zeros([1, STATE_SIZE], np.float32), np.zeros([1, STATE_SIZE], np.float32))


def spec() -> ActorOutput:
    return distributed.unroll_spec(
        FRAME_SHAPE, np.uint8, NUM_ACTIONS, initial_state(), UNROLL_LENGTH
    )


def initial_values() -> list[np.ndarray]:
    return [
        np.arange(np.prod(s), dtype=np.float32).reshape(s) * (i + 1)
        for i, s in enumerate(VARIABLE_SHAPES)
    ]


def values_at(version: int) -> list[np.ndarray]:
    """What the learner's variables hold after `version` updates."""
    return [v + version for v in initial_values()]


def synthetic_unroll(marker: int, level: str) -> ActorOutput:
    """An unroll in `actor.Actor.unroll`'s format whose numbers all derive from `marker`."""
    t1 = UNROLL_LENGTH + 1
    steps = np.arange(t1)
    return ActorOutput(
        level_name=level,
        agent_state=(
            np.full([1, STATE_SIZE], marker, np.float32),
            np.full([1, STATE_SIZE], -marker, np.float32),
        ),
        env_outputs=StepOutput(
            reward=(marker + steps).astype(np.float32),
            info=StepOutputInfo(
                np.full([t1], 0.5 * marker, np.float32),
                (steps + 1).astype(np.int32),
                steps == UNROLL_LENGTH,
            ),
            done=steps == UNROLL_LENGTH,
            observation=(
                np.full([t1, *FRAME_SHAPE], marker % 256, np.uint8),
                np.array([f'go {marker} {t}' for t in steps], dtype=object),
            ),
        ),
        agent_outputs=AgentOutput(
            action=(steps % NUM_ACTIONS).astype(np.int32),
            policy_logits=np.full([t1, NUM_ACTIONS], marker, np.float32),
            baseline=np.full([t1], -0.5 * marker, np.float32),
        ),
    )


class _Log:
    def __init__(self, path: str):
        self._file = open(path, 'a', buffering=1)  # noqa: SIM115 (kept open for the process)

    def write(self, **record) -> None:
        record['time'] = time.time()
        self._file.write(json.dumps(record) + '\n')
        self._file.flush()


def _watchdog(max_secs: float) -> None:
    faulthandler.register(signal.SIGUSR1)  # Dumps stacks if a test needs to see a hang.

    def die():
        sys.stderr.write(f'watchdog: exceeded {max_secs}s\n')
        sys.stderr.flush()
        os._exit(124)

    timer = threading.Timer(max_secs, die)
    timer.daemon = True
    timer.start()


def run_learner(args: argparse.Namespace) -> int:
    import tensorflow as tf

    cluster = distributed.ClusterConfig(
        learner_address=f'localhost:{args.port}',
        queue_capacity=args.capacity,
        shutdown_grace_secs=args.grace_secs,
    )
    log = _Log(args.out)
    distributed.start_learner_server(cluster)
    variables = [tf.Variable(v) for v in initial_values()]
    store = distributed.ParameterStore(variables)
    queue = distributed.UnrollQueue(spec(), cluster.queue_capacity)
    store.publish(0)  # After the queue: actors attach to it once they see parameters.
    log.write(event='ready')
    for step in range(1, args.steps + 1):
        batch = queue.dequeue_batch(args.batch_size)
        for v in variables:
            v.assign_add(tf.ones_like(v))
        store.publish(step)
        log.write(
            event='step',
            step=step,
            levels=[x.decode() for x in batch.level_name.numpy()],
            rewards=batch.env_outputs.reward.numpy().tolist(),
            frames_shape=list(batch.env_outputs.observation[0].shape),
            frame_first=batch.env_outputs.observation[0].numpy()[0, :, 0, 0, 0].tolist(),
            instructions=[x.decode() for x in batch.env_outputs.observation[1].numpy()[:, 0]],
            state=[s.numpy()[:, 0].tolist() for s in batch.agent_state],
            logits_shape=list(batch.agent_outputs.policy_logits.shape),
            episode_step=batch.env_outputs.info.episode_step.numpy().tolist(),
        )
    queue.close()
    log.write(event='closed')
    time.sleep(cluster.shutdown_grace_secs)
    return 0


def run_actor(args: argparse.Namespace) -> int:
    import tensorflow as tf

    cluster = distributed.ClusterConfig(
        learner_address=f'localhost:{args.learner_port}',
        actor_addresses=(f'localhost:{args.port}',) * (args.task + 1),
        connect_timeout_secs=args.connect_timeout_secs,
    )
    log = _Log(args.out)
    try:
        distributed.connect_actor(cluster, args.task)
        shapes = VARIABLE_SHAPES
        if args.mismatch == 'parameters':  # One parameter too many.
            shapes = (*shapes, (1,))
        variables = [tf.Variable(np.zeros(s, np.float32)) for s in shapes]
        store = distributed.ParameterStore(variables, cluster.learner_address)
        unroll_spec = spec()
        if args.mismatch == 'queue':  # Another unroll length.
            unroll_spec = distributed.unroll_spec(
                FRAME_SHAPE, np.uint8, NUM_ACTIONS, initial_state(), UNROLL_LENGTH + 1
            )
        store.wait_published(cluster.connect_timeout_secs)
        queue = distributed.UnrollQueue(
            unroll_spec, cluster.queue_capacity, cluster.learner_address
        )
        log.write(event='connected', task=args.task)
        i = 0
        while args.unrolls <= 0 or i < args.unrolls:
            version = store.read_into()
            log.write(
                event='params',
                version=version,
                values=[v.numpy().ravel().tolist() for v in variables],
            )
            marker = args.marker_base + i
            queue.enqueue(synthetic_unroll(marker, f'actor{args.task}'))
            log.write(event='enqueued', marker=marker)
            i += 1
            time.sleep(args.sleep_secs)
        return 0
    except distributed.QueueClosedError as e:
        log.write(event='exit', reason='closed', message=str(e))
        return 0
    except distributed.LearnerLostError as e:
        log.write(event='exit', reason='lost', message=str(e))
        sys.stderr.write(f'LearnerLostError: {e}\n')
        return distributed.EXIT_LEARNER_LOST
    except distributed.LearnerUnreachableError as e:
        log.write(event='exit', reason='unreachable', message=str(e))
        sys.stderr.write(f'LearnerUnreachableError: {e}\n')
        return 3
    except ValueError as e:
        log.write(event='exit', reason='mismatch', message=str(e))
        return 4


def cartpole_config(args: argparse.Namespace, job_name: str):
    """A small CartPole experiment (MLP agent, 1 frame per step) for end-to-end runs."""
    from scalable_agent2 import config

    return config.ExperimentConfig(
        logdir=args.logdir,
        level_name='gym/CartPole-v1',
        agent=config.AgentConfig(torso='mlp'),
        task=args.task,
        job_name=job_name,
        envs_per_actor=args.envs_per_actor,
        log_interval_secs=1.0,
        save_summaries_secs=1.0,
        save_checkpoint_secs=args.save_checkpoint_secs,
        environment=config.EnvironmentConfig(num_action_repeats=1),
        learner=config.LearnerConfig(
            batch_size=args.batch_size,
            unroll_length=UNROLL_LENGTH * 5,
            num_action_repeats=1,
            total_environment_frames=args.total_frames,
            learning_rate=0.004,
            entropy_cost=0.01,
            use_xla=False,
        ),
        cluster=config.ClusterConfig(
            learner_address=f'localhost:{args.learner_port or args.port}',
            actor_addresses=(f'localhost:{args.port}',) * (args.task + 1),
            connect_timeout_secs=args.connect_timeout_secs,
            shutdown_grace_secs=args.grace_secs,
        ),
    ).validate()


def run_train_learner(args: argparse.Namespace) -> int:
    from scalable_agent2 import distributed_train

    result = distributed_train.train_learner(cartpole_config(args, 'learner'))
    _Log(args.out).write(event='result', **result)
    return 0


def run_train_actor(args: argparse.Namespace) -> int:
    from scalable_agent2 import distributed_train

    code = distributed_train.run_actor(cartpole_config(args, 'actor'))
    _Log(args.out).write(event='exit', code=code)
    return code


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument('role', choices=['learner', 'actor', 'train_learner', 'train_actor'])
    parser.add_argument('--out', required=True)
    parser.add_argument('--max_secs', type=float, default=60.0)
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--learner_port', type=int, default=0)
    parser.add_argument('--task', type=int, default=0)
    parser.add_argument('--steps', type=int, default=4)
    parser.add_argument('--batch_size', type=int, default=2)
    parser.add_argument('--capacity', type=int, default=1)
    parser.add_argument('--grace_secs', type=float, default=3.0)
    parser.add_argument('--unrolls', type=int, default=0)
    parser.add_argument('--marker_base', type=int, default=0)
    parser.add_argument('--logdir', default='')
    parser.add_argument('--total_frames', type=int, default=2000)
    parser.add_argument('--save_checkpoint_secs', type=float, default=600.0)
    parser.add_argument('--mismatch', choices=['', 'parameters', 'queue'], default='')
    parser.add_argument('--sleep_secs', type=float, default=0.0)
    parser.add_argument('--connect_timeout_secs', type=float, default=30.0)
    parser.add_argument('--envs_per_actor', type=int, default=1)
    args = parser.parse_args(argv)
    _watchdog(args.max_secs)
    from absl import logging

    logging.set_verbosity(logging.INFO)
    logging.use_absl_handler()
    roles = {
        'learner': run_learner,
        'actor': run_actor,
        'train_learner': run_train_learner,
        'train_actor': run_train_actor,
    }
    return roles[args.role](args)


if __name__ == '__main__':
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip TF's teardown of the eager context and servers (it can block on remote peers).
    os._exit(code)
