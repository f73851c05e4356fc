"""Frozen configuration dataclasses with validation.

Library code takes these (or explicit arguments); only `cli.py` reads flags and builds them.
Every `validate()` raises `UsageError` (a `ValueError`) naming the bad field in one line.
"""

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from scalable_agent2.errors import UsageError

REWARD_CLIPPING_MODES = ('abs_one', 'soft_asymmetric')
TORSOS = ('deep', 'shallow', 'mlp')


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f'{name} must be a finite number > 0, got {value!r}')


def _non_negative(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise UsageError(f'{name} must be a finite number >= 0, got {value!r}')


@dataclasses.dataclass(frozen=True)
class EnvironmentConfig:
    """How environments are built (all suites).

    Attributes:
      width, height: DeepMind Lab frame size in pixels.
      num_action_repeats: environment frames per agent step.
      dataset_path: DeepMind Lab `datasetPath` (psychlab levels).
      level_cache_dir: optional DeepMind Lab level cache directory.
      atari_frame_size: side of the square grayscale Atari frame.
      atari_frame_stack: number of stacked Atari frames.
      atari_noop_max: up to this many no-ops at the start of an Atari episode.
      atari_sticky_action_prob: ALE `repeat_action_probability` (0 = IMPALA; 0.25 = Machado).
      atari_max_episode_frames: cap on an Atari episode's length, in frames.
      atari_terminal_on_life_loss: end training episodes on life loss (never in test mode).
      atari_full_action_space: use all 18 actions for every game (needed for atari57);
        False (default) gives each game its minimal action set, as the paper's experts.
    """

    width: int = 96
    height: int = 72
    num_action_repeats: int = 4
    dataset_path: str = ''
    level_cache_dir: str | None = None
    atari_frame_size: int = 84
    atari_frame_stack: int = 4
    atari_noop_max: int = 30
    atari_sticky_action_prob: float = 0.0
    atari_max_episode_frames: int = 108_000
    atari_terminal_on_life_loss: bool = True
    atari_full_action_space: bool = False

    def validate(self) -> 'EnvironmentConfig':
        _positive('width', self.width)
        _positive('height', self.height)
        _positive('num_action_repeats', self.num_action_repeats)
        _positive('atari_frame_size', self.atari_frame_size)
        _positive('atari_frame_stack', self.atari_frame_stack)
        _non_negative('atari_noop_max', self.atari_noop_max)
        _positive('atari_max_episode_frames', self.atari_max_episode_frames)
        if not 0.0 <= self.atari_sticky_action_prob < 1.0:
            raise UsageError(
                f'atari_sticky_action_prob must be in [0, 1), got {self.atari_sticky_action_prob!r}'
            )
        return self


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """The agent's architecture.

    Attributes:
      num_actions: size of the discrete action set (from the environment).
      torso: 'deep' (ResNet, the original default), 'shallow' (the paper's) or 'mlp'.
      core_size: LSTM units.
      use_instruction: whether to encode the instruction (DeepMind Lab only).
      use_lstm: run the LSTM core (the original); False gives the paper's feed-forward
        single-game Atari agent, whose heads read the torso output directly (the core state is
        then carried but unused).
    """

    num_actions: int
    torso: str = 'deep'
    core_size: int = 256
    use_instruction: bool = False
    use_lstm: bool = True

    def validate(self) -> 'AgentConfig':
        _positive('num_actions', self.num_actions)
        _positive('core_size', self.core_size)
        if self.torso not in TORSOS:
            raise UsageError(f'torso must be one of {TORSOS}, got {self.torso!r}')
        return self


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """Loss, optimizer and batch settings (the original's defaults).

    Attributes:
      batch_size: unrolls per learner step.
      unroll_length: T, agent steps per unroll.
      num_action_repeats: frames per agent step, for the frame counter.
      total_environment_frames: frames to train for; the learning rate reaches 0 there.
      entropy_cost, baseline_cost: loss weights.
      discounting: per-step discount.
      reward_clipping: 'abs_one' or 'soft_asymmetric'.
      learning_rate, decay, momentum, epsilon: RMSProp (TF1 semantics).
      use_xla: compile the train step with XLA; None (default) turns it on only when a GPU is
        visible, since on CPU XLA's convolutions made the step 2-3x slower.
      max_grad_norm: clip the global gradient norm to this (the paper's Atari value is 40);
        None (default, as the original code) does not clip.
    """

    batch_size: int = 2
    unroll_length: int = 100
    num_action_repeats: int = 4
    total_environment_frames: int = int(1e9)
    entropy_cost: float = 0.00025
    baseline_cost: float = 0.5
    discounting: float = 0.99
    reward_clipping: str = 'abs_one'
    learning_rate: float = 0.00048
    decay: float = 0.99
    momentum: float = 0.0
    epsilon: float = 0.1
    use_xla: bool | None = None
    max_grad_norm: float | None = None

    def validate(self) -> 'LearnerConfig':
        if self.max_grad_norm is not None:
            _positive('max_grad_norm', self.max_grad_norm)
        _positive('batch_size', self.batch_size)
        _positive('unroll_length', self.unroll_length)
        _positive('num_action_repeats', self.num_action_repeats)
        _positive('total_environment_frames', self.total_environment_frames)
        _non_negative('entropy_cost', self.entropy_cost)
        _non_negative('baseline_cost', self.baseline_cost)
        _positive('learning_rate', self.learning_rate)
        _positive('epsilon', self.epsilon)
        _non_negative('momentum', self.momentum)
        if not 0.0 <= self.discounting <= 1.0:
            raise UsageError(f'discounting must be in [0, 1], got {self.discounting!r}')
        if not 0.0 <= self.decay < 1.0:
            raise UsageError(f'decay must be in [0, 1), got {self.decay!r}')
        if self.reward_clipping not in REWARD_CLIPPING_MODES:
            raise UsageError(
                f'reward_clipping must be one of {REWARD_CLIPPING_MODES}, '
                f'got {self.reward_clipping!r}'
            )
        return self


def parse_address(address: str, what: str = 'address') -> tuple[str, int]:
    """Splits 'host:port' (IPv6 as '[::1]:port'); ValueError naming `what` otherwise."""
    host, sep, port = address.rpartition(':')
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f'{what} must be host:port with a port in 1..65535, got {address!r}')
    return host.strip('[]'), int(port)


def split_addresses(addresses: str | Sequence[str]) -> tuple[str, ...]:
    """'a:1, b:2' (or a sequence) -> ('a:1', 'b:2'), empty entries dropped."""
    if isinstance(addresses, str):
        addresses = addresses.split(',')
    return tuple(a.strip() for a in addresses if a.strip())


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Where the learner and actors listen, and how the distributed run behaves.

    Attributes:
      learner_address: 'host:port' of the learner's gRPC server.
      actor_addresses: 'host:port' per actor task; task i without an entry gets the learner's
        host with port `learner_port + 1 + i` (the original's `localhost:8001+i`).
      connect_timeout_secs: how long an actor waits for the learner (at start and for the
        parameters) before `LearnerUnreachableError`.
      publish_interval: learner updates between parameter publications (1 = after every one).
      queue_capacity: unrolls the learner-hosted queue holds (the original: 1).
      shutdown_grace_secs: how long the learner keeps serving after closing the queue, so that
        actors see the close and exit 0.
    """

    learner_address: str = 'localhost:8000'
    actor_addresses: tuple[str, ...] = ()
    connect_timeout_secs: float = 600.0
    publish_interval: int = 1
    queue_capacity: int = 1
    shutdown_grace_secs: float = 10.0

    def validate(self) -> 'ClusterConfig':
        parse_address(self.learner_address, 'learner_address')
        for address in self.actor_addresses:
            parse_address(address, 'each of actor_addresses')
        if not self.connect_timeout_secs > 0:
            raise UsageError(f'connect_timeout_secs must be > 0, got {self.connect_timeout_secs}')
        if self.publish_interval < 1:
            raise UsageError(f'publish_interval must be >= 1, got {self.publish_interval}')
        if self.queue_capacity < 1:
            raise UsageError(f'queue_capacity must be >= 1, got {self.queue_capacity}')
        if self.shutdown_grace_secs < 0:
            raise UsageError(f'shutdown_grace_secs must be >= 0, got {self.shutdown_grace_secs}')
        return self

    def actor_address(self, task: int) -> str:
        """The address actor `task` listens on."""
        if task < 0:
            raise UsageError(f'actor task must be >= 0, got {task}')
        if task < len(self.actor_addresses):
            return self.actor_addresses[task]
        host, port = parse_address(self.learner_address)
        if port + 1 + task > 65535:
            raise UsageError(f'no default address for actor task {task}; set actor_addresses')
        if ':' in host:
            host = f'[{host}]'
        return f'{host}:{port + 1 + task}'


def cluster_config_from(
    learner_address: str = 'localhost:8000',
    actor_addresses: str | Sequence[str] = (),
    tf_config: str | None = None,
    **kwargs: Any,
) -> tuple[ClusterConfig, str | None, int | None]:
    """Builds a `ClusterConfig` from flag values and, where set, `TF_CONFIG`.

    `TF_CONFIG` (JSON, as TF's cluster resolvers read it) overrides the flag addresses:
    `{"cluster": {"learner": ["h:p"], "actor": ["h:p", ...]}, "task": {"type": "actor",
    "index": 3}}`.

    Args:
      learner_address: flag value.
      actor_addresses: flag value, comma-separated or a sequence ('' = defaults).
      tf_config: the `TF_CONFIG` string, or None/'' when unset.
      **kwargs: other `ClusterConfig` fields.

    Returns:
      (config, job_name, task) where job_name/task come from `TF_CONFIG`'s "task" (None when
      it has none).
    """
    job_name, task = None, None
    actors = split_addresses(actor_addresses)
    if tf_config:
        try:
            parsed = json.loads(tf_config)
        except json.JSONDecodeError as e:
            raise UsageError(f'TF_CONFIG is not valid JSON: {e}') from e
        if not isinstance(parsed, Mapping):
            raise UsageError(f'TF_CONFIG must be a JSON object, got {type(parsed).__name__}')
        cluster = parsed.get('cluster') or {}
        unknown = set(cluster) - {'learner', 'actor'}
        if unknown:
            raise UsageError(
                f'TF_CONFIG cluster has jobs {sorted(unknown)}; only learner and actor exist'
            )
        if 'learner' in cluster:
            learners = split_addresses(cluster['learner'])
            if len(learners) != 1:
                raise UsageError(f'TF_CONFIG must list exactly one learner, got {learners}')
            learner_address = learners[0]
        if 'actor' in cluster:
            actors = split_addresses(cluster['actor'])
        task_entry = parsed.get('task') or {}
        if task_entry:
            job_name = task_entry.get('type')
            if job_name not in ('learner', 'actor'):
                raise UsageError(f'TF_CONFIG task type must be learner or actor, got {job_name!r}')
            task = int(task_entry.get('index', 0))
    config = ClusterConfig(learner_address=learner_address, actor_addresses=actors, **kwargs)
    return config.validate(), job_name, task


MODES = ('train', 'test')
JOB_NAMES = ('learner', 'actor')


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One run of `experiments/experiment.py` (built by `cli.py` from the flags).

    Attributes:
      logdir: where checkpoints, summaries, `config.json` and `test_results.json` go.
      mode: 'train' or 'test'.
      level_name: a DeepMind Lab level, 'dmlab30', 'atari/<Game>', 'atari57' or 'gym/<EnvId>'.
      num_actors: actor threads (one environment each) in single-machine training; in test
        mode, environments per level that share the episodes.
      seed: seeds TensorFlow and numpy.
      env_seed_offset: shifts every environment seed (for multi-seed studies); as the
        original, actor (or task) i's environment has seed `i + 1 + env_seed_offset` and each
        test-mode level's environment seed `1 + env_seed_offset`.
      test_num_episodes: episodes per level in test mode.
      test_parallel: test mode shares each level's episodes over up to `num_actors`
        environments (seeds `1 + env_seed_offset + j`) instead of the original's one
        environment per level, levels in order.
      record_video: in test mode, also record one episode per level as an MP4.
      task, job_name: distributed mode (task -1 = single machine).
      cluster: `ClusterConfig`, addresses and behaviour of distributed mode.
      network: agent torso, 'deep', 'shallow' or 'mlp'.
      use_lstm: the agent's LSTM core (True, the original) or the feed-forward agent.
      save_checkpoint_secs: seconds between checkpoints (also saved at the end and on signals).
      save_summaries_secs: seconds between learner-metric summaries (episodes are always written).
      log_interval_secs: seconds between progress log lines.
      max_checkpoints_to_keep: checkpoints kept in `logdir`.
      inference_timeout_ms: dynamic-batching timeout for the actors' policy calls.
      environment: `EnvironmentConfig`.
      learner: `LearnerConfig`.
    """

    logdir: str = '/tmp/agent'
    mode: str = 'train'
    level_name: str = 'explore_goal_locations_small'
    num_actors: int = 4
    seed: int = 1
    env_seed_offset: int = 0
    test_num_episodes: int = 10
    test_parallel: bool = False
    record_video: bool = False
    task: int = -1
    job_name: str = 'learner'
    network: str = 'deep'
    use_lstm: bool = True
    save_checkpoint_secs: float = 600.0
    save_summaries_secs: float = 30.0
    log_interval_secs: float = 10.0
    max_checkpoints_to_keep: int = 5
    inference_timeout_ms: int = 100
    environment: EnvironmentConfig = dataclasses.field(default_factory=EnvironmentConfig)
    learner: LearnerConfig = dataclasses.field(default_factory=LearnerConfig)
    cluster: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)

    def env_seed(self, index: int) -> int:
        """The seed of actor (or distributed task, or test environment) `index`."""
        return index + 1 + self.env_seed_offset

    def validate(self) -> 'ExperimentConfig':
        if not self.logdir:
            raise UsageError('logdir must not be empty')
        if self.mode not in MODES:
            raise UsageError(f'mode must be one of {MODES}, got {self.mode!r}')
        if self.job_name not in JOB_NAMES:
            raise UsageError(f'job_name must be one of {JOB_NAMES}, got {self.job_name!r}')
        if not self.level_name:
            raise UsageError('level_name must not be empty')
        if self.network not in TORSOS:
            raise UsageError(f'network must be one of {TORSOS}, got {self.network!r}')
        _positive('num_actors', self.num_actors)
        _positive('test_num_episodes', self.test_num_episodes)
        _positive('save_checkpoint_secs', self.save_checkpoint_secs)
        _positive('save_summaries_secs', self.save_summaries_secs)
        _positive('log_interval_secs', self.log_interval_secs)
        _positive('max_checkpoints_to_keep', self.max_checkpoints_to_keep)
        _non_negative('inference_timeout_ms', self.inference_timeout_ms)
        if self.environment.num_action_repeats != self.learner.num_action_repeats:
            raise UsageError(
                'num_action_repeats differs between the environment and learner configs: '
                f'{self.environment.num_action_repeats} vs {self.learner.num_action_repeats}'
            )
        if self.task >= 0 and self.job_name == 'learner' and self.task != 0:
            raise UsageError(f'the learner job has one task, 0; got task {self.task}')
        self.environment.validate()
        self.learner.validate()
        self.cluster.validate()
        return self
