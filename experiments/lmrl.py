"""LMRL-Gym's normalised score and the numbers it publishes (Abdulhai et al., 2023, Table 2), for the maze and Wordle.

A raw mean return x becomes a score on which 0 is the task's minimum return,
50 its data set's average and 100 its maximum, linear on each side of the
average (`compute_score` in LMRL-Gym's `llm_rl_scripts/maze/misc/
compute_score_normalizations.py`; Wordle's in `llm_rl_scripts/wordle/
load_results.py`). What we checked against their repository (docs/results/maze.md):

* maze, fully observed: minimum -101, average -83, maximum -6.84 (the optimal
  return averaged over the 25 starts, `env.mean_optimal_return()`); their
  ILQL's raw -6.97 gives the published 99.9 and their PPO's -37.7 gives 79.7.
* maze, partially observed: the same minimum and average with maximum -25.75
  (commented out in the same file): their raw BC, %BC, MC and ILQL returns
  there, -79.5, -82.9, -80.3 and -52.9, give the published 53.1, 50.1, 52.4 and 76.3.
* Wordle: average -4.121715 and maximum -1.935; their raw BC, filtered BC, MC
  and ILQL returns give the published 79.9, 79.1, 94.9 and 97.7.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Normalisation", "PUBLISHED", "THEIRS", "score"]


@dataclasses.dataclass(frozen=True)
class Normalisation:
    """The three returns that anchor the score: 0, 50 and 100."""

    minimum: float
    average: float
    maximum: float

    def __post_init__(self):
        if not self.minimum < self.average < self.maximum:
            raise ValueError(f"need minimum < average < maximum, got {self}")


def score(x: float, norm: Normalisation) -> float:
    """LMRL-Gym's normalised score of a mean return `x`."""
    if x < norm.average:
        return (x - norm.minimum) / (norm.average - norm.minimum) * 50.0
    return 50.0 + (x - norm.average) / (norm.maximum - norm.average) * 50.0


THEIRS: dict[str, Normalisation] = {
    "maze_fo": Normalisation(-101.0, -83.0, -6.84),
    "maze_po": Normalisation(-101.0, -83.0, -25.75),
    # Wordle's minimum is not in their script (every score there is above the average); -6 is six misses.
    "wordle": Normalisation(-6.0, -4.121715, -1.935),
}

# Table 2 of the paper, as the task quotes it; the normalised scores above reproduce the ones marked in THEIRS' doc.
PUBLISHED: dict[str, dict[str, float]] = {
    "maze_fo": {"bc": 58.2, "pbc": 68.9, "mc": 75.0, "ilql": 99.9, "ppo": 79.7},
    "maze_po": {"bc": 53.1, "pbc": 50.1, "mc": 52.4, "ilql": 76.3, "ppo": 42.4},
    "wordle": {"bc": 79.9, "pbc": 79.1, "mc": 94.9, "ilql": 97.7},
}
