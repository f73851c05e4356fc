"""Videos of test episodes from the environment's raw RGB frames (for `--record_video`).

The agent plays a normal test environment (the same preprocessing as in training), while a
*shadow* copy of the game, built with the same seed and settings but rendering raw RGB frames
one emulator frame at a time, receives the same actions. Both are deterministic given the seed,
so they stay in lockstep; each agent step checks this (same reward, same episode end) and a
`LockstepError` is raised otherwise.

- `atari/<Game>`: a second ALE vector environment with frameskip 1 and 210x160 RGB frames;
  every emulator frame of the episode is in the video, at 60 frames/s (the console's rate).
- `gym/<EnvId>`: the env made with `render_mode='rgb_array'`; one frame per env step, at its
  `metadata['render_fps']` (classic-control envs need `pygame` to render).
- DeepMind Lab: its observations are already rendered RGB frames (`--width` x `--height`); one
  per agent step, at 60 / `num_action_repeats` frames/s (DeepMind Lab runs at 60 frames/s).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from scalable_agent2 import config as config_lib
from scalable_agent2 import environments, video
from scalable_agent2.types import StepOutput

ATARI_FPS = 60.0
DMLAB_FPS = 60.0
_FULL_ACTIONS = 18


class LockstepError(RuntimeError):
    """The shadow environment that renders the video diverged from the played one."""


class RecordedEpisode(NamedTuple):
    path: str
    episode_return: float
    num_frames: int


class _AtariShadow:
    """Raw RGB frames of an Atari game that follows the played game action by action."""

    def __init__(self, game: str, config: config_lib.EnvironmentConfig, seed: int):
        import ale_py

        from scalable_agent2.environments import atari

        rom = atari.rom_id(game)
        self._env = ale_py.AtariVectorEnv(
            rom,
            num_envs=1,
            num_threads=1,
            max_num_frames_per_episode=config.atari_max_episode_frames,
            repeat_action_probability=config.atari_sticky_action_prob,
            full_action_space=config.atari_full_action_space,
            # The step that ends a game returns its last frame (not the next game's first).
            autoreset_mode='NextStep',
            img_height=210,
            img_width=160,
            grayscale=False,
            stack_num=1,
            frameskip=1,
            maxpool=False,
            noop_max=config.atari_noop_max,
            episodic_life=False,
            reward_clipping=False,
            use_fire_reset=False,
        )
        self._repeats = config.num_action_repeats
        self._seed = seed
        self._action_map = None
        if config.atari_full_action_space and self._env.single_action_space.n < _FULL_ACTIONS:
            self._action_map = atari.full_action_map(rom)  # The played game's mapping.
        self.fps = ATARI_FPS

    def reset(self) -> np.ndarray:
        obs, _ = self._env.reset(seed=self._seed)
        return obs[0, 0]

    def step(self, action: int) -> tuple[list[np.ndarray], float, bool]:
        """`num_action_repeats` emulator frames (fewer if the game ends): frames, reward, done."""
        if self._action_map is not None:
            action = self._action_map[action]
        frames, total = [], 0.0
        for _ in range(self._repeats):
            obs, reward, terminated, truncated, _ = self._env.step(np.array([action], np.int64))
            frames.append(obs[0, 0])
            total += float(reward[0])
            if terminated[0] or truncated[0]:
                return frames, total, True
        return frames, total, False

    def close(self) -> None:
        self._env.close()


class _GymShadow:
    """Rendered frames of a Gymnasium env that follows the played env action by action."""

    def __init__(self, env_id: str, config: config_lib.EnvironmentConfig, seed: int):
        import gymnasium

        self._env = gymnasium.make(env_id, render_mode='rgb_array')
        self._start = int(self._env.action_space.start)
        self._repeats = config.num_action_repeats
        self._seed = seed
        self.fps = float(self._env.metadata.get('render_fps') or 30)

    def _render(self) -> np.ndarray:
        frame = self._env.render()
        if frame is None:
            raise ValueError('the Gymnasium env rendered no frame with render_mode=rgb_array')
        return np.asarray(frame, np.uint8)

    def reset(self) -> np.ndarray:
        self._env.reset(seed=self._seed)
        return self._render()

    def step(self, action: int) -> tuple[list[np.ndarray], float, bool]:
        frames, total = [], 0.0
        for _ in range(self._repeats):
            _, reward, terminated, truncated, _ = self._env.step(action + self._start)
            frames.append(self._render())
            total += float(reward)
            if terminated or truncated:
                return frames, total, True
        return frames, total, False

    def close(self) -> None:
        self._env.close()


def _shadow(level_name: str, config: config_lib.EnvironmentConfig, seed: int) -> Any | None:
    """The suite's shadow renderer, or None for DeepMind Lab (its frames are its output)."""
    if level_name.startswith(environments.ATARI_PREFIX):
        return _AtariShadow(level_name[len(environments.ATARI_PREFIX) :], config, seed)
    elif level_name.startswith(environments.GYM_PREFIX):
        return _GymShadow(level_name[len(environments.GYM_PREFIX) :], config, seed)
    else:
        return None


def agent_chooser(
    policy: Callable[..., Any], initial_state: Any, use_instruction: bool = True
) -> Callable[[StepOutput], int]:
    """Wraps a batched agent step as `choose_action` for `record_episode`.

    Args:
      policy: `(last_action int32 [1], env_output [1, ...], core_state) -> (AgentOutput [1, ...],
        core_state)`, e.g. `policy.make_batched_policy(agent, ...)` as test mode uses it.
      initial_state: the agent's initial core state with batch size 1.
      use_instruction: whether the agent reads the instruction (test mode's `policy_inputs`).

    Returns:
      A function from each unbatched `StepOutput` to the sampled action; it carries the core
      state and the last action from call to call, as test mode does (`policy.PolicyStepper`).
    """
    from scalable_agent2 import policy as policy_lib  # TensorFlow, only when an agent plays.

    return policy_lib.PolicyStepper(policy, initial_state, use_instruction).step


def record_episode(
    level_name: str,
    config: config_lib.EnvironmentConfig,
    seed: int,
    choose_action: Callable[[StepOutput], int],
    directory: str,
    episode_index: int = 0,
    scale: int = 1,
) -> RecordedEpisode:
    """Plays one test episode in this process and writes its video.

    Args:
      level_name: `atari/<Game>`, `gym/<EnvId>` or a DeepMind Lab level.
      config: the environment config (as in test mode).
      seed: the environment seed.
      choose_action: the agent: from each `StepOutput` (the first one has `done=True`) to an
        action; it keeps its own recurrent state.
      directory: where the MP4 goes (created if needed).
      episode_index: number in the file name.
      scale: integer enlargement of the frames.

    Returns:
      The video's path (`<level>_episode<i>_return<R>.mp4`), the episode return and the
      number of frames written.

    Raises:
      LockstepError: the shadow environment diverged (reward or episode end differ).
    """
    env = environments.make_flow_environment(level_name, config, seed, is_test=True)
    shadow = None
    episode = None
    try:
        shadow = _shadow(level_name, config, seed)
        if shadow is None:  # DeepMind Lab: record the observations themselves.
            fps = DMLAB_FPS / config.num_action_repeats
        else:
            fps = shadow.fps
        episode = video.EpisodeVideo(directory, level_name, episode_index, fps, scale)
        output = env.initial()
        episode.append(shadow.reset() if shadow is not None else output.observation[0])
        step = 0
        while True:
            action = int(choose_action(output))
            output = env.step(action)
            step += 1
            if shadow is None:
                if not output.done:
                    episode.append(output.observation[0])
            else:
                frames, reward, done = shadow.step(action)
                if not np.isclose(reward, float(output.reward)) or done != bool(output.done):
                    raise LockstepError(
                        f'{level_name}: the video environment diverged at agent step {step} '
                        f'(reward {reward} vs {float(output.reward)}, done {done} vs '
                        f'{bool(output.done)})'
                    )
                for frame in frames:
                    episode.append(frame)
            if output.done:
                break
        episode_return = float(output.info.episode_return)
        num_frames = episode.num_frames
        path = episode.finish(episode_return)
        episode = None
        return RecordedEpisode(path, episode_return, num_frames)
    finally:
        if episode is not None:
            episode.discard()
        if shadow is not None:
            shadow.close()
        env.close()
