"""`python -m experiments.wordle [--preset default|smoke] [--workdir DIR] [--FIELD VALUE ...]`.

Fields are those of `experiments.wordle.run.WordleConfig`, e.g. `--n_eval_games 256 --beta 8`.
"""

import sys

from experiments import cli
from experiments.wordle.run import PRESETS, WordleConfig, run


def main(argv=None) -> int:
    return cli.main("python -m experiments.wordle", __doc__, WordleConfig, PRESETS, run, "runs/wordle", argv)


if __name__ == "__main__":
    sys.exit(main())
