"""Named tuples shared by environments, actors, the agent and the learner.

The field names follow the original IMPALA code so that nests line up with it.
"""

from typing import Any, NamedTuple


class StepOutputInfo(NamedTuple):
    """Running statistics of the current episode (or of the one that just ended).

    Where a lost life ends the agent's (training) episode but not the game (Atari), both
    counters run over the whole game, and `game_over` says whether this step ended it: training
    summaries report full-game returns, as the paper's curves do.

    Attributes:
      episode_return: float32, sum of unclipped rewards so far in the game.
      episode_step: int32, agent steps so far in the game (frames = steps x action repeats).
      game_over: bool, whether this step ended the game; on a `done` step it differs from
        `done` only at a life loss. Defaults to `()`, an empty nest that every `tf.nest`
        operation skips, meaning "as `done`" (see `game_over_or_done`).
    """

    episode_return: Any
    episode_step: Any
    game_over: Any = ()


def game_over_or_done(info: StepOutputInfo, done: Any) -> Any:
    """`info.game_over`, or `done` where the environment did not say (`()`)."""
    if isinstance(info.game_over, tuple) and not info.game_over:
        return done
    return info.game_over


class StepOutput(NamedTuple):
    """What an environment returns from `initial()` and `step()`.

    When `done` is true, `observation` is already the first observation of the next
    episode and `info` describes the episode that just ended.

    Attributes:
      reward: float32, reward of the last step (unclipped).
      info: `StepOutputInfo`.
      done: bool, whether the last step ended an episode.
      observation: `(frame, instruction)`; frame is uint8 `[H, W, C]` for pixel suites or
        float32 `[D]` for vector observations; instruction is a string ('' when none).
    """

    reward: Any
    info: StepOutputInfo
    done: Any
    observation: Any


class AgentOutput(NamedTuple):
    """Output of one agent step or an unroll.

    Attributes:
      action: int32 `[B]` (or `[T, B]`), sampled actions.
      policy_logits: float32 `[B, A]` (or `[T, B, A]`).
      baseline: float32 `[B]` (or `[T, B]`), value estimates.
    """

    action: Any
    policy_logits: Any
    baseline: Any


class ActorOutput(NamedTuple):
    """One unroll sent from an actor to the learner.

    Attributes:
      level_name: string scalar (`[B]` when batched), the level the unroll came from.
      agent_state: the agent's core state at the start of the unroll (a nest).
      env_outputs: `StepOutput` whose fields are `[T+1, ...]`; entry 0 is the last entry of the
        previous unroll.
      agent_outputs: `AgentOutput` whose fields are `[T+1, ...]`: `agent_outputs[t]` was
        computed from `env_outputs[t-1]` and its action produced `env_outputs[t]` (so
        `agent_outputs.action[t]` is the "last action" that goes with `env_outputs[t]`).
    """

    level_name: Any
    agent_state: Any
    env_outputs: StepOutput
    agent_outputs: AgentOutput
