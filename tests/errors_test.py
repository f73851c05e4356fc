"""Tests for scalable_agent2.errors: which errors are user mistakes, which are diagnosed stops.

The command line's side (one line and exit 2 or 1 for these, a traceback for anything else) is
tested in cli_test.py with real processes.
"""

import pytest

from scalable_agent2 import config, errors


def test_the_families_are_the_builtin_types_callers_already_catch():
    assert issubclass(errors.UsageError, ValueError)
    assert issubclass(errors.RunAbortedError, RuntimeError)
    assert not issubclass(errors.UsageError, errors.RunAbortedError)


def test_user_facing_finds_the_error_or_the_cause_that_wrapped_it():
    usage = errors.UsageError('unknown level')
    assert errors.user_facing(usage) is usage
    aborted = errors.RunAbortedError('the environment died 6 times')
    try:
        try:
            raise aborted
        except errors.RunAbortedError as e:
            raise RuntimeError('a training thread failed') from e
    except RuntimeError as wrapped:
        assert errors.user_facing(wrapped) is aborted
    # A bug is a bug, even a ValueError, and even one raised while handling a user mistake.
    assert errors.user_facing(ValueError('Shapes (2,) and (3,) are incompatible')) is None
    try:
        try:
            raise usage
        except errors.UsageError:
            raise KeyError('oops')  # noqa: B904 (the implicit context is the point)
    except KeyError as bug:
        assert errors.user_facing(bug) is None


def test_exit_codes_and_first_line():
    assert errors.exit_code(errors.UsageError('x')) == errors.EXIT_USAGE == 2
    assert errors.exit_code(errors.RunAbortedError('x')) == errors.EXIT_ABORTED == 1
    assert errors.first_line(errors.UsageError('\n  first\nsecond')) == 'first'
    assert errors.first_line(errors.UsageError()) == 'UsageError'


@pytest.mark.parametrize(
    'make',
    [
        lambda: config.LearnerConfig(batch_size=0).validate(),
        lambda: config.LearnerConfig(entropy_cost=float('inf')).validate(),
        lambda: config.ExperimentConfig(logdir='').validate(),
        lambda: config.ExperimentConfig(task=1).validate(),
        lambda: config.parse_address('nohost'),
        lambda: config.cluster_config_from('localhost:1', '', '{not json'),
    ],
)
def test_config_validation_raises_usage_errors(make):
    with pytest.raises(errors.UsageError):
        make()


def test_environment_and_checkpoint_mistakes_are_usage_errors():
    from scalable_agent2 import checkpoints, distributed, environments
    from scalable_agent2.environments import atari, dmlab, gym

    with pytest.raises(errors.UsageError, match='NoSuchEnv'):
        gym.check_env_id('NoSuchEnv-v0')
    with pytest.raises(errors.UsageError, match='Unknown Atari game'):
        atari.rom_id('NoSuchGame')
    with pytest.raises(errors.UsageError, match='is a suite'):
        environments.create_environment('dmlab30', config.EnvironmentConfig(), 1, False)
    for cls in (
        checkpoints.IncompatibleCheckpointError,
        checkpoints.NoCheckpointError,
        checkpoints.CorruptCheckpointError,
        dmlab.DeepMindLabNotInstalledError,
        distributed.LearnerUnreachableError,
        distributed.NotATensorFlowServerError,
    ):
        assert issubclass(cls, errors.UsageError), cls
    # Still what older callers catch.
    assert issubclass(dmlab.DeepMindLabNotInstalledError, ImportError)
    assert issubclass(distributed.LearnerUnreachableError, ConnectionError)


def test_divergence_and_crash_loops_are_diagnosed_stops():
    from scalable_agent2 import actor, learner

    assert issubclass(learner.DivergenceError, errors.RunAbortedError)
    assert issubclass(actor.EnvironmentCrashLoopError, errors.RunAbortedError)
    assert issubclass(actor.EnvironmentCrashLoopError, RuntimeError)
