"""Frozen configuration dataclasses with validation, and the command-line flag of each field.

Library code takes these (or explicit arguments); only `cli.py` reads flags and builds them.
Every `validate()` raises `UsageError` (a `ValueError`) naming the bad field in one line.

A field that the command line sets carries a `Flag` in its metadata (`flag_field(...)`): its help
text and, where needed, a flag name, default, choices or conversion that differ from the field's.
`cli.py` defines the flags and builds the configs from these, so a new flag is one field here
(plus its row in the flag table of docs/USAGE.md).
"""

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from scalable_agent2.errors import UsageError
from scalable_agent2.scoring import suites

REWARD_CLIPPING_MODES = ('abs_one', 'soft_asymmetric')
OPTIMIZERS = ('rmsprop', 'adam')
TORSOS = ('deep', 'shallow', 'mlp')
INITIALIZERS = ('original', 'orthogonal')
MODES = ('train', 'test')
JOB_NAMES = ('learner', 'actor')

FLAG_METADATA_KEY = 'flag'
NO_FLAG_METADATA_KEY = 'no_flag'
_SAME_AS_FIELD = object()


@dataclasses.dataclass(frozen=True)
class Flag:
    """How the command line sets one config field (read by `cli.py`).

    The flag's type follows the field's: int, float, str, bool (`X | None` fields give flags of
    X that may be unset); a `tuple[str, ...]` field is a comma-separated string flag.

    Attributes:
      help: the flag's help text; None for a field that reads a flag another field defines.
      name: the flag's name; None: the field's name. Fields of several configs may share one
        flag (`num_action_repeats` sets the environment's and the learner's).
      default: the flag's default where it differs from the field's (e.g. 0.0 for a None
        `max_grad_norm`).
      choices: an enum flag's values.
      allow_exponent: an integer flag that also accepts whole numbers written as '1e9'.
      to_config: `(flag value, {flag name: value})` -> field value, where it is not the value
        itself; the mapping gives every flag's value, for fields that depend on others.
    """

    help: str | None
    name: str | None = None
    default: Any = _SAME_AS_FIELD
    choices: tuple[str, ...] | None = None
    allow_exponent: bool = False
    to_config: Callable[[Any, Mapping[str, Any]], Any] | None = None

    def flag_name(self, field: dataclasses.Field) -> str:
        return self.name or field.name

    def flag_default(self, field: dataclasses.Field) -> Any:
        """The flag's default: `default` if given, else the field's (a tuple joined by ',')."""
        if self.default is not _SAME_AS_FIELD:
            return self.default
        if field.default is dataclasses.MISSING:
            raise ValueError(f'field {field.name} has a flag but no default')
        if isinstance(field.default, tuple):
            return ','.join(field.default)
        return field.default

    def field_value(self, value: Any, flag_values: Mapping[str, Any]) -> Any:
        """The field's value for the flag's `value`."""
        if self.to_config is not None:
            return self.to_config(value, flag_values)
        return value


def flag_field(field_default: Any, help_text: str | None, /, **flag: Any) -> Any:
    """A dataclass field (with its default) that the command line sets (see `Flag`)."""
    return dataclasses.field(
        default=field_default, metadata={FLAG_METADATA_KEY: Flag(help_text, **flag)}
    )


def unflagged_field(field_default: Any, why: str, /) -> Any:
    """A field of a flagged config that no flag sets; `why` says where its value comes from."""
    return dataclasses.field(default=field_default, metadata={NO_FLAG_METADATA_KEY: why})


def field_flag(field: dataclasses.Field) -> Flag | None:
    """The `Flag` of a dataclass field, or None when the command line does not set it."""
    return field.metadata.get(FLAG_METADATA_KEY)


def _unset_if_zero(value: Any, flag_values: Mapping[str, Any]) -> Any:
    """`to_config` of a flag whose 0 means "not set" (a None field)."""
    return value or None


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

    width: int = flag_field(96, 'Width of observation.')
    height: int = flag_field(72, 'Height of observation.')
    num_action_repeats: int = flag_field(4, None)  # The flag is LearnerConfig's.
    dataset_path: str = flag_field(
        '',
        'Path to dataset needed for psychlab_*, see '
        'https://github.com/deepmind/lab/tree/master/data/brady_konkle_oliva2008',
    )
    level_cache_dir: str | None = flag_field(None, 'Optional DeepMind Lab level cache directory.')
    atari_frame_size: int = flag_field(84, 'Side of the square grayscale Atari frame.')
    atari_frame_stack: int = flag_field(4, 'Stacked Atari frames.')
    atari_noop_max: int = flag_field(
        30, 'Up to this many no-op actions at the start of an Atari episode.'
    )
    atari_sticky_action_prob: float = flag_field(
        0.0, 'ALE repeat_action_probability (0 as in IMPALA; 0.25 for Machado et al. 2018).'
    )
    atari_max_episode_frames: int = flag_field(
        108_000, 'Cap on an Atari episode, in frames (108000 = 30 minutes).'
    )
    atari_terminal_on_life_loss: bool = flag_field(
        True, 'End Atari training episodes on life loss (never in test mode).'
    )
    atari_full_action_space: bool = flag_field(
        False,
        "Use all 18 Atari actions for every game. Default: on for 'atari57' (one agent plays "
        "every game), off for a single game (its minimal action set, as the paper's experts).",
        default=None,
        to_config=lambda value, flags: (
            suites.full_action_space(flags['level_name']) if value is None else value
        ),
    )

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
    """The agent's architecture: the flags' choices, completed by the environment's.

    A new agent option is one field here (with its flag) and its use in `networks.py`. The
    fields are what a checkpoint's agent spec records (`builder.agent_spec`).

    Attributes:
      num_actions: size of the discrete action set (from the environment; 0 until then).
      torso: 'deep' (ResNet, the original default), 'shallow' (the paper's) or 'mlp'
        (`--network`).
      core_size: LSTM units.
      use_instruction: whether to encode the instruction (DeepMind Lab only; from the
        environment).
      use_lstm: run the LSTM core (the original); False gives the paper's feed-forward
        single-game Atari agent, whose heads read the torso output directly (the core state is
        then carried but unused).
      torso_layer_norm: layer-normalise the torso output (with a learned scale and offset);
        an option the original did not have.
      initializer: 'original' or 'orthogonal' (`--initializer`): initial values only, so not
        part of a checkpoint's agent spec.
    """

    num_actions: int = unflagged_field(0, "the environment's action set")
    torso: str = flag_field(
        'deep',
        "Agent torso: 'deep' (the original's ResNet), 'shallow' (the paper's 2-layer CNN) or "
        "'mlp' (for vector observations such as gym/CartPole-v1).",
        name='network',
        choices=TORSOS,
    )
    core_size: int = unflagged_field(256, "the original's LSTM size")
    use_instruction: bool = unflagged_field(False, 'whether the environment gives instructions')
    use_lstm: bool = flag_field(
        True,
        "Agent core: the original's LSTM, or (--nouse_lstm) the feed-forward agent of the "
        "paper's single-game Atari experts.",
    )
    torso_layer_norm: bool = flag_field(
        False,
        "Layer normalisation of the torso's output before the extras and the core (not in the "
        "original; docs/RESULTS.md, 'The LSTM agent').",
    )
    initializer: str = flag_field(
        'original',
        "Initial weights: 'original' (Sonnet's defaults, as the original) or 'orthogonal' "
        '(orthogonal torso weights with gain sqrt 2, policy head 0.01, baseline 1: the PPO '
        'Atari initialisation; the LSTM keeps its own). Checkpoints restore either way.',
        choices=INITIALIZERS,
    )

    def for_environment(self, num_actions: int, use_instruction: bool) -> 'AgentConfig':
        """This config completed with an environment's action set and instruction use."""
        return dataclasses.replace(
            self, num_actions=num_actions, use_instruction=use_instruction
        ).validate()

    def validate(self, environment_known: bool = True) -> 'AgentConfig':
        """Checks the fields; `environment_known=False` skips the environment's (the CLI's
        check, before any environment exists)."""
        if environment_known:
            _positive('num_actions', self.num_actions)
        _positive('core_size', self.core_size)
        if self.torso not in TORSOS:
            raise UsageError(f'torso must be one of {TORSOS}, got {self.torso!r}')
        if self.initializer not in INITIALIZERS:
            raise UsageError(f'initializer must be one of {INITIALIZERS}, got {self.initializer!r}')
        return self


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """Loss, optimizer and batch settings (the original's defaults).

    Attributes:
      batch_size: unrolls per learner step.
      unroll_length: T, agent steps per unroll.
      num_action_repeats: frames per agent step, for the frame counter.
      total_environment_frames: frames to train for; the learning rate reaches 0 there unless
        `learning_rate_decay_frames` is set.
      learning_rate_decay_frames: frames over which the learning rate decays linearly to 0;
        None (default, as the original) decays over `total_environment_frames`. A run shorter
        than the schedule it follows (the first 10M frames of the paper's 200M) sets both.
      entropy_cost, baseline_cost: loss weights.
      discounting: per-step discount.
      reward_clipping: 'abs_one' or 'soft_asymmetric'.
      optimizer: 'rmsprop' (TF1 RMSProp, the original's) or 'adam' (TF1 Adam, beta1 0.9 and
        beta2 0.999; an option the original did not have).
      learning_rate: the optimizer's initial learning rate.
      decay, momentum, epsilon: RMSProp's (TF1 semantics; epsilon inside the square root).
      adam_epsilon: Adam's epsilon (outside the square root).
      use_xla: compile the train step with XLA; None (default) turns it on only when a GPU is
        visible, since on CPU XLA's convolutions made the step 2-3x slower.
      max_grad_norm: clip the global gradient norm to this (the paper's Atari value is 40);
        None (default, as the original code) does not clip.
    """

    batch_size: int = flag_field(2, 'Batch size for training.')
    unroll_length: int = flag_field(100, 'Unroll length in agent steps.')
    num_action_repeats: int = flag_field(
        4, 'Number of action repeats (gym/ levels: 1 unless given).'
    )
    total_environment_frames: int = flag_field(
        int(1e9),
        'Total environment frames to train for (accepts e.g. 1e9).',
        allow_exponent=True,
    )
    learning_rate_decay_frames: int | None = flag_field(
        None,
        'Frames over which the learning rate decays linearly to 0; 0 (default, as the original) '
        'decays over --total_environment_frames (accepts e.g. 2e8).',
        default=0,
        allow_exponent=True,
        to_config=_unset_if_zero,
    )
    entropy_cost: float = flag_field(0.00025, 'Entropy cost/multiplier.')
    baseline_cost: float = flag_field(0.5, 'Baseline cost/multiplier.')
    discounting: float = flag_field(0.99, 'Discounting factor.')
    reward_clipping: str = flag_field('abs_one', 'Reward clipping.', choices=REWARD_CLIPPING_MODES)
    optimizer: str = flag_field(
        'rmsprop',
        'Optimizer: rmsprop (TF1 RMSProp, the original) or adam (TF1 Adam, betas 0.9/0.999).',
        choices=OPTIMIZERS,
    )
    learning_rate: float = flag_field(0.00048, 'Learning rate.')
    decay: float = flag_field(0.99, 'RMSProp optimizer decay.')
    momentum: float = flag_field(0.0, 'RMSProp momentum.')
    epsilon: float = flag_field(0.1, 'RMSProp epsilon.')
    adam_epsilon: float = flag_field(1e-8, 'Adam epsilon (with --optimizer=adam).')
    use_xla: bool | None = flag_field(
        None,
        'Compile the learner step with XLA. Default: on only when a GPU is visible (on CPU XLA '
        'made the step 2-3x slower).',
    )
    max_grad_norm: float | None = flag_field(
        None,
        'Clip the global gradient norm to this before each update (the paper: 40 on Atari); '
        '0 does not clip, as the original code.',
        default=0.0,
        to_config=_unset_if_zero,
    )

    def validate(self) -> 'LearnerConfig':
        if self.max_grad_norm is not None:
            _positive('max_grad_norm', self.max_grad_norm)
        _positive('batch_size', self.batch_size)
        _positive('unroll_length', self.unroll_length)
        _positive('num_action_repeats', self.num_action_repeats)
        _positive('total_environment_frames', self.total_environment_frames)
        if self.learning_rate_decay_frames is not None:
            _positive('learning_rate_decay_frames', self.learning_rate_decay_frames)
        _non_negative('entropy_cost', self.entropy_cost)
        _non_negative('baseline_cost', self.baseline_cost)
        _positive('learning_rate', self.learning_rate)
        _positive('epsilon', self.epsilon)
        _positive('adam_epsilon', self.adam_epsilon)
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f'optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}')
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

    learner_address: str = flag_field('localhost:8000', 'host:port of the learner job.')
    actor_addresses: tuple[str, ...] = flag_field(
        (),
        'Comma-separated host:port per actor task; empty: the learner host, port 8001+task.',
        to_config=lambda value, flags: split_addresses(value),
    )
    connect_timeout_secs: float = flag_field(
        600.0, 'Seconds an actor waits for the learner before giving up.'
    )
    publish_interval: int = flag_field(
        1, 'Learner updates between parameter publications to the actors.'
    )
    queue_capacity: int = flag_field(1, 'Unrolls the learner-hosted queue holds.')
    shutdown_grace_secs: float = flag_field(
        10.0, 'Seconds the learner keeps serving after training so that actors exit cleanly.'
    )

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


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One run of `experiments/experiment.py` (built by `cli.py` from the flags).

    Attributes:
      logdir: where checkpoints, summaries, `config.json` and `test_results.json` go.
      mode: 'train' or 'test'.
      level_name: a DeepMind Lab level, 'dmlab30', 'atari/<Game>', 'atari57' or 'gym/<EnvId>'.
      num_actors: environments producing unrolls (the original's actors) in single-machine
        training; in test mode with `test_parallel`, environments per level that share the
        episodes.
      num_actor_threads: threads that host the `num_actors` environments in single-machine
        training (1..num_actors; environments are split evenly over them).
      envs_per_actor: environments one distributed actor task hosts; task i hosts environment
        indices `i * envs_per_actor + j` (levels and seeds as actors of those indices).
      intra_op_threads, inter_op_threads: TensorFlow's thread pools, set once at the start of
        a program; 0 = one thread per core.
      seed: seeds TensorFlow and numpy.
      env_seed_offset: shifts every environment seed (for multi-seed studies); as the
        original, actor (or task) i's environment has seed `i + 1 + env_seed_offset` and each
        test-mode level's environment seed `1 + env_seed_offset`.
      test_num_episodes: episodes per level in test mode.
      test_parallel: test mode shares each level's episodes over up to `num_actors`
        environments (seeds `1 + env_seed_offset + j`) instead of the original's one
        environment per level, levels in order.
      record_video: in test mode, also record one episode per level as an MP4.
      test_checkpoint: the checkpoint test mode plays, its name in `logdir` (e.g.
        'ckpt-6000000') or a path prefix; empty: the latest.
      task, job_name: distributed mode (task -1 = single machine).
      cluster: `ClusterConfig`, addresses and behaviour of distributed mode.
      save_checkpoint_secs: seconds between checkpoints (also saved at the end and on signals).
      save_summaries_secs: seconds between learner-metric summaries (episodes are always written).
      log_interval_secs: seconds between progress log lines.
      max_checkpoints_to_keep: checkpoints kept in `logdir`.
      inference_timeout_ms: dynamic-batching timeout for the actors' policy calls.
      agent: `AgentConfig` (its flags; the environment completes it).
      environment: `EnvironmentConfig`.
      learner: `LearnerConfig`.
    """

    logdir: str = flag_field('/tmp/agent', 'TensorFlow log directory.')
    mode: str = flag_field('train', 'Training or test mode.', choices=MODES)
    level_name: str = flag_field(
        'explore_goal_locations_small',
        "DeepMind Lab level name, or 'dmlab30' for the full DMLab-30 suite with levels assigned "
        "round robin to the actors; also 'atari/<Game>' (e.g. atari/Pong), 'atari57' (the 57 "
        "games, round robin) or 'gym/<EnvId>' (e.g. gym/CartPole-v1).",
    )
    num_actors: int = flag_field(
        4,
        'Number of actors: environments producing unrolls (as the original), hosted by '
        '--num_actor_threads threads in single-machine training.',
    )
    num_actor_threads: int = flag_field(
        2,
        'Single-machine training: threads hosting the --num_actors environments (1 to '
        '--num_actors; capped at --num_actors when not given).',
    )
    envs_per_actor: int = flag_field(
        1,
        'Distributed mode: environments each actor task hosts (task i: environment indices '
        'i*E .. i*E+E-1, levels and seeds as single-environment actors of those indices).',
    )
    intra_op_threads: int = flag_field(
        0, "TensorFlow's intra-op thread pool (threads per op); 0: one per core."
    )
    inter_op_threads: int = flag_field(
        0, "TensorFlow's inter-op thread pool (ops run in parallel); 0: one per core."
    )
    seed: int = flag_field(1, 'Random seed (TensorFlow and numpy).')
    env_seed_offset: int = flag_field(
        0,
        'Added to every environment seed (actor i: i + 1 + offset; test mode: 1 + offset), '
        'for multi-seed studies.',
    )
    test_num_episodes: int = flag_field(10, 'Number of episodes per level (test mode).')
    test_parallel: bool = flag_field(
        False,
        "Test mode: share each level's episodes over up to --num_actors environments run in "
        "parallel (seeds 1 + env_seed_offset + j), instead of the original's one environment "
        'per level with levels in order.',
    )
    record_video: bool = flag_field(
        False,
        'Test mode: also play one episode per level and write it as an MP4 of the raw frames to '
        '<logdir>/videos (file name holds the return).',
    )
    test_checkpoint: str = flag_field(
        '',
        'Test mode: the checkpoint to play, its name in --logdir (e.g. ckpt-6000000) or a path '
        'prefix; default the latest. With --max_checkpoints_to_keep large, a run can be tested '
        'at each saved point.',
    )
    task: int = flag_field(-1, 'Task id. Use -1 for local (single-machine) training.')
    job_name: str = flag_field(
        'learner', 'Job name. Ignored when task is set to -1.', choices=JOB_NAMES
    )
    save_checkpoint_secs: float = flag_field(
        600.0, 'Seconds between checkpoints; one is also saved at the end and on SIGINT/SIGTERM.'
    )
    save_summaries_secs: float = flag_field(
        30.0,
        'Seconds between TensorBoard summaries of the learner metrics (episode returns are '
        'always written).',
    )
    log_interval_secs: float = flag_field(10.0, 'Seconds between progress log lines.')
    max_checkpoints_to_keep: int = flag_field(5, 'Checkpoints kept in --logdir.')
    inference_timeout_ms: int = flag_field(
        100, "Dynamic-batching timeout (ms) for the actors' batched policy calls."
    )
    agent: AgentConfig = dataclasses.field(default_factory=AgentConfig)
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
        _positive('num_actors', self.num_actors)
        _positive('num_actor_threads', self.num_actor_threads)
        if self.mode == 'train' and self.task < 0 and self.num_actor_threads > self.num_actors:
            raise UsageError(
                f'num_actor_threads must be in 1..num_actors ({self.num_actors}), '
                f'got {self.num_actor_threads}'
            )
        _positive('envs_per_actor', self.envs_per_actor)
        _non_negative('intra_op_threads', self.intra_op_threads)
        _non_negative('inter_op_threads', self.inter_op_threads)
        _positive('test_num_episodes', self.test_num_episodes)
        if self.test_checkpoint and self.mode != 'test':
            raise UsageError('test_checkpoint is for --mode=test only')
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
        self.agent.validate(environment_known=False)
        self.environment.validate()
        self.learner.validate()
        self.cluster.validate()
        return self
