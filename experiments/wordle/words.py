"""Wordle word lists: the default from `wordfreq`, or one read from a file.

The same list serves as the possible answers and the allowed guesses. The
default is the `DEFAULT_N_WORDS` most frequent five-letter words of English in
`wordfreq` (its data is lowercased, so a few names such as "david" appear);
the list is fixed by the pinned `wordfreq` version. A run stores the list it
used with `save_vocab`, and `load_vocab` reads it back (`--vocab FILE`).
"""

from __future__ import annotations

import re

import wordfreq
from etils import epath

from ilql_jax import files


__all__ = ["DEFAULT_N_WORDS", "WORD_LEN", "default_words", "is_word", "load_vocab", "save_vocab"]

WORD_LEN = 5
DEFAULT_N_WORDS = 200

_WORD = re.compile(r"[a-z]{5}")


def is_word(text: str) -> bool:
    """Whether `text` is exactly five lowercase ASCII letters."""
    return isinstance(text, str) and _WORD.fullmatch(text) is not None


def default_words(n: int = DEFAULT_N_WORDS) -> list[str]:
    """The `n` most frequent five-letter English words in `wordfreq`, most frequent first."""
    if n < 1:
        raise ValueError(f"need at least one word, got n={n}")
    words = []
    # iter_wordlist yields words in decreasing frequency, so the result is
    # the top n whatever the size of the whole list.
    for word in wordfreq.iter_wordlist("en"):
        if is_word(word):
            words.append(word)
            if len(words) == n:
                return words
    raise ValueError(f"wordfreq has only {len(words)} five-letter words, asked for {n}")


def load_vocab(path: str | epath.PathLike) -> list[str]:
    """Words of a vocabulary file (local or `gs://`): one five-letter lowercase word per line.

    Blank lines and surrounding whitespace are ignored. Raises ValueError naming
    the file and line for a bad word or a duplicate, and for an empty file.
    """
    words: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(epath.Path(path).read_text().splitlines(), start=1):
        word = line.strip()
        if not word:
            continue
        if not is_word(word):
            raise ValueError(f"{path}:{lineno}: {word!r} is not a word of {WORD_LEN} lowercase letters a-z")
        if word in first_line:
            raise ValueError(f"{path}:{lineno}: duplicate word {word!r} (first on line {first_line[word]})")
        first_line[word] = lineno
        words.append(word)
    if not words:
        raise ValueError(f"{path}: vocabulary file has no words")
    return words


def save_vocab(path: str | epath.PathLike, words) -> None:
    """Write `words` one per line, so that `load_vocab(path)` gives them back."""
    words = list(words)
    for i, word in enumerate(words):
        if not is_word(word):
            raise ValueError(f"words[{i}] = {word!r} is not a word of {WORD_LEN} lowercase letters")
    if len(set(words)) != len(words):
        raise ValueError("words contain duplicates")
    if not words:
        raise ValueError("no words to save")
    files.write_text(path, "\n".join(words) + "\n")  # a shared file: process 0 writes it
