"""End-to-end tests of single-machine training through the CLI, and the summaries helpers.

The CLI runs in subprocesses (`experiments/experiment.py`), as a user would run it. One short
CartPole training run is shared by several tests (checkpoint, summaries, test mode, a learning
check, resume).
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from scalable_agent2 import builder, checkpoints, config, learner, networks, summaries
from scalable_agent2.environments.base import ObservationSpec
from scalable_agent2.scoring import dmlab30
from scalable_agent2.types import ActorOutput, AgentOutput, StepOutput, StepOutputInfo
from tests import fakes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, 'experiments', 'experiment.py')

LEARNING_RATE = 0.004

# CartPole settings that learn quickly with the MLP agent (frames = agent steps).
CARTPOLE = [
    '--level_name=gym/CartPole-v1',
    '--network=mlp',
    '--num_action_repeats=1',
    '--unroll_length=20',
    '--batch_size=8',
    '--num_actors=8',
    # One environment per thread: each thread runs its single-environment actors in turn, so
    # fewer threads would step fewer environments at once.
    '--num_actor_threads=8',
    f'--learning_rate={LEARNING_RATE}',
    '--entropy_cost=0.01',
    '--nouse_xla',
    '--log_interval_secs=1',
    '--save_summaries_secs=1',
]
FIRST_RUN_FRAMES = 24_000  # 150 learner steps of 8 x 20 frames.
RANDOM_CARTPOLE_RETURN = 22.0  # Mean return of a uniformly random policy.
# The Pong preset's whole budget. Its three seeds scored +20.2, +19.4 and +18.7 in test mode at
# 20M frames (RESULTS.md); earlier budgets spread too widely across seeds to assert much (at 15M
# their training returns were +18.1, +7.6 and +1.0), so the test runs the full preset, with a
# margin below the lowest seed of more than twice the 1.5-point spread at 20M.
PONG_FRAMES = 20_000_000
PONG_MIN_TEST_RETURN = 15.0


def run_cli(args, timeout=300):
    return subprocess.run(
        [sys.executable, EXPERIMENT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def check_ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]


def checkpoint_numbers(logdir):
    return sorted(
        int(m.group(1))
        for p in glob.glob(os.path.join(logdir, 'ckpt-*.index'))
        if (m := re.search(r'ckpt-(\d+)\.index$', p))
    )


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp('cartpole'))
    proc = run_cli(
        [*CARTPOLE, f'--logdir={logdir}', f'--total_environment_frames={FIRST_RUN_FRAMES}']
    )
    check_ok(proc)
    return logdir, proc


def test_training_writes_checkpoint_summaries_and_config(trained):
    logdir, proc = trained
    assert checkpoint_numbers(logdir) == [FIRST_RUN_FRAMES]  # Saved at the end.
    assert 'Resumed' not in proc.stderr
    assert re.search(r'frames \d+/24000 .* frames/s, learner steps \d+, queue \d+/1', proc.stderr)
    tags = fakes.scalar_points(logdir)
    for tag in (
        'gym/CartPole-v1/episode_return',
        'gym/CartPole-v1/episode_frames',
        'total_loss',
        'policy_gradient_loss',
        'baseline_loss',
        'entropy_loss',
        'learning_rate',
        'frames_per_second',
    ):
        assert tag in tags, sorted(tags)
    # CartPole pays 1 per step and has no action repeats: return == frames, episode by episode.
    returns = [v for _, v in tags['gym/CartPole-v1/episode_return']]
    frames = [v for _, v in tags['gym/CartPole-v1/episode_frames']]
    assert returns == frames and len(returns) > 50
    # The learning rate decays linearly with the frame counter; the summary at frame count
    # `step` (after the update) shows the rate that update used, from 8 x 20 frames before.
    for step, lr in tags['learning_rate']:
        assert lr == pytest.approx(
            LEARNING_RATE * (1 - (step - 160) / FIRST_RUN_FRAMES), rel=1e-3, abs=1e-6
        )
    with open(os.path.join(logdir, 'config.json')) as f:
        cfg = json.load(f)
    assert cfg['learner']['batch_size'] == 8 and cfg['agent']['torso'] == 'mlp'
    assert cfg['agent']['num_actions'] == 2
    with open(os.path.join(logdir, 'agent_spec.json')) as f:
        assert json.load(f)['frame_shape'] == [4]


def test_test_mode_and_learning_check(trained):
    """A short run learns: mean test return well above a random policy's (about 22)."""
    logdir, _ = trained
    proc = run_cli([*CARTPOLE, f'--logdir={logdir}', '--mode=test', '--test_num_episodes=8'])
    check_ok(proc)
    with open(os.path.join(logdir, 'test_results.json')) as f:
        results = json.load(f)
    assert results['num_environment_frames'] == FIRST_RUN_FRAMES
    level = results['levels']['gym/CartPole-v1']
    assert len(level['returns']) == 8
    assert level['mean_return'] == pytest.approx(np.mean(level['returns']))
    assert level['mean_return'] >= 2 * RANDOM_CARTPOLE_RETURN, level


def test_second_run_resumes_from_the_first(trained, tmp_path):
    logdir = str(tmp_path / 'resumed')
    shutil.copytree(trained[0], logdir)
    total = FIRST_RUN_FRAMES + 1600
    proc = run_cli([*CARTPOLE, f'--logdir={logdir}', f'--total_environment_frames={total}'])
    check_ok(proc)
    assert f'at {FIRST_RUN_FRAMES} environment frames' in proc.stderr
    assert 'Resumed from checkpoint' in proc.stderr
    # 10 more learner steps of 8 x 20 frames.
    assert checkpoint_numbers(logdir)[-1] == total
    # The step count goes on from the checkpoint's, as the progress log's does.
    stopped = f'Training stopped at {total} environment frames ({total // 160} learner steps, '
    assert stopped + '10 since the resume)' in proc.stderr


def test_incompatible_checkpoint_is_one_line(trained, tmp_path):
    logdir = str(tmp_path / 'other')
    shutil.copytree(trained[0], logdir)
    args = [a for a in CARTPOLE if not a.startswith('--level_name')]
    proc = run_cli([*args, f'--logdir={logdir}', '--level_name=gym/Acrobot-v1', '--mode=test'])
    assert proc.returncode == 2
    assert 'Traceback' not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'different agent' in errors[0] and 'num_actions=2' in errors[0]


def test_sigint_saves_a_checkpoint_and_exits_zero(tmp_path):
    logdir = str(tmp_path / 'sigint')
    log_path = tmp_path / 'stderr.txt'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(
            [sys.executable, EXPERIMENT, *CARTPOLE, f'--logdir={logdir}'],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 240
            while 'learner steps' not in log_path.read_text():
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, 'training did not start in time'
                time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 0, log_path.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log_path.read_text()
    assert 'Received SIGINT' in text
    stopped = re.search(r'Training stopped at (\d+) environment frames', text)
    assert stopped and int(stopped.group(1)) > 0
    assert checkpoint_numbers(logdir) == [int(stopped.group(1))]


def test_atari_pong_shallow_trains_a_few_steps(tmp_path):
    # 3 learner steps of 2 unrolls x 10 agent steps x 4 frames.
    proc = run_cli(
        [
            '--level_name=atari/Pong',
            '--network=shallow',
            '--unroll_length=10',
            '--batch_size=2',
            '--num_actors=2',
            '--total_environment_frames=240',
            '--nouse_xla',
            f'--logdir={tmp_path}',
        ]
    )
    check_ok(proc)
    assert 'Training stopped at 240 environment frames (3 learner steps)' in proc.stderr
    assert checkpoint_numbers(str(tmp_path)) == [240]


# ------------------------------------------------------------------------------------------
# Summaries helpers (in process).


def _batch(done, returns, steps, levels):
    done = np.asarray(done)
    shape = done.shape
    return ActorOutput(
        level_name=np.array(levels, dtype=object),
        agent_state=(),
        env_outputs=StepOutput(
            reward=np.zeros(shape, np.float32),
            info=StepOutputInfo(np.asarray(returns, np.float32), np.asarray(steps, np.int32)),
            done=done,
            observation=(np.zeros(shape, np.float32), np.full(shape, '', dtype=object)),
        ),
        agent_outputs=(),
    )


def test_episodes_from_batch_skips_the_first_entry():
    done = [[True, True], [False, True], [True, False]]  # [T+1=3, B=2]
    returns = [[9, 9], [1, 2], [3, 4]]
    steps = [[9, 9], [5, 6], [7, 8]]
    episodes = summaries.episodes_from_batch(_batch(done, returns, steps, ['a', b'b']), 4)
    # Reference: loop over t >= 1 and b in time-major order.
    expected = [
        summaries.Episode(['a', 'b'][b], float(returns[t][b]), steps[t][b] * 4)
        for t in range(1, 3)
        for b in range(2)
        if done[t][b]
    ]
    assert (
        episodes
        == expected
        == [
            summaries.Episode('b', 2.0, 24),
            summaries.Episode('a', 3.0, 28),
        ]
    )


def test_dmlab30_scores_are_written_once_every_level_has_a_return(tmp_path):
    levels = list(dmlab30.TRAIN_LEVELS)
    writer = summaries.TrainingSummaries(str(tmp_path), 'dmlab30', levels)
    rng = np.random.default_rng(0)
    returns = {level: float(rng.uniform(0, 50)) for level in levels}
    writer.add_episodes([summaries.Episode(lv, returns[lv], 100) for lv in levels[:-1]], step=1)
    writer.add_episodes([summaries.Episode(levels[-1], returns[levels[-1]], 100)], step=2)
    writer.close()
    tags = fakes.scalar_points(tmp_path)
    assert len(tags['dmlab30/training_no_cap']) == 1
    step, no_cap = tags['dmlab30/training_no_cap'][0]
    assert step == 2
    # Reference: the HNS formula on the table's test-level random/human scores.
    hns = [
        100
        * (returns[lv] - dmlab30.RANDOM_SCORES[dmlab30.LEVEL_MAPPING[lv]])
        / (
            dmlab30.HUMAN_SCORES[dmlab30.LEVEL_MAPPING[lv]]
            - dmlab30.RANDOM_SCORES[dmlab30.LEVEL_MAPPING[lv]]
        )
        for lv in levels
    ]
    assert no_cap == pytest.approx(np.mean(hns), rel=1e-5)
    assert tags['dmlab30/training_cap_100'][0][1] == pytest.approx(
        np.mean(np.minimum(hns, 100)), rel=1e-5
    )
    assert len(tags[f'{levels[0]}/episode_return']) == 1


def test_resume_restores_parameters_optimizer_slots_and_frames_exactly(tmp_path):
    """A learner restored from a checkpoint makes exactly the same next update as the original."""
    spec = ObservationSpec((4,), 'float32', False)

    def make():
        agent = networks.ImpalaAgent(config.AgentConfig(num_actions=2, torso='mlp', core_size=8))
        builder.create_agent_variables(agent, spec)
        lc = config.LearnerConfig(
            batch_size=2,
            unroll_length=3,
            num_action_repeats=1,
            use_xla=False,
            total_environment_frames=1000,
        )
        return agent, learner.Learner(agent, lc)

    rng = np.random.default_rng(0)
    t1, b = 4, 2
    base = _batch(rng.random((t1, b)) < 0.3, np.zeros((t1, b)), np.zeros((t1, b)), ['a', 'b'])
    agent1, learner1 = make()
    batch = base._replace(
        agent_state=tf.nest.map_structure(np.asarray, agent1.initial_state(b)),
        env_outputs=base.env_outputs._replace(
            reward=rng.normal(size=(t1, b)).astype(np.float32),
            observation=(
                rng.normal(size=(t1, b, 4)).astype(np.float32),
                base.env_outputs.observation[1],
            ),
        ),
        agent_outputs=AgentOutput(
            rng.integers(0, 2, (t1, b)).astype(np.int32),
            rng.normal(size=(t1, b, 2)).astype(np.float32),
            np.zeros((t1, b), np.float32),
        ),
    )
    for _ in range(3):
        learner1.step(batch)
    checkpoints.Checkpointer(str(tmp_path), learner1.checkpoint_state, {'k': 1}).save(18)
    agent2, learner2 = make()
    restored = checkpoints.Checkpointer(str(tmp_path), learner2.checkpoint_state, {'k': 1})
    assert restored.restore_latest().endswith('ckpt-18')
    assert learner2.num_environment_frames.numpy() == 18 == learner1.num_environment_frames.numpy()
    learner1.step(batch)
    learner2.step(batch)  # Creates the optimizer slots; deferred restoration fills them.
    for x, y in zip(learner1.optimizer.ms, learner2.optimizer.ms, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    for x, y in zip(agent1.trainable_variables, agent2.trainable_variables, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


@pytest.mark.slow
def test_cartpole_learns_to_a_mean_test_return_of_195(tmp_path):
    """The classic 'solved' bar; about 3-5 minutes on 2 shared cores."""
    args = [a for a in CARTPOLE if not a.startswith('--learning_rate')]
    args += ['--learning_rate=0.002', f'--logdir={tmp_path}']
    check_ok(run_cli([*args, '--total_environment_frames=200000', '--log_interval_secs=10'], 600))
    proc = run_cli([*args, '--mode=test', '--test_num_episodes=20'])
    check_ok(proc)
    with open(os.path.join(tmp_path, 'test_results.json')) as f:
        level = json.load(f)['levels']['gym/CartPole-v1']
    assert len(level['returns']) == 20
    assert level['mean_return'] >= 195, level


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_pong_preset_learns_from_pixels(tmp_path):
    """A learning check on pixels: the Pong preset's run of PONG_FRAMES frames solves Pong.

    About an hour alone on 2 cores."""
    args = ['--flagfile=experiments/configs/pong.flags', f'--logdir={tmp_path}']
    check_ok(
        run_cli(
            [*args, f'--total_environment_frames={PONG_FRAMES}', '--log_interval_secs=60'],
            timeout=3 * 3600,
        )
    )
    check_ok(run_cli([*args, '--mode=test', '--test_num_episodes=10'], timeout=1800))
    with open(os.path.join(tmp_path, 'test_results.json')) as f:
        level = json.load(f)['levels']['atari/Pong']
    assert len(level['returns']) == 10
    assert level['mean_return'] >= PONG_MIN_TEST_RETURN, level
