"""Environment suites (DeepMind Lab, Atari, Gymnasium) behind one interface.

`create_environment(level_name, config, seed, is_test)` is the single dispatch point:
  * `gym/<EnvId>`  -> `environments.gym.GymEnvironment` (any discrete-action Gymnasium env);
  * `atari/<Game>` -> `environments.atari.AtariEnvironment` (ALE, IMPALA preprocessing);
  * anything else  -> `environments.dmlab.DmLab` (a DeepMind Lab level).
The suite's raw environment runs in its own subprocess wrapped in `FlowEnvironment`, so one agent
step is one round trip. Suite names (`dmlab30`, `atari57`) are expanded to level names with
`expand_level_names`; actor `i` gets `names[i % len(names)]`.
"""

from scalable_agent2 import config as config_lib
from scalable_agent2 import py_process
from scalable_agent2.environments.base import FlowEnvironment, ObservationSpec
from scalable_agent2.types import StepOutput

GYM_PREFIX = 'gym/'
ATARI_PREFIX = 'atari/'
SUITES = ('dmlab30', 'atari57')


def expand_level_names(level_name: str, is_test: bool) -> list[str]:
    """The level names a run covers.

    Args:
      level_name: a suite ('dmlab30', 'atari57') or a single level name.
      is_test: for 'dmlab30', the test levels instead of the train levels.

    Returns:
      'dmlab30' -> its 30 train (or test) levels; 'atari57' -> 57 'atari/<game>' names;
      anything else -> `[level_name]`.
    """
    if level_name == 'dmlab30':
        from scalable_agent2.scoring import dmlab30  # Lazy: keeps this module light.

        return list(dmlab30.TEST_LEVELS if is_test else dmlab30.TRAIN_LEVELS)
    if level_name == 'atari57':
        from scalable_agent2.scoring import atari57

        return [ATARI_PREFIX + game for game in atari57.GAMES]
    return [level_name]


def _suite_of(level_name: str) -> tuple[str, str]:
    """Splits a level name into (suite, name within the suite), validating what is cheap.

    Raises:
      ValueError: empty names, suite names, unknown Gymnasium ids or Atari games.
    """
    if not level_name:
        raise ValueError('level_name is empty: use gym/<EnvId>, atari/<Game> or a DMLab level')
    if level_name in SUITES:
        raise ValueError(
            f'{level_name!r} is a suite, not a level: expand it with expand_level_names()'
        )
    if level_name.startswith(GYM_PREFIX):
        from scalable_agent2.environments import gym

        env_id = level_name[len(GYM_PREFIX) :]
        gym.check_env_id(env_id)
        return 'gym', env_id
    if level_name.startswith(ATARI_PREFIX):
        from scalable_agent2.environments import atari

        game = level_name[len(ATARI_PREFIX) :]
        atari.rom_id(game)
        return 'atari', game
    return 'dmlab', level_name


def make_flow_environment(
    level_name: str, config: config_lib.EnvironmentConfig, seed: int, is_test: bool
) -> FlowEnvironment:
    """Builds the suite's raw environment in this process, wrapped in `FlowEnvironment`.

    This is what runs inside the subprocess; call it directly only for in-process use
    (tests, benchmarks).
    """
    suite, name = _suite_of(level_name)
    if suite == 'gym':
        from scalable_agent2.environments import gym

        raw = gym.GymEnvironment(name, config, seed, is_test)
    elif suite == 'atari':
        from scalable_agent2.environments import atari

        raw = atari.AtariEnvironment(name, config, seed, is_test)
    elif suite == 'dmlab':
        from scalable_agent2.environments import dmlab

        raw = dmlab.DmLab(name, config, seed, is_test)
    else:
        raise ValueError(f'Unknown suite {suite!r}')
    return FlowEnvironment(raw)


class Environment:
    """An environment running in a subprocess, with the original flow semantics.

    Attributes:
      level_name: the level it runs.
      num_actions: size of the discrete action set.
      observation_spec: `ObservationSpec` of the frames.
    """

    def __init__(self, process: py_process.PyProcess, level_name: str):
        self._process = process
        self.level_name = level_name
        self.num_actions: int = process.get_attr('num_actions')
        self.observation_spec: ObservationSpec = process.get_attr('observation_spec')

    @property
    def pid(self) -> int | None:
        """The subprocess's id."""
        return self._process.pid

    def initial(self) -> StepOutput:
        """Starts an episode: reward 0, zero info, `done=True`, the first observation."""
        return self._process.call('initial')

    def step(self, action: int) -> StepOutput:
        """One agent step; on episode end `observation` is the next episode's first."""
        return self._process.call('step', int(action))

    def close(self) -> None:
        """Closes the environment and its subprocess. Idempotent."""
        self._process.close()

    def __enter__(self) -> 'Environment':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def create_environment(
    level_name: str, config: config_lib.EnvironmentConfig, seed: int, is_test: bool
) -> Environment:
    """Starts `level_name` in a subprocess and returns its parent-side handle.

    Args:
      level_name: 'gym/<EnvId>', 'atari/<Game>' or a DeepMind Lab level name.
      config: `EnvironmentConfig`.
      seed: the environment's seed.
      is_test: evaluation mode (DMLab test config; Atari: no episode end on life loss).

    Raises:
      ValueError: unknown suite, level, game or Gymnasium id (listing what is available), a
        suite name instead of a level, or the environment's own constructor error.
    """
    config.validate()
    _suite_of(level_name)  # Fail fast, in the parent, for names we can check cheaply.
    process = py_process.PyProcess(make_flow_environment, level_name, config, seed, is_test)
    try:
        return Environment(process, level_name)
    except BaseException:
        process.close()
        raise
