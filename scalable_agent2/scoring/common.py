"""What the DMLab-30 and Atari-57 scores share: the reference tables and the score formula."""

import csv
import importlib.resources
import io
import math
from collections.abc import Sequence

import numpy as np

Returns = float | Sequence[float]


def read_table(filename: str) -> list[dict[str, str]]:
    """Rows of a reference table shipped in `scalable_agent2/data/`."""
    text = (
        importlib.resources.files('scalable_agent2')
        .joinpath('data', filename)
        .read_text(encoding='utf-8')
    )
    return list(csv.DictReader(io.StringIO(text)))


def mean_return(level_name: str, returns: Returns) -> float:
    """A level's score: the return itself, or the mean of a sequence of episode returns."""
    if isinstance(returns, (int, float, np.number)):
        value = float(returns)
    else:
        values = np.asarray(returns, dtype=np.float64).reshape(-1)
        if values.size == 0:
            raise ValueError(f'Missing returns for level {level_name!r}: got an empty sequence')
        value = float(np.mean(values))
    if not math.isfinite(value):
        raise ValueError(f'Return for level {level_name!r} is not finite: {value!r}')
    return value


def human_normalized(
    value: float, random: float, human: float, per_level_cap: float | None
) -> float:
    """`100 * (value - random) / (human - random)`, capped at `per_level_cap` when set."""
    score = 100.0 * (value - random) / (human - random)
    return score if per_level_cap is None else min(score, per_level_cap)
