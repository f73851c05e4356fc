"""A fake `deepmind_lab` for tests: the documented Python API, deterministic, and recording.

Implements the surface of DeepMind Lab's `docs/users/python_api.md`: `Lab(level, observations,
config={}, renderer='software', level_cache=None)` with `reset(episode=-1, seed=None)`,
`step(action, num_steps=1)`, `is_running()`, `observations()`, `observation_spec()`,
`action_spec()`, `num_steps()`, `close()`, and checks its arguments as strictly as the real one
(string config values, `np.intc` actions of 7 within `action_spec`, observations only while
running). Put `tests/fake_deepmind_lab` on `sys.path` to import it.

Fake dynamics, so tests can compute what to expect:
  * an episode lasts `EPISODE_FRAMES` frames (a `step` stops early at the episode's end);
  * each frame gives reward 1 if the action moves forward (`MOVE_BACK_FORWARD == 1`), -1 if it
    moves backward, plus 10 if it fires;
  * `RGB_INTERLEAVED` is `[height, width, 3]` uint8 filled with `frame_value(seed, frames)`;
  * `INSTR` is `LANGUAGE_INSTRUCTION` on levels whose name contains 'language', else '';
  * DMLab-30 `*_test` levels are held out: they need `allowHoldOutLevels='true'`.
Every created `Lab` is appended to `CREATED`; each records its calls in `calls`.
"""

import os
import random

import numpy as np

EPISODE_FRAMES = 10
LANGUAGE_INSTRUCTION = 'pick the red hat'
CREATED: list['Lab'] = []

_ACTION_SPEC = (
    ('LOOK_LEFT_RIGHT_PIXELS_PER_FRAME', -512, 512),
    ('LOOK_DOWN_UP_PIXELS_PER_FRAME', -512, 512),
    ('STRAFE_LEFT_RIGHT', -1, 1),
    ('MOVE_BACK_FORWARD', -1, 1),
    ('FIRE', 0, 1),
    ('JUMP', 0, 1),
    ('CROUCH', 0, 1),
)
_OBSERVATION_NAMES = ('RGB_INTERLEAVED', 'RGB', 'INSTR')


def version() -> str:
    return 'fake'


def frame_value(seed: int, frames: int) -> int:
    """The pixel value after `frames` frames of an episode reset with `seed`."""
    return (seed * 7 + frames) % 256


class Lab:
    """Fake `deepmind_lab.Lab`."""

    def __init__(self, level, observations, config=None, renderer='software', level_cache=None):
        if not isinstance(level, str):
            raise TypeError(f'level must be a str, got {level!r}')
        config = {} if config is None else config
        if not isinstance(config, dict):
            raise TypeError('config must be a dict')
        for key, value in config.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f'config keys and values must be str, got {key!r}: {value!r}')
        for name in observations:
            if name not in _OBSERVATION_NAMES:
                raise ValueError(f'Unknown observation {name!r}')
        if renderer not in ('software', 'hardware'):
            raise ValueError(f'Unknown renderer {renderer!r}')
        if level.startswith('contributed/dmlab30/') and level.endswith('_test'):
            if config.get('allowHoldOutLevels') != 'true':
                raise ValueError(f'Level {level!r} is held out; set allowHoldOutLevels')
        self.level = level
        self.observation_names = list(observations)
        self.config = dict(config)
        self.renderer = renderer
        self.level_cache = level_cache
        self.width = int(config.get('width', '320'))
        self.height = int(config.get('height', '240'))
        self.calls: list[tuple] = []
        self.reset_seeds: list[int] = []
        self.step_calls: list[tuple[np.ndarray, int]] = []
        self._running = False
        self._closed = False
        self._frames = 0
        self._seed = 0
        CREATED.append(self)

    def _check_open(self):
        if self._closed:
            raise RuntimeError('Environment is closed')

    def reset(self, episode=-1, seed=None):
        self._check_open()
        self.calls.append(('reset', episode, seed))
        if seed is None:
            seed = random.randrange(2**31)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f'seed must be an int, got {type(seed).__name__}')
        self.reset_seeds.append(seed)
        if self.level_cache is not None:
            self._compile_map(seed)
        self._seed = seed
        self._frames = 0
        self._running = True
        return True

    def _compile_map(self, seed):
        # Uses the cache the way DeepMind Lab does: fetch, else build and write.
        key = f'{self.level.replace("/", "_")}_{seed % 3}.pk3'
        pk3_dir = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'fake_dmlab_{os.getpid()}')
        os.makedirs(pk3_dir, exist_ok=True)
        pk3_path = os.path.join(pk3_dir, key)
        if self.level_cache.fetch(key, pk3_path):
            self.calls.append(('cache_hit', key))
        else:
            with open(pk3_path, 'w') as f:
                f.write(f'map {key}')
            self.level_cache.write(key, pk3_path)
            self.calls.append(('cache_miss', key))

    def step(self, action, num_steps=1):
        self._check_open()
        if not self._running:
            raise RuntimeError('Environment in wrong status to call step()')
        if not isinstance(action, np.ndarray) or action.dtype != np.intc:
            raise TypeError('action must be a numpy array of dtype np.intc')
        if action.shape != (len(_ACTION_SPEC),) or not action.flags['C_CONTIGUOUS']:
            raise ValueError(f'action must be contiguous, shape (7,); got {action.shape}')
        for value, (name, low, high) in zip(action, _ACTION_SPEC):
            if not low <= value <= high:
                raise ValueError(f'{name}={value} outside [{low}, {high}]')
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f'num_steps must be a positive int, got {num_steps!r}')
        self.calls.append(('step', action.copy(), num_steps))
        self.step_calls.append((action.copy(), num_steps))
        per_frame = float(action[3]) + 10.0 * float(action[4])
        frames = min(num_steps, EPISODE_FRAMES - self._frames)
        self._frames += frames
        if self._frames >= EPISODE_FRAMES:
            self._running = False
        return per_frame * frames

    def is_running(self):
        return self._running

    def num_steps(self):
        self._check_open()
        return self._frames

    def observations(self):
        self._check_open()
        if not self._running:
            raise RuntimeError('Environment in wrong status to call observations()')
        result = {}
        value = frame_value(self._seed, self._frames)
        for name in self.observation_names:
            if name == 'RGB_INTERLEAVED':
                result[name] = np.full((self.height, self.width, 3), value, dtype=np.uint8)
            elif name == 'RGB':
                result[name] = np.full((3, self.height, self.width), value, dtype=np.uint8)
            elif name == 'INSTR':
                result[name] = LANGUAGE_INSTRUCTION if 'language' in self.level else ''
            else:
                raise ValueError(name)
        return result

    def observation_spec(self):
        self._check_open()
        return [
            {'name': 'RGB_INTERLEAVED', 'dtype': np.uint8, 'shape': (self.height, self.width, 3)},
            {'name': 'RGB', 'dtype': np.uint8, 'shape': (3, self.height, self.width)},
            {'name': 'INSTR', 'dtype': str, 'shape': ()},
        ]

    def action_spec(self):
        self._check_open()
        return [{'name': name, 'min': low, 'max': high} for name, low, high in _ACTION_SPEC]

    def close(self):
        self._check_open()
        self.calls.append(('close',))
        self._closed = True
        self._running = False
        return True
