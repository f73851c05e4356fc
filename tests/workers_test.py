"""Tests for worker threads: stop events and queues, the staged batch, thread errors, pools."""

import os
import queue
import subprocess
import sys
import threading
import time

import pytest
import tensorflow as tf

from scalable_agent2 import checkpoints, workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_split_evenly():
    assert workers.split_evenly(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert workers.split_evenly([0, 1], 4) == [[0], [1]]
    assert workers.split_evenly(range(4), 1) == [[0, 1, 2, 3]]


def test_staged_batch_holds_one_batch_and_waits_for_the_learner():
    """As the original's StagingArea: the producer gathers batch k+1 only once k is taken."""
    stop = threading.Event()
    staged = workers.StagedBatch()
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
    assert workers.put(q, 1, stop) and workers.get(q, stop) == 1
    workers.put(q, 2, stop)
    stop.set()
    assert not workers.put(q, 3, stop)
    assert workers.get(queue.Queue(), stop) is None


def test_a_failed_thread_saves_a_checkpoint_before_the_error(tmp_path):
    stop = threading.Event()
    threads = workers.Workers(stop)

    def fail():
        raise OSError('environment exploded')

    threads.start('actor_thread_0', fail)
    threads.join()
    assert stop.is_set() and isinstance(threads.first_error, OSError)
    v = tf.Variable([1.0, 2.0])
    ckpt = checkpoints.Checkpointer(str(tmp_path), {'v': v}, {'a': 1})
    with pytest.raises(RuntimeError, match='a training thread failed: .*environment exploded'):
        threads.raise_first_error(ckpt, 1234)
    assert ckpt.latest_checkpoint.endswith('ckpt-1234')
    workers.Workers(threading.Event()).raise_first_error(ckpt, 1)  # No error: nothing.


def test_configure_tf_threads_before_and_after_tensorflow_starts():
    code = (
        'import tensorflow as tf\n'
        'from scalable_agent2 import workers\n'
        'print(workers.configure_tf_threads(1, 3))\n'
        'print(tf.reduce_sum(tf.ones([2])).numpy())\n'
        'print(tf.config.threading.get_intra_op_parallelism_threads(),'
        ' tf.config.threading.get_inter_op_parallelism_threads())\n'
        'print(workers.configure_tf_threads(2, 2))\n'
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
    assert workers.default_num_threads() == max(1, os.cpu_count() or 1)
