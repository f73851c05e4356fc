"""actor.Actor: its unrolls equal, environment by environment, those of the one-environment
reference actor (tests/reference_actor.py); restarts; `actor_loop`."""

import os
import queue
import signal
import threading

import numpy as np
import pytest
import tensorflow as tf

from scalable_agent2 import actor, builder, config, environments, networks, policy
from scalable_agent2.environments import atari, batched
from scalable_agent2.types import AgentOutput
from tests.fakes import NUM_ACTIONS, CountingEnv
from tests.reference_actor import ReferenceActor

pytestmark = pytest.mark.timeout(600)


class RowPolicy:
    """Deterministic numpy policy, row by row: action from the frame, last action and state.

    Like the agent, it resets a row's state where `done` (before using it); the state counts
    steps since the row's episode began. Records its batch sizes.
    """

    def __init__(self, num_actions=NUM_ACTIONS, feature=lambda frame: frame[:, 0]):
        self.num_actions = num_actions
        self.feature = feature
        self.rows = []

    def __call__(self, last_action, env_output, state):
        assert last_action.dtype == np.int32 and env_output.info == ()
        self.rows.append(last_action.shape[0])
        frame = np.asarray(env_output.observation[0], np.float64)
        state = np.where(np.asarray(env_output.done)[:, None], 0.0, np.asarray(state)) + 1.0
        x = self.feature(frame.reshape(frame.shape[0], -1)) * 7 + state[:, 0] + 3 * last_action
        action = (np.floor(np.abs(x)).astype(np.int64) % self.num_actions).astype(np.int32)
        logits = np.stack([x + k for k in range(self.num_actions)], axis=1).astype(np.float32)
        return AgentOutput(action, logits, (x / 2).astype(np.float32)), state.astype(np.float32)


def _assert_unrolls_equal(got, want, where):
    assert got.level_name == want.level_name, where
    tf.nest.assert_same_structure(got, want)
    for g, w in zip(tf.nest.flatten(got), tf.nest.flatten(want), strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, (where, g.shape, w.shape, g.dtype)
        np.testing.assert_array_equal(g, w, err_msg=where)


def _compare(make_batch, make_single, level_names, policy_factory, T, num_unrolls, state_size=1):
    """Runs an Actor and one ReferenceActor per environment; their unrolls must be equal."""
    state = np.zeros([1, state_size], np.float32)
    batch_policy = policy_factory()
    batched_actor = actor.Actor(make_batch(), batch_policy, state, T)
    singles = [
        ReferenceActor(make_single(i), level, policy_factory(), state, T)
        for i, level in enumerate(level_names)
    ]
    try:
        assert batched_actor.level_names == level_names
        all_unrolls = []
        for k in range(num_unrolls):
            unrolls = batched_actor.unrolls()
            assert len(unrolls) == len(level_names)
            for i, single in enumerate(singles):
                (want,) = single.unrolls()
                _assert_unrolls_equal(unrolls[i], want, f'unroll {k}, env {i}')
            all_unrolls.append(unrolls)
        # One policy call of E rows per step (plus the probe).
        assert set(batch_policy.rows) == {len(level_names)}
        assert len(batch_policy.rows) == 1 + T * num_unrolls
        return all_unrolls
    finally:
        batched_actor.close()
        for single in singles:
            single.close()


def test_fake_environments_with_their_own_episode_lengths():
    lengths = [2, 3, 5, 4]
    names = [f'fake_{n}' for n in lengths]
    all_unrolls = _compare(
        lambda: batched.InProcessBatch([CountingEnv(n) for n in lengths], names),
        lambda i: CountingEnv(lengths[i]),
        names,
        RowPolicy,
        T=6,
        num_unrolls=3,
    )
    # Each row's state restarted at its own episode ends: state counts steps in the episode.
    for i, n in enumerate(lengths):
        done = np.concatenate([u[i].env_outputs.done[1:] for u in all_unrolls])
        assert np.array_equal(np.nonzero(done)[0] + 1, np.arange(n, 18 + 1, n)[: done.sum()])
        assert done.sum() == 18 // n
    # Instructions pass through per environment.
    assert list(all_unrolls[0][0].env_outputs.observation[1][:2]) == ['instr 0', 'instr 1']


def test_cartpole_subprocess_batch():
    cfg = config.EnvironmentConfig(num_action_repeats=1)
    seeds = [7, 8, 9]
    names = ['gym/CartPole-v1'] * 3
    all_unrolls = _compare(
        lambda: environments.create_environment_batch(names, cfg, seeds, False),
        lambda i: environments.create_environment(names[i], cfg, seeds[i], False),
        names,
        lambda: RowPolicy(2, feature=lambda f: f[:, 2] * 10),
        T=10,
        num_unrolls=3,
    )
    assert any(u[i].env_outputs.done[1:].any() for u in all_unrolls for i in range(3))


def test_atari_pong_batch_a_few_steps():
    cfg = config.EnvironmentConfig()
    seeds = [1, 2]
    names = ['atari/Pong'] * 2
    _compare(
        lambda: environments.create_environment_batch(names, cfg, seeds, False),
        lambda i: environments.create_environment(names[i], cfg, seeds[i], False),
        names,
        lambda: RowPolicy(6, feature=lambda f: f.mean(axis=1)),
        T=5,
        num_unrolls=2,
    )


def _agent(core_size=8):
    tf.random.set_seed(0)
    agent = networks.ImpalaAgent(
        config.AgentConfig(
            num_actions=NUM_ACTIONS, torso='mlp', core_size=core_size, use_instruction=True
        )
    )
    builder.create_agent_variables(agent, CountingEnv().observation_spec)
    return agent


def _replay(step, unroll):
    """The agent's logits over an unroll, recomputed one row at a time from its start state."""
    state = tf.nest.map_structure(tf.convert_to_tensor, unroll.agent_state)
    logits = []
    for t in range(1, unroll.env_outputs.done.shape[0]):
        env_output = policy.batch_env_output(
            tf.nest.map_structure(lambda x, t=t: x[t - 1], unroll.env_outputs)
        )
        out, state = step(unroll.agent_outputs.action[t - 1 : t], env_output, state)
        logits.append(out.policy_logits[0].numpy())
    return np.stack(logits)


def test_real_agent_resets_each_rows_core_state_and_learner_shapes_are_unchanged():
    """Actors and a ReferenceActor share one dynamically batched agent, from threads."""
    agent = _agent()
    batched_policy = policy.make_batched_policy(agent, timeout_ms=5)
    initial = tf.nest.map_structure(np.asarray, agent.initial_state(1))
    T = 6
    lengths = [[2, 3, 5], [4, 7]]
    actors = [
        actor.Actor(
            batched.InProcessBatch([CountingEnv(n) for n in ls], [f'l{n}' for n in ls]),
            batched_policy,
            initial,
            T,
        )
        for ls in lengths
    ] + [ReferenceActor(CountingEnv(3), 'single', batched_policy, initial, T)]
    results = [None] * len(actors)

    def run(k):
        results[k] = [actors[k].unrolls() for _ in range(2)]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(actors))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
            assert not t.is_alive()
    finally:
        batched_policy.close()
    unrolls = [u for r in results for u in r[1]]
    assert [u.level_name for u in unrolls] == ['l2', 'l3', 'l5', 'l4', 'l7', 'single']
    step = tf.function(lambda a, e, s: agent((a, e), s))
    for u in [u for r in results for k in range(2) for u in r[k]]:
        # Replaying each unroll alone, from its own start state, gives the recorded logits:
        # the batched agent reset exactly this row's state at its own episode ends.
        np.testing.assert_allclose(
            _replay(step, u), u.agent_outputs.policy_logits[1:], rtol=1e-5, atol=1e-5
        )
    # Where an episode ended, the next step ran from a zero state.
    u = results[0][1][0]  # Episode length 2.
    assert u.env_outputs.done[:-1].any()
    # Learner input shapes are the same as from single-env actors.
    batch = actor.stack_unrolls(unrolls)
    single_batch = actor.stack_unrolls([results[2][1][0]] * len(unrolls))
    tf.nest.assert_same_structure(batch, single_batch)
    for b, s in zip(tf.nest.flatten(batch), tf.nest.flatten(single_batch), strict=True):
        assert b.shape == s.shape and b.dtype == s.dtype
    assert batch.agent_outputs.policy_logits.shape == (T + 1, 6, NUM_ACTIONS)
    assert batch.agent_state.hidden.shape == (6, 8)
    # (reference_actor_test trains a learner on such a stacked batch.)


def _cartpole_batch(seeds):
    cfg = config.EnvironmentConfig(num_action_repeats=1)
    return environments.create_environment_batch(
        ['gym/CartPole-v1'] * len(seeds), cfg, seeds, False
    )


def _counting_policy(last_action, env_output, state):
    """Never resets: the state counts every policy call of the row."""
    del last_action
    n = env_output.done.shape[0]
    return AgentOutput(
        np.zeros([n], np.int32), np.zeros([n, 2], np.float32), np.zeros([n], np.float32)
    ), state + 1


def test_a_killed_environment_in_a_batch_is_recreated_and_the_unroll_restarts():
    recreated = []

    def recreate(i, n):
        recreated.append((i, n))
        return None  # The batch's own factory.

    T = 5
    a = actor.Actor(
        _cartpole_batch([1, 2, 3]), _counting_policy, np.zeros([1, 1]), T, False, recreate
    )
    try:
        first = a.unrolls()
        dead_pid = a.env_batch.pids[1]
        os.kill(dead_pid, signal.SIGKILL)
        second = a.unrolls()
        assert a.restarts == 1 and recreated == [(1, 1)]
        assert a.env_batch.pids[1] != dead_pid
        assert len(second) == 3 and all(u.env_outputs.done.shape == (T + 1,) for u in second)
        # The recreated environment: a fresh episode, zero core state and last action.
        assert bool(second[1].env_outputs.done[0]) and second[1].agent_outputs.action[0] == 0
        np.testing.assert_array_equal(second[1].agent_state, [[0]])
        # The others went on: their unroll starts after the step during which the death
        # happened (T + 1 policy steps), so nothing they did is missing from their episodes.
        for i in (0, 2):
            np.testing.assert_array_equal(second[i].agent_state, [[T + 1]])
            assert second[i].env_outputs.info.episode_step[0] == (
                first[i].env_outputs.info.episode_step[-1] + 1
            ) or bool(second[i].env_outputs.done[0])
        assert len(a.unrolls()) == 3  # It goes on.
    finally:
        a.close()


def test_a_batch_whose_environment_keeps_dying_stops_the_actor():
    def recreate(i, n):
        env = environments.create_environment(
            'gym/CartPole-v1', config.EnvironmentConfig(num_action_repeats=1), n, False
        )
        os.kill(env.pid, signal.SIGKILL)
        return env

    a = actor.Actor(
        _cartpole_batch([1, 2]), _counting_policy, np.zeros([1, 1]), 5, False, recreate, 2
    )
    try:
        os.kill(a.env_batch.pids[0], signal.SIGKILL)
        with pytest.raises(
            actor.EnvironmentCrashLoopError, match=r'environment 0 \(gym/CartPole-v1\) .*3 times'
        ):
            a.unrolls()
    finally:
        a.close()


def test_deaths_spread_over_a_batch_count_per_environment():
    def recreate(i, n):
        return environments.create_environment(
            'gym/CartPole-v1', config.EnvironmentConfig(num_action_repeats=1), 10 * i + n, False
        )

    a = actor.Actor(
        _cartpole_batch([1, 2, 3]), _counting_policy, np.zeros([1, 1]), 5, False, recreate, 1
    )
    try:
        # Three deaths, one per environment: each row is within its limit of one restart.
        for i in range(3):
            os.kill(a.env_batch.pids[i], signal.SIGKILL)
            a.unrolls()
        assert a.restarts == 3
        os.kill(a.env_batch.pids[1], signal.SIGKILL)  # A second death of row 1 is one too many.
        with pytest.raises(actor.EnvironmentCrashLoopError, match='environment 1 .*died 2 times'):
            a.unrolls()
    finally:
        a.close()


def test_without_recreate_a_dead_environment_in_a_batch_is_an_error():
    from scalable_agent2.py_process import PyProcessDiedError

    a = actor.Actor(_cartpole_batch([1, 2]), _counting_policy, np.zeros([1, 1]), 5, False)
    try:
        os.kill(a.env_batch.pids[1], signal.SIGKILL)
        with pytest.raises(PyProcessDiedError) as info:
            a.unrolls()
        assert isinstance(info.value, batched.EnvironmentsDiedError)
        assert info.value.indices == [1]
    finally:
        a.close()


def test_actor_and_batched_actor_share_the_driving_interface():
    single = ReferenceActor(CountingEnv(), 'l', RowPolicy(), np.zeros([1, 1], np.float32), 3)
    many = actor.Actor(
        batched.InProcessBatch([CountingEnv(), CountingEnv()], ['a', 'b']),
        RowPolicy(),
        np.zeros([1, 1], np.float32),
        3,
    )
    for a, names in ((single, ['l']), (many, ['a', 'b'])):
        assert a.level_names == names and a.num_envs == len(names) and a.restarts == 0
        unrolls = a.unrolls()
        assert [u.level_name for u in unrolls] == names
        a.close()
    with pytest.raises(ValueError, match=r'one environment: every array \[1, ...\]'):
        actor.Actor(
            batched.InProcessBatch([CountingEnv()], ['a']), RowPolicy(), np.zeros([2, 1]), 3
        )


def test_actor_loop_drives_its_actors_in_turn():
    class Batched:
        restarts = 0

        def __init__(self):
            self.n = 0

        def unrolls(self):
            self.n += 1
            return [('batched', self.n, e) for e in range(2)]

    class Single:
        def __init__(self):
            self.n = 0

        def unrolls(self):
            self.n += 1
            return [('single', self.n)]

    unrolls: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    thread = threading.Thread(
        target=actor.actor_loop, args=([Batched(), Single()], unrolls, stop), daemon=True
    )
    thread.start()
    got = [unrolls.get(timeout=5) for _ in range(6)]
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert got == [
        ('batched', 1, 0),
        ('batched', 1, 1),
        ('single', 1),
        ('batched', 2, 0),
        ('batched', 2, 1),
        ('single', 2),
    ]


def test_learner_recomputes_the_behaviour_logits_of_a_sharp_lstm_policy_on_atari():
    """The learner re-runs each Atari unroll from the exact core state its actor row had.

    A perturbed agent (policy head x200, LSTM input weights x3) is far from uniform, so a core
    state from another row, step or episode would show in the logits. Games are capped at 45
    agent steps, so episodes end inside unrolls.
    """
    tf.random.set_seed(0)
    num_envs, unroll_length = 4, 20
    env_config = config.EnvironmentConfig(atari_max_episode_frames=4 * 45)
    env_batch = atari.AtariBatch(['atari/Pong'] * num_envs, env_config, [1, 2, 3, 4], False)
    agent = networks.ImpalaAgent(
        config.AgentConfig(num_actions=env_batch.num_actions, torso='shallow', use_lstm=True)
    )
    builder.create_agent_variables(agent, env_batch.observation_spec)
    for v in agent.trainable_variables:
        if 'policy_logits' in v.name and '/w:' in v.name:
            v.assign(v * 200.0)
        elif 'core' in v.name and '/w_i:' in v.name:
            v.assign(v * 3.0)
    batched_policy = policy.make_batched_policy(agent, timeout_ms=5)
    initial = builder.initial_core_state(agent)
    the_actor = actor.Actor(env_batch, batched_policy, initial, unroll_length)
    try:
        batches = [actor.stack_unrolls(the_actor.unrolls()) for _ in range(4)]
    finally:
        batched_policy.close()
        the_actor.close()
    episode_ends = 0
    for k, b in enumerate(batches):
        env_outputs = b.env_outputs._replace(info=())
        state = tf.nest.map_structure(tf.convert_to_tensor, b.agent_state)
        out, _ = agent.unroll(b.agent_outputs.action, env_outputs, state)
        behaviour = b.agent_outputs.policy_logits[1:]
        probs = tf.nn.softmax(behaviour).numpy()
        assert -(probs * np.log(probs + 1e-12)).sum(-1).mean() < 0.5  # Far from ln 6 = 1.79.
        np.testing.assert_allclose(out.policy_logits.numpy()[:-1], behaviour, rtol=1e-4, atol=1e-3)
        episode_ends += int(b.env_outputs.done[1:-1].sum())
        if k + 1 < len(batches):  # Across the unroll boundary: the next start state.
            _, end = agent.unroll(
                b.agent_outputs.action[:-1],
                tf.nest.map_structure(lambda x: x[:-1], env_outputs),
                state,
            )
            for x, y in zip(
                tf.nest.flatten(end), tf.nest.flatten(batches[k + 1].agent_state), strict=True
            ):
                np.testing.assert_allclose(x.numpy(), y, atol=1e-5)
    assert episode_ends > 0
