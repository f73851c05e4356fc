"""Tests for scalable_agent2.summaries beyond the training runs (train_test.py covers those)."""

from scalable_agent2 import summaries
from tests import fakes


def test_environment_restarts_is_a_scalar_at_the_frame_count(tmp_path):
    writer = summaries.TrainingSummaries(str(tmp_path), None, ['gym/CartPole-v1'])
    writer.add_environment_restarts(0, step=100)
    writer.add_environment_restarts(2, step=250)
    writer.close()
    assert fakes.scalar_points(tmp_path)['environment_restarts'] == [(100, 0.0), (250, 2.0)]
