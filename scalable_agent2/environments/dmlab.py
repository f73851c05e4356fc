"""DeepMind Lab as a `RawEnvironment`, configured as in the original IMPALA experiments.

`deepmind_lab` is imported when a `DmLab` is built (inside the environment's subprocess), so the
rest of the package works without it. It cannot be installed from PyPI; the project's Dockerfile
(at the repository root) builds it, and so does docker/build_dmlab_offline.sh without a network.
"""

import os
import shutil
import tempfile

import numpy as np
from absl import logging

from scalable_agent2 import config as config_lib
from scalable_agent2.environments import base
from scalable_agent2.errors import UsageError
from scalable_agent2.scoring import dmlab30, suites

# The original's 9 actions, in its order. Each is DeepMind Lab's 7-int action:
# (look left/right px, look down/up px, strafe left/right, move back/forward, fire, jump, crouch).
DEFAULT_ACTION_SET: tuple[tuple[int, ...], ...] = (
    (0, 0, 0, 1, 0, 0, 0),  # Forward.
    (0, 0, 0, -1, 0, 0, 0),  # Backward.
    (0, 0, -1, 0, 0, 0, 0),  # Strafe left.
    (0, 0, 1, 0, 0, 0, 0),  # Strafe right.
    (-20, 0, 0, 0, 0, 0, 0),  # Look left.
    (20, 0, 0, 0, 0, 0, 0),  # Look right.
    (-20, 0, 0, 1, 0, 0, 0),  # Look left + forward.
    (20, 0, 0, 1, 0, 0, 0),  # Look right + forward.
    (0, 0, 0, 0, 1, 0, 0),  # Fire.
)

OBSERVATIONS = ('RGB_INTERLEAVED', 'INSTR')
DMLAB30_PREFIX = suites.DMLAB30_PREFIX
# Fixed mixer seed for evaluation, as the original: test episodes differ from training ones.
TEST_MIXER_SEED = 0x600D5EED

_NOT_INSTALLED_MESSAGE = (
    'DeepMind Lab (the `deepmind_lab` Python module) is not installed; it is not on PyPI: '
    'build and run the image from the Dockerfile at the root of scalable_agent2, or build it '
    'offline with docker/build_dmlab_offline.sh (docs/USAGE.md)'
)


class DeepMindLabNotInstalledError(ImportError, UsageError):
    """`deepmind_lab` cannot be imported. Also a `ValueError`, like other set-up mistakes."""


class UnknownLevelError(UsageError):
    """DeepMind Lab has no level of that name (its `game_scripts/levels` has no such script)."""


class LevelCache:
    """A level cache in a local directory, as the original's `LocalLevelCache`.

    DeepMind Lab calls `fetch` before compiling a map and `write` after; sharing the directory
    between actors saves recompiling the same maps.
    """

    def __init__(self, cache_dir: str):
        self._cache_dir = cache_dir
        os.makedirs(cache_dir, exist_ok=True)

    def fetch(self, key: str, pk3_path: str) -> bool:
        """Copies the cached file for `key` to `pk3_path`; returns whether it was cached."""
        path = os.path.join(self._cache_dir, key)
        if os.path.isfile(path):
            shutil.copyfile(path, pk3_path)
            return True
        return False

    def write(self, key: str, pk3_path: str) -> None:
        """Stores `pk3_path` under `key` unless it is cached already."""
        path = os.path.join(self._cache_dir, key)
        if os.path.isfile(path):
            return
        # Copy then rename, so actors sharing the directory never read a partial file.
        fd, tmp_path = tempfile.mkstemp(dir=self._cache_dir, prefix='.tmp_' + key[:32])
        os.close(fd)
        try:
            shutil.copyfile(pk3_path, tmp_path)
            os.replace(tmp_path, path)
        except BaseException:
            if os.path.exists(tmp_path):
                os.remove(tmp_path)
            raise


def full_level_name(level_name: str) -> str:
    """DMLab-30 names (train or test) get the `contributed/dmlab30/` prefix; others pass."""
    if level_name in dmlab30.ALL_LEVELS:
        return DMLAB30_PREFIX + level_name
    return level_name


def lab_config(env_config: config_lib.EnvironmentConfig, is_test: bool) -> dict[str, str]:
    """The `config` dict given to `deepmind_lab.Lab` (all values are strings)."""
    lab = {
        'width': str(env_config.width),
        'height': str(env_config.height),
        'logLevel': 'WARN',
        # Always passed, empty by default, as the original does.
        'datasetPath': env_config.dataset_path,
    }
    if is_test:
        lab['allowHoldOutLevels'] = 'true'
        # The original passed the int through str(): decimal digits.
        lab['mixerSeed'] = str(TEST_MIXER_SEED)
    return lab


# Written by docker/build_dmlab_offline.sh next to an engine built with placeholder textures.
PLACEHOLDER_MANIFEST = 'PLACEHOLDER_TEXTURES.txt'


def placeholder_textures(deepmind_lab) -> list[str]:
    """The textures of this DeepMind Lab build that are flat-colour placeholders."""
    path = os.path.join(os.path.dirname(deepmind_lab.__file__), PLACEHOLDER_MANIFEST)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip() and not line.startswith('#')]


def _import_deepmind_lab():
    try:
        import deepmind_lab  # Lazy: only the processes that run DeepMind Lab need it.
    except ImportError as e:
        raise DeepMindLabNotInstalledError(_NOT_INSTALLED_MESSAGE) from e
    placeholders = placeholder_textures(deepmind_lab)
    if placeholders:
        logging.warning(
            'This DeepMind Lab build has %d placeholder textures, NOT the real visuals '
            '(docs/USAGE.md, "DeepMind Lab offline").',
            len(placeholders),
        )
    return deepmind_lab


class DmLab:
    """One DeepMind Lab level, satisfying `base.RawEnvironment`.

    Observations are `(frame, instruction)`: frame uint8 `[height, width, 3]`
    (`RGB_INTERLEAVED`), instruction `str` (`INSTR`, '' on levels without one). Each agent step
    repeats the action `config.num_action_repeats` frames (`num_steps`); the reward is their sum.
    """

    def __init__(
        self,
        level_name: str,
        config: config_lib.EnvironmentConfig,
        seed: int,
        is_test: bool,
    ):
        """Builds the level.

        Args:
          level_name: a DeepMind Lab level; DMLab-30 names get the `contributed/dmlab30/` prefix.
          config: frame size, action repeats, dataset path and level cache directory.
          seed: seeds the generator of the per-episode seeds passed to `reset`.
          is_test: allow held-out levels and use the fixed evaluation mixer seed.

        Raises:
          DeepMindLabNotInstalledError: `deepmind_lab` cannot be imported.
          UnknownLevelError: DeepMind Lab has no level `level_name`.
        """
        deepmind_lab = _import_deepmind_lab()
        self._config = config
        self._random_state = np.random.RandomState(seed)
        self._actions = np.array(DEFAULT_ACTION_SET, dtype=np.intc)
        self._level_name = full_level_name(level_name)
        level_cache = LevelCache(config.level_cache_dir) if config.level_cache_dir else None
        logging.info('Creating DeepMind Lab level %s (test: %s).', self._level_name, is_test)
        try:
            self._env = deepmind_lab.Lab(
                level=self._level_name,
                observations=list(OBSERVATIONS),
                config=lab_config(config, is_test),
                level_cache=level_cache,
            )
        except RuntimeError as e:
            # The engine's message names the Lua file it looked for, on several lines.
            if 'Level not found' not in str(e):
                raise
            raise UnknownLevelError(f'DeepMind Lab has no level {self._level_name!r}') from e
        self._closed = False
        # Returned with `done`, when DeepMind Lab gives no observations; the caller resets.
        self._empty_observation = (
            np.zeros((config.height, config.width, 3), dtype=np.uint8),
            '',
        )

    @property
    def num_actions(self) -> int:
        return len(DEFAULT_ACTION_SET)

    @property
    def observation_spec(self) -> base.ObservationSpec:
        return base.ObservationSpec(
            frame_shape=(self._config.height, self._config.width, 3),
            frame_dtype='uint8',
            has_instruction=True,
        )

    def _observation(self) -> base.Observation:
        observations = self._env.observations()
        frame = np.asarray(observations['RGB_INTERLEAVED'], dtype=np.uint8)
        instruction = observations['INSTR']
        if isinstance(instruction, bytes):
            instruction = instruction.decode('utf-8')
        return frame, str(instruction)

    def reset(self) -> base.Observation:
        """Starts an episode seeded from this environment's generator; returns its first obs."""
        self._env.reset(seed=int(self._random_state.randint(0, 2**31 - 1)))
        return self._observation()

    def step(self, action: int) -> tuple[float, bool, base.Observation]:
        """Repeats action `action` (an index into `DEFAULT_ACTION_SET`); see `RawEnvironment`."""
        if not 0 <= action < len(self._actions):
            raise ValueError(f'action must be in [0, {len(self._actions)}), got {action!r}')
        reward = self._env.step(self._actions[action], num_steps=self._config.num_action_repeats)
        done = not self._env.is_running()
        # A finished episode has no observations; the caller resets.
        observation = self._empty_observation if done else self._observation()
        return float(reward), done, observation

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.close()
