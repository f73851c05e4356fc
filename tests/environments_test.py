"""create_environment dispatch and expand_level_names."""

import csv
import importlib.util
import os
import pathlib
import signal
import sys
import time

import numpy as np
import pytest

from scalable_agent2 import config as config_lib
from scalable_agent2 import environments, py_process
from scalable_agent2.environments import base

DATA = pathlib.Path(__file__).resolve().parent.parent / 'scalable_agent2' / 'data'
FAKE_DMLAB_DIR = pathlib.Path(__file__).resolve().parent / 'fake_deepmind_lab'


def _column(name: str, column: str) -> list[str]:
    with open(DATA / name) as f:
        return [row[column] for row in csv.DictReader(f)]


def test_expand_dmlab30_train_and_test():
    train = environments.expand_level_names('dmlab30', is_test=False)
    test = environments.expand_level_names('dmlab30', is_test=True)
    assert train == _column('dmlab30_scores.csv', 'train_level')
    assert test == _column('dmlab30_scores.csv', 'test_level')
    assert len(train) == len(test) == 30 and train != test


def test_expand_atari57():
    names = environments.expand_level_names('atari57', is_test=False)
    assert names == ['atari/' + g for g in _column('atari57_scores.csv', 'game')]
    assert len(set(names)) == 57
    assert environments.expand_level_names('atari57', is_test=True) == names


@pytest.mark.parametrize('name', ['gym/CartPole-v1', 'atari/Pong', 'rooms_watermaze'])
def test_expand_single_level(name):
    assert environments.expand_level_names(name, is_test=False) == [name]


def test_suite_name_is_not_a_level():
    with pytest.raises(ValueError, match='expand_level_names'):
        environments.create_environment('atari57', config_lib.EnvironmentConfig(), 0, False)


def test_empty_name():
    with pytest.raises(ValueError, match='empty'):
        environments.create_environment('', config_lib.EnvironmentConfig(), 0, False)


def test_invalid_config_is_rejected_before_starting():
    cfg = config_lib.EnvironmentConfig(atari_sticky_action_prob=1.5)
    with pytest.raises(ValueError, match='atari_sticky_action_prob'):
        environments.create_environment('atari/Pong', cfg, 0, False)


@pytest.mark.parametrize(
    'level,spec,num_actions',
    [
        ('gym/CartPole-v1', base.ObservationSpec((4,), 'float32', False), 2),
        ('atari/pong', base.ObservationSpec((84, 84, 4), 'uint8', False), 6),  # Minimal set.
    ],
)
def test_dispatch_gym_and_atari(level, spec, num_actions):
    with environments.create_environment(level, config_lib.EnvironmentConfig(), 0, False) as env:
        assert env.pid != os.getpid()
        assert (env.observation_spec, env.num_actions) == (spec, num_actions)
        first = env.initial()
        assert first.done and first.observation[0].shape == spec.frame_shape
        assert first.observation[0].dtype == np.dtype(spec.frame_dtype)
        out = env.step(0)
        assert out.observation[0].shape == spec.frame_shape


def test_dispatch_dmlab_with_the_fake_module(monkeypatch):
    # The child inherits the parent's sys.path, so it imports the fake `deepmind_lab`.
    monkeypatch.syspath_prepend(str(FAKE_DMLAB_DIR))
    cfg = config_lib.EnvironmentConfig()
    with environments.create_environment('rooms_watermaze', cfg, 0, False) as env:
        assert env.num_actions == 9
        assert env.observation_spec == base.ObservationSpec((72, 96, 3), 'uint8', True)
        first = env.initial()
        assert first.observation[0].shape == (72, 96, 3)
        assert isinstance(first.observation[1], str)
        env.step(0)


def test_dmlab_missing_module_error_reaches_the_parent(monkeypatch):
    from scalable_agent2.environments import dmlab

    # Make sure the real (absent) module is looked up: no fake on the path.
    monkeypatch.setattr(sys, 'path', [p for p in sys.path if 'fake_deepmind' not in p])
    if importlib.util.find_spec('deepmind_lab') is not None:
        pytest.skip('a real deepmind_lab is installed')
    with pytest.raises(dmlab.DeepMindLabNotInstalledError, match='taken as a DeepMind Lab'):
        environments.create_environment('rooms_watermaze', config_lib.EnvironmentConfig(), 0, False)


@pytest.mark.parametrize(
    'name,guess', [('Pong', 'atari/pong'), ('CartPole-v1', 'gym/CartPole-v1'), ('xyz', None)]
)
def test_names_without_a_suite_prefix_get_a_hint(monkeypatch, name, guess):
    from scalable_agent2.environments import dmlab

    monkeypatch.setattr(sys, 'path', [p for p in sys.path if 'fake_deepmind' not in p])
    # Without DeepMind Lab, it is not installed; with a real build, it has no such level.
    errors = (dmlab.DeepMindLabNotInstalledError, dmlab.UnknownLevelError)
    with pytest.raises(errors) as info:
        environments.create_environment(name, config_lib.EnvironmentConfig(), 0, False)
    message = str(info.value)
    assert 'dmlab30, atari57' in message
    assert (f'Did you mean {guess}?' in message) if guess else ('Did you mean' not in message)


def test_killed_environment_process_raises_within_seconds():
    env = environments.create_environment(
        'gym/CartPole-v1', config_lib.EnvironmentConfig(), 0, False
    )
    env.initial()
    os.kill(env.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(py_process.PyProcessDiedError):
        for _ in range(1000):  # The first call after the kill fails.
            env.step(0)
    assert time.monotonic() - start < 10
    env.close()
    env.close()


def test_shared_memory_and_pipe_transports_agree_and_frames_are_copies():
    cfg = config_lib.EnvironmentConfig(atari_full_action_space=True)
    actions = [t * 5 % 18 for t in range(40)]
    outputs = {}
    for shm in (True, False):
        with environments.create_environment(
            'atari/Pong', cfg, 4, False, use_shared_memory=shm
        ) as env:
            outputs[shm] = [env.initial()] + [env.step(a) for a in actions]
    for a, b in zip(outputs[True], outputs[False], strict=True):
        assert (a.reward, a.done, a.info) == (b.reward, b.done, b.info)
        assert type(a.reward) is type(b.reward) is np.float32
        assert type(a.info.episode_step) is np.int32
        np.testing.assert_array_equal(a.observation[0], b.observation[0])
    # Each returned frame is its own array, not a view of the shared block.
    frames = [o.observation[0] for o in outputs[True]]
    assert not any(np.shares_memory(frames[0], f) for f in frames[1:])
    assert not np.array_equal(frames[1], frames[-1])


def test_shared_memory_is_unlinked_on_close():
    env = environments.create_environment(
        'gym/CartPole-v1', config_lib.EnvironmentConfig(), 0, False
    )
    name = env._shm.name
    assert os.path.exists(f'/dev/shm/{name}')
    env.close()
    env.close()
    assert not os.path.exists(f'/dev/shm/{name}')


def test_shared_memory_is_unlinked_after_a_crash():
    env = environments.create_environment(
        'gym/CartPole-v1', config_lib.EnvironmentConfig(), 0, False
    )
    name = env._shm.name
    os.kill(env.pid, signal.SIGKILL)
    with pytest.raises(py_process.PyProcessDiedError):
        for _ in range(1000):
            env.step(0)
    env.close()
    assert not os.path.exists(f'/dev/shm/{name}')


_HEAVY_MODULES = ('tensorflow', 'sonnet', 'scalable_agent2.networks', 'scalable_agent2.actor')


@pytest.mark.parametrize('level', ['gym/CartPole-v1', 'atari/Pong'])
def test_environment_workers_import_no_tensorflow(level):
    import tensorflow as tf

    assert int(tf.constant(1) + 1) == 2  # The parent has TensorFlow loaded and running.
    with environments.create_environment(level, config_lib.EnvironmentConfig(), 0, False) as env:
        env.initial()
        modules = env._process.child_modules()
    assert 'scalable_agent2.environments' in modules
    heavy = [m for m in modules if m.split('.')[0] in _HEAVY_MODULES or m in _HEAVY_MODULES]
    assert not heavy, f'an environment worker imported {heavy[:5]}'


_TF_MAIN_SCRIPT = """
import tensorflow as tf  # A main module that imports TensorFlow at the top.

from scalable_agent2 import config, environments, py_process


class MainCounter:  # Defined in __main__: its child must import the main module.
    def value(self):
        return 41 + 1


if __name__ == '__main__':
    assert int(tf.constant(1) + 1) == 2
    cfg = config.EnvironmentConfig(num_action_repeats=1)
    batch = environments.create_environment_batch(['gym/CartPole-v1'] * 2, cfg, [1, 2], False)
    batch.initial()
    for env in batch.envs:
        modules = env._process.child_modules()
        assert 'tensorflow' not in modules, 'worker imported tensorflow (or this script)'
    batch.close()
    proc = py_process.PyProcess(MainCounter)
    assert proc.value() == 42
    assert 'tensorflow' in proc.child_modules()  # Its main module imports TensorFlow.
    proc.close()
    print('ok', flush=True)
"""


def test_environment_workers_skip_a_main_module_that_imports_tensorflow(tmp_path):
    """A script importing TensorFlow at the top: its environment workers import neither it
    nor TensorFlow (so TensorFlow's start-up lines appear once), while a PyProcess whose
    factory is defined in the script still gets it."""
    import subprocess

    script = tmp_path / 'tf_main.py'
    script.write_text(_TF_MAIN_SCRIPT)
    root = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env
    )
    assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-3000:]
    # TensorFlow's C++ start-up banner: printed by the parent and by the one child whose main
    # module imports TensorFlow, not once per environment worker.
    banner = [line for line in out.stderr.splitlines() if 'cpu_feature_guard' in line]
    assert len(banner) <= 2, out.stderr[-3000:]
