"""Tests for scalable_agent2.losses against numpy definitions of the original formulas."""

import numpy as np
import pytest
import tensorflow as tf

from scalable_agent2 import losses

T, B, A = 4, 3, 5


def _np_log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    return {
        'logits': rng.normal(size=(T, B, A)).astype(np.float32),
        'actions': rng.integers(0, A, size=(T, B)).astype(np.int32),
        'advantages': rng.normal(size=(T, B)).astype(np.float32),
        'vs': rng.normal(size=(T, B)).astype(np.float32),
        'values': rng.normal(size=(T, B)).astype(np.float32),
    }


def test_policy_gradient_loss_is_summed_cross_entropy_times_advantage(data):
    log_pi = _np_log_softmax(data['logits'].astype(np.float64))
    chosen = np.take_along_axis(log_pi, data['actions'][..., None], axis=-1)[..., 0]
    expected = np.sum(-chosen * data['advantages'])
    actual = losses.policy_gradient_loss(data['logits'], data['actions'], data['advantages'])
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-5)


def test_baseline_loss_is_half_sum_of_squares(data):
    adv = data['vs'] - data['values']
    np.testing.assert_allclose(
        losses.baseline_loss(adv).numpy(), 0.5 * np.sum(adv.astype(np.float64) ** 2), rtol=1e-5
    )


def test_entropy_loss_is_minus_summed_entropy(data):
    log_pi = _np_log_softmax(data['logits'].astype(np.float64))
    expected = np.sum(np.exp(log_pi) * log_pi)
    actual = losses.entropy_loss(data['logits'])
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-5)
    assert actual.numpy() < 0


def test_impala_loss_weights_and_gradients(data):
    logits = tf.Variable(data['logits'])
    values = tf.Variable(data['values'])
    advantages = tf.Variable(data['advantages'])
    vs = tf.Variable(data['vs'])
    with tf.GradientTape(persistent=True) as tape:
        loss = losses.impala_loss(
            logits, data['actions'], advantages, vs, values, baseline_cost=0.5, entropy_cost=0.01
        )
    pg = losses.policy_gradient_loss(data['logits'], data['actions'], data['advantages'])
    base = 0.5 * losses.baseline_loss(data['vs'] - data['values'])
    ent = 0.01 * losses.entropy_loss(data['logits'])
    np.testing.assert_allclose(loss.policy_gradient.numpy(), pg.numpy(), rtol=1e-6)
    np.testing.assert_allclose(loss.baseline.numpy(), base.numpy(), rtol=1e-6)
    np.testing.assert_allclose(loss.entropy.numpy(), ent.numpy(), rtol=1e-6)
    np.testing.assert_allclose(loss.total.numpy(), (pg + base + ent).numpy(), rtol=1e-6)
    # Targets and advantages carry no gradient; the baseline gradient is -cost * (vs - v).
    assert tape.gradient(loss.total, advantages) is None
    assert tape.gradient(loss.total, vs) is None
    np.testing.assert_allclose(
        tape.gradient(loss.total, values).numpy(), -0.5 * (data['vs'] - data['values']), rtol=1e-5
    )


def test_clip_rewards_abs_one():
    rewards = np.array([[-3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 7.0]], np.float32)
    np.testing.assert_allclose(
        losses.clip_rewards(rewards, 'abs_one').numpy(), np.clip(rewards, -1, 1)
    )


def test_clip_rewards_soft_asymmetric_known_values():
    rewards = np.array([-10.0, -5.0, 0.0, 1.0, 5.0, 100.0], np.float32)
    # 5 tanh(r / 5), negative values scaled by 0.3.
    expected = [
        -1.5 * np.tanh(2.0),
        -1.5 * np.tanh(1.0),
        0.0,
        5.0 * np.tanh(0.2),
        5.0 * np.tanh(1.0),
        5.0,
    ]
    np.testing.assert_allclose(
        losses.clip_rewards(rewards, 'soft_asymmetric').numpy(), expected, rtol=1e-6, atol=1e-6
    )


def test_clip_rewards_unknown_mode_raises():
    with pytest.raises(ValueError, match='unknown reward_clipping'):
        losses.clip_rewards(np.zeros([2], np.float32), 'clip_all')


def test_rank_check():
    with pytest.raises(ValueError, match='rank 3'):
        losses.entropy_loss(np.zeros([3, 4], np.float32))
