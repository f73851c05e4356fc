"""Tests for test mode: episode bookkeeping, state carried across steps, checkpoints, results."""

import dataclasses
import json
import os
import threading

import numpy as np
import pytest
import tensorflow as tf

from scalable_agent2 import (
    builder,
    checkpoints,
    config,
    environments,
    evaluate,
    learner,
    networks,
    policy,
)
from scalable_agent2.scoring import atari57, dmlab30
from scalable_agent2.types import AgentOutput, StepOutput, StepOutputInfo


class EpisodicEnv:
    """Episode k (from 0) lasts k + 1 steps and pays 1 per step; frame = [global step]."""

    def __init__(self):
        self._t = 0
        self._k = 0
        self._step = 0

    def _out(self, reward, done, ret, steps):
        return StepOutput(
            np.float32(reward),
            StepOutputInfo(np.float32(ret), np.int32(steps)),
            done,
            (np.array([self._t], np.float32), ''),
        )

    def initial(self):
        return self._out(0.0, True, 0.0, 0)

    def step(self, action):
        self._t += 1
        self._step += 1
        if self._step == self._k + 1:
            steps = self._step
            self._k += 1
            self._step = 0
            return self._out(1.0, True, float(steps), steps)
        return self._out(1.0, False, float(self._step), self._step)


def test_plan_shares_each_levels_episodes_evenly_without_empty_shares():
    def shares(total, parts):
        cfg = config.ExperimentConfig(test_num_episodes=total, num_actors=parts, test_parallel=True)
        jobs, _ = evaluate.plan(cfg, ['lvl'])
        return [job.num_episodes for job in jobs]

    assert shares(10, 4) == [3, 3, 2, 2]
    assert shares(3, 8) == [1, 1, 1]
    assert shares(5, 1) == [5]
    for total in range(1, 20):
        for parts in range(1, 10):
            got = shares(total, parts)
            assert sum(got) == total and min(got) >= 1 and max(got) - min(got) <= 1


def test_run_episodes_counts_episodes_and_carries_state():
    seen_states = []

    def fake_policy(last_action, env_output, state):
        seen_states.append(int(state[0]))
        frame = env_output.observation[0][0, 0]
        action = np.array([int(frame) % 2], np.int32)
        assert last_action[0] == (int(frame) - 1) % 2 if frame > 0 else last_action[0] == 0
        return AgentOutput(action, np.zeros([1, 2]), np.zeros([1])), state + 1

    stepper = policy.PolicyStepper(fake_policy, np.zeros([1], np.int64))
    returns = policy.run_episodes(EpisodicEnv(), stepper, 4, threading.Event())
    assert returns == [1.0, 2.0, 3.0, 4.0]
    # One call per step (1 + 2 + 3 + 4 steps); the state is never reset by the loop itself.
    assert seen_states == list(range(10))


def _save_cartpole_checkpoint(logdir, frames):
    return _save_checkpoint(
        logdir, frames, 'gym/CartPole-v1', 'mlp', config.EnvironmentConfig(num_action_repeats=1), 1
    )


def _save_checkpoint(logdir, frames, level_name, network, env_config, num_action_repeats):
    cfg = config.ExperimentConfig(
        logdir=str(logdir),
        level_name=level_name,
        agent=config.AgentConfig(torso=network),
        environment=env_config,
        learner=config.LearnerConfig(num_action_repeats=num_action_repeats, use_xla=False),
    ).validate()
    env = environments.create_environment(level_name, cfg.environment, 0, False)
    try:
        agent_config = builder.agent_config_for(cfg, env)
        spec = env.observation_spec
    finally:
        env.close()
    agent = networks.ImpalaAgent(agent_config)
    builder.create_agent_variables(agent, spec)
    the_learner = learner.Learner(agent, cfg.learner)
    the_learner.num_environment_frames.assign(frames)
    ckpt = checkpoints.Checkpointer(
        cfg.logdir, the_learner.checkpoint_state, builder.agent_spec(agent_config, spec)
    )
    ckpt.save(frames)
    return cfg, agent


def test_evaluate_writes_results(tmp_path):
    cfg, _ = _save_cartpole_checkpoint(tmp_path, 1234)
    cfg = dataclasses.replace(cfg, mode='test', test_num_episodes=3)
    results = evaluate.evaluate(cfg)
    with open(os.path.join(tmp_path, evaluate.TEST_RESULTS_FILE)) as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(results))
    assert written['num_environment_frames'] == 1234
    level = written['levels']['gym/CartPole-v1']
    assert len(level['returns']) == 3
    # CartPole pays 1 per step and lasts at least ~8 steps.
    assert all(r >= 5 and r == int(r) for r in level['returns'])
    assert level['mean_return'] == pytest.approx(np.mean(level['returns']))


def test_evaluate_without_checkpoint_is_a_clear_error(tmp_path):
    cfg = config.ExperimentConfig(
        logdir=str(tmp_path / 'empty'),
        mode='test',
        level_name='gym/CartPole-v1',
        agent=config.AgentConfig(torso='mlp'),
    )
    with pytest.raises(checkpoints.NoCheckpointError, match='no checkpoint'):
        evaluate.evaluate(cfg)
    os.makedirs(tmp_path / 'empty')
    with pytest.raises(checkpoints.NoCheckpointError, match='no checkpoint'):
        evaluate.evaluate(cfg)


def test_evaluate_plays_a_named_checkpoint_and_writes_its_own_results(tmp_path):
    _save_cartpole_checkpoint(tmp_path, 10)
    cfg, _ = _save_cartpole_checkpoint(tmp_path, 20)
    cfg = dataclasses.replace(cfg, mode='test', test_num_episodes=2, test_checkpoint='ckpt-10')
    results = evaluate.evaluate(cfg)
    assert results['num_environment_frames'] == 10 and results['checkpoint'].endswith('ckpt-10')
    with open(tmp_path / 'test_results.ckpt-10.json') as f:
        assert json.load(f)['num_environment_frames'] == 10
    assert not os.path.exists(tmp_path / evaluate.TEST_RESULTS_FILE)


def test_evaluate_refuses_a_checkpoint_of_another_agent(tmp_path):
    cfg, _ = _save_cartpole_checkpoint(tmp_path, 10)
    # Acrobot: 3 actions and 6-dim observations instead of 2 and 4.
    other = dataclasses.replace(cfg, mode='test', level_name='gym/Acrobot-v1')
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match='num_actions=2'):
        evaluate.evaluate(other)


def test_checkpointer_round_trip_and_shape_mismatch(tmp_path):
    v = tf.Variable([1.0, 2.0])
    ckpt = checkpoints.Checkpointer(str(tmp_path), {'v': v}, {'a': 1})
    assert ckpt.restore_latest() is None
    ckpt.save(5)
    v.assign([0.0, 0.0])
    assert ckpt.restore_latest(required=True).endswith('ckpt-5')
    np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])
    # Same spec file but a variable of another shape: still a clear error.
    w = tf.Variable([1.0, 2.0, 3.0])
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match='does not match'):
        checkpoints.Checkpointer(str(tmp_path), {'v': w}, {'a': 1}).restore_latest()
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match='a=1 \\(now 2\\)'):
        checkpoints.Checkpointer(str(tmp_path), {'v': v}, {'a': 2}).restore_latest()


def test_suite_results_use_the_test_level_names_that_test_mode_runs():
    rng = np.random.default_rng(1)
    # DMLab-30: test mode runs the test levels.
    names = environments.expand_level_names('dmlab30', is_test=True)
    returns = {name: list(rng.uniform(0, 40, size=3)) for name in names}
    cfg = config.ExperimentConfig(level_name='dmlab30')
    out = evaluate.suite_results(cfg, returns)
    hns = [
        100
        * (np.mean(returns[n]) - dmlab30.RANDOM_SCORES[n])
        / (dmlab30.HUMAN_SCORES[n] - dmlab30.RANDOM_SCORES[n])
        for n in names
    ]
    assert out['dmlab30_no_cap'] == pytest.approx(np.mean(hns))
    assert out['dmlab30_cap_100'] == pytest.approx(np.mean(np.minimum(hns, 100)))
    # Atari-57: 'atari/<game>' names; mean and median.
    names = environments.expand_level_names('atari57', is_test=True)
    returns = {name: [float(rng.uniform(0, 1000))] for name in names}
    out = evaluate.suite_results(dataclasses.replace(cfg, level_name='atari57'), returns)
    hns = [
        100
        * (returns[n][0] - atari57.RANDOM_SCORES[atari57.game_name(n)])
        / (atari57.HUMAN_SCORES[atari57.game_name(n)] - atari57.RANDOM_SCORES[atari57.game_name(n)])
        for n in names
    ]
    assert len(hns) == 57
    assert out['atari57_mean'] == pytest.approx(np.mean(hns))
    assert out['atari57_median'] == pytest.approx(np.median(hns))
    # A single level has no suite score.
    assert evaluate.suite_results(dataclasses.replace(cfg, level_name='gym/CartPole-v1'), {}) == {}


def test_convolutional_network_on_vector_observations_is_a_clear_error(tmp_path):
    cfg, _ = _save_cartpole_checkpoint(tmp_path, 10)
    with pytest.raises(ValueError, match='needs image frames .* use --network=mlp'):
        evaluate.evaluate(
            dataclasses.replace(cfg, mode='test', agent=config.AgentConfig(torso='shallow'))
        )


@pytest.mark.timeout(300)
def test_record_video_writes_a_playable_mp4_of_raw_frames(tmp_path):
    import imageio

    env_config = config.EnvironmentConfig(atari_max_episode_frames=240)
    cfg, _ = _save_checkpoint(tmp_path, 100, 'atari/Pong', 'shallow', env_config, 4)
    cfg = dataclasses.replace(cfg, mode='test', test_num_episodes=1, record_video=True)
    results = evaluate.evaluate(cfg)
    video = results['videos']['atari/Pong']
    assert os.path.dirname(video['path']) == os.path.join(tmp_path, 'videos')
    assert f'return{video["episode_return"]:.1f}' in os.path.basename(video['path'])
    reader = imageio.get_reader(video['path'], format='FFMPEG')
    try:
        frames = np.stack([np.asarray(f) for f in reader])
    finally:
        reader.close()
    # Raw 210x160 RGB emulator frames (not the 84x84 input), one per emulator frame, and the
    # episode is cut at the 240-frame cap.
    assert frames.shape[1:] == (210, 160, 3)
    assert len(frames) == video['num_frames']
    assert 200 <= video['num_frames'] <= 241


class _ProtocolEnv:
    """CartPole-shaped fake (4 floats, 2 actions): every episode lasts 3 steps and pays 1."""

    observation_spec = environments.base.ObservationSpec((4,), 'float32', False)
    num_actions = 2

    def __init__(self, log, level, seed, is_test):
        self.level, self.seed, self.is_test = level, seed, is_test
        self.episodes = 0
        self._step = 0
        self._log = log
        log.append(('create', level, seed))

    def _out(self, done, ret, steps):
        info = StepOutputInfo(np.float32(ret), np.int32(steps))
        return StepOutput(np.float32(1.0), info, done, (np.zeros(4, np.float32), ''))

    def initial(self):
        return self._out(True, 0.0, 0)

    def step(self, action):
        self._step += 1
        if self._step == 3:
            self._step = 0
            self.episodes += 1
            self._log.append(('episode', self.level, self.seed))
            return self._out(True, 3.0, 3)
        return self._out(False, float(self._step), self._step)

    def close(self):
        self._log.append(('close', self.level, self.seed))


@pytest.fixture
def protocol_envs(tmp_path, monkeypatch):
    """A CartPole checkpoint, three fake levels, and the log of what test mode did with them."""
    cfg, _ = _save_cartpole_checkpoint(tmp_path, 10)
    log, envs = [], []

    def create(level, env_config, seed, is_test):
        envs.append(_ProtocolEnv(log, level, seed, is_test))
        return envs[-1]

    monkeypatch.setattr(environments, 'expand_level_names', lambda name, is_test: ['a', 'b', 'c'])
    monkeypatch.setattr(environments, 'create_environment', create)
    return dataclasses.replace(cfg, mode='test'), log, envs


def test_default_protocol_is_the_originals(protocol_envs):
    """One environment per level, seed 1, levels in order, exactly test_num_episodes each."""
    cfg, log, envs = protocol_envs
    results = evaluate.evaluate(dataclasses.replace(cfg, test_num_episodes=4, num_actors=8))
    assert [(e.level, e.seed, e.is_test, e.episodes) for e in envs] == [
        ('a', 1, True, 4),
        ('b', 1, True, 4),
        ('c', 1, True, 4),
    ]
    # Sequential: each level's environment is closed before the next one plays.
    played = [(kind, level) for kind, level, _ in log if kind != 'create']
    assert played == [(k, lvl) for lvl in 'abc' for k in ['episode'] * 4 + ['close']]
    assert results['protocol'] == 'sequential'
    assert results['env_seeds'] == {'a': [1], 'b': [1], 'c': [1]}
    assert all(len(results['levels'][lvl]['returns']) == 4 for lvl in 'abc')


def test_env_seed_offset_shifts_test_seeds(protocol_envs):
    cfg, _, envs = protocol_envs
    evaluate.evaluate(dataclasses.replace(cfg, test_num_episodes=1, env_seed_offset=10))
    assert [e.seed for e in envs] == [11, 11, 11]


def test_parallel_protocol_shares_episodes_over_environments(protocol_envs):
    cfg, _, envs = protocol_envs
    results = evaluate.evaluate(
        dataclasses.replace(cfg, test_num_episodes=5, num_actors=6, test_parallel=True)
    )
    assert sorted((e.level, e.seed, e.episodes) for e in envs) == [
        ('a', 1, 3),
        ('a', 2, 2),
        ('b', 3, 3),
        ('b', 4, 2),
        ('c', 5, 3),
        ('c', 6, 2),
    ]
    assert results['protocol'] == 'parallel'
    assert results['env_seeds'] == {'a': [1, 2], 'b': [3, 4], 'c': [5, 6]}
    assert all(len(results['levels'][lvl]['returns']) == 5 for lvl in 'abc')
