"""Gymnasium suite: flow semantics on real CartPole against plain Gymnasium, specs, errors."""

import gymnasium
import numpy as np
import pytest

from scalable_agent2 import config as config_lib
from scalable_agent2 import environments
from scalable_agent2.environments import base
from scalable_agent2.environments import gym as gym_env


def _reference_flow(env_id: str, seed: int, actions, repeats: int):
    """The original flow semantics written directly on a plain Gymnasium env.

    Returns a list of (reward, done, episode_return, episode_step, frame) per step, with the
    initial output first.
    """
    env = gymnasium.make(env_id)
    obs, _ = env.reset(seed=seed)
    out = [(0.0, True, 0.0, 0, np.asarray(obs, np.float32))]
    ep_return, ep_step = 0.0, 0
    for action in actions:
        reward = 0.0
        for _ in range(repeats):
            obs, r, terminated, truncated, _ = env.step(action)
            reward += r
            done = terminated or truncated
            if done:
                break
        ep_return += reward
        ep_step += 1
        info = (ep_return, ep_step)
        if done:
            obs, _ = env.reset()
            ep_return, ep_step = 0.0, 0
        out.append((reward, done, *info, np.asarray(obs, np.float32)))
    env.close()
    return out


def _flow_outputs(env, actions):
    outputs = [env.initial()]
    outputs += [env.step(a) for a in actions]
    return [
        (
            float(o.reward),
            bool(o.done),
            float(o.info.episode_return),
            int(o.info.episode_step),
            o.observation[0],
        )
        for o in outputs
    ]


@pytest.mark.parametrize('repeats', [1, 3])
def test_cartpole_flow_matches_plain_gymnasium(repeats):
    rng = np.random.default_rng(0)
    actions = [int(a) for a in rng.integers(0, 2, size=150)]
    cfg = config_lib.EnvironmentConfig(num_action_repeats=repeats)
    env = base.FlowEnvironment(gym_env.GymEnvironment('CartPole-v1', cfg, seed=7, is_test=False))
    got = _flow_outputs(env, actions)
    want = _reference_flow('CartPole-v1', 7, actions, repeats)
    assert sum(w[1] for w in want[1:]) >= 3  # Several episodes ended.
    for t, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g[:4] == pytest.approx(w[:4]), t
        np.testing.assert_allclose(g[4], w[4], err_msg=str(t))
        assert g[4].dtype == np.float32 and g[4].shape == (4,)
    # On episode end, info holds the ended episode and the next step restarts the counters.
    for t in range(1, len(got) - 1):
        if got[t][1]:
            assert got[t][3] >= 1 and got[t + 1][3] == 1
            assert got[t + 1][2] == pytest.approx(got[t + 1][0])
    env.close()


def test_subprocess_environment_matches_in_process():
    cfg = config_lib.EnvironmentConfig(num_action_repeats=1)
    actions = [int(a) for a in np.random.default_rng(1).integers(0, 2, size=60)]
    local = base.FlowEnvironment(gym_env.GymEnvironment('CartPole-v1', cfg, 3, False))
    with environments.create_environment('gym/CartPole-v1', cfg, 3, False) as remote:
        assert remote.num_actions == 2
        assert remote.observation_spec == base.ObservationSpec((4,), 'float32', False)
        got = _flow_outputs(remote, actions)
    want = _flow_outputs(local, actions)
    for g, w in zip(got, want, strict=True):
        assert g[:4] == w[:4]
        np.testing.assert_array_equal(g[4], w[4])
    assert all(o[4] is not None for o in got)


def test_seeds_change_episodes():
    cfg = config_lib.EnvironmentConfig()
    a = gym_env.GymEnvironment('CartPole-v1', cfg, 1, False).reset()[0]
    b = gym_env.GymEnvironment('CartPole-v1', cfg, 1, False).reset()[0]
    c = gym_env.GymEnvironment('CartPole-v1', cfg, 2, False).reset()[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_instruction_is_empty_string():
    env = gym_env.GymEnvironment('CartPole-v1', config_lib.EnvironmentConfig(), 0, False)
    assert env.reset()[1] == ''
    assert env.step(0)[2][1] == ''


def test_discrete_observations_are_one_hot():
    env = gym_env.GymEnvironment('FrozenLake-v1', config_lib.EnvironmentConfig(), 0, False)
    assert env.num_actions == 4
    assert env.observation_spec == base.ObservationSpec((16,), 'float32', False)
    frame, _ = env.reset()
    np.testing.assert_array_equal(frame, np.eye(16, dtype=np.float32)[0])


def test_image_observations_are_uint8():
    env = gym_env.GymEnvironment('ALE/Pong-v5', config_lib.EnvironmentConfig(), 0, False)
    assert env.observation_spec == base.ObservationSpec((210, 160, 3), 'uint8', False)
    frame, _ = env.reset()
    assert frame.dtype == np.uint8 and frame.shape == (210, 160, 3)
    env.close()


def test_continuous_action_space_is_a_clear_error():
    with pytest.raises(ValueError, match='only Discrete action spaces'):
        gym_env.GymEnvironment('Pendulum-v1', config_lib.EnvironmentConfig(), 0, False)


def test_continuous_action_space_error_crosses_the_subprocess():
    with pytest.raises(ValueError, match='only Discrete action spaces'):
        environments.create_environment('gym/Pendulum-v1', config_lib.EnvironmentConfig(), 0, False)


def test_unknown_id_hints_at_the_registry():
    with pytest.raises(ValueError, match=r'gymnasium\.registry.*') as info:
        environments.create_environment('gym/CartPole-v9', config_lib.EnvironmentConfig(), 0, False)
    assert 'CartPole-v1' in str(info.value)  # Similar ids are suggested.


def test_out_of_range_action():
    env = gym_env.GymEnvironment('CartPole-v1', config_lib.EnvironmentConfig(), 0, False)
    env.reset()
    with pytest.raises(ValueError, match='action must be in'):
        env.step(2)
