"""What the text games (Wordle, the dialogue task) share: a history of turns, played one utterance at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["TurnGame"]


class TurnGame:
    """A game against a hidden target: `turns` so far (each with a `won` flag), `done`, `won`, and `step(text)`.

    A subclass sets `turns` to [] and says when a history is over (`over`), how one turn is played (`_play`), and
    what its errors call the game (`finished`, formatted with the game's attributes) and a turn (`utterance`).
    """

    over: Callable[[Sequence[Any]], bool]
    finished = "the game is over; no more turns"
    utterance = "an utterance"
    turns: list

    @property
    def done(self) -> bool:
        return type(self).over(self.turns)

    @property
    def won(self) -> bool:
        return any(t.won for t in self.turns)

    def step(self, text: str, policy: str = ""):
        """Plays `text` (labelled `policy`, the data's scripted player) and returns its turn."""
        if self.done:
            raise ValueError(self.finished.format(**vars(self)))
        if not isinstance(text, str):
            raise ValueError(f"{self.utterance} must be a str, got {type(text).__name__}")
        turn = self._play(text, policy)
        self.turns.append(turn)
        return turn

    def _play(self, text: str, policy: str):
        raise NotImplementedError
