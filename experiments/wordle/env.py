"""The Wordle game, and its games as ILQL episodes (docs/algorithm.md §1, §7).

Rules: the agent has at most `MAX_GUESSES` guesses to find a hidden five-letter
answer. A guess is valid iff it is in the word list; a valid guess gets
feedback, one letter per position:

* ``g`` (green): the letter is in the answer at this position;
* ``y`` (yellow): the letter is elsewhere in the answer, counting only the
  copies of it that are not already matched green or by an earlier yellow;
* ``b`` (black/grey): otherwise.

So repeated letters follow the real game: greens first, then yellows left to
right limited by the answer's remaining letter counts (``feedback("speed",
"abide")`` is ``bbyby``: only the first ``e`` is yellow; ``feedback("lolly",
"hello")`` is ``byggb``: the greens use up both ``l``, so the first is black).

Reward: −1 per guess, 0 for the winning guess; the game ends on a win or after
six guesses, so the return lies in [−6, 0]. An invalid guess (not in the word
list, wrong length, non-letters) costs −1, uses up a turn and gets no
feedback: its environment segment is the empty string, so the episode shows
``<a>xyzzy</a></s>`` — the ``</s>`` still closes the (empty) reply, which keeps
the layout of docs/algorithm.md §1 and tokenises with the Wordle tokenizer.

Episode markup: each turn is an agent segment (the guess letters, with its
reward) followed by an environment segment (the feedback as ``<g><y><b>``
tokens); the agent speaks first, so the text opens with ``<a>``; the episode is
terminal once the game is over.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence

from experiments.games import TurnGame
from ilql_jax.data.episodes import Episode, Segment, agent, env, prompt_tokens

from .words import WORD_LEN, is_word

__all__ = [
    "INVALID_FEEDBACK_TEXT",
    "MAX_GUESSES",
    "WIN",
    "Turn",
    "WordleGame",
    "feedback",
    "feedback_text",
    "game_over",
    "history_segments",
    "prompt_ids",
    "turns_to_episode",
]

MAX_GUESSES = 6
WIN = "g" * WORD_LEN
INVALID_FEEDBACK_TEXT = ""  # the environment's (empty) reply to an invalid guess


def feedback(guess: str, answer: str) -> str:
    """Wordle feedback of `guess` for `answer` as five letters of ``g``/``y``/``b``."""
    if not (is_word(guess) and is_word(answer)):
        raise ValueError(f"feedback needs two five-letter words, got {guess!r} and {answer!r}")
    result = ["b"] * WORD_LEN
    # Answer letters not matched green are what yellows may use up.
    unmatched = Counter()
    for i, (g, a) in enumerate(zip(guess, answer)):
        if g == a:
            result[i] = "g"
        else:
            unmatched[a] += 1
    for i, g in enumerate(guess):
        if result[i] == "b" and unmatched[g] > 0:
            result[i] = "y"
            unmatched[g] -= 1
    return "".join(result)


def feedback_text(fb: str | None) -> str:
    """The environment segment for feedback ``"bybbg"``: ``"<b><y><b><b><g>"``.

    ``None`` (an invalid guess) gives `INVALID_FEEDBACK_TEXT`.
    """
    if fb is None:
        return INVALID_FEEDBACK_TEXT
    return "".join(f"<{c}>" for c in fb)


@dataclasses.dataclass(frozen=True)
class Turn:
    """One guess and the environment's answer to it.

    `feedback` is ``None`` for an invalid guess; `policy` names whoever made
    the guess (data sets record it; ``""`` when unknown).
    """

    guess: str
    feedback: str | None
    reward: float
    policy: str = ""

    @property
    def won(self) -> bool:
        return self.feedback == WIN


def game_over(turns: Sequence[Turn]) -> bool:
    """Whether a game with these turns has ended (a win or six guesses)."""
    return len(turns) >= MAX_GUESSES or any(t.won for t in turns)


def history_segments(turns: Iterable[Turn]) -> list[Segment]:
    """The turns as alternating agent / environment segments (docs/algorithm.md §1)."""
    segments = []
    for turn in turns:
        segments.append(agent(turn.guess, turn.reward))
        segments.append(env(feedback_text(turn.feedback)))
    return segments


def turns_to_episode(turns: Sequence[Turn]) -> Episode:
    """The episode of a (possibly unfinished) game; terminal iff the game is over."""
    if not turns:
        raise ValueError("a game with no guesses has no episode")
    return Episode(tuple(history_segments(turns)), terminal=game_over(turns))


def prompt_ids(turns: Sequence[Turn], tokenizer) -> list[int]:
    """Token ids for the policy to continue with its next guess.

    ``<a>`` before the first guess, then e.g. ``<a>crane</a><b><y><b><b><g></s>``:
    the training layout of the turns so far (see `episodes.prompt_tokens`).
    """
    return prompt_tokens(history_segments(turns), tokenizer)


class WordleGame(TurnGame):
    """One game against a hidden `answer`; `words` are the allowed guesses.

    `step(guess)` plays a guess and returns its `Turn`; `turns`, `done`,
    `won`, `total_return` and `episode()` describe the game so far.
    """

    over = staticmethod(game_over)
    finished = "game for {answer!r} is over; no more guesses"
    utterance = "a guess"

    def __init__(self, answer: str, words: Iterable[str]):
        self.words = words if isinstance(words, (set, frozenset)) else frozenset(words)
        if answer not in self.words:
            raise ValueError(f"answer {answer!r} is not in the word list")
        self.answer = answer
        self.turns: list[Turn] = []

    @property
    def total_return(self) -> float:
        return float(sum(t.reward for t in self.turns))

    def _play(self, guess: str, policy: str) -> Turn:
        """−1 unless `guess` wins (0); no feedback if it is not a listed word."""
        fb = feedback(guess, self.answer) if guess in self.words else None
        return Turn(guess, fb, 0.0 if fb == WIN else -1.0, policy)

    def episode(self) -> Episode:
        """The game so far as an `Episode` (terminal once the game is over)."""
        return turns_to_episode(self.turns)
