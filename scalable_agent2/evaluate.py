"""Test mode: restore the latest checkpoint (or `test_checkpoint`) and run `test_num_episodes`
episodes per level.

Environments are created with the test-mode settings (`is_test=True`: DMLab-30 test levels,
`mixerSeed`, hold-out levels; Atari no-op starts without life-loss ends). By default the protocol
is the original's: one environment per level, seeded `1 + env_seed_offset`, levels played in
order, exactly `test_num_episodes` episodes each. With `test_parallel`, each level's episodes
are shared by up to `num_actors` environments (seeds `1 + env_seed_offset + j`), each running a
fixed share (so short episodes are not favoured), in threads that share the agent through
dynamic batching. Each environment carries its LSTM state across steps and episodes, exactly as
a training actor does (the core resets itself on `done`).

Phases: `plan` (which level each environment plays, for how many episodes, with which seed),
`play` (the episodes, on `workers.Workers`), `record_videos` (with `--record_video`),
`write_results` (`<logdir>/test_results.json`, or `test_results.<name>.json` for a
`test_checkpoint`).
"""

import json
import os
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from absl import logging

from scalable_agent2 import (
    builder,
    checkpoints,
    config,
    environments,
    policy,
    recording,
    workers,
)
from scalable_agent2.scoring import suites

TEST_RESULTS_FILE = 'test_results.json'


class Job(NamedTuple):
    """Episodes one environment plays: `num_episodes` of `level`, the environment seeded `seed`."""

    level: str
    num_episodes: int
    seed: int


def plan(cfg: config.ExperimentConfig, level_names: Sequence[str]) -> tuple[list[Job], int]:
    """The jobs of test mode, in order, and the threads that run them.

    The original's protocol: one job per level, seed `1 + env_seed_offset`, exactly
    `test_num_episodes` each, run in order by one thread. With `test_parallel`, each level's
    episodes are shared evenly by up to `num_actors // len(level_names)` jobs (seeds
    `1 + env_seed_offset + j`), run by up to `num_actors` threads.
    """
    if not cfg.test_parallel:
        return [Job(level, cfg.test_num_episodes, cfg.env_seed(0)) for level in level_names], 1
    jobs: list[Job] = []
    parts = max(1, cfg.num_actors // len(level_names))
    for level in level_names:
        for share in workers.split_evenly(range(cfg.test_num_episodes), parts):
            jobs.append(Job(level, len(share), cfg.env_seed(len(jobs))))
    return jobs, min(cfg.num_actors, len(jobs))


def play(
    cfg: config.ExperimentConfig,
    jobs: Sequence[Job],
    num_threads: int,
    restored: builder.RestoredAgent,
    agent_policy: policy.Policy,
    envs: dict[int, Any],
) -> list[list[float]]:
    """Plays every job with `agent_policy` on `num_threads` threads; the returns of each job.

    Args:
      envs: environments already created, by job index; a thread takes (and closes) its job's
        environment from here, or creates it. Those left are the caller's to close.

    Raises:
      ValueError: a level's action set is not the agent's (or another user mistake).
      RuntimeError: a thread failed otherwise.
    """
    stop = threading.Event()
    results: list[list[float] | None] = [None] * len(jobs)
    next_job = iter(range(len(jobs)))
    lock = threading.Lock()
    agent_config = restored.agent_config

    def work():
        while not stop.is_set():
            with lock:
                i = next(next_job, None)
            if i is None:
                return
            job = jobs[i]
            env = envs.pop(i, None)
            if env is None:
                env = environments.create_environment(
                    job.level, cfg.environment, seed=job.seed, is_test=True
                )
            try:
                builder.check_action_sets([env], [job.level], agent_config.num_actions, 'the agent')
                stepper = policy.PolicyStepper(
                    agent_policy, restored.initial_state, agent_config.use_instruction
                )
                results[i] = policy.run_episodes(env, stepper, job.num_episodes, stop)
            finally:
                env.close()

    threads = workers.Workers(stop)
    for k in range(num_threads):
        threads.start(f'test_{k}', work)
    threads.join(timeout_secs=None)
    if isinstance(threads.first_error, ValueError):
        raise threads.first_error
    threads.raise_first_error(what='an evaluation thread')
    return results


def record_videos(
    cfg: config.ExperimentConfig,
    level_names: Sequence[str],
    restored: builder.RestoredAgent,
    agent_policy: policy.Policy,
) -> dict[str, dict[str, Any]]:
    """One extra (unscored) episode per level, in this process, as an MP4 of the raw frames."""
    videos = {}
    for i, level in enumerate(level_names):
        choose = recording.agent_chooser(
            agent_policy,
            restored.initial_state,
            use_instruction=restored.agent_config.use_instruction,
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
    return videos


def suite_results(cfg: config.ExperimentConfig, level_returns: dict[str, list[float]]) -> dict:
    suite = suites.suite_of(cfg.level_name)
    if suite is None:
        return {}
    scores = suites.suite_scores(suite, level_returns)
    return {f'{suite}_{k}': v for k, v in scores.items()}


def results_file_name(cfg: config.ExperimentConfig) -> str:
    """`test_results.json`, or `test_results.<name>.json` for `test_checkpoint` `<name>`, so that
    the results of several checkpoints of one run sit side by side."""
    if not cfg.test_checkpoint:
        return TEST_RESULTS_FILE
    return f'test_results.{os.path.basename(cfg.test_checkpoint)}.json'


def write_results(
    cfg: config.ExperimentConfig,
    level_names: Sequence[str],
    jobs: Sequence[Job],
    returns: Sequence[list[float]],
    restored: builder.RestoredAgent,
    videos: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Logs and writes `<logdir>/<results_file_name(cfg)>`; returns what it wrote."""
    level_returns: dict[str, list[float]] = {level: [] for level in level_names}
    level_seeds: dict[str, list[int]] = {level: [] for level in level_names}
    for job, job_returns in zip(jobs, returns, strict=True):
        level_returns[job.level].extend(job_returns)
        level_seeds[job.level].append(job.seed)
    out: dict[str, Any] = {
        'checkpoint': restored.checkpoint,
        'num_environment_frames': restored.num_environment_frames,
        'test_num_episodes': cfg.test_num_episodes,
        'protocol': 'parallel' if cfg.test_parallel else 'sequential',
        'seed': cfg.seed,
        'env_seeds': level_seeds,
        'levels': {
            level: {'returns': rets, 'mean_return': float(np.mean(rets))}
            for level, rets in level_returns.items()
        },
    }
    for level, entry in out['levels'].items():
        score = suites.level_score(level, entry['returns'])
        if score is not None:
            entry['human_normalized_score'] = score
        logging.info(
            '%s: mean return %.3f over %d episodes',
            level,
            entry['mean_return'],
            len(entry['returns']),
        )
    if videos:
        out['videos'] = videos
    scores = suite_results(cfg, level_returns)
    for key in sorted(scores):
        logging.info('%s: %.2f', key, scores[key])
    out.update(scores)
    result_path = os.path.join(cfg.logdir, results_file_name(cfg))
    with open(result_path + '.tmp', 'w') as f:
        json.dump(out, f, indent=2)
    os.replace(result_path + '.tmp', result_path)
    logging.info('Wrote %s', result_path)
    return out


def evaluate(cfg: config.ExperimentConfig) -> dict[str, Any]:
    """Runs test mode and writes `<logdir>/test_results.json` (see `results_file_name`).

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
    if cfg.task >= 0:
        raise ValueError('test mode runs on one machine: use task -1')
    if not os.path.isdir(cfg.logdir):
        raise checkpoints.NoCheckpointError(f'no checkpoint found in {cfg.logdir} (no such dir)')
    builder.start_run(cfg)
    level_names = environments.expand_level_names(cfg.level_name, is_test=True)
    if not cfg.test_checkpoint and tf.train.latest_checkpoint(cfg.logdir) is None:
        raise checkpoints.NoCheckpointError(f'no checkpoint found in {cfg.logdir}')

    jobs, num_threads = plan(cfg, level_names)
    agent_policy = None
    first_env = environments.create_environment(
        jobs[0].level, cfg.environment, seed=jobs[0].seed, is_test=True
    )
    envs = {0: first_env}  # Created but not yet taken by a thread.
    try:
        restored = builder.restore_agent_for_test(cfg, first_env)
        logging.info(
            'Testing checkpoint %s (%d environment frames).',
            restored.checkpoint,
            restored.num_environment_frames,
        )
        agent_policy = builder.build_policy(cfg, restored.agent)
        returns = play(cfg, jobs, num_threads, restored, agent_policy, envs)
        videos = record_videos(cfg, level_names, restored, agent_policy) if cfg.record_video else {}
    finally:
        if agent_policy is not None:
            agent_policy.close()
        workers.close_all(list(envs.values()))
    return write_results(cfg, level_names, jobs, returns, restored, videos)
