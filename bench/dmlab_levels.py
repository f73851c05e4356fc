"""Which DMLab-30 levels start and play an episode on the installed DeepMind Lab build.

    python bench/dmlab_levels.py [--levels=all|name,...] [--test] [--dataset_path=PATH|dummy]
        [--timeout=900]

Each level runs in its own process (a missing map aborts DeepMind Lab's whole process), through
`environments.dmlab.DmLab` as training uses it: one episode from `reset` to its end, with
uniformly random actions from the original's action set, every observation read. Prints a
markdown table: agent steps, env frames (steps x action repeats), the return, env frames/s, the
first instruction, or the reason the level failed (the engine's last error line).
`--dataset_path=dummy` is DeepMind Lab's own stand-in for the psychlab stimuli: 2,400 flat
colours in place of the Brady, Konkle & Oliva (2008) object photographs.
"""

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from scalable_agent2 import config as config_lib
from scalable_agent2.environments import dmlab
from scalable_agent2.scoring import dmlab30


def play_episode(level: str, is_test: bool, dataset_path: str) -> dict:
    env_config = config_lib.EnvironmentConfig(dataset_path=dataset_path).validate()
    start = time.perf_counter()
    env = dmlab.DmLab(level, env_config, seed=1, is_test=is_test)
    frame, instruction = env.reset()
    started = time.perf_counter()
    rng = np.random.default_rng(1)
    steps, total, done = 0, 0.0, False
    while not done:
        reward, done, _ = env.step(int(rng.integers(env.num_actions)))
        total += reward
        steps += 1
    seconds = time.perf_counter() - started
    env.close()
    return {
        'level': level,
        'ok': True,
        'start_s': round(started - start, 2),
        'steps': steps,
        'frames': steps * env_config.num_action_repeats,
        'return': total,
        'frames_per_s': round(steps * env_config.num_action_repeats / seconds),
        'frame_shape': list(frame.shape),
        'instruction': instruction,
    }


def survey(level: str, is_test: bool, dataset_path: str, timeout: float) -> dict:
    cmd = [sys.executable, __file__, '--child=' + level, '--dataset_path=' + dataset_path]
    cmd += ['--test'] if is_test else []
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'level': level, 'ok': False, 'reason': f'no episode end within {timeout:.0f} s'}
    if result.returncode == 0:
        return json.loads(result.stdout.strip().splitlines()[-1])
    lines = [
        line.strip()
        for line in result.stderr.splitlines()
        if line.strip() and not line.lstrip().startswith(('@', '[symbolize', '*** '))
    ]
    errors = [
        line
        for line in lines
        if 'Check failed' in line or "Didn't find" in line or 'Error' in line or 'rror:' in line
    ]
    reason = (errors or lines or [f'exit code {result.returncode}'])[-1]
    return {'level': level, 'ok': False, 'reason': reason[:200]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--levels', default='all')
    parser.add_argument('--test', action='store_true', help='the test levels and test config')
    parser.add_argument('--dataset_path', default='')
    parser.add_argument('--timeout', type=float, default=900)
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(play_episode(args.child, args.test, args.dataset_path)))
        return
    names = dmlab30.TEST_LEVELS if args.test else dmlab30.TRAIN_LEVELS
    levels = names if args.levels == 'all' else args.levels.split(',')
    print('| level | runs | agent steps | env frames | return | env frames/s | instruction |')
    print('|---|---|---|---|---|---|---|')
    for level in levels:
        r = survey(level, args.test, args.dataset_path, args.timeout)
        if r['ok']:
            print(
                f'| {level} | yes | {r["steps"]} | {r["frames"]} | {r["return"]:g} '
                f'| {r["frames_per_s"]} | {r["instruction"][:40]!r} |',
                flush=True,
            )
        else:
            print(f'| {level} | **no**: {r["reason"]} | | | | | |', flush=True)


if __name__ == '__main__':
    main()
