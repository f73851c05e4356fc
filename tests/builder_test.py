"""Tests for the builder: training set-up and resume, test-mode restore."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from scalable_agent2 import builder, checkpoints, config
from tests import fakes


def test_set_up_training_resumes_and_checks_the_agent_and_action_sets(tmp_path):
    cfg = fakes.cartpole_cfg(tmp_path)
    first = builder.set_up_training(cfg, [fakes.CARTPOLE_SPEC], ['lvl'])
    first.learner.num_environment_frames.assign(1234)
    first.checkpointer.save(1234)
    again = builder.set_up_training(cfg, [fakes.CARTPOLE_SPEC], ['lvl'])
    assert again.resumed_from == 1234
    for x, y in zip(first.agent.variables, again.agent.variables, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match='num_actions=2'):
        builder.set_up_training(cfg, [fakes.CARTPOLE_SPEC._replace(num_actions=3)], ['other'])
    adam = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, optimizer='adam'))
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match='adam/step'):
        # RMSProp's slots, not Adam's.
        builder.set_up_training(adam, [fakes.CARTPOLE_SPEC], ['lvl'])
    with pytest.raises(ValueError, match='must share the action set'):
        builder.set_up_training(
            cfg, [fakes.CARTPOLE_SPEC, fakes.CARTPOLE_SPEC._replace(num_actions=3)], ['a', 'b']
        )
    with pytest.raises(ValueError, match='needs image frames'):
        shallow = dataclasses.replace(cfg, agent=config.AgentConfig(torso='shallow'))
        builder.set_up_training(shallow, [fakes.CARTPOLE_SPEC], ['lvl'])


def test_restore_agent_for_test_builds_no_optimizer(tmp_path):
    cfg = fakes.cartpole_cfg(tmp_path)
    trained = builder.set_up_training(cfg, [fakes.CARTPOLE_SPEC], ['lvl'])
    trained.learner.step(fakes.synthetic_batch(trained.agent))  # Slots hold non-initial values.
    trained.checkpointer.save(6)
    created = []

    def record(next_creator, **kwargs):
        variable = next_creator(**kwargs)
        created.append(variable.name)
        return variable

    with tf.variable_creator_scope(record):
        restored = builder.restore_agent_for_test(cfg, fakes.CARTPOLE_SPEC)
    assert restored.num_environment_frames == 6 and restored.checkpoint.endswith('ckpt-6')
    # The agent's variables, the frame counter and the checkpoint's own counter; no slot.
    assert sorted(created) == sorted(
        [v.name for v in restored.agent.variables] + ['num_environment_frames:0', 'save_counter:0']
    )
    for x, y in zip(trained.agent.variables, restored.agent.variables, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    with pytest.raises(checkpoints.NoCheckpointError):
        builder.restore_agent_for_test(fakes.cartpole_cfg(tmp_path / 'empty'), fakes.CARTPOLE_SPEC)
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match='num_actions=2'):
        builder.restore_agent_for_test(cfg, fakes.CARTPOLE_SPEC._replace(num_actions=3))


def test_restore_agent_for_test_plays_the_named_checkpoint(tmp_path):
    cfg = fakes.cartpole_cfg(tmp_path)
    trained = builder.set_up_training(cfg, [fakes.CARTPOLE_SPEC], ['lvl'])
    trained.learner.num_environment_frames.assign(6)
    trained.checkpointer.save(6)
    at_6 = [v.numpy() for v in trained.agent.variables]
    trained.learner.step(fakes.synthetic_batch(trained.agent))
    trained.learner.num_environment_frames.assign(9)
    trained.checkpointer.save(9)
    named = dataclasses.replace(cfg, mode='test', test_checkpoint='ckpt-6').validate()
    restored = builder.restore_agent_for_test(named, fakes.CARTPOLE_SPEC)
    assert restored.num_environment_frames == 6 and restored.checkpoint.endswith('ckpt-6')
    for x, y in zip(at_6, restored.agent.variables, strict=True):
        np.testing.assert_array_equal(x, y.numpy())
    latest = builder.restore_agent_for_test(cfg, fakes.CARTPOLE_SPEC)
    assert latest.num_environment_frames == 9
    with pytest.raises(checkpoints.NoCheckpointError, match='ckpt-7'):
        builder.restore_agent_for_test(
            dataclasses.replace(named, test_checkpoint='ckpt-7'), fakes.CARTPOLE_SPEC
        )
    with pytest.raises(config.UsageError, match='test_checkpoint is for --mode=test'):
        dataclasses.replace(cfg, test_checkpoint='ckpt-6').validate()
