"""The IMPALA learner: one training step on a batch of unrolls, and its checkpointable state.

`Learner.step` is one `tf.function`. String work (instruction hashing) runs in the outer graph;
everything numeric (agent unroll, V-trace, losses, gradients, the optimizer, frame counter) runs
in an inner function that is XLA-compiled (`jit_compile=True`) when `config.use_xla`.

The checkpointed state holds two counters that only applied updates advance:
`num_environment_frames` (drives the learning-rate decay and the frame budget) and
`num_learner_steps` (the learner-step count of the logs and the version of the parameters a
distributed learner publishes), so both continue where they were on resume.
"""

from typing import Any

import tensorflow as tf
from absl import logging

from scalable_agent2 import checkpoints, losses, networks, optimizers, vtrace
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
