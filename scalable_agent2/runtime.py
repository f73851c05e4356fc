"""The runtime every program composes: set-up, threads, actors, the learner loop, test agents.

Single-machine training (`train.py`), the distributed learner and actor (`distributed_train.py`),
test mode (`evaluate.py`), video recording (`recording.py`) and the benchmarks are short programs
over these pieces; none of them calls another module's private names.

```
set_up_training:  environment specs -> agent config -> agent -> Learner -> Checkpointer
                  -> agent-spec check -> variables -> restore (-> config.json)
restore_agent_for_test: the same without a Learner (no optimizer slots), checkpoint required

actor threads:    actor_loop(actors) --unrolls--> queue --batches_from_unrolls/prefetch_loop-->
                  StagedBatch --> learner_loop(learner, source, hooks, stop) --> hooks
                  (DivergenceGuard, PublishParameters, Summaries, ProgressLog,
                  PeriodicCheckpoint, FrameBudget: `standard_hooks` orders them)
policy stepping:  PolicyStepper carries the last action and the core state (test mode, videos)
```

Threads: `Workers` runs named threads and raises the first error in the main thread after
saving a checkpoint; `put`/`get` wait on a queue until a stop event is set; `StopOnSignals`
turns SIGINT/SIGTERM into that event; `configure_tf_threads` sizes TensorFlow's pools once, at a
program's start.
"""

import dataclasses
import json
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from absl import logging

from scalable_agent2 import (
    actor,
    checkpoints,
    config,
    dynamic_batching,
    environments,
    learner,
    networks,
    summaries,
)
from scalable_agent2.errors import RunAbortedError, UsageError
from scalable_agent2.types import ActorOutput, StepOutput, StepOutputInfo

POLL_SECS = 0.1
JOIN_TIMEOUT_SECS = 10.0


# --------------------------------------------------------------------------------------------
# TensorFlow's thread pools.


def default_num_threads() -> int:
    """One thread per core: the default of both TensorFlow pools."""
    return max(1, os.cpu_count() or 1)


def configure_tf_threads(intra_op: int = 0, inter_op: int = 0) -> tuple[int, int]:
    """Sets TensorFlow's intra-op and inter-op thread pools; call before TF runs anything.

    Setting them explicitly makes the choice visible in the log. The default is one thread per
    core in each pool, as TensorFlow's own: on 2 cores, one thread each serialised the learner's
    step and the actors' inference calls (Pong, 32 environments: 2.1K against 3.0K frames/s,
    docs/BENCHMARKS.md).

    Args:
      intra_op: threads one op may use (0: one per core).
      inter_op: ops run at once (0: one per core).

    Returns:
      The (intra_op, inter_op) in effect. Once TensorFlow's runtime has started the pools cannot
      change: a differing request is then logged and ignored (e.g. a second program in one
      process, as tests run them).
    """
    want = (intra_op or default_num_threads(), inter_op or default_num_threads())
    current = (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )
    if current == want:
        return want
    try:
        tf.config.threading.set_intra_op_parallelism_threads(want[0])
        tf.config.threading.set_inter_op_parallelism_threads(want[1])
    except RuntimeError as e:  # TensorFlow has started: its pools are fixed.
        logging.warning(
            'TensorFlow threads stay intra-op %s, inter-op %s (asked %d, %d): %s',
            current[0] or 'default',
            current[1] or 'default',
            *want,
            e,
        )
        return current
    logging.info('TensorFlow threads: intra-op %d, inter-op %d.', *want)
    return want


# --------------------------------------------------------------------------------------------
# Stop events, queues and worker threads.


class StopOnSignals:
    """Context manager: SIGINT/SIGTERM set an event instead of killing the process.

    Signal handlers can only be installed from the main thread; elsewhere this does nothing.
    """

    def __init__(self, event: threading.Event):
        self._event = event
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        del frame
        logging.warning(
            'Received %s; stopping after saving a checkpoint.', signal.Signals(signum).name
        )
        self._event.set()

    def __enter__(self) -> 'StopOnSignals':
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Puts `item` unless `stop` is set first; returns whether it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=POLL_SECS)
            return True
        except queue.Full:
            continue
    return False


def get(q: queue.Queue, stop: threading.Event) -> Any:
    """Gets an item, or None once `stop` is set."""
    while not stop.is_set():
        try:
            return q.get(timeout=POLL_SECS)
        except queue.Empty:
            continue
    return None


class Workers:
    """Named daemon threads sharing a stop event; the first error is kept for the main thread.

    A thread that raises (while `stop` is not set) logs the error, records it and sets `stop`, so
    that the others and the learner loop wind down; the main thread then calls
    `raise_first_error`.
    """

    def __init__(self, stop: threading.Event):
        self._stop = stop
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()

    def start(self, name: str, target: Callable[[], None]) -> None:
        """Runs `target()` in a new thread called `name`."""

        def run():
            try:
                target()
            except BaseException as e:  # Reported to the main thread.
                if not self._stop.is_set():
                    logging.error('%s failed: %r', name, e)
                    with self._lock:
                        self._errors.append(e)
                    self._stop.set()

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def first_error(self) -> BaseException | None:
        with self._lock:
            return self._errors[0] if self._errors else None

    def raise_first_error(self, ckpt: checkpoints.Checkpointer | None = None, frames: int = 0):
        """Raises RuntimeError if a thread failed, saving `ckpt` at `frames` first if given.

        The learner only trains in the main thread, so the parameters saved are the last good
        ones whatever failed in the actors or the prefetch thread.
        """
        e = self.first_error
        if e is not None:
            if ckpt is not None:
                path = ckpt.save(frames)
                logging.error('A training thread failed; saved %s first.', path)
            raise RuntimeError(f'a training thread failed: {e!r}') from e

    def join(self, timeout_secs: float = JOIN_TIMEOUT_SECS) -> None:
        """Waits up to `timeout_secs` in all for the threads (set `stop` first)."""
        deadline = time.monotonic() + timeout_secs
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logging.warning('Thread %s did not stop in time.', thread.name)


class StagedBatch:
    """The original's StagingArea: one batch is gathered while the learner trains on the last.

    `put` returns once the learner has taken the batch, so the producer gathers the next one
    only from then on: at most one batch waits beside the one being trained on.
    """

    def __init__(self):
        self._slot: queue.Queue = queue.Queue(maxsize=1)
        self._taken = threading.Event()

    def put(self, batch: Any, stop: threading.Event) -> bool:
        """Stages `batch` and waits until it is taken; False if `stop` is set first."""
        if not put(self._slot, batch, stop):
            return False
        while not stop.is_set():
            if self._taken.wait(POLL_SECS):
                self._taken.clear()
                return True
        return False

    def get(self, stop: threading.Event) -> Any:
        """The staged batch, or None once `stop` is set."""
        batch = get(self._slot, stop)
        if batch is not None:
            self._taken.set()
        return batch


# --------------------------------------------------------------------------------------------
# Set-up.


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
    if cfg.network in ('deep', 'shallow') and len(frame_shape) != 3:
        raise UsageError(
            f'--network={cfg.network} needs image frames [H, W, C], but {cfg.level_name} gives '
            f'observations of shape {list(frame_shape)}; use --network=mlp'
        )
    return config.AgentConfig(
        num_actions=int(env.num_actions),
        torso=cfg.network,
        use_lstm=cfg.use_lstm,
        use_instruction=bool(env.observation_spec.has_instruction),
    ).validate()


def check_action_sets(envs: Sequence[Any], levels: Sequence[str], num_actions: int) -> None:
    """Raises ValueError unless every environment has `num_actions` actions."""
    for env, level in zip(envs, levels, strict=True):
        if int(env.num_actions) != num_actions:
            raise UsageError(
                f'level {level} has {env.num_actions} actions, but {levels[0]} has '
                f'{num_actions}; levels of one run must share the action set'
            )


def agent_spec(agent_config: config.AgentConfig, observation_spec: Any) -> dict[str, Any]:
    """What a checkpoint must match: the agent config and the frame shape/dtype."""
    spec = dataclasses.asdict(agent_config)
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
        resumed_from = frames_of(the_learner)
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
    """Builds the agent for `env` and restores the latest checkpoint into it; no optimizer.

    Only the agent and the frame counter are restored (the checkpoint's optimizer slots are
    left unread), so test mode and recording hold no optimizer state.

    Args:
      cfg: the validated experiment config (its `logdir` holds the checkpoints).
      env: an environment (or `EnvironmentSpec`) of the levels to play.

    Raises:
      checkpoints.NoCheckpointError: none in `cfg.logdir`.
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
    path = ckpt.restore_latest(required=True, partial=True)
    return RestoredAgent(
        agent_config=agent_config,
        observation_spec=obs_spec,
        agent=agent,
        checkpoint=path,
        num_environment_frames=int(frames.numpy()),
        initial_state=initial_core_state(agent),
    )


# --------------------------------------------------------------------------------------------
# Policies and stepping them.


def make_policy(agent: Any) -> Callable[..., Any]:
    """The agent step as one `tf.function`: `(last_action, env_output, core_state) ->
    (AgentOutput, core_state)`, every input and output with a leading batch dimension."""

    @tf.function(reduce_retracing=True)
    def step(last_action, env_output, core_state):
        return agent((last_action, env_output), core_state)

    return step


def make_batched_policy(agent: Any, timeout_ms: int) -> Any:
    """The agent step behind dynamic batching, for actor threads.

    Returns:
      A callable `(last_action [1], env_output [1, ...], core_state [1, ...]) ->
      (AgentOutput [1, ...], core_state [1, ...])` with a `close()` method.
    """
    return dynamic_batching.batch_fn_with_options(
        minimum_batch_size=1, maximum_batch_size=1024, timeout_ms=timeout_ms
    )(make_policy(agent))


class PolicyStepper:
    """Plays one environment with a policy, carrying the last action and the core state.

    The agent's core resets itself where an input has `done` set (as the original), so the
    stepper never resets anything on its own: the core state and the last action carry across
    episode ends exactly as in a training actor. `reset()` starts over (a new environment).
    """

    def __init__(self, policy: actor.Policy, initial_state: Any, use_instruction: bool = True):
        """Starts with the initial core state and a last action of 0.

        Args:
          policy: `(last_action int32 [1], env_output [1]-batched StepOutput, core_state) ->
            (AgentOutput [1, ...], core_state)`, e.g. `make_batched_policy(agent, ...)`.
          initial_state: the agent's initial core state for one environment.
          use_instruction: whether the agent reads the instruction.
        """
        self._policy = policy
        self._initial_state = initial_state
        self._use_instruction = use_instruction
        self.reset()

    def reset(self) -> None:
        """Back to the initial core state and a last action of 0 (the original's start)."""
        self.core_state = self._initial_state
        self.last_action = np.zeros([1], np.int32)
        self.agent_output = None

    def step(self, env_output: StepOutput) -> int:
        """The action for one (unbatched) environment output; updates the carried state."""
        inputs = actor.policy_inputs(actor.batch_env_output(env_output), self._use_instruction)
        self.agent_output, self.core_state = self._policy(self.last_action, inputs, self.core_state)
        self.last_action = np.asarray(self.agent_output.action, np.int32).reshape([1])
        return int(self.last_action[0])

    __call__ = step


def run_episodes(
    env: Any, stepper: PolicyStepper, num_episodes: int, stop: threading.Event | None = None
) -> list[float]:
    """Steps `env` with `stepper` until `num_episodes` episodes end; returns their returns.

    Raises:
      RuntimeError: `stop` was set first.
    """
    returns: list[float] = []
    env_output = env.initial()
    while len(returns) < num_episodes:
        if stop is not None and stop.is_set():
            raise RuntimeError('evaluation stopped')
        env_output = env.step(stepper.step(env_output))
        if env_output.done:
            returns.append(float(env_output.info.episode_return))
    return returns


# --------------------------------------------------------------------------------------------
# Actors: objects with `unrolls() -> list[ActorOutput]`, `restarts` and `close()`.


def split_evenly(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """`items` in `min(parts, len(items))` contiguous groups whose sizes differ by at most 1."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    groups, start = [], 0
    for k in range(parts):
        end = start + size + (1 if k < extra else 0)
        groups.append(list(items[start:end]))
        start = end
    return groups


def build_batched_actor(
    env_batch: Any,
    policy: actor.Policy,
    initial_state: Any,
    unroll_length: int,
    use_instruction: bool,
) -> actor.BatchedActor:
    """The actor that one actor thread (or one distributed actor task) drives: the E
    environments of `env_batch` stepped together, one policy call per step for all E.

    Each environment still yields its own unrolls of `unroll_length + 1` entries with its own
    core state. A dead environment subprocess is rebuilt by the batch's own factory (a new
    seed per restart), its row restarting with a zero core state.
    """
    return actor.BatchedActor(
        env_batch,
        policy,
        initial_state,
        unroll_length,
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
        close_all(batches)
        raise
    return batches


def next_unrolls(a: Any) -> list[ActorOutput]:
    """The next unrolls of actor object `a`: `a.unrolls()`, or `[a.unroll()]` for an actor of
    one environment that has only `unroll()`.

    The one place where the runtime asks an actor for unrolls (single-machine threads and
    distributed actor tasks).
    """
    unrolls = getattr(a, 'unrolls', None)
    if unrolls is not None:
        return list(unrolls())
    return [a.unroll()]


def actor_loop(actors: Sequence[Any], unroll_queue: queue.Queue, stop: threading.Event) -> None:
    """An actor thread: runs its actor objects in turn, putting their unrolls on the queue."""
    while not stop.is_set():
        for a in actors:
            for unroll in next_unrolls(a):
                if not put(unroll_queue, unroll, stop):
                    return


def close_all(closables: Sequence[Any], what: str = 'an environment') -> None:
    """Closes each of `closables`, logging (not raising) failures."""
    for closable in closables:
        try:
            closable.close()
        except Exception as e:  # Closing must not hide the original error.
            logging.warning('Closing %s failed: %r', what, e)


def batches_from_unrolls(
    unroll_queue: queue.Queue, batch_size: int, stop: threading.Event
) -> Callable[[], ActorOutput | None]:
    """A batch maker for `prefetch_loop`: `batch_size` unrolls stacked time-major (None: stop)."""

    def next_batch() -> ActorOutput | None:
        items = []
        while len(items) < batch_size:
            item = get(unroll_queue, stop)
            if item is None:
                return None
            items.append(item)
        return actor.stack_unrolls(items)

    return next_batch


def prefetch_loop(
    next_batch: Callable[[], Any], staged: StagedBatch, stop: threading.Event
) -> None:
    """The prefetch thread: stages `next_batch()` while the learner trains (None ends it)."""
    while not stop.is_set():
        batch = next_batch()
        if batch is None:
            return
        if not staged.put(batch, stop):
            return


# --------------------------------------------------------------------------------------------
# The learner loop and its hooks.


def frames_of(the_learner: Any) -> int:
    """The learner's frame counter."""
    return int(the_learner.num_environment_frames.numpy())


@dataclasses.dataclass(frozen=True)
class LearnerStep:
    """One learner step, as hooks see it.

    Attributes:
      step: learner steps taken in this loop (1 for the first).
      total_steps: learner steps of the whole run, resumes included (the checkpointed count,
        the version of published parameters).
      frames: the frame counter after the step.
      batch: the batch trained on.
      metrics: the learner's metrics of the step (see `learner.Learner.step`).
      now: `time.monotonic()` after the step.
    """

    step: int
    total_steps: int
    frames: int
    batch: Any
    metrics: dict[str, Any]
    now: float


class Hook:
    """Per-step callbacks of `learner_loop`; subclasses override what they need."""

    def begin(self, frames: int) -> None:
        """Called once before the first batch, with the frame counter."""

    def should_stop(self, frames: int) -> bool:
        """Checked before each batch is taken: True ends the loop."""
        return False

    def after_step(self, step: LearnerStep) -> None:
        """Called after each learner step, in the order the hooks were given."""

    def on_error(self, error: BaseException, frames: int) -> None:
        """Called once, in order, when a learner step or a hook raised `error` (which then
        propagates), with the frame counter at that moment."""


def learner_loop(
    the_learner: Any,
    batch_source: Any,
    hooks: Sequence[Hook],
    stop: threading.Event,
) -> int:
    """Trains on batches from `batch_source` until a hook or `stop` ends it.

    Args:
      the_learner: has `step(batch) -> metrics` and `num_environment_frames` (a variable).
      batch_source: an object with `get(stop)` (e.g. `StagedBatch`) or a callable
        `source(stop)`; either returns a batch, or None to end the loop (stop set, source
        closed).
      hooks: called in order after every step (`standard_hooks` gives training's).
      stop: ends the loop when set (signals, a failed thread).

    Returns:
      The number of learner steps taken.
    """
    fetch = batch_source.get if hasattr(batch_source, 'get') else batch_source
    frames = frames_of(the_learner)
    for hook in hooks:
        hook.begin(frames)
    steps = 0
    try:
        while not stop.is_set() and not any(hook.should_stop(frames) for hook in hooks):
            batch = fetch(stop)
            if batch is None:
                break
            metrics = the_learner.step(batch)
            steps += 1
            frames = frames_of(the_learner)
            total_steps = int(metrics.get('num_learner_steps', steps))
            info = LearnerStep(steps, total_steps, frames, batch, metrics, time.monotonic())
            for hook in hooks:
                hook.after_step(info)
    except BaseException as e:
        for hook in hooks:
            hook.on_error(e, frames_of(the_learner))
        raise
    return steps


class DivergenceGuard(Hook):
    """A step whose loss or gradient norm was not finite (not applied): save, then raise.

    Put it first: the parameters saved are the last good ones, and no other hook sees the step.
    """

    def __init__(self, ckpt: Any):
        self._ckpt = ckpt

    def after_step(self, step: LearnerStep) -> None:
        metrics = step.metrics
        if bool(metrics.get('update_applied', True)):
            return
        # The update was not applied: the frame counter is the last good step's.
        self._ckpt.save(step.frames)
        raise learner.DivergenceError(
            f'non-finite loss or gradient norm at learner step {step.total_steps} ({step.frames} '
            f'frames; loss {float(metrics["total_loss"])}, gradient norm '
            f'{float(metrics["grad_norm"])}); the last good parameters were saved. Usual '
            'causes: a learning rate too high for the batch size, too small an RMSProp '
            'epsilon, no --max_grad_norm, rewards or observations with NaN/Inf'
        )


class SaveOnError(Hook):
    """A learner step or hook that fails saves a checkpoint first, unless the parameters are not
    all finite (then nothing is saved: the newest checkpoint stays the last good one).

    Diagnosed aborts (`RunAbortedError`, e.g. divergence) have saved already and are skipped.
    """

    def __init__(self, ckpt: Any, variables: Sequence[tf.Variable]):
        self._ckpt = ckpt
        self._variables = list(variables)

    def _all_finite(self) -> bool:
        return all(
            bool(tf.reduce_all(tf.math.is_finite(v)))
            for v in self._variables
            if v.dtype.is_floating
        )

    def on_error(self, error: BaseException, frames: int) -> None:
        if isinstance(error, RunAbortedError):
            return
        if not self._all_finite():
            logging.error('The learner failed (%r) with non-finite parameters; not saved.', error)
            return
        try:
            path = self._ckpt.save(frames)
        except Exception as save_error:  # The original error is the one to report.
            logging.error(
                'The learner failed (%r); saving a checkpoint failed too: %r', error, save_error
            )
            return
        logging.error('The learner failed (%r); saved %s first.', error, path)


class PublishParameters(Hook):
    """Publishes the parameters (`store.publish(step)`) after every `interval` steps."""

    def __init__(self, store: Any, interval: int):
        self._store = store
        self._interval = interval

    def after_step(self, step: LearnerStep) -> None:
        if step.step % self._interval == 0:
            self._store.publish(step.total_steps)


class Summaries(Hook):
    """TensorBoard: every episode that ended in a batch; the learner's metrics (with
    `frames_per_second`) and the action histogram on the first step and then every
    `every_secs`, with `environment_restarts` when `restarts()` counts them. The
    `learning_rate` written is the rate the step used."""

    def __init__(
        self,
        writer: summaries.TrainingSummaries,
        num_action_repeats: int,
        every_secs: float,
        restarts: Callable[[], int] | None = None,
    ):
        self._writer = writer
        self._restarts = restarts
        self._num_action_repeats = num_action_repeats
        self._every_secs = every_secs

    def begin(self, frames: int) -> None:
        self._rate = summaries.FrameRate(frames)
        self._last = time.monotonic()

    def after_step(self, step: LearnerStep) -> None:
        self._writer.add_episodes(
            summaries.episodes_from_batch(step.batch, self._num_action_repeats), step=step.frames
        )
        if step.now - self._last >= self._every_secs or step.step == 1:
            scalars = dict(step.metrics)
            scalars.pop('update_applied', None)
            scalars['frames_per_second'] = self._rate.update(step.frames)
            self._writer.add_scalars(scalars, step=step.frames)
            self._writer.add_actions(step.batch.agent_outputs.action, step=step.frames)
            if self._restarts is not None:
                self._writer.add_environment_restarts(self._restarts(), step=step.frames)
            self._last = step.now


class ProgressLog(Hook):
    """One log line every `every_secs`: frames, rate, learner steps, queue fill, mean returns."""

    def __init__(
        self,
        total_frames: int,
        every_secs: float,
        queue_size: Callable[[], tuple[int, int]],
        writer: summaries.TrainingSummaries | None = None,
    ):
        """Logs nothing yet.

        Args:
          total_frames: the frame budget, for the percentage.
          every_secs: seconds between lines.
          queue_size: `() -> (unrolls queued, capacity)`.
          writer: where the recent mean returns come from (and is flushed), if any.
        """
        self._total = total_frames
        self._every_secs = every_secs
        self._queue_size = queue_size
        self._writer = writer

    def begin(self, frames: int) -> None:
        self._rate = summaries.FrameRate(frames)
        self._last = time.monotonic()

    def after_step(self, step: LearnerStep) -> None:
        if step.now - self._last < self._every_secs:
            return
        returns = self._writer.recent_mean_returns() if self._writer is not None else {}
        shown = ', '.join(f'{k}: {v:.2f}' for k, v in list(returns.items())[:8])
        more = f' (+{len(returns) - 8} levels)' if len(returns) > 8 else ''
        size, capacity = self._queue_size()
        logging.info(
            'frames %d/%d (%.1f%%), %.0f frames/s, learner steps %d, queue %d/%d; mean return %s%s',
            step.frames,
            self._total,
            100.0 * step.frames / self._total,
            self._rate.update(step.frames),
            step.total_steps,
            size,
            capacity,
            shown or 'n/a',
            more,
        )
        if self._writer is not None:
            self._writer.flush()
        self._last = step.now


class PeriodicCheckpoint(Hook):
    """Saves a checkpoint (numbered by the frame count) every `every_secs`."""

    def __init__(self, ckpt: Any, every_secs: float):
        self._ckpt = ckpt
        self._every_secs = every_secs

    def begin(self, frames: int) -> None:
        self._last = time.monotonic()

    def after_step(self, step: LearnerStep) -> None:
        if step.now - self._last >= self._every_secs:
            self._ckpt.save(step.frames)
            self._last = step.now


class FrameBudget(Hook):
    """Ends the loop once the frame counter reaches `total_frames` (before any step if a
    restored run is already there)."""

    def __init__(self, total_frames: int):
        self._total = total_frames

    def should_stop(self, frames: int) -> bool:
        return frames >= self._total


def standard_hooks(
    cfg: config.ExperimentConfig,
    ckpt: Any,
    writer: summaries.TrainingSummaries,
    queue_size: Callable[[], tuple[int, int]],
    variables: Sequence[tf.Variable],
    publish: Hook | None = None,
    restarts: Callable[[], int] | None = None,
) -> list[Hook]:
    """Training's hooks, in order: save on error (checking `variables`, the agent's, are
    finite), divergence guard, `publish` (if any), summaries (with the environment restarts
    `restarts()` counts, if given), progress log, periodic checkpoints, frame budget."""
    hooks: list[Hook] = [SaveOnError(ckpt, variables), DivergenceGuard(ckpt)]
    if publish is not None:
        hooks.append(publish)
    total = cfg.learner.total_environment_frames
    hooks += [
        Summaries(writer, cfg.learner.num_action_repeats, cfg.save_summaries_secs, restarts),
        ProgressLog(total, cfg.log_interval_secs, queue_size, writer),
        PeriodicCheckpoint(ckpt, cfg.save_checkpoint_secs),
        FrameBudget(total),
    ]
    return hooks


def finish_training(
    the_learner: Any, ckpt: Any, steps: int, resumed_from: int | None
) -> dict[str, Any]:
    """Saves the final checkpoint, logs where training stopped and returns the run's summary:
    {'num_environment_frames', 'learner_steps' (the whole run's, resumes included, as the
    progress log counts them), 'learner_steps_this_run' (`steps`), 'resumed_from',
    'checkpoint'}."""
    frames = frames_of(the_learner)
    total_steps = int(the_learner.num_learner_steps.numpy())
    path = ckpt.save(frames)
    logging.info(
        'Training stopped at %d environment frames (%d learner steps%s).',
        frames,
        total_steps,
        f', {steps} since the resume' if resumed_from is not None else '',
    )
    return {
        'num_environment_frames': frames,
        'learner_steps': total_steps,
        'learner_steps_this_run': steps,
        'resumed_from': resumed_from,
        'checkpoint': path,
    }
