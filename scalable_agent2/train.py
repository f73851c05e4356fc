"""Single-machine training: actor threads, a small unroll queue, one learner.

```
num_actor_threads threads, each stepping its share of the num_actors environments as one batch
  (`actor.BatchedActor`) --unrolls--> FIFO queue (capacity 1)
  --> prefetch thread (stacks batch_size unrolls time-major into a `StagedBatch`)
  --> learner step (main thread) --> summaries, progress log, checkpoints
```
Actors run the agent through dynamic batching, reading the learner's variables directly (so
weights may change within an unroll, as in the original's single-machine mode). As in the
original, the queue holds one unroll and one batch is staged while the learner trains, which
bounds the policy lag. Everything here is composed from `runtime`.
"""

import queue
import threading
from typing import Any

from absl import logging

from scalable_agent2 import config, environments, runtime, summaries

# Kept for callers written before `runtime` (the names live there now).
create_agent_variables = runtime.create_agent_variables
make_batched_policy = runtime.make_batched_policy


def actor_levels(cfg: config.ExperimentConfig) -> tuple[list[str], str | None]:
    """The level of each of the `num_actors` environments (suites round robin) and the suite
    whose score the summaries report (None if the environments do not cover it)."""
    level_names = environments.expand_level_names(cfg.level_name, is_test=False)
    levels = [level_names[i % len(level_names)] for i in range(cfg.num_actors)]
    suite = summaries.suite_of(cfg.level_name)
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


def train(cfg: config.ExperimentConfig) -> dict[str, Any]:
    """Trains until `cfg.learner.total_environment_frames` (or SIGINT/SIGTERM).

    Args:
      cfg: validated experiment config with mode 'train'.

    Returns:
      `runtime.finish_training`'s summary: {'num_environment_frames', 'learner_steps' (resumes
      included), 'learner_steps_this_run', 'resumed_from', 'checkpoint'}.

    Raises:
      ValueError (or a subclass) for user mistakes: unknown level, unwritable logdir,
      incompatible checkpoint; RuntimeError when a training thread fails.
    """
    cfg.validate()
    if cfg.task >= 0:
        raise ValueError(
            'train.train runs single-machine mode (task -1); distributed jobs (task >= 0) run '
            'through distributed_train'
        )
    runtime.configure_tf_threads(cfg.intra_op_threads, cfg.inter_op_threads)
    runtime.prepare_logdir(cfg.logdir)
    runtime.set_seeds(cfg.seed)
    levels, suite = actor_levels(cfg)

    stop = threading.Event()
    batches: list[Any] = []
    actors: list[Any] = []
    num_wrapped = 0  # batches[:num_wrapped] are held (and closed) by actors.
    policy = None
    workers = runtime.Workers(stop)
    writer = None
    # From here on SIGINT/SIGTERM stop training cleanly (set-up finishes first, then a save).
    signals = runtime.StopOnSignals(stop).__enter__()
    try:
        groups = runtime.split_evenly(range(len(levels)), cfg.num_actor_threads)
        seeds = [cfg.env_seed(i) for i in range(len(levels))]
        batches = runtime.create_environment_batches(cfg, levels, seeds, groups)
        setup = runtime.set_up_training(cfg, batches, [levels[g[0]] for g in groups], levels)
        writer = summaries.TrainingSummaries(cfg.logdir, suite, levels)
        policy = runtime.make_batched_policy(setup.agent, cfg.inference_timeout_ms)
        unroll_queue: queue.Queue = queue.Queue(maxsize=1)
        staged = runtime.StagedBatch()

        for k, env_batch in enumerate(batches):
            thread_actor = runtime.build_batched_actor(
                env_batch,
                policy,
                setup.initial_state,
                cfg.learner.unroll_length,
                setup.agent_config.use_instruction,
            )
            actors.append(thread_actor)
            num_wrapped += 1
            workers.start(
                f'actor_thread_{k}',
                lambda a=thread_actor: runtime.actor_loop([a], unroll_queue, stop),
            )
        logging.info('%d environments on %d actor threads.', len(levels), len(groups))
        workers.start(
            'prefetch',
            lambda: runtime.prefetch_loop(
                runtime.batches_from_unrolls(unroll_queue, cfg.learner.batch_size, stop),
                staged,
                stop,
            ),
        )
        hooks = runtime.standard_hooks(
            cfg,
            setup.checkpointer,
            writer,
            queue_size=lambda: (unroll_queue.qsize(), unroll_queue.maxsize),
            variables=setup.agent.variables,
            restarts=lambda: sum(a.restarts for a in actors),
        )
        steps = runtime.learner_loop(setup.learner, staged, hooks, stop)
        workers.raise_first_error(setup.checkpointer, runtime.frames_of(setup.learner))
        return runtime.finish_training(setup.learner, setup.checkpointer, steps, setup.resumed_from)
    finally:
        signals.__exit__(None, None, None)
        stop.set()
        if policy is not None:
            policy.close()
        workers.join()
        # Actors close the environment batches they hold.
        runtime.close_all([*actors, *batches[num_wrapped:]])
        if writer is not None:
            writer.close()
