"""DMLab-30 levels and the human-normalised score, as in the original `dmlab30.py`.

The reference table (`scalable_agent2/data/dmlab30_scores.csv`) lists each level's train and test
names with the random-agent and human scores of the test level. Scores are computed on test
levels; returns reported under a train name count as its test twin.
"""

from collections.abc import Mapping

import numpy as np
from absl import logging

from scalable_agent2.scoring import common
from scalable_agent2.scoring.common import Returns

_TABLE = common.read_table('dmlab30_scores.csv')

# The 30 levels, in the table's order.
TRAIN_LEVELS: tuple[str, ...] = tuple(row['train_level'] for row in _TABLE)
TEST_LEVELS: tuple[str, ...] = tuple(row['test_level'] for row in _TABLE)
# Train level name -> test level name (identical for 28 of the 30 levels).
LEVEL_MAPPING: dict[str, str] = {row['train_level']: row['test_level'] for row in _TABLE}
# Keyed by test level name.
RANDOM_SCORES: dict[str, float] = {row['test_level']: float(row['random_score']) for row in _TABLE}
HUMAN_SCORES: dict[str, float] = {row['test_level']: float(row['human_score']) for row in _TABLE}

ALL_LEVELS: frozenset[str] = frozenset(TRAIN_LEVELS) | frozenset(TEST_LEVELS)


def _test_level_returns(level_returns: Mapping[str, Returns]) -> dict[str, float]:
    """Maps reported levels onto the 30 test levels; ignores other levels; checks coverage."""
    by_test_level: dict[str, float] = {}
    reported_as: dict[str, str] = {}
    for level_name, returns in level_returns.items():
        if level_name not in ALL_LEVELS:
            logging.info('Skipping level %s: not in DMLab-30.', level_name)
            continue
        test_level = LEVEL_MAPPING.get(level_name, level_name)
        if test_level in by_test_level:
            raise ValueError(
                f'Level {test_level!r} reported twice (as {reported_as[test_level]!r} and '
                f'{level_name!r}); report each level once'
            )
        by_test_level[test_level] = common.mean_return(level_name, returns)
        reported_as[test_level] = level_name
    missing = [level for level in TEST_LEVELS if level not in by_test_level]
    if missing:
        raise ValueError(f'Missing DMLab-30 levels: {missing}')
    return by_test_level


def human_normalized_scores(
    level_returns: Mapping[str, Returns], per_level_cap: float | None = None
) -> dict[str, float]:
    """Per-level human-normalised scores `100 * (return - random) / (human - random)`.

    Args:
      level_returns: level name (train or test name; other names are ignored) -> return, or a
        sequence of episode returns whose mean is used. Every DMLab-30 level must be present.
      per_level_cap: if not None, each level's score is capped at this value (the original
        reports both no cap and a cap of 100).

    Returns:
      Test level name -> score, for the 30 levels.

    Raises:
      ValueError: if a level is missing, reported twice (train and test name) or has no returns.
    """
    return {
        level: common.human_normalized(
            value, RANDOM_SCORES[level], HUMAN_SCORES[level], per_level_cap
        )
        for level, value in _test_level_returns(level_returns).items()
    }


def compute_human_normalized_score(
    level_returns: Mapping[str, Returns], per_level_cap: float | None
) -> float:
    """The DMLab-30 score: mean over the 30 levels of the (capped) human-normalised score.

    See `human_normalized_scores` for the arguments and errors.
    """
    return float(np.mean(list(human_normalized_scores(level_returns, per_level_cap).values())))


def level_human_normalized_score(level_name: str, returns: Returns) -> float | None:
    """One level's uncapped human-normalised score, or None when it is not a DMLab-30 level.

    Args:
      level_name: a train or test level name, with or without `contributed/dmlab30/`.
      returns: the return, or a sequence of episode returns whose mean is used.
    """
    level = level_name.removeprefix('contributed/dmlab30/')
    if level not in ALL_LEVELS:
        return None
    test_level = LEVEL_MAPPING.get(level, level)
    value = common.mean_return(level_name, returns)
    return common.human_normalized(value, RANDOM_SCORES[test_level], HUMAN_SCORES[test_level], None)
