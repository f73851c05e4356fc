"""Atari suite: real ALE games against a raw `ALEInterface` reference with numpy preprocessing."""

import ale_py
import numpy as np
import pytest

from scalable_agent2 import config as config_lib
from scalable_agent2 import environments
from scalable_agent2.environments import atari, base


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of an area (box) downsampling: overlap / scale."""
    m = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for o in range(n_out):
        lo, hi = o * scale, (o + 1) * scale
        for i in range(int(lo), min(int(np.ceil(hi)), n_in)):
            m[o, i] = min(hi, i + 1) - max(lo, i)
    return m / scale


_RY, _RX = _area_matrix(210, 84), _area_matrix(160, 84)


class _ReferenceAle:
    """Raw ALE with the IMPALA preprocessing in numpy (no no-ops, no sticky actions)."""

    def __init__(self, game: str, max_frames: int = 108_000):
        self.ale = ale_py.ALEInterface()
        self.ale.setLoggerMode(ale_py.LoggerMode.Error)
        self.ale.setInt('random_seed', 0)
        self.ale.setFloat('repeat_action_probability', 0.0)
        self.ale.setInt('max_num_frames_per_episode', max_frames)
        self.ale.loadROM(ale_py.roms.get_rom_path(game))
        self.actions = self.ale.getLegalActionSet()
        self.ale.reset_game()

    @staticmethod
    def small(screen: np.ndarray) -> np.ndarray:
        """[210, 160] uint8 -> [84, 84] float64, area-resized and rounded."""
        return np.rint(_RY @ screen.astype(np.float64) @ _RX.T)

    def first_frame(self) -> np.ndarray:
        return self.small(self.ale.getScreenGrayscale())

    def step(self, action: int) -> tuple[float, bool, int, np.ndarray]:
        """4 frames; returns (reward sum, game over, lives, max of the last 2 screens)."""
        reward, screens = 0.0, []
        for _ in range(4):
            reward += self.ale.act(self.actions[action])
            screens.append(self.ale.getScreenGrayscale())
            if self.ale.game_over():
                break
        screen = np.maximum(screens[-1], screens[-2 if len(screens) > 1 else -1])
        return reward, self.ale.game_over(), self.ale.lives(), screen


def _config(**kwargs) -> config_lib.EnvironmentConfig:
    kwargs.setdefault('atari_full_action_space', True)
    return config_lib.EnvironmentConfig(atari_noop_max=0, **kwargs).validate()


def test_pong_flow_matches_raw_ale():
    cfg = _config(atari_max_episode_frames=4000)  # Truncates after exactly 1000 agent steps.
    env = base.FlowEnvironment(atari.AtariEnvironment('Pong', cfg, 0, is_test=False))
    ref = _ReferenceAle('pong', max_frames=4000)
    assert env.num_actions == 18
    assert env.observation_spec == base.ObservationSpec((84, 84, 4), 'uint8', False)

    first = env.initial()
    assert first.done and first.reward == 0 and first.info == (0, 0, True)
    frame = first.observation[0]
    assert frame.dtype == np.uint8 and frame.shape == (84, 84, 4)
    assert np.abs(frame[..., -1] - ref.first_frame()).max() <= 1

    rng = np.random.default_rng(0)
    rewards = []
    for t in range(1010):
        action = int(rng.integers(18))
        out = env.step(action)
        if t < 999:
            reward, _, _, ref_screen = ref.step(action)
            assert out.reward == reward, t
            assert not out.done, t
            new = out.observation[0]
            if t % 20 == 0:  # The resize reference is slow; a sample of frames suffices.
                assert np.abs(new[..., -1].astype(float) - ref.small(ref_screen)).max() <= 1, t
            np.testing.assert_array_equal(new[..., :-1], frame[..., 1:])  # The stack shifts.
            frame = new
            rewards.append(reward)
        elif t == 999:  # The 108K-style cap, here 4000 frames, ends the episode.
            reward, _, _, _ = ref.step(action)
            rewards.append(reward)
            assert out.done and out.reward == reward
            assert out.info.episode_step == 1000
            assert out.info.episode_return == pytest.approx(sum(rewards))
            assert any(r != 0 for r in rewards)
            # The observation is the next game's first: an empty history behind one frame.
            assert not out.observation[0][..., :-1].any()
        else:  # Counters restart.
            assert out.info.episode_step == t - 999
    env.close()


def _dones_and_lives(is_test: bool, steps: int):
    cfg = _config()
    env = base.FlowEnvironment(atari.AtariEnvironment('breakout', cfg, 0, is_test=is_test))
    ref = _ReferenceAle('breakout')
    env.initial()
    rng = np.random.default_rng(1)
    dones, lives, game_overs, outs = [], [], [], []
    for _ in range(steps):
        action = int(rng.integers(18))
        out = env.step(action)
        _, game_over, n_lives, _ = ref.step(action)
        dones.append(out.done)
        lives.append(n_lives)
        game_overs.append(game_over)
        outs.append(out)
        if game_over:
            break
    env.close()
    return dones, lives, game_overs, outs


def test_life_loss_ends_training_episodes_but_the_game_goes_on():
    dones, lives, game_overs, outs = _dones_and_lives(is_test=False, steps=3000)
    assert game_overs[-1], 'a random Breakout game should end within 3000 steps'
    lost = [t for t in range(1, len(lives)) if lives[t] < lives[t - 1]]
    expected = sorted(set(lost) | {len(lives) - 1})
    assert [t for t, d in enumerate(dones) if d] == expected
    assert len(expected) == 5  # Breakout has 5 lives.
    for t in expected[:-1]:
        # After a life loss the frame history continues (no reset) ...
        assert outs[t].observation[0][..., 0].any()
        # ... the counters run on over the whole game, and the game is not over.
        assert not outs[t].info.game_over
        assert outs[t + 1].info.episode_step == outs[t].info.episode_step + 1
    # The game's end reports the full-game return and length (what summaries show).
    assert outs[-1].info.game_over
    assert outs[-1].info.episode_return == pytest.approx(sum(float(o.reward) for o in outs))
    assert outs[-1].info.episode_step == len(outs)


def test_life_loss_does_not_end_test_episodes():
    dones, _, game_overs, outs = _dones_and_lives(is_test=True, steps=3000)
    assert game_overs[-1]
    assert [t for t, d in enumerate(dones) if d] == [len(dones) - 1]
    assert outs[-1].info.episode_step == len(dones)


def test_same_seed_same_game_other_seed_other_noop_start():
    cfg = config_lib.EnvironmentConfig(atari_full_action_space=True)  # Up to 30 no-ops.

    def frames(seed):
        env = atari.AtariEnvironment('pong', cfg, seed, False)
        out = [env.reset()[0]] + [env.step(t % 18)[2][0] for t in range(40)]
        env.close()
        return np.stack(out)

    a, b = frames(5), frames(5)
    np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(frames(5), frames(s)) for s in (6, 7, 8))


def test_sticky_actions_setting_reaches_the_emulator():
    def rewards_and_frames(prob):
        cfg = _config(atari_sticky_action_prob=prob)
        env = atari.AtariEnvironment('breakout', cfg, 0, False)
        env.reset()
        out = [env.step(t * 7 % 18)[2][0] for t in range(200)]
        env.close()
        return np.stack(out)

    np.testing.assert_array_equal(rewards_and_frames(0.0), rewards_and_frames(0.0))
    assert not np.array_equal(rewards_and_frames(0.0), rewards_and_frames(0.25))


def test_minimal_action_set_and_frame_settings():
    cfg = _config(atari_full_action_space=False, atari_frame_size=64, atari_frame_stack=2)
    env = atari.AtariEnvironment('Pong', cfg, 0, False)
    assert env.num_actions == 6
    assert env.observation_spec.frame_shape == (64, 64, 2)
    assert env.reset()[0].shape == (64, 64, 2)
    env.close()


def test_skiing_has_18_actions_with_fire_variants_mapped_to_their_moves():
    # ale-py 0.12 gives Skiing 9 legal actions (no FIRE); Atari-57 needs 18 for every game.
    cfg = _config()
    envs = [atari.AtariEnvironment('skiing', cfg, 0, False) for _ in range(2)]
    assert envs[0].num_actions == 18
    ale_actions = ale_py.Action.__members__
    trajectories = []
    for env, fire in zip(envs, (True, False), strict=True):
        env.reset()
        frames = []
        for t in range(60):
            move = ('DOWNLEFT', 'DOWNRIGHT', 'LEFT', 'UP')[t // 15]
            name = (move + 'FIRE') if fire else move
            frames.append(env.step(ale_actions[name].value)[2][0])
        trajectories.append(np.stack(frames))
        env.close()
    np.testing.assert_array_equal(trajectories[0], trajectories[1])
    assert not np.array_equal(trajectories[0][0], trajectories[0][-1])  # It moved.


@pytest.mark.parametrize(
    'name,rom',
    [
        ('Pong', 'pong'),
        ('pong', 'pong'),
        ('MontezumaRevenge', 'montezuma_revenge'),
        ('montezuma_revenge', 'montezuma_revenge'),
        ('UpNDown', 'up_n_down'),
    ],
)
def test_game_name_spellings(name, rom):
    assert atari.rom_id(name) == rom


def test_all_57_games_are_roms():
    games = atari.atari57_games()
    assert len(games) == 57 == len(set(games))
    assert all(atari.rom_id(g) == g for g in games)


def test_unknown_game_lists_the_57():
    with pytest.raises(ValueError, match='Unknown Atari game') as info:
        environments.create_environment('atari/NotAGame', config_lib.EnvironmentConfig(), 0, False)
    message = str(info.value)
    assert all(g in message for g in atari.atari57_games())


def test_subprocess_pong_matches_in_process():
    cfg = config_lib.EnvironmentConfig(atari_full_action_space=True)
    local = base.FlowEnvironment(atari.AtariEnvironment('Pong', cfg, 11, False))
    actions = [int(a) for a in np.random.default_rng(2).integers(0, 18, size=100)]
    with environments.create_environment('atari/Pong', cfg, 11, False) as remote:
        assert remote.num_actions == 18
        assert remote.observation_spec == local.observation_spec
        got = [remote.initial()] + [remote.step(a) for a in actions]
    want = [local.initial()] + [local.step(a) for a in actions]
    for g, w in zip(got, want, strict=True):
        assert (g.reward, g.done, g.info) == (w.reward, w.done, w.info)
        np.testing.assert_array_equal(g.observation[0], w.observation[0])
        assert g.observation[1] == ''


@pytest.mark.slow
@pytest.mark.parametrize('level', environments.expand_level_names('atari57', is_test=False))
def test_every_atari57_game_creates_and_steps(level):
    cfg = config_lib.EnvironmentConfig(atari_full_action_space=True)
    with environments.create_environment(level, cfg, 0, is_test=False) as env:
        assert env.num_actions == 18
        first = env.initial()
        assert first.observation[0].shape == (84, 84, 4)
        for t in range(50):
            out = env.step(t % 18)
            assert out.observation[0].shape == (84, 84, 4)
            assert out.observation[0].dtype == np.uint8
