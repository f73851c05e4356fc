"""The IMPALA learner: the training step, its checkpointable state, and the loop with its hooks.

`Learner.step` is one `tf.function`. String work (instruction hashing) runs in the outer graph;
everything numeric (agent unroll, V-trace, losses, gradients, the optimizer, frame counter) runs
in an inner function that is XLA-compiled (`jit_compile=True`) when `config.use_xla`.

The checkpointed state holds two counters that only applied updates advance:
`num_environment_frames` (drives the learning-rate decay and the frame budget) and
`num_learner_steps` (the learner-step count of the logs and the version of the parameters a
distributed learner publishes), so both continue where they were on resume.

`learner_loop` trains on batches from any source (a `workers.StagedBatch`, a callable, an
iterable) until a hook or a stop event ends it; after every step it calls the hooks that
`standard_hooks` orders (SaveOnError, DivergenceGuard, e.g. PublishParameters, Summaries,
ProgressLog, PeriodicCheckpoint, FrameBudget); `finish_training` saves the final checkpoint.
"""

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
from absl import logging

from scalable_agent2 import checkpoints, losses, networks, optimizers, summaries, vtrace
from scalable_agent2 import config as config_lib
from scalable_agent2.errors import RunAbortedError
from scalable_agent2.types import ActorOutput, AgentOutput, StepOutput


class DivergenceError(RunAbortedError):
    """A learner step met a non-finite loss or gradient norm (the update was not applied)."""


class Learner:
    """Trains an `ImpalaAgent` on time-major batches of unrolls."""

    def __init__(self, agent: networks.ImpalaAgent, config: config_lib.LearnerConfig):
        self._agent = agent
        self._config = config.validate()
        self.num_environment_frames = tf.Variable(
            0, dtype=tf.int64, trainable=False, name='num_environment_frames'
        )
        self.num_learner_steps = tf.Variable(
            0, dtype=tf.int64, trainable=False, name='num_learner_steps'
        )
        if config.optimizer == 'adam':
            self._optimizer = optimizers.Adam(
                learning_rate=self.learning_rate, epsilon=config.adam_epsilon, name='adam'
            )
        else:
            self._optimizer = optimizers.RMSProp(
                learning_rate=self.learning_rate,
                decay=config.decay,
                momentum=config.momentum,
                epsilon=config.epsilon,
                name='rmsprop',
            )
        self._built = False
        has_gpu = bool(tf.config.list_physical_devices('GPU'))
        # Measured in bench/learner_bench.py: XLA:CPU convolutions are 2-3x slower than TF's own
        # kernels, and the deep T=100 step compiles for minutes; so XLA is on by default only
        # with a GPU.
        self._use_xla = has_gpu if config.use_xla is None else config.use_xla
        if self._use_xla and not has_gpu:
            logging.warning('use_xla is on without a GPU; on CPU the XLA step is slower')
        self._update = tf.function(self._update_impl, jit_compile=self._use_xla)
        self._step = tf.function(self._step_impl)
        if agent.built:
            # Agent already built (e.g. by one actor step): create the slots now, so that a
            # checkpoint restored next fills them directly.
            self._optimizer.initialize(agent.trainable_variables)
            self._built = True

    @property
    def agent(self) -> networks.ImpalaAgent:
        return self._agent

    @property
    def optimizer(self) -> optimizers.RMSProp | optimizers.Adam:
        return self._optimizer

    @property
    def checkpoint_state(self) -> checkpoints.CheckpointState:
        """Trackables for `tf.train.Checkpoint(**learner.checkpoint_state)` or a `Checkpointer`.

        A checkpoint written before `num_learner_steps` existed restores with the step count
        derived from its frame count (`frames_per_step`; exact unless the batch size, unroll
        length or action repeats changed between runs).
        """
        return checkpoints.CheckpointState(
            {
                'agent': self._agent,
                'optimizer': self._optimizer,
                'num_environment_frames': self.num_environment_frames,
                'num_learner_steps': self.num_learner_steps,
            },
            defaults={'num_learner_steps': self._learner_steps_from_frames},
        )

    @property
    def frames_per_step(self) -> int:
        """Environment frames one update on a full batch counts: T * B * action repeats."""
        c = self._config
        return c.unroll_length * c.batch_size * c.num_action_repeats

    def _learner_steps_from_frames(self) -> None:
        steps = int(self.num_environment_frames.numpy()) // self.frames_per_step
        self.num_learner_steps.assign(steps)
        logging.info('Learner steps derived from the frame count: %d.', steps)

    def learning_rate(self) -> tf.Tensor:
        """float32 scalar: the learning rate decayed linearly by the frame counter."""
        decay_frames = (
            self._config.learning_rate_decay_frames or self._config.total_environment_frames
        )
        return optimizers.linear_decay(
            self._config.learning_rate, self.num_environment_frames, decay_frames
        )

    def build(self, batch: ActorOutput) -> None:
        """Creates the agent's variables and the optimizer slots (eagerly, once).

        The constructor does this already when the agent has variables; otherwise `step` calls
        it on its first batch, and variables restored from a checkpoint before that are filled
        in as they are created (deferred restoration).
        """
        if self._built:
            return
        if not self._agent.built:
            first = tf.nest.map_structure(lambda t: t[:1], (batch.agent_outputs, batch.env_outputs))
            self._agent.unroll(first[0].action, first[1], batch.agent_state)
        self._optimizer.initialize(self._agent.trainable_variables)
        self._built = True
        logging.info(
            'learner built: %d trainable variables, xla=%s',
            len(self._agent.trainable_variables),
            self._use_xla,
        )

    def step(self, batch: ActorOutput) -> dict[str, tf.Tensor]:
        """One update on `batch`.

        Args:
          batch: `ActorOutput` with env_outputs/agent_outputs fields `[T+1, B, ...]`,
            agent_state the core state at the unroll starts (`[B, ...]`), level_name
            tf.string `[B]`.

        Returns:
          Metrics (float32 scalars unless noted): total_loss, policy_gradient_loss,
          baseline_loss, entropy_loss (weighted parts of the total), learning_rate (the rate
          used), mean_rho (mean clipped-free importance ratio), grad_norm (global norm before any
          clipping), update_applied (bool: False when the loss or gradient norm was not finite,
          and then neither the parameters nor the counters changed), num_environment_frames
          and num_learner_steps (int64, after the update).
        """
        self.build(batch)
        return self._step(batch)

    def _step_impl(self, batch: ActorOutput) -> dict[str, tf.Tensor]:
        env_outputs = self._agent.tokenize(batch.env_outputs)
        # Only what the update reads crosses into the (possibly compiled) function.
        env_outputs = StepOutput(
            reward=env_outputs.reward,
            info=(),
            done=env_outputs.done,
            observation=env_outputs.observation,
        )
        return self._update(batch.agent_state, env_outputs, batch.agent_outputs)

    def _update_impl(
        self, agent_state: Any, env_outputs: StepOutput, agent_outputs: AgentOutput
    ) -> dict[str, tf.Tensor]:
        config = self._config
        time_plus_one = tf.shape(agent_outputs.action)[0]
        batch_size = tf.shape(agent_outputs.action)[1]
        variables = self._agent.trainable_variables
        with tf.GradientTape() as tape:
            learner_outputs, _ = self._agent.unroll(agent_outputs.action, env_outputs, agent_state)
            # Alignment as the original: bootstrap from the last learner baseline, then drop
            # the first env/agent entry (it belongs to the previous unroll) and the last
            # learner entry.
            bootstrap_value = learner_outputs.baseline[-1]
            behaviour = tf.nest.map_structure(lambda t: t[1:], agent_outputs)
            rewards = tf.convert_to_tensor(env_outputs.reward, tf.float32)[1:]
            done = tf.convert_to_tensor(env_outputs.done, tf.bool)[1:]
            learner_outputs = tf.nest.map_structure(lambda t: t[:-1], learner_outputs)

            clipped_rewards = losses.clip_rewards(rewards, config.reward_clipping)
            discounts = tf.cast(tf.logical_not(done), tf.float32) * config.discounting
            vtrace_returns = vtrace.from_logits(
                behaviour_policy_logits=behaviour.policy_logits,
                target_policy_logits=learner_outputs.policy_logits,
                actions=behaviour.action,
                discounts=discounts,
                rewards=clipped_rewards,
                values=learner_outputs.baseline,
                bootstrap_value=bootstrap_value,
                # The enclosing function is already compiled (or XLA is off).
                use_xla=False,
            )
            loss = losses.impala_loss(
                target_logits=learner_outputs.policy_logits,
                actions=behaviour.action,
                pg_advantages=vtrace_returns.pg_advantages,
                vs=vtrace_returns.vs,
                values=learner_outputs.baseline,
                baseline_cost=config.baseline_cost,
                entropy_cost=config.entropy_cost,
            )
        grads = tape.gradient(loss.total, variables)
        grad_norm = tf.linalg.global_norm(grads)
        if config.max_grad_norm is not None:
            grads, _ = tf.clip_by_global_norm(grads, config.max_grad_norm, use_norm=grad_norm)
        learning_rate = self.learning_rate()
        frames = (
            tf.cast(time_plus_one - 1, tf.int64)
            * tf.cast(batch_size, tf.int64)
            * config.num_action_repeats
        )
        # A non-finite step is not applied, so the parameters stay the last good ones.
        finite = tf.logical_and(tf.math.is_finite(grad_norm), tf.math.is_finite(loss.total))

        def apply():
            self._optimizer.apply(grads, variables)
            self.num_environment_frames.assign_add(frames)
            self.num_learner_steps.assign_add(1)
            return tf.constant(True)

        applied = tf.cond(finite, apply, lambda: tf.constant(False))
        return {
            'total_loss': loss.total,
            'policy_gradient_loss': loss.policy_gradient,
            'baseline_loss': loss.baseline,
            'entropy_loss': loss.entropy,
            'learning_rate': learning_rate,
            'mean_rho': tf.reduce_mean(tf.exp(vtrace_returns.log_rhos)),
            'grad_norm': grad_norm,
            'num_environment_frames': self.num_environment_frames.read_value(),
            'num_learner_steps': self.num_learner_steps.read_value(),
            'update_applied': applied,
        }


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
      batch_source: an object with `get(stop)` (e.g. `workers.StagedBatch`) or a callable
        `source(stop)`, either returning a batch or None to end the loop (stop set, source
        closed); or any iterable of batches (the loop ends when it is exhausted).
      hooks: called in order after every step (`standard_hooks` gives training's).
      stop: ends the loop when set (signals, a failed thread).

    Returns:
      The number of learner steps taken.
    """
    if hasattr(batch_source, 'get'):
        fetch = batch_source.get
    elif callable(batch_source):
        fetch = batch_source
    else:
        batches = iter(batch_source)

        def fetch(stop: threading.Event) -> Any:
            del stop  # Checked by the loop.
            return next(batches, None)

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
        raise DivergenceError(
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
    cfg: config_lib.ExperimentConfig,
    ckpt: Any,
    writer: summaries.TrainingSummaries,
    queue_size: Callable[[], tuple[int, int]],
    variables: Sequence[tf.Variable],
    extra_hooks: Sequence[Hook] = (),
    restarts: Callable[[], int] | None = None,
) -> list[Hook]:
    """Training's hooks, in order: save on error (checking `variables`, the agent's, are
    finite), divergence guard, `extra_hooks` (e.g. `PublishParameters`), summaries (with the
    environment restarts `restarts()` counts, if given), progress log, periodic checkpoints,
    frame budget."""
    hooks: list[Hook] = [SaveOnError(ckpt, variables), DivergenceGuard(ckpt), *extra_hooks]
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
