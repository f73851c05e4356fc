"""Median time per V-trace call: XLA-compiled vs plain graph `tf.scan` vs numpy.

    python bench/vtrace_bench.py [--rounds=30]

Each configuration times `vtrace.from_logits` inside a `tf.function`, as the learner calls it,
after warm-up (tracing and compilation are excluded). The three variants are timed in turn,
call by call, so that load from other processes affects them alike. Prints a markdown table.
"""

import argparse
import functools
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


def _interleaved_medians(fns, rounds: int, calls: int = 20, warmup: int = 5) -> list[float]:
    """Median over rounds of the mean seconds per call of each fn.

    Each round times `calls` back-to-back calls of every fn in turn, so that load drift from
    other processes hits all variants alike while each block runs warm.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, fn_times in zip(fns, times):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            fn_times.append((time.perf_counter() - start) / calls)
    return [statistics.median(t) for t in times]


def _xla_launch_floor(rounds: int) -> float:
    """Seconds per call of a trivial XLA-compiled function called from a `tf.function`."""
    x = tf.zeros((100, 32))
    trivial = tf.function(lambda a: a + 1.0, jit_compile=True)
    outer = tf.function(lambda: trivial(x))
    return _interleaved_medians([lambda: outer().numpy()], rounds)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=30)
    args = parser.parse_args()

    print(f'TensorFlow {tf.__version__}; median over {args.rounds} rounds of 20 calls each.\n')
    floor = _xla_launch_floor(args.rounds)
    print(
        f'XLA launch floor (a trivial jit_compile function called from a graph): '
        f'{floor * 1e3:.3f} ms\n'
    )
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

        def make(use_xla, tensors=tensors):
            @tf.function
            def call():
                out = vtrace.from_logits(**tensors, use_xla=use_xla)
                return out.vs, out.pg_advantages

            return lambda: [t.numpy() for t in call()]

        numpy_call = functools.partial(numpy_from_logits, *arrays.values())
        xla, scan, numpy_time = _interleaved_medians(
            [make(True), make(False), numpy_call], args.rounds
        )
        print(
            f'| {num_steps} | {batch} | {num_actions} | {xla * 1e3:.3f} | {scan * 1e3:.3f} | '
            f'{numpy_time * 1e3:.3f} | {scan / xla:.1f}x | {numpy_time / xla:.1f}x |'
        )


if __name__ == '__main__':
    main()
