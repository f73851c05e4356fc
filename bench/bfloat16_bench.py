"""Does bfloat16 speed up the shallow torso on this CPU? float32 against bfloat16, same weights.

    python bench/bfloat16_bench.py [--repeats=15] [--learner_rows=672] [--inference_rows=16]

The torso (conv 16 8x8/4, conv 32 4x4/2, linear 256 on 84x84x4 frames) is most of the
learner's and of inference's compute. Times, as medians of `--repeats` calls after a warm-up:

* inference: forward pass on `--inference_rows` frames (one batched policy call);
* learner forward: forward pass on `--learner_rows` frames (B=32 x (T+1)=21 by default);
* learner forward+backward: the gradient of a sum of the output with respect to the weights.

The bfloat16 variant casts the frame and the weights to bfloat16 inside the same function
(what a mixed-precision forward pass would do) and the output back to float32. It also reports
the largest difference of the outputs, to show what the cast costs in precision. The CPU's flags
are printed: without AVX512-BF16 or AMX, bfloat16 has no native instructions here.
"""

import argparse
import statistics
import time

import numpy as np
import tensorflow as tf

from scalable_agent2 import networks


def cpu_flags() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    wanted = ('avx512f', 'avx512_bf16', 'amx_bf16', 'avx512_vnni', 'avx2')
                    return ' '.join(x for x in line.split() if x in wanted) or '(none of note)'
    except OSError:
        pass
    return '(unknown)'


def make_functions(torso: networks.ShallowTorso, dtype: tf.DType):
    by_name = {v.name.split('/', 1)[1].split(':')[0]: v for v in torso.trainable_variables}
    weights = [by_name[f'{layer}/{p}'] for layer in ('conv_1', 'conv_2', 'linear') for p in 'wb']

    def forward(frames):
        w1, b1, w2, b2, w3, b3 = [tf.cast(w, dtype) for w in weights]
        x = tf.cast(frames, dtype) / tf.constant(255.0, dtype)
        x = tf.nn.relu(tf.nn.conv2d(x, w1, 4, 'VALID') + b1)
        x = tf.nn.relu(tf.nn.conv2d(x, w2, 2, 'VALID') + b2)
        x = tf.reshape(x, [tf.shape(x)[0], -1])
        return tf.cast(tf.nn.relu(x @ w3 + b3), tf.float32)

    def forward_backward(frames):
        with tf.GradientTape() as tape:
            out = tf.reduce_sum(forward(frames))
        return tape.gradient(out, weights)

    return tf.function(forward), tf.function(forward_backward)


def median_ms(fn, arg, repeats: int) -> float:
    tf.nest.map_structure(lambda t: t.numpy(), fn(arg))  # Trace and warm up.
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn(arg))
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--learner_rows', type=int, default=32 * 21)
    parser.add_argument('--inference_rows', type=int, default=16)
    args = parser.parse_args()

    print(f'TensorFlow {tf.__version__}; CPU flags: {cpu_flags()}')
    rng = np.random.default_rng(0)
    torso = networks.ShallowTorso()
    frames = {
        'inference': tf.constant(rng.integers(0, 256, (args.inference_rows, 84, 84, 4), np.uint8)),
        'learner': tf.constant(rng.integers(0, 256, (args.learner_rows, 84, 84, 4), np.uint8)),
    }
    reference = torso(frames['inference'])  # Creates the weights.
    funcs = {dt.name: make_functions(torso, dt) for dt in (tf.float32, tf.bfloat16)}
    # The re-implementation computes what the torso computes.
    np.testing.assert_allclose(funcs['float32'][0](frames['inference']), reference, atol=1e-4)
    diff = np.max(
        np.abs(funcs['float32'][0](frames['learner']) - funcs['bfloat16'][0](frames['learner']))
    )
    rows = [
        ('inference forward', 0, 'inference'),
        ('learner forward', 0, 'learner'),
        ('learner forward+backward', 1, 'learner'),
    ]
    print(f'{"case":<26} {"rows":>5} {"float32 ms":>11} {"bfloat16 ms":>12} {"speed-up":>9}')
    for name, which, key in rows:
        f32 = median_ms(funcs['float32'][which], frames[key], args.repeats)
        b16 = median_ms(funcs['bfloat16'][which], frames[key], args.repeats)
        print(f'{name:<26} {frames[key].shape[0]:>5} {f32:>11.2f} {b16:>12.2f} {f32 / b16:>8.2f}x')
    print(f'largest output difference (learner forward): {diff:.4f}')


if __name__ == '__main__':
    main()
