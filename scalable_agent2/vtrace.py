"""V-trace off-policy correction (Espeholt et al. 2018, section 4.1, equation 1).

Pure TensorFlow functions with the original `scalable_agent` API. Inputs are time-major,
`[T, B, ...]`: any trailing dimensions after the batch dimension are carried through.

The backward recursion

    acc_t = delta_t + discount_t * c_t * acc_{t+1},   acc_T = 0,   vs_t = V(x_t) + acc_t

runs in a `tf.function` compiled with XLA (`use_xla=True`, the default and the learner's hot
path) or as a plain graph `tf.scan` (`use_xla=False`, kept for comparison).
"""

from typing import NamedTuple

import tensorflow as tf


class VTraceReturns(NamedTuple):
    """V-trace targets and policy-gradient advantages; neither carries gradient.

    Attributes:
      vs: float32 `[T, B, ...]`, the V-trace value targets.
      pg_advantages: float32 `[T, B, ...]`, advantages for the policy gradient.
    """

    vs: tf.Tensor
    pg_advantages: tf.Tensor


class VTraceFromLogitsReturns(NamedTuple):
    """`VTraceReturns` plus the log-probabilities used to compute them.

    Attributes:
      vs: float32 `[T, B, ...]`.
      pg_advantages: float32 `[T, B, ...]`.
      log_rhos: float32 `[T, B, ...]`, log importance weights log(pi(a)/mu(a)).
      behaviour_action_log_probs: float32 `[T, B, ...]`, log mu(a).
      target_action_log_probs: float32 `[T, B, ...]`, log pi(a) (differentiable).
    """

    vs: tf.Tensor
    pg_advantages: tf.Tensor
    log_rhos: tf.Tensor
    behaviour_action_log_probs: tf.Tensor
    target_action_log_probs: tf.Tensor


def _check_rank(name: str, tensor: tf.Tensor, rank: int, like: str | None = None) -> None:
    actual = tensor.shape.rank
    if actual is not None and actual != rank:
        like_text = f' (like {like})' if like else ''
        raise ValueError(f'{name} must have rank {rank}{like_text}, got rank {actual}')


def log_probs_from_logits_and_actions(policy_logits, actions) -> tf.Tensor:
    """Log-probabilities of `actions` under softmax(`policy_logits`).

    Args:
      policy_logits: float32 `[T, B, ..., A]` unnormalised log-probabilities.
      actions: int `[T, B, ...]` actions in `[0, A)`.

    Returns:
      float32 `[T, B, ...]`.
    """
    policy_logits = tf.convert_to_tensor(policy_logits, dtype=tf.float32)
    actions = tf.convert_to_tensor(actions, dtype=tf.int32)
    rank = policy_logits.shape.rank
    if rank is not None and rank < 3:
        raise ValueError(f'policy_logits must have rank >= 3 ([T, B, ..., A]), got rank {rank}')
    if rank is not None:
        _check_rank('actions', actions, rank - 1, like='policy_logits without its last axis')
    return -tf.nn.sparse_softmax_cross_entropy_with_logits(logits=policy_logits, labels=actions)


def from_logits(
    behaviour_policy_logits,
    target_policy_logits,
    actions,
    discounts,
    rewards,
    values,
    bootstrap_value,
    clip_rho_threshold: float | None = 1.0,
    clip_pg_rho_threshold: float | None = 1.0,
    use_xla: bool = True,
) -> VTraceFromLogitsReturns:
    """V-trace for softmax policies.

    Args:
      behaviour_policy_logits: float32 `[T, B, ..., A]`, logits of the actors' policy mu.
      target_policy_logits: float32 `[T, B, ..., A]`, logits of the learner's policy pi.
      actions: int `[T, B, ...]`, actions taken under mu.
      discounts: float32 `[T, B, ...]`, discount applied after step t (0 at episode ends).
      rewards: float32 `[T, B, ...]`.
      values: float32 `[T, B, ...]`, V(x_t) under pi.
      bootstrap_value: float32 `[B, ...]`, V(x_T).
      clip_rho_threshold: rho-bar, clips rho (not log rho); None disables clipping.
      clip_pg_rho_threshold: clip on rho in the policy-gradient advantage; None disables.
      use_xla: run the recursion XLA-compiled (True) or as a plain graph `tf.scan`.

    Returns:
      `VTraceFromLogitsReturns`.
    """
    behaviour_policy_logits = tf.convert_to_tensor(behaviour_policy_logits, dtype=tf.float32)
    target_policy_logits = tf.convert_to_tensor(target_policy_logits, dtype=tf.float32)
    actions = tf.convert_to_tensor(actions, dtype=tf.int32)
    rank = behaviour_policy_logits.shape.rank
    if rank is not None and rank < 3:
        raise ValueError(
            f'behaviour_policy_logits must have rank >= 3 ([T, B, ..., A]), got rank {rank}'
        )
    if rank is not None:
        _check_rank('target_policy_logits', target_policy_logits, rank, 'behaviour_policy_logits')
        _check_rank('actions', actions, rank - 1, 'behaviour_policy_logits without its last axis')

    discounts, rewards, values, bootstrap_value = _checked_vtrace_inputs(
        discounts, rewards, values, bootstrap_value, like=actions, like_name='actions'
    )
    clip_rho_threshold, clip_pg_rho_threshold = _checked_thresholds(
        clip_rho_threshold, clip_pg_rho_threshold
    )
    args = (behaviour_policy_logits, target_policy_logits, actions, discounts, rewards, values)
    args += (bootstrap_value, clip_rho_threshold, clip_pg_rho_threshold)
    if use_xla:
        outputs = _from_logits_xla_differentiable(*args)
    else:
        outputs = _from_logits_core(*args, vtrace_fn=_vtrace_graph)
    return VTraceFromLogitsReturns(*outputs)


def from_importance_weights(
    log_rhos,
    discounts,
    rewards,
    values,
    bootstrap_value,
    clip_rho_threshold: float | None = 1.0,
    clip_pg_rho_threshold: float | None = 1.0,
    use_xla: bool = True,
) -> VTraceReturns:
    """V-trace from log importance weights.

    Args:
      log_rhos: float32 `[T, B, ...]`, log(pi(a_t|x_t) / mu(a_t|x_t)).
      discounts: float32 `[T, B, ...]`.
      rewards: float32 `[T, B, ...]`.
      values: float32 `[T, B, ...]`.
      bootstrap_value: float32 `[B, ...]`.
      clip_rho_threshold: rho-bar, clips rho (not log rho); None disables clipping.
      clip_pg_rho_threshold: clip on rho in the advantages; None disables clipping.
      use_xla: run the recursion XLA-compiled (True) or as a plain graph `tf.scan`.

    Returns:
      `VTraceReturns` with `stop_gradient` applied to both fields.
    """
    log_rhos = tf.convert_to_tensor(log_rhos, dtype=tf.float32)
    rank = log_rhos.shape.rank
    if rank is not None and rank < 2:
        raise ValueError(f'log_rhos must have rank >= 2 ([T, B, ...]), got rank {rank}')
    discounts, rewards, values, bootstrap_value = _checked_vtrace_inputs(
        discounts, rewards, values, bootstrap_value, like=log_rhos, like_name='log_rhos'
    )
    clip_rho_threshold, clip_pg_rho_threshold = _checked_thresholds(
        clip_rho_threshold, clip_pg_rho_threshold
    )
    fn = _vtrace_xla if use_xla else _vtrace_graph
    # The targets carry no gradient; cutting it at the inputs also keeps autodiff from tracing
    # a backward pass through the compiled recursion.
    vs, pg_advantages = fn(
        *(tf.stop_gradient(x) for x in (log_rhos, discounts, rewards, values, bootstrap_value)),
        clip_rho_threshold=clip_rho_threshold,
        clip_pg_rho_threshold=clip_pg_rho_threshold,
    )
    return VTraceReturns(vs=tf.stop_gradient(vs), pg_advantages=tf.stop_gradient(pg_advantages))


def _checked_vtrace_inputs(discounts, rewards, values, bootstrap_value, like, like_name):
    """Converts to float32 and checks ranks against `like` (`[T, B, ...]`)."""
    discounts = tf.convert_to_tensor(discounts, dtype=tf.float32)
    rewards = tf.convert_to_tensor(rewards, dtype=tf.float32)
    values = tf.convert_to_tensor(values, dtype=tf.float32)
    bootstrap_value = tf.convert_to_tensor(bootstrap_value, dtype=tf.float32)
    rank = like.shape.rank
    if rank is not None:
        _check_rank('discounts', discounts, rank, like=like_name)
        _check_rank('rewards', rewards, rank, like=like_name)
        _check_rank('values', values, rank, like=like_name)
        _check_rank('bootstrap_value', bootstrap_value, rank - 1, like=f'{like_name} without time')
    return discounts, rewards, values, bootstrap_value


def _checked_thresholds(clip_rho_threshold, clip_pg_rho_threshold):
    for name, threshold in (
        ('clip_rho_threshold', clip_rho_threshold),
        ('clip_pg_rho_threshold', clip_pg_rho_threshold),
    ):
        if threshold is not None and not threshold > 0:
            raise ValueError(f'{name} must be > 0 or None, got {threshold!r}')
    as_float = lambda t: None if t is None else float(t)  # noqa: E731
    return as_float(clip_rho_threshold), as_float(clip_pg_rho_threshold)


def _from_logits_core(
    behaviour_policy_logits,
    target_policy_logits,
    actions,
    discounts,
    rewards,
    values,
    bootstrap_value,
    clip_rho_threshold,
    clip_pg_rho_threshold,
    vtrace_fn=None,
):
    """Log-probabilities, then V-trace; returns the fields of `VTraceFromLogitsReturns`."""
    target_action_log_probs = log_probs_from_logits_and_actions(target_policy_logits, actions)
    behaviour_action_log_probs = log_probs_from_logits_and_actions(behaviour_policy_logits, actions)
    log_rhos = target_action_log_probs - behaviour_action_log_probs
    vs, pg_advantages = (vtrace_fn or _vtrace_core)(
        *(tf.stop_gradient(x) for x in (log_rhos, discounts, rewards, values, bootstrap_value)),
        clip_rho_threshold=clip_rho_threshold,
        clip_pg_rho_threshold=clip_pg_rho_threshold,
    )
    return (
        tf.stop_gradient(vs),
        tf.stop_gradient(pg_advantages),
        log_rhos,
        behaviour_action_log_probs,
        target_action_log_probs,
    )


# Compiling the log-probabilities together with the recursion keeps the whole call in one XLA
# cluster (about twice as fast as compiling the recursion alone on CPU).
_from_logits_xla = tf.function(_from_logits_core, jit_compile=True, reduce_retracing=True)


def _from_logits_xla_differentiable(behaviour_policy_logits, target_policy_logits, actions, *rest):
    """`_from_logits_xla` with the log-probabilities' gradient given in closed form.

    d log softmax(l)[a] / dl = onehot(a) - softmax(l); vs and pg_advantages carry none.
    """

    @tf.custom_gradient
    def compiled(behaviour_logits, target_logits):
        outputs = _from_logits_xla(behaviour_logits, target_logits, actions, *rest)

        def grad(d_vs, d_pg, d_log_rhos, d_behaviour_log_probs, d_target_log_probs):
            del d_vs, d_pg  # Stopped gradients.
            depth = tf.shape(target_logits)[-1]
            one_hot = tf.one_hot(actions, depth, dtype=tf.float32)
            d_target = (d_target_log_probs + d_log_rhos)[..., tf.newaxis] * (
                one_hot - tf.nn.softmax(target_logits)
            )
            d_behaviour = (d_behaviour_log_probs - d_log_rhos)[..., tf.newaxis] * (
                one_hot - tf.nn.softmax(behaviour_logits)
            )
            return d_behaviour, d_target

        return outputs, grad

    return compiled(behaviour_policy_logits, target_policy_logits)


def _vtrace_core(
    log_rhos, discounts, rewards, values, bootstrap_value, clip_rho_threshold, clip_pg_rho_threshold
):
    """The V-trace computation; see `from_importance_weights`. Shapes `[T, B, ...]`."""
    rhos = tf.exp(log_rhos)
    clipped_rhos = rhos if clip_rho_threshold is None else tf.minimum(clip_rho_threshold, rhos)
    cs = tf.minimum(1.0, rhos)  # c-bar = 1, as in the paper's experiments.
    values_tp1 = tf.concat([values[1:], bootstrap_value[tf.newaxis]], axis=0)
    deltas = clipped_rhos * (rewards + discounts * values_tp1 - values)

    def backward(acc_tp1, elems):
        delta_t, discount_t, c_t = elems
        return delta_t + discount_t * c_t * acc_tp1

    vs_minus_values = tf.scan(
        backward,
        elems=(deltas, discounts, cs),
        initializer=tf.zeros_like(bootstrap_value),
        reverse=True,
    )
    vs = values + vs_minus_values

    vs_tp1 = tf.concat([vs[1:], bootstrap_value[tf.newaxis]], axis=0)
    clipped_pg_rhos = (
        rhos if clip_pg_rho_threshold is None else tf.minimum(clip_pg_rho_threshold, rhos)
    )
    pg_advantages = clipped_pg_rhos * (rewards + discounts * vs_tp1 - values)
    return vs, pg_advantages


_vtrace_xla = tf.function(_vtrace_core, jit_compile=True, reduce_retracing=True)
_vtrace_graph = tf.function(_vtrace_core, jit_compile=False, reduce_retracing=True)
