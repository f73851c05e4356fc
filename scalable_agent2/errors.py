"""The errors that end a run with one line instead of a traceback.

Two families, told apart from bugs by their type:

* `UsageError` (a `ValueError`): the user's mistake, fixed by changing the command or the files
  it names: a bad flag value, an unknown level, an unwritable logdir, a checkpoint of another
  agent, no checkpoint (test mode), only corrupt checkpoints, DeepMind Lab not installed, no
  learner (or something else than a TensorFlow server) at the learner address, a port in use.
  The command line prints `error: <first line>` and exits with `EXIT_USAGE` (2).
* `RunAbortedError` (a `RuntimeError`): a run that started stopped for a diagnosed cause outside
  the code, after saving what could be saved: training diverged (non-finite loss or gradient
  norm), an environment crashed again and again. The command line prints `error: <first line>`
  and exits with `EXIT_ABORTED` (1); the traceback goes to the log at debug verbosity.

Any other exception (a shape `ValueError` inside TensorFlow, a `KeyError` in our code) is a bug
and keeps its full traceback. An error of either family wrapped by another one (`raise ...
from`, e.g. a crash loop in an actor thread re-raised as "a training thread failed") is found
through `__cause__`.

This module imports nothing heavy, so the command line can use it before TensorFlow loads.
"""

EXIT_USAGE = 2
EXIT_ABORTED = 1


class UsageError(ValueError):
    """A user mistake: the message says what to change; printed as one line, exit status 2."""


class RunAbortedError(RuntimeError):
    """A run stopped for a diagnosed cause (divergence, crash loop); one line, exit status 1."""


def user_facing(error: BaseException) -> BaseException | None:
    """`error`, or the nearest of its causes, that is a `UsageError` or `RunAbortedError`.

    Follows `__cause__` only (an explicit `raise ... from`, i.e. a deliberate wrapping), at most
    20 links deep: a bug raised while handling a user mistake keeps its traceback. None when the
    chain holds neither family.
    """
    seen = 0
    while error is not None and seen < 20:
        if isinstance(error, UsageError | RunAbortedError):
            return error
        error = error.__cause__
        seen += 1
    return None


def exit_code(error: BaseException) -> int:
    """`EXIT_USAGE` for a `UsageError`, else `EXIT_ABORTED`."""
    return EXIT_USAGE if isinstance(error, UsageError) else EXIT_ABORTED


def first_line(error: BaseException) -> str:
    """The first non-empty line of the error's message (its type name if it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
