"""Distributed training jobs: `--job_name=learner --task=0` and `--job_name=actor --task=i`.

```
actor task i: env (subprocess) + local agent; per unroll: read parameters -> unroll -> enqueue
learner:      UnrollQueue --prefetch thread (dequeue_many B, time-major)--> batch queue (1)
              --> learner step (as single-machine mode) --> publish parameters every N steps
              --> summaries, progress log, checkpoints (same loop as single-machine mode)
```
The learner trains exactly as in single-machine mode (`train._learner_loop`), but on unrolls
from the learner-hosted queue, so its frame counter advances only from actors' unrolls. Actor
task i plays level `levels[i % len(levels)]` (so `dmlab30`/`atari57` are assigned round-robin
across tasks) with seed `i + 1 + env_seed_offset`, and reads the learner's parameters once
per unroll.
"""

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from scalable_agent2 import (
    actor,
    checkpoints,
    config,
    distributed,
    environments,
    learner,
    networks,
    summaries,
    train,
)


def level_for_task(level_name: str, task: int) -> str:
    """The training level of actor `task` (`task % num_levels` for suites)."""
    levels = environments.expand_level_names(level_name, is_test=False)
    return levels[task % len(levels)]


class _PublishingLearner:
    """A `learner.Learner` that publishes its agent's variables after every N steps."""

    def __init__(self, inner: learner.Learner, store: distributed.ParameterStore, interval: int):
        self._inner = inner
        self._store = store
        self._interval = interval
        self.steps = 0

    def step(self, batch: Any) -> dict[str, tf.Tensor]:
        metrics = self._inner.step(batch)
        self.steps += 1
        if self.steps % self._interval == 0:
            self._store.publish(self.steps)
        return metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _QueueStats:
    """What the progress log reads from a queue (`qsize`, `maxsize`)."""

    def __init__(self, unroll_queue: distributed.UnrollQueue, capacity: int):
        self._queue = unroll_queue
        self.maxsize = capacity

    def qsize(self) -> int:
        try:
            return self._queue.size()
        except tf.errors.OpError:
            return -1


def _prefetch(
    unroll_queue: distributed.UnrollQueue,
    batches: train.StagedBatch,
    batch_size: int,
    stop: threading.Event,
) -> None:
    while not stop.is_set():
        try:
            batch = unroll_queue.dequeue_batch(batch_size)
        except distributed.QueueClosedError:
            return
        if not batches.put(batch, stop):
            return


def train_learner(cfg: config.ExperimentConfig) -> dict[str, Any]:
    """The learner job: hosts the queue and parameters, trains until the frame budget.

    Args:
      cfg: validated config with mode 'train', job_name 'learner', task 0.

    Returns:
      As `train.train`: {'num_environment_frames', 'learner_steps', 'resumed_from',
      'checkpoint'}.
    """
    cfg.validate()
    if cfg.job_name != 'learner' or cfg.task != 0:
        raise ValueError(f'the learner job is task 0, got {cfg.job_name} task {cfg.task}')
    stop = threading.Event()
    # From here on SIGINT/SIGTERM stop training cleanly (set-up finishes first, then a save).
    with train.StopOnSignals(stop):
        return _train_learner(cfg, stop)


def _train_learner(cfg: config.ExperimentConfig, stop: threading.Event) -> dict[str, Any]:
    cluster = cfg.cluster
    train.prepare_logdir(cfg.logdir)
    # The server first: variables made before it would live on another device name.
    distributed.start_learner_server(cluster)
    tf.random.set_seed(cfg.seed)
    np.random.seed(cfg.seed)
    level_names = environments.expand_level_names(cfg.level_name, is_test=False)
    suite = summaries.suite_of(cfg.level_name)

    # One environment, only for the observation spec and the action set.
    env = environments.create_environment(
        level_names[0], cfg.environment, seed=cfg.env_seed(0), is_test=False
    )
    try:
        obs_spec = env.observation_spec
        agent_config = train.agent_config_for(cfg, env)
    finally:
        env.close()
    agent = networks.ImpalaAgent(agent_config)
    the_learner = learner.Learner(agent, cfg.learner)
    ckpt = checkpoints.Checkpointer(
        cfg.logdir,
        the_learner.checkpoint_state,
        train.agent_spec(agent_config, obs_spec),
        max_to_keep=cfg.max_checkpoints_to_keep,
    )
    ckpt.check_agent_spec()  # Before building anything that a mismatch would break.
    train.create_agent_variables(agent, obs_spec)
    restored = ckpt.restore_latest()
    frames = int(the_learner.num_environment_frames.numpy())
    resumed_from = None
    if restored:
        resumed_from = frames
        logging.info('Resumed from checkpoint %s at %d environment frames.', restored, frames)
    train.write_config_json(
        os.path.join(cfg.logdir, 'config.json'),
        cfg,
        {'agent': dataclasses.asdict(agent_config), 'level_names': level_names},
    )

    store = distributed.ParameterStore(agent.variables, cluster.learner_address)
    store.publish(0)
    spec = distributed.unroll_spec(
        obs_spec.frame_shape,
        obs_spec.frame_dtype,
        agent_config.num_actions,
        tf.nest.map_structure(np.asarray, agent.initial_state(1)),
        cfg.learner.unroll_length,
    )
    unroll_queue = distributed.UnrollQueue(spec, cluster.queue_capacity)
    publishing = _PublishingLearner(the_learner, store, cluster.publish_interval)
    batches = train.StagedBatch()
    workers = train._Workers(stop)
    writer = summaries.TrainingSummaries(cfg.logdir, suite, level_names)
    logging.info(
        'Learner ready at %s: %d parameters published, queue capacity %d.',
        cluster.learner_address,
        store.num_parameters,
        cluster.queue_capacity,
    )
    try:
        workers.start(
            'prefetch', lambda: _prefetch(unroll_queue, batches, cfg.learner.batch_size, stop)
        )
        steps = train._learner_loop(
            cfg,
            publishing,
            batches,
            _QueueStats(unroll_queue, cluster.queue_capacity),
            writer,
            ckpt,
            stop,
        )
        workers.raise_first_error(ckpt, int(the_learner.num_environment_frames.numpy()))
        return train.finish_training(the_learner, ckpt, steps, resumed_from)
    finally:
        stop.set()
        # Ends the prefetch thread's dequeue and tells the actors that training is over.
        unroll_queue.close()
        workers.join()
        writer.close()
        logging.info(
            'Unroll queue closed; serving %.0fs more so that actors see it.',
            cluster.shutdown_grace_secs,
        )
        time.sleep(cluster.shutdown_grace_secs)


def run_actor(
    cfg: config.ExperimentConfig,
    on_unroll: Callable[[float, float, float], None] | None = None,
) -> int:
    """The actor job: one environment and a local agent feeding the learner.

    Args:
      cfg: validated config with mode 'train', job_name 'actor', task >= 0.
      on_unroll: called after each unroll with the seconds spent reading the parameters,
        unrolling and enqueueing (for benchmarks).

    Returns:
      0 when the learner finished (closed the queue), `distributed.EXIT_LEARNER_LOST` when it
      went away (a supervisor loop restarts the command, which then waits for the learner).

    Raises:
      distributed.LearnerUnreachableError: no learner within `connect_timeout_secs`.
    """
    cfg.validate()
    if cfg.job_name != 'actor' or cfg.task < 0:
        raise ValueError(f'an actor job needs job_name actor and task >= 0, got {cfg.task}')
    cluster = cfg.cluster
    level = level_for_task(cfg.level_name, cfg.task)
    distributed.connect_actor(cluster, cfg.task)
    tf.random.set_seed(cfg.seed + cfg.task)
    env = environments.create_environment(
        level, cfg.environment, seed=cfg.env_seed(cfg.task), is_test=False
    )
    unrolls = 0
    the_actor = None
    try:
        obs_spec = env.observation_spec
        agent_config = train.agent_config_for(cfg, env)
        agent = networks.ImpalaAgent(agent_config)
        train.create_agent_variables(agent, obs_spec)
        store = distributed.ParameterStore(agent.variables, cluster.learner_address)
        initial_state = tf.nest.map_structure(np.asarray, agent.initial_state(1))
        spec = distributed.unroll_spec(
            obs_spec.frame_shape,
            obs_spec.frame_dtype,
            agent_config.num_actions,
            initial_state,
            cfg.learner.unroll_length,
        )
        unroll_queue = distributed.UnrollQueue(
            spec, cluster.queue_capacity, cluster.learner_address
        )
        store.wait_published(cluster.connect_timeout_secs)

        @tf.function(reduce_retracing=True)
        def policy(last_action, env_output, core_state):
            return agent((last_action, env_output), core_state)

        the_actor = actor.Actor(
            env,
            level,
            policy,
            initial_state,
            cfg.learner.unroll_length,
            use_instruction=agent_config.use_instruction,
            recreate=train.recreate_environment(cfg, level, cfg.task),
        )
        logging.info('Actor %d playing %s.', cfg.task, level)
        last_log = time.monotonic()
        while True:
            t0 = time.perf_counter()
            version = store.read_into()
            t1 = time.perf_counter()
            unroll = the_actor.unroll()
            t2 = time.perf_counter()
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
        try:
            # The actor holds the current environment (a restart may have replaced `env`).
            (env if the_actor is None else the_actor).close()
        except Exception as e:  # Closing must not hide the original error.
            logging.warning('Closing the environment failed: %r', e)
