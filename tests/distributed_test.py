"""Tests for distributed: addresses and TF_CONFIG, and real learner/actor processes on localhost.

The process tests run `tests/distributed_roles.py` (synthetic unrolls, two small variables) in
separate Python processes on free ports. Each process kills itself after `--max_secs`, every
wait here is bounded, and a fixture kills whatever is left.
"""

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from scalable_agent2 import config, distributed
from tests import distributed_roles as roles

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Process start-up (importing TF) is slow on a loaded machine; waits are generous but bounded.
WAIT_SECS = 90.0


# --------------------------------------------------------------------------------------------
# Addresses and configuration (no processes).


def test_parse_address():
    assert distributed.parse_address('localhost:8000') == ('localhost', 8000)
    assert distributed.parse_address('10.0.0.2:1') == ('10.0.0.2', 1)
    assert distributed.parse_address('[::1]:8001') == ('::1', 8001)
    for bad in ('localhost', ':8000', 'host:', 'host:0', 'host:70000', 'host:x1'):
        with pytest.raises(ValueError, match='host:port'):
            distributed.parse_address(bad)


def test_default_addresses_are_the_originals():
    c = distributed.ClusterConfig().validate()
    assert c.learner_address == 'localhost:8000'
    assert [c.actor_address(i) for i in range(3)] == [
        'localhost:8001',
        'localhost:8002',
        'localhost:8003',
    ]
    c = distributed.ClusterConfig(learner_address='h0:9000', actor_addresses=('a:1', 'b:2'))
    assert [c.actor_address(i) for i in range(3)] == ['a:1', 'b:2', 'h0:9003']
    with pytest.raises(ValueError, match='task'):
        c.actor_address(-1)


@pytest.mark.parametrize(
    'field,value',
    [
        ('learner_address', 'nohost'),
        ('actor_addresses', ('a:1', 'b')),
        ('connect_timeout_secs', 0.0),
        ('publish_interval', 0),
        ('queue_capacity', 0),
        ('shutdown_grace_secs', -1.0),
    ],
)
def test_cluster_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        distributed.ClusterConfig(**{field: value}).validate()


def test_tf_config_overrides_flags_and_names_the_task():
    tf_config = json.dumps(
        {
            'cluster': {'learner': ['l:7000'], 'actor': ['x:7001', 'y:7002']},
            'task': {'type': 'actor', 'index': 1},
        }
    )
    c, job, task = config.cluster_config_from('localhost:8000', 'z:1', tf_config)
    assert (c.learner_address, c.actor_addresses, job, task) == (
        'l:7000',
        ('x:7001', 'y:7002'),
        'actor',
        1,
    )
    c, job, task = config.cluster_config_from('a:1', 'b:2, c:3', None, publish_interval=5)
    assert (c.learner_address, c.actor_addresses, c.publish_interval) == ('a:1', ('b:2', 'c:3'), 5)
    assert (job, task) == (None, None)


@pytest.mark.parametrize(
    'tf_config,match',
    [
        ('{not json', 'JSON'),
        ('[1]', 'object'),
        ('{"cluster": {"worker": ["a:1"]}}', 'worker'),
        ('{"cluster": {"learner": ["a:1", "b:2"]}}', 'exactly one learner'),
        ('{"task": {"type": "ps", "index": 0}}', 'task type'),
    ],
)
def test_bad_tf_config_is_a_clear_error(tf_config, match):
    with pytest.raises(ValueError, match=match):
        config.cluster_config_from('localhost:8000', '', tf_config)


def test_translate_errors():
    closed = distributed.translate_errors(tf.errors.CancelledError(None, None, 'closed'), 'h:1')
    assert isinstance(closed, distributed.QueueClosedError)
    lost = distributed.translate_errors(tf.errors.UnavailableError(None, None, 'gone'), 'h:1')
    assert isinstance(lost, distributed.LearnerLostError) and 'h:1' in str(lost)
    other = tf.errors.InvalidArgumentError(None, None, 'bad')
    assert distributed.translate_errors(other, 'h:1') is other


def test_unroll_spec_matches_an_unroll():
    spec = roles.spec()
    unroll = roles.synthetic_unroll(7, 'lvl')
    unroll = unroll._replace(agent_state=tf.nest.map_structure(lambda s: s[0], unroll.agent_state))
    for s, x in zip(tf.nest.flatten(spec), tf.nest.flatten(unroll), strict=True):
        x = np.asarray(x)
        assert s.shape.as_list() == list(x.shape)
        if s.dtype == tf.string:
            assert x.dtype.kind in ('U', 'O')
        else:
            assert s.dtype.as_numpy_dtype == x.dtype


def test_wait_for_port_gives_up_with_a_named_error():
    port = _free_port()
    start = time.monotonic()
    with pytest.raises(distributed.LearnerUnreachableError, match=f'localhost:{port}'):
        distributed.wait_for_port(f'localhost:{port}', timeout_secs=0.5)
    assert time.monotonic() - start < 5.0
    with socket.socket() as server:
        server.bind(('localhost', 0))
        server.listen()
        waited = distributed.wait_for_port(f'localhost:{server.getsockname()[1]}', 5.0)
    assert waited < 5.0


# --------------------------------------------------------------------------------------------
# Real processes.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


class _Cluster:
    """Starts role processes and reads their JSON-lines logs; kills everything at the end."""

    def __init__(self, tmp_path):
        self._tmp = tmp_path
        self._procs: list[subprocess.Popen] = []
        self.learner_port = _free_port()

    def start(self, name: str, *args: str, max_secs: float = 100.0) -> subprocess.Popen:
        """Starts `python -m tests.distributed_roles *args` (logging to `name`.jsonl)."""
        out = self._tmp / f'{name}.jsonl'
        argv = ['-m', 'tests.distributed_roles', *args, f'--out={out}', f'--max_secs={max_secs}']
        return self.start_command(name, argv)

    def start_command(self, name: str, argv: list[str]) -> subprocess.Popen:
        """Starts `python *argv` with stdout and stderr in `name`.err."""
        err = open(self._tmp / f'{name}.err', 'a')  # noqa: SIM115 (closed below, kept by the child)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=ROOT)
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=err, stderr=err)
        err.close()
        self._procs.append(proc)
        return proc

    def learner(self, *args: str, **kwargs) -> subprocess.Popen:
        return self.start('learner', 'learner', f'--port={self.learner_port}', *args, **kwargs)

    def actor(self, task: int, port: int, *args: str, name: str = '', **kwargs):
        return self.start(
            name or f'actor{task}',
            'actor',
            f'--task={task}',
            f'--port={port}',
            f'--learner_port={self.learner_port}',
            *args,
            **kwargs,
        )

    def events(self, name: str) -> list[dict]:
        path = self._tmp / f'{name}.jsonl'
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # A line being written.
                pass
        return events

    def stderr(self, name: str) -> str:
        path = self._tmp / f'{name}.err'
        return path.read_text() if path.exists() else ''

    def wait_for(self, what: str, predicate, timeout: float = WAIT_SECS):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f'timed out waiting for {what}')

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def cluster(tmp_path):
    c = _Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def _wait_exit(proc: subprocess.Popen, timeout: float = WAIT_SECS) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        command = ' '.join(map(str, proc.args[1:5]))
        raise AssertionError(f'{command} did not exit within {timeout}s') from None


def _unrolls(step_events: list[dict]) -> list[tuple[str, int]]:
    """(level, marker) of every unroll the learner trained on, in order."""
    out = []
    for e in step_events:
        for b, level in enumerate(e['levels']):
            out.append((level, int(e['rewards'][0][b])))
    return out


def _steps(cluster: _Cluster) -> list[dict]:
    return [e for e in cluster.events('learner') if e['event'] == 'step']


@pytest.mark.timeout(240)
def test_learner_and_two_actors_share_queue_and_parameters(cluster):
    steps = 6
    learner = cluster.learner(f'--steps={steps}', '--batch_size=2', '--grace_secs=5')
    actors = [
        cluster.actor(i, _free_port(), f'--marker_base={1000 * (i + 1)}', '--sleep_secs=0.05')
        for i in range(2)
    ]
    # Actors whose agent or unroll differ from the learner's get a clear error.
    mismatched = {
        kind: cluster.actor(2 + k, _free_port(), f'--mismatch={kind}', name=f'bad_{kind}')
        for k, kind in enumerate(('parameters', 'queue'))
    }
    assert _wait_exit(learner) == 0, cluster.stderr('learner')[-3000:]
    for kind, proc in mismatched.items():
        assert _wait_exit(proc, 30) == 4, cluster.stderr(f'bad_{kind}')[-3000:]
        (event,) = [e for e in cluster.events(f'bad_{kind}') if e['event'] == 'exit']
        assert event['reason'] == 'mismatch'
    assert 'another number of parameters' in cluster.events('bad_parameters')[-1]['message']
    assert 'another layout' in cluster.events('bad_queue')[-1]['message']
    # The learner closed the queue: both actors stop cleanly.
    for i, a in enumerate(actors):
        assert _wait_exit(a, 30) == 0, cluster.stderr(f'actor{i}')[-3000:]
        assert cluster.events(f'actor{i}')[-1]['reason'] == 'closed'

    events = _steps(cluster)
    assert [e['step'] for e in events] == list(range(1, steps + 1))
    t1 = roles.UNROLL_LENGTH + 1
    for e in events:
        # Each batch is time-major [T+1, B, ...] and every unroll arrives intact.
        assert e['frames_shape'] == [t1, 2, *roles.FRAME_SHAPE]
        assert e['logits_shape'] == [t1, 2, roles.NUM_ACTIONS]
        for b in range(2):
            marker = int(e['rewards'][0][b])
            expected = roles.synthetic_unroll(marker, e['levels'][b])
            assert [r[b] for r in e['rewards']] == expected.env_outputs.reward.tolist()
            assert [s[b] for s in e['episode_step']] == (
                expected.env_outputs.info.episode_step.tolist()
            )
            assert e['frame_first'][b] == marker % 256
            assert e['state'][0][b] == marker and e['state'][1][b] == -marker
            assert e['levels'][b] == f'actor{marker // 1000 - 1}'
        assert e['instructions'][0] == f'go {int(e["rewards"][0][0])} 0'

    # Unrolls from both actors, each actor's in its own order.
    unrolls = _unrolls(events)
    for i in range(2):
        markers = [m for level, m in unrolls if level == f'actor{i}']
        assert markers, f'no unroll from actor {i}'
        assert markers == list(range(1000 * (i + 1), 1000 * (i + 1) + len(markers)))

    # What the actors read equals the learner's variables at the version they read.
    for i in range(2):
        reads = [e for e in cluster.events(f'actor{i}') if e['event'] == 'params']
        versions = [r['version'] for r in reads]
        assert versions == sorted(versions) and versions[-1] > 0
        for r in reads:
            expected = [v.ravel().tolist() for v in roles.values_at(r['version'])]
            assert r['values'] == expected


@pytest.mark.timeout(300)
def test_killed_actor_does_not_stall_the_learner_and_rejoins(cluster):
    learner = cluster.learner('--steps=100000', '--batch_size=1', max_secs=150)
    port0 = _free_port()
    actor0 = cluster.actor(0, port0, '--marker_base=1000', '--sleep_secs=0.05')
    cluster.actor(1, _free_port(), '--marker_base=2000', '--sleep_secs=0.05')

    def count(level, minimum=0):
        return sum(1 for lv, m in _unrolls(_steps(cluster)) if lv == level and m >= minimum)

    cluster.wait_for(
        'unrolls from both actors', lambda: count('actor0') >= 3 and count('actor1') >= 3
    )
    # Killed while it is most likely blocked in an enqueue (capacity 1).
    actor0.send_signal(signal.SIGKILL)
    actor0.wait(timeout=10)
    after_kill = count('actor1')
    cluster.wait_for(
        'the learner to go on with actor 1', lambda: count('actor1') >= after_kill + 10
    )
    assert learner.poll() is None

    # The same command (same task and port) rejoins; its new unrolls reach the learner.
    cluster.actor(0, port0, '--marker_base=5000', '--sleep_secs=0.05', name='actor0_again')
    cluster.wait_for('the restarted actor', lambda: count('actor0', minimum=5000) >= 3)
    assert learner.poll() is None


@pytest.mark.timeout(240)
def test_actor_waits_for_a_late_learner_and_exits_when_it_is_lost(cluster):
    actor = cluster.actor(0, _free_port(), '--marker_base=1000', '--connect_timeout_secs=120')
    cluster.wait_for(
        'the waiting log line', lambda: 'Waiting for the learner' in cluster.stderr('actor0')
    )
    assert actor.poll() is None
    learner = cluster.learner('--steps=100000', '--batch_size=1', max_secs=150)
    cluster.wait_for('the late join', lambda: len(_steps(cluster)) >= 3)

    learner.send_signal(signal.SIGKILL)
    learner.wait(timeout=10)
    assert _wait_exit(actor, 60) == distributed.EXIT_LEARNER_LOST
    assert 'LearnerLostError: lost the learner at localhost:' in cluster.stderr('actor0')


@pytest.mark.timeout(120)
def test_unreachable_learner_is_a_clear_error_within_the_timeout(cluster):
    actor = cluster.actor(0, _free_port(), '--connect_timeout_secs=3')
    assert _wait_exit(actor) == 3
    (event,) = [e for e in cluster.events('actor0') if e['event'] == 'exit']
    assert event['reason'] == 'unreachable'
    assert f'localhost:{cluster.learner_port} unreachable after 3.' in event['message']
    assert 'connect_timeout_secs=3' in event['message']


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_cartpole_learner_and_two_actors_train_to_the_frame_budget(cluster, tmp_path):
    """distributed_train end to end: frames come only from the actors' unrolls (two
    environments per actor process)."""
    logdir = str(tmp_path / 'logdir')
    batch_size, total = 4, 1200
    common = [f'--logdir={logdir}', f'--batch_size={batch_size}', '--grace_secs=5']
    common += ['--envs_per_actor=2']
    learner = cluster.start(
        'learner',
        'train_learner',
        f'--port={cluster.learner_port}',
        f'--total_frames={total}',
        *common,
        max_secs=300,
    )
    actors = [
        cluster.start(
            f'actor{i}',
            'train_actor',
            f'--task={i}',
            f'--port={_free_port()}',
            f'--learner_port={cluster.learner_port}',
            *common,
            max_secs=300,
        )
        for i in range(2)
    ]
    assert _wait_exit(learner, 300) == 0, cluster.stderr('learner')[-3000:]
    for i, a in enumerate(actors):
        assert _wait_exit(a, 60) == 0, cluster.stderr(f'actor{i}')[-3000:]

    (result,) = [e for e in cluster.events('learner') if e['event'] == 'result']
    unroll_frames = batch_size * roles.UNROLL_LENGTH * 5  # One step: B unrolls of T frames.
    assert result['num_environment_frames'] == result['learner_steps'] * unroll_frames
    assert result['num_environment_frames'] >= total
    sent = []
    for i in range(2):
        m = re.search(r'the learner finished after (\d+) unrolls', cluster.stderr(f'actor{i}'))
        assert m, cluster.stderr(f'actor{i}')[-2000:]
        sent.append(int(m.group(1)))
    # Every trained unroll was sent by an actor; at most a queue's and a prefetch's worth more.
    assert result['learner_steps'] * batch_size <= sum(sent)
    assert sum(sent) <= result['learner_steps'] * batch_size + 1 + 2 * batch_size + 2
    assert min(sent) > 0
    assert os.path.exists(result['checkpoint'] + '.index')


def test_actor_tasks_get_suite_levels_round_robin():
    from scalable_agent2 import distributed_train, environments

    levels = environments.expand_level_names('dmlab30', is_test=False)
    assert len(levels) == 30
    assert [distributed_train.level_for_task('dmlab30', i) for i in (0, 1, 29, 30, 61)] == [
        levels[0],
        levels[1],
        levels[29],
        levels[0],
        levels[1],
    ]
    assert distributed_train.level_for_task('gym/CartPole-v1', 7) == 'gym/CartPole-v1'


def test_actor_tasks_host_consecutive_environment_indices():
    from scalable_agent2 import distributed_train

    cfg = config.ExperimentConfig(task=2, job_name='actor', envs_per_actor=3)
    assert distributed_train.env_indices(cfg) == [6, 7, 8]
    assert [cfg.env_seed(i) for i in distributed_train.env_indices(cfg)] == [7, 8, 9]
    one = config.ExperimentConfig(task=5, job_name='actor')
    assert distributed_train.env_indices(one) == [5]  # As the original: task i, seed i + 1.


def test_experiment_config_checks_the_distributed_fields():

    with pytest.raises(ValueError, match='learner job has one task'):
        config.ExperimentConfig(task=1, job_name='learner').validate()
    with pytest.raises(ValueError, match='learner_address'):
        config.ExperimentConfig(cluster=config.ClusterConfig(learner_address='x')).validate()
    config.ExperimentConfig(task=3, job_name='actor').validate()


def test_supervisor_restarts_an_actor_only_while_the_learner_is_lost(tmp_path):
    script = os.path.join(ROOT, 'experiments', 'supervise_actor.sh')
    counter = tmp_path / 'runs'
    # A fake actor: exits with the statuses given, one per run, counting its runs.
    fake = tmp_path / 'fake_actor.sh'
    fake.write_text(
        'n=$(($(cat "$1" 2>/dev/null || echo 0) + 1)); echo $n > "$1"; shift\neval "exit \\${$n}"\n'
    )
    env = dict(os.environ, RESTART_DELAY_SECS='0')

    def supervise(*statuses):
        counter.unlink(missing_ok=True)
        proc = subprocess.run(
            ['bash', script, 'bash', str(fake), str(counter), *map(str, statuses)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return proc.returncode, int(counter.read_text()), proc.stderr

    code, runs, err = supervise(distributed.EXIT_LEARNER_LOST, distributed.EXIT_LEARNER_LOST, 0)
    assert (code, runs) == (0, 3) and err.count('learner lost; restarting') == 2
    code, runs, err = supervise(distributed.EXIT_LEARNER_LOST, 2, 0)
    assert (code, runs) == (2, 2) and 'status 2; not restarting' in err
    assert supervise(0)[:2] == (0, 1)


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_restarted_learner_resumes_and_supervised_actors_rejoin(cluster, tmp_path):
    """Learner killed mid-run: actors exit 75, the supervisor restarts them, they rejoin the
    learner restarted from its checkpoint, and everything ends cleanly at the budget."""
    logdir = str(tmp_path / 'logdir')
    common = [f'--logdir={logdir}', '--batch_size=4', '--grace_secs=5']
    learner_args = [
        'train_learner',
        f'--port={cluster.learner_port}',
        '--total_frames=3000',
        '--save_checkpoint_secs=1',
        *common,
    ]
    supervisor = os.path.join(ROOT, 'experiments', 'supervise_actor.sh')
    actors = []
    for i in range(2):
        out = tmp_path / f'actor{i}.jsonl'
        err = open(tmp_path / f'actor{i}.err', 'a')  # noqa: SIM115 (kept by the child)
        actors.append(
            subprocess.Popen(
                [
                    'bash',
                    supervisor,
                    sys.executable,
                    '-m',
                    'tests.distributed_roles',
                    'train_actor',
                    f'--task={i}',
                    f'--port={_free_port()}',
                    f'--learner_port={cluster.learner_port}',
                    '--connect_timeout_secs=120',
                    f'--out={out}',
                    '--max_secs=400',
                    *common,
                ],
                cwd=ROOT,
                env=dict(
                    os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=ROOT, RESTART_DELAY_SECS='1'
                ),
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        )
        err.close()
    try:
        first = cluster.start('learner', *learner_args, max_secs=300)
        cluster.wait_for(
            'a checkpoint', lambda: glob.glob(os.path.join(logdir, 'ckpt-*.index')), 200
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        cluster.wait_for(
            'both actors to see the lost learner',
            lambda: all(
                'learner lost; restarting' in cluster.stderr(f'actor{i}') for i in range(2)
            ),
            60,
        )
        second = cluster.start('learner_again', *learner_args, max_secs=300)
        assert _wait_exit(second, 300) == 0, cluster.stderr('learner_again')[-3000:]
        assert 'Resumed from checkpoint' in cluster.stderr('learner_again')
        (result,) = [e for e in cluster.events('learner_again') if e['event'] == 'result']
        assert result['num_environment_frames'] >= 3000 and result['resumed_from'] > 0
        for i, a in enumerate(actors):
            assert _wait_exit(a, 60) == 0, cluster.stderr(f'actor{i}')[-3000:]
            assert [e['code'] for e in cluster.events(f'actor{i}') if e['event'] == 'exit'] == [
                distributed.EXIT_LEARNER_LOST,
                0,
            ]
    finally:
        for a in actors:
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# The command line.


def _cli_config(*args: str):
    from absl import flags

    from scalable_agent2 import cli

    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(['experiment.py', *args])
    return cli.experiment_config(fv)


def test_cli_builds_the_cluster_from_flags_and_tf_config(monkeypatch):
    monkeypatch.delenv('TF_CONFIG', raising=False)
    cfg = _cli_config(
        '--job_name=actor', '--task=2', '--actor_addresses=a:1,b:2', '--publish_interval=3'
    )
    assert (cfg.job_name, cfg.task) == ('actor', 2)
    assert cfg.cluster.learner_address == 'localhost:8000'
    assert cfg.cluster.actor_addresses == ('a:1', 'b:2')
    assert cfg.cluster.publish_interval == 3
    assert cfg.cluster.actor_address(2) == 'localhost:8003'

    monkeypatch.setenv(
        'TF_CONFIG',
        json.dumps({'cluster': {'learner': ['l:9000']}, 'task': {'type': 'actor', 'index': 4}}),
    )
    cfg = _cli_config()
    assert (cfg.job_name, cfg.task, cfg.cluster.learner_address) == ('actor', 4, 'l:9000')
    assert cfg.cluster.actor_address(4) == 'l:9005'
    with pytest.raises(ValueError, match='disagree with TF_CONFIG'):
        _cli_config('--job_name=learner', '--task=0')


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_cli_learner_and_two_actors_train_cartpole(cluster, tmp_path):
    """`experiments/experiment.py --job_name=... --task=...` end to end on localhost."""
    logdir = tmp_path / 'logdir'
    experiment = os.path.join(ROOT, 'experiments', 'experiment.py')
    actor_ports = [_free_port(), _free_port()]
    common = [
        '--level_name=gym/CartPole-v1',
        '--network=mlp',
        '--num_action_repeats=1',
        '--unroll_length=15',
        '--batch_size=4',
        '--nouse_xla',
        '--log_interval_secs=1',
        f'--logdir={logdir}',
        f'--learner_address=localhost:{cluster.learner_port}',
        f'--actor_addresses=localhost:{actor_ports[0]},localhost:{actor_ports[1]}',
        '--shutdown_grace_secs=5',
        '--connect_timeout_secs=120',
    ]
    learner = cluster.start_command(
        'learner',
        [experiment, '--job_name=learner', '--task=0', '--total_environment_frames=1200', *common],
    )
    actors = [
        cluster.start_command(f'actor{i}', [experiment, '--job_name=actor', f'--task={i}', *common])
        for i in range(2)
    ]
    assert _wait_exit(learner, 300) == 0, cluster.stderr('learner')[-3000:]
    for i, a in enumerate(actors):
        assert _wait_exit(a, 60) == 0, cluster.stderr(f'actor{i}')[-3000:]
        assert 'the learner finished after' in cluster.stderr(f'actor{i}')
    # 20 learner steps of 4 unrolls x 15 frames, all from the actors.
    assert os.path.exists(logdir / 'ckpt-1200.index')
    assert 'Training stopped at 1200 environment frames (20 learner steps)' in cluster.stderr(
        'learner'
    )
    # A clean shutdown reads cleanly: no errors from TF's eager executor or remote contexts.
    for job in ('learner', 'actor0', 'actor1'):
        text = cluster.stderr(job)
        assert 'EagerExecutor' not in text and 'Traceback' not in text, text[-3000:]
        assert 'cuInit' not in text, text[:2000]


def test_cli_actor_without_a_learner_is_a_one_line_error(tmp_path):
    port = _free_port()
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, 'experiments', 'experiment.py'),
            '--job_name=actor',
            '--task=0',
            f'--learner_address=localhost:{port}',
            '--connect_timeout_secs=1',
            '--level_name=gym/CartPole-v1',
            '--network=mlp',
            f'--logdir={tmp_path}',
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert f'localhost:{port} unreachable after 1.' in errors[0]
    assert 'Traceback' not in proc.stderr


# --------------------------------------------------------------------------------------------
# Something other than a TF server at the learner address.


class _FakeService:
    """A loopback TCP service that closes at once, sends garbage, or says nothing."""

    def __init__(self, mode: str):
        import threading

        self._mode = mode
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(('localhost', 0))
        self._server.listen(8)
        self.address = f'localhost:{self._server.getsockname()[1]}'
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            if self._mode == 'garbage':
                conn.sendall(b'220 smtp.example ESMTP ready\r\n')
                conn.close()
            elif self._mode == 'close':
                conn.close()
            else:
                self._held.append(conn)

    def close(self):
        self._server.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def http_server():
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(('localhost', 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f'localhost:{server.server_address[1]}'
    finally:
        server.shutdown()
        server.server_close()


def test_http2_greeting_tells_other_services_apart(http_server):
    verdict, detail = distributed.http2_greeting(http_server)
    assert verdict == 'other' and re.search('HTTP|HTML', detail), detail
    for mode, expected in [('garbage', 'other'), ('close', 'closed'), ('silent', 'silent')]:
        service = _FakeService(mode)
        try:
            verdict, detail = distributed.http2_greeting(service.address, timeout_secs=1.0)
        finally:
            service.close()
        assert verdict == expected, (mode, verdict, detail)
    assert distributed.http2_greeting(f'localhost:{_free_port()}')[0] == 'refused'


def test_actor_names_the_learner_address_when_another_service_answers(http_server):
    cluster = config.ClusterConfig(
        learner_address=http_server,
        actor_addresses=(f'localhost:{_free_port()}',),
        connect_timeout_secs=60,
    )
    start = time.monotonic()
    with pytest.raises(distributed.NotATensorFlowServerError) as info:
        distributed.connect_actor(cluster, 0)  # Fails before TF connects to anything.
    message = str(info.value)
    assert f'learner address {http_server} answers, but not as a TensorFlow server' in message
    assert '\n' not in message and re.search('HTTP|HTML', message)
    assert time.monotonic() - start < 10
    service = _FakeService('close')
    try:
        with pytest.raises(distributed.NotATensorFlowServerError, match='without a word'):
            distributed.check_learner_speaks_grpc(service.address, timeout_secs=30)
    finally:
        service.close()


def test_cli_actor_facing_a_web_server_is_one_line_naming_the_learner(http_server, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, 'experiments', 'experiment.py'),
            '--job_name=actor',
            '--task=0',
            f'--learner_address={http_server}',
            f'--actor_addresses=localhost:{_free_port()}',
            '--connect_timeout_secs=600',
            '--level_name=gym/CartPole-v1',
            '--network=mlp',
            f'--logdir={tmp_path}',
        ],
        capture_output=True,
        text=True,
        timeout=180,  # Far less than connect_timeout_secs: the greeting fails at once.
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=ROOT),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert f'learner address {http_server} answers, but not as a TensorFlow server' in errors[0]
    assert 'Traceback' not in proc.stderr and 'default session config' not in proc.stderr
