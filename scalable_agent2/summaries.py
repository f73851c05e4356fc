"""Training summaries: episodes from learner batches, TensorBoard scalars, suite scores, progress.

The suites' scores themselves are computed by `scoring.suites`.

Episode statistics are read from the batches the learner trains on, as in the original: every
`done` in `env_outputs[1:]` ends an episode whose return and length are in `info`.
"""

import collections
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from scalable_agent2.scoring import suites
from scalable_agent2.types import game_over_or_done

# What TensorBoard's scalar plugin writes (version-0 plugin data serialises to b''); using
# `tf.summary.write` directly keeps the `tensorboard` package optional.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars', content=b'')
)
_HISTOGRAM_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='histograms', content=b'')
)


def write_scalar(name: str, value: float) -> None:
    """Writes a float32 scalar summary to the default writer (at its default step)."""
    tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)


def write_int_histogram(name: str, values: Any) -> None:
    """Writes a histogram of integers (one unit-wide bucket per value from 0 to the max).

    In TensorBoard's histogram format (`[k, 3]` rows of left edge, right edge, count).
    """
    counts = np.bincount(np.asarray(values, np.int64).ravel())
    edges = np.arange(len(counts), dtype=np.float64) - 0.5
    buckets = np.stack([edges, edges + 1.0, counts.astype(np.float64)], axis=1)
    tf.summary.write(name, tf.constant(buckets, tf.float64), metadata=_HISTOGRAM_METADATA)


class Episode(NamedTuple):
    """One finished episode: level name, return (unclipped) and length in frames."""

    level_name: str
    episode_return: float
    episode_frames: int


def episodes_from_batch(batch: Any, num_action_repeats: int) -> list[Episode]:
    """The episodes that end inside a learner batch.

    Args:
      batch: `ActorOutput` (numpy) with level_name `[B]` and env_outputs fields `[T+1, B, ...]`.
      num_action_repeats: frames per agent step.

    Returns:
      Episodes in time-major order; entry 0 of each unroll is skipped (it was reported with
      the previous unroll).
    """
    info = batch.env_outputs.info
    # Full games only: a lost life that ended a training episode is not reported.
    done = np.asarray(batch.env_outputs.done)[1:]
    done = done & np.asarray(game_over_or_done(info, batch.env_outputs.done), bool)[1:]
    returns = np.asarray(batch.env_outputs.info.episode_return)[1:]
    steps = np.asarray(batch.env_outputs.info.episode_step)[1:]
    levels = np.asarray(batch.level_name)
    episodes = []
    for t, b in zip(*np.nonzero(done), strict=True):
        level = levels[b]
        level = level.decode() if isinstance(level, bytes) else str(level)
        episodes.append(Episode(level, float(returns[t, b]), int(steps[t, b]) * num_action_repeats))
    return episodes


class TrainingSummaries:
    """Writes episode and learner scalars to TensorBoard, and suite scores when complete.

    Scalars: `<level>/episode_return`, `<level>/episode_frames` per episode (each also logged
    as a line, as the original); the `action` histogram with the learner metrics; each learner
    metric under its name; `learning_rate`, `frames_per_second`; `environment_restarts` (the
    environments recreated since the run started, after their subprocess died); for DMLab-30
    `dmlab30/training_no_cap` and `dmlab30/training_cap_100`, for Atari-57
    `atari57/training_mean` and `atari57/training_median`, written once every level has at least
    one return since the last time (then restarted).
    """

    def __init__(self, logdir: str, suite: str | None, level_names: Sequence[str]):
        self._writer = tf.summary.create_file_writer(logdir)
        self._suite = suite
        self._level_names = list(dict.fromkeys(level_names))
        self._pending: dict[str, list[float]] = collections.defaultdict(list)
        self._recent: dict[str, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=100)
        )

    def recent_mean_returns(self) -> dict[str, float]:
        """Level -> mean return of its last (up to 100) episodes."""
        return {k: float(np.mean(v)) for k, v in sorted(self._recent.items()) if v}

    def add_episodes(self, episodes: Sequence[Episode], step: int) -> None:
        with self._writer.as_default(step=step):
            for e in episodes:
                logging.info('Level: %s Episode return: %f', e.level_name, e.episode_return)
                write_scalar(f'{e.level_name}/episode_return', e.episode_return)
                write_scalar(f'{e.level_name}/episode_frames', e.episode_frames)
                self._recent[e.level_name].append(e.episode_return)
                self._pending[e.level_name].append(e.episode_return)
            if self._suite is not None and all(self._pending[k] for k in self._level_names):
                scores = suites.suite_scores(
                    self._suite, {k: self._pending[k] for k in self._level_names}
                )
                for name, value in scores.items():
                    write_scalar(f'{self._suite}/training_{name}', value)
                logging.info('%s training scores: %s', self._suite, scores)
                self._pending.clear()

    def add_actions(self, actions: Any, step: int) -> None:
        """Writes the `action` histogram of a batch's actions (int `[T+1, B]`), as the original."""
        with self._writer.as_default(step=step):
            write_int_histogram('action', np.asarray(actions)[1:])

    def add_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        """Writes scalar metrics (tensors or numbers); non-scalars are skipped."""
        with self._writer.as_default(step=step):
            for name, value in scalars.items():
                value = np.asarray(value)
                if value.shape == () and value.dtype.kind in 'fiub':
                    write_scalar(name, float(value))

    def add_environment_restarts(self, restarts: int, step: int) -> None:
        """Writes `environment_restarts`: environments recreated so far in this run.

        Args:
          restarts: the total over the actors (e.g. `sum(a.restarts for a in actors)`).
          step: the frame count.
        """
        with self._writer.as_default(step=step):
            write_scalar('environment_restarts', float(restarts))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class FrameRate:
    """Frames per second between successive calls of `update`."""

    def __init__(self, frames: int):
        self._frames = frames
        self._time = time.monotonic()

    def update(self, frames: int) -> float:
        now = time.monotonic()
        rate = (frames - self._frames) / max(now - self._time, 1e-9)
        self._frames, self._time = frames, now
        return rate
