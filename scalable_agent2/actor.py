"""The actor: E environments stepped as one batch with the agent, emitting T+1-step unrolls.

An `Actor` runs an `EnvironmentBatch` of E environments with one policy call of E rows per step
(in training, the dynamically batched agent step; distributed actors call the agent directly),
so the actor itself holds no TensorFlow state. Each environment is still one IMPALA actor in
the paper's sense: it keeps its last environment output, agent (core) state and agent output
between unrolls, as the original does; every unroll starts with the last entry of the previous
one, followed by `unroll_length` new steps, and carries the core state from before its first
new step. (tests/reference_actor.py holds the original's one-environment actor loop written
plainly, whose unrolls an `Actor`'s must equal.)

`actor_loop` drives actors in a thread and puts their unrolls on a queue; `batches_from_unrolls`
stacks `batch_size` of them time-major for the learner (`stack_unrolls`).
"""

import collections
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from scalable_agent2 import workers
from scalable_agent2.environments import batched
from scalable_agent2.errors import RunAbortedError
from scalable_agent2.policy import Policy, policy_inputs
from scalable_agent2.py_process import PyProcessDiedError
from scalable_agent2.types import ActorOutput, AgentOutput


def _to_numpy(nest: Any) -> Any:
    return tf.nest.map_structure(np.asarray, nest)


class EnvironmentCrashLoopError(RunAbortedError):
    """An actor's environment died too often in a short time to keep recreating it."""


def count_death(
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
    """Runs an `EnvironmentBatch` of E environments with one policy call per step for all E.

    Every environment yields its own unrolls, exactly as the one-environment actor loop of the
    original would:
    `unrolls()` runs T steps and returns E `ActorOutput`s, unroll i with environment i's level
    name, its core state `[1, ...]` from before the first new step, and `[T+1, ...]` env/agent
    outputs whose entry 0 is the last entry of its previous unroll. The agent resets the core
    state of each row at that environment's own episode ends (it reads `done`).

    Per-environment state (last env output, core state, last agent output) and the unroll live
    in preallocated arrays: time-major buffers `[T+1, E, ...]` whose row t is both what the
    environments wrote at step t and the policy's input at step t+1; nothing is built per step
    but the policy's call. Each step sends the actions, then writes the policy's outputs into
    the buffers while the environments step, then waits for them.

    Not thread-safe: each actor thread owns one `Actor` (and its batch).

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
          E `ActorOutput`s (numpy), in the order of `level_names`: level_name str;
          agent_state nest `[1, ...]` (the state before the first new step); env_outputs and
          agent_outputs with `[T+1, ...]` fields where entry 0 is the last entry of the previous
          unroll. `agent_outputs[t]` was computed from `env_outputs[t-1]` and produced
          `env_outputs[t]`.
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
            count_death(
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
      unrolls: B `ActorOutput`s as returned by `Actor.unrolls`.

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


def actor_loop(actors: Sequence[Any], unroll_queue: queue.Queue, stop: threading.Event) -> None:
    """An actor thread: runs its actor objects in turn, putting their unrolls on the queue."""
    while not stop.is_set():
        for a in actors:
            for unroll in a.unrolls():
                if not workers.put(unroll_queue, unroll, stop):
                    return


def batches_from_unrolls(
    unroll_queue: queue.Queue, batch_size: int, stop: threading.Event
) -> Callable[[], ActorOutput | None]:
    """A batch maker for `prefetch_loop`: `batch_size` unrolls stacked time-major (None: stop)."""

    def next_batch() -> ActorOutput | None:
        items = []
        while len(items) < batch_size:
            item = workers.get(unroll_queue, stop)
            if item is None:
                return None
            items.append(item)
        return stack_unrolls(items)

    return next_batch
