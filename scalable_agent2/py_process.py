"""Runs a Python object in a subprocess and calls its methods from the parent.

`PyProcess(cls, *args, **kwargs)` starts `cls(*args, **kwargs)` in a child started with the
`forkserver` start method (`spawn` where forkserver is unavailable), so a parent that has loaded
TensorFlow is never forked. Calls travel over a pipe as pickles; one call is one round trip.
As with `spawn`, the parent's `__main__` module is imported once (by the forkserver), so entry
points keep their work under `if __name__ == '__main__':`; `cls` and its arguments must be
picklable (module-level classes or functions).

Robustness rules:
  * A constructor error is re-raised in the parent with the child's exception type and message
    (the child's traceback is chained as the cause).
  * A child that dies (crash, SIGKILL, OOM) makes the pending or next call raise
    `ChildProcessError`-derived `PyProcessDiedError` at once: the parent waits on the child's
    pipe *and* its process sentinel, never on the pipe alone.
  * `close()` is idempotent, also runs at interpreter exit (`weakref.finalize`), and always
    joins the child (escalating to terminate/kill) so no zombie is left.
"""

import multiprocessing
import multiprocessing.connection
import pickle
import signal
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from absl import logging

_CLOSE = '__close__'
_GETATTR = '__getattr__'
_JOIN_TIMEOUT_S = 5.0


class PyProcessError(RuntimeError):
    """An error in the subprocess machinery (not raised by the object's own code)."""


class PyProcessDiedError(PyProcessError, ChildProcessError):
    """The child process exited while a call was pending or before it."""


class PyProcessTimeoutError(PyProcessError, TimeoutError):
    """A call or the constructor did not answer within its timeout."""


class RemoteTraceback(Exception):
    """Carries the child's formatted traceback as the `__cause__` of a re-raised error."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _context() -> multiprocessing.context.BaseContext:
    """`forkserver` (no fork of the TF parent; cheap starts), else `spawn`."""
    if 'forkserver' in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context('forkserver')
    return multiprocessing.get_context('spawn')


def _pack_error(exc: BaseException) -> tuple[str, Any, str]:
    """An exception as (message, picklable exception or None, formatted traceback)."""
    tb = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    message = f'{type(exc).__name__}: {exc}'
    try:  # Only send the exception itself if it survives the trip.
        pickle.loads(pickle.dumps(exc))
        picklable = exc
    except Exception:  # noqa: BLE001 - any pickling failure falls back to the message.
        picklable = None
    return message, picklable, tb


def _worker(conn: multiprocessing.connection.Connection, factory, args, kwargs) -> None:
    """The child's main loop: build the object, then serve calls until close or EOF."""
    # Ctrl-C goes to the whole process group; the parent decides when children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        obj = factory(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent.
        conn.send(('error', _pack_error(exc)))
        conn.close()
        return
    conn.send(('ok', None))
    while True:
        try:
            name, call_args, call_kwargs = conn.recv()
        except (EOFError, OSError):  # The parent went away: stop quietly.
            break
        if name == _CLOSE:
            try:
                if hasattr(obj, 'close'):
                    obj.close()
                conn.send(('ok', None))
            except BaseException as exc:  # noqa: BLE001
                conn.send(('error', _pack_error(exc)))
            break
        try:
            if name == _GETATTR:
                result = getattr(obj, call_args[0])
            else:
                result = getattr(obj, name)(*call_args, **call_kwargs)
            reply = ('ok', result)
        except BaseException as exc:  # noqa: BLE001
            reply = ('error', _pack_error(exc))
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result.
            conn.send(('error', _pack_error(exc)))
    conn.close()


def _shutdown(process, conn, timeout: float) -> None:
    """Asks the child to close, then makes sure it is gone and reaped. Never raises."""
    try:
        if process.is_alive():
            try:
                conn.send((_CLOSE, (), {}))
                ready = multiprocessing.connection.wait([conn, process.sentinel], timeout)
                if conn in ready:
                    conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                pass
        process.join(timeout)
        if process.is_alive():
            process.terminate()
            process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
    except Exception:  # noqa: BLE001 - cleanup at exit must not raise.
        logging.exception('Error while shutting down a PyProcess child.')
    finally:
        try:
            conn.close()
        except OSError:
            pass


class PyProcess:
    """An object living in a subprocess, called through a pipe.

    Usage:
      proc = PyProcess(MyEnv, level, seed=1)   # blocks until constructed (or raises)
      proc.call('step', 3)                     # or, equivalently, proc.step(3)
      proc.get_attr('num_actions')             # reads an attribute or property
      proc.close()

    Method calls are serialised with a lock, so several threads may share one `PyProcess`
    (each call is still one round trip).
    """

    def __init__(
        self,
        cls: Callable[..., Any],
        *args: Any,
        start_timeout: float | None = 600.0,
        **kwargs: Any,
    ):
        """Starts `cls(*args, **kwargs)` in a child and waits until it is constructed.

        Args:
          cls: a picklable callable (a class or module-level function) building the object.
          *args, **kwargs: picklable constructor arguments.
          start_timeout: seconds to wait for the constructor; None waits for as long as the
            child lives.

        Raises:
          The constructor's exception (same type and message when picklable, else
          `PyProcessError`), `PyProcessDiedError` if the child dies, or
          `PyProcessTimeoutError`.
        """
        self._name = getattr(cls, '__name__', repr(cls))
        self._lock = threading.Lock()
        self._closed = False
        ctx = _context()
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._process = ctx.Process(
            target=_worker,
            args=(child_conn, cls, args, kwargs),
            name=f'PyProcess-{self._name}',
            daemon=True,
        )
        self._process.start()
        child_conn.close()  # The parent keeps only its end, so a dead child means EOF.
        self._finalizer = weakref.finalize(
            self, _shutdown, self._process, self._conn, _JOIN_TIMEOUT_S
        )
        try:
            self._receive(start_timeout, what='constructor')
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return self._process.pid

    @property
    def closed(self) -> bool:
        return self._closed

    def is_alive(self) -> bool:
        return self._process.is_alive()

    def _receive(self, timeout: float | None, what: str) -> Any:
        """Waits for the child's reply to `what`, watching the child's liveness."""
        ready = multiprocessing.connection.wait([self._conn, self._process.sentinel], timeout)
        if not ready:
            raise PyProcessTimeoutError(
                f'{self._name} (pid {self.pid}): {what} did not answer within {timeout} s'
            )
        # The reply may have arrived just before the child died: read it if it is there.
        if self._conn.poll():
            try:
                status, payload = self._conn.recv()
            except (EOFError, OSError):
                status, payload = 'died', None
        else:
            status, payload = 'died', None
        if status == 'ok':
            return payload
        if status == 'died':
            self._process.join(_JOIN_TIMEOUT_S)
            raise PyProcessDiedError(
                f'{self._name} (pid {self.pid}) died during {what} '
                f'(exit code {self._process.exitcode})'
            )
        message, exc, tb = payload
        if exc is None:
            raise PyProcessError(f'{self._name} {what} failed in the child: {message}')
        raise exc from RemoteTraceback(tb)

    def call(self, name: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Calls method `name` on the child's object and returns its (picklable) result.

        Args:
          name: method name.
          *args, **kwargs: picklable arguments.
          timeout: seconds to wait for the reply; None waits as long as the child lives. After a
            timeout the process is closed, since the pipe would be out of step.
        """
        with self._lock:
            if self._closed:
                raise PyProcessError(f'{self._name}: call {name!r} on a closed PyProcess')
            try:
                self._conn.send((name, args, kwargs))
            except (BrokenPipeError, OSError):
                self._process.join(_JOIN_TIMEOUT_S)
                raise PyProcessDiedError(
                    f'{self._name} (pid {self.pid}) is gone before call {name!r} '
                    f'(exit code {self._process.exitcode})'
                ) from None
            try:
                return self._receive(timeout, what=f'call {name!r}')
            except PyProcessTimeoutError:
                self._closed = True
                self._process.terminate()  # Busy in the call: a polite close would wait.
                self._finalizer()
                raise
            except PyProcessDiedError:
                self._closed = True
                self._finalizer()
                raise

    def get_attr(self, name: str, timeout: float | None = None) -> Any:
        """Returns the child's `getattr(obj, name)` (an attribute or property value)."""
        return self.call(_GETATTR, name, timeout=timeout)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        """`proc.method(*args)` is `proc.call('method', *args)`."""
        if name.startswith('_'):
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> Any:
            return self.call(name, *args, **kwargs)

        method.__name__ = name
        return method

    def close(self) -> None:
        """Closes the object in the child and reaps the child. Idempotent; never hangs."""
        if not self._lock.acquire(timeout=_JOIN_TIMEOUT_S):
            # Another thread is stuck in a call: end the child, which fails that call.
            self._process.terminate()
            self._lock.acquire()
        try:
            self._closed = True
            self._finalizer()  # Runs `_shutdown` at most once.
        finally:
            self._lock.release()

    def __enter__(self) -> 'PyProcess':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
