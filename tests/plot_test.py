"""Learning-curve plots: event-file reading (tensor and simple_value scalars), smoothing against
its closed form, panels, and PNGs checked by size and pixel colour (synthetic runs and a real
CartPole run)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from matplotlib import colors
from matplotlib import image as mpimg
from tensorflow.core.util import event_pb2

from scalable_agent2 import plot, summaries

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLUE = np.array(colors.to_rgb('C0'))  # First run.
ORANGE = np.array(colors.to_rgb('C1'))  # Second run.


def _write_tensor_scalars(logdir, points):
    """points: (tag, step, value), written as summaries.py does (TF2 tensor scalars)."""
    writer = tf.summary.create_file_writer(logdir)
    for tag, step, value in points:
        with writer.as_default(step=step):
            summaries.write_scalar(tag, value)
    writer.close()


def _write_simple_values(path, points):
    """points: (tag, step, value) as TF1 `simple_value` events, written record by record."""
    with tf.io.TFRecordWriter(path) as writer:
        for tag, step, value in points:
            event = event_pb2.Event(step=step, wall_time=1.0)
            event.summary.value.add(tag=tag, simple_value=value)
            writer.write(event.SerializeToString())


def _colour_fraction(png_path, rgb, tol=0.03):
    pixels = mpimg.imread(png_path)[..., :3]
    return float(np.mean(np.all(np.abs(pixels - rgb) < tol, axis=-1)))


def test_smooth_matches_the_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    for w in (0.0, 0.5, 0.9):
        want = [
            sum((1 - w) * w ** (t - i) * x[i] for i in range(t + 1)) / (1 - w ** (t + 1))
            for t in range(len(x))
        ]
        np.testing.assert_allclose(plot.smooth(x, w), want, rtol=1e-12)
    np.testing.assert_allclose(plot.smooth(np.full(7, 3.0), 0.99), np.full(7, 3.0))
    with pytest.raises(ValueError, match='smoothing'):
        plot.smooth(x, 1.0)


def test_reads_tensor_and_simple_value_scalars(tmp_path):
    _write_tensor_scalars(
        str(tmp_path / 'tf2'),
        [
            ('Pong/episode_return', 300, -21.0),
            ('Pong/episode_return', 100, -20.0),
            ('frames_per_second', 100, 1234.5),
        ],
    )
    os.makedirs(tmp_path / 'tf1')
    _write_simple_values(
        str(tmp_path / 'tf1' / 'events.out.tfevents.1.host'),
        [('Pong/episode_return', 200, -19.5), ('total_loss', 200, 3.25)],
    )
    scalars = plot.read_scalars(str(tmp_path))
    ret = scalars['Pong/episode_return']
    np.testing.assert_array_equal(ret.steps, [100, 200, 300])  # Sorted by step.
    np.testing.assert_array_equal(ret.values, [-20.0, -19.5, -21.0])
    assert scalars['frames_per_second'].values.tolist() == [1234.5]
    assert scalars['total_loss'].steps.tolist() == [200]


def test_truncated_event_file_keeps_the_records_before(tmp_path):
    path = str(tmp_path / 'events.out.tfevents.2.host')
    _write_simple_values(path, [('a/episode_return', s, float(s)) for s in range(5)])
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        f.truncate(size - 7)  # A run still writing its last record.
    series = plot.read_scalars(str(tmp_path))['a/episode_return']
    assert series.steps.tolist() == [0, 1, 2, 3]


def test_missing_logdir_and_empty_logdir(tmp_path):
    with pytest.raises(ValueError, match='does not exist'):
        plot.read_scalars(str(tmp_path / 'nope'))
    with pytest.raises(ValueError, match='no TensorBoard event files'):
        plot.read_scalars(str(tmp_path))


def _series(steps, values):
    return plot.Series(np.array(steps, np.int64), np.array(values, np.float64))


def test_panels_order_titles_and_lines():
    run_a = {
        'contributed/dmlab30/rooms_watermaze/episode_return': _series([1, 2], [1.0, 3.0]),
        'contributed/dmlab30/lasertag_one_opponent_small/episode_return': _series([1], [0.0]),
        'dmlab30/training_no_cap': _series([5], [10.0]),
        'dmlab30/training_cap_100': _series([5], [9.0]),
        'frames_per_second': _series([1, 2], [100.0, 200.0]),
        'total_loss': _series([1], [5.0]),
    }
    run_b = {'contributed/dmlab30/rooms_watermaze/episode_return': _series([4], [7.0])}
    result = plot.panels([('a', run_a), ('b', run_b)], smoothing=0.5)
    assert [p.title for p in result] == [
        'lasertag_one_opponent_small',
        'rooms_watermaze',
        'dmlab30 human-normalised score',
        'frames per second',
    ]
    watermaze = result[1]
    assert [(line.label, line.run_index) for line in watermaze.lines] == [('a', 0), ('b', 1)]
    np.testing.assert_allclose(watermaze.lines[0].smoothed, plot.smooth([1.0, 3.0], 0.5))
    assert [line.label for line in result[2].lines] == [
        'a (training_cap_100)',
        'a (training_no_cap)',
    ]


def test_overlaid_runs_png_size_and_colours(tmp_path):
    rng = np.random.default_rng(1)
    for i, name in enumerate(('seed1', 'seed2')):
        points = []
        for step in range(0, 20_000, 200):
            points.append(('atari/Pong/episode_return', step, -21 + step / 1000 + i + rng.normal()))
            points.append(('atari/Breakout/episode_return', step, step / 500 + rng.normal()))
        points += [('frames_per_second', s, 900.0 + 50 * i) for s in range(0, 20_000, 1000)]
        points += [('atari57/training_median', s, s / 1000) for s in range(0, 20_000, 5000)]
        _write_tensor_scalars(str(tmp_path / name), points)
    output = str(tmp_path / 'out' / 'curves.png')
    code = plot.main(
        [f'--logdir={tmp_path / "seed1"}', f'--logdir={tmp_path / "seed2"}', f'--output={output}']
    )
    assert code == 0
    pixels = mpimg.imread(output)
    assert pixels.shape[:2] == (720, 1500)  # 4 panels: 2 rows of 3 at 500x360 px.
    # Both runs' curves are drawn, and the unused sixth cell stays blank (white).
    assert _colour_fraction(output, BLUE) > 0.0005
    assert _colour_fraction(output, ORANGE) > 0.0005
    blank_cell = pixels[400:700, 1050:1450, :3]
    assert np.all(blank_cell > 0.99)


def test_one_run_has_one_colour(tmp_path):
    _write_tensor_scalars(str(tmp_path / 'run'), [('x/episode_return', s, s) for s in range(50)])
    output = str(tmp_path / 'one.png')
    assert plot.main([f'--logdir={tmp_path / "run"}', f'--output={output}', '--columns=1']) == 0
    assert mpimg.imread(output).shape[:2] == (360, 500)
    assert _colour_fraction(output, BLUE) > 0.002
    assert _colour_fraction(output, ORANGE) == 0.0


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert plot.main([f'--logdir={tmp_path / "missing"}']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: logdir') and '\n' not in err
    run = str(tmp_path / 'run')
    _write_tensor_scalars(run, [('x/episode_return', 1, 1.0)])
    assert plot.main([f'--logdir={run}', '--label=a', '--label=b']) == 2
    assert '2 --label values for 1 --logdir' in capsys.readouterr().err
    _write_tensor_scalars(str(tmp_path / 'losses'), [('total_loss', 1, 1.0)])
    assert plot.main([f'--logdir={tmp_path / "losses"}']) == 2
    assert 'nothing to plot' in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_plot_of_a_real_cartpole_run(tmp_path):
    logdir = str(tmp_path / 'cartpole')
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'TF_CPP_MIN_LOG_LEVEL': '2'}
    train = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, 'experiments', 'experiment.py'),
            '--level_name=gym/CartPole-v1',
            '--network=mlp',
            '--num_actors=2',
            '--batch_size=4',
            '--unroll_length=20',
            '--num_action_repeats=1',
            '--total_environment_frames=2000',
            '--save_summaries_secs=0.01',
            f'--logdir={logdir}',
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    scalars = plot.read_scalars(logdir)
    returns = scalars['gym/CartPole-v1/episode_return']
    assert len(returns.steps) > 5 and returns.steps.max() <= 2000
    # CartPole pays 1 per step and one frame is one step here: returns equal episode lengths.
    np.testing.assert_array_equal(returns.values, scalars['gym/CartPole-v1/episode_frames'].values)

    output = str(tmp_path / 'cartpole.png')
    result = subprocess.run(
        [sys.executable, '-m', 'scalable_agent2.plot', f'--logdir={logdir}', f'--output={output}'],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'gym/CartPole-v1, frames per second' in result.stdout
    pixels = mpimg.imread(output)
    assert pixels.shape[:2] == (360, 1000)  # Two panels side by side.
    # Each panel holds the run's curve: blue pixels in the left and in the right half.
    left, right = pixels[:, :500, :3], pixels[:, 500:, :3]
    for half in (left, right):
        assert np.mean(np.all(np.abs(half - BLUE) < 0.03, axis=-1)) > 0.001
