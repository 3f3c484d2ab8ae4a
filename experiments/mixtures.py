"""Data sets of mixed quality: scripted policies switched within an episode (docs/algorithm.md §7).

Wordle and the dialogue task share this: an episode draws one `Mixture`, plays
its `opening` policy for the first k agent turns (k uniform in `switch`) and
its `continuation` after that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TypeVar

import numpy as np

__all__ = ["Mixture", "mixture_weights", "play_mixtures"]

G = TypeVar("G")


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Episodes that play `opening` for the first k turns, then `continuation`.

    k is drawn uniformly from the inclusive range `switch`; a pure policy has
    ``opening == continuation``. `weight` is the share of episodes (normalised
    over all mixtures). Policy names are those of the task's `make_policies`.
    """

    name: str
    weight: float
    opening: str
    continuation: str
    switch: tuple[int, int] = (1, 1)

    def policy(self, turn: int, n_opening: int) -> str:
        """The policy that plays turn `turn` (0-based) of an episode whose opening lasts `n_opening` turns."""
        return self.opening if turn < n_opening else self.continuation


def mixture_weights(mixtures: Sequence[Mixture], policies: Collection[str]) -> np.ndarray:
    """The mixtures' normalised weights; ValueError naming a mixture with an unknown policy or bad switch range."""
    for mix in mixtures:
        unknown = {mix.opening, mix.continuation} - set(policies)
        if unknown:
            raise ValueError(f"mixture {mix.name!r}: unknown policy {sorted(unknown)}; have {sorted(policies)}")
        lo, hi = mix.switch
        if not 0 <= lo <= hi:
            raise ValueError(f"mixture {mix.name!r}: bad switch range {mix.switch}")
    weights = np.array([mix.weight for mix in mixtures], np.float64)
    if len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("mixtures need non-negative weights with a positive sum")
    return weights / weights.sum()


def play_mixtures(n: int, seed: int, mixtures: Sequence[Mixture], policies: Mapping[str, Callable],
                  targets: Sequence, new_game: Callable[[object], G]) -> list[G]:
    """`n` finished games, deterministic from `seed`: each against a uniformly drawn target (`new_game(target)`),
    played by a drawn mixture, whose policies (`policy(turns, rng) -> text`) play its turns."""
    weights = mixture_weights(mixtures, policies)
    rng = np.random.default_rng(seed)
    games = []
    for _ in range(n):
        mix = mixtures[rng.choice(len(mixtures), p=weights)]
        game = new_game(targets[rng.integers(len(targets))])
        n_opening = rng.integers(mix.switch[0], mix.switch[1] + 1)
        while not game.done:
            name = mix.policy(len(game.turns), n_opening)
            game.step(policies[name](tuple(game.turns), rng), policy=name)
        games.append(game)
    return games
