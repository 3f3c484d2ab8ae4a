"""`python -m experiments.graph_walks [--preset default|fast|smoke] [--workdir DIR] [--FIELD VALUE ...]`.

Fields are those of `experiments.graph_walks.run.GraphWalkConfig`, e.g. `--seeds 5 --recipes '["shared"]'`.
"""

import sys

from experiments import cli
from experiments.graph_walks.run import PRESETS, GraphWalkConfig, run


def main(argv=None) -> int:
    return cli.main("python -m experiments.graph_walks", __doc__, GraphWalkConfig, PRESETS, run,
                    "runs/graph_walks", argv)


if __name__ == "__main__":
    sys.exit(main())
