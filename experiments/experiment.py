"""IMPALA experiment: `python experiments/experiment.py --level_name=... [--mode=test]`.

Thin entry point; the flags and their handling live in `scalable_agent2/cli.py`.
"""

from scalable_agent2 import cli

if __name__ == '__main__':
    cli.main()
