import os
import subprocess
import sys

from scalable_agent2 import tf_startup

CAUGHT = [
    'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR',
    'I0000 00:00:1796236736.642990   12493 cudart_stub.cc:31] Could not find cuda drivers on '
    'your machine, GPU will not be used.',
    'W0000 00:00:1796236736.7   12493 some_op.cc:10] a warning worth reading',
    'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR',
    'I0000 00:00:1796236740.211056   12493 cudart_stub.cc:31] Could not find cuda drivers on '
    'your machine, GPU will not be used.',
    'E0000 00:00:1796236739.329678   12493 cuda_platform.cc:52] failed call to cuInit: INTERNAL',
    'W0000 00:00:1796236799.1   12494 some_op.cc:10] a warning worth reading',
    '',
]


def test_lines_are_shown_once_and_noise_only_when_asked():
    assert tf_startup.lines_to_show(CAUGHT, show_all=False) == [CAUGHT[2]]
    assert tf_startup.lines_to_show(CAUGHT, show_all=True) == [*CAUGHT[:3], CAUGHT[5]]


def test_a_fresh_process_starts_tensorflow_with_each_line_once():
    code = (
        'from scalable_agent2 import tf_startup\n'
        'import sys\n'
        'shown = tf_startup.start_tensorflow(show_all=sys.argv[1] == "all")\n'
        'print(len(shown))\n'
    )
    for mode in ('all', 'quiet'):
        proc = subprocess.run(
            [sys.executable, '-c', code, mode], capture_output=True, text=True, timeout=180
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert int(proc.stdout) == len(lines)  # Everything on stderr came through the filter.
        assert len(tf_startup.lines_to_show(lines, show_all=True)) == len(lines)  # No repeats.
        if mode == 'quiet':
            assert not any(tf_startup.NOISE.search(line) for line in lines), lines


def test_tensorflow_starts_with_its_own_host_allocator_unless_told_otherwise():
    code = (
        'import os\n'
        'from scalable_agent2 import tf_startup\n'
        'tf_startup.start_tensorflow()\n'
        'print(os.environ["TF_CPU_ALLOCATOR_USE_BFC"])\n'
    )
    for preset, expected in ((None, 'true'), ('false', 'false')):
        env = {k: v for k, v in os.environ.items() if k != 'TF_CPU_ALLOCATOR_USE_BFC'}
        if preset is not None:
            env['TF_CPU_ALLOCATOR_USE_BFC'] = preset
        proc = subprocess.run(
            [sys.executable, '-c', code], capture_output=True, text=True, timeout=180, env=env
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == expected
