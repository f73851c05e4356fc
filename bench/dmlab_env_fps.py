"""DeepMind Lab environment frames/s with 1, 2 and 4 environment subprocesses.

    python bench/dmlab_env_fps.py [--level_name=explore_goal_locations_small] [--num_envs=1,2,4]
        [--seconds=20] [--rounds=3]

Each environment is a subprocess from `environments.create_environment`, as in training, driven
by its own thread with uniformly random actions from the original's action set; frames are agent
steps x 4 action repeats, at the original's 96x72 observations. Within a round each N runs once,
in turn; each figure is the median over the rounds. Prints a markdown table.
"""

import argparse
import os
import statistics

import train_fps  # bench/ is this script's directory, so on sys.path.


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--level_name', default='explore_goal_locations_small')
    parser.add_argument('--num_envs', default='1,2,4')
    parser.add_argument('--seconds', type=float, default=20.0)
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args()
    counts = [int(n) for n in args.num_envs.split(',')]
    rates: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            rates[n].append(train_fps.env_only_rate(n, args.seconds, args.level_name))
    print(f'{args.level_name}, {os.cpu_count()} cores, median of {args.rounds} rounds')
    print('| env subprocesses | env frames/s | per env | rounds |')
    print('|---|---|---|---|')
    for n in counts:
        median = statistics.median(rates[n])
        spread = ', '.join(f'{r:.0f}' for r in rates[n])
        print(f'| {n} | {median:.0f} | {median / n:.0f} | {spread} |')


if __name__ == '__main__':
    main()
