"""Atari-57 games and human-normalised scores (mean and median over the 57 games).

The reference table (`scalable_agent2/data/atari57_scores.csv`) gives each game's random-agent
and human scores. A game's score is `100 * (return - random) / (human - random)`.
"""

import re
from collections.abc import Mapping

import numpy as np
from absl import logging

from scalable_agent2.scoring import common
from scalable_agent2.scoring.common import Returns

_TABLE = common.read_table('atari57_scores.csv')

# The 57 games as ROM names (snake_case, e.g. 'pong', 'montezuma_revenge'), in the table's order.
GAMES: tuple[str, ...] = tuple(row['game'] for row in _TABLE)
RANDOM_SCORES: dict[str, float] = {row['game']: float(row['random_score']) for row in _TABLE}
HUMAN_SCORES: dict[str, float] = {row['game']: float(row['human_score']) for row in _TABLE}


def _squash(name: str) -> str:
    return re.sub(r'[^a-z0-9]', '', name.lower())


# 'montezumarevenge' -> 'montezuma_revenge': matches CamelCase ids and snake_case ROM names.
_BY_SQUASHED_NAME: dict[str, str] = {_squash(game): game for game in GAMES}
assert len(_BY_SQUASHED_NAME) == len(GAMES)


def game_name(level_name: str) -> str | None:
    """The Atari-57 game of a level name, or None when it is not one.

    Accepts 'pong', 'atari/Pong', 'atari/MontezumaRevenge', 'montezuma_revenge', 'ALE/Pong-v5'.
    """
    name = level_name.split('/')[-1]
    name = re.sub(r'-v\d+$', '', name)
    name = re.sub(r'NoFrameskip$', '', name)
    return _BY_SQUASHED_NAME.get(_squash(name))


def human_normalized_scores(
    level_returns: Mapping[str, Returns], per_level_cap: float | None = None
) -> dict[str, float]:
    """Per-game human-normalised scores.

    Args:
      level_returns: level name (any form `game_name` accepts; non-Atari-57 names are ignored)
        -> return, or a sequence of episode returns whose mean is used. All 57 games must be
        present.
      per_level_cap: if not None, each game's score is capped at this value.

    Returns:
      Game (ROM name) -> score, for the 57 games.

    Raises:
      ValueError: if a game is missing, reported twice or has no returns.
    """
    by_game: dict[str, float] = {}
    reported_as: dict[str, str] = {}
    for level_name, returns in level_returns.items():
        game = game_name(level_name)
        if game is None:
            logging.info('Skipping level %s: not in Atari-57.', level_name)
            continue
        if game in by_game:
            raise ValueError(
                f'Game {game!r} reported twice (as {reported_as[game]!r} and {level_name!r}); '
                'report each game once'
            )
        by_game[game] = common.mean_return(level_name, returns)
        reported_as[game] = level_name
    missing = [game for game in GAMES if game not in by_game]
    if missing:
        raise ValueError(f'Missing Atari-57 games: {missing}')
    scores = {}
    for game in GAMES:
        scores[game] = common.human_normalized(
            by_game[game], RANDOM_SCORES[game], HUMAN_SCORES[game], per_level_cap
        )
    return scores


def compute_mean_and_median_human_normalized_score(
    level_returns: Mapping[str, Returns], per_level_cap: float | None = None
) -> tuple[float, float]:
    """Mean and median over the 57 games of the human-normalised score.

    See `human_normalized_scores` for the arguments and errors.
    """
    scores = np.array(list(human_normalized_scores(level_returns, per_level_cap).values()))
    return float(np.mean(scores)), float(np.median(scores))


def compute_human_normalized_score(
    level_returns: Mapping[str, Returns], per_level_cap: float | None = None
) -> float:
    """Mean human-normalised score over the 57 games (same signature as DMLab-30's)."""
    return compute_mean_and_median_human_normalized_score(level_returns, per_level_cap)[0]


def level_human_normalized_score(level_name: str, returns: Returns) -> float | None:
    """One game's uncapped human-normalised score, or None when it is not an Atari-57 game.

    Args:
      level_name: any form `game_name` accepts.
      returns: the return, or a sequence of episode returns whose mean is used.
    """
    game = game_name(level_name)
    if game is None:
        return None
    value = common.mean_return(level_name, returns)
    return common.human_normalized(value, RANDOM_SCORES[game], HUMAN_SCORES[game], None)
