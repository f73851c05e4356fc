"""Which DMLab-30 levels start and play an episode on the installed DeepMind Lab build.

    python bench/dmlab_levels.py [--levels=all|name,...] [--test] [--dataset_path=PATH|dummy]
        [--textures] [--timeout=900]

Each level runs in its own process (a missing map aborts DeepMind Lab's whole process), through
`environments.dmlab.DmLab` as training uses it: one episode from `reset` to its end, with
uniformly random actions from the original's action set, every observation read. Prints a
markdown table: agent steps, env frames (steps x action repeats), the return, env frames/s, the
first instruction, or the reason the level failed (the engine's last error line).
`--dataset_path=dummy` is DeepMind Lab's own stand-in for the psychlab stimuli: 2,400 flat
colours in place of the Brady, Konkle & Oliva (2008) object photographs.

`--textures` also lists which of the build's placeholder textures (`dmlab.placeholder_textures`)
each level loads during its episode. DeepMind Lab passes every texture it loads through the
level script's `modifyTexture`; a probe level that wraps the real one records the names. The
probe scripts live in a temporary folder of the installed engine's `game_scripts/levels` and are
removed at the end.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from scalable_agent2 import config as config_lib
from scalable_agent2.environments import dmlab
from scalable_agent2.scoring import dmlab30

PROBE = """local api = require '{module}'
local inner = api.modifyTexture
local seen = {{}}
function api:modifyTexture(name, texture)
  if not seen[name] then
    seen[name] = true
    print('TEXTURE_LOADED ' .. name)
  end
  if inner then
    return inner(self, name, texture)
  end
  return false
end
return api
"""


def write_probes(levels: list[str]) -> str:
    """A probe level per level in the installed engine; returns their folder."""
    import deepmind_lab  # Not in the parent's imports: only when probing.

    root = os.path.join(os.path.dirname(deepmind_lab.__file__), 'baselab', 'game_scripts')
    folder = tempfile.mkdtemp(prefix='texture_probe_', dir=os.path.join(root, 'levels'))
    for level in levels:
        module = 'levels.' + dmlab.full_level_name(level).replace('/', '.')
        with open(os.path.join(folder, level + '.lua'), 'w') as f:
            f.write(PROBE.format(module=module))
    return folder


def play_episode(level: str, is_test: bool, dataset_path: str, probe: str) -> dict:
    env_config = config_lib.EnvironmentConfig(dataset_path=dataset_path).validate()
    start = time.perf_counter()
    env = dmlab.DmLab(probe + level if probe else level, env_config, seed=1, is_test=is_test)
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


def survey(level: str, is_test: bool, dataset_path: str, probe: str, timeout: float) -> dict:
    cmd = [sys.executable, __file__, '--child=' + level, '--dataset_path=' + dataset_path]
    cmd += (['--test'] if is_test else []) + ([f'--probe={probe}'] if probe else [])
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'level': level, 'ok': False, 'reason': f'no episode end within {timeout:.0f} s'}
    if result.returncode == 0:
        lines = result.stdout.strip().splitlines()
        out = json.loads(lines[-1])
        out['textures'] = sorted({line.split()[1] for line in lines if 'TEXTURE_LOADED ' in line})
        return out
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
    parser.add_argument('--textures', action='store_true', help='list placeholders loaded')
    parser.add_argument('--timeout', type=float, default=900)
    parser.add_argument('--child', help=argparse.SUPPRESS)
    parser.add_argument('--probe', default='', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(play_episode(args.child, args.test, args.dataset_path, args.probe)))
        return
    names = dmlab30.TEST_LEVELS if args.test else dmlab30.TRAIN_LEVELS
    levels = list(names) if args.levels == 'all' else args.levels.split(',')
    probe_dir, probe, placeholders = '', '', set()
    if args.textures:
        import deepmind_lab

        # 'assets/textures/model/apple_d.tga' is loaded as 'textures/model/apple_d'.
        placeholders = {
            os.path.splitext(p.removeprefix('assets/'))[0]
            for p in dmlab.placeholder_textures(deepmind_lab)
        }
        probe_dir = write_probes(levels)
        probe = os.path.basename(probe_dir) + '/'
    print(
        '| level | runs | agent steps | env frames | return | env frames/s | instruction '
        '| placeholders loaded |'
    )
    print('|---|---|---|---|---|---|---|---|')
    try:
        for level in levels:
            r = survey(level, args.test, args.dataset_path, probe, args.timeout)
            if r['ok']:
                loaded = {os.path.splitext(t)[0] for t in r['textures']}  # With '.tga' or not.
                used = sorted(loaded & placeholders)
                shown = ', '.join(t.split('/')[-1] for t in used) if args.textures else ''
                print(
                    f'| {level} | yes | {r["steps"]} | {r["frames"]} | {r["return"]:g} '
                    f'| {r["frames_per_s"]} | {r["instruction"][:40]!r} '
                    f'| {len(used) if args.textures else ""} {shown} |',
                    flush=True,
                )
            else:
                print(f'| {level} | **no**: {r["reason"]} | | | | | | |', flush=True)
    finally:
        if probe_dir:
            shutil.rmtree(probe_dir)


if __name__ == '__main__':
    main()
