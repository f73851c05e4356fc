"""The policy: the agent step as one call over a batch of environments, and its stepper.

A policy is `(last_action, env_output, core_state) -> (agent_output, core_state)` with a leading
batch dimension everywhere (`Policy`). `make_policy` is the agent step as one `tf.function`;
`make_batched_policy` puts it behind dynamic batching for many threads. `PolicyStepper` plays one
environment with a policy, carrying the last action and the core state (test mode, videos).
"""

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from scalable_agent2 import dynamic_batching
from scalable_agent2.types import AgentOutput, StepOutput, StepOutputInfo, game_over_or_done

# policy(last_action int32 [n], env_output StepOutput with [n]-batched fields, core_state nest
# [n, ...]) -> (AgentOutput with [n]-batched fields, new core_state nest [n, ...]); n = E for
# an `actor.Actor` of E environments (rows are independent: row i is environment i), 1 for a
# `PolicyStepper`.
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


def make_policy(agent: Any) -> Callable[..., Any]:
    """The agent step as one `tf.function`: `(last_action, env_output, core_state) ->
    (AgentOutput, core_state)`, every input and output with a leading batch dimension."""

    @tf.function(reduce_retracing=True)
    def step(last_action, env_output, core_state):
        return agent((last_action, env_output), core_state)

    return step


def make_batched_policy(agent: Any, timeout_ms: int) -> Any:
    """The agent step behind dynamic batching, for actor threads.

    Returns:
      A callable `(last_action [1], env_output [1, ...], core_state [1, ...]) ->
      (AgentOutput [1, ...], core_state [1, ...])` with a `close()` method.
    """
    return dynamic_batching.batch_fn_with_options(
        minimum_batch_size=1, maximum_batch_size=1024, timeout_ms=timeout_ms
    )(make_policy(agent))


class PolicyStepper:
    """Plays one environment with a policy, carrying the last action and the core state.

    The agent's core resets itself where an input has `done` set (as the original), so the
    stepper never resets anything on its own: the core state and the last action carry across
    episode ends exactly as in a training actor. `reset()` starts over (a new environment).
    """

    def __init__(self, policy: Policy, initial_state: Any, use_instruction: bool = True):
        """Starts with the initial core state and a last action of 0.

        Args:
          policy: `(last_action int32 [1], env_output [1]-batched StepOutput, core_state) ->
            (AgentOutput [1, ...], core_state)`, e.g. `make_batched_policy(agent, ...)`.
          initial_state: the agent's initial core state for one environment.
          use_instruction: whether the agent reads the instruction.
        """
        self._policy = policy
        self._initial_state = initial_state
        self._use_instruction = use_instruction
        self.reset()

    def reset(self) -> None:
        """Back to the initial core state and a last action of 0 (the original's start)."""
        self.core_state = self._initial_state
        self.last_action = np.zeros([1], np.int32)
        self.agent_output = None

    def step(self, env_output: StepOutput) -> int:
        """The action for one (unbatched) environment output; updates the carried state."""
        inputs = policy_inputs(batch_env_output(env_output), self._use_instruction)
        self.agent_output, self.core_state = self._policy(self.last_action, inputs, self.core_state)
        self.last_action = np.asarray(self.agent_output.action, np.int32).reshape([1])
        return int(self.last_action[0])

    __call__ = step


def run_episodes(
    env: Any, stepper: PolicyStepper, num_episodes: int, stop: threading.Event | None = None
) -> list[float]:
    """Steps `env` with `stepper` until `num_episodes` episodes end; returns their returns.

    Raises:
      RuntimeError: `stop` was set first.
    """
    returns: list[float] = []
    env_output = env.initial()
    while len(returns) < num_episodes:
        if stop is not None and stop.is_set():
            raise RuntimeError('evaluation stopped')
        env_output = env.step(stepper.step(env_output))
        if env_output.done:
            returns.append(float(env_output.info.episode_return))
    return returns
