"""The original's one-environment actor loop, written plainly: the reference for `actor.Actor`.

`actor.Actor` steps E environments as one batch in preallocated buffers; each of its unrolls must
equal what this actor returns for that environment alone (tests/actor_test.py compares them).
It steps one environment with one policy row per step and builds each unroll from lists.
"""

import collections
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from scalable_agent2.actor import count_death
from scalable_agent2.policy import Policy, batch_env_output, policy_inputs
from scalable_agent2.py_process import PyProcessDiedError
from scalable_agent2.types import (
    ActorOutput,
    AgentOutput,
    StepOutput,
    StepOutputInfo,
    game_over_or_done,
)


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


class ReferenceActor:
    """Runs one environment with a policy and produces unrolls of `unroll_length + 1` entries.

    Not thread-safe: each actor thread owns one `Actor` (and its environment). With `recreate`,
    an environment whose subprocess dies (segfault, OOM kill) is replaced by a new one: the
    unroll in progress is dropped, the new environment starts a fresh episode with a zero core
    state, and the restart is logged and counted (`restarts`). More than `max_restarts` deaths
    within `restart_window_secs` raise `EnvironmentCrashLoopError`.

    The original's actor loop written plainly: the reference whose unrolls `actor.Actor`'s must
    equal.
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
            (For E environments stepped at once, see `actor.Actor`.)
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
        """`[self.unroll()]`: the interface `actor.Actor` shares."""
        return [self.unroll()]

    def _restart(self, error: PyProcessDiedError) -> None:
        while True:
            count_death(
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
