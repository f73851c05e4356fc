"""The IMPALA agent in Sonnet 2: torsos, instruction encoder, LSTM core, policy/baseline heads.

Follows the original `experiment.py` Agent: frame (uint8 -> float / 255) through a torso, then
the torso output is concatenated with the clipped last reward, the one-hot last action and
(DeepMind Lab) an instruction encoding; an LSTM core whose state is reset to its initial state
wherever `done` is true *before* that step is consumed; linear policy-logit and baseline heads;
actions sampled from the logits.

Instructions are strings, which XLA cannot compile. `ImpalaAgent.tokenize` turns them into
hash-bucket ids outside any compiled region; `unroll` accepts env outputs either way.
"""

import math
from typing import Any, NamedTuple

import sonnet as snt
import tensorflow as tf

from scalable_agent2 import config as config_lib
from scalable_agent2.types import AgentOutput, StepOutput

NUM_HASH_BUCKETS = 1000
INSTRUCTION_EMBEDDING_SIZE = 20
INSTRUCTION_LSTM_SIZE = 64
TORSO_OUTPUT_SIZE = 256
MLP_HIDDEN_SIZES = (64, 64)
# Token axes are padded up to a multiple of this so compiled steps see few distinct shapes.
_TOKEN_PAD_MULTIPLE = 8


class InstructionTokens(NamedTuple):
    """A tokenized instruction.

    Attributes:
      buckets: int32 `[..., L]`, hash-bucket ids of the words, 0-padded after `lengths`.
      lengths: int32 `[...]`, number of words (0 for an empty instruction).
    """

    buckets: Any
    lengths: Any


def tokenize_instruction(instruction: tf.Tensor) -> InstructionTokens:
    """Splits on spaces (skipping empty words) and hashes words into 1000 buckets.

    Args:
      instruction: tf.string `[...]` (any leading shape).

    Returns:
      `InstructionTokens` with buckets `[..., L]`, L >= 1 and a multiple of 8.
    """
    instruction = tf.convert_to_tensor(instruction, dtype=tf.string)
    leading = tf.shape(instruction)
    words = tf.strings.split(tf.reshape(instruction, [-1]), sep=' ')
    words = tf.ragged.boolean_mask(words, tf.not_equal(words, ''))
    buckets = tf.cast(tf.strings.to_hash_bucket_fast(words, NUM_HASH_BUCKETS), tf.int32)
    lengths = tf.cast(buckets.row_lengths(), tf.int32)
    max_len = tf.reduce_max(tf.concat([lengths, [1]], 0))
    padded_len = (max_len + _TOKEN_PAD_MULTIPLE - 1) // _TOKEN_PAD_MULTIPLE * _TOKEN_PAD_MULTIPLE
    dense = buckets.to_tensor(default_value=0)
    dense = tf.pad(dense, [[0, 0], [0, padded_len - tf.shape(dense)[1]]])
    return InstructionTokens(
        buckets=tf.reshape(dense, tf.concat([leading, [padded_len]], 0)),
        lengths=tf.reshape(lengths, leading),
    )


def _glorot_uniform_lstm_init(input_size: int, hidden_size: int) -> snt.initializers.Initializer:
    """TF1 `LSTMBlockCell`'s kernel init: glorot-uniform over its fused [in + H, 4H] matrix."""
    limit = math.sqrt(6.0 / (input_size + hidden_size + 4 * hidden_size))
    return snt.initializers.RandomUniform(-limit, limit)


class _LazyLSTM(snt.Module):
    """`snt.LSTM` whose kernels use the original's initialisation; built on first call."""

    def __init__(self, hidden_size: int, name: str):
        super().__init__(name=name)
        self._hidden_size = hidden_size
        self._lstm = None

    def initial_state(self, batch_size) -> snt.LSTMState:
        zeros = tf.zeros([batch_size, self._hidden_size], tf.float32)
        return snt.LSTMState(hidden=zeros, cell=zeros)

    def _build(self, input_size: int) -> snt.LSTM:
        if self._lstm is None:
            init = _glorot_uniform_lstm_init(input_size, self._hidden_size)
            with self.name_scope:
                self._lstm = snt.LSTM(self._hidden_size, w_i_init=init, w_h_init=init, name='lstm')
                # Creates the weights (a graph prunes this unused call).
                self._lstm(tf.zeros([1, input_size]), self.initial_state(1))
        return self._lstm

    def __call__(self, inputs: tf.Tensor, state: snt.LSTMState):
        return self._build(inputs.shape[-1])(inputs, state)

    def unroll(
        self, inputs: tf.Tensor, reset: tf.Tensor, state: snt.LSTMState
    ) -> tuple[tf.Tensor, snt.LSTMState]:
        """`unroll_lstm` over `[T, B, D]` inputs (T static)."""
        return unroll_lstm(self._build(inputs.shape[-1]), inputs, reset, state)


def unroll_lstm(
    lstm: snt.LSTM, inputs: tf.Tensor, reset: tf.Tensor, state: snt.LSTMState
) -> tuple[tf.Tensor, snt.LSTMState]:
    """`lstm` step by step over a static number of steps, the state set to zeros where
    `reset[t]` before step t. The maths of `snt.LSTM`'s step, with the input projection of all
    steps done as one matmul, which is cheaper on a CPU than T small ones (docs/BENCHMARKS.md).

    Args:
      lstm: a built `snt.LSTM` without projection.
      inputs: float32 `[T, B, D]`, T static.
      reset: bool `[T, B]`.
      state: `snt.LSTMState` of float32 `[B, H]`.

    Returns:
      (outputs float32 `[T, B, H]`, the state after step T-1).
    """
    steps = inputs.shape[0]
    hidden_size = lstm.hidden_to_hidden.shape[0]
    resets = tf.unstack(reset, num=steps)
    gates_x = tf.matmul(_merge_leading(inputs), lstm.input_to_hidden)
    # Unstacked, not indexed: the gradient of T slices is then one stack, not T full-size sums.
    gates_x = tf.unstack(tf.reshape(gates_x, [steps, -1, 4 * hidden_size]), num=steps)
    hidden, cell = state.hidden, state.cell
    outputs = []
    for t in range(steps):
        zero = resets[t][:, tf.newaxis]
        hidden = tf.where(zero, tf.zeros_like(hidden), hidden)
        cell = tf.where(zero, tf.zeros_like(cell), cell)
        # As snt.LSTM's step: (x w_i + h w_h) + b, gates in the order i, f, g, o.
        gates = gates_x[t] + tf.matmul(hidden, lstm.hidden_to_hidden) + lstm.b
        i, f, g, o = tf.split(gates, num_or_size_splits=4, axis=1)
        cell = tf.sigmoid(f) * cell + tf.sigmoid(i) * tf.tanh(g)
        hidden = tf.sigmoid(o) * tf.tanh(cell)
        outputs.append(hidden)
    return tf.stack(outputs), snt.LSTMState(hidden=hidden, cell=cell)


class InstructionEncoder(snt.Module):
    """Embeds tokens (20-d), runs an LSTM of 64 over them, returns the last valid output."""

    def __init__(self, name: str = 'instruction_encoder'):
        super().__init__(name=name)
        # Sonnet 1's default (the original's): truncated normal, stddev 1. Sonnet 2's default
        # scales it by 1/sqrt(20).
        self._embed = snt.Embed(
            NUM_HASH_BUCKETS,
            INSTRUCTION_EMBEDDING_SIZE,
            initializer=snt.initializers.TruncatedNormal(stddev=1.0),
            name='embed',
        )
        self._lstm = _LazyLSTM(INSTRUCTION_LSTM_SIZE, name='language_lstm')

    def __call__(self, tokens: InstructionTokens) -> tf.Tensor:
        """Encodes a batch.

        Args:
          tokens: `InstructionTokens` with buckets int32 `[N, L]` (L >= 1), lengths int32 `[N]`.

        Returns:
          float32 `[N, 64]`; zeros where the length is 0.
        """
        buckets = tf.convert_to_tensor(tokens.buckets)
        lengths = tf.convert_to_tensor(tokens.lengths)
        embedded = self._embed(buckets)  # [N, L, 20]
        time_major = tf.transpose(embedded, [1, 0, 2])
        state = self._lstm.initial_state(tf.shape(buckets)[0])
        # Padding comes after the valid words, so outputs up to length-1 ignore it.
        outputs, _ = snt.dynamic_unroll(self._lstm, time_major, state)  # [L, N, 64]
        last = tf.gather(tf.transpose(outputs, [1, 0, 2]), tf.maximum(lengths - 1, 0), batch_dims=1)
        return tf.where((lengths > 0)[:, tf.newaxis], last, tf.zeros_like(last))


def _to_float_frame(frame: tf.Tensor) -> tf.Tensor:
    if frame.dtype == tf.uint8:
        return tf.cast(frame, tf.float32) / 255.0
    return tf.cast(frame, tf.float32)


class DeepTorso(snt.Module):
    """The original's ResNet: sections (16,2),(32,2),(32,2), then relu, flatten, linear 256."""

    def __init__(
        self, w_init: snt.initializers.Initializer | None = None, name: str = 'deep_torso'
    ):
        super().__init__(name=name)
        self._sections = []
        for i, (channels, num_blocks) in enumerate([(16, 2), (32, 2), (32, 2)]):
            conv = snt.Conv2D(
                channels, 3, stride=1, padding='SAME', w_init=w_init, name=f'conv_{i}'
            )
            blocks = [
                (
                    snt.Conv2D(
                        channels, 3, stride=1, padding='SAME', w_init=w_init, name=f'res_{i}_{j}_a'
                    ),
                    snt.Conv2D(
                        channels, 3, stride=1, padding='SAME', w_init=w_init, name=f'res_{i}_{j}_b'
                    ),
                )
                for j in range(num_blocks)
            ]
            self._sections.append((conv, blocks))
        self._linear = snt.Linear(TORSO_OUTPUT_SIZE, w_init=w_init, name='linear')

    def __call__(self, frame: tf.Tensor) -> tf.Tensor:
        """uint8 or float32 `[N, H, W, C]` -> float32 `[N, 256]`."""
        out = _to_float_frame(frame)
        for conv, blocks in self._sections:
            out = conv(out)
            out = tf.nn.max_pool2d(out, ksize=3, strides=2, padding='SAME')
            for conv_a, conv_b in blocks:
                block_input = out
                out = conv_b(tf.nn.relu(conv_a(tf.nn.relu(out))))
                out += block_input
        out = snt.Flatten()(tf.nn.relu(out))
        return tf.nn.relu(self._linear(out))


def space_to_depth(x: tf.Tensor, block: int) -> tf.Tensor:
    """`tf.nn.space_to_depth` as a reshape and a transpose, several times faster on a CPU
    (docs/BENCHMARKS.md).

    Args:
      x: `[N, H, W, C]`, H and W multiples of `block` (static).
      block: the block size b.

    Returns:
      `[N, H / b, W / b, b * b * C]`, channels in the order (row offset, column offset, channel).
    """
    height, width, channels = x.shape[1:]
    out = tf.reshape(x, [-1, height // block, block, width // block, block, channels])
    out = tf.transpose(out, [0, 1, 3, 2, 4, 5])
    return tf.reshape(out, [-1, height // block, width // block, block * block * channels])


def depth_to_space(x: tf.Tensor, block: int) -> tf.Tensor:
    """The inverse of `space_to_depth`: `[N, H, W, b * b * C]` -> `[N, H * b, W * b, C]`."""
    height, width, depth = x.shape[1:]
    channels = depth // (block * block)
    out = tf.reshape(x, [-1, height, width, block, block, channels])
    out = tf.transpose(out, [0, 1, 3, 2, 4, 5])
    return tf.reshape(out, [-1, height * block, width * block, channels])


def _blocks_of_kernel(w: tf.Tensor, stride: int) -> tf.Tensor:
    """`[k, k, C, O]` -> `[k/s, k/s, s*s*C, O]`: the kernel of the stride-1 convolution over
    `space_to_depth(x, s)` that equals the stride-s convolution with `w`."""
    k_h, k_w, channels, filters = w.shape
    out = tf.reshape(w, [k_h // stride, stride, k_w // stride, stride, channels, filters])
    out = tf.transpose(out, [0, 2, 1, 3, 4, 5])
    return tf.reshape(out, [k_h // stride, k_w // stride, stride * stride * channels, filters])


def _kernel_of_blocks(w_blocks: tf.Tensor, stride: int, channels: int) -> tf.Tensor:
    """The inverse of `_blocks_of_kernel`."""
    m_h, m_w, _, filters = w_blocks.shape
    out = tf.reshape(w_blocks, [m_h, m_w, stride, stride, channels, filters])
    out = tf.transpose(out, [0, 2, 1, 3, 4, 5])
    return tf.reshape(out, [m_h * stride, m_w * stride, channels, filters])


def _matmul_gradients(x_blocks, w_blocks, dy, input_gradient: bool):
    """Gradients of the stride-1 VALID convolution of `x_blocks` `[N, Hx, Wx, C]` with
    `w_blocks` `[m_h, m_w, C, O]` for the output gradient `dy`, as two large matmuls. With `D`,
    `dy` shifted by each kernel offset (a, b) and stacked on channels `[N, Hx, Wx, m_h*m_w*O]`:
    `dw[a, b] = x^T D[a, b]` summed over every position, and `dx = D w^T`. The same sums as the
    convolution's own gradients, in another order. Returns (dx or None, dw)."""
    m_h, m_w, channels, filters = w_blocks.shape
    shifted = [
        tf.pad(dy, [[0, 0], [a, m_h - 1 - a], [b, m_w - 1 - b], [0, 0]])
        for a in range(m_h)
        for b in range(m_w)
    ]
    d = tf.reshape(tf.concat(shifted, axis=-1), [-1, m_h * m_w * filters])
    dw = tf.matmul(tf.reshape(x_blocks, [-1, channels]), d, transpose_a=True)
    dw = tf.transpose(tf.reshape(dw, [channels, m_h, m_w, filters]), [1, 2, 0, 3])
    if not input_gradient:
        return None, dw
    w_t = tf.reshape(tf.transpose(w_blocks, [0, 1, 3, 2]), [m_h * m_w * filters, channels])
    return tf.reshape(tf.matmul(d, w_t), tf.shape(x_blocks)), dw


def strided_conv(conv: snt.Conv2D, x: tf.Tensor, stride: int) -> tf.Tensor:
    """`conv(x)` (a uint8 `x` as x / 255, as the original) for a VALID convolution whose kernel
    size is a multiple of its stride, with cheaper gradients.

    The forward pass is Sonnet's own. The gradients are those of the equal stride-1
    convolution over `space_to_depth(x, stride)` with the kernel rearranged, computed as two
    large matmuls (`_matmul_gradients`): TensorFlow's CPU kernels for the gradients of strided
    convolutions with few channels run at a fraction of its matmul speed (docs/BENCHMARKS.md).
    The variables are `conv`'s own, so checkpoints do not change.

    Args:
      conv: an `snt.Conv2D` with `padding='VALID'`, a `[k, k, C, O]` kernel, `stride` dividing
        k; built here on first use.
      x: uint8 (a frame: no input gradient) or float32 `[N, H, W, C]`, H, W, C static.
      stride: the convolution's stride.

    Returns:
      float32 `[N, (H - k) // stride + 1, (W - k) // stride + 1, O]`.
    """
    if not hasattr(conv, 'w'):  # Builds the weights (a graph prunes this unused call).
        kernel = conv.kernel_shape
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        conv(tf.zeros([1, *kernel, x.shape[-1]]))
    k_h, k_w, channels, _ = conv.w.shape
    if k_h % stride or k_w % stride:
        raise ValueError(f'kernel {k_h}x{k_w} is not a multiple of the stride {stride}')
    height, width = x.shape[1:3]
    # The rows and columns that the strided kernel reaches.
    used_h = (height - k_h) // stride * stride + k_h
    used_w = (width - k_w) // stride * stride + k_w
    input_gradient = x.dtype != tf.uint8

    @tf.custom_gradient
    def convolve(x, w):
        def grad(dy):
            used = x[:, :used_h, :used_w]
            dx_blocks, dw_blocks = _matmul_gradients(
                space_to_depth(used, stride), _blocks_of_kernel(w, stride), dy, input_gradient
            )
            dw = _kernel_of_blocks(dw_blocks, stride, channels)
            if dx_blocks is None:
                return None, dw
            dx = depth_to_space(dx_blocks, stride)
            return tf.pad(dx, [[0, 0], [0, height - used_h], [0, width - used_w], [0, 0]]), dw

        return tf.nn.conv2d(x, w, strides=stride, padding='VALID'), grad

    out = convolve(_to_float_frame(x), tf.identity(conv.w))
    return tf.nn.bias_add(out, conv.b) if conv.with_bias else out


class ShallowTorso(snt.Module):
    """The paper's shallow net: conv 16 8x8/4, conv 32 4x4/2 (VALID, as DQN), linear 256."""

    def __init__(
        self, w_init: snt.initializers.Initializer | None = None, name: str = 'shallow_torso'
    ):
        super().__init__(name=name)
        self._conv1 = snt.Conv2D(16, 8, stride=4, padding='VALID', w_init=w_init, name='conv_1')
        self._conv2 = snt.Conv2D(32, 4, stride=2, padding='VALID', w_init=w_init, name='conv_2')
        self._linear = snt.Linear(TORSO_OUTPUT_SIZE, w_init=w_init, name='linear')

    def __call__(self, frame: tf.Tensor) -> tf.Tensor:
        """uint8 or float32 `[N, H, W, C]` -> float32 `[N, 256]`."""
        out = tf.nn.relu(strided_conv(self._conv1, frame, stride=4))
        out = tf.nn.relu(strided_conv(self._conv2, out, stride=2))
        return tf.nn.relu(self._linear(snt.Flatten()(out)))


class MLPTorso(snt.Module):
    """For vector observations (not in the original): MLP 64-64 with relu."""

    def __init__(self, w_init: snt.initializers.Initializer | None = None, name: str = 'mlp_torso'):
        super().__init__(name=name)
        self._mlp = snt.nets.MLP(MLP_HIDDEN_SIZES, w_init=w_init, activate_final=True, name='mlp')

    def __call__(self, observation: tf.Tensor) -> tf.Tensor:
        """float32 (or uint8) `[N, D]` -> float32 `[N, 64]`."""
        return self._mlp(_to_float_frame(observation))


def make_torso(torso: str, w_init: snt.initializers.Initializer | None = None) -> snt.Module:
    """Returns the torso module named by `torso` ('deep', 'shallow' or 'mlp'); `w_init` for
    its weights (None: Sonnet's default)."""
    if torso == 'deep':
        return DeepTorso(w_init)
    elif torso == 'shallow':
        return ShallowTorso(w_init)
    elif torso == 'mlp':
        return MLPTorso(w_init)
    else:
        raise ValueError(f'unknown torso {torso!r}; expected one of {config_lib.TORSOS}')


def _merge_leading(t: tf.Tensor) -> tf.Tensor:
    shape = tf.shape(t)
    return tf.reshape(t, tf.concat([[shape[0] * shape[1]], shape[2:]], 0))


def _split_leading(t: tf.Tensor, time: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
    return tf.reshape(t, tf.concat([[time, batch], tf.shape(t)[1:]], 0))


class ImpalaAgent(snt.RNNCore):
    """The IMPALA agent (see module docstring)."""

    def __init__(self, config: config_lib.AgentConfig, name: str = 'impala_agent'):
        super().__init__(name=name)
        self._config = config.validate()
        self._num_actions = config.num_actions
        heads = {'policy_logits': None, 'baseline': None}
        torso_init = None
        if config.initializer == 'orthogonal':  # docs/RESULTS.md: the PPO Atari init.
            torso_init = snt.initializers.Orthogonal(gain=math.sqrt(2.0))
            heads = {
                'policy_logits': snt.initializers.Orthogonal(gain=0.01),
                'baseline': snt.initializers.Orthogonal(gain=1.0),
            }
        self._torso = make_torso(config.torso, torso_init)
        self._instruction_encoder = InstructionEncoder() if config.use_instruction else None
        # docs/RESULTS.md ("The LSTM agent"): keeps the torso's scale out of the core's gates.
        self._torso_norm = (
            snt.LayerNorm(-1, create_scale=True, create_offset=True, name='torso_norm')
            if config.torso_layer_norm
            else None
        )
        self._core = _LazyLSTM(config.core_size, name='core')
        self._policy_logits = snt.Linear(
            config.num_actions, w_init=heads['policy_logits'], name='policy_logits'
        )
        self._baseline = snt.Linear(1, w_init=heads['baseline'], name='baseline')
        self._built = False

    @property
    def config(self) -> config_lib.AgentConfig:
        return self._config

    @property
    def built(self) -> bool:
        """Whether all variables exist (the first step or unroll creates them)."""
        return self._built

    def initial_state(self, batch_size: int) -> snt.LSTMState:
        """Zero core state: `snt.LSTMState` of float32 `[batch_size, core_size]`."""
        return self._core.initial_state(batch_size)

    def tokenize(self, env_outputs: StepOutput) -> StepOutput:
        """Returns `env_outputs` with the string instruction replaced by `InstructionTokens`.

        Without `use_instruction` the instruction is replaced by `()` (it is never read).
        Already-tokenized inputs pass through unchanged. Not XLA-compilable (string ops).
        """
        frame, instruction = env_outputs.observation
        if isinstance(instruction, InstructionTokens | tuple):
            return env_outputs
        if self._instruction_encoder is None:
            return env_outputs._replace(observation=(frame, ()))
        return env_outputs._replace(observation=(frame, tokenize_instruction(instruction)))

    def __call__(self, inputs, prev_state) -> tuple[AgentOutput, snt.LSTMState]:
        """One step for a batch of actors.

        Args:
          inputs: `(last_action, env_output)`: last_action int32 `[B]`; env_output a
            `StepOutput` with reward float32 `[B]`, done bool `[B]`, observation
            `(frame uint8 [B, H, W, C] or float32 [B, D], instruction tf.string [B])`.
          prev_state: core state, `snt.LSTMState` of float32 `[B, core_size]`.

        Returns:
          (`AgentOutput` of `[B]`/`[B, A]` fields, new core state).
        """
        last_action, env_output = inputs
        actions, env_outputs = tf.nest.map_structure(
            lambda t: tf.expand_dims(t, 0), (last_action, env_output)
        )
        outputs, state = self.unroll(actions, env_outputs, prev_state)
        return tf.nest.map_structure(lambda t: tf.squeeze(t, 0), outputs), state

    def unroll(
        self, actions: tf.Tensor, env_outputs: StepOutput, core_state: snt.LSTMState
    ) -> tuple[AgentOutput, snt.LSTMState]:
        """Runs the agent over `T` steps.

        Args:
          actions: int32 `[T, B]`, the last action that goes with each env output.
          env_outputs: `StepOutput` with `[T, B, ...]` fields (instruction as strings or as
            `InstructionTokens` from `tokenize`).
          core_state: core state at the start, `snt.LSTMState` of float32 `[B, core_size]`.

        Returns:
          (`AgentOutput` with action int32 `[T, B]`, policy_logits float32 `[T, B, A]`,
          baseline float32 `[T, B]`; the core state after the last step).
        """
        env_outputs = self.tokenize(env_outputs)
        actions = tf.convert_to_tensor(actions, tf.int32)
        if actions.shape.rank != 2:
            raise ValueError(f'actions must be [T, B], got shape {actions.shape}')
        time, batch = tf.shape(actions)[0], tf.shape(actions)[1]
        torso_out = self._torso_and_extras(actions, env_outputs)  # [T*B, D]
        torso_out = _split_leading(torso_out, time, batch)
        done = tf.convert_to_tensor(env_outputs.done, tf.bool)
        if self._config.use_lstm:
            core_out, core_state = self._run_core(torso_out, done, core_state)
        else:  # Feed-forward: the heads read the torso output; the state passes through.
            core_out = torso_out
        flat = _merge_leading(core_out)
        logits = self._policy_logits(flat)
        baseline = tf.squeeze(self._baseline(flat), axis=-1)
        action = tf.squeeze(tf.random.categorical(logits, 1, dtype=tf.int32), axis=1)
        outputs = AgentOutput(action=action, policy_logits=logits, baseline=baseline)
        self._built = True
        return tf.nest.map_structure(lambda t: _split_leading(t, time, batch), outputs), core_state

    def _torso_and_extras(self, actions: tf.Tensor, env_outputs: StepOutput) -> tf.Tensor:
        frame, tokens = env_outputs.observation
        torso_out = self._torso(_merge_leading(tf.convert_to_tensor(frame)))
        if self._torso_norm is not None:
            torso_out = self._torso_norm(torso_out)
        reward = _merge_leading(tf.convert_to_tensor(env_outputs.reward, tf.float32))
        clipped_reward = tf.clip_by_value(reward, -1.0, 1.0)[:, tf.newaxis]
        one_hot = tf.one_hot(_merge_leading(actions), self._num_actions, dtype=tf.float32)
        parts = [torso_out, clipped_reward, one_hot]
        if self._instruction_encoder is not None:
            flat_tokens = InstructionTokens(
                buckets=_merge_leading(tf.convert_to_tensor(tokens.buckets)),
                lengths=_merge_leading(tf.convert_to_tensor(tokens.lengths)),
            )
            parts.append(self._instruction_encoder(flat_tokens))
        return tf.concat(parts, axis=1)

    def _run_core(self, inputs: tf.Tensor, done: tf.Tensor, state: snt.LSTMState):
        """LSTM over `[T, B, D]`, resetting the state where `done[t]` before step t."""
        if inputs.shape[0] is not None:  # Static T: a Python unroll (as the original).
            return self._core.unroll(inputs, done, state)
        initial = self.initial_state(tf.shape(done)[1])

        def reset(d, s):
            return tf.nest.map_structure(
                lambda init, x: tf.where(d[:, tf.newaxis], init, x), initial, s
            )

        def body(carry, elems):
            out, state = self._core(elems[0], reset(elems[1], carry[1]))
            return out, state

        first = tf.zeros([tf.shape(done)[1], self._config.core_size], tf.float32)
        outputs, states = tf.scan(body, (inputs, done), initializer=(first, state))
        return outputs, tf.nest.map_structure(lambda s: s[-1], states)
