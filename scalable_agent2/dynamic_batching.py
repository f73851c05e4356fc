"""Dynamic batching: many Python threads, one batched computation.

A TF2 replacement for the original's `batcher.cc` op, with its API and semantics:
`batch_fn` / `batch_fn_with_options` decorate a function `f`. Many threads call the decorated
function at once, each with nests of tensors (or numpy arrays) that share a leading dimension n:
1 in the original (one environment per actor), any n >= 1 here (an actor stepping n
environments at once). The calls' inputs are concatenated along that dimension, `f` runs once on
the batch and every caller gets back its own `[n, ...]` slice of every output, as tensors.

Sizes count rows: a batch starts once at least `minimum_batch_size` rows wait, or once
`timeout_ms` have passed since the batch was asked for (i.e. since the previous batch was taken)
and at least one call waits; a batch never holds more than `maximum_batch_size` rows, and calls
join a batch whole and in arrival order (a call that does not fit waits for the next batch, so a
batch may then hold fewer than `minimum_batch_size` rows). A single call of more than
`maximum_batch_size` rows is refused at once with a `ValueError`. With one-row calls, rows are
calls: the original's behaviour. The first call starts one background thread (no explicit
start); `close()` or interpreter exit stops it, and callers still waiting then get a
`tf.errors.CancelledError`.

When `f` is a `tf.function` it is traced once with the batch dimension unknown (`None`), so
varying batch sizes do not retrace; the batch dimension is static only when
`minimum_batch_size == maximum_batch_size` and `timeout_ms is None`, as in the original (and
then only for batches of exactly that many rows: multi-row calls may not add up to it).

Two interchangeable mechanisms hold the waiting inputs (`implementation=`). 'python' (the
default) keeps them in a list guarded by a `threading.Condition`; each caller turns its host
tensors into numpy arrays (no copy) and the batch is one `np.concatenate` per input (`tf.concat`
for inputs on an accelerator). 'queue' enqueues each call into a `tf.queue.FIFOQueue` and takes a
batch with one `dequeue_many`; it wakes the background thread with the same condition variable,
since eager queue ops cannot time out. 'python' measured faster (docs/BENCHMARKS.md) and accepts
inputs whose shapes change from batch to batch; the queue fixes them at the first call.

Call the decorated function eagerly, from Python threads (not inside a `tf.function`).
"""

import copy
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

IMPLEMENTATIONS = ('python', 'queue')

# How long close() waits for the background thread (it may be inside `f`).
_JOIN_TIMEOUT_S = 10.0
# Capacity of the 'queue' implementation's FIFOQueue: large enough never to block an enqueue.
_QUEUE_CAPACITY = 2**30

_Signature = tuple[tuple[tf.DType, tuple[int | None, ...]], ...]


def _cancelled(message: str) -> tf.errors.CancelledError:
    return tf.errors.CancelledError(None, None, message)


def _leaf(x: Any) -> tf.Tensor | np.ndarray:
    """A caller's input as a numpy array when it lives on the host, else as a tensor.

    Done in the calling thread, off the batching thread's critical path: the batch is then one
    `np.concatenate` per input, several times faster than eager `tf.concat` on small tensors
    (bench/batching_bench.py). Host tensors convert without a copy.
    """
    if isinstance(x, np.ndarray):
        return x
    if not isinstance(x, tf.Tensor):
        x = tf.convert_to_tensor(x)
    return x.numpy() if '/device:CPU:' in x.device else x


def _signature(flat: Sequence[tf.Tensor | np.ndarray]) -> _Signature:
    """Dtype and per-example shape (without the leading dimension) of each flat input."""
    return tuple((tf.as_dtype(t.dtype), tuple(t.shape)[1:]) for t in flat)


def _concat(leaves: Sequence[tf.Tensor | np.ndarray]) -> tf.Tensor | np.ndarray:
    """Concatenates along axis 0: numpy for host inputs (`f` converts them), else `tf.concat`."""
    if all(isinstance(t, np.ndarray) for t in leaves):
        return np.concatenate(leaves, axis=0)
    return tf.concat(leaves, axis=0)


def _describe(signature: _Signature) -> str:
    return '[' + ', '.join(f'{dtype.name}{list(shape)}' for dtype, shape in signature) + ']'


class _Call:
    """One caller waiting for its slice of a batch (`rows` rows)."""

    __slots__ = ('args', 'flat', 'signature', 'rows', 'done', 'result', 'error')

    def __init__(
        self, args: tuple, flat: list[tf.Tensor | np.ndarray], signature: _Signature, rows: int
    ):
        self.args = args
        self.flat = flat
        self.signature = signature
        self.rows = rows
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result = result
        self.error = error
        self.done.set()


class _Batcher:
    """Forms batches from concurrent calls and returns each caller its slice of the outputs.

    The low-level interface mirrors the original op's: callers block in `compute`; a consumer
    loops `get_inputs` -> run the batch -> `set_outputs` (or `set_error`) with the computation
    id that `get_inputs` returned. Several batches may be in flight and finish in any order.
    """

    def __init__(
        self,
        minimum_batch_size: int,
        maximum_batch_size: int,
        timeout_ms: float | None,
        implementation: str = 'python',
    ):
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f'implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}'
            )
        self._minimum_batch_size = minimum_batch_size
        self._maximum_batch_size = maximum_batch_size
        self._timeout_s = None if timeout_ms is None else timeout_ms / 1000.0
        self._use_queue = implementation == 'queue'
        self._queue: tf.queue.FIFOQueue | None = None
        self._queue_signature: _Signature | None = None
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._pending_rows = 0
        self._in_flight: dict[int, list[_Call]] = {}
        self._ids = itertools.count()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def compute(self, args: tuple) -> Any:
        """Adds one call's inputs to the next batch and blocks until its outputs are ready.

        Args:
          args: tuple of nests of tensors or arrays, all with the same leading dimension n >= 1.

        Returns:
          The nest that `f` returned, each tensor sliced to this call's `[n, ...]` rows.

        Raises:
          ValueError: called while tracing a `tf.function`, an input without a leading
            dimension, inputs whose leading dimensions differ or are 0, or more than
            `maximum_batch_size` rows (all raised at once); or the batch could not be formed or
            its outputs were malformed (see `get_inputs` / `set_outputs`).
          tf.errors.CancelledError: the batcher was closed before or while this call waited.
          Exception: whatever `f` raised on this call's batch (a copy, chained to the original).
        """
        if not tf.executing_eagerly():
            raise ValueError(
                'dynamic batching: call the batched function eagerly (from Python threads), '
                'not while tracing a tf.function'
            )
        flat = [_leaf(x) for x in tf.nest.flatten(args)]
        rows = None
        for i, t in enumerate(flat):
            shape = tuple(t.shape)
            if len(shape) < 1 or shape[0] is None or shape[0] < 1:
                raise ValueError(
                    'dynamic batching requires batch size >= 1 (a leading dimension) for every '
                    f'input: flat input {i} has shape {list(shape)}'
                )
            if rows is None:
                rows = shape[0]
            elif shape[0] != rows:
                raise ValueError(
                    'dynamic batching requires the same batch size (leading dimension) for '
                    f'every input of a call: flat input 0 has {rows} rows, flat input {i} has '
                    f'shape {list(shape)}'
                )
        if rows is None:
            rows = 1  # No tensors at all: one row.
        if rows > self._maximum_batch_size:
            raise ValueError(
                f'dynamic batching: a call of {rows} rows exceeds maximum_batch_size '
                f'{self._maximum_batch_size}; raise maximum_batch_size or split the call'
            )
        call = _Call(args, flat, _signature(flat), rows)
        with self._cond:
            if self._closed:
                raise _cancelled('dynamic batching: the batcher is closed')
            if self._use_queue:
                self._enqueue(call)
            self._pending.append(call)
            self._pending_rows += rows
            self._cond.notify_all()
        call.done.wait()
        if call.error is not None:
            try:
                error = copy.copy(call.error)  # Each thread raises its own object.
            except Exception:  # noqa: BLE001 - an uncopyable exception is raised as is.
                error = call.error
            if error is call.error:
                raise error
            raise error from call.error
        structure, row = call.result
        return tf.nest.pack_sequence_as(structure, row)  # Here, to spare the batching thread.

    def _enqueue(self, call: _Call) -> None:
        """'queue' implementation: puts one call's inputs into the FIFOQueue (lock held)."""
        if self._queue is None:
            self._queue_signature = call.signature
            self._queue = tf.queue.FIFOQueue(
                _QUEUE_CAPACITY,
                dtypes=[dtype for dtype, _ in call.signature],
                shapes=[shape for _, shape in call.signature],
            )
        if call.signature != self._queue_signature:
            raise ValueError(
                'dynamic batching: shapes of inputs must be equal for all calls; expected '
                f'{_describe(self._queue_signature)}, got {_describe(call.signature)}'
            )
        self._queue.enqueue_many(call.flat)
        call.flat = None  # The queue holds the data now.

    def get_inputs(self) -> tuple[tuple, int]:
        """Blocks until a batch is ready and returns it.

        Returns:
          (args, computation_id): `args` has the structure of the first call's arguments, each
          leaf the concatenation `[B, ...]` of the calls in the batch, B rows in all (a numpy
          array when all inputs were on the host, else a tensor).

        Raises:
          tf.errors.CancelledError: the batcher was closed.
        """
        while True:
            calls, dequeued = self._take_calls()
            try:
                batch = self._form_batch(calls, dequeued)
            except Exception as e:  # noqa: BLE001 - the batch's callers get it; keep serving.
                for call in calls:
                    call.finish(error=e)
                continue
            with self._cond:
                if self._closed:
                    raise _cancelled('dynamic batching: the batcher is closed')
                computation_id = next(self._ids)
                self._in_flight[computation_id] = calls
            return tf.nest.pack_sequence_as(calls[0].args, batch), computation_id

    def _take_calls(self) -> tuple[list[_Call], Any]:
        """Waits for the batch conditions, then removes calls of up to `maximum_batch_size` rows.

        Returns:
          (calls, dequeued): for the 'queue' implementation `dequeued` holds their inputs (or
          the exception that dequeuing raised); else None.
        """
        with self._cond:
            deadline = None if self._timeout_s is None else time.monotonic() + self._timeout_s
            while not self._closed and self._pending_rows < self._minimum_batch_size:
                if deadline is None:
                    self._cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                elif self._pending:
                    break
                else:
                    self._cond.wait()  # Timed out with nobody waiting: the first call starts it.
            if self._closed:
                raise _cancelled('dynamic batching: the batcher is closed')
            # Whole calls, in arrival order, up to the row limit (every call fits on its own).
            taken, rows = 0, 0
            for call in self._pending:
                if rows + call.rows > self._maximum_batch_size:
                    break
                taken += 1
                rows += call.rows
            calls = self._pending[:taken]
            del self._pending[:taken]
            self._pending_rows -= rows
            if not self._use_queue:
                return calls, None
            try:
                # Under the lock so that the queue's order matches `calls`.
                return calls, self._queue.dequeue_many(rows)
            except Exception as e:  # noqa: BLE001 - raised to the callers by _form_batch.
                return calls, e

    @staticmethod
    def _form_batch(calls: list[_Call], dequeued: Any) -> list[tf.Tensor | np.ndarray]:
        """The flat batched inputs of `calls`; ValueError if their shapes differ."""
        if isinstance(dequeued, BaseException):
            raise dequeued
        if dequeued is not None:
            return list(dequeued) if isinstance(dequeued, list | tuple) else [dequeued]
        mismatched = [c for c in calls if c.signature != calls[0].signature]
        if mismatched:
            # The batch cannot be formed: every caller in it gets the error.
            raise ValueError(
                'dynamic batching: shapes of inputs must be equal for all calls in a batch; '
                f'got {_describe(calls[0].signature)} and {_describe(mismatched[0].signature)}'
            )
        if len(calls) == 1:
            return calls[0].flat
        return [_concat(ts) for ts in zip(*(c.flat for c in calls))]

    def _pop_in_flight(self, computation_id: int) -> list[_Call] | None:
        with self._cond:
            calls = self._in_flight.pop(computation_id, None)
            if calls is None and not self._closed:
                raise ValueError(f'dynamic batching: invalid computation id {computation_id}')
            return calls  # None when close() already cancelled them.

    def set_outputs(self, outputs: Any, computation_id: int) -> None:
        """Splits a batch's outputs and hands each caller its `[n, ...]` slices.

        Args:
          outputs: nest of tensors (or arrays), each with leading dimension B, the batch size
            (the sum of the calls' rows).
          computation_id: as returned by `get_inputs`.

        Raises:
          ValueError: `computation_id` is not in flight. Malformed outputs (no batch dimension,
            or one other than B) are not raised here but delivered to the batch's callers.
        """
        calls = self._pop_in_flight(computation_id)
        if calls is None:
            return
        sizes = [call.rows for call in calls]
        batch_size = sum(sizes)
        try:
            flat = [tf.convert_to_tensor(x) for x in tf.nest.flatten(outputs)]
            for i, t in enumerate(flat):
                if t.shape.rank is None or t.shape.rank < 1:
                    raise ValueError(
                        'dynamic batching: output shape must have a batch dimension; flat output '
                        f'{i} has shape {t.shape}'
                    )
                if t.shape[0] != batch_size:
                    raise ValueError(
                        'dynamic batching: output shape must have the same batch dimension as the '
                        f'input batch size. Expected: {batch_size} Observed: {t.shape[0]} '
                        f'(flat output {i})'
                    )
            if len(calls) == 1:
                rows = [flat]
            else:
                rows = list(zip(*(tf.split(t, sizes, axis=0) for t in flat))) if flat else []
                rows = rows or [[] for _ in calls]
        except Exception as e:  # noqa: BLE001 - delivered to the callers concerned.
            for call in calls:
                call.finish(error=e)
            return
        for call, row in zip(calls, rows):
            call.finish(result=(outputs, list(row)))

    def set_error(self, error: BaseException, computation_id: int) -> None:
        """Delivers `error` to every caller of the batch `computation_id`."""
        calls = self._pop_in_flight(computation_id)
        for call in calls or ():
            call.finish(error=error)

    def close(self) -> None:
        """Cancels every waiting call; later calls and `get_inputs` raise CancelledError."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            waiting = self._pending + [c for cs in self._in_flight.values() for c in cs]
            self._pending = []
            self._pending_rows = 0
            self._in_flight.clear()
            self._cond.notify_all()
        error = _cancelled('dynamic batching: the batcher was closed while this call was waiting')
        for call in waiting:
            call.finish(error=error)


def _register_exit_hook(batcher: _Batcher) -> None:
    ref = weakref.ref(batcher)

    def close_at_exit() -> None:
        b = ref()
        if b is not None:
            b.close()

    # threading's private hook runs before non-daemon threads are joined, so actor threads
    # blocked in a call are released instead of hanging interpreter exit; atexit runs too late.
    register = getattr(threading, '_register_atexit', None)
    try:
        if register is None:
            raise RuntimeError('threading._register_atexit is unavailable')
        register(close_at_exit)
    except RuntimeError:
        import atexit

        atexit.register(close_at_exit)


class _Resolver:
    """Maps a batch's arguments to what runs them: `fn`, or for a `tf.function` one trace of it
    per input signature with the batch dimension unknown (static only when min == max, there
    is no timeout and the batch has exactly that many rows), so that varying batch sizes do not
    retrace."""

    def __init__(self, fn, minimum_batch_size, maximum_batch_size, timeout_ms):
        self._fn = fn
        self._static_batch_size = (
            minimum_batch_size
            if minimum_batch_size == maximum_batch_size and timeout_ms is None
            else None
        )
        self._concrete: dict[tuple[_Signature, int | None], Callable[..., Any]] = {}

    def __call__(self, args: tuple) -> Callable[..., Any]:
        fn = self._fn
        if not isinstance(fn, tf.types.experimental.PolymorphicFunction):
            return self._call_with_tensors
        if fn.input_signature is not None:
            return fn
        flat = tf.nest.flatten(args)
        static = self._static_batch_size
        if static is not None and flat and flat[0].shape[0] != static:
            static = None  # Multi-row calls that do not add up to the static size.
        key = (_signature(flat), static)
        if key not in self._concrete:
            specs = tf.nest.pack_sequence_as(
                args,
                [tf.TensorSpec((static,) + shape, dtype) for dtype, shape in key[0]],
            )
            self._concrete[key] = fn.get_concrete_function(*specs)
        return self._concrete[key]

    def _call_with_tensors(self, *args: Any) -> Any:
        # A plain Python `f` gets tensors, as the original gave it (a tf.function converts).
        return self._fn(*tf.nest.map_structure(tf.convert_to_tensor, args))


class BatchedFunction:
    """The callable that the decorators return: `__call__(*args)` batches, `close()` stops."""

    def __init__(
        self,
        fn: Callable[..., Any],
        minimum_batch_size: int,
        maximum_batch_size: int,
        timeout_ms: float | None,
        implementation: str,
    ):
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, '__name__', type(fn).__name__)
        self.__doc__ = getattr(fn, '__doc__', None)
        self._fn = fn
        self._batcher = _Batcher(minimum_batch_size, maximum_batch_size, timeout_ms, implementation)
        self._resolve = _Resolver(fn, minimum_batch_size, maximum_batch_size, timeout_ms)
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __call__(self, *args: Any) -> Any:
        """Batches this call with concurrent ones; see `batch_fn_with_options`."""
        if self._thread is None:
            self._start()
        return self._batcher.compute(args)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._batcher.closed:
                return
            # The thread holds the batcher and resolver, not `self`, so `self` can be collected.
            self._thread = threading.Thread(
                target=_serve,
                args=(self._batcher, self._resolve),
                name=f'dynamic_batching({self.__name__})',
                daemon=True,
            )
            self._thread.start()
            _register_exit_hook(self._batcher)

    def close(self, timeout_s: float = _JOIN_TIMEOUT_S) -> None:
        """Stops the background thread; callers still waiting get `tf.errors.CancelledError`."""
        self._batcher.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                logging.warning('dynamic batching thread still running after %.1fs', timeout_s)

    def __del__(self):
        batcher = getattr(self, '_batcher', None)
        if batcher is not None:
            batcher.close()


def _serve(batcher: _Batcher, callable_for: Callable[[tuple], Callable[..., Any]]) -> None:
    """The background loop: take a batch, run it, hand back the results, until closed."""
    while True:
        try:
            args, computation_id = batcher.get_inputs()
        except tf.errors.CancelledError:
            return
        try:
            outputs = callable_for(args)(*args)
        except BaseException as e:  # noqa: BLE001 - reaches every caller; keep serving.
            batcher.set_error(e, computation_id)
            continue
        batcher.set_outputs(outputs, computation_id)


def batch_fn(f: Callable[..., Any]) -> BatchedFunction:
    """Decorator: `batch_fn_with_options()` with the default options."""
    return batch_fn_with_options()(f)


def batch_fn_with_options(
    minimum_batch_size: int = 1,
    maximum_batch_size: int = 1024,
    timeout_ms: float | None = 100,
    *,
    implementation: str = 'python',
) -> Callable[[Callable[..., Any]], BatchedFunction]:
    """Decorator that batches concurrent calls of `f` from many threads.

    Example:

        @batch_fn_with_options(maximum_batch_size=num_actors, timeout_ms=10)
        @tf.function
        def inference(last_action, env_output, core_state):  # each a nest, leading dim n
            return agent((last_action, env_output), core_state)  # nest, leading dim B

    `f` is called (in one background thread) with positional arguments of the same structure
    as a caller's, every tensor `[B, ...]`; it must return a nest of tensors with leading
    dimension B. A caller may pass n >= 1 rows (all its inputs `[n, ...]`) and gets its n rows
    of every output back. Gradients do not flow through the batcher.

    Args:
      minimum_batch_size: a batch starts once this many rows wait ...
      maximum_batch_size: ... and never holds more rows than this (a larger single call is a
        `ValueError`).
      timeout_ms: ... or once this many milliseconds have passed since the batch was asked
        for and at least one call waits. None: no timeout.
      implementation: 'python' (default) or 'queue' (`tf.queue.FIFOQueue`); see the module doc.

    Returns:
      A decorator whose result is a `BatchedFunction` (callable, with `close()`).

    Raises:
      ValueError: invalid options.
    """
    if minimum_batch_size < 1:
        raise ValueError(f'minimum_batch_size must be >= 1, got {minimum_batch_size!r}')
    if maximum_batch_size < minimum_batch_size:
        raise ValueError(
            f'maximum_batch_size ({maximum_batch_size!r}) must be >= minimum_batch_size '
            f'({minimum_batch_size!r})'
        )
    if timeout_ms is not None and timeout_ms < 0:
        raise ValueError(f'timeout_ms must be >= 0 or None, got {timeout_ms!r}')
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f'implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}')

    def decorator(f: Callable[..., Any]) -> BatchedFunction:
        return BatchedFunction(
            f, minimum_batch_size, maximum_batch_size, timeout_ms, implementation
        )

    return decorator
