"""Single-machine training, and the learner program that both training modes share.

```
num_actor_threads threads, each stepping its share of the num_actors environments as one batch
  (`actor.Actor`) --unrolls--> FIFO queue (capacity 1)
  --> prefetch thread (stacks batch_size unrolls time-major into a `StagedBatch`)
  --> learner step (main thread) --> summaries, progress log, checkpoints
```
Actors run the agent through dynamic batching, reading the learner's variables directly (so
weights may change within an unroll, as in the original's single-machine mode). As in the
original, the queue holds one unroll and one batch is staged while the learner trains, which
bounds the policy lag. `run_learner` is the learner's side, shared with the distributed learner
(`distributed_train.py`), which differs only in its batch source and its publish hook.
"""

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging

from scalable_agent2 import actor, builder, config, environments, learner, summaries, workers
from scalable_agent2.scoring import suites


def actor_levels(cfg: config.ExperimentConfig) -> tuple[list[str], str | None]:
    """The level of each of the `num_actors` environments (suites round robin) and the suite
    whose score the summaries report (None if the environments do not cover it)."""
    level_names = environments.expand_level_names(cfg.level_name, is_test=False)
    levels = [level_names[i % len(level_names)] for i in range(cfg.num_actors)]
    suite = suites.suite_of(cfg.level_name)
    if suite is not None and len(set(levels)) < len(level_names):
        logging.warning(
            '%d actors cover %d of the %d %s levels; no suite score will be reported.',
            cfg.num_actors,
            len(set(levels)),
            len(level_names),
            suite,
        )
        suite = None
    return levels, suite


def run_learner(
    cfg: config.ExperimentConfig,
    setup: builder.TrainingSetup,
    batches: Callable[[], Any],
    threads: workers.Workers,
    stop: threading.Event,
    *,
    suite: str | None,
    levels: Sequence[str],
    queue_size: Callable[[], tuple[int, int]],
    extra_hooks: Sequence[learner.Hook] = (),
    restarts: Callable[[], int] | None = None,
) -> dict[str, Any]:
    """Trains `setup.learner` on `batches` until the frame budget, `stop` or a failed thread.

    A prefetch thread (one of `threads`) stages the next batch while the learner trains on the
    last; the learner loop runs in this thread with `learner.standard_hooks`; a failed thread
    of `threads` is raised here once the last good parameters are saved.

    Args:
      cfg: the validated experiment config.
      setup: what `builder.set_up_training` built.
      batches: `() -> batch`, the next time-major batch, or None once the source is closed.
      threads: the run's worker threads (e.g. its actor threads), sharing `stop`.
      stop: set by signals or a failed thread; set here on return.
      suite, levels: the suite whose score the summaries report (or None) and the levels of
        the episodes (`summaries.TrainingSummaries`).
      queue_size: `() -> (unrolls queued, capacity)` for the progress log.
      extra_hooks: hooks run after the divergence guard (e.g. `learner.PublishParameters`).
      restarts: `() -> environment restarts so far`, for the summaries.

    Returns:
      `learner.finish_training`'s summary: {'num_environment_frames', 'learner_steps' (resumes
      included), 'learner_steps_this_run', 'resumed_from', 'checkpoint'}.
    """
    writer = summaries.TrainingSummaries(cfg.logdir, suite, levels)
    try:
        staged = workers.StagedBatch()
        threads.start('prefetch', lambda: workers.prefetch_loop(batches, staged, stop))
        hooks = learner.standard_hooks(
            cfg,
            setup.checkpointer,
            writer,
            queue_size=queue_size,
            variables=setup.agent.variables,
            extra_hooks=extra_hooks,
            restarts=restarts,
        )
        steps = learner.learner_loop(setup.learner, staged, hooks, stop)
        threads.raise_first_error(setup.checkpointer, learner.frames_of(setup.learner))
        return learner.finish_training(setup.learner, setup.checkpointer, steps, setup.resumed_from)
    finally:
        stop.set()
        writer.close()


def train(cfg: config.ExperimentConfig) -> dict[str, Any]:
    """Trains until `cfg.learner.total_environment_frames` (or SIGINT/SIGTERM).

    Args:
      cfg: validated experiment config with mode 'train'.

    Returns:
      `run_learner`'s summary.

    Raises:
      ValueError (or a subclass) for user mistakes: unknown level, unwritable logdir,
      incompatible checkpoint; RuntimeError when a training thread fails.
    """
    if cfg.task >= 0:
        raise ValueError(
            'train.train runs single-machine mode (task -1); distributed jobs (task >= 0) run '
            'through distributed_train'
        )
    builder.start_run(cfg)
    levels, suite = actor_levels(cfg)

    stop = threading.Event()
    batches: list[Any] = []
    actors: list[actor.Actor] = []
    policy = None
    threads = workers.Workers(stop)
    # From here on SIGINT/SIGTERM stop training cleanly (set-up finishes first, then a save).
    signals = workers.StopOnSignals(stop).__enter__()
    try:
        groups = workers.split_evenly(range(len(levels)), cfg.num_actor_threads)
        seeds = [cfg.env_seed(i) for i in range(len(levels))]
        batches = builder.create_environment_batches(cfg, levels, seeds, groups)
        setup = builder.set_up_training(cfg, batches, [levels[g[0]] for g in groups], levels)
        policy = builder.build_policy(cfg, setup.agent)
        unroll_queue: queue.Queue = queue.Queue(maxsize=1)
        for k, env_batch in enumerate(batches):
            thread_actor = builder.build_actor(
                cfg, env_batch, policy, setup.initial_state, setup.agent_config.use_instruction
            )
            actors.append(thread_actor)
            threads.start(
                f'actor_thread_{k}',
                lambda a=thread_actor: actor.actor_loop([a], unroll_queue, stop),
            )
        logging.info('%d environments on %d actor threads.', len(levels), len(groups))
        return run_learner(
            cfg,
            setup,
            builder.unroll_batches(cfg, unroll_queue, stop),
            threads,
            stop,
            suite=suite,
            levels=levels,
            queue_size=lambda: (unroll_queue.qsize(), unroll_queue.maxsize),
            restarts=lambda: sum(a.restarts for a in actors),
        )
    finally:
        signals.__exit__(None, None, None)
        stop.set()
        if policy is not None:
            policy.close()
        threads.join()
        # Actors close the environment batches they hold.
        workers.close_all([*actors, *batches[len(actors) :]])
