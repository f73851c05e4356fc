"""Distributed training jobs: `--job_name=learner --task=0` and `--job_name=actor --task=i`.

```
actor task i: envs_per_actor envs (subprocesses) + local agent;
              per unroll: read parameters -> unroll -> enqueue
learner:      UnrollQueue --prefetch thread (dequeue_many B, time-major)--> batch queue (1)
              --> learner step (as single-machine mode) --> publish parameters every N steps
              --> summaries, progress log, checkpoints (the same learner program as
              single-machine mode, `train.run_learner`)
```
The learner trains exactly as in single-machine mode, but on unrolls from the learner-hosted
queue, so its frame counter advances only from actors' unrolls. Actor task i hosts environment
indices `i * E .. i * E + E - 1` (E = `envs_per_actor`, 1 by default); environment index j plays
level `levels[j % len(levels)]` (so `dmlab30`/`atari57` are assigned round-robin) with seed
`j + 1 + env_seed_offset`, and reads the learner's parameters once per unroll.
"""

import threading
import time
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from absl import logging

from scalable_agent2 import (
    actor,
    builder,
    config,
    distributed,
    environments,
    learner,
    policy,
    train,
    workers,
)
from scalable_agent2.scoring import suites


def level_for_task(level_name: str, task: int) -> str:
    """The training level of actor `task` (`task % num_levels` for suites); with several
    environments per actor task, of environment index `task`."""
    levels = environments.expand_level_names(level_name, is_test=False)
    return levels[task % len(levels)]


def env_indices(cfg: config.ExperimentConfig) -> list[int]:
    """The environment indices actor task `cfg.task` hosts."""
    return [cfg.task * cfg.envs_per_actor + j for j in range(cfg.envs_per_actor)]


def _queue_size(unroll_queue: distributed.UnrollQueue, capacity: int) -> Callable[[], tuple]:
    def size() -> tuple[int, int]:
        try:
            return unroll_queue.size(), capacity
        except tf.errors.OpError:
            return -1, capacity

    return size


def train_learner(cfg: config.ExperimentConfig) -> dict[str, Any]:
    """The learner job: hosts the queue and parameters, trains until the frame budget.

    Args:
      cfg: validated config with mode 'train', job_name 'learner', task 0.

    Returns:
      As `train.train` (`train.run_learner`'s summary).
    """
    if cfg.job_name != 'learner' or cfg.task != 0:
        raise ValueError(f'the learner job is task 0, got {cfg.job_name} task {cfg.task}')
    stop = threading.Event()
    # From here on SIGINT/SIGTERM stop training cleanly (set-up finishes first, then a save).
    with workers.StopOnSignals(stop):
        return _train_learner(cfg, stop)


def _train_learner(cfg: config.ExperimentConfig, stop: threading.Event) -> dict[str, Any]:
    cluster = cfg.cluster
    workers.configure_tf_threads(cfg.intra_op_threads, cfg.inter_op_threads)
    builder.prepare_logdir(cfg.logdir)
    # The server first: variables made before it would live on another device name.
    distributed.start_learner_server(cluster)
    builder.set_seeds(cfg.seed)
    level_names = environments.expand_level_names(cfg.level_name, is_test=False)
    suite = suites.suite_of(cfg.level_name)

    # One environment, only for the observation spec and the action set.
    env = environments.create_environment(
        level_names[0], cfg.environment, seed=cfg.env_seed(0), is_test=False
    )
    try:
        env_spec = builder.EnvironmentSpec.of(env)
    finally:
        env.close()
    setup = builder.set_up_training(cfg, [env_spec], level_names[:1], level_names)
    obs_spec = setup.observation_spec

    store = distributed.ParameterStore(setup.agent.variables, cluster.learner_address)
    spec = builder.unroll_spec(cfg, setup.agent_config, obs_spec, setup.initial_state)
    unroll_queue = distributed.UnrollQueue(spec, cluster.queue_capacity)
    # Published only once the queue exists: actors attach to the queue after they see the
    # parameters, so the learner's layout is always the one created.
    store.publish(int(setup.learner.num_learner_steps.numpy()))  # Continues on resume.
    threads = workers.Workers(stop)
    logging.info(
        'Learner ready at %s: %d parameters published, queue capacity %d.',
        cluster.learner_address,
        store.num_parameters,
        cluster.queue_capacity,
    )
    try:
        return train.run_learner(
            cfg,
            setup,
            builder.dequeued_batches(cfg, unroll_queue),
            threads,
            stop,
            suite=suite,
            levels=level_names,
            queue_size=_queue_size(unroll_queue, cluster.queue_capacity),
            extra_hooks=[learner.PublishParameters(store, cluster.publish_interval)],
        )
    finally:
        stop.set()
        # Ends the prefetch thread's dequeue and tells the actors that training is over.
        unroll_queue.close()
        threads.join()
        logging.info(
            'Unroll queue closed; serving %.0fs more so that actors see it.',
            cluster.shutdown_grace_secs,
        )
        time.sleep(cluster.shutdown_grace_secs)


def _build_actor(
    cfg: config.ExperimentConfig, levels: list[str], seeds: list[int]
) -> tuple[actor.Actor, distributed.ParameterStore, distributed.UnrollQueue]:
    """The actor task's environments, agent and actor, once the learner has published.

    Returns:
      The actor (it holds, and closes, the environments), the parameter store its agent reads
      and the learner's unroll queue.
    """
    cluster = cfg.cluster
    (env_batch,) = builder.create_environment_batches(cfg, levels, seeds, [range(len(levels))])
    try:
        obs_spec = env_batch.observation_spec
        agent_config, agent = builder.build_agent(cfg, [env_batch], levels[:1])
        builder.create_agent_variables(agent, obs_spec)
        store = distributed.ParameterStore(agent.variables, cluster.learner_address)
        initial_state = builder.initial_core_state(agent)
        spec = builder.unroll_spec(cfg, agent_config, obs_spec, initial_state)
        store.wait_published(cluster.connect_timeout_secs)
        unroll_queue = distributed.UnrollQueue(
            spec, cluster.queue_capacity, cluster.learner_address
        )
        the_actor = builder.build_actor(
            cfg, env_batch, policy.make_policy(agent), initial_state, agent_config.use_instruction
        )
    except BaseException:
        workers.close_all([env_batch])
        raise
    return the_actor, store, unroll_queue


def run_actor(
    cfg: config.ExperimentConfig,
    on_unroll: Callable[[float, float, float], None] | None = None,
) -> int:
    """The actor job: `envs_per_actor` environments and a local agent feeding the learner.

    Args:
      cfg: validated config with mode 'train', job_name 'actor', task >= 0.
      on_unroll: called after each actor call with the seconds spent reading the parameters,
        unrolling and enqueueing (for benchmarks).

    Returns:
      0 when the learner finished (closed the queue), `distributed.EXIT_LEARNER_LOST` when it
      went away (a supervisor loop restarts the command, which then waits for the learner).

    Raises:
      distributed.LearnerUnreachableError: no learner within `connect_timeout_secs`.
    """
    if cfg.job_name != 'actor' or cfg.task < 0:
        raise ValueError(f'an actor job needs job_name actor and task >= 0, got {cfg.task}')
    indices = env_indices(cfg)
    levels = [level_for_task(cfg.level_name, i) for i in indices]
    workers.configure_tf_threads(cfg.intra_op_threads, cfg.inter_op_threads)
    distributed.connect_actor(cfg.cluster, cfg.task)
    tf.random.set_seed(cfg.seed + cfg.task)
    the_actor = None
    unrolls = 0
    try:
        the_actor, store, unroll_queue = _build_actor(
            cfg, levels, [cfg.env_seed(i) for i in indices]
        )
        logging.info('Actor %d playing %s.', cfg.task, ', '.join(levels))
        last_log = time.monotonic()
        while True:
            t0 = time.perf_counter()
            version = store.read_into()
            t1 = time.perf_counter()
            new_unrolls = the_actor.unrolls()
            t2 = time.perf_counter()
            for unroll in new_unrolls:
                unroll_queue.enqueue(unroll)
                unrolls += 1
            if on_unroll is not None:
                on_unroll(t1 - t0, t2 - t1, time.perf_counter() - t2)
            if time.monotonic() - last_log >= cfg.log_interval_secs:
                logging.info(
                    'Actor %d: %d unrolls sent, parameters of learner step %d.',
                    cfg.task,
                    unrolls,
                    version,
                )
                last_log = time.monotonic()
    except distributed.QueueClosedError:
        logging.info('Actor %d: the learner finished after %d unrolls; exiting.', cfg.task, unrolls)
        return 0
    except distributed.LearnerLostError as e:
        logging.error(
            'Actor %d: %s. Exiting with status %d; restart this command (the launch scripts '
            'loop) to rejoin a restarted learner.',
            cfg.task,
            e,
            distributed.EXIT_LEARNER_LOST,
        )
        return distributed.EXIT_LEARNER_LOST
    finally:
        # The actor holds the current environments (a restart may replace one).
        workers.close_all([the_actor] if the_actor is not None else [])
