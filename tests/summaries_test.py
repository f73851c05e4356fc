"""Tests for scalable_agent2.summaries beyond the training runs (train_test.py covers those)."""

import glob

import tensorflow as tf

from scalable_agent2 import summaries


def _scalars(logdir):
    out = {}
    for path in glob.glob(f'{logdir}/events.out.tfevents.*'):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append(
                    (event.step, float(tf.make_ndarray(value.tensor)))
                )
    return out


def test_environment_restarts_is_a_scalar_at_the_frame_count(tmp_path):
    writer = summaries.TrainingSummaries(str(tmp_path), None, ['gym/CartPole-v1'])
    writer.add_environment_restarts(0, step=100)
    writer.add_environment_restarts(2, step=250)
    writer.close()
    assert _scalars(tmp_path)['environment_restarts'] == [(100, 0.0), (250, 2.0)]
