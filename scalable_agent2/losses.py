"""IMPALA's losses and reward clipping, as in the original (sums over time and batch, not means)."""

from typing import NamedTuple

import tensorflow as tf

from scalable_agent2 import config as config_lib


def clip_rewards(rewards: tf.Tensor, mode: str) -> tf.Tensor:
    """Clips rewards as the original learner does.

    Args:
      rewards: float32 `[T, B]` (any shape).
      mode: 'abs_one' (clip to [-1, 1]) or 'soft_asymmetric' (5 tanh(r / 5), negatives x 0.3).

    Returns:
      float32, same shape as `rewards`.
    """
    rewards = tf.convert_to_tensor(rewards, tf.float32)
    if mode == 'abs_one':
        return tf.clip_by_value(rewards, -1.0, 1.0)
    elif mode == 'soft_asymmetric':
        squeezed = tf.tanh(rewards / 5.0)
        # Negative rewards are given less weight than positive ones.
        return tf.where(rewards < 0, 0.3 * squeezed, squeezed) * 5.0
    else:
        raise ValueError(
            f'unknown reward_clipping {mode!r}; expected one of {config_lib.REWARD_CLIPPING_MODES}'
        )


def policy_gradient_loss(logits: tf.Tensor, actions: tf.Tensor, advantages: tf.Tensor) -> tf.Tensor:
    """sum_t,b cross_entropy(logits, action) * stop_gradient(advantage).

    Args:
      logits: float32 `[T, B, A]`, learner policy logits.
      actions: int32 `[T, B]`, actions taken.
      advantages: float32 `[T, B]`, V-trace policy-gradient advantages.

    Returns:
      float32 scalar.
    """
    logits = tf.convert_to_tensor(logits, tf.float32)
    _check_rank('logits', logits, 3)
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(actions, tf.int32), logits=logits
    )
    return tf.reduce_sum(cross_entropy * tf.stop_gradient(advantages))


def baseline_loss(advantages: tf.Tensor) -> tf.Tensor:
    """0.5 * sum (vs - baseline)^2, given `advantages = vs - baseline` float32 `[T, B]`."""
    return 0.5 * tf.reduce_sum(tf.square(tf.convert_to_tensor(advantages, tf.float32)))


def entropy_loss(logits: tf.Tensor) -> tf.Tensor:
    """Minus the summed entropy, sum_t,b sum_a pi log pi, for logits float32 `[T, B, A]`."""
    logits = tf.convert_to_tensor(logits, tf.float32)
    _check_rank('logits', logits, 3)
    policy = tf.nn.softmax(logits)
    log_policy = tf.nn.log_softmax(logits)
    return tf.reduce_sum(policy * log_policy)


class ImpalaLoss(NamedTuple):
    """The total loss and its weighted parts (total = policy_gradient + baseline + entropy).

    All float32 scalars.
    """

    total: tf.Tensor
    policy_gradient: tf.Tensor
    baseline: tf.Tensor
    entropy: tf.Tensor


def impala_loss(
    target_logits: tf.Tensor,
    actions: tf.Tensor,
    pg_advantages: tf.Tensor,
    vs: tf.Tensor,
    values: tf.Tensor,
    baseline_cost: float,
    entropy_cost: float,
) -> ImpalaLoss:
    """The original's total loss: pg + baseline_cost * baseline + entropy_cost * entropy.

    Args:
      target_logits: float32 `[T, B, A]`, learner logits.
      actions: int32 `[T, B]`, behaviour actions.
      pg_advantages: float32 `[T, B]`, V-trace policy-gradient advantages (no gradient).
      vs: float32 `[T, B]`, V-trace targets (no gradient).
      values: float32 `[T, B]`, learner baselines.
      baseline_cost, entropy_cost: loss weights.

    Returns:
      `ImpalaLoss` with weighted components.
    """
    pg = policy_gradient_loss(target_logits, actions, pg_advantages)
    base = baseline_cost * baseline_loss(tf.stop_gradient(vs) - values)
    ent = entropy_cost * entropy_loss(target_logits)
    return ImpalaLoss(total=pg + base + ent, policy_gradient=pg, baseline=base, entropy=ent)


def _check_rank(name: str, tensor: tf.Tensor, rank: int) -> None:
    actual = tensor.shape.rank
    if actual is not None and actual != rank:
        raise ValueError(f'{name} must have rank {rank}, got shape {tensor.shape}')
