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
