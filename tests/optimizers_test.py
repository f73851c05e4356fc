"""Tests for scalable_agent2.optimizers against TF1's RMSProp and Adam and polynomial_decay."""

import numpy as np
import pytest
import sonnet as snt
import tensorflow as tf

from scalable_agent2 import optimizers

NUM_STEPS = 5
LR, DECAY, EPS = 0.01, 0.9, 0.1


def _initial_values():
    rng = np.random.default_rng(42)
    return {
        'w': rng.normal(size=(4, 3)).astype(np.float32),
        'b': rng.normal(size=(3,)).astype(np.float32),
        'emb': rng.normal(size=(6, 3)).astype(np.float32),
    }


# Row 1 twice (duplicates are summed), rows 0/2/5 never touched.
_IDS = np.array([1, 3, 1, 4], np.int32)
_X = np.random.default_rng(7).normal(size=(4, 4)).astype(np.float32)


def _loss(w, b, emb):
    """A non-quadratic loss with a sparse (gather) gradient for `emb`."""
    h = tf.tanh(tf.matmul(_X, w) + b + tf.gather(emb, _IDS))
    return tf.reduce_sum(tf.square(h - 0.3)) + tf.reduce_sum(tf.sin(w))


def _tf1_trajectory(momentum=0.0, make_optimizer=None):
    graph = tf.Graph()
    with graph.as_default():
        init = _initial_values()
        variables = {
            k: tf.compat.v1.get_variable(k, initializer=v, use_resource=True)
            for k, v in init.items()
        }
        loss = _loss(variables['w'], variables['b'], variables['emb'])
        if make_optimizer is None:
            opt = tf.compat.v1.train.RMSPropOptimizer(LR, DECAY, momentum, EPS)
        else:
            opt = make_optimizer()
        train_op = opt.minimize(loss, var_list=list(variables.values()))
        trajectory = []
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(NUM_STEPS):
                sess.run(train_op)
                trajectory.append(sess.run(variables))
    return trajectory


def _tf2_trajectory(optimizer, compiled=False):
    init = _initial_values()
    variables = {k: tf.Variable(v, name=k) for k, v in init.items()}
    var_list = list(variables.values())

    def step():
        with tf.GradientTape() as tape:
            loss = _loss(variables['w'], variables['b'], variables['emb'])
        optimizer.apply(tape.gradient(loss, var_list), var_list)

    if compiled:
        if hasattr(optimizer, 'initialize'):
            optimizer.initialize(var_list)
        step = tf.function(step, jit_compile=True)
    trajectory = []
    for _ in range(NUM_STEPS):
        step()
        trajectory.append({k: v.numpy() for k, v in variables.items()})
    return trajectory


@pytest.mark.parametrize('momentum', [0.0, 0.9])
@pytest.mark.parametrize('compiled', [False, True])
def test_matches_tf1_rmsprop(momentum, compiled):
    expected = _tf1_trajectory(momentum)
    actual = _tf2_trajectory(optimizers.RMSProp(LR, DECAY, momentum, EPS), compiled)
    for step_expected, step_actual in zip(expected, actual):
        for name in step_expected:
            np.testing.assert_allclose(step_actual[name], step_expected[name], atol=1e-6)
    # Untouched embedding rows must not move (TF1's sparse update), touched ones must.
    init = _initial_values()['emb']
    np.testing.assert_array_equal(actual[-1]['emb'][[0, 2, 5]], init[[0, 2, 5]])
    assert np.all(np.abs(actual[-1]['emb'][[1, 3, 4]] - init[[1, 3, 4]]) > 1e-6)


def test_sonnet_rmsprop_differs_from_tf1():
    expected = _tf1_trajectory(0.0)
    sonnet = _tf2_trajectory(snt.optimizers.RMSProp(LR, DECAY, 0.0, EPS))
    diff = max(np.max(np.abs(sonnet[0][k] - expected[0][k])) for k in expected[0])
    assert diff > 1e-3


def test_slots_initial_values_and_checkpoint(tmp_path):
    var = tf.Variable(tf.ones([2, 3]))
    opt = optimizers.RMSProp(LR, DECAY, 0.5, EPS)
    opt.initialize([var])
    np.testing.assert_array_equal(opt.ms[0].numpy(), np.ones([2, 3]))
    np.testing.assert_array_equal(opt.mom[0].numpy(), np.zeros([2, 3]))
    opt.apply([tf.fill([2, 3], 2.0)], [var])
    path = tf.train.Checkpoint(opt=opt, var=var).save(str(tmp_path / 'ckpt'))

    var2 = tf.Variable(tf.zeros([2, 3]))
    opt2 = optimizers.RMSProp(LR, DECAY, 0.5, EPS)
    tf.train.Checkpoint(opt=opt2, var=var2).restore(path)
    opt2.initialize([var2])  # Deferred restoration fills the slots as they are created.
    np.testing.assert_allclose(opt2.ms[0].numpy(), opt.ms[0].numpy())
    np.testing.assert_allclose(opt2.mom[0].numpy(), opt.mom[0].numpy())
    np.testing.assert_allclose(var2.numpy(), var.numpy())


def test_apply_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match='must match'):
        optimizers.RMSProp(LR).apply([tf.ones([1])], [])


def test_callable_learning_rate_is_read_per_apply():
    lr = tf.Variable(0.0)
    var = tf.Variable([1.0])
    opt = optimizers.RMSProp(lambda: lr.read_value(), DECAY, 0.0, EPS)
    opt.apply([tf.constant([1.0])], [var])
    assert var.numpy()[0] == 1.0
    lr.assign(0.5)
    opt.apply([tf.constant([1.0])], [var])
    assert var.numpy()[0] < 1.0


@pytest.mark.parametrize('compiled', [False, True])
def test_matches_tf1_adam(compiled):
    expected = _tf1_trajectory(
        make_optimizer=lambda: tf.compat.v1.train.AdamOptimizer(LR, 0.8, 0.95, 1e-4)
    )
    actual = _tf2_trajectory(optimizers.Adam(LR, 0.8, 0.95, 1e-4), compiled)
    for step_expected, step_actual in zip(expected, actual):
        for name in step_expected:
            np.testing.assert_allclose(step_actual[name], step_expected[name], atol=1e-6)


def test_adam_slots_checkpoint(tmp_path):
    var = tf.Variable(tf.ones([2, 3]))
    opt = optimizers.Adam(LR)
    opt.apply([tf.fill([2, 3], 2.0)], [var])
    path = tf.train.Checkpoint(opt=opt, var=var).save(str(tmp_path / 'ckpt'))

    var2 = tf.Variable(tf.zeros([2, 3]))
    opt2 = optimizers.Adam(LR)
    tf.train.Checkpoint(opt=opt2, var=var2).restore(path)
    opt2.initialize([var2])
    assert opt2.step.numpy() == 1
    np.testing.assert_allclose(opt2.m[0].numpy(), opt.m[0].numpy())
    np.testing.assert_allclose(opt2.v[0].numpy(), opt.v[0].numpy())
    # The restored step count keeps the bias correction where it was.
    opt.apply([tf.fill([2, 3], -1.0)], [var])
    opt2.apply([tf.fill([2, 3], -1.0)], [var2])
    np.testing.assert_allclose(var2.numpy(), var.numpy())


@pytest.mark.parametrize('frames', [0, 1, 250, 999, 1000, 5000])
def test_linear_decay_matches_tf1_polynomial_decay(frames):
    expected = tf.compat.v1.train.polynomial_decay(
        0.00048, tf.constant(frames, tf.int64), 1000, 0.0, power=1.0
    )
    actual = optimizers.linear_decay(0.00048, tf.constant(frames, tf.int64), 1000)
    np.testing.assert_allclose(actual.numpy(), float(expected()), rtol=1e-6, atol=1e-12)


def test_linear_decay_rejects_bad_total():
    with pytest.raises(ValueError, match='total_frames'):
        optimizers.linear_decay(0.1, tf.constant(0, tf.int64), 0)
