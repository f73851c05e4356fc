"""Single-machine training: actor threads, a small unroll queue, one learner.

```
actor threads (one env subprocess each) --unrolls--> FIFO queue (capacity 1)
  --> prefetch thread (stacks batch_size unrolls time-major into a `StagedBatch`)
  --> learner step (main thread) --> summaries, progress log, checkpoints
```
Actors run the agent through dynamic batching, reading the learner's variables directly (so
weights may change within an unroll, as in the original's single-machine mode). As in the
original, the queue holds one unroll and one batch is staged while the learner trains, which
bounds the policy lag.
"""

import dataclasses
import json
import os
import queue
import signal
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
    dynamic_batching,
    environments,
    learner,
    networks,
    summaries,
)
from scalable_agent2.errors import UsageError
from scalable_agent2.types import StepOutput, StepOutputInfo

_POLL_SECS = 0.1
_JOIN_TIMEOUT_SECS = 10.0


# --------------------------------------------------------------------------------------------
# Helpers shared with evaluate.py.


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


def agent_config_for(cfg: config.ExperimentConfig, env: Any) -> config.AgentConfig:
    """The agent's config for an environment (action count, instruction use) and the flags.

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


def recreate_environment(
    cfg: config.ExperimentConfig, level: str, index: int
) -> Callable[[int], Any]:
    """What an actor calls to replace its dead environment: restart n gets its own seed."""

    def create(restart: int) -> Any:
        seed = cfg.env_seed(index) + 100_000 * restart
        return environments.create_environment(level, cfg.environment, seed=seed, is_test=False)

    return create


def make_batched_policy(agent: Any, timeout_ms: int) -> Any:
    """The agent step behind dynamic batching, for actor threads.

    Returns:
      A callable `(last_action [1], env_output [1, ...], core_state [1, ...]) ->
      (AgentOutput [1, ...], core_state [1, ...])` with a `close()` method.
    """

    @tf.function(reduce_retracing=True)
    def step(last_action, env_output, core_state):
        return agent((last_action, env_output), core_state)

    return dynamic_batching.batch_fn_with_options(
        minimum_batch_size=1, maximum_batch_size=1024, timeout_ms=timeout_ms
    )(step)


def write_config_json(path: str, cfg: config.ExperimentConfig, extra: dict[str, Any]) -> None:
    data = dataclasses.asdict(cfg)
    data.update(extra)
    with open(path, 'w') as f:
        json.dump(data, f, indent=2, sort_keys=True)


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


# --------------------------------------------------------------------------------------------
# Threads.


class _Workers:
    """Actor threads and the prefetch thread, with error collection and shutdown."""

    def __init__(self, stop: threading.Event):
        self._stop = stop
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()

    def start(self, name: str, target: Callable[[], None]) -> None:
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

    def raise_first_error(self, ckpt: checkpoints.Checkpointer | None = None, frames: int = 0):
        """Raises RuntimeError if a thread failed, saving `ckpt` at `frames` first if given.

        The learner only trains in the main thread, so the parameters saved are the last good
        ones whatever failed in the actors or the prefetch thread.
        """
        with self._lock:
            if self._errors:
                e = self._errors[0]
                if ckpt is not None:
                    path = ckpt.save(frames)
                    logging.error('A training thread failed; saved %s first.', path)
                raise RuntimeError(f'a training thread failed: {e!r}') from e

    def join(self) -> None:
        deadline = time.monotonic() + _JOIN_TIMEOUT_SECS
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
        if not _put(self._slot, batch, stop):
            return False
        while not stop.is_set():
            if self._taken.wait(_POLL_SECS):
                self._taken.clear()
                return True
        return False

    def get(self, stop: threading.Event) -> Any:
        """The staged batch, or None once `stop` is set."""
        batch = _get(self._slot, stop)
        if batch is not None:
            self._taken.set()
        return batch


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Puts `item` unless `stop` is set first; returns whether it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_SECS)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    """Gets an item, or None once `stop` is set."""
    while not stop.is_set():
        try:
            return q.get(timeout=_POLL_SECS)
        except queue.Empty:
            continue
    return None


def _actor_loop(a: actor.Actor, unrolls: queue.Queue, stop: threading.Event) -> None:
    while not stop.is_set():
        if not _put(unrolls, a.unroll(), stop):
            return


def _prefetch_loop(
    unrolls: queue.Queue, batches: StagedBatch, batch_size: int, stop: threading.Event
) -> None:
    while not stop.is_set():
        items = []
        while len(items) < batch_size:
            item = _get(unrolls, stop)
            if item is None:
                return
            items.append(item)
        if not batches.put(actor.stack_unrolls(items), stop):
            return


# --------------------------------------------------------------------------------------------
# Training.


def train(cfg: config.ExperimentConfig) -> dict[str, Any]:
    """Trains until `cfg.learner.total_environment_frames` (or SIGINT/SIGTERM).

    Args:
      cfg: validated experiment config with mode 'train'.

    Returns:
      {'num_environment_frames': int, 'learner_steps': int, 'resumed_from': int | None,
       'checkpoint': path}.

    Raises:
      ValueError (or a subclass) for user mistakes: unknown level, unwritable logdir,
      incompatible checkpoint; RuntimeError when a training thread fails.
    """
    cfg.validate()
    if cfg.task >= 0:
        raise ValueError(
            'train.train runs single-machine mode (task -1); distributed jobs (task >= 0) run '
            'through distributed_train'
        )
    prepare_logdir(cfg.logdir)
    tf.random.set_seed(cfg.seed)
    np.random.seed(cfg.seed)

    level_names = environments.expand_level_names(cfg.level_name, is_test=False)
    actor_levels = [level_names[i % len(level_names)] for i in range(cfg.num_actors)]
    suite = summaries.suite_of(cfg.level_name)
    if suite is not None and len(set(actor_levels)) < len(level_names):
        logging.warning(
            '%d actors cover %d of the %d %s levels; no suite score will be reported.',
            cfg.num_actors,
            len(set(actor_levels)),
            len(level_names),
            suite,
        )
        suite = None

    stop = threading.Event()
    envs: list[Any] = []
    actors: list[actor.Actor] = []
    policy = None
    workers = _Workers(stop)
    writer = None
    # From here on SIGINT/SIGTERM stop training cleanly (set-up finishes first, then a save).
    signals = StopOnSignals(stop).__enter__()
    try:
        for i, level in enumerate(actor_levels):
            envs.append(
                environments.create_environment(
                    level, cfg.environment, seed=cfg.env_seed(i), is_test=False
                )
            )
        obs_spec = envs[0].observation_spec
        agent_config = agent_config_for(cfg, envs[0])
        for env, level in zip(envs, actor_levels, strict=True):
            if int(env.num_actions) != agent_config.num_actions:
                raise UsageError(
                    f'level {level} has {env.num_actions} actions, but {actor_levels[0]} has '
                    f'{agent_config.num_actions}; levels of one run must share the action set'
                )
        agent = networks.ImpalaAgent(agent_config)
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
        frames = int(the_learner.num_environment_frames.numpy())
        resumed_from = None
        if restored:
            resumed_from = frames
            logging.info('Resumed from checkpoint %s at %d environment frames.', restored, frames)
        write_config_json(
            os.path.join(cfg.logdir, 'config.json'),
            cfg,
            {'agent': dataclasses.asdict(agent_config), 'level_names': actor_levels},
        )

        writer = summaries.TrainingSummaries(cfg.logdir, suite, actor_levels)
        policy = make_batched_policy(agent, cfg.inference_timeout_ms)
        unroll_queue: queue.Queue = queue.Queue(maxsize=1)
        batch_queue = StagedBatch()
        initial_state = tf.nest.map_structure(np.asarray, agent.initial_state(1))

        actors.extend(
            actor.Actor(
                env,
                level,
                policy,
                initial_state,
                cfg.learner.unroll_length,
                use_instruction=agent_config.use_instruction,
                recreate=recreate_environment(cfg, level, i),
            )
            for i, (env, level) in enumerate(zip(envs, actor_levels, strict=True))
        )
        for i, a in enumerate(actors):
            workers.start(f'actor_{i}', lambda a=a: _actor_loop(a, unroll_queue, stop))
        workers.start(
            'prefetch',
            lambda: _prefetch_loop(unroll_queue, batch_queue, cfg.learner.batch_size, stop),
        )
        steps = _learner_loop(cfg, the_learner, batch_queue, unroll_queue, writer, ckpt, stop)
        workers.raise_first_error(ckpt, int(the_learner.num_environment_frames.numpy()))
        return finish_training(the_learner, ckpt, steps, resumed_from)
    finally:
        signals.__exit__(None, None, None)
        stop.set()
        if policy is not None:
            policy.close()
        workers.join()
        # Actors close the environments they hold now (a restart may have replaced one).
        for closable in [*actors, *envs[len(actors) :]]:
            try:
                closable.close()
            except Exception as e:  # Closing must not hide the original error.
                logging.warning('Closing an environment failed: %r', e)
        if writer is not None:
            writer.close()


def finish_training(
    the_learner: Any, ckpt: Any, steps: int, resumed_from: int | None
) -> dict[str, Any]:
    """Saves the final checkpoint, logs where training stopped and returns the run's summary."""
    frames = int(the_learner.num_environment_frames.numpy())
    path = ckpt.save(frames)
    logging.info('Training stopped at %d environment frames (%d learner steps).', frames, steps)
    return {
        'num_environment_frames': frames,
        'learner_steps': steps,
        'resumed_from': resumed_from,
        'checkpoint': path,
    }


def _learner_loop(
    cfg: config.ExperimentConfig,
    the_learner: Any,
    batch_queue: StagedBatch,
    unroll_queue: queue.Queue,
    writer: summaries.TrainingSummaries,
    ckpt: checkpoints.Checkpointer,
    stop: threading.Event,
) -> int:
    """Trains on prefetched batches until the frame budget or `stop`; returns learner steps."""
    total = cfg.learner.total_environment_frames
    frames = int(the_learner.num_environment_frames.numpy())
    rate = summaries.FrameRate(frames)
    summary_rate = summaries.FrameRate(frames)
    last_log = last_summary = last_checkpoint = time.monotonic()
    steps = 0
    while frames < total and not stop.is_set():
        batch = batch_queue.get(stop)
        if batch is None:
            break
        metrics = the_learner.step(batch)
        steps += 1
        if not bool(metrics['update_applied']):
            # The parameters are still the last good ones: keep them, then stop.
            ckpt.save(frames)
            raise learner.DivergenceError(
                f'non-finite loss or gradient norm at learner step {steps} ({frames} frames; '
                f'loss {float(metrics["total_loss"])}, gradient norm '
                f'{float(metrics["grad_norm"])}); the last good parameters were saved. Usual '
                'causes: a learning rate too high for the batch size, too small an RMSProp '
                'epsilon, no --max_grad_norm, rewards or observations with NaN/Inf'
            )
        frames = int(the_learner.num_environment_frames.numpy())
        writer.add_episodes(
            summaries.episodes_from_batch(batch, cfg.learner.num_action_repeats), step=frames
        )
        now = time.monotonic()
        if now - last_summary >= cfg.save_summaries_secs or steps == 1:
            scalars = dict(metrics)  # learning_rate: the rate this step used.
            scalars.pop('update_applied')
            scalars['frames_per_second'] = summary_rate.update(frames)
            writer.add_scalars(scalars, step=frames)
            writer.add_actions(batch.agent_outputs.action, step=frames)
            last_summary = now
        if now - last_log >= cfg.log_interval_secs:
            returns = writer.recent_mean_returns()
            shown = ', '.join(f'{k}: {v:.2f}' for k, v in list(returns.items())[:8])
            more = f' (+{len(returns) - 8} levels)' if len(returns) > 8 else ''
            logging.info(
                'frames %d/%d (%.1f%%), %.0f frames/s, learner steps %d, queue %d/%d; '
                'mean return %s%s',
                frames,
                total,
                100.0 * frames / total,
                rate.update(frames),
                steps,
                unroll_queue.qsize(),
                unroll_queue.maxsize,
                shown or 'n/a',
                more,
            )
            writer.flush()
            last_log = now
        if now - last_checkpoint >= cfg.save_checkpoint_secs:
            ckpt.save(frames)
            last_checkpoint = now
    return steps
