"""`python -m experiments.dialogue [--preset default|smoke] [--workdir DIR] [--FIELD VALUE ...]`.

Fields are those of `experiments.dialogue.run.DialogueConfig`, e.g. `--reward yn --n_eval 256 --betas '[4]'`.
"""

import sys

from experiments import cli
from experiments.dialogue.run import PRESETS, DialogueConfig, run


def main(argv=None) -> int:
    return cli.main("python -m experiments.dialogue", __doc__, DialogueConfig, PRESETS, run, "runs/dialogue", argv)


if __name__ == "__main__":
    sys.exit(main())
