"""The maze's tokenizer: a byte-level BPE trained on every text the maze can show, merging across words.

The maze speaks a closed language: 4 moves, "Success\n", "Failure\n", the
7 wall sentences of the partially observed variant and, in the fully observed
one, one sentence per cell. A BPE trained on that corpus with no split at
spaces or digits (`use_regex=False`) learns every text as one token: an
observation is one token, a move is one token, and a 40-text window of the
partially observed maze is 40 tokens. The policy and the values thus read each
cell as a word of their vocabulary rather than as its coordinates spelled in
digits. Splitting digits out (a cell is then 3 or 4 digit tokens between phrase
tokens, and an observation 9 to 11 tokens) was tried first: after 600 steps even
a supervised regression of the optimal values on that encoding picked the best
move at only 14 of the 25 starts, and ILQL at 11 (docs/results/maze.md), since a
2-layer GPT-2 trained from scratch has to learn what pretrained GPT-2, LMRL-Gym's
model, brings: which digits name which place. (GPT-2's own BPE splits at every
word and would make the texts 5 to 20 times longer.) Deterministic: the corpus
is enumerated from `env`, so every process builds the same tokenizer; the run
saves it in the workdir.
"""

from __future__ import annotations

import tokenizers as hf_tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from ilql_jax.tokenizers import MARKUP, PAD, BPETokenizer

from .env import ACTIONS, FAILURE, GOAL, MAZE, SUCCESS, fully_observed, partially_observed, start_positions

__all__ = ["VOCAB_SIZE", "corpus", "maze_tokenizer"]

# Enough merges for every text of the corpus to become one token (training stops when no pair repeats).
VOCAB_SIZE = 1024


def corpus() -> list[str]:
    """Every text the maze shows or accepts: observations of both variants at every start, moves, endings."""
    cells = start_positions()
    texts = [fully_observed(MAZE, p, GOAL) for p in cells] + sorted({partially_observed(MAZE, p) for p in cells})
    return texts + list(ACTIONS) + [SUCCESS, FAILURE]


def maze_tokenizer() -> BPETokenizer:
    """The BPE of the module docstring (markup and `<pad>` as special ids, `save`/`load_tokenizer` round-trip)."""
    tokenizer = hf_tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[PAD, *MARKUP],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # Repeats weigh nothing in which pairs merge first beyond their counts; every text once is enough.
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    return BPETokenizer(tokenizer)
