"""Tests for dynamic_batching: the original's behavioural cases, on both implementations.

Every wait is bounded: futures are read with `_WAIT_S`, polls give up after `_WAIT_S`, and the
file runs under pytest-timeout.
"""

import concurrent.futures
import gc
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import numpy as np
import pytest
import sonnet as snt
import tensorflow as tf

from scalable_agent2 import dynamic_batching, types

pytestmark = pytest.mark.timeout(120)

_WAIT_S = 30.0
IMPLEMENTATIONS = dynamic_batching.IMPLEMENTATIONS


def _options(implementation, **kwargs):
    return dynamic_batching.batch_fn_with_options(implementation=implementation, **kwargs)


def _sum_and_batch_size(a, b):
    batch_size = tf.shape(a)[0]
    return a + b, tf.tile([batch_size], [batch_size])


def _wait_until(predicate, what):
    deadline = time.monotonic() + _WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out waiting until {what}')
        time.sleep(0.005)


def _pending(fn):
    batcher = fn._batcher
    with batcher._cond:
        return len(batcher._pending)


@pytest.fixture
def pool():
    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as executor:
        yield executor


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
@pytest.mark.parametrize('use_tf_function', [False, True])
def test_one(implementation, use_tf_function):
    f = _sum_and_batch_size
    if use_tf_function:
        f = tf.function(f)
    f = _options(implementation)(f)
    try:
        result, batch_size = f(tf.constant([[1, 3]]), tf.constant([2]))
        np.testing.assert_array_equal(result, [[3, 5]])
        np.testing.assert_array_equal(batch_size, [1])
        assert isinstance(result, tf.Tensor)
    finally:
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_two_concurrent_calls_form_a_batch_of_two(implementation, pool):
    f = _options(implementation, minimum_batch_size=2, timeout_ms=None)(_sum_and_batch_size)
    try:
        f0 = pool.submit(f, tf.constant([1]), tf.constant([2]))
        f1 = pool.submit(f, tf.constant([2]), tf.constant([3]))
        result0, batch_size0 = f0.result(_WAIT_S)
        result1, batch_size1 = f1.result(_WAIT_S)
        np.testing.assert_array_equal(result0, [3])
        np.testing.assert_array_equal(result1, [5])
        np.testing.assert_array_equal(batch_size0, [2])
        np.testing.assert_array_equal(batch_size1, [2])
    finally:
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_many_small_calls_from_ten_threads(implementation, pool):
    f = _options(implementation)(lambda a, b: a + b)
    try:
        futures = [
            pool.submit(f, np.full([1, 5], i, np.int32), tf.fill([1, 5], i)) for i in range(200)
        ]
        for i, future in enumerate(futures):
            np.testing.assert_array_equal(future.result(_WAIT_S), [[2 * i] * 5])
    finally:
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_nests_numpy_and_strings_match_unbatched_calls(implementation, pool):
    """Namedtuple nests (with tf.string) come back per caller equal to calling f alone."""

    def step(last_action, env_output, core_state):
        frame, instruction = env_output.observation
        x = tf.reduce_sum(tf.cast(frame, tf.float32), axis=[1, 2, 3])
        x += tf.cast(last_action, tf.float32) + env_output.reward
        x += tf.cast(tf.strings.length(instruction), tf.float32)
        new_state = core_state * 2.0 + x[:, None]
        return types.AgentOutput(last_action + 1, new_state * 3.0, x), new_state

    rng = np.random.default_rng(0)

    def inputs(i):
        env_output = types.StepOutput(
            reward=np.array([i], np.float32),
            info=types.StepOutputInfo(np.array([0.0], np.float32), np.array([i], np.int32)),
            done=np.array([False]),
            observation=(
                rng.integers(0, 255, [1, 4, 4, 2]).astype(np.uint8),
                tf.constant(['x' * i]),
            ),
        )
        return np.array([i], np.int32), env_output, tf.fill([1, 3], float(i))

    all_inputs = [inputs(i) for i in range(12)]
    f = _options(implementation, maximum_batch_size=5, timeout_ms=20)(tf.function(step))
    try:
        futures = [pool.submit(f, *args) for args in all_inputs]
        for args, future in zip(all_inputs, futures):
            got = future.result(_WAIT_S)
            want = step(*tf.nest.map_structure(tf.convert_to_tensor, args))
            tf.nest.assert_same_structure(got, want)
            for g, w in zip(tf.nest.flatten(got), tf.nest.flatten(want)):
                assert g.shape == w.shape
                np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-6)
    finally:
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_sonnet_module_built_by_the_first_batched_call(implementation, pool):
    """Variables created while tracing in the batching thread; results match direct calls."""
    module = snt.Linear(3)
    f = _options(implementation, timeout_ms=5)(tf.function(module))
    try:
        inputs = [np.full([1, 2], i, np.float32) for i in range(8)]
        futures = [pool.submit(f, x) for x in inputs]
        for x, future in zip(inputs, futures):
            np.testing.assert_allclose(future.result(_WAIT_S), module(x), rtol=1e-6)
    finally:
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_every_input_needs_the_same_leading_batch_dimension(implementation):
    """Calls may pass n >= 1 rows (not only 1), but every input of a call needs the same n."""
    f = _options(implementation, maximum_batch_size=4)(lambda a, b=None: a)
    try:
        with pytest.raises(ValueError, match='requires batch size >= 1'):
            f((tf.constant([1]), tf.constant(3)))  # A scalar has no batch dimension.
        with pytest.raises(ValueError, match='requires batch size >= 1'):
            f(tf.zeros([0, 2]))
        with pytest.raises(ValueError, match='same batch size'):
            f(tf.constant([1, 2]), tf.constant([[1], [2], [3]]))
        with pytest.raises(ValueError, match='5 rows exceeds maximum_batch_size 4'):
            f(tf.constant([1, 2, 3, 4, 5]))  # Refused, not served alone.
        # The batcher keeps serving afterwards, one row or several.
        np.testing.assert_array_equal(f(tf.constant([7])), [7])
        np.testing.assert_array_equal(f(tf.constant([1, 2, 3, 4])), [1, 2, 3, 4])
    finally:
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_multi_row_calls_are_concatenated_and_split_back(implementation, pool):
    """Calls of 1..4 rows from many threads: each gets exactly its rows back, in order."""
    seen = []

    def g(a, b):
        seen.append(int(tf.shape(a)[0]))
        return a * 10 + tf.cast(b, a.dtype)[:, None], tf.fill(tf.shape(a)[:1], tf.shape(a)[0])

    f = _options(implementation, maximum_batch_size=6, timeout_ms=5)(g)
    try:
        sizes = [1 + i % 4 for i in range(40)]
        starts = np.cumsum([0] + sizes[:-1])
        inputs = [
            (np.arange(s, s + n, dtype=np.int64)[:, None] * np.ones([1, 3], np.int64),
             np.full([n], i, np.int32))
            for i, (s, n) in enumerate(zip(starts, sizes))
        ]  # fmt: skip
        futures = [pool.submit(f, *args) for args in inputs]
        for (a, b), n, future in zip(inputs, sizes, futures):
            got, batch_size = future.result(_WAIT_S)
            assert got.shape == (n, 3) and batch_size.shape == (n,)
            np.testing.assert_array_equal(got, a * 10 + b[:, None])
        # Rows are counted: no batch holds more than 6, and calls joined batches whole.
        assert max(seen) <= 6 and sum(seen) == sum(sizes)
    finally:
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_minimum_batch_size_counts_rows(implementation, pool):
    f = _options(implementation, minimum_batch_size=4, maximum_batch_size=8, timeout_ms=None)(
        _sum_and_batch_size
    )
    try:
        first = pool.submit(f, tf.constant([1, 2, 3]), tf.constant([0, 0, 0]))
        _wait_until(lambda: _pending(f) == 1, 'the 3-row call waits')
        time.sleep(0.1)
        assert not first.done()  # 3 rows < 4: no batch yet.
        second = pool.submit(f, tf.constant([4, 5]), tf.constant([1, 1]))
        result, batch_size = first.result(_WAIT_S)
        np.testing.assert_array_equal(result, [1, 2, 3])
        np.testing.assert_array_equal(batch_size, [5, 5, 5])
        result, batch_size = second.result(_WAIT_S)
        np.testing.assert_array_equal(result, [5, 6])
        np.testing.assert_array_equal(batch_size, [5, 5])
    finally:
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_a_call_that_does_not_fit_waits_for_the_next_batch(implementation, pool):
    batches = []

    def g(a):
        batches.append(a.numpy().tolist())
        return a

    f = _options(implementation, minimum_batch_size=5, maximum_batch_size=5, timeout_ms=None)(g)
    try:
        futures = [pool.submit(f, np.full([3], 0, np.int32))]
        _wait_until(lambda: _pending(f) == 1, 'the first call waits')
        # 3 + 3 rows reach the minimum, but 6 > 5: the first call runs alone (whole calls, in
        # arrival order), the second waits for the next batch, which the third completes.
        futures.append(pool.submit(f, np.full([3], 1, np.int32)))
        _wait_until(lambda: len(batches) == 1 and _pending(f) == 1, 'the first batch ran')
        futures.append(pool.submit(f, np.full([2], 2, np.int32)))
        for i, (n, future) in enumerate(zip([3, 3, 2], futures)):
            np.testing.assert_array_equal(future.result(_WAIT_S), [i] * n)
        assert batches == [[0, 0, 0], [1, 1, 1, 2, 2]]
    finally:
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_calling_inside_a_tf_function_is_a_clear_error(implementation):
    f = _options(implementation)(lambda a: a)
    try:
        with pytest.raises(ValueError, match='eagerly'):
            tf.function(f)(tf.constant([1]))
    finally:
        f.close()


class _Unrelated(BaseException):
    pass


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_base_exception_in_f_reaches_the_caller_and_batcher_keeps_serving(implementation):
    def g(a):
        if a.numpy()[0] < 0:
            raise _Unrelated('not an Exception')
        return a

    f = _options(implementation)(g)
    try:
        with pytest.raises(_Unrelated):
            f(tf.constant([-1]))
        np.testing.assert_array_equal(f(tf.constant([1])), [1])
    finally:
        f.close()


def test_concurrent_input_shapes_should_be_equal_python(pool):
    f = _options('python', minimum_batch_size=2, timeout_ms=None)(lambda a, b: a + b)
    try:
        f0 = pool.submit(f, tf.constant([1]), tf.constant([2]))
        f1 = pool.submit(f, tf.constant([[2]]), tf.constant([3]))
        for future in (f0, f1):
            with pytest.raises(ValueError, match='shapes of inputs must be equal'):
                future.result(_WAIT_S)
        # Later well-formed batches are served.
        f2 = pool.submit(f, tf.constant([1]), tf.constant([2]))
        f3 = pool.submit(f, tf.constant([5]), tf.constant([2]))
        np.testing.assert_array_equal(f2.result(_WAIT_S), [3])
        np.testing.assert_array_equal(f3.result(_WAIT_S), [7])
    finally:
        f.close()


def test_input_shapes_should_be_equal_queue():
    # The FIFOQueue fixes the shapes at the first call; a call that differs gets the error.
    f = _options('queue', timeout_ms=0)(lambda a, b: a + b)
    try:
        np.testing.assert_array_equal(f(tf.constant([1]), tf.constant([2])), [3])
        with pytest.raises(ValueError, match='shapes of inputs must be equal'):
            f(tf.constant([[2]]), tf.constant([3]))
        np.testing.assert_array_equal(f(tf.constant([4]), tf.constant([2])), [6])
    finally:
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_output_must_have_batch_dimension(implementation):
    f = _options(implementation)(lambda _: tf.constant(1))
    try:
        with pytest.raises(ValueError, match='must have a batch dimension'):
            f(tf.constant([1]))
    finally:
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_output_must_have_same_batch_dimension_size_as_input(implementation):
    f = _options(implementation)(lambda _: (tf.constant([1]), tf.constant([1, 2, 3, 4])))
    try:
        with pytest.raises(ValueError, match='Expected: 1 Observed: 4'):
            f(tf.constant([1]))
    finally:
        f.close()


class _Boom(Exception):
    pass


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_exception_in_f_reaches_every_caller_and_batcher_keeps_serving(implementation, pool):
    def f(a):
        if np.any(a.numpy() < 0):
            raise _Boom(f'negative input in batch of {a.shape[0]}')
        return a * 10

    f = _options(implementation, minimum_batch_size=2, timeout_ms=None)(f)
    try:
        futures = [pool.submit(f, tf.constant([-1])), pool.submit(f, tf.constant([2]))]
        for future in futures:
            with pytest.raises(_Boom, match='negative input in batch of 2') as info:
                future.result(_WAIT_S)
            assert isinstance(info.value.__cause__, _Boom)
        futures = [pool.submit(f, tf.constant([3])), pool.submit(f, tf.constant([4]))]
        assert [int(x.result(_WAIT_S)[0]) for x in futures] == [30, 40]
    finally:
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_tf_errors_inside_tf_function_reach_the_caller(implementation):
    @tf.function
    def g(a):
        tf.debugging.assert_non_negative(a, message='must be non-negative')
        return a

    f = _options(implementation)(g)
    try:
        with pytest.raises(tf.errors.InvalidArgumentError, match='must be non-negative'):
            f(tf.constant([-1]))
        np.testing.assert_array_equal(f(tf.constant([1])), [1])
    finally:
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_minimum_batch_size_with_timeout(implementation, pool):
    timeout_ms = 500
    f = _options(implementation, minimum_batch_size=2, timeout_ms=timeout_ms)(_sum_and_batch_size)
    try:
        # A lone call waits for the timeout, which runs from when the batch was asked for.
        start = time.monotonic()
        _, batch_size = f(tf.constant([[1, 3]]), tf.constant([2]))
        elapsed = time.monotonic() - start
        assert batch_size.numpy().tolist() == [1]
        assert 0.9 * timeout_ms / 1000 <= elapsed < timeout_ms / 1000 + 10.0
    finally:
        f.close()

    # Two calls start a batch at once, long before a (10 s) timeout.
    f = _options(implementation, minimum_batch_size=2, timeout_ms=10_000)(_sum_and_batch_size)
    try:
        start = time.monotonic()
        futures = [pool.submit(f, tf.constant([[1, 3]]), tf.constant([2])) for _ in range(2)]
        sizes = [future.result(_WAIT_S)[1].numpy().tolist() for future in futures]
        assert time.monotonic() - start < 5.0
        assert sizes == [[2], [2]]
    finally:
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_maximum_batch_size_is_never_exceeded(implementation, pool):
    release = threading.Event()
    batch_sizes = []

    def g(a):
        batch_sizes.append(int(a.shape[0]))
        if len(batch_sizes) == 1:
            release.wait(_WAIT_S)  # Hold the first batch so that the others pile up.
        return a + 1

    f = _options(implementation, maximum_batch_size=2)(g)
    try:
        futures = [pool.submit(f, tf.constant([0]))]
        _wait_until(lambda: batch_sizes, 'the first batch runs')
        futures += [pool.submit(f, tf.constant([i])) for i in range(1, 10)]
        _wait_until(lambda: _pending(f) == 9, '9 calls wait')
        release.set()
        assert [int(x.result(_WAIT_S)[0]) for x in futures] == list(range(1, 11))
        assert batch_sizes == [1, 2, 2, 2, 2, 1]
    finally:
        release.set()
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_static_shape_only_when_min_equals_max_and_no_timeout(implementation, pool):
    traced = {}

    def make(name):
        @tf.function
        def g(a):
            traced.setdefault(name, []).append(a.shape[0])
            return a

        return g

    f0 = _options(implementation, minimum_batch_size=1, maximum_batch_size=2)(make('f0'))
    f1 = _options(implementation, minimum_batch_size=2, maximum_batch_size=2)(make('f1'))
    f2 = _options(implementation, minimum_batch_size=2, maximum_batch_size=2, timeout_ms=None)(
        make('f2')
    )
    try:
        f0(tf.constant([1]))
        f1(tf.constant([1]))  # Times out with a batch of 1 < minimum.
        futures = [pool.submit(f2, tf.constant([i])) for i in range(2)]
        assert [int(x.result(_WAIT_S)[0]) for x in futures] == [0, 1]
        assert traced == {'f0': [None], 'f1': [None], 'f2': [2]}
        np.testing.assert_array_equal(f2(tf.constant([5, 6])), [5, 6])  # One 2-row call.
        assert traced['f2'] == [2]
    finally:
        for f in (f0, f1, f2):
            f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_tf_function_is_traced_once_for_all_batch_sizes(implementation, pool):
    traces = []

    @tf.function
    def g(a):
        traces.append(a.shape)
        return a * 2

    f = _options(implementation, timeout_ms=1)(g)
    try:
        futures = [pool.submit(f, tf.constant([[i, i]])) for i in range(50)]
        for i, future in enumerate(futures):
            np.testing.assert_array_equal(future.result(_WAIT_S), [[2 * i, 2 * i]])
        assert len(traces) == 1 and traces[0].as_list() == [None, 2]
    finally:
        f.close()


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_close_cancels_waiting_callers(implementation, pool):
    f = _options(implementation, minimum_batch_size=2, timeout_ms=None)(lambda a: a)
    future = pool.submit(f, tf.constant([1]))
    _wait_until(lambda: _pending(f) == 1, 'the call waits')
    thread = f._thread
    f.close()
    with pytest.raises(tf.errors.CancelledError, match='closed while this call was waiting'):
        future.result(_WAIT_S)
    assert not thread.is_alive()
    with pytest.raises(tf.errors.CancelledError, match='closed'):
        f(tf.constant([2]))
    f.close()  # Idempotent.


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_close_cancels_callers_whose_batch_is_running(implementation, pool):
    started, release = threading.Event(), threading.Event()

    def g(a):
        started.set()
        release.wait(_WAIT_S)
        return a

    f = _options(implementation)(g)
    future = pool.submit(f, tf.constant([1]))
    assert started.wait(_WAIT_S)
    f._batcher.close()  # Closes without joining the thread, which is still inside g.
    with pytest.raises(tf.errors.CancelledError):
        future.result(_WAIT_S)
    release.set()
    f.close()
    assert not f._thread.is_alive()


def test_dropping_the_batched_function_stops_its_thread():
    f = dynamic_batching.batch_fn(lambda a: a)
    np.testing.assert_array_equal(f(tf.constant([1])), [1])
    thread = f._thread
    ref = weakref.ref(f)
    del f
    gc.collect()
    assert ref() is None
    thread.join(_WAIT_S)
    assert not thread.is_alive()


def test_interpreter_exit_cancels_blocked_non_daemon_threads():
    script = textwrap.dedent(
        """
        import threading
        import time
        import tensorflow as tf
        from scalable_agent2 import dynamic_batching

        @dynamic_batching.batch_fn_with_options(minimum_batch_size=2, timeout_ms=None)
        def f(a):
            return a

        def actor():
            try:
                f(tf.constant([1]))
            except tf.errors.CancelledError as e:
                print('CANCELLED', e.message, flush=True)

        threading.Thread(target=actor).start()  # Non-daemon: exit waits for it.
        while not f._batcher._pending:
            time.sleep(0.01)
        print('MAIN DONE', flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'MAIN DONE' in result.stdout
    assert 'CANCELLED' in result.stdout and 'closed' in result.stdout


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
@pytest.mark.parametrize('swap', [False, True])
def test_out_of_order_execution(implementation, swap, pool):
    batcher = dynamic_batching._Batcher(
        minimum_batch_size=1, maximum_batch_size=1, timeout_ms=None, implementation=implementation
    )
    try:
        r0 = pool.submit(batcher.compute, (tf.constant([1]),))
        (input0,), id0 = batcher.get_inputs()
        r1 = pool.submit(batcher.compute, (tf.constant([2]),))
        (input1,), id1 = batcher.get_inputs()
        np.testing.assert_array_equal(input0, [1])
        np.testing.assert_array_equal(input1, [2])
        done = [(input0 + 42, id0), (input1 + 42, id1)]
        for outputs, computation_id in reversed(done) if swap else done:
            batcher.set_outputs(outputs, computation_id)
        np.testing.assert_array_equal(r0.result(_WAIT_S), [43])
        np.testing.assert_array_equal(r1.result(_WAIT_S), [44])
    finally:
        batcher.close()


def test_invalid_computation_id(pool):
    batcher = dynamic_batching._Batcher(1, 1, None)
    try:
        future = pool.submit(batcher.compute, (tf.constant([1]),))
        (input0,), computation_id = batcher.get_inputs()
        with pytest.raises(ValueError, match='invalid computation id 42'):
            batcher.set_outputs(input0, 42)
        batcher.set_outputs(input0, computation_id)
        np.testing.assert_array_equal(future.result(_WAIT_S), [1])
        with pytest.raises(ValueError, match='invalid computation id'):
            batcher.set_outputs(input0, computation_id)  # Already delivered.
    finally:
        batcher.close()


@pytest.mark.parametrize(
    'kwargs, match',
    [
        ({'minimum_batch_size': 0}, 'minimum_batch_size'),
        ({'minimum_batch_size': 4, 'maximum_batch_size': 2}, 'maximum_batch_size'),
        ({'timeout_ms': -1}, 'timeout_ms'),
        ({'implementation': 'grpc'}, 'implementation'),
    ],
)
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dynamic_batching.batch_fn_with_options(**kwargs)


def test_batch_fn_uses_the_default_options():
    f = dynamic_batching.batch_fn(lambda a: a)
    try:
        batcher = f._batcher
        assert (batcher._minimum_batch_size, batcher._maximum_batch_size) == (1, 1024)
        assert batcher._timeout_s == pytest.approx(0.1)
        np.testing.assert_array_equal(f(np.array([[1.5]], np.float32)), [[1.5]])
    finally:
        f.close()
