"""The actor's unroll loop: step environments with the agent and emit T+1-step unrolls.

An actor keeps its last environment output, agent (core) state and agent output between
unrolls, as the original does: every unroll starts with the last entry of the previous one,
followed by `unroll_length` new steps, and carries the core state from before its first new
step. Policy calls go through a callable (in training, the dynamically batched agent step), so
the actor itself holds no TensorFlow state.

Two actors share one driving interface (`unrolls()`, `restarts`, `level_names`, `close()`):
  * `Actor`: one environment, one policy row per step (the original's actor);
  * `BatchedActor`: an `EnvironmentBatch` of E environments, one policy call of E rows per
    step, state and unrolls in preallocated arrays; it returns E unrolls at a time, each the
    same as a single-environment `Actor` of that environment would return.
"""

import collections
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from scalable_agent2.environments import batched
from scalable_agent2.errors import RunAbortedError
from scalable_agent2.py_process import PyProcessDiedError
from scalable_agent2.types import (
    ActorOutput,
    AgentOutput,
    StepOutput,
    StepOutputInfo,
    game_over_or_done,
)

# policy(last_action int32 [n], env_output StepOutput with [n]-batched fields, core_state nest
# [n, ...]) -> (AgentOutput with [n]-batched fields, new core_state nest [n, ...]); n = 1 for
# an `Actor`, E for a `BatchedActor` (rows are independent: row i is environment i).
Policy = Callable[[Any, StepOutput, Any], tuple[AgentOutput, Any]]


def batch_env_output(env_output: StepOutput) -> StepOutput:
    """Adds a leading batch dimension of 1 to an environment's (numpy) step output.

    Args:
      env_output: `StepOutput` of scalars, observation `(frame [...], instruction str)`.

    Returns:
      `StepOutput` with reward float32 [1], info (float32 [1], int32 [1], bool [1]), done
      bool [1], observation (frame [1, ...], instruction object (str) [1]).
    """
    frame, instruction = env_output.observation
    return StepOutput(
        reward=np.asarray([env_output.reward], np.float32),
        info=StepOutputInfo(
            np.asarray([env_output.info.episode_return], np.float32),
            np.asarray([env_output.info.episode_step], np.int32),
            np.asarray([game_over_or_done(env_output.info, env_output.done)], np.bool_),
        ),
        done=np.asarray([env_output.done], np.bool_),
        observation=(np.asarray(frame)[None], np.asarray([instruction], dtype=object)),
    )


def policy_inputs(env_output: StepOutput, use_instruction: bool) -> StepOutput:
    """Drops what the agent does not read before a policy call (fewer tensors to batch).

    Args:
      env_output: `[1]`-batched `StepOutput` from `batch_env_output`.
      use_instruction: whether the agent encodes the instruction.

    Returns:
      The same with info `()` and, without `use_instruction`, instruction `()` (the agent's
      `tokenize` passes `()` through).
    """
    frame, instruction = env_output.observation
    return env_output._replace(info=(), observation=(frame, instruction if use_instruction else ()))


def _unbatch(nest: Any) -> Any:
    """Drops the leading dimension of 1 from every array of a (tensor or numpy) nest."""
    return tf.nest.map_structure(lambda x: np.asarray(x)[0], nest)


def _to_numpy(nest: Any) -> Any:
    return tf.nest.map_structure(np.asarray, nest)


def _stack_steps(steps: list[Any]) -> Any:
    """Stacks a list of same-structure nests of numpy values along a new leading axis."""

    def stack(*xs):
        first = np.asarray(xs[0])
        if first.dtype.kind in ('U', 'S', 'O'):
            return np.array(list(xs), dtype=object)
        return np.stack(xs)

    return tf.nest.map_structure(stack, *steps)


def _env_output_numpy(env_output: StepOutput) -> StepOutput:
    """Normalises an environment output to numpy values of fixed dtypes (no batch dim)."""
    frame, instruction = env_output.observation
    return StepOutput(
        reward=np.float32(env_output.reward),
        info=StepOutputInfo(
            np.float32(env_output.info.episode_return),
            np.int32(env_output.info.episode_step),
            np.bool_(game_over_or_done(env_output.info, env_output.done)),
        ),
        done=np.bool_(env_output.done),
        observation=(np.asarray(frame), str(instruction)),
    )


class EnvironmentCrashLoopError(RunAbortedError):
    """An actor's environment died too often in a short time to keep recreating it."""


def _count_death(
    times: collections.deque, max_restarts: int, window_secs: float, what: str, error: Exception
) -> None:
    """Records one environment death; EnvironmentCrashLoopError past the crash-loop limit."""
    now = time.monotonic()
    times.append(now)
    while now - times[0] > window_secs:
        times.popleft()
    if len(times) > max_restarts:
        raise EnvironmentCrashLoopError(
            f'{what} died {len(times)} times in {window_secs:.0f} s; last: {error}'
        ) from error


class Actor:
    """Runs one environment with a policy and produces unrolls of `unroll_length + 1` entries.

    Not thread-safe: each actor thread owns one `Actor` (and its environment). With `recreate`,
    an environment whose subprocess dies (segfault, OOM kill) is replaced by a new one: the
    unroll in progress is dropped, the new environment starts a fresh episode with a zero core
    state, and the restart is logged and counted (`restarts`). More than `max_restarts` deaths
    within `restart_window_secs` raise `EnvironmentCrashLoopError`.

    The programs run `BatchedActor`; this one-environment actor is the original's actor loop
    written plainly, kept as the reference whose unrolls `BatchedActor`'s must equal (tests) and
    for callers that step a single environment.
    """

    def __init__(
        self,
        env: Any,
        level_name: str,
        policy: Policy,
        initial_agent_state: Any,
        unroll_length: int,
        use_instruction: bool = True,
        recreate: Callable[[int], Any] | None = None,
        max_restarts: int = 5,
        restart_window_secs: float = 600.0,
    ):
        """Resets the environment and sets the persistent state.

        Args:
          env: environment with `initial()` and `step(action)` returning `StepOutput`.
            (For E environments stepped at once, see `BatchedActor`.)
          level_name: the level this actor plays (stored in every unroll).
          policy: see `Policy`.
          initial_agent_state: the core state for one environment, nest of `[1, ...]`.
          unroll_length: T, new agent steps per unroll.
          use_instruction: whether to pass the instruction to the policy (the unrolls always
            keep it).
          recreate: `recreate(n)` builds the replacement environment after the n-th subprocess
            death (n = 1, 2, ...; e.g. to vary its seed); None lets `PyProcessDiedError`
            propagate.
          max_restarts, restart_window_secs: the crash-loop limit.
        """
        if unroll_length <= 0:
            raise ValueError(f'unroll_length must be > 0, got {unroll_length}')
        self._env = env
        self._level_name = level_name
        self._policy = policy
        self._unroll_length = unroll_length
        self._use_instruction = use_instruction
        self._recreate = recreate
        self._max_restarts = max_restarts
        self._restart_window_secs = restart_window_secs
        self._restart_times: collections.deque = collections.deque()
        self.restarts = 0
        self._initial_agent_state = _to_numpy(initial_agent_state)
        self._env_output = _env_output_numpy(env.initial())
        self._agent_state = self._initial_agent_state
        # The original starts with an all-zero agent output (action 0 = "last action").
        self._agent_output = None

    @property
    def level_name(self) -> str:
        return self._level_name

    @property
    def level_names(self) -> list[str]:
        """`[level_name]`: the levels of the unrolls that `unrolls()` returns, in order."""
        return [self._level_name]

    @property
    def num_envs(self) -> int:
        return 1

    def close(self) -> None:
        """Closes the current environment (the one a restart may have created)."""
        self._env.close()

    def unrolls(self) -> list[ActorOutput]:
        """`[self.unroll()]`: the interface `BatchedActor` shares."""
        return [self.unroll()]

    def _restart(self, error: PyProcessDiedError) -> None:
        while True:
            _count_death(
                self._restart_times,
                self._max_restarts,
                self._restart_window_secs,
                f'the environment of {self._level_name}',
                error,
            )
            self.restarts += 1
            logging.warning(
                'Environment of %s died (%s); recreating it (restart %d); the unroll in '
                'progress is dropped.',
                self._level_name,
                error,
                self.restarts,
            )
            try:
                self._env.close()
            except Exception as e:  # The dead process may fail to close cleanly.
                logging.warning('Closing the dead environment failed: %r', e)
            self._env = self._recreate(self.restarts)
            try:
                self._env_output = _env_output_numpy(self._env.initial())
                break
            except PyProcessDiedError as e:  # Died again at once: counts as another death.
                error = e
        self._agent_state = self._initial_agent_state
        self._agent_output = tf.nest.map_structure(np.zeros_like, self._agent_output)

    def _step_policy(self) -> tuple[AgentOutput, Any]:
        last_action = np.asarray([self._agent_output.action], np.int32)
        env_output = policy_inputs(batch_env_output(self._env_output), self._use_instruction)
        agent_output, agent_state = self._policy(last_action, env_output, self._agent_state)
        return _unbatch(agent_output), _to_numpy(agent_state)

    def unroll(self) -> ActorOutput:
        """Runs T agent steps and returns the unroll (recreating a dead environment, if allowed).

        Returns:
          `ActorOutput` (numpy): level_name str; agent_state nest `[1, ...]` (the state before
          the first new step); env_outputs and agent_outputs with `[T+1, ...]` fields where
          entry 0 is the last entry of the previous unroll. `agent_outputs[t]` was computed
          from `env_outputs[t-1]` and produced `env_outputs[t]`.
        """
        if self._agent_output is None:
            # Shapes and dtypes of a zero agent output come from one (discarded) policy call.
            self._agent_output = AgentOutput(np.int32(0), None, None)
            probe, _ = self._step_policy()
            self._agent_output = tf.nest.map_structure(np.zeros_like, probe)
        while True:
            try:
                return self._unroll_once()
            except PyProcessDiedError as e:
                if self._recreate is None:
                    raise
                self._restart(e)

    def _unroll_once(self) -> ActorOutput:
        initial_agent_state = self._agent_state
        env_outputs = [self._env_output]
        agent_outputs = [self._agent_output]
        for _ in range(self._unroll_length):
            agent_output, self._agent_state = self._step_policy()
            env_output = _env_output_numpy(self._env.step(int(agent_output.action)))
            self._agent_output, self._env_output = agent_output, env_output
            env_outputs.append(env_output)
            agent_outputs.append(agent_output)
        return ActorOutput(
            level_name=self._level_name,
            agent_state=initial_agent_state,
            env_outputs=_stack_steps(env_outputs),
            agent_outputs=_stack_steps(agent_outputs),
        )


class BatchedActor:
    """Runs an `EnvironmentBatch` of E environments with one policy call per step for all E.

    Every environment yields its own unrolls, exactly as a single-environment `Actor` would:
    `unrolls()` runs T steps and returns E `ActorOutput`s, unroll i with environment i's level
    name, its core state `[1, ...]` from before the first new step, and `[T+1, ...]` env/agent
    outputs whose entry 0 is the last entry of its previous unroll. The agent resets the core
    state of each row at that environment's own episode ends (it reads `done`, as with `Actor`).

    Per-environment state (last env output, core state, last agent output) and the unroll live
    in preallocated arrays: time-major buffers `[T+1, E, ...]` whose row t is both what the
    environments wrote at step t and the policy's input at step t+1; nothing is built per step
    but the policy's call. Each step sends the actions, then writes the policy's outputs into
    the buffers while the environments step, then waits for them.

    Not thread-safe: each actor thread owns one `BatchedActor` (and its batch).

    Environment deaths (a subprocess of a `SubprocessBatch` killed, e.g. by the OOM killer):
    with `recreate`, each dead environment i is replaced (fresh episode, zero core state and
    last action for that row) and the whole batch's unroll in progress is dropped: the other
    environments keep their episodes, core states and last outputs, and every environment's
    next unroll starts from where it is now (the step during which the death happened
    included), so no unroll holds a gap. Deaths are logged and counted (`restarts`); more than
    `max_restarts` deaths of the same environment (row) within `restart_window_secs` raise
    `EnvironmentCrashLoopError`: a crash loop is one level that keeps dying, and a large batch
    should not stop for scattered deaths that a single environment would survive.
    """

    def __init__(
        self,
        env_batch: batched.EnvironmentBatch,
        policy: Policy,
        initial_agent_state: Any,
        unroll_length: int,
        use_instruction: bool = True,
        recreate: Callable[[int, int], Any] | None = None,
        max_restarts: int = 5,
        restart_window_secs: float = 600.0,
    ):
        """Starts every environment (`env_batch.initial()`) and sets the persistent state.

        Args:
          env_batch: the E environments (`environments.create_environment_batch`); the actor
            owns (closes) it.
          policy: see `Policy`, called with E rows: last_action int32 `[E]`, env_output with
            `[E]`-batched fields, core state nest `[E, ...]`.
          initial_agent_state: the core state of ONE environment, nest of `[1, ...]` (e.g.
            `agent.initial_state(1)`); every row starts from it, and a recreated row again.
          unroll_length: T, new agent steps per unroll.
          use_instruction: whether to pass instructions to the policy (unrolls always keep them).
          recreate: `recreate(i, n)` returns the replacement of environment i after its n-th
            death (n = 1, 2, ... per environment; e.g. to vary its seed): a single
            `Environment` of the same level, or None to let the batch build it
            (`env_batch.recreate(i)`, e.g. the factory of `create_environment_batch`: seed
            `seeds[i] + 100_000 * n`). None (the default) lets `EnvironmentsDiedError`
            propagate.
          max_restarts, restart_window_secs: the crash-loop limit.
        """
        if unroll_length <= 0:
            raise ValueError(f'unroll_length must be > 0, got {unroll_length}')
        self._batch = env_batch
        self._num_envs = num_envs = int(env_batch.num_envs)
        self._policy = policy
        self._unroll_length = unroll_length
        self._recreate = recreate
        self._max_restarts = max_restarts
        self._restart_window_secs = restart_window_secs
        self._restart_times = [collections.deque() for _ in range(num_envs)]
        self._recreated = [0] * num_envs
        self.restarts = 0

        state = _to_numpy(initial_agent_state)
        self._state_structure = state
        self._initial_state = tf.nest.flatten(state)
        for x in self._initial_state:
            if x.ndim < 1 or x.shape[0] != 1:
                raise ValueError(
                    'initial_agent_state is the state of one environment: every array [1, ...], '
                    f'got shape {list(x.shape)}'
                )
        # The current core state [E, ...], passed to the policy as `self._state_nest` (views).
        self._state = [np.repeat(x, num_envs, axis=0) for x in self._initial_state]
        self._state_nest = tf.nest.pack_sequence_as(state, self._state)
        self._unroll_state = [np.empty_like(x) for x in self._state]  # At the unroll's start.

        t1 = unroll_length + 1
        self._env_buffer = batched.empty_step_outputs(env_batch.observation_spec, (t1, num_envs))
        self._env_flat = tf.nest.flatten(self._env_buffer)
        self._env_rows = [
            tf.nest.map_structure(lambda x, t=t: x[t], self._env_buffer) for t in range(t1)
        ]
        self._policy_rows = [policy_inputs(row, use_instruction) for row in self._env_rows]
        # Filled in by the first `unrolls()` (shapes and dtypes come from one policy call).
        self._agent_buffer: AgentOutput | None = None
        self._agent_flat: list[np.ndarray] = []
        self._agent_rows: list[AgentOutput] = []
        self._agent_flat_rows: list[list[np.ndarray]] = []
        self._last = 0  # The buffers' row holding each environment's latest entry.
        env_batch.initial(self._env_rows[0])

    @property
    def level_names(self) -> list[str]:
        """The level of each environment: of the unrolls that `unrolls()` returns, in order."""
        return list(self._batch.level_names)

    @property
    def num_envs(self) -> int:
        return self._num_envs

    @property
    def env_batch(self) -> batched.EnvironmentBatch:
        return self._batch

    def close(self) -> None:
        """Closes the environment batch."""
        self._batch.close()

    def _allocate_agent_buffer(self) -> None:
        """One (discarded) policy call on the initial outputs gives the agent outputs' shapes;
        entry 0 of the first unroll is then all zeros (action 0 = "last action")."""
        probe, _ = self._policy(
            np.zeros([self._num_envs], np.int32), self._policy_rows[0], self._state_nest
        )
        probe = _to_numpy(probe)
        t1 = self._unroll_length + 1
        self._agent_buffer = tf.nest.map_structure(
            lambda x: np.zeros((t1, *x.shape), x.dtype), probe
        )
        self._agent_flat = tf.nest.flatten(self._agent_buffer)
        self._agent_rows = [
            tf.nest.map_structure(lambda x, t=t: x[t], self._agent_buffer) for t in range(t1)
        ]
        self._agent_flat_rows = [tf.nest.flatten(row) for row in self._agent_rows]

    def unrolls(self) -> list[ActorOutput]:
        """Runs T steps of every environment; returns their E unrolls (see the class doc).

        Returns:
          E `ActorOutput`s (numpy), in the order of `level_names`, each as `Actor.unroll`
          returns it.
        """
        if self._agent_buffer is None:
            self._allocate_agent_buffer()
        while True:
            try:
                self._unroll_once()
                break
            except batched.EnvironmentsDiedError as e:
                if self._recreate is None:
                    raise
                self._restart(e)
        return self._split()

    def _move_last_to_front(self) -> None:
        t = self._last
        if t != 0:
            for x in self._env_flat:
                x[0] = x[t]
            for x in self._agent_flat:
                x[0] = x[t]
            self._last = 0

    def _unroll_once(self) -> None:
        self._move_last_to_front()
        for start, now in zip(self._unroll_state, self._state):
            np.copyto(start, now)
        policy, env_batch = self._policy, self._batch
        agent_rows, policy_rows, env_rows = self._agent_rows, self._policy_rows, self._env_rows
        for t in range(1, self._unroll_length + 1):
            agent_output, state = policy(
                agent_rows[t - 1].action, policy_rows[t - 1], self._state_nest
            )
            env_batch.send(np.asarray(agent_output.action))
            # While the environments step: the bookkeeping.
            for target, value in zip(
                self._agent_flat_rows[t], tf.nest.flatten(agent_output), strict=True
            ):
                target[...] = value
            for target, value in zip(self._state, tf.nest.flatten(state), strict=True):
                target[...] = value
            self._last = t
            env_batch.receive(env_rows[t])

    def _split(self) -> list[ActorOutput]:
        """The E unrolls in the buffers, copied out (the buffers are reused)."""
        level_names = self._batch.level_names
        unrolls = []
        for i in range(self._num_envs):
            unrolls.append(
                ActorOutput(
                    level_name=level_names[i],
                    agent_state=tf.nest.pack_sequence_as(
                        self._state_structure, [x[i : i + 1].copy() for x in self._unroll_state]
                    ),
                    env_outputs=tf.nest.pack_sequence_as(
                        self._env_buffer, [x[:, i].copy() for x in self._env_flat]
                    ),
                    agent_outputs=tf.nest.pack_sequence_as(
                        self._agent_buffer, [x[:, i].copy() for x in self._agent_flat]
                    ),
                )
            )
        return unrolls

    def _restart(self, error: batched.EnvironmentsDiedError) -> None:
        """Replaces the dead environments of `error`; the unroll in progress is dropped."""
        t = self._last
        pending = list(zip(error.indices, error.errors))
        while pending:
            i, cause = pending.pop(0)
            level_name = self._batch.level_names[i]
            _count_death(
                self._restart_times[i],
                self._max_restarts,
                self._restart_window_secs,
                f'environment {i} ({level_name}) of this actor',
                cause,
            )
            self.restarts += 1
            self._recreated[i] += 1
            logging.warning(
                'Environment %d (%s) of a batch died (%s); recreating it (restart %d); the '
                "batch's unroll in progress is dropped.",
                i,
                level_name,
                cause,
                self.restarts,
            )
            try:
                initial = self._batch.recreate(i, self._recreate(i, self._recreated[i]))
            except PyProcessDiedError as e:  # Died again at once: counts as another death.
                pending.insert(0, (i, e))
                continue
            batched.write_row(self._env_rows[t], i, initial)
            for x in self._agent_flat:
                x[t, i] = 0
            for now, initial_state in zip(self._state, self._initial_state):
                now[i] = initial_state[0]


def stack_unrolls(unrolls: list[ActorOutput]) -> ActorOutput:
    """Stacks B unrolls into one time-major batch for the learner.

    Args:
      unrolls: B `ActorOutput`s as returned by `Actor.unroll`.

    Returns:
      `ActorOutput` (numpy): level_name object (str) `[B]`; agent_state nest `[B, ...]`;
      env_outputs and agent_outputs with `[T+1, B, ...]` fields.
    """
    if not unrolls:
        raise ValueError('stack_unrolls needs at least one unroll')

    def time_major(*xs):
        if xs[0].dtype == object:
            return np.stack(xs, axis=1).astype(object)
        return np.stack(xs, axis=1)

    return ActorOutput(
        level_name=np.array([u.level_name for u in unrolls], dtype=object),
        agent_state=tf.nest.map_structure(
            lambda *xs: np.concatenate(xs, axis=0), *[u.agent_state for u in unrolls]
        ),
        env_outputs=tf.nest.map_structure(time_major, *[u.env_outputs for u in unrolls]),
        agent_outputs=tf.nest.map_structure(time_major, *[u.agent_outputs for u in unrolls]),
    )
