"""Distributed IMPALA on TensorFlow's own gRPC runtime: one learner job, many actor jobs.

```
actor task i (any host)                               learner task 0
  env + agent (local variables)                         gRPC server at learner_address
  once per unroll: ParameterStore.read_into(agent) <--- ParameterStore (shared-name variables)
  Actor.unroll() -> UnrollQueue.enqueue() ----------->  UnrollQueue (FIFOQueue, shared_name)
                                                        dequeue_many(B) -> train step
                                                        -> ParameterStore.publish()
```

Mechanism (checked on TF 2.21, CPU; the choices and why):

* Every process calls `tf.config.experimental_connect_to_cluster`. The learner's `ClusterSpec`
  holds only its own job (a spec listing the actors would make it wait for every actor). An
  actor's spec holds the learner and its own task, with `ClusterDeviceFilters` so it sees only
  those; it never needs the other actors, so actors come and go freely.
* Unrolls travel through one FIFO queue placed on the learner's CPU with a `shared_name`: the
  learner and every actor create "the same" queue on that device and TF's resource manager on
  the learner gives them one object. Actors enqueue (a remote eager op), the learner dequeues
  batches locally. Enqueue is atomic: an actor killed mid-enqueue either delivered a whole
  unroll or nothing (a blocked enqueue of a dead actor may still complete later with its whole,
  stale unroll), and the learner keeps dequeuing from the others.
  The queue is made with the raw `FIFOQueueV2` op: in eager mode `tf.queue.FIFOQueue` swaps
  `shared_name` for a process-local id (two processes then share a queue only by accident of
  equal ids) and deletes the resource when its Python object dies (an exiting actor would
  delete the learner's queue).
* Parameters are published by the learner into one resource variable with an explicit shared
  name on its CPU (`VarHandleOp(shared_name=...)`): a float32 vector holding all of the
  agent's variables and the int64 version (the learner's update count, bitcast). One vector
  means one remote read per unroll and a consistent snapshot (an assign replaces the whole
  buffer).
* Episode statistics need no extra channel: every unroll carries its level name and the
  environments' `StepOutputInfo`, which the learner summarises exactly as in single-machine
  mode.
* `tf.distribute.experimental.ParameterServerStrategy` runs on the same runtime but does not
  fit: its coordinator ships traced functions to workers, and the `tf.py_function` a Python
  environment needs cannot run there (checked: a scheduled function with a `py_function` fails
  on the worker with InvalidArgumentError). So the learner plays the parameter server, as the
  original's learner did with its variables on its CPU.

Limits of TF's runtime that shape the fault handling:

* TF's gRPC server listens on `0.0.0.0:<port>` whatever host the address names; only the port
  is configurable. The runtime is unauthenticated: run it on a trusted network only.
* TF waits forever for an unreachable peer, so actors first probe the learner's port (TCP
  connect, back-off, a log line while waiting) and give up with `LearnerUnreachableError`
  after `connect_timeout_secs`. They then greet it as an HTTP/2 client (what gRPC runs on): a
  TF server answers with its SETTINGS frame at once, while another service at that address
  (a web server, a raw TCP service that closes or sends something else) is refused with one
  `NotATensorFlowServerError` line naming the learner address, instead of TF's wait or
  gRPC's log text.
* A process cannot reconnect its eager context after the learner restarts (its own server
  cannot be started twice). An actor that loses the learner raises `LearnerLostError`; the
  command exits with `EXIT_LEARNER_LOST` and the launch scripts' supervisor loop restarts it,
  after which it waits for the (restarted) learner and rejoins. When the learner reaches its
  frame budget it closes the queue and keeps serving for `shutdown_grace_secs`; actors then
  see `QueueClosedError` and exit 0.
"""

import contextlib
import logging as std_logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.python.eager import context
from tensorflow.python.ops import gen_data_flow_ops, gen_resource_variable_ops

from scalable_agent2.config import ClusterConfig, parse_address
from scalable_agent2.errors import UsageError
from scalable_agent2.types import ActorOutput, AgentOutput, StepOutput, StepOutputInfo

LEARNER_JOB = 'learner'
ACTOR_JOB = 'actor'
LEARNER_DEVICE = f'/job:{LEARNER_JOB}/replica:0/task:0/device:CPU:0'
# Exit status of an actor command whose learner went away (the supervisor loop restarts it).
EXIT_LEARNER_LOST = 75  # EX_TEMPFAIL
_QUEUE_NAME = 'impala_unrolls'
_PARAMETERS_NAME = 'impala_parameters'
# An HTTP/2 client's connection preface and an empty SETTINGS frame (RFC 9113, 3.4 and 6.5).
_HTTP2_CLIENT_GREETING = (
    b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + b'\x00\x00\x00\x04\x00\x00\x00\x00\x00'
)
_HTTP2_SETTINGS = 4  # Frame type of SETTINGS, the first frame every HTTP/2 server sends.
_GREETING_SECS = 10.0  # How long one greeting waits for the server's first frame.
_GREETING_CLOSED_TRIES = 3  # Greetings closed without a word before giving up.


class LearnerUnreachableError(ConnectionError, UsageError):
    """The learner did not answer within the configured time (wrong address, not started)."""


class NotATensorFlowServerError(LearnerUnreachableError):
    """Something other than a TensorFlow (gRPC) server answers at the learner address."""


class LearnerLostError(ConnectionError):
    """The learner stopped answering during a run (it crashed, was killed or restarted)."""


class QueueClosedError(RuntimeError):
    """The learner closed the unroll queue: training is over."""


# --------------------------------------------------------------------------------------------
# Servers and connections.


def _server_error(address: str, e: Exception) -> UsageError:
    return UsageError(
        f'cannot start a TF gRPC server on port {parse_address(address)[1]} ({address}); '
        f'is the port in use? ({str(e).splitlines()[0]})'
    )


class _DropSessionConfigDump(std_logging.Filter):
    """Drops TF's 20-line 'default session config' INFO dump on connecting to a cluster."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not str(record.msg).startswith('default session config')


@contextlib.contextmanager
def _quiet_connect():
    quiet = _DropSessionConfigDump()
    logger = logging.get_absl_logger()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def start_learner_server(cluster: ClusterConfig) -> None:
    """Starts this process's gRPC server as the learner (task 0) and makes it the default.

    The spec holds only the learner, so the learner never waits for actors.
    """
    spec = tf.train.ClusterSpec({LEARNER_JOB: [cluster.learner_address]})
    with _quiet_connect():
        tf.config.experimental_connect_to_cluster(spec, job_name=LEARNER_JOB, task_index=0)
    try:
        context.context().ensure_initialized()
    except tf.errors.OpError as e:
        raise _server_error(cluster.learner_address, e) from e
    logging.info('Learner gRPC server up at %s (all interfaces).', cluster.learner_address)


def wait_for_port(address: str, timeout_secs: float, what: str = 'learner') -> float:
    """Waits until a TCP connection to `address` succeeds, with back-off and log lines.

    Returns:
      Seconds waited.

    Raises:
      LearnerUnreachableError: after `timeout_secs`.
    """
    host, port = parse_address(address)
    start = time.monotonic()
    delay, last_log = 0.05, start
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout_secs)):
                return time.monotonic() - start
        except OSError as e:
            error = e
        now = time.monotonic()
        waited = now - start
        if waited >= timeout_secs:
            raise LearnerUnreachableError(
                f'{what} at {address} unreachable after {waited:.1f}s '
                f'(connect_timeout_secs={timeout_secs:g}): {error}'
            )
        if now - last_log >= 5.0 or delay == 0.05:
            logging.info(
                'Waiting for the %s at %s (%.0fs so far): %s', what, address, waited, error
            )
            last_log = now
        time.sleep(min(delay, max(0.0, timeout_secs - waited)))
        delay = min(delay * 2.0, 2.0)


def _describe_reply(data: bytes) -> str:
    """A short, printable account of what a non-HTTP/2 service sent back."""
    if data.startswith(b'HTTP/'):
        status = data.split(b'\r\n', 1)[0].split(b'\n', 1)[0][:80]
        return f'it replied as an HTTP/1 server ({status.decode("latin-1")!r})'
    if data.lstrip()[:9].lower() == b'<!doctype' or b'<html' in data[:200].lower():
        return 'it replied with an HTML page (a web server?)'
    return f'it sent {data[:32]!r}'


def http2_greeting(address: str, timeout_secs: float = _GREETING_SECS) -> tuple[str, str]:
    """Greets `address` as an HTTP/2 client (gRPC runs on HTTP/2) and reads the first frame.

    Returns:
      (verdict, detail): ('http2', '') when a SETTINGS frame came back (as from any gRPC
      server, TF's included); ('other', what came) when bytes that are not HTTP/2 came;
      ('closed', how) when the connection closed or reset without a byte; ('silent', '')
      when nothing came within `timeout_secs`; ('refused', why) when no connection could be
      made.
    """
    host, port = parse_address(address)
    try:
        sock = socket.create_connection((host, port), timeout=timeout_secs)
    except OSError as e:
        return 'refused', str(e)
    data = b''
    try:
        with sock:
            sock.settimeout(timeout_secs)
            try:
                sock.sendall(_HTTP2_CLIENT_GREETING)
            except OSError:
                pass  # Closed on us: whatever it sent (if anything) is still readable.
            deadline = time.monotonic() + timeout_secs
            while len(data) < 9:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        if not data:
            return 'silent', ''
    except OSError as e:
        if not data:
            return 'closed', f'it reset the connection without a word ({e.strerror or e})'
    if not data:
        return 'closed', 'it closed the connection without a word'
    if len(data) >= 9:
        length = int.from_bytes(data[:3], 'big')
        stream = int.from_bytes(data[5:9], 'big') & 0x7FFFFFFF
        if data[3] == _HTTP2_SETTINGS and stream == 0 and length % 6 == 0:
            return 'http2', ''
    return 'other', _describe_reply(data)


def check_learner_speaks_grpc(address: str, timeout_secs: float) -> None:
    """Raises `NotATensorFlowServerError` unless the service at `address` speaks HTTP/2.

    A gRPC server (TF's) sends its SETTINGS frame as soon as a client greets it, so anything
    else is a wrong address: bytes that are not HTTP/2 fail at once; a connection closed
    without a word fails after `_GREETING_CLOSED_TRIES` greetings (a learner that is being
    restarted may drop one). A service that stays silent is left to TF's own (bounded) wait.
    A refused connection (the learner went away since the port answered) waits for the port
    again, up to `timeout_secs` in all.
    """
    deadline = time.monotonic() + timeout_secs
    closed = 0
    hint = 'check --learner_address (or TF_CONFIG) and that the learner job runs there'
    while True:
        left = deadline - time.monotonic()
        verdict, detail = http2_greeting(address, max(0.1, min(_GREETING_SECS, left)))
        if verdict == 'http2':
            return
        if verdict == 'silent':
            logging.warning(
                'The learner at %s accepted a connection but sent no HTTP/2 greeting within '
                '%.0fs; trying to connect anyway.',
                address,
                min(_GREETING_SECS, left),
            )
            return
        if verdict == 'other':
            raise NotATensorFlowServerError(
                f'the learner address {address} answers, but not as a TensorFlow server: '
                f'{detail}; {hint}'
            )
        if verdict == 'refused':
            wait_for_port(address, max(0.0, deadline - time.monotonic()))
            continue
        closed += 1
        if closed >= _GREETING_CLOSED_TRIES or time.monotonic() >= deadline:
            raise NotATensorFlowServerError(
                f'the learner address {address} answers, but not as a TensorFlow server: '
                f'{detail} ({closed} tries); {hint}'
            )
        time.sleep(min(0.5 * closed, max(0.0, deadline - time.monotonic())))


def _run_bounded(fn: Any, timeout_secs: float, on_timeout: Exception) -> Any:
    """Runs `fn()` in a daemon thread; raises `on_timeout` if it takes longer than allowed."""
    result: dict[str, Any] = {}

    def target():
        try:
            result['value'] = fn()
        except BaseException as e:  # Re-raised in the caller's thread.
            result['error'] = e

    thread = threading.Thread(target=target, daemon=True, name='bounded_call')
    thread.start()
    thread.join(timeout=max(0.0, timeout_secs))
    if thread.is_alive():
        raise on_timeout
    if 'error' in result:
        raise result['error']
    return result.get('value')


def connect_actor(cluster: ClusterConfig, task: int) -> None:
    """Starts actor `task`'s gRPC server and connects it to the learner.

    Waits for the learner (back-off and log lines) for at most `cluster.connect_timeout_secs`.

    Raises:
      LearnerUnreachableError: the learner did not answer in time.
      NotATensorFlowServerError: another service answers at the learner address.
      UsageError: this actor's port cannot be bound.
    """
    start = time.monotonic()
    wait_for_port(cluster.learner_address, cluster.connect_timeout_secs)
    check_learner_speaks_grpc(
        cluster.learner_address, cluster.connect_timeout_secs - (time.monotonic() - start)
    )
    address = cluster.actor_address(task)
    spec = tf.train.ClusterSpec(
        {LEARNER_JOB: [cluster.learner_address], ACTOR_JOB: {task: address}}
    )
    # Unary remote calls instead of one stream per client: an enqueue that fails because the
    # learner closed the queue then fails alone, where with streaming it poisons the stream's
    # executor on the learner, which logs "EagerExecutor shutdown with error" when this actor
    # disconnects at the end of every clean run. The actor makes few remote calls per unroll.
    os.environ.setdefault('TF_ENABLE_EAGER_CLIENT_STREAMING_ENQUEUE', 'false')
    filters = tf.config.experimental.ClusterDeviceFilters()
    filters.set_device_filters(
        ACTOR_JOB, task, [f'/job:{LEARNER_JOB}', f'/job:{ACTOR_JOB}/task:{task}']
    )
    with _quiet_connect():
        tf.config.experimental_connect_to_cluster(
            spec, job_name=ACTOR_JOB, task_index=task, cluster_device_filters=filters
        )
    left = cluster.connect_timeout_secs - (time.monotonic() - start)
    try:
        # TF itself would wait forever for a learner that went away after the port probe.
        _run_bounded(
            lambda: context.context().ensure_initialized(),
            left,
            LearnerUnreachableError(
                f'learner at {cluster.learner_address} accepted TCP but did not answer TF '
                f'within connect_timeout_secs={cluster.connect_timeout_secs:g}'
            ),
        )
    except tf.errors.OpError as e:
        raise _server_error(address, e) from e
    logging.info(
        'Actor %d (server %s) connected to the learner at %s after %.1fs.',
        task,
        address,
        cluster.learner_address,
        time.monotonic() - start,
    )


def translate_errors(e: Exception, learner_address: str) -> Exception:
    """Maps a TF error from a learner-hosted op to this module's named errors."""
    if isinstance(e, tf.errors.CancelledError | tf.errors.OutOfRangeError):
        return QueueClosedError('the learner closed the unroll queue (training finished)')
    if isinstance(e, tf.errors.UnavailableError | tf.errors.AbortedError):
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return LearnerLostError(f'lost the learner at {learner_address}: {first}')
    return e


# --------------------------------------------------------------------------------------------
# The unroll queue.


def unroll_spec(
    frame_shape: Sequence[int],
    frame_dtype: Any,
    num_actions: int,
    initial_state: Any,
    unroll_length: int,
) -> ActorOutput:
    """The `tf.TensorSpec` nest of one unroll as the queue stores it (no batch dimension).

    Args:
      frame_shape, frame_dtype: the environment's frame.
      num_actions: size of the action set (policy logits).
      initial_state: the agent's core state for one environment, nest of `[1, ...]`.
      unroll_length: T.

    Returns:
      `ActorOutput` of specs: level_name string `[]`, agent_state nest `[...]` (batch dim
      dropped), env_outputs and agent_outputs with `[T+1, ...]` fields.
    """
    t1 = unroll_length + 1
    return ActorOutput(
        level_name=tf.TensorSpec([], tf.string),
        agent_state=tf.nest.map_structure(
            lambda s: tf.TensorSpec(np.shape(s)[1:], tf.as_dtype(np.asarray(s).dtype)),
            initial_state,
        ),
        env_outputs=StepOutput(
            reward=tf.TensorSpec([t1], tf.float32),
            info=StepOutputInfo(
                tf.TensorSpec([t1], tf.float32),
                tf.TensorSpec([t1], tf.int32),
                tf.TensorSpec([t1], tf.bool),
            ),
            done=tf.TensorSpec([t1], tf.bool),
            observation=(
                tf.TensorSpec([t1, *frame_shape], tf.as_dtype(frame_dtype)),
                tf.TensorSpec([t1], tf.string),
            ),
        ),
        agent_outputs=AgentOutput(
            action=tf.TensorSpec([t1], tf.int32),
            policy_logits=tf.TensorSpec([t1, num_actions], tf.float32),
            baseline=tf.TensorSpec([t1], tf.float32),
        ),
    )


class UnrollQueue:
    """The learner-hosted FIFO queue of unrolls, shared by name between processes.

    Create it in the learner before publishing parameters, and in every actor once
    `ParameterStore.wait_published` returns (so the learner's layout is the one created).
    """

    def __init__(self, spec: ActorOutput, capacity: int, learner_address: str = 'the learner'):
        """Creates (or attaches to) the queue on the learner's CPU.

        Args:
          spec: `unroll_spec(...)`.
          capacity: unrolls the queue holds; enqueues block while it is full.
          learner_address: for error messages.
        """
        self._spec = spec
        self._flat_spec = tf.nest.flatten(spec)
        self._learner_address = learner_address
        self._dtypes = [s.dtype for s in self._flat_spec]
        try:
            # The raw op, not `tf.queue.FIFOQueue`: in eager mode the latter replaces
            # `shared_name` by a process-local unique id (so nothing would be shared) and
            # destroys the resource when the Python object dies (an exiting actor would delete
            # the learner's queue).
            with tf.device(LEARNER_DEVICE):
                self._handle = gen_data_flow_ops.fifo_queue_v2(
                    component_types=self._dtypes,
                    shapes=[s.shape for s in self._flat_spec],
                    capacity=capacity,
                    shared_name=_QUEUE_NAME,
                )
                # Remote ops run asynchronously: a synchronous one surfaces a layout mismatch
                # here rather than at some later op.
                gen_data_flow_ops.queue_size_v2(self._handle).numpy()
        except tf.errors.InvalidArgumentError as e:
            raise UsageError(
                "the learner's unroll queue has another layout than this process's "
                f'(different level, agent or unroll_length?): {str(e).splitlines()[0]}'
            ) from e
        except tf.errors.OpError as e:
            raise translate_errors(e, learner_address) from e

    @property
    def spec(self) -> ActorOutput:
        return self._spec

    def _flatten_unroll(self, unroll: ActorOutput) -> list[Any]:
        unroll = unroll._replace(
            agent_state=tf.nest.map_structure(lambda s: np.asarray(s)[0], unroll.agent_state)
        )
        flat = tf.nest.flatten(unroll)
        if len(flat) != len(self._flat_spec):
            raise ValueError(
                f'unroll has {len(flat)} tensors, the queue expects {len(self._flat_spec)}'
            )
        values = []
        for x, s in zip(flat, self._flat_spec, strict=True):
            if s.dtype == tf.string:
                x = np.asarray(x, dtype=object).astype(bytes)
            else:
                x = np.asarray(x, dtype=s.dtype.as_numpy_dtype)
            if not s.shape.is_compatible_with(x.shape):
                raise ValueError(f'unroll tensor of shape {x.shape} does not match {s}')
            values.append(x)
        return values

    def enqueue(self, unroll: ActorOutput) -> None:
        """Enqueues one unroll (as `actor.Actor.unroll` returns it); blocks while full.

        Raises:
          QueueClosedError: the learner finished.
          LearnerLostError: the learner went away.
        """
        values = self._flatten_unroll(unroll)
        try:
            with tf.device(LEARNER_DEVICE):
                gen_data_flow_ops.queue_enqueue_v2(self._handle, values)
                # Remote eager ops return before they run; a synchronous read after it (ops of
                # one client run in order) makes enqueue block until done and raise here.
                gen_data_flow_ops.queue_size_v2(self._handle).numpy()
        except tf.errors.OpError as e:
            raise translate_errors(e, self._learner_address) from e

    def dequeue_batch(self, batch_size: int) -> ActorOutput:
        """Dequeues `batch_size` unrolls as one time-major batch (learner side; blocks).

        Returns:
          `ActorOutput` of tensors: level_name string `[B]`, agent_state nest `[B, ...]`,
          env_outputs and agent_outputs with `[T+1, B, ...]` fields.

        Raises:
          QueueClosedError: the queue was closed.
        """
        try:
            with tf.device(LEARNER_DEVICE):
                flat = gen_data_flow_ops.queue_dequeue_many_v2(
                    self._handle, batch_size, component_types=self._dtypes
                )
        except tf.errors.OpError as e:
            raise translate_errors(e, self._learner_address) from e
        batch = tf.nest.pack_sequence_as(self._spec, flat)
        time_major = lambda t: tf.transpose(t, [1, 0, *range(2, t.shape.rank)])  # noqa: E731
        return batch._replace(
            env_outputs=tf.nest.map_structure(time_major, batch.env_outputs),
            agent_outputs=tf.nest.map_structure(time_major, batch.agent_outputs),
        )

    def size(self) -> int:
        with tf.device(LEARNER_DEVICE):
            return int(gen_data_flow_ops.queue_size_v2(self._handle).numpy())

    def close(self) -> None:
        """Closes the queue and cancels blocked enqueues (actors see `QueueClosedError`)."""
        with tf.device(LEARNER_DEVICE):
            gen_data_flow_ops.queue_close_v2(self._handle, cancel_pending_enqueues=True)


# --------------------------------------------------------------------------------------------
# Parameters.


class ParameterStore:
    """The agent's variables as published by the learner, readable by actors.

    One float32 resource variable with an explicit shared name on the learner's CPU holds all
    variables concatenated, followed by the int64 version (the learner's update count) bitcast
    into two float32 slots: one assign publishes, one read fetches a consistent snapshot.
    """

    def __init__(self, variables: Sequence[tf.Variable], learner_address: str = 'the learner'):
        """Attaches to (or creates) the learner-hosted variable.

        Args:
          variables: the local agent's variables in a fixed order (e.g.
            `agent.trainable_variables`); all float32 with static shapes.
          learner_address: for error messages.
        """
        variables = list(variables)
        for v in variables:
            if v.dtype != tf.float32:
                raise ValueError(f'variable {v.name} is {v.dtype.name}; only float32 is supported')
            if not v.shape.is_fully_defined():
                raise ValueError(f'variable {v.name} has no static shape ({v.shape})')
        self._variables = variables
        self._sizes = [int(v.shape.num_elements()) for v in variables]
        self._total = int(sum(self._sizes))
        self._learner_address = learner_address
        with tf.device(LEARNER_DEVICE):
            # Raw op: a `tf.Variable` would get a process-local name and delete it on exit.
            self._handle = gen_resource_variable_ops.var_handle_op(
                dtype=tf.float32, shape=[self._total + 2], shared_name=_PARAMETERS_NAME
            )
        self._publish = tf.function(self._publish_impl)
        self._read = tf.function(self._read_impl)

    @property
    def num_parameters(self) -> int:
        return self._total

    def _publish_impl(self, version):
        flat = [tf.reshape(v, [-1]) for v in self._variables]
        flat.append(tf.bitcast(version, tf.float32))
        flat = tf.concat(flat, axis=0)
        with tf.device(LEARNER_DEVICE):
            gen_resource_variable_ops.assign_variable_op(self._handle, flat)

    def publish(self, version: int) -> None:
        """Writes the variables' current values and `version` (learner side)."""
        self._publish(tf.constant(version, tf.int64))

    def _read_impl(self):
        with tf.device(LEARNER_DEVICE):
            flat = gen_resource_variable_ops.read_variable_op(self._handle, tf.float32)
        # Split where the local variables live, after one transfer of the vector.
        tf.debugging.assert_equal(
            tf.size(flat),
            self._total + 2,
            message='parameter count differs between the learner and this actor',
        )
        parts = tf.split(flat, [*self._sizes, 2])
        for v, p in zip(self._variables, parts[:-1], strict=True):
            v.assign(tf.reshape(p, v.shape))
        return tf.bitcast(parts[-1], tf.int64)

    def is_published(self) -> bool:
        """Whether the learner has published at least once."""
        try:
            with tf.device(LEARNER_DEVICE):
                return bool(gen_resource_variable_ops.var_is_initialized_op(self._handle).numpy())
        except tf.errors.OpError as e:
            raise translate_errors(e, self._learner_address) from e

    def wait_published(self, timeout_secs: float) -> None:
        """Blocks until the learner has published (polling with back-off)."""
        start, delay = time.monotonic(), 0.05
        while not self.is_published():
            waited = time.monotonic() - start
            if waited >= timeout_secs:
                raise LearnerUnreachableError(
                    f'the learner at {self._learner_address} published no parameters within '
                    f'{timeout_secs:g}s'
                )
            time.sleep(min(delay, timeout_secs - waited))
            delay = min(delay * 2.0, 1.0)

    def read_into(self) -> int:
        """Copies the published values into the local variables (actor side).

        Returns:
          The version (learner update count) that was read.

        Raises:
          ValueError: the learner's agent has another number of parameters.
          LearnerLostError: the learner went away.
        """
        try:
            return int(self._read().numpy())
        except tf.errors.InvalidArgumentError as e:
            raise UsageError(
                f"the learner publishes another number of parameters than this actor's agent "
                f'has ({self._total}); learner and actors must use the same agent flags'
            ) from e
        except tf.errors.OpError as e:
            raise translate_errors(e, self._learner_address) from e
