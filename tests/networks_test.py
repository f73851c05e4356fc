"""Tests for scalable_agent2.networks: shapes, unroll == steps, LSTM resets, instructions."""

import numpy as np
import pytest
import sonnet as snt
import tensorflow as tf

from scalable_agent2 import config, networks
from scalable_agent2.types import StepOutput, StepOutputInfo

NUM_ACTIONS = 4
INSTRUCTIONS = ['go to the red ball', '', 'pick  up   the key', 'a']

SUITES = {
    # torso: (observation shape, dtype)
    'deep': ((24, 32, 3), np.uint8),
    'shallow': ((36, 36, 4), np.uint8),
    'mlp': ((5,), np.float32),
}


def _env_outputs(leading, torso, seed=0, done=None):
    rng = np.random.default_rng(seed)
    shape, dtype = SUITES[torso]
    if dtype == np.uint8:
        frame = rng.integers(0, 256, size=leading + shape).astype(np.uint8)
    else:
        frame = rng.normal(size=leading + shape).astype(np.float32)
    if done is None:
        done = np.zeros(leading, bool)
    instruction = rng.choice(INSTRUCTIONS, size=leading)
    return StepOutput(
        reward=tf.constant(rng.normal(scale=2.0, size=leading), tf.float32),
        info=StepOutputInfo(tf.zeros(leading), tf.zeros(leading, tf.int32)),
        done=tf.constant(done),
        observation=(tf.constant(frame), tf.constant(instruction)),
    )


def _random_state(agent, batch, seed):
    rng = np.random.default_rng(seed)
    size = agent.config.core_size
    return snt.LSTMState(
        hidden=tf.constant(rng.normal(size=(batch, size)), tf.float32),
        cell=tf.constant(rng.normal(size=(batch, size)), tf.float32),
    )


@pytest.mark.parametrize('torso', ['deep', 'shallow', 'mlp'])
@pytest.mark.parametrize('use_instruction', [False, True])
def test_output_shapes(torso, use_instruction):
    t, b = 3, 2
    agent = networks.ImpalaAgent(
        config.AgentConfig(num_actions=NUM_ACTIONS, torso=torso, use_instruction=use_instruction)
    )
    env_outputs = _env_outputs((t, b), torso)
    actions = tf.zeros([t, b], tf.int32)
    assert not agent.built
    out, state = agent.unroll(actions, env_outputs, agent.initial_state(b))
    assert agent.built
    assert out.action.shape == (t, b) and out.action.dtype == tf.int32
    assert out.policy_logits.shape == (t, b, NUM_ACTIONS)
    assert out.baseline.shape == (t, b) and out.baseline.dtype == tf.float32
    assert state.hidden.shape == (b, 256) and state.cell.shape == (b, 256)
    assert np.all((out.action.numpy() >= 0) & (out.action.numpy() < NUM_ACTIONS))

    step_out, step_state = agent(
        (actions[0], tf.nest.map_structure(lambda x: x[0], env_outputs)), agent.initial_state(b)
    )
    assert step_out.action.shape == (b,)
    assert step_out.policy_logits.shape == (b, NUM_ACTIONS)
    assert step_out.baseline.shape == (b,)
    assert step_state.hidden.shape == (b, 256)
    names = ' '.join(v.name for v in agent.trainable_variables)
    assert ('instruction_encoder' in names) == use_instruction


@pytest.mark.parametrize('torso,use_instruction', [('shallow', True), ('mlp', False)])
def test_unroll_equals_repeated_steps(torso, use_instruction):
    t, b = 6, 3
    agent = networks.ImpalaAgent(
        config.AgentConfig(num_actions=NUM_ACTIONS, torso=torso, use_instruction=use_instruction)
    )
    done = np.zeros((t, b), bool)
    done[0, 0] = True  # Reset on the very first step.
    done[3, 1] = True  # And in the middle.
    done[4, 1] = True  # Twice in a row.
    env_outputs = _env_outputs((t, b), torso, seed=1, done=done)
    actions = tf.constant(np.random.default_rng(2).integers(0, NUM_ACTIONS, (t, b)), tf.int32)
    start = _random_state(agent, b, seed=3)

    unrolled, final = agent.unroll(actions, env_outputs, start)
    state = start
    for i in range(t):
        step_out, state = agent(
            (actions[i], tf.nest.map_structure(lambda x, i=i: x[i], env_outputs)), state
        )
        np.testing.assert_allclose(step_out.policy_logits, unrolled.policy_logits[i], atol=1e-5)
        np.testing.assert_allclose(step_out.baseline, unrolled.baseline[i], atol=1e-5)
    np.testing.assert_allclose(state.hidden, final.hidden, atol=1e-5)
    np.testing.assert_allclose(state.cell, final.cell, atol=1e-5)


def test_state_reset_exactly_where_done():
    t, b, k = 5, 2, 2
    agent = networks.ImpalaAgent(config.AgentConfig(num_actions=NUM_ACTIONS, torso='mlp'))
    done = np.zeros((t, b), bool)
    done[k, 0] = True  # Only batch entry 0 resets, before consuming step k.
    env_outputs = _env_outputs((t, b), 'mlp', seed=4, done=done)
    actions = tf.zeros([t, b], tf.int32)
    out_a, _ = agent.unroll(actions, env_outputs, _random_state(agent, b, seed=5))
    out_b, _ = agent.unroll(actions, env_outputs, _random_state(agent, b, seed=6))
    logits_a, logits_b = out_a.policy_logits.numpy(), out_b.policy_logits.numpy()
    # Before the reset the start state matters; from step k on, entry 0 forgets it...
    assert np.max(np.abs(logits_a[:k, 0] - logits_b[:k, 0])) > 1e-4
    np.testing.assert_allclose(logits_a[k:, 0], logits_b[k:, 0], atol=1e-6)
    # ...and equals an unroll of the suffix from the initial (zero) state.
    suffix = tf.nest.map_structure(lambda x: x[k:], env_outputs)
    out_zero, _ = agent.unroll(actions[k:], suffix, agent.initial_state(b))
    np.testing.assert_allclose(logits_a[k:, 0], out_zero.policy_logits[:, 0], atol=1e-6)
    # Entry 1 never resets.
    assert np.max(np.abs(logits_a[k:, 1] - logits_b[k:, 1])) > 1e-4


def test_actions_follow_logits():
    t, b = 3, 4
    agent = networks.ImpalaAgent(config.AgentConfig(num_actions=NUM_ACTIONS, torso='mlp'))
    env_outputs = _env_outputs((t, b), 'mlp', seed=7)
    agent.unroll(tf.zeros([t, b], tf.int32), env_outputs, agent.initial_state(b))
    head = agent._policy_logits  # A near-deterministic policy: huge bias on action 2.
    head.w.assign(tf.zeros_like(head.w))
    head.b.assign(tf.one_hot(2, NUM_ACTIONS) * 100.0)
    out, _ = agent.unroll(tf.zeros([t, b], tf.int32), env_outputs, agent.initial_state(b))
    np.testing.assert_array_equal(out.action.numpy(), np.full((t, b), 2))
    # A uniform policy samples every action.
    head.b.assign(tf.zeros(NUM_ACTIONS))
    many = tf.nest.map_structure(lambda x: tf.repeat(x, 50, axis=1), env_outputs)
    out, _ = agent.unroll(tf.zeros([t, b * 50], tf.int32), many, agent.initial_state(b * 50))
    assert set(np.unique(out.action.numpy())) == set(range(NUM_ACTIONS))


def test_tokenize_splits_on_spaces_and_hashes():
    tokens = networks.tokenize_instruction(tf.constant([['go to  red', ''], ['a', 'b c']]))
    assert tokens.buckets.shape[:2] == (2, 2)
    assert tokens.buckets.shape[2] % 8 == 0
    np.testing.assert_array_equal(tokens.lengths.numpy(), [[3, 0], [1, 2]])
    expected = tf.strings.to_hash_bucket_fast(['go', 'to', 'red'], 1000).numpy()
    np.testing.assert_array_equal(tokens.buckets[0, 0, :3].numpy(), expected)


def test_instruction_encoder_padding_order_and_empty():
    encoder = networks.InstructionEncoder()
    batch = networks.tokenize_instruction(tf.constant(['a b', 'b a', 'x y z w v u t s r q', '']))
    alone = networks.tokenize_instruction(tf.constant(['a b']))
    out = encoder(batch).numpy()
    assert out.shape == (4, 64)
    # Trailing padding does not change the last valid output.
    np.testing.assert_allclose(out[0], encoder(alone).numpy()[0], atol=1e-6)
    assert np.max(np.abs(out[0] - out[1])) > 1e-4  # Word order matters.
    np.testing.assert_array_equal(out[3], np.zeros(64))  # Empty instruction -> zeros.
    empty = encoder(networks.tokenize_instruction(tf.constant(['', ''])))
    np.testing.assert_array_equal(empty.numpy(), np.zeros((2, 64)))


@pytest.mark.parametrize('torso', ['deep', 'shallow'])
def test_uint8_frames_scaled_to_unit_interval(torso):
    module = networks.make_torso(torso)
    frame = np.random.default_rng(8).integers(0, 256, size=(2,) + SUITES[torso][0])
    from_uint8 = module(tf.constant(frame, tf.uint8))
    from_float = module(tf.constant(frame / 255.0, tf.float32))
    assert from_uint8.shape == (2, 256)
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-5)


def test_deep_torso_architecture():
    torso = networks.DeepTorso()
    out = torso(tf.zeros([1, 72, 96, 3], tf.uint8))
    assert out.shape == (1, 256)
    kernels = sorted(
        (v.name, tuple(v.shape)) for v in torso.trainable_variables if v.shape.rank == 4
    )
    shapes = [s for _, s in kernels]
    # 3 sections x (1 + 2 blocks x 2) convs of 3x3.
    assert len(shapes) == 15 and all(s[:2] == (3, 3) for s in shapes)
    assert sorted(s[3] for s in shapes) == [16] * 5 + [32] * 10
    # 72x96 -> 36x48 -> 18x24 -> 9x12, 32 channels, into linear 256.
    linear = [v for v in torso.trainable_variables if v.shape.rank == 2]
    assert linear[0].shape == (9 * 12 * 32, 256)


def test_shallow_torso_architecture():
    torso = networks.ShallowTorso()
    torso(tf.zeros([1, 84, 84, 4], tf.uint8))
    shapes = sorted(tuple(v.shape) for v in torso.trainable_variables if v.shape.rank > 1)
    # 84 -> 20 (8x8/4 VALID) -> 9 (4x4/2 VALID).
    assert shapes == [(4, 4, 16, 32), (8, 8, 4, 16), (9 * 9 * 32, 256)]


def test_unknown_torso_raises():
    with pytest.raises(ValueError, match='unknown torso'):
        networks.make_torso('resnet50')
    with pytest.raises(ValueError, match='torso'):
        networks.ImpalaAgent(config.AgentConfig(num_actions=3, torso='resnet50'))


def test_unroll_rejects_bad_action_rank():
    agent = networks.ImpalaAgent(config.AgentConfig(num_actions=3, torso='mlp'))
    with pytest.raises(ValueError, match=r'\[T, B\]'):
        agent.unroll(tf.zeros([2], tf.int32), _env_outputs((2,), 'mlp'), agent.initial_state(2))


def test_unroll_with_unknown_time_dimension_matches_static():
    t, b = 4, 2
    agent = networks.ImpalaAgent(config.AgentConfig(num_actions=NUM_ACTIONS, torso='mlp'))
    done = np.zeros((t, b), bool)
    done[2, 1] = True
    env_outputs = _env_outputs((t, b), 'mlp', seed=9, done=done)
    actions = tf.zeros([t, b], tf.int32)
    start = _random_state(agent, b, seed=10)
    static, static_state = agent.unroll(actions, env_outputs, start)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, b], tf.int32),
            tf.TensorSpec([None, b], tf.float32),
            tf.TensorSpec([None, b], tf.bool),
            tf.TensorSpec([None, b, 5], tf.float32),
        ]
    )
    def dynamic(actions, reward, done, frame):
        eo = env_outputs._replace(reward=reward, done=done, observation=(frame, ()))
        return agent.unroll(actions, eo, start)

    out, state = dynamic(actions, env_outputs.reward, env_outputs.done, env_outputs.observation[0])
    np.testing.assert_allclose(out.policy_logits, static.policy_logits, atol=1e-5)
    np.testing.assert_allclose(out.baseline, static.baseline, atol=1e-5)
    np.testing.assert_allclose(state.hidden, static_state.hidden, atol=1e-5)


def test_feed_forward_agent_ignores_the_core_state_and_the_past():
    """--nouse_lstm: each step's outputs depend on that step's inputs alone; no LSTM weights."""
    t, b = 4, 3
    agent = networks.ImpalaAgent(
        config.AgentConfig(num_actions=NUM_ACTIONS, torso='shallow', use_lstm=False)
    )
    env_outputs = _env_outputs((t, b), 'shallow', seed=3)
    actions = tf.constant(np.random.default_rng(0).integers(0, NUM_ACTIONS, (t, b)), tf.int32)
    state = _random_state(agent, b, seed=1)
    out, new_state = agent.unroll(actions, env_outputs, state)
    assert out.policy_logits.shape == (t, b, NUM_ACTIONS)
    tf.nest.map_structure(np.testing.assert_array_equal, new_state, state)
    assert not any('lstm' in v.name for v in agent.trainable_variables)
    # The same inputs one step at a time, from another state, give the same outputs.
    for i in range(t):
        step_inputs = tf.nest.map_structure(lambda x, i=i: x[i : i + 1], (actions, env_outputs))
        step_out, _ = agent.unroll(*step_inputs, _random_state(agent, b, seed=10 + i))
        np.testing.assert_allclose(step_out.policy_logits[0], out.policy_logits[i], atol=1e-5)
        np.testing.assert_allclose(step_out.baseline[0], out.baseline[i], atol=1e-5)
    # And the frame matters.
    other = env_outputs._replace(observation=_env_outputs((t, b), 'shallow', seed=4).observation)
    moved, _ = agent.unroll(actions, other, state)
    assert np.abs(moved.policy_logits.numpy() - out.policy_logits.numpy()).max() > 1e-4


@pytest.mark.parametrize(
    'kernel,stride,shape,dtype',
    [
        (8, 4, (84, 84, 4), np.uint8),  # The shallow torso's first convolution, on frames.
        (8, 4, (37, 41, 3), np.float32),  # Rows and columns the kernel never reaches.
        (4, 2, (20, 20, 16), np.float32),  # Its second convolution.
        (4, 2, (9, 12, 5), np.float32),
    ],
)
def test_strided_conv_matches_sonnet_forward_and_gradients(kernel, stride, shape, dtype):
    """Forward and gradients (weights, bias and a float input) match Sonnet's convolution."""
    rng = np.random.default_rng(5)
    conv = snt.Conv2D(
        16, kernel, stride=stride, padding='VALID', b_init=snt.initializers.RandomNormal()
    )
    x = rng.integers(0, 256, (6, *shape)).astype(dtype)
    if dtype == np.float32:
        x /= 255.0
    x = tf.constant(x)
    as_float = tf.cast(x, tf.float32) / 255.0 if dtype == np.uint8 else x
    upstream = tf.constant(rng.normal(size=(6, *conv(as_float).shape[1:])), tf.float32)
    results = []
    for fn in (
        lambda: conv(as_float),
        lambda: networks.strided_conv(conv, x, stride=stride),
    ):
        with tf.GradientTape() as tape:
            tape.watch(as_float)
            out = fn()
            loss = tf.reduce_sum(out * upstream)
        sources = [conv.w, conv.b] + ([as_float] if dtype == np.float32 else [])
        results.append((out, *tape.gradient(loss, sources)))
    assert len(results[1]) == len(results[0])
    for reference, fast in zip(*results):
        # Sums of thousands of products: float rounding, relative to the largest entry.
        scale = np.abs(reference).max()
        np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=1e-6 * scale)


def test_strided_conv_rejects_a_kernel_not_a_multiple_of_the_stride():
    conv = snt.Conv2D(4, 5, stride=2, padding='VALID')
    with pytest.raises(ValueError, match='not a multiple of the stride'):
        networks.strided_conv(conv, tf.zeros([1, 9, 9, 1]), stride=2)


@pytest.mark.parametrize('dtype', [tf.uint8, tf.float32])
def test_space_to_depth_and_back_match_tensorflows_ops(dtype):
    x = tf.cast(tf.reshape(tf.range(2 * 8 * 12 * 3), [2, 8, 12, 3]) % 251, dtype)
    blocks = networks.space_to_depth(x, 4)
    np.testing.assert_array_equal(blocks, tf.nn.space_to_depth(x, 4))
    np.testing.assert_array_equal(networks.depth_to_space(blocks, 4), x)


def test_unroll_lstm_equals_sonnet_steps_with_resets():
    """Outputs, final state and gradients match snt.LSTM called step by step."""
    t, b, d, h = 5, 3, 7, 8
    rng = np.random.default_rng(6)
    lstm = snt.LSTM(h, b_init=snt.initializers.RandomNormal())
    inputs = tf.constant(rng.normal(size=(t, b, d)), tf.float32)
    reset = tf.constant(rng.random((t, b)) < 0.3)
    start = snt.LSTMState(*(tf.constant(rng.normal(size=(b, h)), tf.float32) for _ in range(2)))
    lstm(inputs[0], start)

    def reference():
        state, outputs = start, []
        for i in range(t):
            state = tf.nest.map_structure(
                lambda x, i=i: tf.where(reset[i][:, None], tf.zeros_like(x), x), state
            )
            out, state = lstm(inputs[i], state)
            outputs.append(out)
        return tf.stack(outputs), state

    results = []
    for fn in (reference, lambda: networks.unroll_lstm(lstm, inputs, reset, start)):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs, state = fn()
            loss = tf.reduce_sum(outputs * tf.range(1.0, h + 1)) + tf.reduce_sum(state.cell)
        grads = tape.gradient(loss, [inputs, *lstm.trainable_variables])
        results.append((outputs, state.hidden, state.cell, *grads))
    for reference_value, fast in zip(*results):
        scale = np.abs(reference_value).max()
        np.testing.assert_allclose(fast, reference_value, rtol=1e-5, atol=1e-6 * scale)


def test_agent_variables_keep_their_checkpoint_names():
    """The faster maths keeps the variables (names and shapes) that checkpoints hold."""
    agent = networks.ImpalaAgent(config.AgentConfig(num_actions=6, torso='shallow'))
    env_outputs = _env_outputs((2, 1), 'shallow')
    agent.unroll(tf.zeros([2, 1], tf.int32), env_outputs, agent.initial_state(1))
    names = {(v.name, tuple(v.shape)) for v in agent.trainable_variables}
    assert names == {
        ('impala_agent/shallow_torso/conv_1/w:0', (8, 8, 4, 16)),
        ('impala_agent/shallow_torso/conv_1/b:0', (16,)),
        ('impala_agent/shallow_torso/conv_2/w:0', (4, 4, 16, 32)),
        ('impala_agent/shallow_torso/conv_2/b:0', (32,)),
        ('impala_agent/shallow_torso/linear/w:0', (3 * 3 * 32, 256)),
        ('impala_agent/shallow_torso/linear/b:0', (256,)),
        ('impala_agent/core/lstm/w_i:0', (256 + 1 + 6, 1024)),
        ('impala_agent/core/lstm/w_h:0', (256, 1024)),
        ('impala_agent/core/lstm/b:0', (1024,)),
        ('impala_agent/policy_logits/w:0', (256, 6)),
        ('impala_agent/policy_logits/b:0', (6,)),
        ('impala_agent/baseline/w:0', (256, 1)),
        ('impala_agent/baseline/b:0', (1,)),
    }


def test_orthogonal_initializer_gives_orthogonal_torso_and_a_near_uniform_policy():
    agent = networks.ImpalaAgent(
        config.AgentConfig(num_actions=6, torso='shallow', use_lstm=False, initializer='orthogonal')
    )
    env_outputs = _env_outputs((3, 2), 'shallow', seed=2)
    out, _ = agent.unroll(tf.zeros([3, 2], tf.int32), env_outputs, agent.initial_state(2))
    weights = {v.name.split('/', 1)[1]: v.numpy() for v in agent.trainable_variables}
    for name, gain in [
        ('shallow_torso/conv_1/w:0', 2.0),
        ('shallow_torso/conv_2/w:0', 2.0),
        ('shallow_torso/linear/w:0', 2.0),
        ('policy_logits/w:0', 1e-4),
        ('baseline/w:0', 1.0),
    ]:
        w = weights[name].reshape(-1, weights[name].shape[-1])
        np.testing.assert_allclose(w.T @ w, gain * np.eye(w.shape[1]), atol=1e-5 * max(gain, 1))
    assert all(not w.any() for name, w in weights.items() if name.endswith('/b:0'))
    # A policy head of gain 0.01 starts the policy near uniform whatever the frame.
    assert np.abs(out.policy_logits.numpy()).max() < 0.05
    default = networks.ImpalaAgent(config.AgentConfig(num_actions=6, torso='shallow'))
    default.unroll(tf.zeros([3, 2], tf.int32), env_outputs, default.initial_state(2))
    w = [v for v in default.trainable_variables if 'policy_logits/w' in v.name][0].numpy()
    assert np.abs(w.T @ w - np.eye(6)).max() > 0.01  # Sonnet's default is not orthogonal.


def test_unknown_initializer_raises():
    with pytest.raises(config.UsageError, match='initializer'):
        config.AgentConfig(num_actions=3, torso='mlp', initializer='xavier').validate()


def test_torso_layer_norm_bounds_what_the_core_reads_whatever_the_frame_scale():
    """--torso_layer_norm: the torso output is normalised per step (learned scale 1, offset 0
    at the start), so scaling the torso's last layer does not scale the core's input."""
    agent = networks.ImpalaAgent(
        config.AgentConfig(num_actions=NUM_ACTIONS, torso='shallow', torso_layer_norm=True)
    )
    env_outputs = _env_outputs((2, 3), 'shallow', seed=4)
    actions = tf.zeros([2, 3], tf.int32)
    out, _ = agent.unroll(actions, env_outputs, agent.initial_state(3))
    assert any('torso_norm' in v.name for v in agent.trainable_variables)
    for v in agent.trainable_variables:
        if 'shallow_torso/linear' in v.name:
            v.assign(v * 50.0)
    scaled, _ = agent.unroll(actions, env_outputs, agent.initial_state(3))
    np.testing.assert_allclose(scaled.policy_logits, out.policy_logits, rtol=1e-3, atol=1e-4)
