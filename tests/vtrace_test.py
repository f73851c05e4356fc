"""V-trace against an independent numpy ground truth written from the paper's definition."""

import zlib

import numpy as np
import pytest
import tensorflow as tf

from scalable_agent2 import vtrace


def _clip(x, threshold):
    return x if threshold is None else np.minimum(threshold, x)


def ground_truth(
    log_rhos, discounts, rewards, values, bootstrap_value, clip_rho_threshold, clip_pg_rho_threshold
):
    """Equation 1 of the paper as an explicit double sum (no recursion).

    v_s = V(x_s) + sum_{t=s}^{T-1} (prod_{i=s}^{t-1} gamma_i c_i) * rho_t * delta_t, where
    delta_t = r_t + gamma_t V(x_{t+1}) - V(x_t), V(x_T) = bootstrap, c_i = min(1, rho_i).
    """
    rhos = np.exp(log_rhos)
    clipped_rhos = _clip(rhos, clip_rho_threshold)
    cs = np.minimum(1.0, rhos)
    num_steps = log_rhos.shape[0]
    values_ext = np.concatenate([values, bootstrap_value[None]], axis=0)  # [T+1, B, ...]
    vs = np.zeros_like(values)
    for s in range(num_steps):
        total = np.zeros_like(bootstrap_value)
        for t in range(s, num_steps):
            weight = np.ones_like(bootstrap_value)
            for i in range(s, t):
                weight = weight * discounts[i] * cs[i]
            delta = clipped_rhos[t] * (
                rewards[t] + discounts[t] * values_ext[t + 1] - values_ext[t]
            )
            total = total + weight * delta
        vs[s] = values[s] + total
    vs_ext = np.concatenate([vs, bootstrap_value[None]], axis=0)
    pg_advantages = _clip(rhos, clip_pg_rho_threshold) * (rewards + discounts * vs_ext[1:] - values)
    return vs, pg_advantages


def _random_inputs(rng, shape, discount_kind='random'):
    num_steps, batch = shape[:2]
    if discount_kind == 'random':
        # Mix terminals (0) with ordinary discounts.
        discounts = rng.choice([0.0, 0.9, 0.99, 1.0], size=shape).astype(np.float32)
    elif discount_kind == 'all_terminal':
        discounts = np.zeros(shape, np.float32)
    elif discount_kind == 'no_terminal':
        discounts = np.full(shape, 0.95, np.float32)
    else:
        raise ValueError(discount_kind)
    return dict(
        log_rhos=rng.uniform(-2.0, 2.0, size=shape).astype(np.float32),
        discounts=discounts,
        rewards=rng.normal(size=shape).astype(np.float32),
        values=rng.normal(size=shape).astype(np.float32),
        bootstrap_value=rng.normal(size=shape[1:]).astype(np.float32),
    )


@pytest.mark.parametrize('use_xla', [True, False])
@pytest.mark.parametrize(
    'shape, clip_rho, clip_pg_rho, discount_kind',
    [
        ((5, 3), 1.0, 1.0, 'random'),
        ((7, 2), 3.7, 2.2, 'random'),
        ((6, 4), None, None, 'random'),
        ((6, 4), 0.5, None, 'no_terminal'),
        ((4, 3), 1.0, 1.0, 'all_terminal'),
        ((1, 5), 1.0, 1.0, 'random'),
        ((5, 2, 3), 1.0, 1.5, 'random'),  # Extra trailing dimension.
        ((4, 2, 2, 3), 2.0, 1.0, 'no_terminal'),
    ],
)
def test_from_importance_weights_matches_ground_truth(
    shape, clip_rho, clip_pg_rho, discount_kind, use_xla
):
    rng = np.random.default_rng(
        zlib.crc32(repr((shape, clip_rho, clip_pg_rho, discount_kind)).encode())
    )
    inputs = _random_inputs(rng, shape, discount_kind)
    expected_vs, expected_pg = ground_truth(
        **inputs, clip_rho_threshold=clip_rho, clip_pg_rho_threshold=clip_pg_rho
    )
    out = vtrace.from_importance_weights(
        **inputs, clip_rho_threshold=clip_rho, clip_pg_rho_threshold=clip_pg_rho, use_xla=use_xla
    )
    assert isinstance(out, vtrace.VTraceReturns)
    np.testing.assert_allclose(out.vs.numpy(), expected_vs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.pg_advantages.numpy(), expected_pg, rtol=1e-5, atol=1e-5)


def test_ground_truth_is_sensitive_to_clipping_and_bootstrap():
    """The reference itself distinguishes the mistakes the tests must catch."""
    rng = np.random.default_rng(0)
    inputs = _random_inputs(rng, (6, 3), 'no_terminal')
    vs, pg = ground_truth(**inputs, clip_rho_threshold=1.0, clip_pg_rho_threshold=1.0)
    out = vtrace.from_importance_weights(**inputs)
    np.testing.assert_allclose(out.vs.numpy(), vs, rtol=1e-5, atol=1e-5)
    # Clipping log rho at 1 (i.e. rho at e) instead of rho at 1 gives other numbers.
    wrong_vs, wrong_pg = ground_truth(**inputs, clip_rho_threshold=np.e, clip_pg_rho_threshold=np.e)
    assert not np.allclose(wrong_vs, out.vs.numpy(), atol=1e-3)
    assert not np.allclose(wrong_pg, out.pg_advantages.numpy(), atol=1e-3)
    # Bootstrapping from the last value instead of bootstrap_value changes the targets.
    shifted = dict(inputs, bootstrap_value=inputs['values'][-1])
    wrong_vs, _ = ground_truth(**shifted, clip_rho_threshold=1.0, clip_pg_rho_threshold=1.0)
    assert not np.allclose(wrong_vs, out.vs.numpy(), atol=1e-3)


def test_on_policy_no_terminal_is_n_step_return():
    """With rho = 1 and no clipping effect, vs is the discounted n-step bootstrapped return."""
    num_steps, batch, gamma = 5, 2, 0.9
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=(num_steps, batch)).astype(np.float32)
    values = rng.normal(size=(num_steps, batch)).astype(np.float32)
    bootstrap = rng.normal(size=(batch,)).astype(np.float32)
    out = vtrace.from_importance_weights(
        log_rhos=np.zeros((num_steps, batch), np.float32),
        discounts=np.full((num_steps, batch), gamma, np.float32),
        rewards=rewards,
        values=values,
        bootstrap_value=bootstrap,
    )
    for s in range(num_steps):
        expected = sum(gamma ** (t - s) * rewards[t] for t in range(s, num_steps))
        expected = expected + gamma ** (num_steps - s) * bootstrap
        np.testing.assert_allclose(out.vs.numpy()[s], expected, rtol=1e-5)


@pytest.mark.parametrize('use_xla', [True, False])
def test_from_logits_matches_log_softmax(use_xla):
    rng = np.random.default_rng(2)
    num_steps, batch, num_actions = 6, 4, 5
    behaviour_logits = rng.normal(size=(num_steps, batch, num_actions)).astype(np.float32)
    target_logits = rng.normal(size=(num_steps, batch, num_actions)).astype(np.float32)
    actions = rng.integers(0, num_actions, size=(num_steps, batch)).astype(np.int32)
    inputs = _random_inputs(rng, (num_steps, batch))
    del inputs['log_rhos']

    def log_softmax(x):
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    def action_log_probs(logits):
        return np.take_along_axis(log_softmax(logits), actions[..., None], axis=-1)[..., 0]

    out = vtrace.from_logits(
        behaviour_policy_logits=behaviour_logits,
        target_policy_logits=target_logits,
        actions=actions,
        clip_rho_threshold=1.0,
        clip_pg_rho_threshold=1.0,
        use_xla=use_xla,
        **inputs,
    )
    assert isinstance(out, vtrace.VTraceFromLogitsReturns)
    target_lp = action_log_probs(target_logits)
    behaviour_lp = action_log_probs(behaviour_logits)
    np.testing.assert_allclose(out.target_action_log_probs.numpy(), target_lp, rtol=1e-5)
    np.testing.assert_allclose(out.behaviour_action_log_probs.numpy(), behaviour_lp, rtol=1e-5)
    np.testing.assert_allclose(out.log_rhos.numpy(), target_lp - behaviour_lp, rtol=1e-4, atol=1e-5)
    expected_vs, expected_pg = ground_truth(
        log_rhos=target_lp - behaviour_lp,
        clip_rho_threshold=1.0,
        clip_pg_rho_threshold=1.0,
        **inputs,
    )
    np.testing.assert_allclose(out.vs.numpy(), expected_vs, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.pg_advantages.numpy(), expected_pg, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        vtrace.log_probs_from_logits_and_actions(target_logits, actions).numpy(),
        target_lp,
        rtol=1e-5,
    )


def _no_gradient(grad):
    return grad is None or not np.any(grad.numpy())


@pytest.mark.parametrize('use_xla', [True, False])
def test_no_gradient_through_vs_and_advantages(use_xla):
    rng = np.random.default_rng(3)
    inputs = _random_inputs(rng, (5, 3), 'no_terminal')
    values = tf.Variable(inputs.pop('values'))
    target_logits = tf.Variable(rng.normal(size=(5, 3, 4)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        out = vtrace.from_importance_weights(values=values, use_xla=use_xla, **inputs)
        vs_sum = tf.reduce_sum(out.vs)
        pg_sum = tf.reduce_sum(out.pg_advantages)
        logits_out = vtrace.from_logits(
            behaviour_policy_logits=tf.zeros((5, 3, 4)),
            target_policy_logits=target_logits,
            actions=tf.zeros((5, 3), tf.int32),
            discounts=inputs['discounts'],
            rewards=inputs['rewards'],
            values=values,
            bootstrap_value=inputs['bootstrap_value'],
            use_xla=use_xla,
        )
        logits_vs_sum = tf.reduce_sum(logits_out.vs)
        log_prob_sum = tf.reduce_sum(logits_out.target_action_log_probs)
    assert _no_gradient(tape.gradient(vs_sum, values))
    assert _no_gradient(tape.gradient(pg_sum, values))
    # The XLA path gives explicit zeros here, the graph path None.
    assert _no_gradient(tape.gradient(logits_vs_sum, target_logits))
    # The target log-probabilities, used by the policy-gradient loss, keep their gradient.
    grad = tape.gradient(log_prob_sum, target_logits)
    assert grad is not None and np.abs(grad.numpy()).sum() > 0


def test_xla_and_graph_paths_agree_inside_tf_function():
    rng = np.random.default_rng(4)
    inputs = {k: tf.constant(v) for k, v in _random_inputs(rng, (20, 8)).items()}

    @tf.function
    def both():
        return (
            vtrace.from_importance_weights(**inputs, use_xla=True),
            vtrace.from_importance_weights(**inputs, use_xla=False),
        )

    xla_out, graph_out = both()
    np.testing.assert_allclose(xla_out.vs.numpy(), graph_out.vs.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        xla_out.pg_advantages.numpy(), graph_out.pg_advantages.numpy(), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    'override, name',
    [
        ({'values': np.zeros((5,), np.float32)}, 'values'),
        ({'rewards': np.zeros((5, 3, 2), np.float32)}, 'rewards'),
        ({'discounts': np.zeros((5,), np.float32)}, 'discounts'),
        ({'bootstrap_value': np.zeros((5, 3), np.float32)}, 'bootstrap_value'),
        ({'log_rhos': np.zeros((5,), np.float32)}, 'log_rhos'),
    ],
)
def test_bad_ranks_raise_value_error_naming_the_argument(override, name):
    inputs = _random_inputs(np.random.default_rng(5), (5, 3))
    inputs.update(override)
    with pytest.raises(ValueError, match=name):
        vtrace.from_importance_weights(**inputs)


def test_from_logits_bad_ranks_raise():
    logits = np.zeros((5, 3, 4), np.float32)
    kwargs = dict(
        discounts=np.ones((5, 3), np.float32),
        rewards=np.ones((5, 3), np.float32),
        values=np.ones((5, 3), np.float32),
        bootstrap_value=np.ones((3,), np.float32),
    )
    with pytest.raises(ValueError, match='actions'):
        vtrace.from_logits(logits, logits, np.zeros((5, 3, 1), np.int32), **kwargs)
    with pytest.raises(ValueError, match='behaviour_policy_logits'):
        vtrace.from_logits(logits[0], logits, np.zeros((5, 3), np.int32), **kwargs)
    with pytest.raises(ValueError, match='target_policy_logits'):
        vtrace.from_logits(logits, logits[..., None], np.zeros((5, 3), np.int32), **kwargs)


def test_non_positive_clip_threshold_raises():
    inputs = _random_inputs(np.random.default_rng(6), (3, 2))
    with pytest.raises(ValueError, match='clip_rho_threshold'):
        vtrace.from_importance_weights(**inputs, clip_rho_threshold=0.0)


def test_gradient_tape_inside_tf_function_with_xla_recursion():
    """The learner's pattern: a tape inside a traced step around XLA-compiled V-trace."""
    rng = np.random.default_rng(7)
    inputs = _random_inputs(rng, (8, 4), 'random')
    values = tf.Variable(inputs.pop('values'))

    @tf.function
    def loss_and_grad():
        with tf.GradientTape() as tape:
            out = vtrace.from_importance_weights(values=values, **inputs)
            loss = 0.5 * tf.reduce_sum(tf.square(out.vs - values))
        return loss, tape.gradient(loss, values)

    loss, grad = loss_and_grad()
    expected_vs, _ = ground_truth(
        values=values.numpy(), clip_rho_threshold=1.0, clip_pg_rho_threshold=1.0, **inputs
    )
    # d/dV of 0.5 (vs - V)^2 with vs held fixed is (V - vs).
    np.testing.assert_allclose(grad.numpy(), values.numpy() - expected_vs, rtol=1e-4, atol=1e-4)
    assert np.isfinite(loss.numpy())


def test_log_prob_gradients_agree_between_xla_and_graph_paths():
    """The XLA path's closed-form log-probability gradient equals autodiff's."""
    rng = np.random.default_rng(8)
    behaviour = tf.Variable(rng.normal(size=(6, 3, 5)).astype(np.float32))
    target = tf.Variable(rng.normal(size=(6, 3, 5)).astype(np.float32))
    actions = rng.integers(0, 5, size=(6, 3)).astype(np.int32)
    inputs = _random_inputs(rng, (6, 3))
    del inputs['log_rhos']
    weights = [tf.constant(rng.normal(size=(6, 3)).astype(np.float32)) for _ in range(3)]
    grads = {}
    for use_xla in (True, False):
        with tf.GradientTape() as tape:
            out = vtrace.from_logits(behaviour, target, actions, use_xla=use_xla, **inputs)
            loss = (
                tf.reduce_sum(weights[0] * out.target_action_log_probs)
                + tf.reduce_sum(weights[1] * out.behaviour_action_log_probs)
                + tf.reduce_sum(weights[2] * out.log_rhos)
                + tf.reduce_sum(out.vs)
            )
        grads[use_xla] = tape.gradient(loss, [behaviour, target])
    for xla_grad, graph_grad in zip(grads[True], grads[False]):
        assert np.abs(graph_grad.numpy()).sum() > 0
        np.testing.assert_allclose(xla_grad.numpy(), graph_grad.numpy(), rtol=1e-5, atol=1e-6)
