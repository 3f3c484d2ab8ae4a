"""Scripted maze players that make the offline data: ``policy(game, rng) -> action text``.

They read the true position (`game.position`), whatever the variant: the
partially observed data set is the same play as the fully observed one, seen
through other texts.

* `RandomPolicy`: one of the four moves, uniformly (moves into walls included).
* `OptimalPolicy`: a move that shortens the way to the goal (breadth-first
  distances; the first in `env.ACTIONS` order on a tie).
* `NoisyPolicy`: the optimal move with probability 1 - ε, else a random one.
"""

from __future__ import annotations

import numpy as np

from .env import ACTIONS, GOAL, MAZE, MazeGame, distances_to_goal

__all__ = ["NoisyPolicy", "OptimalPolicy", "RandomPolicy", "make_policies"]

_MOVES = tuple(ACTIONS)


class RandomPolicy:
    name = "random"

    def __call__(self, game: MazeGame, rng: np.random.Generator) -> str:
        return _MOVES[rng.integers(len(_MOVES))]


class OptimalPolicy:
    name = "optimal"

    def __init__(self, maze: np.ndarray = MAZE, goal: tuple[int, int] = GOAL):
        dist = distances_to_goal(maze, goal)
        self.moves = {}
        for (r, c), d in dist.items():
            if d:
                self.moves[(r, c)] = next(a for a, (dr, dc) in ACTIONS.items() if dist.get((r + dr, c + dc)) == d - 1)

    def __call__(self, game: MazeGame, rng: np.random.Generator | None = None) -> str:
        return self.moves[game.position]


class NoisyPolicy:
    """The optimal move with probability 1 - `epsilon`, else a uniformly random one (the draw is made every turn)."""

    def __init__(self, epsilon: float, maze: np.ndarray = MAZE, goal: tuple[int, int] = GOAL):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon, self.name = epsilon, f"noisy{epsilon:g}"
        self.optimal, self.random = OptimalPolicy(maze, goal), RandomPolicy()

    def __call__(self, game: MazeGame, rng: np.random.Generator) -> str:
        return self.random(game, rng) if rng.random() < self.epsilon else self.optimal(game, rng)


def make_policies(noise: float = 0.5) -> dict[str, object]:
    """The scripted players by name: "random", "optimal" and "noisy" (ε = `noise`)."""
    return {"random": RandomPolicy(), "optimal": OptimalPolicy(), "noisy": NoisyPolicy(noise)}
