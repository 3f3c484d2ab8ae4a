"""`python -m experiments.wordle [--preset default|smoke] [--workdir DIR] [--FIELD VALUE ...]`.

Fields are those of `experiments.wordle.run.WordleConfig`, e.g. `--n_eval_games 256 --beta 8`.
"""

import argparse
import sys

from experiments.wordle.run import PRESETS, WordleConfig, run
from ilql_jax.config import ConfigError, parse_config
from ilql_jax.loop import Preempted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.wordle", description=__doc__, add_help=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--workdir", default="runs/wordle")
    args, rest = parser.parse_known_args(argv)
    try:
        cfg = parse_config(WordleConfig, rest, PRESETS[args.preset])
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
