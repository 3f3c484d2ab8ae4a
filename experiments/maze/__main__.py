"""`python -m experiments.maze [--preset default|smoke] [--workdir DIR] [--FIELD VALUE ...]`.

Fields are those of `experiments.maze.run.MazeConfig`, e.g. `--variant po --seeds 3`.
"""

import sys

from experiments import cli
from experiments.maze.run import PRESETS, MazeConfig, run


def main(argv=None) -> int:
    return cli.main("python -m experiments.maze", __doc__, MazeConfig, PRESETS, run, "runs/maze", argv)


if __name__ == "__main__":
    sys.exit(main())
