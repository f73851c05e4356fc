"""Worker threads, stop events and signals, and TensorFlow's thread pools.

`Workers` runs named threads and keeps the first error for the main thread (which saves a
checkpoint before raising it); `put`/`get` wait on a queue until a stop event is set;
`StopOnSignals` turns SIGINT/SIGTERM into that event; `StagedBatch` and `prefetch_loop` are the
original's StagingArea (one batch gathered while the learner trains on the last);
`configure_tf_threads` sizes TensorFlow's pools once, at a program's start.
"""

import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
from absl import logging

POLL_SECS = 0.1
JOIN_TIMEOUT_SECS = 10.0

# --------------------------------------------------------------------------------------------
# TensorFlow's thread pools.


def default_num_threads() -> int:
    """One thread per core: the default of both TensorFlow pools."""
    return max(1, os.cpu_count() or 1)


def configure_tf_threads(intra_op: int = 0, inter_op: int = 0) -> tuple[int, int]:
    """Sets TensorFlow's intra-op and inter-op thread pools; call before TF runs anything.

    Setting them explicitly makes the choice visible in the log. The default is one thread per
    core in each pool, as TensorFlow's own: on 2 cores, one thread each serialised the learner's
    step and the actors' inference calls (Pong, 32 environments: 2.1K against 3.0K frames/s,
    docs/BENCHMARKS.md).

    Args:
      intra_op: threads one op may use (0: one per core).
      inter_op: ops run at once (0: one per core).

    Returns:
      The (intra_op, inter_op) in effect. Once TensorFlow's runtime has started the pools cannot
      change: a differing request is then logged and ignored (e.g. a second program in one
      process, as tests run them).
    """
    want = (intra_op or default_num_threads(), inter_op or default_num_threads())
    current = (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )
    if current == want:
        return want
    try:
        tf.config.threading.set_intra_op_parallelism_threads(want[0])
        tf.config.threading.set_inter_op_parallelism_threads(want[1])
    except RuntimeError as e:  # TensorFlow has started: its pools are fixed.
        logging.warning(
            'TensorFlow threads stay intra-op %s, inter-op %s (asked %d, %d): %s',
            current[0] or 'default',
            current[1] or 'default',
            *want,
            e,
        )
        return current
    logging.info('TensorFlow threads: intra-op %d, inter-op %d.', *want)
    return want


# --------------------------------------------------------------------------------------------
# Stop events, queues and worker threads.


class StopOnSignals:
    """Context manager: SIGINT/SIGTERM set an event instead of killing the process.

    Signal handlers can only be installed from the main thread; elsewhere this does nothing.
    """

    def __init__(self, event: threading.Event):
        self._event = event
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        del frame
        logging.warning(
            'Received %s; stopping after saving a checkpoint.', signal.Signals(signum).name
        )
        self._event.set()

    def __enter__(self) -> 'StopOnSignals':
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Puts `item` unless `stop` is set first; returns whether it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=POLL_SECS)
            return True
        except queue.Full:
            continue
    return False


def get(q: queue.Queue, stop: threading.Event) -> Any:
    """Gets an item, or None once `stop` is set."""
    while not stop.is_set():
        try:
            return q.get(timeout=POLL_SECS)
        except queue.Empty:
            continue
    return None


class Workers:
    """Named daemon threads sharing a stop event; the first error is kept for the main thread.

    A thread that raises (while `stop` is not set) logs the error, records it and sets `stop`, so
    that the others and the learner loop wind down; the main thread then calls
    `raise_first_error`.
    """

    def __init__(self, stop: threading.Event):
        self._stop = stop
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()

    def start(self, name: str, target: Callable[[], None]) -> None:
        """Runs `target()` in a new thread called `name`."""

        def run():
            try:
                target()
            except BaseException as e:  # Reported to the main thread.
                if not self._stop.is_set():
                    logging.error('%s failed: %r', name, e)
                    with self._lock:
                        self._errors.append(e)
                    self._stop.set()

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def first_error(self) -> BaseException | None:
        with self._lock:
            return self._errors[0] if self._errors else None

    def raise_first_error(self, ckpt: Any = None, frames: int = 0, what: str = 'a training thread'):
        """Raises RuntimeError if a thread failed, saving `ckpt` (a `checkpoints.Checkpointer`)
        at `frames` first if given; `what` names the thread in the message.

        The learner only trains in the main thread, so the parameters saved are the last good
        ones whatever failed in the actors or the prefetch thread.
        """
        e = self.first_error
        if e is not None:
            if ckpt is not None:
                path = ckpt.save(frames)
                logging.error('%s failed; saved %s first.', what.capitalize(), path)
            raise RuntimeError(f'{what} failed: {e!r}') from e

    def join(self, timeout_secs: float | None = JOIN_TIMEOUT_SECS) -> None:
        """Waits up to `timeout_secs` in all for the threads (set `stop` first); None: until
        they end."""
        deadline = None if timeout_secs is None else time.monotonic() + timeout_secs
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logging.warning('Thread %s did not stop in time.', thread.name)


class StagedBatch:
    """The original's StagingArea: one batch is gathered while the learner trains on the last.

    `put` returns once the learner has taken the batch, so the producer gathers the next one
    only from then on: at most one batch waits beside the one being trained on.
    """

    def __init__(self):
        self._slot: queue.Queue = queue.Queue(maxsize=1)
        self._taken = threading.Event()

    def put(self, batch: Any, stop: threading.Event) -> bool:
        """Stages `batch` and waits until it is taken; False if `stop` is set first."""
        if not put(self._slot, batch, stop):
            return False
        while not stop.is_set():
            if self._taken.wait(POLL_SECS):
                self._taken.clear()
                return True
        return False

    def get(self, stop: threading.Event) -> Any:
        """The staged batch, or None once `stop` is set."""
        batch = get(self._slot, stop)
        if batch is not None:
            self._taken.set()
        return batch


def prefetch_loop(
    next_batch: Callable[[], Any], staged: StagedBatch, stop: threading.Event
) -> None:
    """The prefetch thread: stages `next_batch()` while the learner trains (None ends it)."""
    while not stop.is_set():
        batch = next_batch()
        if batch is None:
            return
        if not staged.put(batch, stop):
            return


def split_evenly(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """`items` in `min(parts, len(items))` contiguous groups whose sizes differ by at most 1."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    groups, start = [], 0
    for k in range(parts):
        end = start + size + (1 if k < extra else 0)
        groups.append(list(items[start:end]))
        start = end
    return groups


def close_all(closables: Sequence[Any], what: str = 'an environment') -> None:
    """Closes each of `closables`, logging (not raising) failures."""
    for closable in closables:
        try:
            closable.close()
        except Exception as e:  # Closing must not hide the original error.
            logging.warning('Closing %s failed: %r', what, e)
