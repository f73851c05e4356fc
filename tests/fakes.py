"""What the tests share: a counting environment, a CartPole-shaped spec, config and batch,
and the scalar summaries of a logdir."""

import numpy as np
import tensorflow as tf

from scalable_agent2 import builder, config, plot
from scalable_agent2.environments.base import ObservationSpec
from scalable_agent2.types import ActorOutput, AgentOutput, StepOutput, StepOutputInfo

NUM_ACTIONS = 3


class CountingEnv:
    """Episodes of `episode_length` steps; the frame is [step counter, last action]."""

    def __init__(self, episode_length=4):
        self.episode_length = episode_length
        self.actions = []  # Every action received, in order.
        self._t = 0
        self._step = 0
        self._return = 0.0
        self.num_actions = NUM_ACTIONS
        self.observation_spec = ObservationSpec((2,), 'float32', False)

    def _obs(self, action):
        return (np.array([self._t, action], np.float32), f'instr {self._t}')

    def initial(self):
        return StepOutput(
            np.float32(0), StepOutputInfo(np.float32(0), np.int32(0)), True, self._obs(-1)
        )

    def step(self, action):
        self.actions.append(action)
        self._t += 1
        self._step += 1
        reward = float(action) + 0.5
        self._return += reward
        info = StepOutputInfo(np.float32(self._return), np.int32(self._step))
        done = self._step == self.episode_length
        if done:
            self._step, self._return = 0, 0.0
        return StepOutput(np.float32(reward), info, done, self._obs(action))

    def close(self):
        pass


CARTPOLE_SPEC = builder.EnvironmentSpec(ObservationSpec((4,), 'float32', False), 2)


def cartpole_cfg(logdir, **kwargs):
    return config.ExperimentConfig(
        logdir=str(logdir),
        agent=config.AgentConfig(torso='mlp'),
        environment=config.EnvironmentConfig(num_action_repeats=1),
        learner=config.LearnerConfig(num_action_repeats=1, use_xla=False),
        **kwargs,
    ).validate()


def synthetic_batch(agent, t1=4, b=2, seed=0):
    """A CartPole-shaped batch `[T+1, B, ...]` for a 2-action MLP agent; `done` at t=2."""
    rng = np.random.default_rng(seed)
    done = np.zeros((t1, b), bool)
    done[2] = True
    return ActorOutput(
        level_name=np.array(['lvl'] * b, dtype=object),
        agent_state=tf.nest.map_structure(np.asarray, agent.initial_state(b)),
        env_outputs=StepOutput(
            reward=rng.normal(size=(t1, b)).astype(np.float32),
            info=StepOutputInfo(
                np.full((t1, b), 7.0, np.float32), np.full((t1, b), 5, np.int32), done
            ),
            done=done,
            observation=(
                rng.normal(size=(t1, b, 4)).astype(np.float32),
                np.full((t1, b), '', dtype=object),
            ),
        ),
        agent_outputs=AgentOutput(
            rng.integers(0, 2, (t1, b)).astype(np.int32),
            rng.normal(size=(t1, b, 2)).astype(np.float32),
            np.zeros((t1, b), np.float32),
        ),
    )


def scalar_points(logdir) -> dict[str, list[tuple[int, float]]]:
    """The scalar summaries under `logdir` (`plot.read_scalars`), by tag: [(step, value)]."""
    return {
        tag: list(zip(series.steps.tolist(), series.values.tolist(), strict=True))
        for tag, series in plot.read_scalars(str(logdir)).items()
    }
