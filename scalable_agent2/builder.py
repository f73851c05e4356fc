"""Builds the roles of a run from its config: the agent, the learner, the actors, the policy.

```
set_up_training:  environment specs -> agent config -> agent -> Learner -> Checkpointer
                  -> agent-spec check -> variables -> restore (-> config.json)
restore_agent_for_test: the same without a Learner (no optimizer slots), checkpoint required
build_policy:     the agent step behind dynamic batching (actor threads, test mode)
build_actor:      an `actor.Actor` of one environment batch (`create_environment_batches`)
```
Every program (`train.py`, `distributed_train.py`, `evaluate.py`) and the benchmarks build their
roles here, so the agent is built one way and the checkpoint is checked one way.
"""

import dataclasses
import json
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

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
    policy,
    workers,
)
from scalable_agent2.errors import UsageError
from scalable_agent2.types import StepOutput, StepOutputInfo


def prepare_logdir(logdir: str) -> None:
    """Creates `logdir` if needed and checks it is writable (ValueError if not)."""
    try:
        os.makedirs(logdir, exist_ok=True)
        probe = os.path.join(logdir, f'.write_probe_{os.getpid()}')
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        raise UsageError(f'logdir {logdir!r} is not writable: {e.strerror or e}') from e


def set_seeds(seed: int) -> None:
    """Seeds TensorFlow and numpy."""
    tf.random.set_seed(seed)
    np.random.seed(seed)


def start_run(cfg: config.ExperimentConfig) -> None:
    """A single-machine program's start: TensorFlow's thread pools, the logdir, the seeds."""
    workers.configure_tf_threads(cfg.intra_op_threads, cfg.inter_op_threads)
    prepare_logdir(cfg.logdir)
    set_seeds(cfg.seed)


class EnvironmentSpec(NamedTuple):
    """What the agent needs to know of an environment (kept after the environment is closed)."""

    observation_spec: Any
    num_actions: int

    @classmethod
    def of(cls, env: Any) -> 'EnvironmentSpec':
        return cls(env.observation_spec, int(env.num_actions))


def agent_config_for(cfg: config.ExperimentConfig, env: Any) -> config.AgentConfig:
    """The agent's config for an environment (or `EnvironmentSpec`) and the flags.

    Raises:
      ValueError: a convolutional network for vector observations.
    """
    frame_shape = tuple(env.observation_spec.frame_shape)
    if cfg.agent.torso in ('deep', 'shallow') and len(frame_shape) != 3:
        raise UsageError(
            f'--network={cfg.agent.torso} needs image frames [H, W, C], but {cfg.level_name} '
            f'gives observations of shape {list(frame_shape)}; use --network=mlp'
        )
    return cfg.agent.for_environment(
        int(env.num_actions), bool(env.observation_spec.has_instruction)
    )


def check_action_sets(
    envs: Sequence[Any], levels: Sequence[str], num_actions: int, reference: str | None = None
) -> None:
    """Raises ValueError unless every environment has `num_actions` actions, the number of
    `reference` (default: the first level; e.g. 'the agent')."""
    for env, level in zip(envs, levels, strict=True):
        if int(env.num_actions) != num_actions:
            raise UsageError(
                f'level {level} has {env.num_actions} actions, but {reference or levels[0]} has '
                f'{num_actions}; levels of one run must share the action set'
            )


def agent_spec(agent_config: config.AgentConfig, observation_spec: Any) -> dict[str, Any]:
    """What a checkpoint must match: the agent config and the frame shape/dtype."""
    spec = dataclasses.asdict(agent_config)
    del spec['initializer']  # Initial values only: a checkpoint restores into either.
    if not spec['torso_layer_norm']:  # Specs written before the option existed match.
        del spec['torso_layer_norm']
    spec['frame_shape'] = [int(d) for d in observation_spec.frame_shape]
    spec['frame_dtype'] = str(observation_spec.frame_dtype)
    return spec


def dummy_env_output(observation_spec: Any) -> StepOutput:
    """An all-zero `StepOutput` with a batch dimension of 1 (to create variables)."""
    frame = np.zeros((1, *observation_spec.frame_shape), dtype=observation_spec.frame_dtype)
    return StepOutput(
        reward=np.zeros([1], np.float32),
        info=StepOutputInfo(np.zeros([1], np.float32), np.zeros([1], np.int32), np.ones([1], bool)),
        done=np.ones([1], np.bool_),
        observation=(frame, np.array([''], dtype=object)),
    )


def create_agent_variables(agent: Any, observation_spec: Any) -> None:
    """Runs one agent step on zeros so every variable exists (before restoring)."""
    agent((np.zeros([1], np.int32), dummy_env_output(observation_spec)), agent.initial_state(1))


def initial_core_state(agent: Any) -> Any:
    """The agent's initial core state for one environment: numpy nest `[1, ...]`."""
    return tf.nest.map_structure(np.asarray, agent.initial_state(1))


def build_agent(
    cfg: config.ExperimentConfig, envs: Sequence[Any], levels: Sequence[str]
) -> tuple[config.AgentConfig, networks.ImpalaAgent]:
    """The agent for these environments (or `EnvironmentSpec`s), variables not yet created.

    Raises:
      ValueError: a convolutional network for vector observations, or levels whose action sets
        differ.
    """
    agent_config = agent_config_for(cfg, envs[0])
    check_action_sets(envs, levels, agent_config.num_actions)
    return agent_config, networks.ImpalaAgent(agent_config)


def write_config_json(path: str, cfg: config.ExperimentConfig, extra: dict[str, Any]) -> None:
    """Writes `cfg` (plus `extra`) as JSON, as `<logdir>/config.json`."""
    data = dataclasses.asdict(cfg)
    data.update(extra)
    with open(path, 'w') as f:
        json.dump(data, f, indent=2, sort_keys=True)


class TrainingSetup(NamedTuple):
    """What `set_up_training` built.

    Attributes:
      agent_config, observation_spec: the agent's architecture and its input.
      agent: the `networks.ImpalaAgent`, variables created (and restored).
      learner: the `learner.Learner` (optimizer slots created, restored).
      checkpointer: the `checkpoints.Checkpointer` of the learner's state in `cfg.logdir`.
      resumed_from: the frame count restored, or None for a fresh start.
      initial_state: the agent's initial core state for one environment, numpy `[1, ...]`.
    """

    agent_config: config.AgentConfig
    observation_spec: Any
    agent: networks.ImpalaAgent
    learner: learner.Learner
    checkpointer: checkpoints.Checkpointer
    resumed_from: int | None
    initial_state: Any


def set_up_training(
    cfg: config.ExperimentConfig,
    envs: Sequence[Any],
    env_levels: Sequence[str],
    level_names: Sequence[str] | None = None,
) -> TrainingSetup:
    """The one set-up path of training (single-machine and the distributed learner).

    Environment specs -> agent config (all levels must share the action set) -> agent ->
    Learner -> Checkpointer -> agent-spec check (before anything a mismatch would break) ->
    variables -> restore the latest checkpoint, if any -> `<logdir>/config.json`.

    Args:
      cfg: the validated experiment config.
      envs: the environments (or `EnvironmentSpec`s) the agent will play; the first gives the
        observation spec.
      env_levels: the level of each of `envs`, for error messages.
      level_names: the run's levels for config.json (default: `env_levels`).

    Raises:
      ValueError: bad network for the observations, or levels with different action sets.
      checkpoints.IncompatibleCheckpointError / CorruptCheckpointError: from the checkpoint.
    """
    obs_spec = envs[0].observation_spec
    agent_config, agent = build_agent(cfg, envs, env_levels)
    the_learner = learner.Learner(agent, cfg.learner)
    ckpt = checkpoints.Checkpointer(
        cfg.logdir,
        the_learner.checkpoint_state,
        agent_spec(agent_config, obs_spec),
        max_to_keep=cfg.max_checkpoints_to_keep,
    )
    ckpt.check_agent_spec()  # Before building anything that a mismatch would break.
    create_agent_variables(agent, obs_spec)
    restored = ckpt.restore_latest()
    resumed_from = None
    if restored:
        resumed_from = learner.frames_of(the_learner)
        logging.info('Resumed from checkpoint %s at %d environment frames.', restored, resumed_from)
    write_config_json(
        os.path.join(cfg.logdir, 'config.json'),
        cfg,
        {
            'agent': dataclasses.asdict(agent_config),
            'level_names': list(env_levels if level_names is None else level_names),
        },
    )
    return TrainingSetup(
        agent_config=agent_config,
        observation_spec=obs_spec,
        agent=agent,
        learner=the_learner,
        checkpointer=ckpt,
        resumed_from=resumed_from,
        initial_state=initial_core_state(agent),
    )


class RestoredAgent(NamedTuple):
    """What `restore_agent_for_test` restored.

    Attributes:
      agent_config, observation_spec: the agent's architecture and its input.
      agent: the `networks.ImpalaAgent` with the checkpoint's parameters.
      checkpoint: the restored checkpoint's path.
      num_environment_frames: the frame count the checkpoint was saved at.
      initial_state: the agent's initial core state for one environment, numpy `[1, ...]`.
    """

    agent_config: config.AgentConfig
    observation_spec: Any
    agent: networks.ImpalaAgent
    checkpoint: str
    num_environment_frames: int
    initial_state: Any


def restore_agent_for_test(cfg: config.ExperimentConfig, env: Any) -> RestoredAgent:
    """Builds the agent for `env` and restores a checkpoint into it (`cfg.test_checkpoint`, else
    the latest); no optimizer.

    Only the agent and the frame counter are restored (the checkpoint's optimizer slots are
    left unread), so test mode and recording hold no optimizer state.

    Args:
      cfg: the validated experiment config (its `logdir` holds the checkpoints).
      env: an environment (or `EnvironmentSpec`) of the levels to play.

    Raises:
      checkpoints.NoCheckpointError: none in `cfg.logdir`, or no `cfg.test_checkpoint`.
      checkpoints.IncompatibleCheckpointError: it was written by another agent.
      ValueError: a convolutional network for vector observations.
    """
    obs_spec = env.observation_spec
    agent_config = agent_config_for(cfg, env)
    agent = networks.ImpalaAgent(agent_config)
    frames = tf.Variable(0, dtype=tf.int64, trainable=False, name='num_environment_frames')
    # The same names as `Learner.checkpoint_state`, less the optimizer.
    state = {'agent': agent, 'num_environment_frames': frames}
    ckpt = checkpoints.Checkpointer(cfg.logdir, state, agent_spec(agent_config, obs_spec))
    ckpt.check_agent_spec()  # Before building anything that a mismatch would break.
    create_agent_variables(agent, obs_spec)
    if cfg.test_checkpoint:
        path = ckpt.restore(cfg.test_checkpoint, partial=True)
    else:
        path = ckpt.restore_latest(required=True, partial=True)
    return RestoredAgent(
        agent_config=agent_config,
        observation_spec=obs_spec,
        agent=agent,
        checkpoint=path,
        num_environment_frames=int(frames.numpy()),
        initial_state=initial_core_state(agent),
    )


def build_policy(cfg: config.ExperimentConfig, agent: networks.ImpalaAgent) -> Any:
    """The agent step behind dynamic batching (`cfg.inference_timeout_ms`), for actor threads
    and test mode: see `policy.make_batched_policy`; close it when done."""
    return policy.make_batched_policy(agent, cfg.inference_timeout_ms)


def build_actor(
    cfg: config.ExperimentConfig,
    env_batch: Any,
    agent_policy: policy.Policy,
    initial_state: Any,
    use_instruction: bool,
) -> actor.Actor:
    """The actor that one actor thread (or one distributed actor task) drives: the E
    environments of `env_batch` stepped together, one `agent_policy` call per step for all E.

    Each environment still yields its own unrolls of `cfg.learner.unroll_length + 1` entries with
    its own core state. A dead environment subprocess is rebuilt by the batch's own factory (a
    new seed per restart), its row restarting with a zero core state.
    """
    return actor.Actor(
        env_batch,
        agent_policy,
        initial_state,
        cfg.learner.unroll_length,
        use_instruction=use_instruction,
        recreate=lambda index, restart: None,  # None: the batch rebuilds environment `index`.
    )


def create_environment_batches(
    cfg: config.ExperimentConfig,
    levels: Sequence[str],
    seeds: Sequence[int],
    groups: Sequence[Sequence[int]],
) -> list[Any]:
    """One `environments.create_environment_batch` per group of positions in `levels` and
    `seeds` (environment i plays `levels[i]` with seed `seeds[i]`); closes those already built
    if one fails."""
    batches: list[Any] = []
    try:
        for group in groups:
            batches.append(
                environments.create_environment_batch(
                    [levels[i] for i in group],
                    cfg.environment,
                    [seeds[i] for i in group],
                    is_test=False,
                )
            )
    except BaseException:
        workers.close_all(batches)
        raise
    return batches


def unroll_batches(
    cfg: config.ExperimentConfig, unroll_queue: queue.Queue, stop: threading.Event
) -> Callable[[], Any]:
    """The learner's batches from the actor threads' queue: `cfg.learner.batch_size` unrolls
    stacked time-major (`actor.batches_from_unrolls`; None once `stop` is set)."""
    return actor.batches_from_unrolls(unroll_queue, cfg.learner.batch_size, stop)


def dequeued_batches(
    cfg: config.ExperimentConfig, unroll_queue: distributed.UnrollQueue
) -> Callable[[], Any]:
    """The learner's batches from the learner-hosted queue: dequeue_many
    `cfg.learner.batch_size` (None once the queue is closed)."""

    def next_batch() -> Any:
        try:
            return unroll_queue.dequeue_batch(cfg.learner.batch_size)
        except distributed.QueueClosedError:
            return None

    return next_batch


def unroll_spec(
    cfg: config.ExperimentConfig,
    agent_config: config.AgentConfig,
    observation_spec: Any,
    initial_state: Any,
) -> Any:
    """The layout of one unroll of `cfg.learner.unroll_length` steps in the learner-hosted
    queue (`distributed.unroll_spec`)."""
    return distributed.unroll_spec(
        observation_spec.frame_shape,
        observation_spec.frame_dtype,
        agent_config.num_actions,
        initial_state,
        cfg.learner.unroll_length,
    )
