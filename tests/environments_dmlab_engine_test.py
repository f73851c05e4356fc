"""The DeepMind Lab wrapper against the real engine (`python -m pytest -m dmlab`).

Skipped where `deepmind_lab` does not import: it is not on PyPI; docker/build_dmlab.sh (online,
the Docker image) or docker/build_dmlab_offline.sh (offline) builds it. The tests run on the
engine's own levels and maps, which any build has, even one with placeholder textures. Each
engine runs in a subprocess that has not imported TensorFlow, as in training (docs/USAGE.md:
the software renderer's LLVM and TensorFlow's cannot share a process).
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from scalable_agent2 import config as config_lib
from scalable_agent2 import environments, py_process
from scalable_agent2.environments import base, dmlab
from scalable_agent2.scoring import dmlab30

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / 'experiments' / 'experiment.py'
# 90 s at 60 frames/s, from the level's own script (game_scripts/levels/contributed/dmlab30).
LEVEL, LEVEL_FRAMES = 'explore_goal_locations_small', 5400
LANGUAGE_LEVEL = 'language_select_located_object'

pytestmark = [
    pytest.mark.dmlab,
    pytest.mark.skipif(
        importlib.util.find_spec('deepmind_lab') is None,
        reason='DeepMind Lab is not installed: build it with docker/build_dmlab_offline.sh '
        '(or the Docker image) to run the real-engine tests',
    ),
]

# The engine's action layout, as DeepMind Lab's docs/users/actions.md lists it.
ENGINE_ACTIONS = (
    'LOOK_LEFT_RIGHT_PIXELS_PER_FRAME',
    'LOOK_DOWN_UP_PIXELS_PER_FRAME',
    'STRAFE_LEFT_RIGHT',
    'MOVE_BACK_FORWARD',
    'FIRE',
    'JUMP',
    'CROUCH',
)
FORWARD, LOOK_RIGHT = 0, 5


def _make(level=LEVEL, seed=1, is_test=False, **config_kwargs):
    env_config = config_lib.EnvironmentConfig(**config_kwargs).validate()
    return py_process.PyProcess(dmlab.DmLab, level, env_config, seed, is_test, start_timeout=120)


def _play(env, actions):
    frames, rewards = [], []
    for action in actions:
        reward, done, (frame, _) = env.step(action, timeout=60)
        rewards.append(reward)
        frames.append(frame)
        if done:
            break
    return np.stack(frames), rewards


def _episode_steps(env) -> tuple[int, bool, np.ndarray]:
    steps, done = 0, False
    while not done and steps < 100_000:
        _, done, (frame, _) = env.step(FORWARD, timeout=60)
        steps += 1
    return steps, done, frame


def test_observations_match_the_spec():
    env = _make(width=64, height=48)
    try:
        spec = base.ObservationSpec(*env.get_attr('observation_spec', timeout=60))
        assert spec.frame_shape == (48, 64, 3) and spec.frame_dtype == 'uint8'
        frame, instruction = env.reset(timeout=120)
        assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
        assert instruction == ''  # Not a language level.
        assert frame.std() > 0  # A rendered view, not a blank frame.
        reward, done, (next_frame, _) = env.step(LOOK_RIGHT, timeout=60)
        assert isinstance(reward, float) and not done
        assert next_frame.shape == frame.shape and not np.array_equal(next_frame, frame)
    finally:
        env.close()


def test_action_set_fits_the_engine_action_spec():
    code = (
        'import json, deepmind_lab\n'
        f'lab = deepmind_lab.Lab("contributed/dmlab30/{LEVEL}", ["RGB_INTERLEAVED"], config={{}})\n'
        'print(json.dumps(lab.action_spec()))\n'
        'lab.close()\n'
    )
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    spec = json.loads(result.stdout.strip().splitlines()[-1])
    assert tuple(a['name'] for a in spec) == ENGINE_ACTIONS
    assert len(dmlab.DEFAULT_ACTION_SET) == 9
    for action in dmlab.DEFAULT_ACTION_SET:
        assert len(action) == len(spec)
        for value, entry in zip(action, spec, strict=True):
            assert entry['min'] <= value <= entry['max'], (action, entry)


def test_action_repeats_and_episode_end():
    for repeats in (4, 8):
        env = _make(num_action_repeats=repeats)
        try:
            env.reset(timeout=120)
            steps, done, last_frame = _episode_steps(env)
            assert done
            assert not last_frame.any()  # An ended episode has no observation.
            # Every agent step is `repeats` engine frames; the level lasts LEVEL_FRAMES.
            assert steps == LEVEL_FRAMES // repeats
            # The engine refuses a step after the end (the wrapper's callers reset first).
            with pytest.raises(RuntimeError, match='wrong status'):
                env.step(FORWARD, timeout=60)
            frame, _ = env.reset(timeout=120)
            assert frame.any()
            assert not env.step(FORWARD, timeout=60)[1]
        finally:
            env.close()


def test_seeds_fix_the_episode():
    actions = [FORWARD, LOOK_RIGHT] * 15
    runs = []
    for seed in (7, 7, 8):
        env = _make(seed=seed)
        try:
            first, _ = env.reset(timeout=120)
            frames, _ = _play(env, actions)
            runs.append(np.concatenate([first[None], frames]))
        finally:
            env.close()
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_language_level_gives_instructions():
    env = _make(LANGUAGE_LEVEL)
    try:
        assert env.get_attr('observation_spec', timeout=60)[2]  # has_instruction
        _, instruction = env.reset(timeout=120)
        assert isinstance(instruction, str) and len(instruction.split()) >= 3, instruction
        _, done, (_, during) = env.step(FORWARD, timeout=60)
        assert not done and during == instruction
    finally:
        env.close()


def test_level_cache_is_filled_then_reused(tmp_path):
    cache = tmp_path / 'cache'
    env = _make(level_cache_dir=str(cache))
    try:
        first, _ = env.reset(timeout=120)
    finally:
        env.close()
    cached = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    # One compiled map, under the key DeepMind Lab chose, with no temporary file left over.
    assert len(cached) == 1 and not any(name.startswith('.tmp_') for name in cached)
    assert all(p.stat().st_size > 0 for p in cache.iterdir())
    env = _make(level_cache_dir=str(cache))
    try:
        again, _ = env.reset(timeout=120)
    finally:
        env.close()
    # The same map, fetched from the cache: nothing new written, the same first view.
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == cached
    np.testing.assert_array_equal(first, again)


def _experiment(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXPERIMENT), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env={**os.environ, 'CUDA_VISIBLE_DEVICES': ''},
    )


def test_training_then_test_mode_on_a_dmlab30_level(tmp_path):
    logdir = str(tmp_path / 'run')
    common = [f'--level_name={LEVEL}', f'--logdir={logdir}', '--network=shallow']
    train = _experiment(
        *common,
        '--num_actors=2',
        '--batch_size=2',
        '--unroll_length=20',
        '--total_environment_frames=2000',
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert any(name.startswith('ckpt-') for name in os.listdir(logdir))

    test = _experiment(*common, '--mode=test', '--test_num_episodes=1')
    assert test.returncode == 0, test.stderr[-3000:]
    with open(os.path.join(logdir, 'test_results.json')) as f:
        results = json.load(f)
    assert results['num_environment_frames'] >= 2000
    (entry,) = results['levels'].values()
    assert len(entry['returns']) == 1
    # Test mode plays the level's test twin; its score uses the published references.
    level = 'explore_goal_locations_small'
    expected = (
        100
        * (entry['mean_return'] - dmlab30.RANDOM_SCORES[level])
        / (dmlab30.HUMAN_SCORES[level] - dmlab30.RANDOM_SCORES[level])
    )
    assert entry['human_normalized_score'] == pytest.approx(expected)


def test_unknown_level_is_a_one_line_usage_error():
    with pytest.raises(dmlab.UnknownLevelError) as info:
        environments.create_environment('Pong', config_lib.EnvironmentConfig(), 0, False)
    message = str(info.value)
    assert '\n' not in message and isinstance(info.value, ValueError)
    assert "DeepMind Lab has no level 'Pong'" in message
    assert 'Did you mean atari/pong?' in message
