"""Command line: the original IMPALA flags (same names and defaults) plus a few new ones.

This is the only module that defines or reads absl flags. The flags are not listed here: each is
a field of a config dataclass with a `config.Flag` in its metadata (help text, and any name,
default, choices or conversion that differ from the field's), so a new flag is written once, in
`config.py` (plus its row in the flag table of docs/USAGE.md). This module defines them, turns
them into a frozen `config.ExperimentConfig` and runs training or test mode. User mistakes
(`errors.UsageError`: bad flag values, unknown levels, an unwritable logdir, an incompatible,
missing or corrupt checkpoint, a missing DeepMind Lab) end with one line on stderr and exit code
2, without a traceback; a run stopped for a diagnosed cause (`errors.RunAbortedError`:
divergence, an environment crash loop) with one line and exit code 1. Any other exception is a
bug and keeps its traceback. A logdir that this command created and left empty (its set-up
failed) is removed.
"""

import contextlib
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from absl import app, flags, logging

from scalable_agent2 import config, errors, tf_startup

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


# The configs whose fields the command line sets (`ExperimentConfig` holds the other four).
CONFIG_CLASSES = (
    config.ExperimentConfig,
    config.AgentConfig,
    config.EnvironmentConfig,
    config.LearnerConfig,
    config.ClusterConfig,
)


def _flag_type(field: dataclasses.Field) -> type:
    """The Python type a field's flag parses: int, float, str or bool."""
    kind = field.type
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (types.UnionType, typing.Union) and len(args) == 1:
        kind = args[0]  # `X | None`: a flag of X that may be unset.
    if typing.get_origin(kind) is tuple:
        return str  # Comma-separated.
    if kind in (int, float, str, bool):
        return kind
    raise TypeError(f'no flag type for field {field.name} of type {field.type!r}')


def config_flags(cls: type) -> list[tuple[dataclasses.Field, config.Flag]]:
    """The fields of dataclass `cls` that a flag sets, with their `config.Flag`."""
    out = []
    for field in dataclasses.fields(cls):
        flag = config.field_flag(field)
        if flag is not None:
            out.append((field, flag))
    return out


def define_config_flags(classes: Sequence[type], fv: flags.FlagValues) -> None:
    """Defines on `fv` the flag of every field of `classes` that has one (each name once)."""
    defined: dict[str, dataclasses.Field] = {}
    shared: list[tuple[dataclasses.Field, config.Flag]] = []
    for cls in classes:
        for field, flag in config_flags(cls):
            name = flag.flag_name(field)
            if flag.help is None:
                shared.append((field, flag))  # Reads a flag another field defines.
                continue
            if name in defined:
                raise ValueError(f'flag --{name} is defined by two fields')
            defined[name] = field
            default = flag.flag_default(field)
            kind = _flag_type(field)
            if flag.choices is not None:
                flags.DEFINE_enum(name, default, list(flag.choices), flag.help, flag_values=fv)
            elif kind is bool:
                flags.DEFINE_bool(name, default, flag.help, flag_values=fv)
            elif kind is int and flag.allow_exponent:
                flags.DEFINE(_IntegerAllowingExponent(), name, default, flag.help, flag_values=fv)
            elif kind is int:
                flags.DEFINE_integer(name, default, flag.help, flag_values=fv)
            elif kind is float:
                flags.DEFINE_float(name, default, flag.help, flag_values=fv)
            elif kind is str:
                flags.DEFINE_string(name, default, flag.help, flag_values=fv)
            else:
                raise TypeError(f'no flag type for field {field.name}')
    for field, flag in shared:
        if flag.flag_name(field) not in defined:
            raise ValueError(f'field {field.name} reads --{flag.flag_name(field)}, not defined')


def config_kwargs(cls: type, flag_values: Mapping[str, Any]) -> dict[str, Any]:
    """`cls`'s arguments for its flagged fields, from flag values (`{flag name: value}`)."""
    return {
        field.name: flag.field_value(flag_values[flag.flag_name(field)], flag_values)
        for field, flag in config_flags(cls)
    }


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Defines every flag on `fv` (the global FLAGS by default): one per flagged config field."""
    define_config_flags(list(CONFIG_CLASSES), fv)


def experiment_config(fv: flags.FlagValues = flags.FLAGS) -> config.ExperimentConfig:
    """Builds and validates the frozen experiment config from parsed flags.

    Every flagged field of the configs takes its flag's value (see `config.Flag`); beyond that:
    gym/ levels default to 1 action repeat, `--num_actor_threads` not given is capped at
    `--num_actors`, and `TF_CONFIG` overrides the cluster addresses and names the job.

    Raises:
      ValueError: a flag has a bad value (one-line message naming it).
    """
    values = {name: fv[name].value for name in fv}
    if values['level_name'].startswith('gym/') and not fv['num_action_repeats'].present:
        values['num_action_repeats'] = 1  # Gymnasium environments act every step unless told.
    if not fv['num_actor_threads'].present:
        values['num_actor_threads'] = max(1, min(values['num_actor_threads'], values['num_actors']))
    agent = config.AgentConfig(**config_kwargs(config.AgentConfig, values))
    environment = config.EnvironmentConfig(**config_kwargs(config.EnvironmentConfig, values))
    learner = config.LearnerConfig(**config_kwargs(config.LearnerConfig, values))
    cluster_kwargs = config_kwargs(config.ClusterConfig, values)
    cluster, tf_config_job, tf_config_task = config.cluster_config_from(
        cluster_kwargs.pop('learner_address'),
        cluster_kwargs.pop('actor_addresses'),
        os.environ.get('TF_CONFIG'),
        **cluster_kwargs,
    )
    experiment = config_kwargs(config.ExperimentConfig, values)
    task, job_name = experiment['task'], experiment['job_name']
    if tf_config_job is not None:
        if task >= 0 and (job_name, task) != (tf_config_job, tf_config_task):
            raise errors.UsageError(
                f'--job_name={job_name} --task={task} disagree with TF_CONFIG '
                f'({tf_config_job} task {tf_config_task})'
            )
        experiment.update(task=tf_config_task, job_name=tf_config_job)
    cfg = config.ExperimentConfig(
        **experiment, agent=agent, environment=environment, learner=learner, cluster=cluster
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
            tf_startup.start_tensorflow(show_all=logging.get_verbosity() >= logging.DEBUG)
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
