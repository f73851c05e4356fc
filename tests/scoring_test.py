"""DMLab-30 and Atari-57 human-normalised scores on hand-computed examples."""

import numpy as np
import pytest

from scalable_agent2.scoring import atari57, dmlab30, suites

# A few reference values from the IMPALA paper's tables, written out independently.
WATERMAZE = ('rooms_watermaze', 4.065, 54.0)
COLLECT_GOOD = ('rooms_collect_good_objects_test', 0.073, 10.0)
PONG = ('pong', -20.7, 14.6)
MONTEZUMA = ('montezuma_revenge', 0.0, 4753.3)


# ---------------------------------------------------------------------------- DMLab-30 tables.


def test_dmlab30_tables():
    assert len(dmlab30.TRAIN_LEVELS) == len(dmlab30.TEST_LEVELS) == 30
    assert len(set(dmlab30.TEST_LEVELS)) == 30
    distinct = {k: v for k, v in dmlab30.LEVEL_MAPPING.items() if k != v}
    assert distinct == {
        'rooms_collect_good_objects_train': 'rooms_collect_good_objects_test',
        'rooms_exploit_deferred_effects_train': 'rooms_exploit_deferred_effects_test',
    }
    assert list(dmlab30.LEVEL_MAPPING) == list(dmlab30.TRAIN_LEVELS)
    assert list(dmlab30.LEVEL_MAPPING.values()) == list(dmlab30.TEST_LEVELS)
    for level, random, human in (WATERMAZE, COLLECT_GOOD):
        assert (dmlab30.RANDOM_SCORES[level], dmlab30.HUMAN_SCORES[level]) == (random, human)
    for prefix in ('rooms', 'language', 'lasertag', 'natlab', 'skymaze', 'psychlab', 'explore'):
        assert any(level.startswith(prefix) for level in dmlab30.TEST_LEVELS)


def _dmlab_returns_at(fraction_of_human: float, names=dmlab30.TEST_LEVELS) -> dict[str, float]:
    """Returns that score `100 * fraction_of_human` on every level."""
    result = {}
    for name in names:
        test = dmlab30.LEVEL_MAPPING.get(name, name)
        random, human = dmlab30.RANDOM_SCORES[test], dmlab30.HUMAN_SCORES[test]
        result[name] = random + fraction_of_human * (human - random)
    return result


@pytest.mark.parametrize('names', [dmlab30.TEST_LEVELS, dmlab30.TRAIN_LEVELS])
@pytest.mark.parametrize('fraction', [0.0, 1.0, 0.5])
def test_dmlab30_uniform(names, fraction):
    score = dmlab30.compute_human_normalized_score(_dmlab_returns_at(fraction, names), None)
    assert score == pytest.approx(100 * fraction)


def test_dmlab30_hand_computed_and_cap():
    returns = _dmlab_returns_at(0.0)
    level, random, human = WATERMAZE
    returns[level] = 103.935  # (103.935 - 4.065) / (54 - 4.065) = 2 -> 200.
    assert dmlab30.compute_human_normalized_score(returns, None) == pytest.approx(200 / 30)
    assert dmlab30.compute_human_normalized_score(returns, 100) == pytest.approx(100 / 30)
    assert dmlab30.compute_human_normalized_score(returns, 150.0) == pytest.approx(150 / 30)
    per_level = dmlab30.human_normalized_scores(returns)
    assert per_level[level] == pytest.approx(200.0)
    assert sum(v != pytest.approx(0.0) for v in per_level.values()) == 1


def test_dmlab30_cap_does_not_raise_low_scores():
    returns = _dmlab_returns_at(0.0)
    level, random, human = COLLECT_GOOD
    returns[level] = random - (human - random)  # -100.
    assert dmlab30.compute_human_normalized_score(returns, 100) == pytest.approx(-100 / 30)


def test_dmlab30_train_level_scored_as_test_twin():
    returns = _dmlab_returns_at(0.0)
    del returns['rooms_collect_good_objects_test']
    returns['rooms_collect_good_objects_train'] = 10.0  # The test level's human score.
    assert dmlab30.compute_human_normalized_score(returns, None) == pytest.approx(100 / 30)
    assert dmlab30.human_normalized_scores(returns)['rooms_collect_good_objects_test'] == (
        pytest.approx(100.0)
    )


def test_dmlab30_sequences_of_returns_are_averaged():
    returns = _dmlab_returns_at(0.0)
    returns['rooms_watermaze'] = [4.065, 54.0, 54.0, 4.065]  # Mean 29.0325 -> 50.
    assert dmlab30.human_normalized_scores(returns)['rooms_watermaze'] == pytest.approx(50.0)
    assert dmlab30.compute_human_normalized_score(returns, None) == pytest.approx(50 / 30)


def test_dmlab30_against_numpy_reference():
    rng = np.random.RandomState(0)
    returns = {name: float(rng.uniform(-10, 400)) for name in dmlab30.TRAIN_LEVELS}
    tests = [dmlab30.LEVEL_MAPPING[name] for name in dmlab30.TRAIN_LEVELS]
    r = np.array([returns[name] for name in dmlab30.TRAIN_LEVELS])
    lo = np.array([dmlab30.RANDOM_SCORES[t] for t in tests])
    hi = np.array([dmlab30.HUMAN_SCORES[t] for t in tests])
    hns = 100 * (r - lo) / (hi - lo)
    assert dmlab30.compute_human_normalized_score(returns, None) == pytest.approx(hns.mean())
    expected_capped = np.minimum(hns, 100).mean()
    assert dmlab30.compute_human_normalized_score(returns, 100) == pytest.approx(expected_capped)
    assert expected_capped < hns.mean()  # The example exercises the cap.


def test_dmlab30_missing_levels_raise_naming_them():
    returns = _dmlab_returns_at(1.0)
    del returns['rooms_watermaze']
    del returns['psychlab_visual_search']
    with pytest.raises(ValueError, match='Missing') as info:
        dmlab30.compute_human_normalized_score(returns, None)
    assert 'rooms_watermaze' in str(info.value)
    assert 'psychlab_visual_search' in str(info.value)
    assert 'explore_goal_locations_small' not in str(info.value)


def test_dmlab30_empty_returns_raise():
    returns = _dmlab_returns_at(1.0)
    returns['rooms_watermaze'] = []
    with pytest.raises(ValueError, match='rooms_watermaze'):
        dmlab30.compute_human_normalized_score(returns, None)


def test_dmlab30_train_and_test_name_both_reported_raise():
    returns = _dmlab_returns_at(1.0)
    returns['rooms_collect_good_objects_train'] = 0.0
    with pytest.raises(ValueError, match='rooms_collect_good_objects'):
        dmlab30.compute_human_normalized_score(returns, None)


def test_dmlab30_non_suite_levels_ignored():
    returns = _dmlab_returns_at(0.5)
    returns['seekavoid_arena_01'] = 1e6
    returns['contributed/dmlab30/rooms_watermaze'] = 1e6
    assert dmlab30.compute_human_normalized_score(returns, None) == pytest.approx(50.0)


# ----------------------------------------------------------------------------- Atari-57.


def _camel(game: str) -> str:
    return ''.join(part.capitalize() for part in game.split('_'))


def test_atari57_tables():
    assert len(atari57.GAMES) == len(set(atari57.GAMES)) == 57
    assert 'pong' in atari57.GAMES and 'montezuma_revenge' in atari57.GAMES
    assert atari57.GAMES == tuple(sorted(atari57.GAMES))
    for game, random, human in (PONG, MONTEZUMA):
        assert (atari57.RANDOM_SCORES[game], atari57.HUMAN_SCORES[game]) == (random, human)


@pytest.mark.parametrize(
    'level, game',
    [
        ('pong', 'pong'),
        ('atari/Pong', 'pong'),
        ('atari/pong', 'pong'),
        ('atari/MontezumaRevenge', 'montezuma_revenge'),
        ('atari/montezuma_revenge', 'montezuma_revenge'),
        ('atari/UpNDown', 'up_n_down'),
        ('atari/MsPacman', 'ms_pacman'),
        ('ALE/Pong-v5', 'pong'),
        ('PongNoFrameskip-v4', 'pong'),
        ('gym/CartPole-v1', None),
        ('explore_goal_locations_small', None),
    ],
)
def test_atari57_game_name(level, game):
    assert atari57.game_name(level) == game


def test_atari57_every_camel_case_name_resolves():
    for game in atari57.GAMES:
        assert atari57.game_name('atari/' + _camel(game)) == game


def _atari_returns(hns_by_index, key=lambda game: 'atari/' + _camel(game)) -> dict[str, float]:
    """Returns giving game i the human-normalised score `hns_by_index[i]`."""
    result = {}
    for game, hns in zip(atari57.GAMES, hns_by_index):
        random, human = atari57.RANDOM_SCORES[game], atari57.HUMAN_SCORES[game]
        result[key(game)] = random + hns / 100 * (human - random)
    return result


def test_atari57_mean_and_median_hand_computed():
    # Game i scores 2*i: mean = median = 56; capped at 10: (0+2+...+10 + 51*10) / 57.
    returns = _atari_returns([2.0 * i for i in range(57)])
    mean, median = atari57.compute_mean_and_median_human_normalized_score(returns)
    assert (mean, median) == (pytest.approx(56.0), pytest.approx(56.0))
    capped_mean, capped_median = atari57.compute_mean_and_median_human_normalized_score(
        returns, per_level_cap=10.0
    )
    assert capped_mean == pytest.approx((30 + 51 * 10) / 57)
    assert capped_median == pytest.approx(10.0)
    assert atari57.compute_human_normalized_score(returns) == pytest.approx(56.0)


def test_atari57_median_differs_from_mean():
    hns = [0.0] * 57
    hns[atari57.GAMES.index('pong')] = 100.0 * 57  # One game far above human.
    returns = _atari_returns(hns, key=lambda game: game)
    returns['pong'] = 14.6 + 56 * (14.6 + 20.7)  # Hand-computed: 100 * 57 on pong.
    mean, median = atari57.compute_mean_and_median_human_normalized_score(returns)
    assert (mean, median) == (pytest.approx(100.0), pytest.approx(0.0))


def test_atari57_against_numpy_reference():
    rng = np.random.RandomState(1)
    returns = {}
    for game in atari57.GAMES:
        returns['atari/' + _camel(game)] = [float(x) for x in rng.uniform(-100, 20000, size=3)]
    r = np.array([np.mean(returns['atari/' + _camel(g)]) for g in atari57.GAMES])
    lo = np.array([atari57.RANDOM_SCORES[g] for g in atari57.GAMES])
    hi = np.array([atari57.HUMAN_SCORES[g] for g in atari57.GAMES])
    hns = 100 * (r - lo) / (hi - lo)
    mean, median = atari57.compute_mean_and_median_human_normalized_score(returns)
    assert mean == pytest.approx(hns.mean())
    assert median == pytest.approx(np.median(hns))


def test_atari57_missing_games_raise_naming_them():
    returns = _atari_returns([100.0] * 57)
    del returns['atari/Pong']
    with pytest.raises(ValueError, match='Missing') as info:
        atari57.compute_mean_and_median_human_normalized_score(returns)
    assert "'pong'" in str(info.value)
    assert 'breakout' not in str(info.value)


def test_atari57_duplicates_raise_and_others_ignored():
    returns = _atari_returns([100.0] * 57)
    returns['gym/CartPole-v1'] = 500.0
    assert atari57.compute_human_normalized_score(returns) == pytest.approx(100.0)
    returns['pong'] = 0.0
    with pytest.raises(ValueError, match='pong'):
        atari57.compute_human_normalized_score(returns)


def test_the_registry_of_suites_holds_their_levels_action_sets_and_scores():
    assert suites.NAMES == ('dmlab30', 'atari57')
    assert suites.suite('atari/Pong') is None and suites.suite_of('atari/Pong') is None
    dmlab = suites.suite('dmlab30')
    assert dmlab.levels(False) == list(dmlab30.TRAIN_LEVELS)
    assert dmlab.levels(True) == list(dmlab30.TEST_LEVELS)
    assert [f'atari/{g}' for g in atari57.GAMES] == suites.suite('atari57').levels(True)
    assert suites.full_action_space('atari57') and not suites.full_action_space('dmlab30')
    assert not suites.full_action_space('atari/Pong')
    returns = {
        suites.DMLAB30_PREFIX + level: [dmlab30.HUMAN_SCORES[level]]
        for level in dmlab30.TEST_LEVELS
    }
    assert suites.suite_scores('dmlab30', returns) == pytest.approx(
        {'no_cap': 100.0, 'cap_100': 100.0}
    )
    with pytest.raises(ValueError, match='no suite score'):
        suites.suite_scores('atari/Pong', {})


# ---------------------------------------------------------------------------- One level's score.


def test_level_score_of_a_dmlab30_level_uses_its_test_twin():
    level, random, human = COLLECT_GOOD
    expected = 100 * (6.0 - random) / (human - random)
    # The train name, the test name and the prefixed name all score against the test level.
    for name in (
        'rooms_collect_good_objects_train',
        level,
        'contributed/dmlab30/rooms_collect_good_objects_train',
    ):
        assert suites.level_score(name, [4.0, 8.0]) == pytest.approx(expected)


def test_level_score_of_an_atari_game_and_of_no_suite():
    game, random, human = PONG
    assert suites.level_score('atari/Pong', [-21.0, 21.0]) == pytest.approx(
        100 * (0.0 - random) / (human - random)
    )
    assert suites.level_score('seekavoid_arena_01', [1.0]) is None
    assert suites.level_score('gym/CartPole-v1', [500.0]) is None
    assert suites.level_score('atari/NotAGame', [1.0]) is None
    with pytest.raises(ValueError, match='empty'):
        suites.level_score('atari/Pong', [])
