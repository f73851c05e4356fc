"""Test-episode videos from raw frames: Atari (every emulator frame, RGB, in lockstep with the
played game), Gymnasium (rendered frames) and DeepMind Lab (the fake module's observations);
files read back with imageio."""

import os
import pathlib
import sys

import gymnasium
import imageio.v2 as imageio
import numpy as np
import pytest

from scalable_agent2 import config as config_lib
from scalable_agent2 import recording

FAKE_DMLAB_DIR = pathlib.Path(__file__).resolve().parent / 'fake_deepmind_lab'
PONG_BACKGROUND = (144, 72, 17)  # RGB of Pong's playfield in the raw ALE palette.


def _read(path):
    reader = imageio.get_reader(path, format='FFMPEG')
    try:
        return [np.asarray(f) for f in reader], reader.get_meta_data()
    finally:
        reader.close()


class _RandomAgent:
    """Uniform random actions; counts the agent steps of the episode."""

    def __init__(self, num_actions, seed=0):
        self._rng = np.random.default_rng(seed)
        self._num_actions = num_actions
        self.steps = 0
        self.last_output = None

    def __call__(self, step_output):
        self.last_output = step_output
        self.steps += 1
        return int(self._rng.integers(self._num_actions))


@pytest.mark.parametrize('max_frames', [400, 108_000])  # Truncated; played to game over.
def test_atari_video_has_every_raw_frame(tmp_path, max_frames):
    cfg = config_lib.EnvironmentConfig(
        atari_max_episode_frames=max_frames, atari_full_action_space=True
    ).validate()
    agent = _RandomAgent(18)
    result = recording.record_episode(
        'atari/Pong', cfg, seed=3, choose_action=agent, directory=str(tmp_path)
    )
    assert os.path.basename(result.path) == (
        f'atari_Pong_episode0_return{result.episode_return:.1f}.mp4'
    )
    assert os.listdir(tmp_path) == [os.path.basename(result.path)]
    # The reset frame, then 4 emulator frames per agent step (the last step may end early).
    steps = agent.steps
    assert 4 * (steps - 1) + 2 <= result.num_frames <= 4 * steps + 1
    if max_frames == 400:
        assert result.num_frames <= 401  # Cut at the cap (no-op start frames count too).
    else:
        assert result.num_frames > 401 and result.episode_return in range(-21, 22)
    frames, meta = _read(result.path)
    assert len(frames) == result.num_frames
    assert meta['fps'] == pytest.approx(60)
    assert frames[0].shape == (210, 160, 3)  # Raw RGB, not the agent's 84x84 grayscale.
    playfield = frames[len(frames) // 2][100:150, 40:120].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(playfield, PONG_BACKGROUND, atol=12)


@pytest.mark.parametrize('game, sticky', [('atari/Skiing', 0.0), ('atari/Breakout', 0.25)])
def test_atari_lockstep_with_mapped_actions_and_sticky_actions(tmp_path, game, sticky):
    # Skiing has fewer than 18 legal actions (mapped as in training); Breakout with sticky
    # actions draws from ALE's RNG on every frame. Either would break lockstep if mishandled.
    cfg = config_lib.EnvironmentConfig(
        atari_max_episode_frames=600, atari_sticky_action_prob=sticky, atari_full_action_space=True
    ).validate()
    agent = _RandomAgent(18, seed=2)
    result = recording.record_episode(game, cfg, 7, agent, str(tmp_path))
    assert 4 * (agent.steps - 1) + 2 <= result.num_frames <= 4 * agent.steps + 1
    assert len(_read(result.path)[0]) == result.num_frames


def test_atari_divergence_is_an_error_and_leaves_no_file(tmp_path, monkeypatch):
    original = recording._AtariShadow.step
    calls = []

    def diverging_step(self, action):
        frames, reward, done = original(self, action)
        calls.append(1)
        return frames, reward, done or len(calls) == 5

    monkeypatch.setattr(recording._AtariShadow, 'step', diverging_step)
    cfg = config_lib.EnvironmentConfig(atari_full_action_space=True).validate()
    with pytest.raises(recording.LockstepError, match='diverged at agent step 5'):
        recording.record_episode('atari/Pong', cfg, 1, _RandomAgent(18), str(tmp_path))
    assert os.listdir(tmp_path) == []


class _CounterEnv(gymnasium.Env):
    """Ends after 7 steps; reward = action; renders an 8x8 frame of grey level 30 * t."""

    metadata = {'render_modes': ['rgb_array'], 'render_fps': 10}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.observation_space = gymnasium.spaces.Box(0.0, 10.0, (1,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self._t += 1
        return np.full(1, self._t, np.float32), float(action), self._t >= 7, False, {}

    def render(self):
        return np.full((8, 8, 3), 30 * self._t, np.uint8)


gymnasium.register(id='RecordingTestCounter-v0', entry_point=_CounterEnv)


def test_gym_video_has_one_frame_per_env_step(tmp_path):
    cfg = config_lib.EnvironmentConfig(num_action_repeats=2).validate()
    agent = _RandomAgent(2, seed=4)
    result = recording.record_episode(
        'gym/RecordingTestCounter-v0', cfg, 0, agent, str(tmp_path), episode_index=2
    )
    assert agent.steps == 4  # 2 + 2 + 2 + 1 env steps.
    assert result.num_frames == 8  # The reset frame and 7 steps.
    assert os.path.basename(result.path) == (
        f'gym_RecordingTestCounter-v0_episode2_return{result.episode_return:.1f}.mp4'
    )
    frames, meta = _read(result.path)
    assert meta['fps'] == pytest.approx(10)
    np.testing.assert_allclose([f.mean() for f in frames], [30 * t for t in range(8)], atol=3)


def test_dmlab_video_records_the_observations(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE_DMLAB_DIR))
    monkeypatch.delitem(sys.modules, 'deepmind_lab', raising=False)
    import deepmind_lab

    deepmind_lab.CREATED.clear()
    cfg = config_lib.EnvironmentConfig().validate()  # 96x72, 4 action repeats.
    agent = _RandomAgent(1)  # Always forward.
    result = recording.record_episode('seekavoid_arena_01', cfg, 5, agent, str(tmp_path))
    # The fake's episodes last 10 frames: agent steps of 4, 4 and 2 frames; the video has the
    # first observation and those after the first two steps.
    assert agent.steps == 3 and result.num_frames == 3
    seed = [c for c in deepmind_lab.CREATED[0].calls if c[0] == 'reset'][0][2]
    frames, meta = _read(result.path)
    assert meta['fps'] == pytest.approx(15)
    assert frames[0].shape == (72, 96, 3)
    want = [deepmind_lab.frame_value(seed, n) for n in (0, 4, 8)]
    np.testing.assert_allclose([f.mean() for f in frames], want, atol=3)
    monkeypatch.delitem(sys.modules, 'deepmind_lab', raising=False)


def test_agent_chooser_feeds_back_actions_and_state():
    from scalable_agent2.types import AgentOutput, StepOutput, StepOutputInfo

    calls = []

    def policy(last_action, env_output, state):
        calls.append((last_action.copy(), env_output.reward.copy(), state))
        action = np.array([len(calls) % 3], np.int32)
        return AgentOutput(action, np.zeros([1, 3], np.float32), np.zeros([1], np.float32)), (
            state + 1
        )

    choose = recording.agent_chooser(policy, initial_state=10)

    def out(reward):
        return StepOutput(
            np.float32(reward),
            StepOutputInfo(np.float32(0), np.int32(0)),
            False,
            (np.zeros((2, 2, 3), np.uint8), ''),
        )

    assert [choose(out(r)) for r in (0.0, 1.0, 2.0)] == [1, 2, 0]
    assert [c[0].tolist() for c in calls] == [[0], [1], [2]]  # Last actions, starting at 0.
    assert [c[1].tolist() for c in calls] == [[0.0], [1.0], [2.0]]  # Batched rewards.
    assert [c[2] for c in calls] == [10, 11, 12]  # The core state is carried.


@pytest.mark.timeout(180)
def test_real_agent_plays_the_recorded_atari_episode(tmp_path):
    import tensorflow as tf

    from scalable_agent2 import builder, networks
    from scalable_agent2 import policy as policy_lib
    from scalable_agent2.environments import base

    cfg = config_lib.EnvironmentConfig(
        atari_max_episode_frames=240, atari_full_action_space=True
    ).validate()
    spec = base.ObservationSpec((84, 84, 4), 'uint8', False)
    agent = networks.ImpalaAgent(config_lib.AgentConfig(num_actions=18, torso='shallow'))
    builder.create_agent_variables(agent, spec)
    policy = policy_lib.make_batched_policy(agent, timeout_ms=10)
    try:
        initial_state = tf.nest.map_structure(np.asarray, agent.initial_state(1))
        choose = recording.agent_chooser(policy, initial_state)
        result = recording.record_episode('atari/Pong', cfg, 2, choose, str(tmp_path))
    finally:
        policy.close()
    frames, _ = _read(result.path)
    assert len(frames) == result.num_frames and 200 <= result.num_frames <= 241
    assert frames[0].shape == (210, 160, 3)
