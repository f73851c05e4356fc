"""Tests for py_process: start, call, close, crash detection, constructor errors."""

import os
import signal
import time

import numpy as np
import pytest

from scalable_agent2 import py_process


class Counter:
    """A small stateful object to run in the child."""

    def __init__(self, start: int, step: int = 1):
        self._value = start
        self._step = step
        self.closed_marker = None

    @property
    def value(self) -> int:
        return self._value

    def increment(self, times: int = 1) -> int:
        self._value += self._step * times
        return self._value

    def echo(self, x):
        return x

    def pid(self) -> int:
        return os.getpid()

    def fail(self, message: str):
        raise KeyError(message)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def die(self) -> None:
        os._exit(3)

    def unpicklable(self):
        return lambda: None


class BadConstructor:
    def __init__(self, message: str):
        raise ValueError(message)


class UnpicklableError(Exception):
    def __init__(self, a, b):  # Pickling calls __init__(msg) only: re-creating it fails.
        super().__init__(f'{a}-{b}')


class BadConstructorUnpicklable:
    def __init__(self):
        raise UnpicklableError('x', 'y')


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """Whether `pid` no longer exists (reaped) within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_calls_keep_state_in_the_child():
    with py_process.PyProcess(Counter, 10, step=5) as proc:
        assert proc.increment() == 15
        assert proc.call('increment', times=2) == 25
        assert proc.get_attr('value') == 25
        child_pid = proc.call('pid')
        assert child_pid == proc.pid != os.getpid()


def test_worker_pids_lists_the_running_workers_of_a_process():
    with py_process.PyProcess(Counter, 0) as a, py_process.PyProcess(Counter, 1) as b:
        assert sorted(py_process.worker_pids(os.getpid())) == sorted([a.pid, b.pid])
    assert _wait_gone(a.pid) and _wait_gone(b.pid)
    assert py_process.worker_pids(os.getpid()) == []


def test_arrays_round_trip_unchanged():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(84, 84, 4), dtype=np.uint8)
    with py_process.PyProcess(Counter, 0) as proc:
        out = proc.echo((frame, 'instr'))
    np.testing.assert_array_equal(out[0], frame)
    assert out[0].dtype == np.uint8 and out[1] == 'instr'


def test_method_errors_reach_the_parent_and_the_child_survives():
    with py_process.PyProcess(Counter, 0) as proc:
        with pytest.raises(KeyError, match='boom') as info:
            proc.fail('boom')
        assert 'raise KeyError(message)' in info.value.__cause__.tb
        assert proc.increment() == 1  # Still serving.


def test_unpicklable_result_is_an_error_not_a_hang():
    with py_process.PyProcess(Counter, 0) as proc:
        with pytest.raises(Exception, match='(?i)pickl'):
            proc.unpicklable()
        assert proc.increment() == 1


def test_constructor_error_is_reraised_with_the_childs_message():
    with pytest.raises(ValueError, match='no such level: foo') as info:
        py_process.PyProcess(BadConstructor, 'no such level: foo')
    assert isinstance(info.value.__cause__, py_process.RemoteTraceback)
    assert 'raise ValueError(message)' in info.value.__cause__.tb


def test_unpicklable_constructor_error_keeps_the_message():
    with pytest.raises(py_process.PyProcessError, match='UnpicklableError: x-y'):
        py_process.PyProcess(BadConstructorUnpicklable)


def test_sigkill_during_a_call_raises_within_seconds():
    proc = py_process.PyProcess(Counter, 0)
    pid = proc.pid

    def kill_soon():
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)

    import threading

    killer = threading.Thread(target=kill_soon)
    killer.start()
    start = time.monotonic()
    with pytest.raises(py_process.PyProcessDiedError, match='died'):
        proc.sleep(60)
    assert time.monotonic() - start < 10
    killer.join()
    assert _wait_gone(pid)
    with pytest.raises(py_process.PyProcessError):
        proc.increment()
    proc.close()  # Idempotent after a crash.


def test_killed_idle_child_fails_the_next_call():
    proc = py_process.PyProcess(Counter, 0)
    os.kill(proc.pid, signal.SIGKILL)
    assert _wait_gone(proc.pid) or not proc.is_alive()
    with pytest.raises(py_process.PyProcessDiedError):
        proc.increment()
    proc.close()


def test_child_exiting_by_itself_is_reported():
    proc = py_process.PyProcess(Counter, 0)
    with pytest.raises(py_process.PyProcessDiedError, match='exit code 3'):
        proc.die()
    proc.close()


def test_call_timeout():
    proc = py_process.PyProcess(Counter, 0)
    with pytest.raises(py_process.PyProcessTimeoutError):
        proc.call('sleep', 30, timeout=0.5)
    assert proc.closed
    assert _wait_gone(proc.pid, timeout=15)


def test_close_while_another_thread_is_stuck_in_a_call():
    import threading

    proc = py_process.PyProcess(Counter, 0)
    errors = []

    def stuck():
        try:
            proc.sleep(120)
        except py_process.PyProcessError as e:
            errors.append(e)

    thread = threading.Thread(target=stuck)
    thread.start()
    time.sleep(0.3)
    start = time.monotonic()
    proc.close()
    thread.join(timeout=30)
    assert time.monotonic() - start < 20
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], py_process.PyProcessDiedError)
    assert not proc.is_alive()


def test_close_is_idempotent_and_reaps_the_child():
    proc = py_process.PyProcess(Counter, 0)
    pid = proc.pid
    proc.close()
    proc.close()
    assert not proc.is_alive()
    assert _wait_gone(pid)
    with pytest.raises(py_process.PyProcessError, match='closed'):
        proc.increment()


def test_tf_parent_and_children_closed_at_interpreter_exit(tmp_path):
    # A fresh interpreter starts a child and exits without close(); the child must go too.
    import subprocess
    import sys

    script = tmp_path / 'leave_open.py'
    # TensorFlow is loaded and used in the parent first: children must not be forked from it.
    script.write_text(
        'import tensorflow as tf\n'
        'from scalable_agent2 import py_process\n'
        'from tests.py_process_test import Counter\n'
        'if __name__ == "__main__":\n'
        '    assert int(tf.constant(2) + 1) == 3\n'
        '    proc = py_process.PyProcess(Counter, 0)\n'
        '    assert proc.increment() == 1\n'
        '    print(proc.pid, flush=True)\n'
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    assert _wait_gone(int(out.stdout.split()[-1]))


def test_call_async_sends_to_many_children_before_waiting_for_any():
    procs = [py_process.PyProcess(Counter, 10 * i) for i in range(3)]
    try:
        for proc in procs:
            proc.call_async('sleep', 1.0)
        start = time.monotonic()
        assert [proc.result() for proc in procs] == [None] * 3
        assert time.monotonic() - start < 2.7  # They slept at the same time (not 3 s).
        for proc in procs:
            proc.call_async('increment', times=2)
            assert proc.pending == 'increment'
        assert [proc.result() for proc in procs] == [2, 12, 22]
        assert procs[0].pending is None
        # The child's errors come back through result(), and the pipe stays in step.
        procs[0].call_async('fail', 'boom')
        with pytest.raises(KeyError, match='boom'):
            procs[0].result()
        assert procs[0].increment() == 3
    finally:
        for proc in procs:
            proc.close()


def test_call_async_misuse_is_an_error_not_a_hang():
    import threading

    with py_process.PyProcess(Counter, 0) as proc:
        with pytest.raises(py_process.PyProcessError, match='without a pending'):
            proc.result()
        proc.call_async('increment')
        with pytest.raises(py_process.PyProcessError, match='awaits result'):
            proc.call('increment')
        # Another thread's call waits for this thread's result().
        got = []
        other = threading.Thread(target=lambda: got.append(proc.increment()))
        other.start()
        time.sleep(0.2)
        assert not got
        assert proc.result() == 1
        other.join(timeout=10)
        assert got == [2]


def test_close_with_a_pending_async_call_and_a_dead_child():
    proc = py_process.PyProcess(Counter, 0)
    proc.call_async('sleep', 60)
    start = time.monotonic()
    proc.close()  # Drops the pending call.
    assert time.monotonic() - start < 20 and not proc.is_alive()

    proc = py_process.PyProcess(Counter, 0)
    os.kill(proc.pid, signal.SIGKILL)
    assert _wait_gone(proc.pid) or not proc.is_alive()
    with pytest.raises(py_process.PyProcessDiedError):
        proc.call_async('increment')  # The pipe is broken (or the reply never comes).
        proc.result()
    assert proc.pending is None
    proc.close()


def test_child_modules_lists_what_the_child_imported():
    with py_process.PyProcess(Counter, 0) as proc:
        modules = proc.child_modules()
    assert 'tests.py_process_test' in modules and 'numpy' in modules
    assert 'tensorflow' not in modules
