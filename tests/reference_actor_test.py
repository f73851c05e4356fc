"""Tests for the reference one-environment actor loop (tests/reference_actor.py): T+1 entries,
persistence between unrolls, alignment, restarts; stacking its unrolls (`actor.stack_unrolls`)."""

import threading

import numpy as np
import pytest
import tensorflow as tf

from scalable_agent2 import actor, builder, config, learner, networks, policy
from scalable_agent2.types import AgentOutput
from tests.fakes import NUM_ACTIONS, CountingEnv
from tests.reference_actor import ReferenceActor


class RecordingPolicy:
    """Deterministic numpy policy; the state counts calls. Records its inputs."""

    def __init__(self):
        self.calls = []

    def __call__(self, last_action, env_output, state):
        assert last_action.shape == (1,) and last_action.dtype == np.int32
        assert env_output.observation[0].shape == (1, 2)
        assert env_output.observation[1].shape == (1,)
        self.calls.append(
            (int(last_action[0]), float(env_output.observation[0][0, 0]), state.copy())
        )
        t = env_output.observation[0][0, 0]
        action = np.array([int(t * 7 + state[0, 0]) % NUM_ACTIONS], np.int32)
        logits = np.full([1, NUM_ACTIONS], t, np.float32)
        return AgentOutput(action, logits, np.array([t / 2], np.float32)), state + 1


def test_unroll_has_t_plus_one_entries_and_persists_between_unrolls():
    env, policy, T = CountingEnv(), RecordingPolicy(), 5
    a = ReferenceActor(env, 'level', policy, np.zeros([1, 2], np.float32), T)
    u1, u2, u3 = a.unroll(), a.unroll(), a.unroll()
    for u in (u1, u2, u3):
        assert u.level_name == 'level'
        assert u.env_outputs.reward.shape == (T + 1,)
        assert u.env_outputs.observation[0].shape == (T + 1, 2)
        assert u.agent_outputs.policy_logits.shape == (T + 1, NUM_ACTIONS)
        assert u.agent_outputs.action.dtype == np.int32
    # First unroll starts from env.initial() and an all-zero agent output.
    assert u1.env_outputs.done[0] and u1.env_outputs.observation[0][0, 0] == 0
    assert u1.agent_outputs.action[0] == 0 and np.all(u1.agent_outputs.policy_logits[0] == 0)
    # Each unroll starts with the previous unroll's last entry.
    for prev, nxt in ((u1, u2), (u2, u3)):
        for x, y in zip(tf.nest.flatten(prev.env_outputs), tf.nest.flatten(nxt.env_outputs)):
            assert np.array_equal(np.asarray(x[-1]), np.asarray(y[0]))
        for x, y in zip(tf.nest.flatten(prev.agent_outputs), tf.nest.flatten(nxt.agent_outputs)):
            assert np.array_equal(x[-1], y[0])
    # The frame counter runs on without gaps or repeats: 0..T, T..2T, 2T..3T.
    frames = [u.env_outputs.observation[0][:, 0] for u in (u1, u2, u3)]
    for k, f in enumerate(frames):
        np.testing.assert_array_equal(f, np.arange(k * T, (k + 1) * T + 1))
    # Agent state at an unroll's start = state after the previous unroll's last step.
    # The probe call (zero agent output) does not advance the state.
    np.testing.assert_array_equal(u1.agent_state, [[0, 0]])
    np.testing.assert_array_equal(u2.agent_state, [[T, T]])
    np.testing.assert_array_equal(u3.agent_state, [[2 * T, 2 * T]])


def test_alignment_of_actions_and_env_outputs():
    env, policy, T = CountingEnv(episode_length=3), RecordingPolicy(), 4
    a = ReferenceActor(env, 'level', policy, np.zeros([1, 1], np.float32), T)
    unrolls = [a.unroll() for _ in range(3)]
    actions = np.concatenate([u.agent_outputs.action[1:] for u in unrolls])
    # agent_outputs.action[t] is the action that produced env_outputs[t].
    np.testing.assert_array_equal(actions, env.actions)
    for u in unrolls:
        np.testing.assert_array_equal(
            u.env_outputs.observation[0][1:, 1], u.agent_outputs.action[1:]
        )
        # agent_outputs[t] was computed from env_outputs[t-1] (logits = its frame counter).
        np.testing.assert_array_equal(
            u.agent_outputs.policy_logits[1:, 0], u.env_outputs.observation[0][:-1, 0]
        )
    # The policy's last-action input is the previous step's action (0 at the very start).
    calls = policy.calls[1:]  # Skip the probe call.
    np.testing.assert_array_equal([c[0] for c in calls], np.concatenate([[0], env.actions[:-1]]))
    # Episode bookkeeping passes through: done every 3 steps, return of the ended episode.
    done = np.concatenate([u.env_outputs.done[1:] for u in unrolls])
    np.testing.assert_array_equal(np.nonzero(done)[0], [2, 5, 8, 11])
    returns = np.concatenate([u.env_outputs.info.episode_return[1:] for u in unrolls])
    expected = [sum(np.asarray(env.actions[i - 2 : i + 1]) + 0.5) for i in (2, 5, 8, 11)]
    np.testing.assert_allclose(returns[done], expected)


def test_stack_unrolls_is_time_major():
    T, B = 3, 4
    unrolls = []
    for b in range(B):
        a = ReferenceActor(
            CountingEnv(), f'level_{b}', RecordingPolicy(), np.full([1, 2], b, np.float32), T
        )
        unrolls.append(a.unroll())
    batch = actor.stack_unrolls(unrolls)
    assert list(batch.level_name) == [f'level_{b}' for b in range(B)]
    assert batch.agent_state.shape == (B, 2)
    np.testing.assert_array_equal(batch.agent_state[:, 0], np.arange(B))
    assert batch.env_outputs.observation[0].shape == (T + 1, B, 2)
    assert batch.env_outputs.observation[1].shape == (T + 1, B)
    assert batch.agent_outputs.policy_logits.shape == (T + 1, B, NUM_ACTIONS)
    for b in range(B):
        np.testing.assert_array_equal(
            batch.agent_outputs.action[:, b], unrolls[b].agent_outputs.action
        )
        np.testing.assert_array_equal(batch.env_outputs.done[:, b], unrolls[b].env_outputs.done)
    # Strings convert to a tf.string tensor (what the learner receives).
    assert tf.convert_to_tensor(batch.env_outputs.observation[1]).dtype == tf.string
    assert tf.convert_to_tensor(batch.level_name).dtype == tf.string
    with pytest.raises(ValueError, match='at least one'):
        actor.stack_unrolls([])


def test_actors_in_threads_with_the_real_agent_and_dynamic_batching():
    """Several actor threads share one batched agent; their unrolls feed a learner-shaped batch."""
    tf.random.set_seed(0)
    agent = networks.ImpalaAgent(
        config.AgentConfig(num_actions=NUM_ACTIONS, torso='mlp', core_size=8, use_instruction=True)
    )
    builder.create_agent_variables(agent, CountingEnv().observation_spec)
    batched = policy.make_batched_policy(agent, timeout_ms=5)
    initial = tf.nest.map_structure(np.asarray, agent.initial_state(1))
    T, n = 6, 4
    actors = [ReferenceActor(CountingEnv(), f'l{i}', batched, initial, T) for i in range(n)]
    results = [None] * n

    def run(i):
        results[i] = [actors[i].unroll() for _ in range(2)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
            assert not t.is_alive()
    finally:
        batched.close()
    batch = actor.stack_unrolls([r[1] for r in results])
    assert batch.agent_outputs.policy_logits.shape == (T + 1, n, NUM_ACTIONS)
    assert batch.agent_state.hidden.shape == (n, 8)
    # The recorded behaviour logits are what the agent computes on the same inputs and state.
    u = results[0][0]
    state = tf.nest.map_structure(tf.convert_to_tensor, u.agent_state)
    for t in range(1, T + 1):
        env_output = policy.batch_env_output(
            tf.nest.map_structure(lambda x, t=t: x[t - 1], u.env_outputs)
        )
        out, state = agent((u.agent_outputs.action[t - 1 : t], env_output), state)
        np.testing.assert_allclose(
            out.policy_logits[0], u.agent_outputs.policy_logits[t], rtol=1e-5, atol=1e-5
        )
    # The stacked batch (with instruction strings) is what the learner trains on.
    lc = config.LearnerConfig(batch_size=n, unroll_length=T, num_action_repeats=1, use_xla=False)
    the_learner = learner.Learner(agent, lc)
    metrics = the_learner.step(batch)
    assert np.isfinite(metrics['total_loss'].numpy())
    assert the_learner.num_environment_frames.numpy() == n * T


def test_policy_gets_only_what_the_agent_reads():
    seen = []

    def policy(last_action, env_output, state):
        seen.append(env_output)
        return AgentOutput(
            np.zeros([1], np.int32), np.zeros([1, NUM_ACTIONS]), np.zeros([1])
        ), state

    for use_instruction in (False, True):
        seen.clear()
        a = ReferenceActor(
            CountingEnv(), 'l', policy, np.zeros([1]), 2, use_instruction=use_instruction
        )
        u = a.unroll()
        assert all(e.info == () for e in seen)
        if use_instruction:
            assert [e.observation[1][0] for e in seen[1:]] == ['instr 0', 'instr 1']
        else:
            assert all(e.observation[1] == () for e in seen)
        # The unroll keeps everything.
        assert list(u.env_outputs.observation[1]) == ['instr 0', 'instr 1', 'instr 2']
        np.testing.assert_array_equal(u.env_outputs.info.episode_step, [0, 1, 2])


def _cartpole_policy(last_action, env_output, state):
    del last_action
    action = np.array([int(env_output.observation[0][0, 2] > 0)], np.int32)
    return AgentOutput(action, np.zeros([1, 2], np.float32), np.zeros([1], np.float32)), state + 1


def _cartpole(seed):
    from scalable_agent2 import environments

    return environments.create_environment(
        'gym/CartPole-v1', config.EnvironmentConfig(num_action_repeats=1), seed, False
    )


def test_a_killed_environment_is_recreated_and_the_unroll_restarts():
    import os
    import signal

    seeds = []

    def recreate(n):
        seeds.append(n)
        return _cartpole(100 + n)

    first = _cartpole(1)
    a = ReferenceActor(
        first, 'gym/CartPole-v1', _cartpole_policy, np.zeros([1, 1]), 5, False, recreate
    )
    try:
        a.unroll()
        os.kill(first.pid, signal.SIGKILL)
        out = a.unroll()
        assert a.restarts == 1 and seeds == [1]
        # A whole unroll of the new environment: it starts a fresh episode, zero core state.
        assert out.env_outputs.done.shape == (6,) and bool(out.env_outputs.done[0])
        assert out.agent_outputs.action[0] == 0
        np.testing.assert_array_equal(out.agent_state, np.zeros([1, 1]))
        assert a.unroll().env_outputs.done.shape == (6,)  # It goes on.
    finally:
        a.close()
        first.close()


def test_an_environment_that_keeps_dying_stops_the_actor():
    import os
    import signal

    def dying(n):
        env = _cartpole(n)
        os.kill(env.pid, signal.SIGKILL)
        return env

    first = _cartpole(1)
    a = ReferenceActor(first, 'lvl', _cartpole_policy, np.zeros([1, 1]), 5, False, dying, 2)
    try:
        os.kill(first.pid, signal.SIGKILL)
        with pytest.raises(actor.EnvironmentCrashLoopError, match='lvl died 3 times'):
            a.unroll()
    finally:
        a.close()


def test_without_recreate_a_dead_environment_is_an_error():
    import os
    import signal

    from scalable_agent2.py_process import PyProcessDiedError

    env = _cartpole(1)
    a = ReferenceActor(env, 'lvl', _cartpole_policy, np.zeros([1, 1]), 5, False)
    try:
        os.kill(env.pid, signal.SIGKILL)
        with pytest.raises(PyProcessDiedError):
            a.unroll()
    finally:
        a.close()
