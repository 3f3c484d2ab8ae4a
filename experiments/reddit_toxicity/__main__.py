"""`python -m experiments.reddit_toxicity [--preset default|smoke] [--workdir DIR] [--FIELD VALUE ...]`.

Fields are those of `experiments.reddit_toxicity.run.RedditConfig`, e.g.
`--reward noised_toxicity --data comments.jsonl --ilql_steps 3000`. `--model smollm2-135m-instruct` (or another
pretrained model) without `--preset` starts from the `pretrained` preset.
"""

import sys

from experiments import cli
from experiments.reddit_toxicity.run import PRESETS, RedditConfig, model_preset, run


def main(argv=None) -> int:
    return cli.main("python -m experiments.reddit_toxicity", __doc__, RedditConfig, PRESETS, run,
                    "runs/reddit_toxicity", argv, model_preset=model_preset)


if __name__ == "__main__":
    sys.exit(main())
