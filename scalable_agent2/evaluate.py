"""Test mode: restore the latest checkpoint and run `test_num_episodes` episodes per level.

Environments are created with the test-mode settings (`is_test=True`: DMLab-30 test levels,
`mixerSeed`, hold-out levels; Atari no-op starts without life-loss ends). By default the protocol
is the original's: one environment per level, seeded `1 + env_seed_offset`, levels played in
order, exactly `test_num_episodes` episodes each. With `test_parallel`, each level's episodes
are shared by up to `num_actors` environments (seeds `1 + env_seed_offset + j`), each running a
fixed share (so short episodes are not favoured), in threads that share the agent through
dynamic batching. Each environment carries its LSTM state across steps and episodes, exactly as
a training actor does (the core resets itself on `done`).
"""

import json
import os
import threading
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from scalable_agent2 import checkpoints, config, environments, recording, runtime, summaries
from scalable_agent2.errors import UsageError

TEST_RESULTS_FILE = 'test_results.json'


def _split(total: int, parts: int) -> list[int]:
    """`total` items over `parts` workers as evenly as possible (no zero shares)."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _run_episodes(
    env: Any,
    policy: Any,
    initial_state: Any,
    num_episodes: int,
    stop: threading.Event,
    use_instruction: bool = True,
) -> list[float]:
    """Steps `env` with `policy` until `num_episodes` episodes end; returns their returns.

    The core state and the last action carry across episodes (`runtime.PolicyStepper`).
    """
    stepper = runtime.PolicyStepper(policy, initial_state, use_instruction)
    return runtime.run_episodes(env, stepper, num_episodes, stop)


def suite_results(cfg: config.ExperimentConfig, level_returns: dict[str, list[float]]) -> dict:
    suite = summaries.suite_of(cfg.level_name)
    if suite is None:
        return {}
    scores = summaries.suite_scores(suite, level_returns)
    return {f'{suite}_{k}': v for k, v in scores.items()}


def evaluate(cfg: config.ExperimentConfig) -> dict[str, Any]:
    """Runs test mode and writes `<logdir>/test_results.json`.

    Args:
      cfg: validated experiment config (mode 'test').

    Returns:
      The results written: {'num_environment_frames', 'checkpoint', 'test_num_episodes',
      'levels': {level: {'returns': [...], 'mean_return': float}}, and for suites
      'dmlab30_no_cap'/'dmlab30_cap_100' or 'atari57_mean'/'atari57_median'}.

    Raises:
      checkpoints.NoCheckpointError: no checkpoint in logdir.
      checkpoints.IncompatibleCheckpointError: it was written by another agent.
    """
    cfg.validate()
    if cfg.task >= 0:
        raise ValueError('test mode runs on one machine: use task -1')
    if not os.path.isdir(cfg.logdir):
        raise checkpoints.NoCheckpointError(f'no checkpoint found in {cfg.logdir} (no such dir)')
    runtime.configure_tf_threads(cfg.intra_op_threads, cfg.inter_op_threads)
    runtime.prepare_logdir(cfg.logdir)
    runtime.set_seeds(cfg.seed)
    level_names = environments.expand_level_names(cfg.level_name, is_test=True)
    if tf.train.latest_checkpoint(cfg.logdir) is None:
        raise checkpoints.NoCheckpointError(f'no checkpoint found in {cfg.logdir}')

    # Jobs: (level, episodes, env seed), run in order by one thread, or (test_parallel) by
    # `num_actors` threads, one env at a time each.
    jobs = []
    if cfg.test_parallel:
        for level in level_names:
            for share in _split(cfg.test_num_episodes, max(1, cfg.num_actors // len(level_names))):
                jobs.append((level, share, cfg.env_seed(len(jobs))))
        num_threads = min(cfg.num_actors, len(jobs))
    else:
        jobs = [(level, cfg.test_num_episodes, cfg.env_seed(0)) for level in level_names]
        num_threads = 1
    stop = threading.Event()
    policy = None
    first_env = environments.create_environment(
        jobs[0][0], cfg.environment, seed=jobs[0][2], is_test=True
    )
    envs = {0: first_env}  # Created but not yet taken by a worker.
    try:
        restored = runtime.restore_agent_for_test(cfg, first_env)
        agent_config, initial_state = restored.agent_config, restored.initial_state
        path, frames = restored.checkpoint, restored.num_environment_frames
        logging.info('Testing checkpoint %s (%d environment frames).', path, frames)

        policy = runtime.make_batched_policy(restored.agent, cfg.inference_timeout_ms)
        results: list[list[float] | None] = [None] * len(jobs)
        errors: list[BaseException] = []
        next_job = iter(range(len(jobs)))
        lock = threading.Lock()

        def work():
            try:
                while not stop.is_set():
                    with lock:
                        i = next(next_job, None)
                    if i is None:
                        return
                    level, share, seed = jobs[i]
                    env = envs.pop(i, None)
                    if env is None:
                        env = environments.create_environment(
                            level, cfg.environment, seed=seed, is_test=True
                        )
                    try:
                        if int(env.num_actions) != agent_config.num_actions:
                            raise UsageError(
                                f'level {level} has {env.num_actions} actions, the agent has '
                                f'{agent_config.num_actions}'
                            )
                        results[i] = _run_episodes(
                            env,
                            policy,
                            initial_state,
                            share,
                            stop,
                            use_instruction=agent_config.use_instruction,
                        )
                    finally:
                        env.close()
            except BaseException as e:  # Reported below.
                if not stop.is_set():
                    errors.append(e)
                    stop.set()

        threads = [
            threading.Thread(target=work, daemon=True, name=f'test_{i}') for i in range(num_threads)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            if isinstance(errors[0], ValueError):
                raise errors[0]
            raise RuntimeError(f'an evaluation thread failed: {errors[0]!r}') from errors[0]
        videos = {}
        if cfg.record_video:
            # One extra (unscored) episode per level, in this process, from the raw frames.
            for i, level in enumerate(level_names):
                choose = recording.agent_chooser(
                    policy, initial_state, use_instruction=agent_config.use_instruction
                )
                video = recording.record_episode(
                    level,
                    cfg.environment,
                    cfg.seed + 10_000 + i,
                    choose,
                    os.path.join(cfg.logdir, 'videos'),
                )
                logging.info('%s: wrote %s (%d frames)', level, video.path, video.num_frames)
                videos[level] = {
                    'path': video.path,
                    'episode_return': video.episode_return,
                    'num_frames': video.num_frames,
                }
    finally:
        stop.set()
        if policy is not None:
            policy.close()
        for env in envs.values():
            env.close()

    level_returns: dict[str, list[float]] = {level: [] for level in level_names}
    level_seeds: dict[str, list[int]] = {level: [] for level in level_names}
    for (level, _, seed), returns in zip(jobs, results, strict=True):
        level_returns[level].extend(returns)
        level_seeds[level].append(seed)
    out: dict[str, Any] = {
        'checkpoint': path,
        'num_environment_frames': frames,
        'test_num_episodes': cfg.test_num_episodes,
        'protocol': 'parallel' if cfg.test_parallel else 'sequential',
        'seed': cfg.seed,
        'env_seeds': level_seeds,
        'levels': {
            level: {'returns': returns, 'mean_return': float(np.mean(returns))}
            for level, returns in level_returns.items()
        },
    }
    for level, entry in out['levels'].items():
        logging.info(
            '%s: mean return %.3f over %d episodes',
            level,
            entry['mean_return'],
            len(entry['returns']),
        )
    if videos:
        out['videos'] = videos
    out.update(suite_results(cfg, level_returns))
    for key in sorted(k for k in out if k.startswith(('dmlab30_', 'atari57_'))):
        logging.info('%s: %.2f', key, out[key])
    result_path = os.path.join(cfg.logdir, TEST_RESULTS_FILE)
    with open(result_path + '.tmp', 'w') as f:
        json.dump(out, f, indent=2)
    os.replace(result_path + '.tmp', result_path)
    logging.info('Wrote %s', result_path)
    return out
