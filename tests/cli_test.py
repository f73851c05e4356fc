"""Tests for the command line: the original flags and defaults, config building, one-line errors."""

import importlib.util
import os
import subprocess
import sys

import pytest
from absl import flags

from scalable_agent2 import cli, config, py_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, 'experiments', 'experiment.py')

# The original experiment.py's flags and defaults.
ORIGINAL_DEFAULTS = {
    'logdir': '/tmp/agent',
    'mode': 'train',
    'test_num_episodes': 10,
    'task': -1,
    'job_name': 'learner',
    'total_environment_frames': int(1e9),
    'num_actors': 4,
    'batch_size': 2,
    'unroll_length': 100,
    'num_action_repeats': 4,
    'seed': 1,
    'entropy_cost': 0.00025,
    'baseline_cost': 0.5,
    'discounting': 0.99,
    'reward_clipping': 'abs_one',
    'dataset_path': '',
    'level_name': 'explore_goal_locations_small',
    'width': 96,
    'height': 72,
    'learning_rate': 0.00048,
    'decay': 0.99,
    'momentum': 0.0,
    'epsilon': 0.1,
}


def parsed(*args):
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(['experiment.py', *args])
    return fv


def test_original_flags_have_the_original_defaults():
    fv = parsed()
    for name, default in ORIGINAL_DEFAULTS.items():
        assert fv[name].default == default, name
        assert fv[name].value == default, name


def test_every_flag_has_a_help_string():
    fv = parsed()
    defined = [fv[name] for name in fv]  # A fresh FlagValues holds only the CLI's flags.
    assert len(defined) >= len(ORIGINAL_DEFAULTS) + 5
    for flag in defined:
        assert flag.help and len(flag.help) > 5, flag.name


def test_default_config_matches_the_library_defaults():
    cfg = cli.experiment_config(parsed())
    assert cfg.learner == config.LearnerConfig()
    assert cfg.environment == config.EnvironmentConfig()
    assert cfg.agent.torso == 'deep' and cfg.num_actors == 4 and cfg.seed == 1
    assert cfg.save_checkpoint_secs == 600


def test_flags_reach_the_config():
    cfg = cli.experiment_config(
        parsed(
            '--total_environment_frames=2e6',
            '--batch_size=32',
            '--unroll_length=20',
            '--num_action_repeats=1',
            '--learning_rate=0.01',
            '--reward_clipping=soft_asymmetric',
            '--network=mlp',
            '--level_name=gym/CartPole-v1',
            '--width=48',
            '--atari_sticky_action_prob=0.25',
            '--noatari_terminal_on_life_loss',
            '--nouse_xla',
            '--mode=test',
            '--test_num_episodes=3',
        )
    )
    assert cfg.learner.total_environment_frames == 2_000_000
    assert isinstance(cfg.learner.total_environment_frames, int)
    assert (cfg.learner.batch_size, cfg.learner.unroll_length) == (32, 20)
    assert cfg.learner.num_action_repeats == cfg.environment.num_action_repeats == 1
    assert cfg.learner.learning_rate == 0.01
    assert cfg.learner.reward_clipping == 'soft_asymmetric'
    assert not cfg.learner.use_xla
    assert cfg.environment.width == 48
    assert cfg.environment.atari_sticky_action_prob == 0.25
    assert not cfg.environment.atari_terminal_on_life_loss
    assert (cfg.agent.torso, cfg.level_name, cfg.mode, cfg.test_num_episodes) == (
        'mlp',
        'gym/CartPole-v1',
        'test',
        3,
    )


@pytest.mark.parametrize(
    'args, field',
    [
        (['--batch_size=0'], 'batch_size'),
        (['--num_actors=-1'], 'num_actors'),
        (['--learning_rate=0'], 'learning_rate'),
        (['--unroll_length=0'], 'unroll_length'),
        (['--total_environment_frames=0'], 'total_environment_frames'),
        (['--test_num_episodes=0'], 'test_num_episodes'),
        (['--save_checkpoint_secs=0'], 'save_checkpoint_secs'),
        (['--discounting=1.5'], 'discounting'),
        (['--task=1'], 'learner job has one task'),
        (['--learner_address=nohost'], 'learner_address'),
        (['--publish_interval=0'], 'publish_interval'),
    ],
)
def test_bad_values_are_value_errors_naming_the_flag(args, field):
    with pytest.raises(ValueError, match=field):
        cli.experiment_config(parsed(*args))


def test_bad_flag_syntax_is_rejected_at_parse_time():
    with pytest.raises(flags.Error):
        parsed('--total_environment_frames=1.5')
    with pytest.raises(flags.Error):
        parsed('--network=wide')
    assert parsed('--total_environment_frames=100').total_environment_frames == 100


def run_cli(*args):
    return subprocess.run(
        [sys.executable, EXPERIMENT, *args], capture_output=True, text=True, timeout=180, cwd=ROOT
    )


def assert_one_line_error(proc, pattern):
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert pattern in errors[0], errors[0]


def test_cli_bad_flag_values_are_one_line(tmp_path):
    # Validation errors are found before TensorFlow is imported.
    assert_one_line_error(
        run_cli('--batch_size=0', f'--logdir={tmp_path}'), 'batch_size must be a finite number > 0'
    )
    assert_one_line_error(run_cli('--network=wide'), 'network')
    assert_one_line_error(run_cli('--task=3', '--job_name=learner'), 'learner job has one task')
    assert_one_line_error(run_cli('stray_argument'), 'unexpected arguments')


def test_cli_bad_environment_or_logdir_is_one_line(tmp_path):
    # An unknown level and an unwritable logdir; one process each.
    assert_one_line_error(
        run_cli('--level_name=gym/NoSuchEnv-v0', '--network=mlp', f'--logdir={tmp_path}/a'),
        'NoSuchEnv',
    )
    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    assert_one_line_error(
        run_cli('--level_name=gym/CartPole-v1', f'--logdir={blocker}/sub'), 'not writable'
    )


@pytest.mark.skipif(
    importlib.util.find_spec('deepmind_lab') is not None,
    reason='a real deepmind_lab is installed (tests/environments_dmlab_engine_test.py covers it)',
)
def test_cli_missing_deepmind_lab_is_one_line(tmp_path):
    assert_one_line_error(
        run_cli('--level_name=explore_goal_locations_small', f'--logdir={tmp_path}/b'),
        'DeepMind Lab',
    )


def test_helpfull_lists_the_new_flags():
    proc = run_cli('--helpfull')  # absl exits 1 after printing help.
    assert 'Traceback' not in proc.stderr
    for name in ('--network', '--save_checkpoint_secs', '--atari_noop_max', '--level_name'):
        assert name in proc.stdout


def _preset(name):
    return os.path.join(ROOT, 'experiments', 'configs', f'{name}.flags')


def test_atari_flag_file_sets_the_paper_atari_values(monkeypatch):
    monkeypatch.chdir(ROOT)  # Flag files name each other relative to the repository root.
    cfg = cli.experiment_config(parsed(f'--flagfile={_preset("atari")}', '--level_name=atari/Pong'))
    assert (cfg.agent.torso, cfg.agent.use_lstm, cfg.num_actors) == ('shallow', False, 48)
    assert not cfg.environment.atari_full_action_space
    assert cfg.environment.atari_terminal_on_life_loss
    assert cfg.environment.num_action_repeats == 4
    assert cfg.learner == config.LearnerConfig(
        batch_size=32,
        unroll_length=20,
        num_action_repeats=4,
        total_environment_frames=200_000_000,
        entropy_cost=0.01,
        baseline_cost=0.5,
        discounting=0.99,
        reward_clipping='abs_one',
        learning_rate=0.0006,
        decay=0.99,
        momentum=0.0,
        epsilon=0.01,
        max_grad_norm=40.0,
    )
    # Later flags override the file; atari57 gets the full action set by itself.
    cfg = cli.experiment_config(
        parsed(f'--flagfile={_preset("atari")}', '--level_name=atari57', '--batch_size=8')
    )
    assert cfg.environment.atari_full_action_space and cfg.learner.batch_size == 8


def test_pong_and_dmlab30_flag_files(monkeypatch):
    monkeypatch.chdir(ROOT)
    pong = cli.experiment_config(parsed(f'--flagfile={_preset("pong")}'))
    assert pong.level_name == 'atari/Pong' and pong.learner.total_environment_frames == 2 * 10**7
    assert pong.learner.max_grad_norm == 40.0 and not pong.agent.use_lstm
    assert (pong.learner.batch_size, pong.learner.epsilon, pong.num_actors) == (2, 1e-5, 32)
    assert pong.learner.entropy_cost == 0.002
    assert pong.learner.learning_rate_decay_frames == 2 * 10**8
    dmlab = cli.experiment_config(parsed(f'--flagfile={_preset("dmlab30")}'))
    assert (dmlab.level_name, dmlab.agent.torso, dmlab.agent.use_lstm, dmlab.num_actors) == (
        'dmlab30',
        'deep',
        True,
        150,
    )
    assert dmlab.learner.batch_size == 32 and dmlab.learner.unroll_length == 100
    assert dmlab.learner.entropy_cost == 0.0033391318945337044
    assert dmlab.learner.learning_rate == 0.00031866995608948655
    assert dmlab.learner.total_environment_frames == 10**10
    assert dmlab.learner.reward_clipping == 'soft_asymmetric'
    assert dmlab.learner.epsilon == 0.1 and dmlab.learner.max_grad_norm is None


def test_gym_levels_default_to_one_action_repeat():
    assert (
        cli.experiment_config(parsed('--level_name=gym/CartPole-v1')).learner.num_action_repeats
        == 1
    )
    cfg = cli.experiment_config(parsed('--level_name=gym/CartPole-v1', '--num_action_repeats=4'))
    assert cfg.learner.num_action_repeats == cfg.environment.num_action_repeats == 4
    assert cli.experiment_config(parsed('--level_name=atari/Pong')).learner.num_action_repeats == 4


def test_new_agent_and_learner_flags():
    cfg = cli.experiment_config(parsed('--nouse_lstm', '--max_grad_norm=40', '--env_seed_offset=3'))
    assert not cfg.agent.use_lstm and cfg.learner.max_grad_norm == 40.0
    assert cfg.env_seed(0) == 4 and cfg.env_seed(5) == 9
    assert cli.experiment_config(parsed()).learner.max_grad_norm is None
    with pytest.raises(ValueError, match='max_grad_norm'):
        cli.experiment_config(parsed('--max_grad_norm=-1'))
    assert cli.experiment_config(parsed()).learner.learning_rate_decay_frames is None
    cfg = cli.experiment_config(parsed('--learning_rate_decay_frames=2e8'))
    assert cfg.learner.learning_rate_decay_frames == 200_000_000
    with pytest.raises(ValueError, match='learning_rate_decay_frames'):
        cli.experiment_config(parsed('--learning_rate_decay_frames=-5'))


@pytest.mark.parametrize(
    'flag', ['--entropy_cost=inf', '--learning_rate=nan', '--epsilon=inf', '--max_grad_norm=inf']
)
def test_non_finite_flag_values_are_rejected(flag):
    name = flag[2:].split('=')[0]
    with pytest.raises(ValueError, match=f'{name} must be a finite number'):
        cli.experiment_config(parsed(flag))


def test_ctrl_c_while_tensorflow_imports_exits_quietly(tmp_path):
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, EXPERIMENT, '--level_name=gym/CartPole-v1', f'--logdir={tmp_path}'],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # TensorFlow takes seconds to import.
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == cli.EXIT_INTERRUPTED, stderr[-2000:]
    assert 'Traceback' not in stderr and stderr.strip().splitlines()[-1] == 'interrupted'


# --------------------------------------------------------------------------------------------
# User mistakes vs bugs; a logdir left by a failed set-up; an environment killed mid-run.


def _main_with(monkeypatch, tmp_path, error, **cfg_fields):
    """Runs `cli._main` with a config for `tmp_path`/new and a `run` that raises `error`."""
    cfg = config.ExperimentConfig(logdir=str(tmp_path / 'new' / 'logdir'), **cfg_fields)

    def run(cfg):
        os.makedirs(cfg.logdir)  # As training's set-up does before it fails.
        raise error

    monkeypatch.setattr(cli, 'experiment_config', lambda fv: cfg)
    monkeypatch.setattr(cli, 'run', run)
    cli._main(['experiment.py'])  # noqa: SLF001


def test_usage_errors_are_one_line_and_other_errors_propagate(monkeypatch, tmp_path, capsys):
    from scalable_agent2 import errors

    with pytest.raises(SystemExit) as exit_info:
        _main_with(monkeypatch, tmp_path, errors.UsageError('unknown level\nmore detail'))
    assert exit_info.value.code == cli.EXIT_USAGE
    assert capsys.readouterr().err == 'error: unknown level\n'
    # A diagnosed stop wrapped by the thread machinery: its own line, exit status 1.
    try:
        raise errors.RunAbortedError('the environment of lvl died 6 times in 600 s')
    except errors.RunAbortedError as e:
        wrapped = RuntimeError(f'a training thread failed: {e!r}')
        wrapped.__cause__ = e
    with pytest.raises(SystemExit) as exit_info:
        _main_with(monkeypatch, tmp_path, wrapped)
    assert exit_info.value.code == errors.EXIT_ABORTED
    assert capsys.readouterr().err == 'error: the environment of lvl died 6 times in 600 s\n'
    # A bug, even a ValueError, is not turned into one line.
    shape_error = ValueError('Shapes (2, 3) and (3,) are incompatible')
    with pytest.raises(ValueError, match='incompatible'):
        _main_with(monkeypatch, tmp_path, shape_error)
    # Each failed set-up removed the logdir it created, and its new parent.
    assert os.listdir(tmp_path) == []


def test_a_failed_run_keeps_an_existing_or_non_empty_logdir(monkeypatch, tmp_path):
    from scalable_agent2 import errors

    existing = tmp_path / 'new' / 'logdir'
    existing.mkdir(parents=True)
    cfg = config.ExperimentConfig(logdir=str(existing))
    monkeypatch.setattr(cli, 'experiment_config', lambda fv: cfg)

    def fail(cfg):
        raise errors.UsageError('bad')

    monkeypatch.setattr(cli, 'run', fail)
    with pytest.raises(SystemExit):
        cli._main(['experiment.py'])  # noqa: SLF001
    assert existing.is_dir()  # It was there before.
    existing.rmdir()

    def fail_after_writing(cfg):
        os.makedirs(cfg.logdir)
        (existing / 'ckpt-1.index').write_text('')
        raise errors.RunAbortedError('diverged')

    monkeypatch.setattr(cli, 'run', fail_after_writing)
    with pytest.raises(SystemExit):
        cli._main(['experiment.py'])  # noqa: SLF001
    assert (existing / 'ckpt-1.index').exists()  # Not empty: kept.
    # An actor does not own the logdir (the learner on its machine may have just made it).
    (existing / 'ckpt-1.index').unlink()
    existing.rmdir()
    with pytest.raises(SystemExit):
        _main_with(
            monkeypatch,
            tmp_path,
            errors.UsageError('no learner'),
            task=0,
            job_name='actor',
        )
    assert existing.is_dir()


_RAISING_CLI = (
    'import sys\n'
    'from scalable_agent2 import cli, errors\n'
    'def run(cfg):\n'
    '    raise {error}\n'
    'cli.run = run\n'
    'cli.main(sys.argv)\n'
)


def test_cli_process_prints_one_line_for_usage_errors_and_a_traceback_for_bugs(tmp_path):
    def run_raising(error):
        return subprocess.run(
            [sys.executable, '-c', _RAISING_CLI.format(error=error), f'--logdir={tmp_path}/x'],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )

    assert_one_line_error(run_raising("errors.UsageError('no such level: foo')"), 'no such level')
    proc = run_raising("ValueError('Shapes (2, 3) and (3,) are incompatible')")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert 'Traceback' in proc.stderr and 'are incompatible' in proc.stderr
    assert not [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    proc = run_raising("errors.RunAbortedError('non-finite loss at learner step 7')")
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == 'error: non-finite loss at learner step 7'
    assert not os.path.exists(tmp_path / 'x')


def test_cli_unknown_level_leaves_no_new_logdir(tmp_path):
    logdir = tmp_path / 'runs' / 'cartpole'
    assert_one_line_error(
        run_cli('--level_name=gym/NoSuchEnv-v0', '--network=mlp', f'--logdir={logdir}'),
        'NoSuchEnv',
    )
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(600)
def test_sigkill_of_an_environment_mid_run_is_recreated_and_training_finishes(tmp_path):
    import re
    import signal
    import time

    total = 16_000  # 100 learner steps of 4 unrolls x 40 frames.
    logdir = tmp_path / 'logdir'
    log_path = tmp_path / 'stderr.txt'
    args = [
        '--level_name=gym/CartPole-v1',
        '--network=mlp',
        '--num_actors=4',
        '--batch_size=4',
        '--unroll_length=40',
        '--nouse_xla',
        '--log_interval_secs=1',
        f'--total_environment_frames={total}',
        f'--logdir={logdir}',
    ]
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(
            [sys.executable, EXPERIMENT, *args],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
        try:
            deadline = time.monotonic() + 300
            while 'learner steps' not in log_path.read_text():  # Training has begun.
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, 'training did not start in time'
                time.sleep(0.2)
            victims = py_process.worker_pids(proc.pid)
            assert len(victims) == 4, victims
            os.kill(victims[0], signal.SIGKILL)
            assert proc.wait(timeout=240) == 0, log_path.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log_path.read_text()
    assert re.search(
        r'Environment \d+ \(gym/CartPole-v1\) of a batch died .*recreating it \(restart 1\)', text
    )
    assert 'exit code -9' in text
    # TensorFlow's start-up notices are left out (tf_startup), its version logged once.
    assert 'cudart_stub' not in text and 'cuInit' not in text
    assert len(re.findall(r'TensorFlow \S+ on (CPU only|\d+ GPU)', text)) == 1
    stopped = re.search(r'Training stopped at (\d+) environment frames', text)
    assert stopped and int(stopped.group(1)) >= total, text[-3000:]


def test_every_flag_comes_from_a_config_field_and_every_field_has_one():
    import dataclasses

    fv = parsed()
    by_field = set()
    for cls in cli.CONFIG_CLASSES:
        for field in dataclasses.fields(cls):
            flag = config.field_flag(field)
            if dataclasses.is_dataclass(field.type):
                assert flag is None, field.name  # Nested configs: their fields have flags.
                continue
            if field.metadata.get(config.NO_FLAG_METADATA_KEY):
                assert flag is None, field.name  # Set from elsewhere (the environment).
                continue
            assert flag is not None, f'{cls.__name__}.{field.name} has no flag'
            name = flag.flag_name(field)
            assert name in fv, name
            by_field.add(name)
    assert by_field == set(fv)


def test_a_new_config_field_is_a_new_flag_in_one_place():
    """A field with `config.flag_field` is defined as a flag and reaches its config."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Toy:
        rate: float = config.flag_field(0.5, 'A rate.')
        count: int = config.flag_field(3, 'A count.', allow_exponent=True)
        mode: str = config.flag_field('a', 'A mode.', choices=('a', 'b'))
        hosts: tuple[str, ...] = config.flag_field(
            (), 'Hosts.', to_config=lambda v, flags: config.split_addresses(v)
        )
        maybe: bool | None = config.flag_field(None, 'Maybe.')
        also_count: int = config.flag_field(3, None, name='count')  # Reads --count.
        hidden: int = 7  # No flag.

    fv = flags.FlagValues()
    cli.define_config_flags([Toy], fv)
    assert sorted(fv) == ['count', 'hosts', 'maybe', 'mode', 'rate']
    assert fv['hosts'].default == '' and fv['maybe'].default is None
    fv(['x', '--rate=2', '--count=1e3', '--mode=b', '--hosts=a:1, b:2', '--maybe'])
    values = {name: fv[name].value for name in fv}
    assert Toy(**cli.config_kwargs(Toy, values)) == Toy(
        rate=2.0, count=1000, mode='b', hosts=('a:1', 'b:2'), maybe=True, also_count=1000
    )
    with pytest.raises(flags.Error):
        fv(['x', '--mode=c'])


def test_actor_thread_and_tensorflow_thread_flags():
    cfg = cli.experiment_config(parsed())
    assert (cfg.num_actor_threads, cfg.envs_per_actor) == (2, 1)
    assert (cfg.intra_op_threads, cfg.inter_op_threads) == (0, 0)
    cfg = cli.experiment_config(
        parsed(
            '--num_actors=64',
            '--num_actor_threads=4',
            '--envs_per_actor=16',
            '--intra_op_threads=1',
            '--inter_op_threads=2',
        )
    )
    assert (cfg.num_actors, cfg.num_actor_threads, cfg.envs_per_actor) == (64, 4, 16)
    assert (cfg.intra_op_threads, cfg.inter_op_threads) == (1, 2)
    # Not given, the default is capped at --num_actors; given, it must fit.
    assert cli.experiment_config(parsed('--num_actors=1')).num_actor_threads == 1
    with pytest.raises(ValueError, match=r'num_actor_threads must be in 1..num_actors \(4\)'):
        cli.experiment_config(parsed('--num_actor_threads=5'))
    with pytest.raises(ValueError, match='num_actor_threads'):
        cli.experiment_config(parsed('--num_actor_threads=0'))
    with pytest.raises(ValueError, match='envs_per_actor'):
        cli.experiment_config(parsed('--envs_per_actor=0'))
    with pytest.raises(ValueError, match='intra_op_threads'):
        cli.experiment_config(parsed('--intra_op_threads=-1'))
    # Test mode does not use actor threads.
    assert cli.experiment_config(parsed('--mode=test', '--num_actor_threads=9')).mode == 'test'
