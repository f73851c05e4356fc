"""Tests for the policy: the stepper carries the last action and the core state; episodes."""

import threading

import numpy as np
import pytest

from scalable_agent2 import builder, config, networks, policy
from scalable_agent2.types import AgentOutput, StepOutput, StepOutputInfo
from tests import fakes


def _step_output(reward, done=False):
    return StepOutput(
        np.float32(reward),
        StepOutputInfo(np.float32(reward), np.int32(1)),
        done,
        (np.zeros(4, np.float32), 'instr'),
    )


def test_policy_stepper_carries_last_action_and_state_across_episodes():
    calls = []

    def fake_policy(last_action, env_output, state):
        calls.append((last_action.tolist(), env_output.reward.tolist(), state, env_output))
        action = np.array([len(calls) % 3], np.int32)
        return AgentOutput(action, np.zeros([1, 3], np.float32), np.zeros([1], np.float32)), (
            state + 1
        )

    stepper = policy.PolicyStepper(fake_policy, initial_state=10, use_instruction=False)
    outputs = [_step_output(0.0, True), _step_output(1.0), _step_output(2.0, True)]
    assert [stepper.step(o) for o in outputs] == [1, 2, 0]
    assert [c[0] for c in calls] == [[0], [1], [2]]
    assert [c[1] for c in calls] == [[0.0], [1.0], [2.0]]  # Batched rewards.
    assert [c[2] for c in calls] == [10, 11, 12]  # Not reset at the episode end (done).
    assert calls[0][3].observation[1] == () and calls[0][3].info == ()  # What the agent reads.
    assert stepper.last_action.tolist() == [0] and stepper.core_state == 13
    stepper.reset()
    assert stepper(_step_output(5.0)) == 1
    assert calls[-1][0] == [0] and calls[-1][2] == 10


def test_run_episodes_counts_episode_ends():
    class Env:
        t = 0

        def initial(self):
            return _step_output(0.0, True)

        def step(self, action):
            self.t += 1
            return _step_output(float(self.t), self.t % 3 == 0)

    def fake_policy(last_action, env_output, state):
        return AgentOutput(np.zeros([1], np.int32), None, None), state

    stepper = policy.PolicyStepper(fake_policy, 0)
    assert policy.run_episodes(Env(), stepper, 2) == [3.0, 6.0]
    stop = threading.Event()
    stop.set()
    with pytest.raises(RuntimeError, match='stopped'):
        policy.run_episodes(Env(), stepper, 1, stop)


def test_real_agent_through_the_stepper_and_dynamic_batching(tmp_path):
    agent = networks.ImpalaAgent(config.AgentConfig(num_actions=2, torso='mlp', core_size=8))
    builder.create_agent_variables(agent, fakes.CARTPOLE_SPEC.observation_spec)
    batched = policy.make_batched_policy(agent, timeout_ms=5)
    try:
        stepper = policy.PolicyStepper(batched, builder.initial_core_state(agent), False)
        actions = [stepper.step(_step_output(float(i), i == 0)) for i in range(5)]
    finally:
        batched.close()
    assert all(a in (0, 1) for a in actions)
    assert stepper.agent_output.policy_logits.shape == (1, 2)
