"""TensorFlow's start-up, read like a log: its C++ notices once each, the known noise hidden.

Importing TensorFlow and probing for GPUs writes C++ lines straight to file descriptor 2, some
of them twice (each native library prints its own "Could not find cuda drivers"), and on a
machine without a GPU an `E` line about `cuInit` that is not an error for a CPU run. Python's
logging cannot filter them, and `TF_CPP_MIN_LOG_LEVEL` does not reach the lines printed before
absl's C++ logging starts. So the command line starts TensorFlow with descriptor 2 sent to a
temporary file, then writes what was caught once per distinct line, leaving out the notices in
`NOISE` unless asked for everything (`--verbosity=1`).
"""

import os
import re
import sys
import tempfile
from collections.abc import Iterable

from absl import logging

# Start-up notices that say nothing a CPU or GPU run needs (matched anywhere in a line).
NOISE = re.compile(
    '|'.join(
        [
            r'All log messages before absl::InitializeLog\(\) is called',
            r'cudart_stub\.cc.*Could not find cuda drivers',
            r'cpu_feature_guard\.cc',
            r'^To enable the following instructions:',
            r'failed call to cuInit',
            r'oneDNN custom operations are on',
            r'Unable to register cu(DNN|FFT|BLAS) factory',
            r'computation placer already registered',
        ]
    )
)


def lines_to_show(lines: Iterable[str], show_all: bool) -> list[str]:
    """Each distinct line once, in first-seen order, without `NOISE` unless `show_all`."""
    seen: set[str] = set()
    shown = []
    for line in lines:
        # The C++ prefix holds a timestamp and a thread id: compare what follows it.
        key = re.sub(r'^[IWEF]\d{4} [\d:.]+ +\d+ ', '', line)
        if key in seen or not line.strip():
            continue
        seen.add(key)
        if show_all or not NOISE.search(line):
            shown.append(line)
    return shown


# TensorFlow's own best-fit allocator for host memory instead of malloc, which hands each
# large tensor fresh pages from the kernel: the learner step then spent more time in page
# faults than in some of its ops (docs/BENCHMARKS.md). Read once, when TensorFlow starts.
ALLOCATOR_ENVIRONMENT = {'TF_CPU_ALLOCATOR_USE_BFC': 'true'}


def use_fast_allocator() -> None:
    """Sets `ALLOCATOR_ENVIRONMENT` (unless already set) for a TensorFlow not yet started."""
    for name, value in ALLOCATOR_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def start_tensorflow(show_all: bool = False) -> list[str]:
    """Imports TensorFlow (with `use_fast_allocator`) and lists its GPUs with descriptor 2
    caught, then writes the caught lines to stderr (see `lines_to_show`). Thread pools can
    still be configured afterwards.

    Returns:
      The lines written.
    """
    if 'tensorflow' in sys.modules:
        return []
    use_fast_allocator()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode='w+b') as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf

            gpus = tf.config.list_physical_devices('GPU')
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode(errors='replace')
            shown = lines_to_show(text.splitlines(), show_all)
            if shown:
                sys.stderr.write('\n'.join(shown) + '\n')
                sys.stderr.flush()
    logging.info(
        'TensorFlow %s on %s.', tf.__version__, f'{len(gpus)} GPU(s)' if gpus else 'CPU only'
    )
    return shown
