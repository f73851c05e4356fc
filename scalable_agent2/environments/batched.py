"""Batches of E environments stepped together, behind one interface (`EnvironmentBatch`).

A batch gives every field of a `StepOutput` a leading dimension E: reward float32 `[E]`, info
(episode_return float32 `[E]`, episode_step int32 `[E]`, game_over bool `[E]`), done bool `[E]`,
observation (frame `[E, *frame_shape]`, instruction object (str) `[E]`). Row i is exactly what
a single `Environment` of the same level and seed returns (same flow semantics: auto-reset at
episode end, `info` of the episode that just ended). Stepping is split in two halves, so the
caller can do its bookkeeping while the environments step:

    batch.send(actions)          # int32 [E]; returns at once
    ...                          # e.g. write the policy's outputs into buffers
    out = batch.receive(out)     # waits; fills and returns a StepOutput [E, ...]

`receive(out)` and `initial(out)` write into a caller's preallocated `StepOutput` of arrays
(`empty_step_outputs`), e.g. one time step of an unroll buffer; without `out` a new one is made.

Implementations:
  * `InProcessBatch`: environments of this process stepped in turn (tests, tools).
  * `SubprocessBatch`: E `environments.Environment`s (Gymnasium, DeepMind Lab, or any suite),
    each in its own subprocess with frames in shared memory; `send` sends to all, `receive`
    collects all.
  * `atari.AtariBatch`: one ale-py `AtariVectorEnv` (C++ threads) for E games of one ROM.
  * `CombinedBatch`: several batches as one (e.g. atari57: one vector env per game).

A subprocess that dies is reported by `receive` (or `initial`) as `EnvironmentsDiedError`
naming the dead rows, after the live rows' outputs have been written into `out` (so they stay in
step); `recreate(i)` replaces row i with a fresh environment (fresh episode).
"""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from scalable_agent2.environments.base import ObservationSpec
from scalable_agent2.py_process import PyProcessDiedError
from scalable_agent2.types import StepOutput, StepOutputInfo


class EnvironmentsDiedError(PyProcessDiedError):
    """Environment subprocesses of a batch died.

    Attributes:
      indices: the rows whose environment died (sorted).
      errors: the `PyProcessDiedError` of each, in the same order.
      outputs: the batch's `StepOutput` with the live rows written (dead rows: unchanged).
    """

    def __init__(self, indices: list[int], errors: list[BaseException], outputs: StepOutput):
        self.indices = list(indices)
        self.errors = list(errors)
        self.outputs = outputs
        super().__init__(
            f'environment(s) {self.indices} of the batch died: '
            + '; '.join(str(e) for e in self.errors)
        )

    def __reduce__(self):
        return type(self), (self.indices, self.errors, self.outputs)


def empty_step_outputs(spec: ObservationSpec, shape: Sequence[int]) -> StepOutput:
    """A `StepOutput` of zero arrays with leading dimensions `shape` (e.g. `[E]`, `[T+1, E]`).

    done and game_over are False, instructions ''.
    """
    shape = tuple(shape)
    return StepOutput(
        reward=np.zeros(shape, np.float32),
        info=StepOutputInfo(
            np.zeros(shape, np.float32), np.zeros(shape, np.int32), np.zeros(shape, np.bool_)
        ),
        done=np.zeros(shape, np.bool_),
        observation=(
            np.zeros(shape + tuple(spec.frame_shape), spec.frame_dtype),
            np.full(shape, '', dtype=object),
        ),
    )


def write_row(out: StepOutput, i: Any, env_output: StepOutput) -> None:
    """Writes one environment's (unbatched) `StepOutput` into row `i` of a batched `out`."""
    from scalable_agent2.types import game_over_or_done

    out.reward[i] = env_output.reward
    out.info.episode_return[i] = env_output.info.episode_return
    out.info.episode_step[i] = env_output.info.episode_step
    out.info.game_over[i] = game_over_or_done(env_output.info, env_output.done)
    out.done[i] = env_output.done
    out.observation[0][i] = env_output.observation[0]
    out.observation[1][i] = env_output.observation[1]


def read_row(outputs: StepOutput, i: int) -> StepOutput:
    """Row i of a batched `StepOutput` as an unbatched one (numpy scalars, frame copied)."""
    return StepOutput(
        reward=np.float32(outputs.reward[i]),
        info=StepOutputInfo(
            np.float32(outputs.info.episode_return[i]),
            np.int32(outputs.info.episode_step[i]),
            np.bool_(outputs.info.game_over[i]),
        ),
        done=np.bool_(outputs.done[i]),
        observation=(np.array(outputs.observation[0][i]), str(outputs.observation[1][i])),
    )


def check_actions(actions: Any, num_envs: int, num_actions: int) -> np.ndarray:
    """`actions` as int32 `[E]`; ValueError if the shape or a value is out of range."""
    actions = np.asarray(actions)
    if actions.shape != (num_envs,) or actions.dtype.kind not in 'iu':
        raise ValueError(
            f'actions must be integers of shape [{num_envs}], got {actions.dtype} '
            f'{list(actions.shape)}'
        )
    actions = actions.astype(np.int32, copy=False)
    if num_envs and (actions.min() < 0 or actions.max() >= num_actions):
        raise ValueError(f'actions must be in [0, {num_actions}), got {actions.tolist()}')
    return actions


class EnvironmentBatch:
    """E environments stepped together; see the module docstring.

    Attributes:
      num_envs: E.
      level_names: the level of each environment (length E).
      num_actions: size of the (common) discrete action set.
      observation_spec: `ObservationSpec` of one environment's frames (common to all).
    """

    num_envs: int
    level_names: list[str]
    num_actions: int
    observation_spec: ObservationSpec

    def empty_outputs(self) -> StepOutput:
        """A zero `StepOutput` of this batch's shapes (`[E, ...]`)."""
        return empty_step_outputs(self.observation_spec, (self.num_envs,))

    def initial(self, out: StepOutput | None = None) -> StepOutput:
        """Starts an episode in every environment: reward 0, zero info, done, first frame."""
        raise NotImplementedError

    def send(self, actions: np.ndarray) -> None:
        """Starts one agent step of every environment; returns at once.

        Args:
          actions: int `[E]`, each in `[0, num_actions)`.

        Raises:
          ValueError: malformed actions (nothing is sent). A dead subprocess is reported by
            `receive`, not here.
        """
        raise NotImplementedError

    def receive(self, out: StepOutput | None = None) -> StepOutput:
        """Waits for the step that `send` started; returns its outputs (written into `out`).

        Raises:
          EnvironmentsDiedError: subprocesses died (the live rows are written first).
        """
        raise NotImplementedError

    def step(self, actions: np.ndarray, out: StepOutput | None = None) -> StepOutput:
        """`send(actions)` then `receive(out)`."""
        self.send(actions)
        return self.receive(out)

    def recreate(self, index: int, env: Any = None) -> StepOutput:
        """Replaces environment `index` (e.g. after its subprocess died) and starts it.

        Args:
          index: the row to replace.
          env: the replacement `Environment` (same level), or None to let the batch build one.

        Returns:
          The new environment's `initial()` output, unbatched (as `Environment.initial`).
        """
        raise NotImplementedError(f'{type(self).__name__} cannot recreate an environment')

    def close(self) -> None:
        """Closes every environment. Idempotent."""
        raise NotImplementedError

    def __enter__(self) -> 'EnvironmentBatch':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _common_specs(parts: Sequence[Any], names: Sequence[str]) -> tuple[int, ObservationSpec]:
    """The action count and observation spec every part shares; ValueError if they differ."""
    num_actions, spec = int(parts[0].num_actions), parts[0].observation_spec
    for part, name in zip(parts, names, strict=True):
        if int(part.num_actions) != num_actions or part.observation_spec != spec:
            raise ValueError(
                f'the environments of a batch must share actions and observations: {names[0]} '
                f'has {num_actions} actions and {spec}, {name} has {part.num_actions} and '
                f'{part.observation_spec}'
            )
    return num_actions, spec


class SubprocessBatch(EnvironmentBatch):
    """E subprocess `Environment`s stepped together: send to all, then collect all.

    Frames arrive in each environment's shared memory block and are copied once, straight into
    the caller's `out` row.
    """

    def __init__(
        self,
        envs: Sequence[Any],
        factory: Callable[[int, int], Any] | None = None,
    ):
        """Wraps already created environments.

        Args:
          envs: E `environments.Environment`s (`create_environment`), sharing the action set
            and observation spec; the batch owns (closes) them.
          factory: `factory(i, n)` builds the n-th (n = 1, 2, ...) replacement of row i for
            `recreate(i)`; None: `recreate` needs an explicit environment.
        """
        if not envs:
            raise ValueError('a batch needs at least one environment')
        self._envs = list(envs)
        self._factory = factory
        self._recreated = [0] * len(self._envs)
        self.num_envs = len(self._envs)
        self.level_names = [env.level_name for env in self._envs]
        self.num_actions, self.observation_spec = _common_specs(self._envs, self.level_names)
        self._sent = [False] * self.num_envs
        self._dead: dict[int, BaseException] = {}
        self._closed = False

    @property
    def envs(self) -> list[Any]:
        """The current environments (a restart replaces one)."""
        return list(self._envs)

    @property
    def pids(self) -> list[int | None]:
        """The subprocess id of each environment."""
        return [env.pid for env in self._envs]

    def _send_all(self, send: Callable[[int, Any], None]) -> None:
        if any(self._sent):
            raise RuntimeError('send() or initial() again before receive()')
        self._dead = {}
        for i, env in enumerate(self._envs):
            try:
                send(i, env)
                self._sent[i] = True
            except PyProcessDiedError as e:
                self._dead[i] = e

    def _collect(self, out: StepOutput | None) -> StepOutput:
        if out is None:
            out = self.empty_outputs()
        frames, instructions = out.observation
        error = None
        for i, env in enumerate(self._envs):
            if not self._sent[i]:
                continue
            self._sent[i] = False
            try:
                packed, shared_frame = env.wait_packed()
            except PyProcessDiedError as e:
                self._dead[i] = e
                continue
            except Exception as e:  # noqa: BLE001 - raised once every row is collected.
                error = error or e
                continue
            reward, done, episode_return, episode_step, game_over, instruction, frame = packed
            out.reward[i] = reward
            out.info.episode_return[i] = episode_return
            out.info.episode_step[i] = episode_step
            out.info.game_over[i] = game_over
            out.done[i] = done
            frames[i] = shared_frame if frame is None else frame
            instructions[i] = instruction
        if self._dead:
            indices = sorted(self._dead)
            raise EnvironmentsDiedError(indices, [self._dead[i] for i in indices], out)
        if error is not None:
            raise error
        return out

    def initial(self, out: StepOutput | None = None) -> StepOutput:
        self._send_all(lambda i, env: env.initial_async())
        return self._collect(out)

    def send(self, actions: np.ndarray) -> None:
        actions = check_actions(actions, self.num_envs, self.num_actions)
        self._send_all(lambda i, env: env.step_async(int(actions[i])))

    def receive(self, out: StepOutput | None = None) -> StepOutput:
        if not any(self._sent) and not self._dead:
            raise RuntimeError('receive() without send()')
        return self._collect(out)

    def recreate(self, index: int, env: Any = None) -> StepOutput:
        if env is None:
            if self._factory is None:
                raise ValueError('this batch has no factory: pass the replacement environment')
            self._recreated[index] += 1
            env = self._factory(index, self._recreated[index])
        old = self._envs[index]
        self._envs[index] = env
        self._sent[index] = False
        self._dead.pop(index, None)
        try:
            old.close()
        except Exception:  # noqa: BLE001 - the dead process may fail to close cleanly.
            pass
        try:
            _common_specs([self, env], [self.level_names[index], getattr(env, 'level_name', '?')])
        except ValueError:
            env.close()
            raise
        self.level_names[index] = getattr(env, 'level_name', self.level_names[index])
        return env.initial()

    def close(self) -> None:
        self._closed = True
        for env in self._envs:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - close every one.
                pass


class InProcessBatch(EnvironmentBatch):
    """E environments of this process (objects with `initial()` / `step(action)` returning
    `StepOutput`, e.g. `FlowEnvironment`s or test fakes), stepped one after the other in
    `receive`. For tests and tools; training uses `SubprocessBatch` or `atari.AtariBatch`."""

    def __init__(self, envs: Sequence[Any], level_names: Sequence[str]):
        if not envs or len(envs) != len(level_names):
            raise ValueError('an InProcessBatch needs one level name per environment (>= 1)')
        self._envs = list(envs)
        self.num_envs = len(self._envs)
        self.level_names = list(level_names)
        self.num_actions, self.observation_spec = _common_specs(self._envs, self.level_names)
        self._actions: np.ndarray | None = None

    @property
    def envs(self) -> list[Any]:
        return list(self._envs)

    def initial(self, out: StepOutput | None = None) -> StepOutput:
        out = self.empty_outputs() if out is None else out
        for i, env in enumerate(self._envs):
            write_row(out, i, env.initial())
        return out

    def send(self, actions: np.ndarray) -> None:
        if self._actions is not None:
            raise RuntimeError('send() again before receive()')
        self._actions = check_actions(actions, self.num_envs, self.num_actions).copy()

    def receive(self, out: StepOutput | None = None) -> StepOutput:
        if self._actions is None:
            raise RuntimeError('receive() without send()')
        actions, self._actions = self._actions, None
        out = self.empty_outputs() if out is None else out
        for i, env in enumerate(self._envs):
            write_row(out, i, env.step(int(actions[i])))
        return out

    def recreate(self, index: int, env: Any = None) -> StepOutput:
        if env is None:
            raise ValueError('an InProcessBatch needs the replacement environment')
        _common_specs([self, env], [self.level_names[index], '(replacement)'])
        old, self._envs[index] = self._envs[index], env
        if hasattr(old, 'close'):
            old.close()
        return env.initial()

    def close(self) -> None:
        for env in self._envs:
            if hasattr(env, 'close'):
                try:
                    env.close()
                except Exception:  # noqa: BLE001 - close every one.
                    pass


class CombinedBatch(EnvironmentBatch):
    """Several batches as one: row `indices[k][j]` is row j of `parts[k]`."""

    def __init__(self, parts: Sequence[EnvironmentBatch], indices: Sequence[Sequence[int]]):
        """Args:
        parts: the batches (owned: closed with this one).
        indices: for each part, the rows of the combined batch it holds; together a
          permutation of `range(E)`.
        """
        self._parts = list(parts)
        self._indices = [np.asarray(ix, np.int64) for ix in indices]
        self.num_envs = sum(part.num_envs for part in self._parts)
        order = np.sort(np.concatenate(self._indices))
        if len(self._parts) != len(self._indices) or not np.array_equal(
            order, np.arange(self.num_envs)
        ):
            raise ValueError('indices must split range(num_envs) among the parts')
        for part, ix in zip(self._parts, self._indices):
            if part.num_envs != len(ix):
                raise ValueError('each part needs as many indices as environments')
        self.level_names = [''] * self.num_envs
        for part, ix in zip(self._parts, self._indices):
            for j, i in enumerate(ix):
                self.level_names[i] = part.level_names[j]
        self.num_actions, self.observation_spec = _common_specs(
            self._parts, [p.level_names[0] for p in self._parts]
        )
        self._part_outputs = [part.empty_outputs() for part in self._parts]
        self._where = {}  # Combined row -> (part, row in the part).
        for k, ix in enumerate(self._indices):
            for j, i in enumerate(ix):
                self._where[int(i)] = (k, j)

    @property
    def parts(self) -> list[EnvironmentBatch]:
        return list(self._parts)

    def _gather(self, receive: Callable[[int], None], out: StepOutput | None) -> StepOutput:
        if out is None:
            out = self.empty_outputs()
        flat_out = _flat(out)
        dead, errors, error = [], [], None
        for k, ix in enumerate(self._indices):
            part_out = self._part_outputs[k]
            try:
                receive(k)
            except EnvironmentsDiedError as e:
                dead.extend(int(ix[j]) for j in e.indices)
                errors.extend(e.errors)
            except Exception as e:  # noqa: BLE001 - raised once every part is collected.
                error = error or e
                continue
            for target, source in zip(flat_out, _flat(part_out)):
                target[ix] = source
        if dead:
            order = np.argsort(dead)
            raise EnvironmentsDiedError([dead[o] for o in order], [errors[o] for o in order], out)
        if error is not None:
            raise error
        return out

    def initial(self, out: StepOutput | None = None) -> StepOutput:
        return self._gather(lambda k: self._parts[k].initial(self._part_outputs[k]), out)

    def send(self, actions: np.ndarray) -> None:
        actions = check_actions(actions, self.num_envs, self.num_actions)
        for part, ix in zip(self._parts, self._indices):
            part.send(actions[ix])

    def receive(self, out: StepOutput | None = None) -> StepOutput:
        return self._gather(lambda k: self._parts[k].receive(self._part_outputs[k]), out)

    def recreate(self, index: int, env: Any = None) -> StepOutput:
        k, j = self._where[int(index)]
        return self._parts[k].recreate(j, env)

    def close(self) -> None:
        for part in self._parts:
            try:
                part.close()
            except Exception:  # noqa: BLE001 - close every one.
                pass


def _flat(outputs: StepOutput) -> list[np.ndarray]:
    """The arrays of a batched `StepOutput`, in a fixed order."""
    info = outputs.info
    return [
        outputs.reward,
        info.episode_return,
        info.episode_step,
        info.game_over,
        outputs.done,
        outputs.observation[0],
        outputs.observation[1],
    ]
