"""Any registered discrete-action Gymnasium environment as a `RawEnvironment`.

Level names are `gym/<EnvId>` (e.g. `gym/CartPole-v1`); `<EnvId>` may use Gymnasium's
`module:EnvId` form to import a third-party package first. Frames:
  * image observations (uint8 Box of rank 2 or 3) -> uint8 `[H, W, C]` (C=1 added for rank 2);
  * any other Box -> float32 `[D]` (flattened);
  * Discrete observations -> float32 one-hot `[n]`.
Each agent step repeats the action `num_action_repeats` times (stopping at episode end) and sums
the rewards, so frame counters agree with the other suites. Termination and truncation both end
the episode.
"""

import ale_py
import gymnasium
import numpy as np

from scalable_agent2 import config as config_lib
from scalable_agent2.environments.base import Observation, ObservationSpec
from scalable_agent2.errors import UsageError

# Gymnasium 1.x lists the ALE ids (e.g. `gym/ALE/Pong-v5`, raw frames) only once registered.
gymnasium.register_envs(ale_py)


def check_env_id(env_id: str) -> None:
    """Raises ValueError if `env_id` is not a registered Gymnasium id.

    Ids in `module:EnvId` form are left to `gymnasium.make`, which imports the module.
    """
    if ':' in env_id:
        return
    if env_id not in gymnasium.registry:
        close = sorted(k for k in gymnasium.registry if env_id.split('-')[0].lower() in k.lower())
        hint = f' Similar ids: {close[:10]}.' if close else ''
        raise UsageError(
            f'Unknown Gymnasium env id {env_id!r}.{hint} Registered ids are the keys of '
            '`gymnasium.registry` (e.g. CartPole-v1, Acrobot-v1, MountainCar-v0); use '
            '`module:EnvId` to import a package that registers more.'
        )


def _frame_converter(space: gymnasium.Space):
    """Returns (ObservationSpec, function mapping a raw observation to the frame)."""
    if isinstance(space, gymnasium.spaces.Box):
        if space.dtype == np.uint8 and len(space.shape) in (2, 3):
            shape = tuple(space.shape) if len(space.shape) == 3 else (*space.shape, 1)
            spec = ObservationSpec(shape, 'uint8', False)
            return spec, lambda obs: np.asarray(obs, np.uint8).reshape(shape)
        size = int(np.prod(space.shape))
        spec = ObservationSpec((size,), 'float32', False)
        return spec, lambda obs: np.asarray(obs, np.float32).reshape(size)
    if isinstance(space, gymnasium.spaces.Discrete):
        n, start = int(space.n), int(space.start)

        def one_hot(obs):
            frame = np.zeros((n,), np.float32)
            frame[int(obs) - start] = 1.0
            return frame

        return ObservationSpec((n,), 'float32', False), one_hot
    raise UsageError(
        f'Unsupported Gymnasium observation space {space}: use a Box (vector or uint8 image) '
        'or Discrete observation space.'
    )


class GymEnvironment:
    """A Gymnasium env with discrete actions, implementing `RawEnvironment`."""

    def __init__(self, env_id: str, config: config_lib.EnvironmentConfig, seed: int, is_test: bool):
        """Builds the env.

        Args:
          env_id: a Gymnasium id (without the `gym/` prefix).
          config: `EnvironmentConfig`; uses `num_action_repeats`.
          seed: seeds the first reset (later resets continue the env's RNG) and the action space.
          is_test: unused (Gymnasium envs have no test mode); kept for the common signature.

        Raises:
          ValueError: unknown id, non-discrete action space or unsupported observation space.
        """
        del is_test
        check_env_id(env_id)
        self._env = gymnasium.make(env_id)
        action_space = self._env.action_space
        if not isinstance(action_space, gymnasium.spaces.Discrete):
            self._env.close()
            raise UsageError(
                f'Gymnasium env {env_id!r} has action space {action_space}; only Discrete '
                'action spaces are supported (IMPALA samples from a categorical policy).'
            )
        self._action_start = int(action_space.start)
        self._num_actions = int(action_space.n)
        self._spec, self._to_frame = _frame_converter(self._env.observation_space)
        self._repeats = config.num_action_repeats
        self._seed = seed
        action_space.seed(seed)

    @property
    def num_actions(self) -> int:
        return self._num_actions

    @property
    def observation_spec(self) -> ObservationSpec:
        return self._spec

    def reset(self) -> Observation:
        # Seed only the first reset: reseeding every episode would replay the same episodes.
        obs, _ = self._env.reset(seed=self._seed)
        self._seed = None
        return self._to_frame(obs), ''

    def step(self, action: int) -> tuple[float, bool, Observation]:
        if not 0 <= action < self._num_actions:
            raise ValueError(f'action must be in [0, {self._num_actions}), got {action}')
        total = 0.0
        done = False
        for _ in range(self._repeats):
            obs, reward, terminated, truncated, _ = self._env.step(action + self._action_start)
            total += float(reward)
            done = bool(terminated or truncated)
            if done:
                break
        return total, done, (self._to_frame(obs), '')

    def close(self) -> None:
        self._env.close()
