"""Checkpoints in the log directory: save, restore the latest or a named one, refuse
incompatible ones.

A `tf.train.Checkpoint` of the learner's state is managed by `tf.train.CheckpointManager`.
Beside it, `agent_spec.json` records the agent's architecture (network, action count, ...), so a
restart with another agent fails with one clear line instead of a shape error deep in TF.
Restoring first reads every tensor of a checkpoint back (each carries a checksum): a torn or
garbled file (full disk, crash while writing) is skipped with a warning for the newest intact
one, and is called corrupt, never "another agent". Objects added to the learner's state after a
checkpoint was written (e.g. the learner-step counter) get defaults from `CheckpointState`, so
older checkpoints still restore. The errors for user mistakes are `errors.UsageError`s.
"""

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf
from absl import logging

from scalable_agent2.errors import UsageError

AGENT_SPEC_FILE = 'agent_spec.json'


class IncompatibleCheckpointError(UsageError):
    """The checkpoint in the log directory was written by a different agent."""


class NoCheckpointError(UsageError):
    """A checkpoint was required (test mode) but the log directory has none."""


class CorruptCheckpointError(UsageError):
    """Every checkpoint in the log directory is unreadable (truncated, empty or garbled)."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class CheckpointState(dict):
    """name -> trackable (for `tf.train.Checkpoint(**state)`), with defaults for newer objects.

    `defaults[name]()` sets object `name` when a restored checkpoint lacks it (one written
    before `name` was added to the state); it runs after everything else was restored, so it
    can derive the value from restored objects.
    """

    def __init__(
        self, objects: Mapping[str, Any], defaults: Mapping[str, Callable[[], None]] | None = None
    ):
        super().__init__(objects)
        self.defaults = dict(defaults or {})
        unknown = set(self.defaults) - set(self)
        if unknown:
            raise ValueError(f'defaults for objects not in the state: {sorted(unknown)}')


def saved_object_names(path: str) -> set[str]:
    """Top-level names of the objects whose values the checkpoint at `path` holds."""
    reader = tf.train.load_checkpoint(path)
    return {key.split('/')[0] for key in reader.get_variable_to_shape_map()}


def checkpoint_problem(path: str) -> str | None:
    """Why the checkpoint at `path` (a prefix such as `.../ckpt-100`) cannot be read, or None.

    Reads every tensor back, which checks each one's checksum.
    """
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as e:  # Any failure to read the bytes back means a corrupt file.
        return _first_line(e)
    return None


class Checkpointer:
    """Saves and restores a dict of trackables (the learner's `checkpoint_state`)."""

    def __init__(
        self,
        logdir: str,
        objects: dict[str, Any],
        agent_spec: dict[str, Any],
        max_to_keep: int = 3,
    ):
        """Creates the manager.

        Args:
          logdir: directory holding the checkpoints (created if missing).
          objects: name -> trackable (variables, modules, optimizers), for `tf.train.Checkpoint`;
            a `CheckpointState` (as `Learner.checkpoint_state`) also gives defaults for objects
            that older checkpoints lack.
          agent_spec: JSON-serialisable description of the agent; restoring a checkpoint whose
            spec differs raises `IncompatibleCheckpointError`.
          max_to_keep: checkpoints kept.
        """
        self._logdir = logdir
        self._agent_spec = dict(agent_spec)
        self._objects = dict(objects)
        self._defaults = dict(getattr(objects, 'defaults', {}))
        self._checkpoint = tf.train.Checkpoint(**objects)
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, directory=logdir, max_to_keep=max_to_keep, checkpoint_name='ckpt'
        )

    @property
    def latest_checkpoint(self) -> str | None:
        return self._manager.latest_checkpoint

    def check_agent_spec(self) -> None:
        """Raises `IncompatibleCheckpointError` if logdir's agent spec differs from this one."""
        path = os.path.join(self._logdir, AGENT_SPEC_FILE)
        if not os.path.exists(path):
            return
        with open(path) as f:
            saved = json.load(f)
        if saved != self._agent_spec:
            diffs = ', '.join(
                f'{key}={saved.get(key)!r} (now {self._agent_spec.get(key)!r})'
                for key in sorted(set(saved) | set(self._agent_spec))
                if saved.get(key) != self._agent_spec.get(key)
            )
            raise IncompatibleCheckpointError(
                f'checkpoint in {self._logdir} was written by a different agent: {diffs}'
            )

    def restore_latest(self, required: bool = False, partial: bool = False) -> str | None:
        """Restores the latest checkpoint, if any.

        Create the agent's variables before calling this, so shape mismatches are detected
        here rather than later.

        Args:
          required: raise `NoCheckpointError` when there is no checkpoint.
          partial: allow objects saved but not restored (e.g. optimizer slots in test mode).

        Returns:
          The restored checkpoint's path, or None when there was none.
        """
        path = self._manager.latest_checkpoint
        if path is None:
            if required:
                raise NoCheckpointError(f'no checkpoint found in {self._logdir}')
            return None
        self.check_agent_spec()
        return self._restore(self._newest_intact(path), partial)

    def restore(self, name: str, partial: bool = False) -> str:
        """Restores one checkpoint: `name` in logdir (e.g. 'ckpt-6000000') or a path prefix.

        Unlike `restore_latest`, a corrupt checkpoint is an error, never skipped for another.

        Returns:
          The restored checkpoint's path.

        Raises:
          NoCheckpointError: there is no such checkpoint.
          CorruptCheckpointError: it does not read back.
          IncompatibleCheckpointError: it was written by another agent.
        """
        path = name if os.path.dirname(name) else os.path.join(self._logdir, name)
        if not os.path.exists(path + '.index'):
            raise NoCheckpointError(f'no checkpoint {path} (no {os.path.basename(path)}.index)')
        self.check_agent_spec()
        problem = checkpoint_problem(path)
        if problem is not None:
            raise CorruptCheckpointError(f'checkpoint {path} is corrupt: {problem}')
        return self._restore(path, partial)

    def _restore(self, path: str, partial: bool) -> str:
        saved = saved_object_names(path)
        missing = [name for name in self._defaults if name not in saved]
        checkpoint = self._checkpoint
        if missing:  # Written before these objects existed: restore the others.
            checkpoint = tf.train.Checkpoint(
                **{k: v for k, v in self._objects.items() if k not in missing}
            )
        try:
            status = checkpoint.restore(path)
            if partial:
                status.expect_partial()
            else:
                status.assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.OpError) as e:
            raise IncompatibleCheckpointError(
                f'checkpoint {path} does not match this agent: {_first_line(e)}'
            ) from e
        for name in missing:
            self._defaults[name]()
            logging.info(
                'Checkpoint %s has no %s (an older version wrote it); set it to its default.',
                path,
                name,
            )
        return path

    def _newest_intact(self, latest: str) -> str:
        """`latest` if it reads back, else the newest older one that does (with warnings)."""
        candidates = [latest] + [p for p in reversed(self._manager.checkpoints) if p != latest]
        problems = []
        for path in candidates:
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            logging.warning('Skipping corrupt checkpoint %s: %s', path, problem)
            problems.append(f'{os.path.basename(path)} ({problem})')
        raise CorruptCheckpointError(
            f'every checkpoint in {self._logdir} is corrupt: {"; ".join(problems)}'
        )

    def save(self, checkpoint_number: int) -> str:
        """Writes a checkpoint (numbered, e.g., by the frame count) and the agent spec."""
        path = self._manager.save(checkpoint_number=checkpoint_number)
        spec_path = os.path.join(self._logdir, AGENT_SPEC_FILE)
        tmp_path = spec_path + '.tmp'
        with open(tmp_path, 'w') as f:
            json.dump(self._agent_spec, f, indent=2, sort_keys=True)
        os.replace(tmp_path, spec_path)
        logging.info('Saved checkpoint %s', path)
        return path
