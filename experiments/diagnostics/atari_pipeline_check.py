"""Checks the package's Atari frames step by step against Gymnasium's `AtariPreprocessing`.

    .venv/bin/pip install opencv-python-headless   # the reference needs OpenCV
    .venv/bin/python experiments/diagnostics/atari_pipeline_check.py --game=Pong --num_envs=8

Each of `num_envs` games runs twice from the same seed and actions: once in the package's
`AtariBatch` (ale-py's C++ vector environment), once as Gymnasium's reference pipeline, i.e.
`ALE/<Game>-v5` with `frameskip=1`, no sticky actions and the minimal action set, inside
`AtariPreprocessing` (frame skip 4, the maximum of the last two raw frames, 84x84 grayscale
with OpenCV's area interpolation) and a 4-frame stack padded with zeros. The reference starts
with as many single-frame no-ops as the package's game did (read from ale-py's
`episode_frame_number` after the reset), so both parities of the no-op count are covered. It
compares every stacked observation, reward and episode end until each game's first end (the
package's environment then resets itself with a new no-op draw). Prints one line per game and
exits non-zero on any difference.
"""

import sys

import ale_py
import gymnasium as gym
import numpy as np
from absl import app, flags
from gymnasium.wrappers import AtariPreprocessing

from scalable_agent2 import config
from scalable_agent2.environments import atari

_GAME = flags.DEFINE_string('game', 'Pong', 'ALE game.')
_NUM_ENVS = flags.DEFINE_integer('num_envs', 8, 'Games (seeds 1..num_envs).')
_MAX_STEPS = flags.DEFINE_integer('max_steps', 5000, 'Agent steps at most.')


class _FixedNoops(AtariPreprocessing):
    """`AtariPreprocessing` that starts with exactly `noops` single-frame no-ops."""

    def __init__(self, env: gym.Env, noops: int):
        super().__init__(env, noop_max=0, frame_skip=4, screen_size=84, grayscale_obs=True)
        self._noops = noops

    def reset(self, *, seed=None, options=None):
        _, info = self.env.reset(seed=seed, options=options)
        for _ in range(self._noops):
            self.env.step(0)
        self.lives = self.ale.lives()
        self.ale.getScreenGrayscale(self.obs_buffer[0])
        self.obs_buffer[1].fill(0)
        return self._get_obs(), info


def main(argv):
    del argv
    gym.register_envs(ale_py)
    game, n = _GAME.value, _NUM_ENVS.value
    cfg = config.EnvironmentConfig(atari_terminal_on_life_loss=False).validate()
    seeds = list(range(1, n + 1))
    probe = atari.vector_env(atari.rom_id(game), cfg, n, 1)
    _, info = probe.reset(seed=np.asarray(seeds))
    noops = [int(x) for x in info['episode_frame_number']]
    probe.close()
    batch = atari.AtariBatch([f'atari/{game}'] * n, cfg, seeds, is_test=True)
    out = batch.initial()
    refs, stacks = [], []
    for i, seed in enumerate(seeds):
        env = _FixedNoops(
            gym.make(f'ALE/{game}-v5', frameskip=1, repeat_action_probability=0.0), noops[i]
        )
        obs, _ = env.reset(seed=seed)
        stack = np.zeros((84, 84, 4), np.uint8)
        stack[..., -1] = obs
        refs.append(env)
        stacks.append(stack)
    diffs = [int(not np.array_equal(stacks[i], out.observation[0][i])) for i in range(n)]
    steps = [0] * n
    live = set(range(n))
    rng = np.random.default_rng(0)
    for _ in range(_MAX_STEPS.value):
        if not live:
            break
        actions = rng.integers(0, batch.num_actions, n)
        batch.send(actions)
        out = batch.receive()
        for i in sorted(live):
            obs, reward, terminated, truncated, _ = refs[i].step(int(actions[i]))
            steps[i] += 1
            done = terminated or truncated
            if reward != out.reward[i] or done != bool(out.done[i]):
                diffs[i] += 1
            if done:  # The package's game resets itself here with its own no-op draw.
                live.discard(i)
                continue
            stacks[i] = np.concatenate([stacks[i][..., 1:], obs[..., None]], axis=-1)
            diffs[i] += int(not np.array_equal(stacks[i], out.observation[0][i]))
    batch.close()
    for i in range(n):
        parity = 'odd' if noops[i] % 2 else 'even'
        print(
            f'game {i} (seed {seeds[i]}): {noops[i]} no-ops ({parity}), '
            f'{steps[i]} steps compared, {diffs[i]} differing steps'
        )
    sys.exit(1 if any(diffs) else 0)


if __name__ == '__main__':
    app.run(main)
