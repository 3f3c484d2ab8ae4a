"""A word-level vocabulary for the dialogue game: one id per word or punctuation mark.

The utterances come from a few hundred distinct words, so a word-level
vocabulary (about 225 ids) keeps utterances at ~5 tokens and the Q heads small;
a byte-level BPE fitted to so small a corpus splits most item names into
pieces and doubles the sequence length. Built with the `tokenizers` library's
`WordLevel` model and wrapped in `ilql_jax.tokenizers.BPETokenizer` (the
wrapper of any `tokenizers`-library tokenizer: markup and `<pad>` as special
ids, `save`/`load_tokenizer` through `tokenizer.json`). Decoding joins tokens
with spaces ("Is it a dog ?"), which the answerer reads like the original.
"""

from __future__ import annotations

import tokenizers as hf_tokenizers
from tokenizers import models, pre_tokenizers

from ilql_jax.tokenizers import BPETokenizer

from .catalogue import Catalogue
from .env import DONT_KNOW, NO, YES
from .policies import GUESS_TEMPLATES, QUESTION_TEMPLATES, VAGUE_QUESTIONS

__all__ = ["UNK", "corpus", "word_tokenizer"]

# All word characters, so decoding it and encoding again gives one id (a "<unk>" would come back as three),
# which keeps a sampled utterance's length through the text round trip between turns.
UNK = "UNK"


def corpus(catalogue: Catalogue) -> list[str]:
    """Every utterance the scripted questioners can say, and every reply."""
    texts = [q for templates in QUESTION_TEMPLATES.values() for q in templates] + list(VAGUE_QUESTIONS)
    texts += [g.format(article=a, item=n) for n in catalogue.names for g in GUESS_TEMPLATES for a in ("a", "an")]
    return texts + [YES, NO, DONT_KNOW]


def word_tokenizer(catalogue: Catalogue) -> BPETokenizer:
    """The word-level tokenizer of `corpus(catalogue)`; deterministic (words in sorted order after `UNK`)."""
    pre = pre_tokenizers.Whitespace()  # words and runs of punctuation
    words = sorted({w for text in corpus(catalogue) for w, _ in pre.pre_tokenize_str(text)})
    tokenizer = hf_tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate([UNK, *words])}, unk_token=UNK))
    tokenizer.pre_tokenizer = pre
    # The answerer's "I don't know" is one id (not five): it keeps the longest dialogues inside max_len.
    tokenizer.add_tokens([hf_tokenizers.AddedToken(DONT_KNOW, normalized=False)])
    return BPETokenizer(tokenizer)
