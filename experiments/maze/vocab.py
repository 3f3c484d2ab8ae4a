"""The maze's tokenizer: a byte-level BPE trained on every text the maze can show, merging across words.

The maze speaks a closed language: 4 moves, "Success\\n", "Failure\\n", the
wall sentences and, in the fully observed variant, one observation per cell.
A BPE trained on that corpus with merges allowed across spaces turns every
recurring phrase into one token ("move up\\n", "There are walls above you,
below you.\\n", ". Your current position is at position "), while digits stay
single tokens: a fully observed observation is 9 or 10 tokens (the goal's and
the agent's coordinates as digit tokens between phrase tokens), a partially
observed one and a move 1 token each. So the policy and the values must read
positions from their digits (nothing ties the token "1" to a place in the maze
but training), and a 40-text window of the partially observed maze is about 40
tokens, which keeps the packed rows affordable on a CPU. (GPT-2's own BPE,
LMRL-Gym's, splits at every word and would make these 5 to 10 times longer.)
Deterministic: the corpus is enumerated from `env`, so every process builds
the same tokenizer; the run saves it in the workdir.
"""

from __future__ import annotations

import tokenizers as hf_tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from ilql_jax.tokenizers import MARKUP, PAD, BPETokenizer

from .env import ACTIONS, FAILURE, GOAL, MAZE, SUCCESS, fully_observed, partially_observed, start_positions

__all__ = ["VOCAB_SIZE", "corpus", "maze_tokenizer"]

# Enough merges for every phrase of the corpus to become one token (training stops when no pair repeats).
VOCAB_SIZE = 1024


def corpus() -> list[str]:
    """Every text the maze shows or accepts: observations of both variants at every start, moves, endings."""
    cells = start_positions()
    texts = [fully_observed(MAZE, p, GOAL) for p in cells] + sorted({partially_observed(MAZE, p) for p in cells})
    return texts + list(ACTIONS) + [SUCCESS, FAILURE]


def maze_tokenizer() -> BPETokenizer:
    """The BPE of the module docstring (markup and `<pad>` as special ids, `save`/`load_tokenizer` round-trip)."""
    tokenizer = hf_tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[PAD, *MARKUP],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # Repeats weigh nothing in which pairs merge first beyond their counts; every text once is enough.
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    return BPETokenizer(tokenizer)
