"""Environment suites (DeepMind Lab, Atari, Gymnasium) behind one interface.

`create_environment(level_name, config, seed, is_test)` is the single dispatch point:
  * `gym/<EnvId>`  -> `environments.gym.GymEnvironment` (any discrete-action Gymnasium env);
  * `atari/<Game>` -> `environments.atari.AtariEnvironment` (ALE, IMPALA preprocessing);
  * anything else  -> `environments.dmlab.DmLab` (a DeepMind Lab level).
The suite's raw environment runs in its own subprocess wrapped in `FlowEnvironment`, so one agent
step is one round trip.

`create_environment_batch(level_names, config, seeds, is_test)` builds an `EnvironmentBatch`
of E environments stepped together (see `environments.batched`): Atari levels run in one ale-py
`AtariVectorEnv` per game in this process (`atari.AtariBatch`), other levels as E subprocesses
stepped together (`batched.SubprocessBatch`).

Suite names (`dmlab30`, `atari57`) are expanded to level names with `expand_level_names`; actor
`i` gets `names[i % len(names)]`.
"""

import weakref
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from scalable_agent2 import config as config_lib
from scalable_agent2 import py_process
from scalable_agent2.environments import batched
from scalable_agent2.environments.base import FlowEnvironment, ObservationSpec
from scalable_agent2.environments.batched import EnvironmentBatch
from scalable_agent2.environments.batched import EnvironmentsDiedError as EnvironmentsDiedError
from scalable_agent2.errors import UsageError
from scalable_agent2.scoring import suites
from scalable_agent2.types import StepOutput, StepOutputInfo, game_over_or_done

GYM_PREFIX = 'gym/'
ATARI_PREFIX = suites.ATARI_PREFIX
SUITES = suites.NAMES


def expand_level_names(level_name: str, is_test: bool) -> list[str]:
    """The level names a run covers.

    Args:
      level_name: a suite ('dmlab30', 'atari57') or a single level name.
      is_test: for 'dmlab30', the test levels instead of the train levels.

    Returns:
      'dmlab30' -> its 30 train (or test) levels; 'atari57' -> 57 'atari/<game>' names;
      anything else -> `[level_name]`.
    """
    suite = suites.suite(level_name)  # Its tables load only now.
    return [level_name] if suite is None else suite.levels(is_test)


def _suite_of(level_name: str) -> tuple[str, str]:
    """Splits a level name into (suite, name within the suite), validating what is cheap.

    Raises:
      ValueError: empty names, suite names, unknown Gymnasium ids or Atari games.
    """
    if not level_name:
        raise UsageError('level_name is empty: use gym/<EnvId>, atari/<Game> or a DMLab level')
    if level_name in SUITES:
        raise UsageError(
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


def _dmlab_hint(level_name: str) -> str:
    """Explains why a name was taken as a DeepMind Lab level, with a guess if it is not one."""
    hint = (
        f'Level {level_name!r} is neither {GYM_PREFIX}<EnvId> nor {ATARI_PREFIX}<Game>, so it '
        f'was taken as a DeepMind Lab level (suites: {", ".join(SUITES)}). '
    )
    from scalable_agent2.environments import atari, gym

    try:
        hint += f'Did you mean {ATARI_PREFIX}{atari.rom_id(level_name)}? '
    except ValueError:
        try:
            gym.check_env_id(level_name)
            hint += f'Did you mean {GYM_PREFIX}{level_name}? '
        except ValueError:
            pass
    return hint


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

        try:
            raw = dmlab.DmLab(name, config, seed, is_test)
        except (dmlab.DeepMindLabNotInstalledError, dmlab.UnknownLevelError) as e:
            raise type(e)(_dmlab_hint(name) + str(e)) from e
    else:
        raise ValueError(f'Unknown suite {suite!r}')
    return FlowEnvironment(raw)


def _shared_frame_environment(
    level_name: str, config: config_lib.EnvironmentConfig, seed: int, is_test: bool
) -> '_SharedFrameServer':
    """The child-side object behind `Environment`, built in the subprocess."""
    return _SharedFrameServer(make_flow_environment(level_name, config, seed, is_test))


# A step's small fields as plain Python values (cheaper to pickle than numpy scalars):
# (reward, done, episode_return, episode_step, game_over, instruction, frame or None).
_Packed = tuple[float, bool, float, int, bool, str, Any]


class _SharedFrameServer:
    """Runs in the child: steps a `FlowEnvironment` and writes each frame to shared memory.

    With `use_shared_memory`, the frame goes through a `SharedMemory` block that the child
    creates (its size is known only once the environment exists) and the parent unlinks; only
    the small fields are pickled through the pipe. Otherwise the frame is pickled too.
    """

    def __init__(self, env: FlowEnvironment):
        self._env = env
        self._shm = None
        self._frame = None
        self.description = (env.num_actions, env.observation_spec)

    def use_shared_memory(self) -> str:
        """Switches frames to shared memory; returns the block's name."""
        spec = self._env.observation_spec
        nbytes = max(1, int(np.prod(spec.frame_shape)) * np.dtype(spec.frame_dtype).itemsize)
        self._shm = shared_memory.SharedMemory(create=True, size=nbytes)
        self._frame = np.ndarray(spec.frame_shape, spec.frame_dtype, buffer=self._shm.buf)
        return self._shm.name

    def _pack(self, out: StepOutput) -> _Packed:
        frame, instruction = out.observation
        if self._frame is not None:
            self._frame[...] = frame
            frame = None
        return (
            float(out.reward),
            bool(out.done),
            float(out.info.episode_return),
            int(out.info.episode_step),
            bool(game_over_or_done(out.info, out.done)),
            instruction,
            frame,
        )

    def initial(self) -> _Packed:
        return self._pack(self._env.initial())

    def step(self, action: int) -> _Packed:
        return self._pack(self._env.step(action))

    def close(self) -> None:
        self._env.close()
        self._frame = None
        if self._shm is not None:
            self._shm.close()  # The parent unlinks.


def _release_shared_memory(shm: shared_memory.SharedMemory) -> None:
    """Unlinks, then unmaps if no view remains (at exit a view may: the OS unmaps it)."""
    try:
        shm.unlink()
    except FileNotFoundError:
        pass
    try:
        shm.close()
    except BufferError:
        pass


class Environment:
    """An environment running in a subprocess, with the original flow semantics.

    Attributes:
      level_name: the level it runs.
      num_actions: size of the discrete action set.
      observation_spec: `ObservationSpec` of the frames.
    """

    def __init__(self, process: py_process.PyProcess, level_name: str, use_shared_memory: bool):
        self._process = process
        self.level_name = level_name
        num_actions, spec = process.get_attr('description')
        self.num_actions: int = num_actions
        self.observation_spec: ObservationSpec = spec
        self._shm = None
        self._frame = None
        self._release = None
        if use_shared_memory:
            self._shm = shared_memory.SharedMemory(name=process.use_shared_memory())
            # Unlinked on close(), on garbage collection or at interpreter exit.
            self._release = weakref.finalize(self, _release_shared_memory, self._shm)
            spec = self.observation_spec
            self._frame = np.ndarray(spec.frame_shape, spec.frame_dtype, buffer=self._shm.buf)

    @property
    def pid(self) -> int | None:
        """The subprocess's id."""
        return self._process.pid

    def _unpack(self, packed: _Packed) -> StepOutput:
        reward, done, episode_return, episode_step, game_over, instruction, frame = packed
        if frame is None:
            frame = self._frame.copy()  # The next step overwrites the shared block.
        return StepOutput(
            reward=np.float32(reward),
            info=StepOutputInfo(np.float32(episode_return), np.int32(episode_step), game_over),
            done=done,
            observation=(frame, instruction),
        )

    def initial(self) -> StepOutput:
        """Starts an episode: reward 0, zero info, `done=True`, the first observation."""
        return self._unpack(self._process.call('initial'))

    def step(self, action: int) -> StepOutput:
        """One agent step; on episode end `observation` is the next episode's first."""
        return self._unpack(self._process.call('step', int(action)))

    def step_async(self, action: int) -> None:
        """Sends one agent step and returns at once; `step_wait()` returns its output."""
        self._process.call_async('step', int(action))

    def initial_async(self) -> None:
        """Sends `initial()` and returns at once; `step_wait()` returns its output."""
        self._process.call_async('initial')

    def step_wait(self) -> StepOutput:
        """The output of the pending `step_async` or `initial_async`."""
        return self._unpack(self._process.result())

    def wait_packed(self) -> tuple[_Packed, np.ndarray | None]:
        """The pending call's small fields, and the shared frame (None: it is in the fields).

        The shared frame is a view the next step overwrites: copy it before stepping again.
        """
        return self._process.result(), self._frame

    def close(self) -> None:
        """Closes the environment, its subprocess and shared memory. Idempotent."""
        self._process.close()
        self._frame = None
        if self._release is not None:
            self._release()  # Runs once.

    def __enter__(self) -> 'Environment':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def create_environment(
    level_name: str,
    config: config_lib.EnvironmentConfig,
    seed: int,
    is_test: bool,
    *,
    use_shared_memory: bool = True,
) -> Environment:
    """Starts `level_name` in a subprocess and returns its parent-side handle.

    Args:
      level_name: 'gym/<EnvId>', 'atari/<Game>' or a DeepMind Lab level name.
      config: `EnvironmentConfig`.
      seed: the environment's seed.
      is_test: evaluation mode (DMLab test config; Atari: no episode end on life loss).
      use_shared_memory: pass frames through shared memory instead of pickling them through
        the pipe (faster; see docs/BENCHMARKS.md).

    Raises:
      ValueError: unknown suite, level, game or Gymnasium id (listing what is available), a
        suite name instead of a level, or the environment's own constructor error.
    """
    config.validate()
    _suite_of(level_name)  # Fail fast, in the parent, for names we can check cheaply.
    process = py_process.PyProcess(_shared_frame_environment, level_name, config, seed, is_test)
    try:
        return Environment(process, level_name, use_shared_memory)
    except BaseException:
        process.close()
        raise


def create_environment_batch(
    level_names: list[str] | tuple[str, ...],
    config: config_lib.EnvironmentConfig,
    seeds: list[int] | tuple[int, ...],
    is_test: bool,
    *,
    use_shared_memory: bool = True,
    atari_num_threads: int | None = None,
) -> EnvironmentBatch:
    """Builds E environments that are stepped as one batch.

    Environment i plays `level_names[i]` with seed `seeds[i]` and produces, step for step, what
    `create_environment(level_names[i], config, seeds[i], is_test)` would.

    Args:
      level_names: E level names, as for `create_environment`; they may differ.
      config: `EnvironmentConfig`.
      seeds: E seeds.
      is_test: evaluation mode.
      use_shared_memory: for subprocess environments, as in `create_environment`.
      atari_num_threads: threads of each Atari vector environment (None: one per environment,
        at most one per CPU).

    Returns:
      All Atari levels of one game -> `atari.AtariBatch`; no Atari level -> a
      `batched.SubprocessBatch`; a mix (e.g. atari57) -> a `batched.CombinedBatch` of one such
      batch per game and one for the rest, in the order of `level_names`.

    Raises:
      ValueError: no levels, as many seeds as levels not given, or as `create_environment`.
    """
    config.validate()
    level_names, seeds = list(level_names), [int(s) for s in seeds]
    if not level_names:
        raise ValueError('create_environment_batch needs at least one level name')
    if len(seeds) != len(level_names):
        raise ValueError(f'got {len(level_names)} level names but {len(seeds)} seeds')
    groups: dict[str, list[int]] = {}
    for i, level_name in enumerate(level_names):
        suite, name = _suite_of(level_name)  # Fail fast for names we can check cheaply.
        if suite == 'atari':
            from scalable_agent2.environments import atari

            key = 'atari/' + atari.rom_id(name)
        else:
            key = ''  # Every other level: subprocesses in one batch.
        groups.setdefault(key, []).append(i)

    def build(key: str, indices: list[int]) -> EnvironmentBatch:
        names = [level_names[i] for i in indices]
        group_seeds = [seeds[i] for i in indices]
        if key:
            from scalable_agent2.environments import atari

            return atari.AtariBatch(names, config, group_seeds, is_test, atari_num_threads)

        def factory(j: int, restart: int) -> Environment:
            seed = group_seeds[j] + 100_000 * restart
            return create_environment(
                names[j], config, seed, is_test, use_shared_memory=use_shared_memory
            )

        envs = []
        try:
            for j in range(len(names)):
                envs.append(factory(j, 0))
            return batched.SubprocessBatch(envs, factory=factory)
        except BaseException:
            for env in envs:
                env.close()
            raise

    parts: list[EnvironmentBatch] = []
    try:
        for key, indices in groups.items():
            parts.append(build(key, indices))
    except BaseException:
        for part in parts:
            part.close()
        raise
    if len(parts) == 1:
        return parts[0]
    return batched.CombinedBatch(parts, list(groups.values()))
