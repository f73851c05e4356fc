"""Median time per V-trace call: XLA-compiled vs plain graph `tf.scan` vs numpy.

    python bench/vtrace_bench.py [--repeats=200]

Each configuration times `vtrace.from_logits` inside a `tf.function`, as the learner calls it,
after warm-up (tracing and compilation are excluded). Prints a markdown table.
"""

import argparse
import statistics
import time

import numpy as np
import tensorflow as tf

from scalable_agent2 import vtrace

CONFIGS = ((100, 32, 9), (20, 32, 18))  # (T, B, A)


def numpy_from_logits(behaviour_logits, target_logits, actions, discounts, rewards, values, boot):
    """A straightforward numpy V-trace (rho-bar = c-bar = pg rho-bar = 1)."""

    def action_log_probs(logits):
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        return np.take_along_axis(log_softmax, actions[..., None], axis=-1)[..., 0]

    rhos = np.exp(action_log_probs(target_logits) - action_log_probs(behaviour_logits))
    clipped = np.minimum(1.0, rhos)
    values_tp1 = np.concatenate([values[1:], boot[None]], axis=0)
    deltas = clipped * (rewards + discounts * values_tp1 - values)
    acc = np.zeros_like(boot)
    vs_minus_v = np.empty_like(values)
    for t in reversed(range(values.shape[0])):
        acc = deltas[t] + discounts[t] * clipped[t] * acc
        vs_minus_v[t] = acc
    vs = values + vs_minus_v
    vs_tp1 = np.concatenate([vs[1:], boot[None]], axis=0)
    return vs, clipped * (rewards + discounts * vs_tp1 - values)


def _median_seconds(fn, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=200)
    args = parser.parse_args()

    print(f'TensorFlow {tf.__version__}; median of {args.repeats} calls each.\n')
    print('| T | B | A | XLA (ms) | tf.scan graph (ms) | numpy (ms) | scan / XLA | numpy / XLA |')
    print('|---|---|---|---|---|---|---|---|')
    for num_steps, batch, num_actions in CONFIGS:
        rng = np.random.default_rng(0)
        arrays = dict(
            behaviour_policy_logits=rng.normal(size=(num_steps, batch, num_actions)),
            target_policy_logits=rng.normal(size=(num_steps, batch, num_actions)),
            actions=rng.integers(0, num_actions, size=(num_steps, batch)),
            discounts=rng.choice([0.0, 0.99], p=[0.01, 0.99], size=(num_steps, batch)),
            rewards=rng.normal(size=(num_steps, batch)),
            values=rng.normal(size=(num_steps, batch)),
            bootstrap_value=rng.normal(size=(batch,)),
        )
        arrays = {
            k: v.astype(np.int32 if k == 'actions' else np.float32) for k, v in arrays.items()
        }
        tensors = {k: tf.constant(v) for k, v in arrays.items()}

        def make(use_xla):
            @tf.function
            def call():
                out = vtrace.from_logits(**tensors, use_xla=use_xla)
                return out.vs, out.pg_advantages

            return lambda: [t.numpy() for t in call()]

        xla = _median_seconds(make(True), args.repeats)
        scan = _median_seconds(make(False), args.repeats)
        numpy_time = _median_seconds(lambda: numpy_from_logits(*arrays.values()), args.repeats)
        print(
            f'| {num_steps} | {batch} | {num_actions} | {xla * 1e3:.3f} | {scan * 1e3:.3f} | '
            f'{numpy_time * 1e3:.3f} | {scan / xla:.1f}x | {numpy_time / xla:.1f}x |'
        )


if __name__ == '__main__':
    main()
