"""The DeepMind Lab wrapper against the fake `deepmind_lab` in tests/fake_deepmind_lab."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from scalable_agent2 import config as config_lib
from scalable_agent2.environments import base, dmlab
from scalable_agent2.scoring import dmlab30

FAKE_DIR = pathlib.Path(__file__).resolve().parent / 'fake_deepmind_lab'
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# The original's DEFAULT_ACTION_SET, written out independently of the module under test.
ORIGINAL_ACTIONS = [
    [0, 0, 0, 1, 0, 0, 0],
    [0, 0, 0, -1, 0, 0, 0],
    [0, 0, -1, 0, 0, 0, 0],
    [0, 0, 1, 0, 0, 0, 0],
    [-20, 0, 0, 0, 0, 0, 0],
    [20, 0, 0, 0, 0, 0, 0],
    [-20, 0, 0, 1, 0, 0, 0],
    [20, 0, 0, 1, 0, 0, 0],
    [0, 0, 0, 0, 1, 0, 0],
]
FORWARD, FIRE = 0, 8


@pytest.fixture
def fake_lab(monkeypatch):
    """The fake `deepmind_lab` module, freshly imported, with an empty `CREATED` list."""
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    monkeypatch.delitem(sys.modules, 'deepmind_lab', raising=False)
    import deepmind_lab

    assert deepmind_lab.version() == 'fake'
    deepmind_lab.CREATED.clear()
    yield deepmind_lab
    monkeypatch.delitem(sys.modules, 'deepmind_lab', raising=False)


def _make(level='seekavoid_arena_01', seed=1, is_test=False, **config_kwargs):
    env_config = config_lib.EnvironmentConfig(**config_kwargs).validate()
    return dmlab.DmLab(level, env_config, seed=seed, is_test=is_test)


def _expected_reset_seeds(seed, n):
    rng = np.random.RandomState(seed)
    return [int(rng.randint(0, 2**31 - 1)) for _ in range(n)]


@pytest.mark.parametrize(
    'level, expected',
    [
        ('explore_goal_locations_small', 'contributed/dmlab30/explore_goal_locations_small'),
        (
            'rooms_collect_good_objects_train',
            'contributed/dmlab30/rooms_collect_good_objects_train',
        ),
        (
            'language_select_described_object',
            'contributed/dmlab30/language_select_described_object',
        ),
        ('seekavoid_arena_01', 'seekavoid_arena_01'),
        ('tests/empty_room_test', 'tests/empty_room_test'),
        ('contributed/dmlab30/rooms_watermaze', 'contributed/dmlab30/rooms_watermaze'),
    ],
)
def test_level_prefix(fake_lab, level, expected):
    _make(level)
    assert fake_lab.CREATED[-1].level == expected


def test_every_dmlab30_name_is_prefixed(fake_lab):
    names = set(dmlab30.TRAIN_LEVELS) | set(dmlab30.TEST_LEVELS)
    assert len(names) == 32  # 30 levels, two with distinct train and test names.
    for name in sorted(names):
        _make(name, is_test=True)
        assert fake_lab.CREATED[-1].level == 'contributed/dmlab30/' + name


def test_train_config(fake_lab):
    env = _make()
    lab = fake_lab.CREATED[-1]
    assert lab.config == {'width': '96', 'height': '72', 'logLevel': 'WARN', 'datasetPath': ''}
    assert lab.observation_names == ['RGB_INTERLEAVED', 'INSTR']
    assert lab.renderer == 'software'
    assert lab.level_cache is None
    assert env.num_actions == 9
    assert env.observation_spec == base.ObservationSpec((72, 96, 3), 'uint8', True)


def test_config_size_and_dataset_path(fake_lab):
    env = _make(width=64, height=48, dataset_path='/data/brady_konkle_oliva2008')
    lab = fake_lab.CREATED[-1]
    assert lab.config == {
        'width': '64',
        'height': '48',
        'logLevel': 'WARN',
        'datasetPath': '/data/brady_konkle_oliva2008',
    }
    frame, _ = env.reset()
    assert frame.shape == (48, 64, 3) == env.observation_spec.frame_shape
    assert frame.dtype == np.uint8


def test_test_mode_config(fake_lab):
    _make('rooms_collect_good_objects_test', is_test=True)
    lab = fake_lab.CREATED[-1]
    assert lab.config == {
        'width': '96',
        'height': '72',
        'logLevel': 'WARN',
        'datasetPath': '',
        'allowHoldOutLevels': 'true',
        'mixerSeed': '1611489005',  # int('600D5EED', 16), as the original's str(0x600D5EED).
    }
    assert int(lab.config['mixerSeed']) == int('600D5EED', 16)


def test_action_set_and_num_steps(fake_lab):
    env = _make(num_action_repeats=3)
    lab = fake_lab.CREATED[-1]
    env.reset()
    for index in range(9):
        if not lab.is_running():
            env.reset()
        env.step(index)
    assert len(lab.step_calls) == 9
    for (action, num_steps), expected in zip(lab.step_calls, ORIGINAL_ACTIONS):
        assert action.dtype == np.intc
        np.testing.assert_array_equal(action, expected)
        assert num_steps == 3


@pytest.mark.parametrize('action', [-1, 9, 100])
def test_bad_action_raises(fake_lab, action):
    env = _make()
    env.reset()
    with pytest.raises(ValueError, match='action'):
        env.step(action)


def test_reward_is_summed_over_repeats(fake_lab):
    env = _make(num_action_repeats=2)
    env.reset()
    # Fake dynamics: +1 per frame moving forward, +10 per frame firing.
    rewards_and_dones = [env.step(a)[:2] for a in (FORWARD, 4, FIRE, 1)]
    # Forward, look left, fire, backward; 8 of the 10 frames, so not done.
    assert rewards_and_dones == [(2.0, False), (0.0, False), (20.0, False), (-2.0, False)]
    reward, done, (frame, instruction) = env.step(FORWARD)
    assert (reward, done) == (2.0, True)
    assert frame.shape == (72, 96, 3) and instruction == ''


@pytest.mark.parametrize('seed', [0, 1, 12345])
def test_reset_seeds_come_from_seeded_generator(fake_lab, seed):
    env = _make(seed=seed)
    lab = fake_lab.CREATED[-1]
    frames = [env.reset()[0] for _ in range(3)]
    expected = _expected_reset_seeds(seed, 3)
    assert lab.reset_seeds == expected
    for frame, reset_seed in zip(frames, expected):
        assert np.all(frame == fake_lab.frame_value(reset_seed, 0))


def test_seeds_reproducible_per_seed(fake_lab):
    _make(seed=7).reset()
    _make(seed=7).reset()
    _make(seed=8).reset()
    a, b, c = fake_lab.CREATED
    assert a.reset_seeds == b.reset_seeds
    assert a.reset_seeds != c.reset_seeds


def test_instruction(fake_lab):
    frame, instruction = _make('language_select_described_object').reset()
    assert instruction == fake_lab.LANGUAGE_INSTRUCTION
    assert isinstance(instruction, str)
    assert _make('explore_goal_locations_small').reset()[1] == ''


def test_flow_environment_done_and_reset(fake_lab):
    # 10-frame episodes with 4 repeats: agent steps of 4, 4 and 2 frames.
    assert fake_lab.EPISODE_FRAMES == 10
    env = base.FlowEnvironment(_make(seed=3, num_action_repeats=4))
    lab = fake_lab.CREATED[-1]
    seeds = _expected_reset_seeds(3, 3)

    first = env.initial()
    assert first.done and first.reward == 0
    assert (first.info.episode_return, first.info.episode_step) == (0, 0)
    assert np.all(first.observation[0] == fake_lab.frame_value(seeds[0], 0))

    outputs = [env.step(FORWARD) for _ in range(4)]
    assert [o.reward for o in outputs] == [4.0, 4.0, 2.0, 4.0]
    assert [o.done for o in outputs] == [False, False, True, False]
    assert [float(o.info.episode_return) for o in outputs] == [4.0, 8.0, 10.0, 4.0]
    assert [int(o.info.episode_step) for o in outputs] == [1, 2, 3, 1]
    # On `done`, the observation is already the first of the next episode.
    assert np.all(outputs[1].observation[0] == fake_lab.frame_value(seeds[0], 8))
    assert np.all(outputs[2].observation[0] == fake_lab.frame_value(seeds[1], 0))
    assert np.all(outputs[3].observation[0] == fake_lab.frame_value(seeds[1], 4))
    assert lab.reset_seeds == seeds[:2]
    assert [n for _, n in lab.step_calls] == [4, 4, 4, 4]


def test_close_is_idempotent(fake_lab):
    env = _make()
    env.reset()
    env.close()
    env.close()
    assert [c for c in fake_lab.CREATED[-1].calls if c[0] == 'close'] == [('close',)]


def test_level_cache(fake_lab, tmp_path):
    cache_dir = tmp_path / 'cache'
    env = _make(seed=5, level_cache_dir=str(cache_dir))
    lab = fake_lab.CREATED[-1]
    assert isinstance(lab.level_cache, dmlab.LevelCache)
    env.reset()
    (miss,) = [c for c in lab.calls if c[0].startswith('cache')]
    assert miss[0] == 'cache_miss'
    assert (cache_dir / miss[1]).read_text() == f'map {miss[1]}'
    # Same seed, new environment: the same map comes from the cache.
    _make(seed=5, level_cache_dir=str(cache_dir)).reset()
    assert [c for c in fake_lab.CREATED[-1].calls if c[0].startswith('cache')] == [
        ('cache_hit', miss[1])
    ]


def test_level_cache_fetch_and_write(tmp_path):
    cache = dmlab.LevelCache(str(tmp_path / 'a' / 'b'))
    assert (tmp_path / 'a' / 'b').is_dir()
    target = tmp_path / 'out.pk3'
    assert not cache.fetch('k.pk3', str(target))
    assert not target.exists()
    source = tmp_path / 'src.pk3'
    source.write_bytes(b'first')
    cache.write('k.pk3', str(source))
    source.write_bytes(b'second')
    cache.write('k.pk3', str(source))  # Already cached: kept.
    assert cache.fetch('k.pk3', str(target))
    assert target.read_bytes() == b'first'
    assert sorted(p.name for p in (tmp_path / 'a' / 'b').iterdir()) == ['k.pk3']


def test_missing_module_error(monkeypatch):
    monkeypatch.setattr(sys, 'path', [p for p in sys.path if 'fake_deepmind_lab' not in p])
    # None in sys.modules makes `import deepmind_lab` fail even if a real one is installed.
    monkeypatch.setitem(sys.modules, 'deepmind_lab', None)
    with pytest.raises(dmlab.DeepMindLabNotInstalledError) as info:
        _make()
    message = str(info.value)
    assert '\n' not in message
    assert 'DeepMind Lab' in message and 'not installed' in message
    assert 'Dockerfile' in message and 'build_dmlab_offline.sh' in message
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ImportError)


def test_missing_module_error_in_fresh_interpreter(monkeypatch):
    import importlib.util

    monkeypatch.setattr(sys, 'path', [p for p in sys.path if 'fake_deepmind_lab' not in p])
    if importlib.util.find_spec('deepmind_lab') is not None:
        pytest.skip('a real deepmind_lab is installed')
    # A fresh interpreter whose path lacks the fake: the real import machinery fails.
    code = (
        'import importlib.util, sys\n'
        'assert importlib.util.find_spec("deepmind_lab") is None, "deepmind_lab importable"\n'
        'from scalable_agent2 import config\n'
        'from scalable_agent2.environments import dmlab\n'
        'try:\n'
        '    dmlab.DmLab("seekavoid_arena_01", config.EnvironmentConfig(), 1, False)\n'
        'except dmlab.DeepMindLabNotInstalledError as e:\n'
        '    print("ERROR:", e)\n'
    )
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    result = subprocess.run(
        [sys.executable, '-c', code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith('ERROR:')]
    assert 'not installed' in line and 'Dockerfile' in line


def test_runs_in_py_process(fake_lab):
    # The child gets the parent's sys.path, so it imports the fake too.
    from scalable_agent2 import py_process

    env_config = config_lib.EnvironmentConfig(num_action_repeats=4).validate()
    proc = py_process.PyProcess(
        dmlab.DmLab, 'language_execute_random_task', env_config, 11, True, start_timeout=60
    )
    try:
        assert proc.get_attr('num_actions', timeout=30) == 9
        spec = proc.get_attr('observation_spec', timeout=30)
        assert tuple(spec) == ((72, 96, 3), 'uint8', True)
        frame, instruction = proc.reset(timeout=30)
        seeds = _expected_reset_seeds(11, 1)
        assert frame.shape == (72, 96, 3) and frame.dtype == np.uint8
        assert np.all(frame == fake_lab.frame_value(seeds[0], 0))
        assert instruction == fake_lab.LANGUAGE_INSTRUCTION
        steps = [proc.step(FORWARD, timeout=30)[:2] for _ in range(3)]
        assert steps == [(4.0, False), (4.0, False), (2.0, True)]
    finally:
        proc.close()


def test_missing_module_error_crosses_py_process(monkeypatch):
    import importlib.util

    from scalable_agent2 import py_process

    monkeypatch.setattr(sys, 'path', [p for p in sys.path if 'fake_deepmind_lab' not in p])
    monkeypatch.delitem(sys.modules, 'deepmind_lab', raising=False)
    if importlib.util.find_spec('deepmind_lab') is not None:
        pytest.skip('a real deepmind_lab is installed')
    with pytest.raises(dmlab.DeepMindLabNotInstalledError, match='not installed.*Dockerfile'):
        py_process.PyProcess(
            dmlab.DmLab,
            'seekavoid_arena_01',
            config_lib.EnvironmentConfig(),
            1,
            False,
            start_timeout=60,
        )
