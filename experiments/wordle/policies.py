"""Scripted Wordle policies: ``policy(history, rng) -> guess``.

`history` is the sequence of `env.Turn` played so far in the game (by any
policy: data sets switch policies mid-game) and `rng` a numpy Generator.
Learned policies follow the same signature (they may ignore `rng`).

* `ExpertPolicy`: greedy information gain. Among the words consistent with
  all feedback so far, it plays the guess from the whole word list whose
  feedback splits the consistent words into the partition of highest entropy;
  ties go to a consistent word (it may win now), then to the word list's
  order. Deterministic; the first guess is cached.
* `RandomConsistentPolicy`: a uniformly random word consistent with the
  feedback so far.
* `RandomPolicy`: a uniformly random word of the whole list (may repeat).
* `RepeatPolicy`: repeats a uniformly random earlier (valid) guess of the
  game, whoever made it; a random word when there is none yet.
* `HabitPolicy`: a player with a habit: always opens with the same poor word
  (`poorest_opener`: the one leaving the most words consistent on average),
  then plays like `RandomConsistentPolicy`.
* `SmartOrRandomPolicy`: LMRL-Gym's data player (`RandomMixturePolicy` of their
  `llm_rl_scripts/wordle/env/scripted_policies.py`): each guess, with
  probability `prob_smart` a random consistent word, else a random word.

Invalid guesses in the history carry no feedback and constrain nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .env import Turn, feedback
from .words import WORD_LEN

__all__ = [
    "ExpertPolicy",
    "FeedbackTable",
    "HabitPolicy",
    "RandomConsistentPolicy",
    "RandomPolicy",
    "RepeatPolicy",
    "SmartOrRandomPolicy",
    "LMRL_PROB_SMART",
    "make_policies",
    "poorest_opener",
]

N_PATTERNS = 3**WORD_LEN  # 243 possible feedbacks
_DIGIT = {"b": 0, "y": 1, "g": 2}


def pattern_code(fb: str) -> int:
    """Feedback ``"bybbg"`` as an integer in [0, 243)."""
    code = 0
    for c in fb:
        code = 3 * code + _DIGIT[c]
    return code


class FeedbackTable:
    """Feedback codes of every (guess, answer) pair of a word list, for fast filtering."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        if len(set(self.words)) != len(self.words):
            raise ValueError("word list has duplicates")
        self.index = {w: i for i, w in enumerate(self.words)}
        # codes[i, j] = feedback of guessing words[i] when the answer is words[j].
        # Pure Python: ~0.1 s for 200 words, ~20 s for the 2315 official answers.
        self.codes = np.array(
            [[pattern_code(feedback(g, a)) for a in self.words] for g in self.words],
            dtype=np.int16,
        )

    def partition_counts(self, candidates: np.ndarray) -> np.ndarray:
        """counts[i, p]: how many of the `candidates` (indices) give feedback p to guess i."""
        n_words = len(self.words)
        # One bincount over row-offset codes does all guesses at once.
        codes = self.codes[:, candidates].astype(np.int64)
        codes += N_PATTERNS * np.arange(n_words)[:, None]
        counts = np.bincount(codes.ravel(), minlength=n_words * N_PATTERNS)
        return counts.reshape(n_words, N_PATTERNS).astype(np.float64)

    def consistent(self, history: Sequence[Turn]) -> np.ndarray:
        """Boolean mask of the words that would have given every feedback in `history`."""
        mask = np.ones(len(self.words), bool)
        for turn in history:
            if turn.feedback is None:
                continue
            if turn.guess in self.index:
                row = self.codes[self.index[turn.guess]]
            else:  # a guess outside this table (another word list): compute its row
                row = np.array([pattern_code(feedback(turn.guess, a)) for a in self.words])
            mask &= row == pattern_code(turn.feedback)
        return mask


class ExpertPolicy:
    """Greedy information-gain guesser (see the module docstring)."""

    name = "expert"

    def __init__(self, words: Sequence[str], table: FeedbackTable | None = None):
        self.table = table or FeedbackTable(words)
        self._first_guess: str | None = None

    def __call__(self, history: Sequence[Turn], rng: np.random.Generator | None = None) -> str:
        if not any(t.feedback is not None for t in history):
            if self._first_guess is None:
                self._first_guess = self._best(np.ones(len(self.table.words), bool))
            return self._first_guess
        return self._best(self.table.consistent(history))

    def _best(self, candidates: np.ndarray) -> str:
        cand = np.flatnonzero(candidates)
        if len(cand) == 0:
            # Only when the history came from a different word list: any guess.
            return self.table.words[0]
        if len(cand) == 1:
            return self.table.words[cand[0]]
        counts = self.table.partition_counts(cand)
        # Entropy of the partition: log C - sum(n log n) / C.
        n_log_n = counts * np.log(np.where(counts > 0, counts, 1.0))
        entropy = np.log(len(cand)) - n_log_n.sum(axis=1) / len(cand)
        # Round so that equal partitions tie exactly despite summation order.
        entropy = np.round(entropy, 9)
        best = entropy == entropy.max()
        best_consistent = best & candidates
        pick = best_consistent if best_consistent.any() else best
        return self.table.words[np.flatnonzero(pick)[0]]


class RandomConsistentPolicy:
    """A uniformly random word consistent with the feedback so far."""

    name = "random_consistent"

    def __init__(self, words: Sequence[str], table: FeedbackTable | None = None):
        self.table = table or FeedbackTable(words)

    def __call__(self, history: Sequence[Turn], rng: np.random.Generator) -> str:
        cand = np.flatnonzero(self.table.consistent(history))
        if len(cand) == 0:
            return self.table.words[rng.integers(len(self.table.words))]
        return self.table.words[cand[rng.integers(len(cand))]]


class RandomPolicy:
    """A uniformly random word of the whole list, ignoring all feedback."""

    name = "random"

    def __init__(self, words: Sequence[str]):
        self.words = list(words)

    def __call__(self, history: Sequence[Turn], rng: np.random.Generator) -> str:
        return self.words[rng.integers(len(self.words))]


class RepeatPolicy:
    """Repeats a random earlier valid guess of the game; a random word on the first turn."""

    name = "repeat"

    def __init__(self, words: Sequence[str]):
        self.words = list(words)

    def __call__(self, history: Sequence[Turn], rng: np.random.Generator) -> str:
        earlier = [t.guess for t in history if t.feedback is not None]
        if not earlier:
            return self.words[rng.integers(len(self.words))]
        return earlier[rng.integers(len(earlier))]


def poorest_opener(table: FeedbackTable) -> str:
    """The first guess that leaves the most words consistent, averaged over answers.

    A guess whose feedback splits the list into groups of sizes n_p leaves
    Σ n_p² / N words on average (the first such word on ties).
    """
    left = (table.partition_counts(np.arange(len(table.words))) ** 2).sum(axis=1) / len(table.words)
    return table.words[int(np.argmax(left))]


class HabitPolicy:
    """Opens with one fixed (by default the poorest) word, then a random consistent word each turn."""

    name = "habit"

    def __init__(self, words: Sequence[str], table: FeedbackTable | None = None, opener: str | None = None):
        self.table = table or FeedbackTable(words)
        self.opener = poorest_opener(self.table) if opener is None else opener
        self._later = RandomConsistentPolicy(words, self.table)

    def __call__(self, history: Sequence[Turn], rng: np.random.Generator) -> str:
        return self._later(history, rng) if history else self.opener


# LMRL-Gym's data script takes prob_smart as an argument and their repository does not record the value used;
# 0.32 gives their data set's average return, -4.12 (their normalisation's 50), on our game with 400 words:
# -4.107 ± 0.011 over 20,000 games (-4.195 at 0.30, -3.996 at 0.34).
LMRL_PROB_SMART = 0.32


class SmartOrRandomPolicy:
    """Each guess: a random consistent word with probability `prob_smart`, else a random word of the list."""

    name = "smart_or_random"

    def __init__(self, words: Sequence[str], table: FeedbackTable | None = None,
                 prob_smart: float = LMRL_PROB_SMART):
        if not 0.0 <= prob_smart <= 1.0:
            raise ValueError(f"prob_smart must be in [0, 1], got {prob_smart}")
        self.prob_smart = prob_smart
        self._smart, self._random = RandomConsistentPolicy(words, table), RandomPolicy(words)

    def __call__(self, history: Sequence[Turn], rng: np.random.Generator) -> str:
        return (self._smart if rng.random() < self.prob_smart else self._random)(history, rng)


def make_policies(words: Sequence[str]) -> dict[str, object]:
    """The six scripted policies by name, sharing one feedback table."""
    table = FeedbackTable(words)
    policies = [
        ExpertPolicy(words, table),
        RandomConsistentPolicy(words, table),
        RandomPolicy(words),
        RepeatPolicy(words),
        HabitPolicy(words, table),
        SmartOrRandomPolicy(words, table),
    ]
    return {p.name: p for p in policies}
