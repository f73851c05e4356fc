"""The registry of suites: their names, levels, action sets and scores, in one place.

A run whose `--level_name` is a suite name plays the suite's levels (round robin over the
actors in training) and reports its human-normalised scores (training summaries, test mode):

- `dmlab30`: the 30 train levels (test mode: their test twins); DeepMind Lab's 9 actions;
  scores `no_cap` and `cap_100` (mean human-normalised score, uncapped and capped at 100).
- `atari57`: the 57 `atari/<Game>` levels; all 18 actions by default (one agent plays every
  game); scores `mean` and `median`.

The level tables load lazily (`suite(name)`), so the names are known without reading them.
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

NAMES = ('dmlab30', 'atari57')
ATARI_PREFIX = 'atari/'
DMLAB30_PREFIX = 'contributed/dmlab30/'


class Suite(NamedTuple):
    """One suite.

    Attributes:
      name: the suite's `--level_name`.
      levels: `levels(is_test)`: the level names a run of the suite plays.
      full_action_space: whether its agent needs the full action set (Atari's 18 actions: one
        agent plays every game) by default.
      scores: `scores(level_returns)`: the suite's human-normalised scores, by short name, from
        `{level: episode returns}` with every level present (train or test names).
    """

    name: str
    levels: Callable[[bool], list[str]]
    full_action_space: bool
    scores: Callable[[Mapping[str, Sequence[float]]], dict[str, float]]


def _dmlab30() -> Suite:
    from scalable_agent2.scoring import dmlab30

    def levels(is_test: bool) -> list[str]:
        return list(dmlab30.TEST_LEVELS if is_test else dmlab30.TRAIN_LEVELS)

    def scores(level_returns: Mapping[str, Sequence[float]]) -> dict[str, float]:
        # Levels as DeepMind Lab names them (`contributed/dmlab30/<level>`) or as the table does.
        returns = {_strip(k, DMLAB30_PREFIX): list(v) for k, v in level_returns.items()}
        return {
            'no_cap': dmlab30.compute_human_normalized_score(returns, per_level_cap=None),
            'cap_100': dmlab30.compute_human_normalized_score(returns, per_level_cap=100),
        }

    return Suite('dmlab30', levels, False, scores)


def _atari57() -> Suite:
    from scalable_agent2.scoring import atari57

    def levels(is_test: bool) -> list[str]:
        del is_test  # The same games in training and test mode.
        return [ATARI_PREFIX + game for game in atari57.GAMES]

    def scores(level_returns: Mapping[str, Sequence[float]]) -> dict[str, float]:
        returns = {k: list(v) for k, v in level_returns.items()}
        mean, median = atari57.compute_mean_and_median_human_normalized_score(returns)
        return {'mean': mean, 'median': median}

    return Suite('atari57', levels, True, scores)


def _strip(level_name: str, prefix: str) -> str:
    return level_name[len(prefix) :] if level_name.startswith(prefix) else level_name


_BUILDERS = {'dmlab30': _dmlab30, 'atari57': _atari57}
assert tuple(_BUILDERS) == NAMES


@functools.cache
def suite(name: str) -> Suite | None:
    """The suite called `name`, or None when `name` is a single level."""
    builder = _BUILDERS.get(name)
    return None if builder is None else builder()


def suite_of(level_name: str) -> str | None:
    """`level_name` if it names a suite (its score is reported), else None."""
    return level_name if level_name in NAMES else None


def full_action_space(level_name: str) -> bool:
    """Whether a run of `level_name` needs the full action set by default."""
    found = suite(level_name)
    return found is not None and found.full_action_space


def level_score(level_name: str, returns: Sequence[float]) -> float | None:
    """The human-normalised score of one level of a suite (`atari/<Game>` or a DMLab-30 level),
    from its episode returns; None for a level of no suite."""
    from scalable_agent2.scoring import atari57, dmlab30

    if level_name.startswith(ATARI_PREFIX):
        return atari57.level_human_normalized_score(level_name, returns)
    return dmlab30.level_human_normalized_score(level_name, returns)


def suite_scores(name: str, level_returns: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The human-normalised scores of suite `name` from per-level episode returns.

    Returns:
      For 'dmlab30': `no_cap` and `cap_100` (mean HNS); for 'atari57': `mean` and `median`.

    Raises:
      ValueError: `name` is no suite, or a level is missing.
    """
    found = suite(name)
    if found is None:
        raise ValueError(f'no suite score for {name!r}; expected one of {", ".join(NAMES)}')
    return found.scores(level_returns)
