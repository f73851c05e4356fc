"""Atari 2600 games (ALE) with the IMPALA paper's preprocessing, as a `RawEnvironment`.

Level names are `atari/<Game>`, where `<Game>` is an ALE ROM id in any of the spellings
'Pong', 'pong', 'MontezumaRevenge', 'montezuma_revenge'. The preprocessing runs inside ale-py's
C++ `AtariVectorEnv` (one environment, one thread), which was faster than Gymnasium's Python
`AtariPreprocessing` wrapper and needs no OpenCV in Python. Each part is an `EnvironmentConfig`
field:
  * `atari_frame_size`: grayscale frames resized to `[size, size]` (84);
  * `num_action_repeats`: frame skip (4), with a max over the last 2 frames;
  * `atari_frame_stack`: frames stacked on the last axis (4);
  * `atari_noop_max`: up to this many no-ops at the start of a game (30);
  * `atari_full_action_space`: all 18 actions for every game (games whose legal set is smaller,
    i.e. Skiing in ale-py 0.12, map the missing FIRE variants to their non-FIRE action);
  * `atari_terminal_on_life_loss`: in training (never when `is_test`) a lost life ends the
    agent's episode while the game goes on, as in DQN: the next `reset()` continues the game;
  * `atari_max_episode_frames`: game length cap in frames (108K = 30 minutes), then truncation;
  * `atari_sticky_action_prob`: ALE `repeat_action_probability` (0 = IMPALA; 0.25 = Machado
    et al. 2018).
Rewards are not clipped here (the learner clips); games start without an automatic FIRE.
Frames are uint8 `[size, size, stack]`, oldest first.

`AtariBatch` runs E games of one ROM in one `AtariVectorEnv` (E C++ emulators, stepped by its
threads) as an `environments.batched.EnvironmentBatch`, each game exactly as `AtariEnvironment`
with the same seed inside `FlowEnvironment`.
"""

import functools
import os
from collections.abc import Sequence

import ale_py
import numpy as np

from scalable_agent2 import config as config_lib
from scalable_agent2.environments.base import Observation, ObservationSpec
from scalable_agent2.environments.batched import EnvironmentBatch, check_actions
from scalable_agent2.errors import UsageError
from scalable_agent2.types import StepOutput


def _squash(name: str) -> str:
    return name.replace('_', '').replace('-', '').lower()


@functools.cache
def _rom_ids() -> dict[str, str]:
    """Squashed spelling -> ALE ROM id, for every ROM shipped with ale-py."""
    return {_squash(rom): rom for rom in ale_py.roms.get_all_rom_ids()}


def atari57_games() -> list[str]:
    """The 57 games of Atari-57, as ROM ids ('pong', 'montezuma_revenge', ...)."""
    from scalable_agent2.scoring import atari57  # Lazy: scoring is built alongside.

    return list(atari57.GAMES)


def rom_id(game: str) -> str:
    """Maps a game name in any accepted spelling to its ALE ROM id.

    Raises:
      ValueError: the game is not a ROM shipped with ale-py; lists the Atari-57 games.
    """
    rom = _rom_ids().get(_squash(game))
    if rom is None:
        raise UsageError(
            f'Unknown Atari game {game!r}. Atari-57 games: {", ".join(atari57_games())} '
            '(any ROM id shipped with ale-py also works).'
        )
    return rom


_NUM_FULL_ACTIONS = 18


def full_action_map(rom: str) -> list[int]:
    """For a game whose legal set has fewer than 18 actions (Skiing: no FIRE), maps each of
    the 18 ALE actions to an index in that set: itself if legal, else without FIRE, else NOOP.

    Every game then has the same 18 actions, so one agent can play all of Atari-57.
    """
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.loadROM(ale_py.roms.get_rom_path(rom))
    legal = [a.value for a in ale.getLegalActionSet()]
    actions = sorted(ale_py.Action.__members__.values(), key=lambda a: a.value)
    mapping = []
    for action in actions[:_NUM_FULL_ACTIONS]:
        fallback = ale_py.Action.__members__[action.name.replace('FIRE', '') or 'NOOP'].value
        if action.value in legal:
            mapping.append(legal.index(action.value))
        elif fallback in legal:
            mapping.append(legal.index(fallback))
        else:
            mapping.append(legal.index(ale_py.Action.NOOP.value))
    return mapping


def vector_env(
    rom: str, config: config_lib.EnvironmentConfig, num_envs: int, num_threads: int
) -> ale_py.AtariVectorEnv:
    """ale-py's C++ vector environment with the IMPALA preprocessing of `config`."""
    return ale_py.AtariVectorEnv(
        rom,
        num_envs=num_envs,
        num_threads=num_threads,
        max_num_frames_per_episode=config.atari_max_episode_frames,
        repeat_action_probability=config.atari_sticky_action_prob,
        full_action_space=config.atari_full_action_space,
        # On game end the same step returns the next game's first frame.
        autoreset_mode='SameStep',
        img_height=config.atari_frame_size,
        img_width=config.atari_frame_size,
        grayscale=True,
        stack_num=config.atari_frame_stack,
        frameskip=config.num_action_repeats,
        maxpool=True,
        noop_max=config.atari_noop_max,
        episodic_life=False,  # Life loss is handled here, so the game is not reset.
        reward_clipping=False,
        use_fire_reset=False,
    )


class AtariEnvironment:
    """One ALE game with IMPALA preprocessing, implementing `RawEnvironment`."""

    def __init__(self, game: str, config: config_lib.EnvironmentConfig, seed: int, is_test: bool):
        """Builds the game.

        Args:
          game: game name (see `rom_id`), without the `atari/` prefix.
          config: `EnvironmentConfig` (the `atari_*` fields and `num_action_repeats`).
          seed: seeds the emulator and the no-op starts.
          is_test: evaluation mode: a lost life never ends the episode.
        """
        self._env = vector_env(rom_id(game), config, num_envs=1, num_threads=1)
        self._seed = seed
        self._life_loss_ends_episode = config.atari_terminal_on_life_loss and not is_test
        self._num_actions = int(self._env.single_action_space.n)
        # Index into the game's legal action set for each agent action (None: the identity).
        self._action_map = None
        if config.atari_full_action_space and self._num_actions < _NUM_FULL_ACTIONS:
            self._action_map = full_action_map(rom_id(game))
            self._num_actions = _NUM_FULL_ACTIONS
        size, stack = config.atari_frame_size, config.atari_frame_stack
        self._spec = ObservationSpec((size, size, stack), 'uint8', False)
        self._lives = 0
        self._game_over = True
        self._pending = None  # The observation `reset()` returns after a `done` step.

    @property
    def num_actions(self) -> int:
        return self._num_actions

    @property
    def observation_spec(self) -> ObservationSpec:
        return self._spec

    @property
    def game_over(self) -> bool:
        """Whether the last step ended the game (a lost life alone does not)."""
        return self._game_over

    @staticmethod
    def _frame(obs: np.ndarray) -> np.ndarray:
        # [1, stack, H, W] -> [H, W, stack], contiguous for cheap pickling.
        return np.ascontiguousarray(np.transpose(obs[0], (1, 2, 0)))

    def reset(self) -> Observation:
        """The first observation of an episode.

        After a step that ended a game this is the next game's first frame (already reset);
        after a life loss it is the current frame of the continuing game; otherwise the game is
        reset (seeded the first time).
        """
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame, ''
        obs, info = self._env.reset(seed=self._seed)
        self._seed = None
        self._lives = int(info['lives'][0])
        return self._frame(obs), ''

    def step(self, action: int) -> tuple[float, bool, Observation]:
        if not 0 <= action < self._num_actions:
            raise ValueError(f'action must be in [0, {self._num_actions}), got {action}')
        self._pending = None
        if self._action_map is not None:
            action = self._action_map[action]
        obs, reward, terminated, truncated, info = self._env.step(np.array([action], np.int64))
        lives = int(info['lives'][0])
        game_over = bool(terminated[0] or truncated[0])
        life_lost = lives < self._lives and not game_over
        self._lives = lives
        frame = self._frame(obs)
        done = game_over or (life_lost and self._life_loss_ends_episode)
        self._game_over = game_over
        if done:
            self._pending = frame
        return float(reward[0]), done, (frame, '')

    def close(self) -> None:
        self._env.close()


class AtariBatch(EnvironmentBatch):
    """E games of one ROM in one ale-py `AtariVectorEnv`, as an `EnvironmentBatch`.

    The emulators step in the vector environment's C++ threads, which release the GIL: `send`
    returns at once and `receive` waits, so the caller's work in between (and other Python
    threads) overlaps the stepping. Row i produces exactly what
    `FlowEnvironment(AtariEnvironment(game, config, seeds[i], is_test))` (i.e.
    `create_environment('atari/<game>', config, seeds[i], is_test)`) produces: same seeds,
    no-op starts, sticky actions, life-loss episodes (training only), frame cap, action set and
    episode statistics (`info` runs over the whole game; `game_over` marks its end).
    """

    def __init__(
        self,
        level_names: Sequence[str],
        config: config_lib.EnvironmentConfig,
        seeds: Sequence[int],
        is_test: bool,
        num_threads: int | None = None,
    ):
        """Builds the vector environment (no game starts before `initial()`).

        Args:
          level_names: E names of one game (`atari/<Game>` in any accepted spelling).
          config: `EnvironmentConfig` (the `atari_*` fields and `num_action_repeats`).
          seeds: E seeds; game i is seeded with `seeds[i]` at its first reset.
          is_test: evaluation mode: a lost life never ends the episode.
          num_threads: C++ threads stepping the games (None: one per game, at most one per CPU).
        """
        level_names = list(level_names)
        if not level_names or len(seeds) != len(level_names):
            raise ValueError(
                f'AtariBatch needs one seed per level: {len(level_names)} levels, '
                f'{len(seeds)} seeds'
            )
        games = {rom_id(name.split('/', 1)[-1]) for name in level_names}
        if len(games) != 1:
            raise ValueError(f'an AtariBatch runs one game, got {sorted(games)}')
        rom = games.pop()
        self.num_envs = len(level_names)
        self.level_names = level_names
        if num_threads is None:
            num_threads = min(self.num_envs, os.cpu_count() or 1)
        self._env = vector_env(rom, config, num_envs=self.num_envs, num_threads=num_threads)
        self._seeds = np.asarray(seeds, np.int64)
        self._life_loss_ends_episode = config.atari_terminal_on_life_loss and not is_test
        self.num_actions = int(self._env.single_action_space.n)
        self._action_map = None  # As AtariEnvironment's, as an array.
        if config.atari_full_action_space and self.num_actions < _NUM_FULL_ACTIONS:
            self._action_map = np.asarray(full_action_map(rom), np.int32)
            self.num_actions = _NUM_FULL_ACTIONS
        size, stack = config.atari_frame_size, config.atari_frame_stack
        self.observation_spec = ObservationSpec((size, size, stack), 'uint8', False)
        self._lives = np.zeros(self.num_envs, np.int64)
        self._episode_return = np.zeros(self.num_envs, np.float64)  # As FlowEnvironment's.
        self._episode_step = np.zeros(self.num_envs, np.int64)
        self._sent = False
        self._closed = False

    def _write_frames(self, obs: np.ndarray, out: StepOutput) -> None:
        # [E, stack, H, W] -> [E, H, W, stack].
        np.copyto(out.observation[0], np.transpose(obs, (0, 2, 3, 1)))

    def initial(self, out: StepOutput | None = None) -> StepOutput:
        """Starts a game in every environment (seeded the first time, as the single env)."""
        if self._sent:
            self._env.recv()  # Drop a step in flight.
            self._sent = False
        if out is None:
            out = self.empty_outputs()
        seeds, self._seeds = self._seeds, None
        obs, info = self._env.reset(seed=seeds)
        self._lives[:] = info['lives']
        self._episode_return[:] = 0.0
        self._episode_step[:] = 0
        out.reward[...] = 0.0
        out.info.episode_return[...] = 0.0
        out.info.episode_step[...] = 0
        out.info.game_over[...] = True
        out.done[...] = True
        self._write_frames(obs, out)
        out.observation[1][...] = ''
        return out

    def send(self, actions: np.ndarray) -> None:
        actions = check_actions(actions, self.num_envs, self.num_actions)
        if self._sent:
            raise RuntimeError('send() again before receive()')
        if self._action_map is not None:
            actions = self._action_map[actions]
        self._env.send(actions)
        self._sent = True

    def receive(self, out: StepOutput | None = None) -> StepOutput:
        if not self._sent:
            raise RuntimeError('receive() without send()')
        obs, reward, terminated, truncated, info = self._env.recv()
        self._sent = False
        env_ids = info['env_id']
        if not np.array_equal(env_ids, np.arange(self.num_envs)):  # Results in env order.
            order = np.argsort(env_ids)
            obs, reward, terminated, truncated = (
                obs[order], reward[order], terminated[order], truncated[order]
            )  # fmt: skip
            lives = info['lives'][order]
        else:
            lives = info['lives']
        if out is None:
            out = self.empty_outputs()
        game_over = np.logical_or(terminated, truncated)
        life_lost = (lives < self._lives) & ~game_over
        self._lives[:] = lives
        done = game_over | (life_lost & self._life_loss_ends_episode)
        self._episode_return += reward
        self._episode_step += 1
        out.reward[...] = reward
        out.info.episode_return[...] = self._episode_return
        out.info.episode_step[...] = self._episode_step
        out.info.game_over[...] = game_over
        out.done[...] = done
        self._write_frames(obs, out)
        out.observation[1][...] = ''
        # Counters run over the whole game (a lost life does not reset them).
        self._episode_return[game_over] = 0.0
        self._episode_step[game_over] = 0
        return out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.close()
