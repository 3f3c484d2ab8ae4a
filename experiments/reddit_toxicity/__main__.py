"""`python -m experiments.reddit_toxicity [--preset default|smoke] [--workdir DIR] [--FIELD VALUE ...]`.

Fields are those of `experiments.reddit_toxicity.run.RedditConfig`, e.g.
`--reward noised_toxicity --data comments.jsonl --ilql_steps 3000`.
"""

import argparse
import sys

from experiments.reddit_toxicity.run import PRESETS, RedditConfig, run
from ilql_jax.config import ConfigError, parse_config
from ilql_jax.loop import Preempted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.reddit_toxicity", description=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--workdir", default="runs/reddit_toxicity")
    args, rest = parser.parse_known_args(argv)
    try:
        cfg = parse_config(RedditConfig, rest, PRESETS[args.preset])
    except ConfigError as e:
        parser.error(str(e))
    try:
        run(cfg, args.workdir)
    except Preempted as e:  # SIGTERM/SIGINT: a checkpoint is saved; the same command resumes
        print(e)
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
