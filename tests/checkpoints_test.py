"""Tests for scalable_agent2.checkpoints: torn, empty and garbled files; another agent's."""

import glob

import numpy as np
import pytest
import tensorflow as tf

from scalable_agent2 import checkpoints


def _three_checkpoints(tmp_path):
    v = tf.Variable(np.zeros(1000, np.float32))
    ckpt = checkpoints.Checkpointer(str(tmp_path), {'v': v}, {'a': 1}, max_to_keep=5)
    for n in (1, 2, 3):
        v.assign(np.full(1000, n, np.float32))
        ckpt.save(n)
    v.assign(np.zeros(1000, np.float32))
    return v, ckpt


def _data_file(tmp_path, n):
    (path,) = glob.glob(str(tmp_path / f'ckpt-{n}.data-*'))
    return path


def _truncate(path):
    with open(path, 'r+b') as f:
        f.truncate(100)


def _empty(path):
    open(path, 'w').close()


def _garble(path):
    with open(path, 'r+b') as f:
        f.seek(200)
        f.write(b'\x5a' * 64)


@pytest.mark.parametrize('damage', [_truncate, _empty, _garble])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact(tmp_path, damage, caplog):
    v, ckpt = _three_checkpoints(tmp_path)
    damage(_data_file(tmp_path, 3))
    assert checkpoints.checkpoint_problem(str(tmp_path / 'ckpt-3')) is not None
    assert checkpoints.checkpoint_problem(str(tmp_path / 'ckpt-2')) is None
    path = ckpt.restore_latest(required=True)
    assert path.endswith('ckpt-2')
    np.testing.assert_array_equal(v.numpy(), np.full(1000, 2, np.float32))
    assert any('ckpt-3' in r.getMessage() and 'corrupt' in r.getMessage() for r in caplog.records)


def test_every_checkpoint_corrupt_is_one_clear_error(tmp_path):
    _, ckpt = _three_checkpoints(tmp_path)
    for n in (1, 2, 3):
        _truncate(_data_file(tmp_path, n))
    with pytest.raises(checkpoints.CorruptCheckpointError, match='every checkpoint .* corrupt'):
        ckpt.restore_latest()


def test_an_intact_checkpoint_of_another_shape_is_still_incompatible(tmp_path):
    _three_checkpoints(tmp_path)
    w = tf.Variable(np.zeros(7, np.float32))
    other = checkpoints.Checkpointer(str(tmp_path), {'v': w}, {'a': 1})
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match='does not match'):
        other.restore_latest()


def test_an_object_older_checkpoints_lack_gets_its_default(tmp_path):
    frames = tf.Variable(np.int64(0))
    old = checkpoints.Checkpointer(str(tmp_path), {'frames': frames}, {'a': 1})
    frames.assign(640)
    old.save(640)  # Written before `steps` was part of the state.

    frames, steps = tf.Variable(np.int64(0)), tf.Variable(np.int64(-1))
    state = checkpoints.CheckpointState(
        {'frames': frames, 'steps': steps},
        defaults={'steps': lambda: steps.assign(frames // 160)},  # Runs after the restore.
    )
    new = checkpoints.Checkpointer(str(tmp_path), state, {'a': 1})
    assert new.restore_latest().endswith('ckpt-640')
    assert (int(frames.numpy()), int(steps.numpy())) == (640, 4)
    steps.assign(7)
    new.save(800)
    steps.assign(-1)
    assert new.restore_latest().endswith('ckpt-800')
    assert int(steps.numpy()) == 7  # Saved now, so restored rather than derived.
    # A checkpoint holding more than the state (new one, old code) still restores.
    frames = tf.Variable(np.int64(0))
    assert checkpoints.Checkpointer(str(tmp_path), {'frames': frames}, {'a': 1}).restore_latest()
    assert int(frames.numpy()) == 640
    # An object without a default must still be in the checkpoint.
    other = checkpoints.Checkpointer(
        str(tmp_path), {'frames': tf.Variable(np.int64(0)), 'x': tf.Variable(1.0)}, {'a': 1}
    )
    other.save(900)
    lacking = checkpoints.Checkpointer(
        str(tmp_path), {'frames': frames, 'y': tf.Variable(1.0)}, {'a': 1}
    )
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match='does not match'):
        lacking.restore_latest()


def test_checkpoint_state_refuses_defaults_for_unknown_objects():
    with pytest.raises(ValueError, match='not in the state'):
        checkpoints.CheckpointState({'a': tf.Variable(1.0)}, defaults={'b': lambda: None})


def test_a_named_checkpoint_restores_by_name_or_path_and_is_never_swapped(tmp_path):
    v, ckpt = _three_checkpoints(tmp_path)
    assert ckpt.restore('ckpt-2').endswith('ckpt-2')
    np.testing.assert_array_equal(v.numpy(), np.full(1000, 2, np.float32))
    assert ckpt.restore(str(tmp_path / 'ckpt-1')).endswith('ckpt-1')
    np.testing.assert_array_equal(v.numpy(), np.full(1000, 1, np.float32))
    with pytest.raises(checkpoints.NoCheckpointError, match='ckpt-7'):
        ckpt.restore('ckpt-7')
    _garble(_data_file(tmp_path, 2))
    with pytest.raises(checkpoints.CorruptCheckpointError, match='ckpt-2 is corrupt'):
        ckpt.restore('ckpt-2')
