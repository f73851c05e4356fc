"""TF1's RMSProp (the original's optimizer) and Adam, and the learning-rate decay.

`RMSProp` has the semantics of TF1's `tf.compat.v1.train.RMSPropOptimizer`. `Adam` (TF1's
`AdamOptimizer`, Kingma & Ba) is an option the original did not have (`--optimizer=adam`).

The original IMPALA trains with the TF1 optimizer, which differs from Sonnet 2's `RMSProp`:
the mean-square accumulator starts at 1.0 (not 0), so early steps are small rather than huge.
Per variable (non-centred):

    ms  <- ms + (g^2 - ms) * (1 - decay)          # = decay * ms + (1 - decay) * g^2
    mom <- momentum * mom + lr * g / sqrt(ms + epsilon)
    var <- var - mom

Sparse gradients (`tf.IndexedSlices`, e.g. from an embedding) follow TF1 too: duplicate indices
are summed and only the touched rows of `var`, `ms` and `mom` change. That is done here with a
dense row mask rather than scatters so that the update compiles under XLA.
"""

from collections.abc import Callable, Sequence

import sonnet as snt
import tensorflow as tf

LearningRate = float | tf.Tensor | tf.Variable | Callable[[], tf.Tensor]


def linear_decay(learning_rate: float, num_frames: tf.Tensor, total_frames: int) -> tf.Tensor:
    """Linear decay to 0 (TF1 `polynomial_decay`, power 1, end 0, no cycling).

    Args:
      learning_rate: the initial learning rate.
      num_frames: int64 scalar, environment frames so far (the decay step).
      total_frames: frames at which the rate reaches 0 (the decay steps).

    Returns:
      float32 scalar, `learning_rate * (1 - min(num_frames, total_frames) / total_frames)`.
    """
    if total_frames <= 0:
        raise ValueError(f'total_frames must be > 0, got {total_frames!r}')
    # float32 arithmetic in TF1's order, so the rates match it bit for bit.
    total = tf.constant(total_frames, tf.float32)
    step = tf.minimum(tf.cast(num_frames, tf.float32), total)
    return tf.constant(learning_rate, tf.float32) * (1.0 - step / total)


def _row_mask(indices: tf.Tensor, num_rows: tf.Tensor, rank: int) -> tf.Tensor:
    """bool `[num_rows, 1, ...]` (rank `rank`), true on rows listed in `indices`."""
    hits = tf.math.unsorted_segment_max(
        tf.ones_like(indices, dtype=tf.int32), indices, num_segments=num_rows
    )
    return tf.reshape(hits > 0, tf.concat([[num_rows], tf.ones([rank - 1], tf.int32)], 0))


def _check_apply(
    name: str,
    updates: Sequence[object],
    parameters: Sequence[tf.Variable],
    num_slots: int,
) -> None:
    if len(updates) != len(parameters):
        raise ValueError(
            f'got {len(updates)} updates for {len(parameters)} parameters; they must match'
        )
    if not parameters:
        raise ValueError(f'{name}.apply needs at least one parameter')
    if num_slots != len(parameters):
        raise ValueError(
            f'optimizer was initialised for {num_slots} parameters, got {len(parameters)}'
        )


def _current_learning_rate(learning_rate: LearningRate) -> tf.Tensor:
    return tf.convert_to_tensor(learning_rate() if callable(learning_rate) else learning_rate)


class RMSProp(snt.Optimizer):
    """RMSProp with TF1 semantics (see module docstring); slots are checkpointable.

    Attributes:
      ms: mean-square accumulators (initialised to 1.0), one per parameter.
      mom: momentum accumulators (initialised to 0.0), one per parameter.
    """

    def __init__(
        self,
        learning_rate: LearningRate,
        decay: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-10,
        name: str | None = None,
    ):
        """Creates the optimizer.

        Args:
          learning_rate: a number, tensor, variable, or a zero-argument callable returning the
            current rate (read once per `apply`).
          decay: discount of the mean-square accumulator.
          momentum: TF1 momentum coefficient.
          epsilon: added to the mean square inside the square root.
          name: module name.
        """
        super().__init__(name=name)
        self.learning_rate = learning_rate
        self.decay = decay
        self.momentum = momentum
        self.epsilon = epsilon
        self.ms = []
        self.mom = []

    @snt.once
    def initialize(self, parameters: Sequence[tf.Variable]) -> None:
        """Creates the slots for `parameters` (once). Call before tracing a step with XLA."""
        with tf.name_scope('rms'):
            self.ms.extend(
                tf.Variable(tf.ones_like(p), trainable=False, name=p.name.split(':')[0])
                for p in parameters
            )
        with tf.name_scope('momentum'):
            self.mom.extend(
                tf.Variable(tf.zeros_like(p), trainable=False, name=p.name.split(':')[0])
                for p in parameters
            )

    def apply(
        self,
        updates: Sequence[tf.Tensor | tf.IndexedSlices | None],
        parameters: Sequence[tf.Variable],
    ) -> None:
        """Applies one update per parameter (gradients; `None` entries are skipped)."""
        if parameters:
            self.initialize(parameters)
        _check_apply('RMSProp', updates, parameters, len(self.ms))
        lr_all = _current_learning_rate(self.learning_rate)
        for g, var, ms, mom in zip(updates, parameters, self.ms, self.mom):
            if g is None:
                continue
            dtype = var.dtype
            lr = tf.cast(lr_all, dtype)
            decay = tf.cast(self.decay, dtype)
            momentum = tf.cast(self.momentum, dtype)
            epsilon = tf.cast(self.epsilon, dtype)
            if isinstance(g, tf.IndexedSlices):
                num_rows = tf.shape(var, out_type=tf.int32)[0]
                indices = tf.cast(g.indices, tf.int32)
                mask = _row_mask(indices, num_rows, var.shape.rank)
                # Summing duplicates, as TF1 does before its sparse kernel.
                grad = tf.math.unsorted_segment_sum(g.values, indices, num_segments=num_rows)
            else:
                mask = None
                grad = tf.convert_to_tensor(g)
            new_ms = ms + (tf.square(grad) - ms) * (1.0 - decay)
            new_mom = momentum * mom + lr * grad / tf.sqrt(new_ms + epsilon)
            delta = new_mom
            if mask is not None:
                # Untouched rows keep their slots and value.
                new_ms = tf.where(mask, new_ms, ms)
                new_mom = tf.where(mask, new_mom, mom)
                delta = tf.where(mask, new_mom, tf.zeros_like(new_mom))
            ms.assign(new_ms)
            mom.assign(new_mom)
            var.assign_sub(delta)


class Adam(snt.Optimizer):
    """Adam with TF1 `AdamOptimizer` semantics; slots are checkpointable.

    Per variable, at update t = 1, 2, ...:

        m   <- beta1 * m + (1 - beta1) * g
        v   <- beta2 * v + (1 - beta2) * g^2
        var <- var - lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + epsilon)

    Sparse gradients are densified first, which is what TF1's sparse Adam computes too (it
    decays `m` and `v` on every row and moves every row).

    Attributes:
      m, v: first- and second-moment accumulators (initialised to 0), one per parameter.
      step: int64, updates applied so far (t).
    """

    def __init__(
        self,
        learning_rate: LearningRate,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        name: str | None = None,
    ):
        """Creates the optimizer.

        Args:
          learning_rate: a number, tensor, variable, or a zero-argument callable returning the
            current rate (read once per `apply`).
          beta1, beta2: decay of the first- and second-moment accumulators.
          epsilon: added to the root of the second moment (outside the square root).
          name: module name.
        """
        super().__init__(name=name)
        self.learning_rate = learning_rate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='step')
        self.m = []
        self.v = []

    @snt.once
    def initialize(self, parameters: Sequence[tf.Variable]) -> None:
        """Creates the slots for `parameters` (once). Call before tracing a step with XLA."""
        for slots, scope in ((self.m, 'm'), (self.v, 'v')):
            with tf.name_scope(scope):
                slots.extend(
                    tf.Variable(tf.zeros_like(p), trainable=False, name=p.name.split(':')[0])
                    for p in parameters
                )

    def apply(
        self,
        updates: Sequence[tf.Tensor | tf.IndexedSlices | None],
        parameters: Sequence[tf.Variable],
    ) -> None:
        """Applies one update per parameter (gradients; `None` entries are skipped)."""
        if parameters:
            self.initialize(parameters)
        _check_apply('Adam', updates, parameters, len(self.m))
        lr_all = _current_learning_rate(self.learning_rate)
        self.step.assign_add(1)
        t = tf.cast(self.step, tf.float32)
        for g, var, m, v in zip(updates, parameters, self.m, self.v):
            if g is None:
                continue
            dtype = var.dtype
            grad = tf.convert_to_tensor(g)
            beta1 = tf.cast(self.beta1, dtype)
            beta2 = tf.cast(self.beta2, dtype)
            t_d = tf.cast(t, dtype)
            lr = tf.cast(lr_all, dtype) * tf.sqrt(1.0 - beta2**t_d) / (1.0 - beta1**t_d)
            new_m = m + (grad - m) * (1.0 - beta1)
            new_v = v + (tf.square(grad) - v) * (1.0 - beta2)
            m.assign(new_m)
            v.assign(new_v)
            var.assign_sub(lr * new_m / (tf.sqrt(new_v) + tf.cast(self.epsilon, dtype)))
