"""Tests for scalable_agent2.learner: numpy V-trace reference, training, counter, checkpoints."""

import numpy as np
import pytest
import tensorflow as tf

from scalable_agent2 import config, learner, networks
from scalable_agent2.types import ActorOutput, AgentOutput, StepOutput, StepOutputInfo

T, B, A = 5, 3, 4
REPEATS = 4
FRAME_SHAPES = {'shallow': (36, 36, 4), 'deep': (12, 16, 3), 'mlp': (6,)}


def _batch(torso, seed=0):
    rng = np.random.default_rng(seed)
    shape = FRAME_SHAPES[torso]
    if torso == 'mlp':
        frame = rng.normal(size=(T + 1, B) + shape).astype(np.float32)
    else:
        frame = rng.integers(0, 256, size=(T + 1, B) + shape).astype(np.uint8)
    done = rng.random((T + 1, B)) < 0.25
    instructions = rng.choice(['go to the red ball', '', 'pick up the key'], size=(T + 1, B))
    env_outputs = StepOutput(
        reward=tf.constant(rng.normal(scale=2.0, size=(T + 1, B)), tf.float32),
        info=StepOutputInfo(tf.zeros([T + 1, B]), tf.zeros([T + 1, B], tf.int32)),
        done=tf.constant(done),
        observation=(tf.constant(frame), tf.constant(instructions)),
    )
    agent_outputs = AgentOutput(
        action=tf.constant(rng.integers(0, A, size=(T + 1, B)), tf.int32),
        policy_logits=tf.constant(rng.normal(size=(T + 1, B, A)), tf.float32),
        baseline=tf.constant(rng.normal(size=(T + 1, B)), tf.float32),
    )
    state = networks.snt.LSTMState(
        hidden=tf.constant(rng.normal(size=(B, 256)), tf.float32),
        cell=tf.constant(rng.normal(size=(B, 256)), tf.float32),
    )
    return ActorOutput(tf.fill([B], 'level'), state, env_outputs, agent_outputs)


def _learnable_batch(torso, seed):
    """A batch whose IMPALA loss is a true objective for a few steps.

    Rewards are all +1 and the behaviour policy almost never takes the logged action, so every
    rho is clipped to 1 and the V-trace targets are plain n-step returns well above the initial
    values: the advantages stay positive and both the policy and baseline terms can only fall.
    """
    batch = _batch(torso, seed)
    actions = batch.agent_outputs.action
    env_outputs = batch.env_outputs._replace(
        reward=tf.ones([T + 1, B]), done=tf.zeros([T + 1, B], tf.bool)
    )
    behaviour_logits = -20.0 * tf.one_hot(actions, A)
    return batch._replace(
        env_outputs=env_outputs,
        agent_outputs=batch.agent_outputs._replace(policy_logits=behaviour_logits),
    )


def _make(torso='shallow', use_instruction=False, **learner_kwargs):
    agent = networks.ImpalaAgent(
        config.AgentConfig(num_actions=A, torso=torso, use_instruction=use_instruction)
    )
    kwargs = dict(batch_size=B, unroll_length=T, num_action_repeats=REPEATS)
    kwargs.update(learner_kwargs)
    return learner.Learner(agent, config.LearnerConfig(**kwargs))


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_reference_losses(agent, batch, cfg):
    """The original's learner loss, written independently with a numpy V-trace."""
    out, _ = agent.unroll(batch.agent_outputs.action, batch.env_outputs, batch.agent_state)
    logits = out.policy_logits.numpy().astype(np.float64)
    values = out.baseline.numpy().astype(np.float64)
    bootstrap = values[-1]
    logits, values = logits[:-1], values[:-1]
    mu_logits = batch.agent_outputs.policy_logits.numpy()[1:].astype(np.float64)
    actions = batch.agent_outputs.action.numpy()[1:]
    rewards = np.clip(batch.env_outputs.reward.numpy()[1:], -1, 1)
    discounts = (~batch.env_outputs.done.numpy()[1:]) * cfg.discounting

    def chosen(lg):
        return np.take_along_axis(_np_log_softmax(lg), actions[..., None], -1)[..., 0]

    rhos = np.exp(chosen(logits) - chosen(mu_logits))
    clipped = np.minimum(1.0, rhos)
    values_tp1 = np.concatenate([values[1:], bootstrap[None]])
    deltas = clipped * (rewards + discounts * values_tp1 - values)
    acc = np.zeros(B)
    vs_minus_v = np.zeros_like(values)
    for t in reversed(range(T)):
        acc = deltas[t] + discounts[t] * clipped[t] * acc
        vs_minus_v[t] = acc
    vs = values + vs_minus_v
    vs_tp1 = np.concatenate([vs[1:], bootstrap[None]])
    pg_adv = clipped * (rewards + discounts * vs_tp1 - values)

    pg = np.sum(-chosen(logits) * pg_adv)
    base = cfg.baseline_cost * 0.5 * np.sum((vs - values) ** 2)
    pi_log = _np_log_softmax(logits)
    ent = cfg.entropy_cost * np.sum(np.exp(pi_log) * pi_log)
    return {
        'policy_gradient_loss': pg,
        'baseline_loss': base,
        'entropy_loss': ent,
        'total_loss': pg + base + ent,
        'mean_rho': rhos.mean(),
    }


@pytest.mark.parametrize('use_xla', [False, True])
def test_step_matches_numpy_reference(use_xla):
    lrn = _make(use_xla=use_xla, entropy_cost=0.01)
    batch = _batch('shallow', seed=1)
    lrn.build(batch)
    expected = _np_reference_losses(lrn.agent, batch, lrn._config)
    metrics = lrn.step(batch)
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name].numpy(), value, rtol=2e-4, atol=1e-4)


def test_training_lowers_loss_counts_frames_and_decays_lr(use_xla=False):
    # XLA-vs-graph agreement is covered by the tests below; one compile saved here.
    total_frames = 10 * B * T * REPEATS
    lrn = _make(use_xla=use_xla, learning_rate=0.001, total_environment_frames=total_frames)
    batch = _learnable_batch('shallow', seed=2)
    losses, rates = [], []
    for i in range(6):
        metrics = lrn.step(batch)
        assert np.isfinite(metrics['grad_norm'].numpy()) and metrics['grad_norm'] > 0
        assert int(metrics['num_environment_frames']) == (i + 1) * B * T * REPEATS
        losses.append(float(metrics['total_loss']))
        rates.append(float(metrics['learning_rate']))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    for v in lrn.agent.trainable_variables:
        assert np.all(np.isfinite(v.numpy())), v.name
    assert int(lrn.num_environment_frames.numpy()) == 6 * B * T * REPEATS
    # The rate used at step i is indexed by the frames before it.
    np.testing.assert_allclose(rates, [0.001 * (1 - i / 10) for i in range(6)], rtol=1e-5)
    np.testing.assert_allclose(float(lrn.learning_rate()), 0.001 * (1 - 6 / 10), rtol=1e-5)


@pytest.mark.parametrize('torso', ['shallow', pytest.param('deep', marks=pytest.mark.slow)])
def test_xla_and_graph_steps_agree_with_instructions(torso):
    batch = _batch(torso, seed=3)
    plain = _make(torso, use_instruction=True, use_xla=False, learning_rate=0.01)
    compiled = _make(torso, use_instruction=True, use_xla=True, learning_rate=0.01)
    plain.build(batch)
    compiled.build(batch)
    for src, dst in zip(plain.agent.trainable_variables, compiled.agent.trainable_variables):
        assert src.name == dst.name
        dst.assign(src)
    for _ in range(2):
        m_plain, m_compiled = plain.step(batch), compiled.step(batch)
        for name in m_plain:
            np.testing.assert_allclose(m_compiled[name], m_plain[name], rtol=1e-4, atol=1e-5)
    for src, dst in zip(plain.agent.trainable_variables, compiled.agent.trainable_variables):
        np.testing.assert_allclose(dst.numpy(), src.numpy(), atol=1e-5)


@pytest.mark.parametrize('agent_prebuilt', [False, True])
def test_checkpoint_restore_before_training_then_train(tmp_path, agent_prebuilt):
    batch1, batch2 = _batch('mlp', seed=4), _batch('mlp', seed=5)
    first = _make('mlp', use_xla=False, learning_rate=0.01, momentum=0.5)
    first.step(batch1)
    path = tf.train.Checkpoint(**first.checkpoint_state).save(str(tmp_path / 'ckpt'))

    agent = networks.ImpalaAgent(config.AgentConfig(num_actions=A, torso='mlp'))
    if agent_prebuilt:  # As the training loop does: one actor step creates the variables.
        step_input = tf.nest.map_structure(
            lambda x: x[0], (batch2.agent_outputs.action, batch2.env_outputs)
        )
        agent(step_input, agent.initial_state(B))
    second = learner.Learner(
        agent,
        config.LearnerConfig(
            batch_size=B,
            unroll_length=T,
            num_action_repeats=REPEATS,
            use_xla=True,
            learning_rate=0.01,
            momentum=0.5,
        ),
    )
    status = tf.train.Checkpoint(**second.checkpoint_state).restore(path)
    assert int(second.num_environment_frames.numpy()) == B * T * REPEATS
    if agent_prebuilt:  # Slots exist already and are restored at once.
        status.assert_consumed()
        for a, b in zip(first.optimizer.mom, second.optimizer.mom):
            np.testing.assert_allclose(b.numpy(), a.numpy())
    m_first, m_second = first.step(batch2), second.step(batch2)
    status.assert_existing_objects_matched()
    for name in m_first:
        np.testing.assert_allclose(m_second[name], m_first[name], rtol=1e-4, atol=1e-5)
    for opt_a, opt_b in [(first.optimizer.ms, second.optimizer.ms)]:
        for a, b in zip(opt_a, opt_b):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5)
    for a, b in zip(first.agent.trainable_variables, second.agent.trainable_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5)


def test_invalid_config_raises():
    agent = networks.ImpalaAgent(config.AgentConfig(num_actions=A, torso='mlp'))
    with pytest.raises(ValueError, match='reward_clipping'):
        learner.Learner(agent, config.LearnerConfig(reward_clipping='none'))


def test_xla_defaults_to_on_only_with_a_gpu():
    agent = networks.ImpalaAgent(config.AgentConfig(num_actions=3, torso='mlp'))
    has_gpu = bool(tf.config.list_physical_devices('GPU'))
    assert learner.Learner(agent, config.LearnerConfig())._use_xla == has_gpu
    assert learner.Learner(agent, config.LearnerConfig(use_xla=True))._use_xla
    assert not learner.Learner(agent, config.LearnerConfig(use_xla=False))._use_xla
