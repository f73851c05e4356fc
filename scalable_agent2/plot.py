"""Learning curves from a run's TensorBoard event files, as a PNG.

    python -m scalable_agent2.plot --logdir=/tmp/agent [--logdir=/tmp/agent2 ...] \
        [--label=seed1 --label=seed2] [--output=curves.png] [--smoothing=0.8]

One panel per level with the episode return against environment frames (raw points faint, an
exponential moving average on top), one per suite score written during training (DMLab-30 or
Atari-57 human-normalised scores) and one for frames per second. Several logdirs are overlaid
in different colours, for comparing seeds or variants. Rendering is headless (matplotlib's Agg
canvas, no display needed).

Tags are found by shape rather than by a fixed list: `<level>/episode_return`,
`dmlab30/...` and `atari57/...`, and `frames_per_second` (what `summaries.py` writes).
Scalars written as tensors (`tf.summary` in TF2) and as TF1 `simple_value`s are both read.
"""

import argparse
import glob
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from absl import logging

EPISODE_RETURN_SUFFIX = '/episode_return'
SUITE_PREFIXES = ('dmlab30/', 'atari57/')
FRAMES_PER_SECOND_TAG = 'frames_per_second'
_DMLAB30_LEVEL_PREFIX = 'contributed/dmlab30/'
_EVENT_FILE_GLOB = 'events.out.tfevents.*'


class Series(NamedTuple):
    """One scalar tag: steps int64 `[N]` (environment frames) and values float64 `[N]`."""

    steps: np.ndarray
    values: np.ndarray


class Line(NamedTuple):
    """A curve in a panel: a run's label, its (smoothed) series and its raw points."""

    label: str
    run_index: int
    series: Series
    smoothed: np.ndarray


class Panel(NamedTuple):
    title: str
    ylabel: str
    lines: list[Line]


# --------------------------------------------------------------------------------------------
# Reading.


def event_files(logdir: str) -> list[str]:
    """Event files anywhere under `logdir`, sorted by path.

    Raises:
      ValueError: `logdir` does not exist or holds no event files.
    """
    if not os.path.isdir(logdir):
        raise ValueError(f'logdir {logdir!r} does not exist')
    files = sorted(glob.glob(os.path.join(logdir, '**', _EVENT_FILE_GLOB), recursive=True))
    if not files:
        raise ValueError(f'no TensorBoard event files ({_EVENT_FILE_GLOB}) under {logdir!r}')
    return files


def _scalar_of(value) -> float | None:
    """The float of a `Summary.Value`, or None when it is not a scalar."""
    import tensorflow as tf

    kind = value.WhichOneof('value')
    if kind == 'simple_value':
        return float(value.simple_value)
    if kind == 'tensor':
        array = tf.make_ndarray(value.tensor)
        if array.shape == () and array.dtype.kind in 'fiub':
            return float(array)
    return None


def read_scalars(logdir: str) -> dict[str, Series]:
    """All scalar summaries under `logdir`, by tag, sorted by step (ties keep file order).

    A truncated last record (a run still writing) ends that file's reading with a warning.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    points: dict[str, list[tuple[int, float]]] = {}
    for path in event_files(logdir):
        try:
            for record in tf.data.TFRecordDataset(path):
                event = event_pb2.Event.FromString(record.numpy())
                for value in event.summary.value:
                    scalar = _scalar_of(value)
                    if scalar is not None:
                        points.setdefault(value.tag, []).append((int(event.step), scalar))
        except tf.errors.DataLossError:
            logging.warning('Truncated event file %s; using the records before the damage.', path)
    out = {}
    for tag, pairs in points.items():
        order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
        out[tag] = Series(
            np.array([pairs[i][0] for i in order], np.int64),
            np.array([pairs[i][1] for i in order], np.float64),
        )
    return out


# --------------------------------------------------------------------------------------------
# Curves.


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average (as TensorBoard's smoothing slider).

    Args:
      values: float `[N]`.
      weight: in [0, 1); 0 returns the values unchanged.

    Returns:
      float64 `[N]`: `m_t / (1 - weight**(t+1))` with `m_t = weight*m_{t-1} + (1-weight)*x_t`,
      `m_{-1} = 0`.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f'smoothing must be in [0, 1), got {weight}')
    values = np.asarray(values, np.float64)
    out = np.empty_like(values)
    mean = 0.0
    for t, x in enumerate(values):
        mean = weight * mean + (1.0 - weight) * x
        out[t] = mean / (1.0 - weight ** (t + 1))
    return out


def _level_title(level: str) -> str:
    return level[len(_DMLAB30_LEVEL_PREFIX) :] if level.startswith(_DMLAB30_LEVEL_PREFIX) else level


def panels(runs: Sequence[tuple[str, Mapping[str, Series]]], smoothing: float = 0.8) -> list[Panel]:
    """The panels to draw for runs `(label, scalars by tag)`, in display order.

    Levels first (sorted by name), then suite scores (one panel per suite, one line per run and
    score), then frames per second. Tags of other shapes (losses, learning rate) are left out.
    """
    levels: set[str] = set()
    suite_tags: dict[str, set[str]] = {}
    for _, scalars in runs:
        for tag in scalars:
            if tag.endswith(EPISODE_RETURN_SUFFIX):
                levels.add(tag[: -len(EPISODE_RETURN_SUFFIX)])
            elif tag.startswith(SUITE_PREFIXES):
                suite, _ = tag.split('/', 1)
                suite_tags.setdefault(suite, set()).add(tag)

    def lines_for(tag: str, label_suffix: str = '') -> list[Line]:
        out = []
        for i, (label, scalars) in enumerate(runs):
            if tag in scalars and len(scalars[tag].steps):
                series = scalars[tag]
                out.append(Line(label + label_suffix, i, series, smooth(series.values, smoothing)))
        return out

    result = []
    for level in sorted(levels):
        result.append(
            Panel(_level_title(level), 'episode return', lines_for(level + EPISODE_RETURN_SUFFIX))
        )
    for suite in sorted(suite_tags):
        lines = []
        for tag in sorted(suite_tags[suite]):
            lines.extend(lines_for(tag, f' ({tag.split("/", 1)[1]})'))
        result.append(Panel(f'{suite} human-normalised score', 'score (%)', lines))
    fps = lines_for(FRAMES_PER_SECOND_TAG)
    if fps:
        result.append(Panel('frames per second', 'frames/s', fps))
    return result


# --------------------------------------------------------------------------------------------
# Drawing.


def render(
    panel_list: Sequence[Panel], output: str, columns: int = 3, dpi: int = 100
) -> tuple[int, int]:
    """Draws the panels in a grid and writes a PNG; returns its (width, height) in pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    if not panel_list:
        raise ValueError('nothing to plot: no episode returns, suite scores or frames/s found')
    columns = max(1, min(columns, len(panel_list)))
    rows = math.ceil(len(panel_list) / columns)
    fig = Figure(figsize=(5.0 * columns, 3.6 * rows), dpi=dpi, layout='constrained')
    FigureCanvasAgg(fig)
    colours = [f'C{i}' for i in range(10)]
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, panel in zip(axes.flat, panel_list, strict=False):
        seen_per_run: dict[int, int] = {}
        for line in panel.lines:
            colour = colours[line.run_index % len(colours)]
            # A run's second score in a suite panel (e.g. cap_100 after no_cap) is dashed.
            style = seen_per_run.get(line.run_index, 0)
            seen_per_run[line.run_index] = style + 1
            ax.plot(line.series.steps, line.series.values, '.', color=colour, alpha=0.15, ms=3)
            ax.plot(
                line.series.steps,
                line.smoothed,
                '-' if style % 2 == 0 else '--',
                color=colour,
                lw=1.8,
                label=line.label,
            )
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel('environment frames')
        ax.set_ylabel(panel.ylabel)
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.grid(alpha=0.3)
        if panel.lines:
            ax.legend(fontsize=8, loc='best')
    for ax in axes.flat[len(panel_list) :]:
        ax.set_visible(False)
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(output, format='png')
    width, height = fig.canvas.get_width_height()
    return int(width), int(height)


def _labels(logdirs: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(logdirs):
            raise ValueError(f'got {len(labels)} --label values for {len(logdirs)} --logdir values')
        return list(labels)
    names = [os.path.basename(os.path.normpath(d)) or d for d in logdirs]
    if len(set(names)) < len(names):
        return list(logdirs)
    return names


def plot(
    logdirs: Sequence[str],
    output: str,
    labels: Sequence[str] | None = None,
    smoothing: float = 0.8,
    columns: int = 3,
) -> list[Panel]:
    """Reads each logdir's event files and writes the learning curves to `output` (PNG)."""
    names = _labels(logdirs, labels)
    runs = [(name, read_scalars(logdir)) for name, logdir in zip(names, logdirs, strict=True)]
    panel_list = panels(runs, smoothing)
    render(panel_list, output, columns)
    return panel_list


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m scalable_agent2.plot',
        description='Learning curves (PNG) from TensorBoard event files of training runs.',
    )
    parser.add_argument(
        '--logdir', action='append', required=True, help='run directory (repeat to overlay)'
    )
    parser.add_argument('--label', action='append', help='legend label per --logdir')
    parser.add_argument(
        '--output', help='PNG to write (default: <first logdir>/learning_curves.png)'
    )
    parser.add_argument(
        '--smoothing', type=float, default=0.8, help='moving-average weight in [0, 1)'
    )
    parser.add_argument('--columns', type=int, default=3, help='panels per row')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 for user mistakes)."""
    args = _parser().parse_args(argv)
    output = args.output or os.path.join(args.logdir[0], 'learning_curves.png')
    try:
        panel_list = plot(args.logdir, output, args.label, args.smoothing, args.columns)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'wrote {output}: ' + ', '.join(p.title for p in panel_list))
    return 0


if __name__ == '__main__':
    sys.exit(main())
