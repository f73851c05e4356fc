"""Command line: the original IMPALA flags (same names and defaults) plus a few new ones.

This is the only module that defines or reads absl flags. It turns them into a frozen
`config.ExperimentConfig` and runs training or test mode. User mistakes (`errors.UsageError`:
bad flag values, unknown levels, an unwritable logdir, an incompatible, missing or corrupt
checkpoint, a missing DeepMind Lab) end with one line on stderr and exit code 2, without a
traceback; a run stopped for a diagnosed cause (`errors.RunAbortedError`: divergence, an
environment crash loop) with one line and exit code 1. Any other exception is a bug and keeps
its traceback. A logdir that this command created and left empty (its set-up failed) is removed.
"""

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence

from absl import app, flags, logging

from scalable_agent2 import config, errors

EXIT_USAGE = errors.EXIT_USAGE
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it.


class _IntegerAllowingExponent(flags.IntegerParser):
    """Integer flag that also accepts '1e9'-style values when they are whole numbers."""

    def convert(self, argument):
        if isinstance(argument, str):
            try:
                value = float(argument)
            except ValueError:
                return super().convert(argument)
            if value.is_integer() and any(c in argument for c in '.eE'):
                return int(value)
        return super().convert(argument)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Defines every flag on `fv` (the global FLAGS by default)."""
    # General (the original's).
    flags.DEFINE_string('logdir', '/tmp/agent', 'TensorFlow log directory.', flag_values=fv)
    flags.DEFINE_enum('mode', 'train', ['train', 'test'], 'Training or test mode.', flag_values=fv)
    flags.DEFINE_integer(
        'test_num_episodes', 10, 'Number of episodes per level (test mode).', flag_values=fv
    )
    flags.DEFINE_bool(
        'test_parallel',
        False,
        "Test mode: share each level's episodes over up to --num_actors environments run in "
        "parallel (seeds 1 + env_seed_offset + j), instead of the original's one environment "
        'per level with levels in order.',
        flag_values=fv,
    )
    flags.DEFINE_bool(
        'record_video',
        False,
        'Test mode: also play one episode per level and write it as an MP4 of the raw frames to '
        '<logdir>/videos (file name holds the return).',
        flag_values=fv,
    )
    # Distributed (the original's).
    flags.DEFINE_integer(
        'task', -1, 'Task id. Use -1 for local (single-machine) training.', flag_values=fv
    )
    flags.DEFINE_enum(
        'job_name',
        'learner',
        ['learner', 'actor'],
        'Job name. Ignored when task is set to -1.',
        flag_values=fv,
    )
    # Distributed (new): where the jobs listen and how they behave. TF_CONFIG overrides the
    # addresses (and names the job and task when it has a "task" entry).
    flags.DEFINE_string(
        'learner_address', 'localhost:8000', 'host:port of the learner job.', flag_values=fv
    )
    flags.DEFINE_string(
        'actor_addresses',
        '',
        'Comma-separated host:port per actor task; empty: the learner host, port 8001+task.',
        flag_values=fv,
    )
    flags.DEFINE_float(
        'connect_timeout_secs',
        600.0,
        'Seconds an actor waits for the learner before giving up.',
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'publish_interval',
        1,
        'Learner updates between parameter publications to the actors.',
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'queue_capacity', 1, 'Unrolls the learner-hosted queue holds.', flag_values=fv
    )
    flags.DEFINE_float(
        'shutdown_grace_secs',
        10.0,
        'Seconds the learner keeps serving after training so that actors exit cleanly.',
        flag_values=fv,
    )
    # Training (the original's).
    flags.DEFINE(
        _IntegerAllowingExponent(),
        'total_environment_frames',
        int(1e9),
        'Total environment frames to train for (accepts e.g. 1e9).',
        flag_values=fv,
    )
    flags.DEFINE_integer('num_actors', 4, 'Number of actors.', flag_values=fv)
    flags.DEFINE_integer('batch_size', 2, 'Batch size for training.', flag_values=fv)
    flags.DEFINE_integer('unroll_length', 100, 'Unroll length in agent steps.', flag_values=fv)
    flags.DEFINE_integer(
        'num_action_repeats',
        4,
        'Number of action repeats (gym/ levels: 1 unless given).',
        flag_values=fv,
    )
    flags.DEFINE_integer('seed', 1, 'Random seed (TensorFlow and numpy).', flag_values=fv)
    flags.DEFINE_integer(
        'env_seed_offset',
        0,
        'Added to every environment seed (actor i: i + 1 + offset; test mode: 1 + offset), '
        'for multi-seed studies.',
        flag_values=fv,
    )
    # Loss settings (the original's).
    flags.DEFINE_float('entropy_cost', 0.00025, 'Entropy cost/multiplier.', flag_values=fv)
    flags.DEFINE_float('baseline_cost', 0.5, 'Baseline cost/multiplier.', flag_values=fv)
    flags.DEFINE_float('discounting', 0.99, 'Discounting factor.', flag_values=fv)
    flags.DEFINE_enum(
        'reward_clipping',
        'abs_one',
        list(config.REWARD_CLIPPING_MODES),
        'Reward clipping.',
        flag_values=fv,
    )
    # Environment settings (the original's).
    flags.DEFINE_string(
        'dataset_path',
        '',
        'Path to dataset needed for psychlab_*, see '
        'https://github.com/deepmind/lab/tree/master/data/brady_konkle_oliva2008',
        flag_values=fv,
    )
    flags.DEFINE_string(
        'level_name',
        'explore_goal_locations_small',
        "DeepMind Lab level name, or 'dmlab30' for the full DMLab-30 suite with levels assigned "
        "round robin to the actors; also 'atari/<Game>' (e.g. atari/Pong), 'atari57' (the 57 "
        "games, round robin) or 'gym/<EnvId>' (e.g. gym/CartPole-v1).",
        flag_values=fv,
    )
    flags.DEFINE_integer('width', 96, 'Width of observation.', flag_values=fv)
    flags.DEFINE_integer('height', 72, 'Height of observation.', flag_values=fv)
    # Optimizer settings (the original's).
    flags.DEFINE_float('learning_rate', 0.00048, 'Learning rate.', flag_values=fv)
    flags.DEFINE_float('decay', 0.99, 'RMSProp optimizer decay.', flag_values=fv)
    flags.DEFINE_float('momentum', 0.0, 'RMSProp momentum.', flag_values=fv)
    flags.DEFINE_float('epsilon', 0.1, 'RMSProp epsilon.', flag_values=fv)
    # New: agent.
    flags.DEFINE_enum(
        'network',
        'deep',
        list(config.TORSOS),
        "Agent torso: 'deep' (the original's ResNet), 'shallow' (the paper's 2-layer CNN) or "
        "'mlp' (for vector observations such as gym/CartPole-v1).",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        'use_lstm',
        True,
        "Agent core: the original's LSTM, or (--nouse_lstm) the feed-forward agent of the "
        "paper's single-game Atari experts.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        'max_grad_norm',
        0.0,
        'Clip the global gradient norm to this before each update (the paper: 40 on Atari); '
        '0 does not clip, as the original code.',
        flag_values=fv,
    )
    flags.DEFINE_bool(
        'use_xla',
        None,
        'Compile the learner step with XLA. Default: on only when a GPU is visible (on CPU XLA '
        'made the step 2-3x slower).',
        flag_values=fv,
    )
    # New: outputs.
    flags.DEFINE_float(
        'save_checkpoint_secs',
        600.0,
        'Seconds between checkpoints; one is also saved at the end and on SIGINT/SIGTERM.',
        flag_values=fv,
    )
    flags.DEFINE_float(
        'save_summaries_secs',
        30.0,
        'Seconds between TensorBoard summaries of the learner metrics (episode returns are '
        'always written).',
        flag_values=fv,
    )
    flags.DEFINE_float(
        'log_interval_secs', 10.0, 'Seconds between progress log lines.', flag_values=fv
    )
    flags.DEFINE_integer(
        'max_checkpoints_to_keep', 5, 'Checkpoints kept in --logdir.', flag_values=fv
    )
    flags.DEFINE_integer(
        'inference_timeout_ms',
        100,
        "Dynamic-batching timeout (ms) for the actors' batched policy calls.",
        flag_values=fv,
    )
    # New: DeepMind Lab.
    flags.DEFINE_string(
        'level_cache_dir', None, 'Optional DeepMind Lab level cache directory.', flag_values=fv
    )
    # New: Atari protocol.
    flags.DEFINE_integer(
        'atari_frame_size', 84, 'Side of the square grayscale Atari frame.', flag_values=fv
    )
    flags.DEFINE_integer('atari_frame_stack', 4, 'Stacked Atari frames.', flag_values=fv)
    flags.DEFINE_integer(
        'atari_noop_max',
        30,
        'Up to this many no-op actions at the start of an Atari episode.',
        flag_values=fv,
    )
    flags.DEFINE_float(
        'atari_sticky_action_prob',
        0.0,
        'ALE repeat_action_probability (0 as in IMPALA; 0.25 for Machado et al. 2018).',
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'atari_max_episode_frames',
        108_000,
        'Cap on an Atari episode, in frames (108000 = 30 minutes).',
        flag_values=fv,
    )
    flags.DEFINE_bool(
        'atari_terminal_on_life_loss',
        True,
        'End Atari training episodes on life loss (never in test mode).',
        flag_values=fv,
    )
    flags.DEFINE_bool(
        'atari_full_action_space',
        None,
        "Use all 18 Atari actions for every game. Default: on for 'atari57' (one agent plays "
        "every game), off for a single game (its minimal action set, as the paper's experts).",
        flag_values=fv,
    )


def experiment_config(fv: flags.FlagValues = flags.FLAGS) -> config.ExperimentConfig:
    """Builds and validates the frozen experiment config from parsed flags.

    Raises:
      ValueError: a flag has a bad value (one-line message naming it).
    """
    num_action_repeats = fv.num_action_repeats
    if fv.level_name.startswith('gym/') and not fv['num_action_repeats'].present:
        num_action_repeats = 1  # Gymnasium environments act every step unless told otherwise.
    environment = config.EnvironmentConfig(
        width=fv.width,
        height=fv.height,
        num_action_repeats=num_action_repeats,
        dataset_path=fv.dataset_path,
        level_cache_dir=fv.level_cache_dir,
        atari_frame_size=fv.atari_frame_size,
        atari_frame_stack=fv.atari_frame_stack,
        atari_noop_max=fv.atari_noop_max,
        atari_sticky_action_prob=fv.atari_sticky_action_prob,
        atari_max_episode_frames=fv.atari_max_episode_frames,
        atari_terminal_on_life_loss=fv.atari_terminal_on_life_loss,
        atari_full_action_space=(
            fv.level_name == 'atari57'
            if fv.atari_full_action_space is None
            else fv.atari_full_action_space
        ),
    )
    learner = config.LearnerConfig(
        batch_size=fv.batch_size,
        unroll_length=fv.unroll_length,
        num_action_repeats=num_action_repeats,
        total_environment_frames=fv.total_environment_frames,
        entropy_cost=fv.entropy_cost,
        baseline_cost=fv.baseline_cost,
        discounting=fv.discounting,
        reward_clipping=fv.reward_clipping,
        learning_rate=fv.learning_rate,
        decay=fv.decay,
        momentum=fv.momentum,
        epsilon=fv.epsilon,
        use_xla=fv.use_xla,
        max_grad_norm=fv.max_grad_norm or None,
    )
    cluster, tf_config_job, tf_config_task = config.cluster_config_from(
        fv.learner_address,
        fv.actor_addresses,
        os.environ.get('TF_CONFIG'),
        connect_timeout_secs=fv.connect_timeout_secs,
        publish_interval=fv.publish_interval,
        queue_capacity=fv.queue_capacity,
        shutdown_grace_secs=fv.shutdown_grace_secs,
    )
    task, job_name = fv.task, fv.job_name
    if tf_config_job is not None:
        if task >= 0 and (job_name, task) != (tf_config_job, tf_config_task):
            raise errors.UsageError(
                f'--job_name={job_name} --task={task} disagree with TF_CONFIG '
                f'({tf_config_job} task {tf_config_task})'
            )
        task, job_name = tf_config_task, tf_config_job
    cfg = config.ExperimentConfig(
        logdir=fv.logdir,
        mode=fv.mode,
        level_name=fv.level_name,
        num_actors=fv.num_actors,
        seed=fv.seed,
        env_seed_offset=fv.env_seed_offset,
        test_num_episodes=fv.test_num_episodes,
        test_parallel=fv.test_parallel,
        record_video=fv.record_video,
        task=task,
        job_name=job_name,
        network=fv.network,
        use_lstm=fv.use_lstm,
        save_checkpoint_secs=fv.save_checkpoint_secs,
        save_summaries_secs=fv.save_summaries_secs,
        log_interval_secs=fv.log_interval_secs,
        max_checkpoints_to_keep=fv.max_checkpoints_to_keep,
        inference_timeout_ms=fv.inference_timeout_ms,
        environment=environment,
        learner=learner,
        cluster=cluster,
    )
    return cfg.validate()


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    print(f'error: {message}', file=sys.stderr, flush=True)
    sys.exit(code)


def _parse_flags(argv: Sequence[str]) -> list[str]:
    """Parses flags; a bad flag is one line on stderr and exit 2 (no usage dump)."""
    try:
        return flags.FLAGS(list(argv))
    except flags.Error as e:
        _fail(str(e).splitlines()[0])


def run(cfg: config.ExperimentConfig) -> dict:
    """Runs the experiment described by `cfg` (train or test mode)."""
    # Imported here so that flag errors are reported without loading TensorFlow.
    if cfg.mode == 'train' and cfg.task >= 0:
        from scalable_agent2 import distributed_train

        if cfg.job_name == 'learner':
            return distributed_train.train_learner(cfg)
        elif cfg.job_name == 'actor':
            # 0: the learner finished; distributed.EXIT_LEARNER_LOST: restart to rejoin.
            code = distributed_train.run_actor(cfg)
            if code:
                # Skips TF's teardown, which may wait on the lost learner.
                logging.flush()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            return {'exit_code': 0}
        else:
            raise ValueError(f'job_name must be learner or actor, got {cfg.job_name!r}')
    elif cfg.mode == 'train':
        from scalable_agent2 import train

        return train.train(cfg)
    elif cfg.mode == 'test':
        from scalable_agent2 import evaluate

        # As the original, test mode runs on this machine whatever the job flags say.
        return evaluate.evaluate(dataclasses.replace(cfg, task=-1))
    else:
        raise ValueError(f'mode must be train or test, got {cfg.mode!r}')


def _missing_directories(path: str) -> list[str]:
    """`path` and each of its ancestors that does not exist yet, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while path and not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


@contextlib.contextmanager
def _new_logdir_removed_on_failure(cfg: config.ExperimentConfig) -> Iterator[None]:
    """Removes the logdir (and parents) this command created if it fails leaving them empty.

    Only for the jobs that own the logdir (single-machine training, the learner, test mode):
    an actor on the learner's machine must not remove the directory the learner just made.
    """
    owns_logdir = cfg.task < 0 or cfg.job_name == 'learner' or cfg.mode == 'test'
    created = _missing_directories(cfg.logdir) if owns_logdir else []
    try:
        yield
    except BaseException:
        for path in created:  # Deepest first; stops at the first that is not empty.
            try:
                os.rmdir(path)
            except OSError:
                break
        raise


def _main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        _fail(f'unexpected arguments: {" ".join(argv[1:])}')
    try:
        cfg = experiment_config(flags.FLAGS)
        with _new_logdir_removed_on_failure(cfg):
            run(cfg)
    except KeyboardInterrupt:
        # Ctrl-C before training installs its handlers (e.g. while TensorFlow imports).
        print('interrupted', file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        # User mistakes and diagnosed stops are one line; anything else is a bug: traceback.
        cause = errors.user_facing(e)
        if cause is None:
            raise
        logging.debug('The run ended with this error:', exc_info=e)
        logging.flush()
        _fail(errors.first_line(cause), errors.exit_code(cause))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: `python experiments/experiment.py --flag=value ...`."""
    define_flags()
    app.run(_main, argv=list(sys.argv if argv is None else argv), flags_parser=_parse_flags)
