"""The interface every environment suite implements, and the episode bookkeeping around it.

A suite provides a *raw* environment (`RawEnvironment`): reset, step with action repeats, and
its specs. `FlowEnvironment` wraps one and gives the original IMPALA flow semantics
(`initial()` / `step()` returning `StepOutput`). Both run inside the environment's subprocess,
so one step costs one round trip.
"""

from typing import NamedTuple, Protocol

import numpy as np

from scalable_agent2.types import StepOutput, StepOutputInfo

Observation = tuple[np.ndarray, str]  # (frame, instruction); instruction is '' when none.


class ObservationSpec(NamedTuple):
    """Shape and dtype of a frame, and whether the suite has instructions.

    Attributes:
      frame_shape: `[H, W, C]` for pixels (any C) or `[D]` for vectors.
      frame_dtype: numpy dtype name: 'uint8' for pixels, 'float32' for vectors.
      has_instruction: whether observations carry a (possibly empty) language instruction.
    """

    frame_shape: tuple[int, ...]
    frame_dtype: str
    has_instruction: bool


class RawEnvironment(Protocol):
    """What a suite implements. Rewards are summed over action repeats."""

    @property
    def num_actions(self) -> int: ...

    @property
    def observation_spec(self) -> ObservationSpec: ...

    def reset(self) -> Observation:
        """Starts a new episode and returns its first observation."""

    # Optional: `game_over`, a bool property saying whether the last `step` ended the whole
    # game. Only a suite whose episodes can end before the game does (Atari's life loss)
    # defines it; otherwise every episode end is a game end.

    def step(self, action: int) -> tuple[float, bool, Observation]:
        """Applies `action` (with repeats); returns (reward, done, observation).

        When `done`, the observation may be anything: the caller resets.
        """

    def close(self) -> None: ...


class FlowEnvironment:
    """Adds the original's episode bookkeeping to a `RawEnvironment`.

    `initial()` returns reward 0, zero info, `done=True` and the first observation.
    `step(action)` returns the step's reward, and on episode end `done=True`, the info of the
    episode that just ended (return, length in agent steps) and the first observation of the
    next episode; counters then restart. Where a lost life ends the episode but not the game,
    the counters run on over the whole game and `info.game_over` is False (see
    `StepOutputInfo`).
    """

    def __init__(self, env: RawEnvironment):
        self._env = env
        self._episode_return = 0.0
        self._episode_step = 0

    @property
    def num_actions(self) -> int:
        return self._env.num_actions

    @property
    def observation_spec(self) -> ObservationSpec:
        return self._env.observation_spec

    def initial(self) -> StepOutput:
        self._episode_return = 0.0
        self._episode_step = 0
        observation = self._env.reset()
        return StepOutput(
            reward=np.float32(0.0),
            info=StepOutputInfo(np.float32(0.0), np.int32(0), True),
            done=True,
            observation=observation,
        )

    def step(self, action: int) -> StepOutput:
        reward, done, observation = self._env.step(int(action))
        game_over = bool(getattr(self._env, 'game_over', done))
        self._episode_return += reward
        self._episode_step += 1
        info = StepOutputInfo(
            np.float32(self._episode_return), np.int32(self._episode_step), game_over
        )
        if done:
            observation = self._env.reset()
        if game_over:
            self._episode_return = 0.0
            self._episode_step = 0
        return StepOutput(np.float32(reward), info, bool(done), observation)

    def close(self) -> None:
        self._env.close()
