"""Tests for runtime: the learner loop over synthetic sources with hooks, set-up and test-mode
restore, the policy stepper, actor threads, worker threads and TensorFlow's thread pools."""

import dataclasses
import glob
import json
import logging as std_logging
import os
import queue
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from scalable_agent2 import checkpoints, config, learner, networks, runtime
from scalable_agent2.environments.base import ObservationSpec
from scalable_agent2.types import ActorOutput, AgentOutput, StepOutput, StepOutputInfo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CARTPOLE_SPEC = runtime.EnvironmentSpec(ObservationSpec((4,), 'float32', False), 2)


# --------------------------------------------------------------------------------------------
# The learner loop.


class FakeLearner:
    """Adds `frames_per_step` per step; step `fail_at` is not applied (a diverged step)."""

    def __init__(self, frames=0, frames_per_step=100, fail_at=None):
        self.num_environment_frames = tf.Variable(frames, dtype=tf.int64)
        self.frames_per_step = frames_per_step
        self.fail_at = fail_at
        self.batches = []

    def step(self, batch):
        self.batches.append(batch)
        applied = len(self.batches) != self.fail_at
        if applied:
            self.num_environment_frames.assign_add(self.frames_per_step)
        return {
            'total_loss': 1.0 if applied else float('nan'),
            'grad_norm': 2.0 if applied else float('inf'),
            'update_applied': applied,
        }


class RecordingHook(runtime.Hook):
    def __init__(self, log, name):
        self.log, self.name = log, name

    def begin(self, frames):
        self.log.append((self.name, 'begin', frames))

    def after_step(self, step):
        self.log.append((self.name, step.step, step.frames, step.batch))


class FakeCheckpointer:
    def __init__(self):
        self.saved = []

    def save(self, frames):
        self.saved.append(frames)
        return f'ckpt-{frames}'


def test_learner_loop_pulls_from_a_callable_source_and_calls_hooks_in_order():
    log = []
    batches = iter(range(100))
    the_learner = FakeLearner(frames=200)
    hooks = [RecordingHook(log, 'a'), RecordingHook(log, 'b'), runtime.FrameBudget(700)]
    steps = runtime.learner_loop(the_learner, lambda stop: next(batches), hooks, threading.Event())
    assert steps == 5 and the_learner.batches == [0, 1, 2, 3, 4]
    assert log[:2] == [('a', 'begin', 200), ('b', 'begin', 200)]
    assert log[2:6] == [('a', 1, 300, 0), ('b', 1, 300, 0), ('a', 2, 400, 1), ('b', 2, 400, 1)]
    assert log[-1] == ('b', 5, 700, 4)


def test_learner_loop_ends_at_once_at_the_budget_on_stop_or_without_batches():
    # A run restored at its budget takes no step.
    assert (
        runtime.learner_loop(
            FakeLearner(700), lambda s: 0, [runtime.FrameBudget(700)], None or threading.Event()
        )
        == 0
    )
    stop = threading.Event()
    stop.set()
    assert runtime.learner_loop(FakeLearner(), lambda s: 0, [], stop) == 0
    # A source that runs dry (None) ends the loop; an object with get(stop) is a source too.
    source = iter([1, 2, None, 3])
    assert runtime.learner_loop(FakeLearner(), lambda s: next(source), [], threading.Event()) == 2
    staged = runtime.StagedBatch()
    stop = threading.Event()
    producer = threading.Thread(
        target=runtime.prefetch_loop, args=(iter(['x', 'y', None]).__next__, staged, stop)
    )
    producer.start()
    the_learner = FakeLearner()
    steps = runtime.learner_loop(the_learner, staged, [runtime.FrameBudget(200)], stop)
    producer.join(timeout=5)
    assert steps == 2 and the_learner.batches == ['x', 'y']


def test_divergence_guard_saves_the_last_good_parameters_and_raises():
    ckpt = FakeCheckpointer()
    log = []
    hooks = [runtime.DivergenceGuard(ckpt), RecordingHook(log, 'after')]
    with pytest.raises(learner.DivergenceError, match='learner step 3 \\(200 frames; loss nan'):
        runtime.learner_loop(FakeLearner(fail_at=3), lambda s: 'b', hooks, threading.Event())
    assert ckpt.saved == [200]
    assert [entry[1] for entry in log if entry[1] != 'begin'] == [1, 2]  # Never saw step 3.


class RaisingLearner(FakeLearner):
    """Step `raise_at` raises (after `poison` of the variable, if given)."""

    def __init__(self, raise_at, poison=None):
        super().__init__()
        self.raise_at = raise_at
        self.poison = poison
        self.weights = tf.Variable([1.0, 2.0])

    def step(self, batch):
        if len(self.batches) + 1 == self.raise_at:
            if self.poison is not None:
                self.weights.assign([self.poison, 2.0])
            raise tf.errors.InternalError(None, None, 'kernel exploded')
        return super().step(batch)


def test_a_failing_learner_step_saves_the_last_good_parameters_and_reraises(caplog):
    ckpt = FakeCheckpointer()
    the_learner = RaisingLearner(raise_at=3)
    hooks = [runtime.SaveOnError(ckpt, [the_learner.weights]), runtime.DivergenceGuard(ckpt)]
    with pytest.raises(tf.errors.InternalError, match='kernel exploded'):
        runtime.learner_loop(the_learner, lambda s: 'b', hooks, threading.Event())
    assert ckpt.saved == [200]
    assert any('saved ckpt-200 first' in r.getMessage() for r in caplog.records)

    # Non-finite parameters are never saved; a diverged step was saved by its guard only.
    ckpt = FakeCheckpointer()
    poisoned = RaisingLearner(raise_at=2, poison=float('nan'))
    hooks = [runtime.SaveOnError(ckpt, [poisoned.weights])]
    with pytest.raises(tf.errors.InternalError):
        runtime.learner_loop(poisoned, lambda s: 'b', hooks, threading.Event())
    assert ckpt.saved == []
    ckpt = FakeCheckpointer()
    hooks = [runtime.SaveOnError(ckpt, []), runtime.DivergenceGuard(ckpt)]
    with pytest.raises(learner.DivergenceError):
        runtime.learner_loop(FakeLearner(fail_at=2), lambda s: 'b', hooks, threading.Event())
    assert ckpt.saved == [100]

    # A hook that raises counts too.
    class Broken(runtime.Hook):
        def after_step(self, step):
            raise OSError('disk full')

    ckpt = FakeCheckpointer()
    with pytest.raises(OSError, match='disk full'):
        runtime.learner_loop(
            FakeLearner(),
            lambda s: 'b',
            [runtime.SaveOnError(ckpt, []), Broken()],
            threading.Event(),
        )
    assert ckpt.saved == [100]


def test_publish_and_periodic_checkpoint_hooks():
    class Store:
        versions = []

        def publish(self, version):
            self.versions.append(version)

    store, ckpt = Store(), FakeCheckpointer()
    hooks = [
        runtime.PublishParameters(store, 2),
        runtime.PeriodicCheckpoint(ckpt, 0.0),
        runtime.FrameBudget(500),
    ]
    runtime.learner_loop(FakeLearner(), lambda s: 'b', hooks, threading.Event())
    assert store.versions == [2, 4]
    assert ckpt.saved == [100, 200, 300, 400, 500]
    ckpt = FakeCheckpointer()
    runtime.learner_loop(
        FakeLearner(),
        lambda s: 'b',
        [runtime.PeriodicCheckpoint(ckpt, 3600.0), runtime.FrameBudget(300)],
        threading.Event(),
    )
    assert ckpt.saved == []


def _synthetic_batch(agent, t1=4, b=2, seed=0):
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


def _summary_scalars(logdir):
    tags = {}
    for path in glob.glob(os.path.join(logdir, 'events.out.tfevents.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if tensor.ndim == 0:
                    tags.setdefault(value.tag, []).append((event.step, float(tensor)))
    return tags


def test_standard_hooks_with_a_real_learner_on_a_synthetic_source(tmp_path, caplog):
    """Summaries (learning_rate = the rate the step used), progress log, checkpoints, budget."""
    from scalable_agent2 import summaries

    lr, total = 0.01, 60  # 10 steps of 3 x 2 frames.
    cfg = config.ExperimentConfig(
        logdir=str(tmp_path),
        network='mlp',
        save_summaries_secs=1e-9,
        log_interval_secs=1e-9,
        save_checkpoint_secs=3600,
        environment=config.EnvironmentConfig(num_action_repeats=1),
        learner=config.LearnerConfig(
            batch_size=2,
            unroll_length=3,
            num_action_repeats=1,
            total_environment_frames=total,
            learning_rate=lr,
            use_xla=False,
        ),
    ).validate()
    setup = runtime.set_up_training(cfg, [CARTPOLE_SPEC], ['lvl'])
    assert setup.resumed_from is None
    batch = _synthetic_batch(setup.agent)
    writer = summaries.TrainingSummaries(str(tmp_path), None, ['lvl'])
    hooks = runtime.standard_hooks(
        cfg, setup.checkpointer, writer, lambda: (0, 1), setup.agent.variables
    )
    caplog.set_level(std_logging.INFO)
    steps = runtime.learner_loop(setup.learner, lambda stop: batch, hooks, threading.Event())
    result = runtime.finish_training(setup.learner, setup.checkpointer, steps, None)
    writer.close()
    assert steps == 10 and result['num_environment_frames'] == total
    assert result['checkpoint'].endswith(f'ckpt-{total}')
    tags = _summary_scalars(str(tmp_path))
    assert [s for s, _ in tags['learning_rate']] == list(range(6, 61, 6))
    for step, rate in tags['learning_rate']:
        assert rate == pytest.approx(lr * (1 - (step - 6) / total), rel=1e-5)
    assert len(tags['lvl/episode_return']) == 20  # One episode end per unroll, each step.
    assert 'update_applied' not in tags and 'frames_per_second' in tags
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('frames ')]
    assert lines and lines[-1].startswith('frames 60/60 (100.0%)')
    assert 'learner steps 10, queue 0/1; mean return lvl: 7.00' in lines[-1]
    with open(tmp_path / 'config.json') as f:
        assert json.load(f)['level_names'] == ['lvl']


# --------------------------------------------------------------------------------------------
# Set-up and restore.


def _cartpole_cfg(logdir, **kwargs):
    return config.ExperimentConfig(
        logdir=str(logdir),
        network='mlp',
        environment=config.EnvironmentConfig(num_action_repeats=1),
        learner=config.LearnerConfig(num_action_repeats=1, use_xla=False),
        **kwargs,
    ).validate()


def test_set_up_training_resumes_and_checks_the_agent_and_action_sets(tmp_path):
    cfg = _cartpole_cfg(tmp_path)
    first = runtime.set_up_training(cfg, [CARTPOLE_SPEC], ['lvl'])
    first.learner.num_environment_frames.assign(1234)
    first.checkpointer.save(1234)
    again = runtime.set_up_training(cfg, [CARTPOLE_SPEC], ['lvl'])
    assert again.resumed_from == 1234
    for x, y in zip(first.agent.variables, again.agent.variables, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match='num_actions=2'):
        runtime.set_up_training(cfg, [CARTPOLE_SPEC._replace(num_actions=3)], ['other'])
    adam = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, optimizer='adam'))
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match='adam/step'):
        runtime.set_up_training(adam, [CARTPOLE_SPEC], ['lvl'])  # RMSProp's slots, not Adam's.
    with pytest.raises(ValueError, match='must share the action set'):
        runtime.set_up_training(
            cfg, [CARTPOLE_SPEC, CARTPOLE_SPEC._replace(num_actions=3)], ['a', 'b']
        )
    with pytest.raises(ValueError, match='needs image frames'):
        runtime.set_up_training(
            dataclasses.replace(cfg, network='shallow'), [CARTPOLE_SPEC], ['lvl']
        )


def test_restore_agent_for_test_builds_no_optimizer(tmp_path):
    cfg = _cartpole_cfg(tmp_path)
    trained = runtime.set_up_training(cfg, [CARTPOLE_SPEC], ['lvl'])
    trained.learner.step(_synthetic_batch(trained.agent))  # Slots hold non-initial values.
    trained.checkpointer.save(6)
    created = []

    def record(next_creator, **kwargs):
        variable = next_creator(**kwargs)
        created.append(variable.name)
        return variable

    with tf.variable_creator_scope(record):
        restored = runtime.restore_agent_for_test(cfg, CARTPOLE_SPEC)
    assert restored.num_environment_frames == 6 and restored.checkpoint.endswith('ckpt-6')
    # The agent's variables, the frame counter and the checkpoint's own counter; no slot.
    assert sorted(created) == sorted(
        [v.name for v in restored.agent.variables] + ['num_environment_frames:0', 'save_counter:0']
    )
    for x, y in zip(trained.agent.variables, restored.agent.variables, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    with pytest.raises(checkpoints.NoCheckpointError):
        runtime.restore_agent_for_test(_cartpole_cfg(tmp_path / 'empty'), CARTPOLE_SPEC)
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match='num_actions=2'):
        runtime.restore_agent_for_test(cfg, CARTPOLE_SPEC._replace(num_actions=3))


# --------------------------------------------------------------------------------------------
# Policy stepping.


def _step_output(reward, done=False):
    return StepOutput(
        np.float32(reward),
        StepOutputInfo(np.float32(reward), np.int32(1)),
        done,
        (np.zeros(4, np.float32), 'instr'),
    )


def test_policy_stepper_carries_last_action_and_state_across_episodes():
    calls = []

    def policy(last_action, env_output, state):
        calls.append((last_action.tolist(), env_output.reward.tolist(), state, env_output))
        action = np.array([len(calls) % 3], np.int32)
        return AgentOutput(action, np.zeros([1, 3], np.float32), np.zeros([1], np.float32)), (
            state + 1
        )

    stepper = runtime.PolicyStepper(policy, initial_state=10, use_instruction=False)
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

    def policy(last_action, env_output, state):
        return AgentOutput(np.zeros([1], np.int32), None, None), state

    stepper = runtime.PolicyStepper(policy, 0)
    assert runtime.run_episodes(Env(), stepper, 2) == [3.0, 6.0]
    stop = threading.Event()
    stop.set()
    with pytest.raises(RuntimeError, match='stopped'):
        runtime.run_episodes(Env(), stepper, 1, stop)


def test_real_agent_through_the_stepper_and_dynamic_batching(tmp_path):
    agent = networks.ImpalaAgent(config.AgentConfig(num_actions=2, torso='mlp', core_size=8))
    runtime.create_agent_variables(agent, CARTPOLE_SPEC.observation_spec)
    policy = runtime.make_batched_policy(agent, timeout_ms=5)
    try:
        stepper = runtime.PolicyStepper(policy, runtime.initial_core_state(agent), False)
        actions = [stepper.step(_step_output(float(i), i == 0)) for i in range(5)]
    finally:
        policy.close()
    assert all(a in (0, 1) for a in actions)
    assert stepper.agent_output.policy_logits.shape == (1, 2)


# --------------------------------------------------------------------------------------------
# Actors and threads.


def test_split_evenly():
    assert runtime.split_evenly(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert runtime.split_evenly([0, 1], 4) == [[0], [1]]
    assert runtime.split_evenly(range(4), 1) == [[0, 1, 2, 3]]


def test_actor_loop_drives_actors_with_unrolls_or_unroll():
    class Batched:
        restarts = 0

        def __init__(self):
            self.n = 0

        def unrolls(self):
            self.n += 1
            return [('batched', self.n, e) for e in range(2)]

    class Single:
        def __init__(self):
            self.n = 0

        def unroll(self):
            self.n += 1
            return ('single', self.n)

    assert runtime.next_unrolls(Single()) == [('single', 1)]
    unrolls: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    thread = threading.Thread(
        target=runtime.actor_loop, args=([Batched(), Single()], unrolls, stop), daemon=True
    )
    thread.start()
    got = [unrolls.get(timeout=5) for _ in range(6)]
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert got == [
        ('batched', 1, 0),
        ('batched', 1, 1),
        ('single', 1),
        ('batched', 2, 0),
        ('batched', 2, 1),
        ('single', 2),
    ]


def test_staged_batch_holds_one_batch_and_waits_for_the_learner():
    """As the original's StagingArea: the producer gathers batch k+1 only once k is taken."""
    stop = threading.Event()
    staged = runtime.StagedBatch()
    unrolls: queue.Queue = queue.Queue()
    for i in range(6):
        unrolls.put(i)
    gathered = []

    def produce():
        while not stop.is_set():
            batch = [unrolls.get(), unrolls.get()]
            gathered.append(batch)
            if not staged.put(batch, stop):
                return

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    time.sleep(0.3)
    # Batch 0 is staged; the unrolls of batch 1 stay queued until the learner takes batch 0.
    assert gathered == [[0, 1]] and unrolls.qsize() == 4
    assert staged.get(stop) == [0, 1]
    time.sleep(0.3)
    assert gathered == [[0, 1], [2, 3]] and unrolls.qsize() == 2
    assert staged.get(stop) == [2, 3]
    time.sleep(0.3)
    stop.set()
    producer.join(timeout=5)
    assert not producer.is_alive()


def test_put_and_get_give_up_once_stop_is_set():
    stop = threading.Event()
    q: queue.Queue = queue.Queue(maxsize=1)
    assert runtime.put(q, 1, stop) and runtime.get(q, stop) == 1
    runtime.put(q, 2, stop)
    stop.set()
    assert not runtime.put(q, 3, stop)
    assert runtime.get(queue.Queue(), stop) is None


def test_a_failed_thread_saves_a_checkpoint_before_the_error(tmp_path):
    stop = threading.Event()
    workers = runtime.Workers(stop)

    def fail():
        raise OSError('environment exploded')

    workers.start('actor_thread_0', fail)
    workers.join()
    assert stop.is_set() and isinstance(workers.first_error, OSError)
    v = tf.Variable([1.0, 2.0])
    ckpt = checkpoints.Checkpointer(str(tmp_path), {'v': v}, {'a': 1})
    with pytest.raises(RuntimeError, match='a training thread failed: .*environment exploded'):
        workers.raise_first_error(ckpt, 1234)
    assert ckpt.latest_checkpoint.endswith('ckpt-1234')
    runtime.Workers(threading.Event()).raise_first_error(ckpt, 1)  # No error: nothing.


def test_configure_tf_threads_before_and_after_tensorflow_starts():
    code = (
        'import tensorflow as tf\n'
        'from scalable_agent2 import runtime\n'
        'print(runtime.configure_tf_threads(1, 3))\n'
        'print(tf.reduce_sum(tf.ones([2])).numpy())\n'
        'print(tf.config.threading.get_intra_op_parallelism_threads(),'
        ' tf.config.threading.get_inter_op_parallelism_threads())\n'
        'print(runtime.configure_tf_threads(2, 2))\n'
    )
    proc = subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2'),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Set before TF ran; fixed (and a second request ignored with a warning) after.
    assert proc.stdout.split('\n')[:4] == ['(1, 3)', '2.0', '1 3', '(1, 3)']
    assert 'TensorFlow threads stay intra-op 1, inter-op 3' in proc.stderr
    assert runtime.default_num_threads() == max(1, os.cpu_count() or 1)
