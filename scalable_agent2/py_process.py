"""Runs a Python object in a subprocess and calls its methods from the parent.

`PyProcess(cls, *args, **kwargs)` starts `cls(*args, **kwargs)` in a child started with the
`forkserver` start method (`spawn` where forkserver is unavailable), so a parent that has loaded
TensorFlow is never forked. Calls travel over a pipe as pickles; one call is one round trip, or
two halves: `call_async` sends, `result` waits (so a batch of children can step together).
`cls` and its arguments must be picklable (module-level classes or functions).

A child imports only what it needs: the modules that define `cls` and its arguments. Unlike
plain `multiprocessing`, it does not re-import the parent's `__main__` module (which may import
TensorFlow and the agent) unless `cls` or an argument is defined there (then, as with `spawn`,
entry points keep their work under `if __name__ == '__main__':`), and the forkserver preloads
this package's environments module instead of `__main__`. `child_modules()` lists what a child
has imported (tests check that environment workers import no TensorFlow).

Robustness rules:
  * A constructor error is re-raised in the parent with the child's exception type and message
    (the child's traceback is chained as the cause).
  * A child that dies (crash, SIGKILL, OOM) makes the pending or next call raise
    `ChildProcessError`-derived `PyProcessDiedError` at once: the parent waits on the child's
    pipe *and* its process sentinel, never on the pipe alone.
  * `close()` is idempotent, also runs at interpreter exit (`weakref.finalize`), and always
    joins the child (escalating to terminate/kill) so no zombie is left.
"""

import io
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from absl import logging

_CLOSE = '__close__'
_GETATTR = '__getattr__'
_MODULES = '__modules__'
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


# What the forkserver imports once, before forking children (instead of the parent's
# `__main__`): light modules every environment child needs.
_FORKSERVER_PRELOAD = ['scalable_agent2.environments']
_MAIN_KEYS = ('init_main_from_name', 'init_main_from_path')


def _context() -> multiprocessing.context.BaseContext:
    """`forkserver` (no fork of the TF parent; cheap starts), else `spawn`."""
    if 'forkserver' in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context('forkserver')
        # Only takes effect if the server has not started yet (it starts on first use).
        ctx.set_forkserver_preload(_FORKSERVER_PRELOAD)
        return ctx
    return multiprocessing.get_context('spawn')


def _needs_main(payload: tuple) -> bool:
    """Whether unpickling `payload` in the child needs the parent's `__main__` module."""
    try:
        return b'__main__' in pickle.dumps(payload)
    except Exception:  # noqa: BLE001 - multiprocessing reports the pickling error itself.
        return True


def _process_class(ctx: multiprocessing.context.BaseContext, import_main: bool) -> type:
    """`ctx.Process`, or for forkserver a subclass whose child skips importing `__main__`."""
    if ctx.get_start_method() != 'forkserver' or import_main:
        return ctx.Process
    return _NoMainForkServerProcess


def _no_main_popen(process_obj):
    """A forkserver `Popen` whose preparation data leave out the parent's `__main__`.

    The same steps as `multiprocessing.popen_forkserver.Popen._launch` (Python 3.11-3.12), with
    the main-module keys removed, so the child does not run `import __main__` (e.g. a script
    that imports TensorFlow at the top).
    """
    from multiprocessing import context, forkserver, popen_forkserver, reduction, spawn, util

    class Popen(popen_forkserver.Popen):
        def _launch(self, process_obj):
            prep_data = spawn.get_preparation_data(process_obj._name)
            for key in _MAIN_KEYS:
                prep_data.pop(key, None)
            buf = io.BytesIO()
            context.set_spawning_popen(self)
            try:
                reduction.dump(prep_data, buf)
                reduction.dump(process_obj, buf)
            finally:
                context.set_spawning_popen(None)
            self.sentinel, w = forkserver.connect_to_new_process(self._fds)
            _parent_w = os.dup(w)
            self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
            with open(w, 'wb', closefd=True) as f:
                f.write(buf.getbuffer())
            self.pid = forkserver.read_signed(self.sentinel)

    return Popen(process_obj)


if hasattr(multiprocessing.context, 'ForkServerProcess'):  # POSIX only.

    class _NoMainForkServerProcess(multiprocessing.context.ForkServerProcess):
        _Popen = staticmethod(_no_main_popen)


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
            elif name == _MODULES:
                result = sorted(sys.modules)
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


def _children(pid: int) -> list[int]:
    """Ids of the processes whose parent is `pid` (read from /proc)."""
    out = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                # Field 4 is the parent's id; the command name (field 2) may hold spaces.
                if int(f.read().rsplit(')', 1)[1].split()[1]) == pid:
                    out.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass  # The process ended while being read.
    return out


def worker_pids(pid: int) -> list[int]:
    """Ids of the `PyProcess` workers that process `pid` runs: its forkserver's children.

    Linux only (reads /proc); for tools that inspect or kill a run's workers from outside.
    """
    pids = []
    for child in _children(pid):
        try:
            with open(f'/proc/{child}/cmdline', 'rb') as f:
                cmdline = f.read()
        except OSError:
            continue
        if b'forkserver' in cmdline:
            pids.extend(_children(child))
    return pids


class PyProcess:
    """An object living in a subprocess, called through a pipe.

    Usage:
      proc = PyProcess(MyEnv, level, seed=1)   # blocks until constructed (or raises)
      proc.call('step', 3)                     # or, equivalently, proc.step(3)
      proc.get_attr('num_actions')             # reads an attribute or property
      proc.close()

    Method calls are serialised with a lock, so several threads may share one `PyProcess`
    (each call is still one round trip). `call_async(name, ...)` then `result()` split a call in
    two, so one thread can send to many children before waiting for any.
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
        self._pending: str | None = None  # The method of an unanswered `call_async`.
        self._pending_thread: threading.Thread | None = None
        ctx = _context()
        self._conn, child_conn = ctx.Pipe(duplex=True)
        process_class = _process_class(ctx, _needs_main((cls, args, kwargs)))
        self._process = process_class(
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
        self.call_async(name, *args, **kwargs)
        return self.result(timeout)

    def call_async(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Sends the call `name(*args, **kwargs)` and returns at once; `result()` gets its reply.

        Until `result()` is called, other threads' calls on this `PyProcess` wait, and the
        calling thread may make no other call (that raises `PyProcessError`).

        Raises:
          PyProcessDiedError: the child is already gone (nothing is pending then).
          PyProcessError: the process is closed, or this thread has a call pending.
        """
        if self._pending_thread is threading.current_thread():
            raise PyProcessError(
                f'{self._name}: call {name!r} while call {self._pending!r} of this thread '
                'awaits result()'
            )
        self._lock.acquire()
        try:
            if self._closed:
                raise PyProcessError(f'{self._name}: call {name!r} on a closed PyProcess')
            try:
                self._conn.send((name, args, kwargs))
            except (BrokenPipeError, OSError):
                self._process.join(_JOIN_TIMEOUT_S)
                self._closed = True
                self._finalizer()
                raise PyProcessDiedError(
                    f'{self._name} (pid {self.pid}) is gone before call {name!r} '
                    f'(exit code {self._process.exitcode})'
                ) from None
        except BaseException:
            self._lock.release()
            raise
        self._pending = name
        self._pending_thread = threading.current_thread()

    @property
    def pending(self) -> str | None:
        """The method of the call that `call_async` sent and `result` has not collected."""
        return self._pending

    def result(self, timeout: float | None = None) -> Any:
        """Waits for the reply to the pending `call_async` and returns it (or raises its error).

        Args:
          timeout: seconds to wait; None waits as long as the child lives. After a timeout the
            process is closed, since the pipe would be out of step.

        Raises:
          PyProcessError: no call is pending. Otherwise as `call`.
        """
        name = self._pending
        if name is None or self._pending_thread is not threading.current_thread():
            raise PyProcessError(f'{self._name}: result() without a pending call_async')
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
        finally:
            self._pending = None
            self._pending_thread = None
            self._lock.release()

    def child_modules(self, timeout: float | None = None) -> list[str]:
        """The names of the modules the child has imported (`sys.modules`), sorted."""
        return self.call(_MODULES, timeout=timeout)

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
        """Closes the object in the child and reaps the child. Idempotent; never hangs.

        A call of this thread still pending (`call_async` without `result`) is dropped.
        """
        if self._pending_thread is threading.current_thread():
            self._pending = None
            self._pending_thread = None
            self._closed = True
            try:
                self._finalizer()
            finally:
                self._lock.release()
            return
        locked = self._lock.acquire(timeout=_JOIN_TIMEOUT_S)
        if not locked:
            # Another thread is stuck in a call: end the child, which fails that call.
            self._process.terminate()
            # A thread that sent with `call_async` and never collects keeps the lock: go on.
            locked = self._lock.acquire(timeout=_JOIN_TIMEOUT_S)
        try:
            self._closed = True
            self._finalizer()  # Runs `_shutdown` at most once.
        finally:
            if locked:
                self._lock.release()

    def __enter__(self) -> 'PyProcess':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
