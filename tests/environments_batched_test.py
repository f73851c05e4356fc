"""Batched environments: each row equals the single environment of the same level and seed."""

import os
import signal

import numpy as np
import pytest

from scalable_agent2 import config as config_lib
from scalable_agent2 import environments, py_process
from scalable_agent2.environments import atari, base, batched
from scalable_agent2.types import StepOutput

pytestmark = pytest.mark.timeout(300)


def _single_atari(game, cfg, seed, is_test):
    return base.FlowEnvironment(atari.AtariEnvironment(game, cfg, seed, is_test))


def _assert_row_equals(outputs: StepOutput, i: int, single: StepOutput, where: str) -> None:
    row = batched.read_row(outputs, i)
    assert row.reward == np.float32(single.reward), where
    assert bool(row.done) == bool(single.done), where
    assert row.info.episode_return == np.float32(single.info.episode_return), where
    assert row.info.episode_step == np.int32(single.info.episode_step), where
    assert bool(row.info.game_over) == bool(single.info.game_over), where
    assert row.observation[1] == single.observation[1], where
    np.testing.assert_array_equal(row.observation[0], single.observation[0], err_msg=where)


def _compare_with_singles(batch, singles, steps, seed=0):
    """Steps the batch and the singles with the same random actions; compares every row."""
    rng = np.random.default_rng(seed)
    out = batch.initial()
    assert out.observation[0].shape == (batch.num_envs, *batch.observation_spec.frame_shape)
    for i, env in enumerate(singles):
        _assert_row_equals(out, i, env.initial(), f'initial, env {i}')
    counts = {'done': 0, 'game_over': 0, 'reward': 0}
    for t in range(steps):
        actions = rng.integers(0, batch.num_actions, batch.num_envs).astype(np.int32)
        batch.send(actions)
        out = batch.receive(out)
        for i, env in enumerate(singles):
            _assert_row_equals(out, i, env.step(int(actions[i])), f'step {t}, env {i}')
        counts['done'] += int(out.done.sum())
        counts['game_over'] += int(out.info.game_over.sum())
        counts['reward'] += int(np.count_nonzero(out.reward))
    return counts


@pytest.mark.parametrize('is_test', [False, True])
def test_atari_batch_rows_equal_single_environments_breakout(is_test):
    # Sticky actions, no-op starts, a short frame cap and life losses all in play.
    cfg = config_lib.EnvironmentConfig(
        atari_sticky_action_prob=0.25, atari_max_episode_frames=1200
    ).validate()
    seeds = [3, 11, 3]  # The same seed twice gives the same game twice.
    batch = atari.AtariBatch(['atari/Breakout'] * 3, cfg, seeds, is_test, num_threads=2)
    singles = [_single_atari('Breakout', cfg, s, is_test) for s in seeds]
    try:
        assert batch.num_actions == singles[0].num_actions == 4
        assert batch.observation_spec == singles[0].observation_spec
        counts = _compare_with_singles(batch, singles, 700)
    finally:
        batch.close()
        for env in singles:
            env.close()
    assert counts['reward'] > 0 and counts['game_over'] > 0  # Games ended (frame cap at least).
    if is_test:
        assert counts['done'] == counts['game_over']  # A lost life never ends a test episode.
    else:
        assert counts['done'] > counts['game_over']  # Life losses ended training episodes.


def test_atari_batch_full_action_space_maps_missing_actions():
    # Skiing has fewer than 18 legal actions: the full set maps the FIRE variants.
    cfg = config_lib.EnvironmentConfig(atari_full_action_space=True, atari_noop_max=5).validate()
    batch = atari.AtariBatch(['atari/Skiing', 'atari/skiing'], cfg, [1, 2], False)
    singles = [_single_atari('Skiing', cfg, s, False) for s in (1, 2)]
    try:
        assert batch.num_actions == 18
        _compare_with_singles(batch, singles, 60)
        with pytest.raises(ValueError, match=r'\[0, 18\)'):
            batch.send(np.array([0, 18], np.int32))
        with pytest.raises(ValueError, match='shape'):
            batch.send(np.array([0], np.int32))
    finally:
        batch.close()
        for env in singles:
            env.close()


def test_atari_batch_rejects_two_games_and_missing_seeds():
    cfg = config_lib.EnvironmentConfig()
    with pytest.raises(ValueError, match='one game'):
        atari.AtariBatch(['atari/Pong', 'atari/Breakout'], cfg, [1, 2], False)
    with pytest.raises(ValueError, match='one seed per level'):
        atari.AtariBatch(['atari/Pong'] * 2, cfg, [1], False)


def test_create_environment_batch_dispatch_and_mixed_games():
    cfg = config_lib.EnvironmentConfig(atari_full_action_space=True, atari_noop_max=3)
    one_game = environments.create_environment_batch(['atari/Pong'] * 2, cfg, [1, 2], False)
    with one_game:
        assert isinstance(one_game, atari.AtariBatch)
    names = ['atari/Pong', 'atari/Breakout', 'atari/pong']
    mixed = environments.create_environment_batch(names, cfg, [5, 6, 7], False)
    singles = [_single_atari(n.split('/')[1], cfg, s, False) for n, s in zip(names, [5, 6, 7])]
    try:
        assert isinstance(mixed, batched.CombinedBatch)
        assert mixed.level_names == names and mixed.num_envs == 3 and mixed.num_actions == 18
        _compare_with_singles(mixed, singles, 40)
    finally:
        mixed.close()
        for env in singles:
            env.close()
    with pytest.raises(ValueError, match='2 level names but 1 seeds'):
        environments.create_environment_batch(['atari/Pong'] * 2, cfg, [1], False)
    with pytest.raises(ValueError, match='at least one'):
        environments.create_environment_batch([], cfg, [], False)
    with pytest.raises(ValueError, match='share actions'):  # 18 Atari actions vs CartPole's 2.
        environments.create_environment_batch(['atari/Pong', 'gym/CartPole-v1'], cfg, [1, 2], False)


def test_subprocess_batch_rows_equal_single_environments_cartpole():
    cfg = config_lib.EnvironmentConfig(num_action_repeats=1)
    seeds = [1, 2, 3]
    batch = environments.create_environment_batch(['gym/CartPole-v1'] * 3, cfg, seeds, False)
    singles = [environments.create_environment('gym/CartPole-v1', cfg, s, False) for s in seeds]
    try:
        assert isinstance(batch, batched.SubprocessBatch)
        assert len(set(batch.pids)) == 3 and os.getpid() not in batch.pids
        counts = _compare_with_singles(batch, singles, 120)
        assert counts['done'] > 0
    finally:
        batch.close()
        for env in singles:
            env.close()


def test_subprocess_batch_reports_a_dead_environment_and_recreates_it():
    cfg = config_lib.EnvironmentConfig(num_action_repeats=1)
    batch = environments.create_environment_batch(['gym/CartPole-v1'] * 3, cfg, [1, 2, 3], False)
    reference = environments.create_environment('gym/CartPole-v1', cfg, 3, False)
    try:
        batch.initial()
        reference.initial()
        dead_pid = batch.pids[1]
        os.kill(dead_pid, signal.SIGKILL)
        batch.send(np.zeros(3, np.int32))
        out = batch.empty_outputs()
        with pytest.raises(batched.EnvironmentsDiedError) as info:
            batch.receive(out)
        assert isinstance(info.value, py_process.PyProcessDiedError)
        assert info.value.indices == [1] and info.value.outputs is out
        # The live rows were written: they stay in step with their environments.
        _assert_row_equals(out, 2, reference.step(0), 'live row')
        first = batch.recreate(1)  # The batch's factory: seed 2 + 100_000.
        assert first.done and batch.pids[1] != dead_pid
        batch.step(np.ones(3, np.int32), out)
        _assert_row_equals(out, 2, reference.step(1), 'after the restart')
        with pytest.raises(ValueError, match='integers'):
            batch.send(np.zeros(3, np.float32))
    finally:
        batch.close()
        reference.close()


def test_in_process_batch_and_write_read_rows():
    cfg = config_lib.EnvironmentConfig(num_action_repeats=1)
    envs = [environments.make_flow_environment('gym/CartPole-v1', cfg, s, False) for s in (4, 5)]
    singles = [environments.make_flow_environment('gym/CartPole-v1', cfg, s, False) for s in (4, 5)]
    batch = batched.InProcessBatch(envs, ['gym/CartPole-v1'] * 2)
    try:
        _compare_with_singles(batch, singles, 50)
    finally:
        batch.close()
        for env in singles:
            env.close()
