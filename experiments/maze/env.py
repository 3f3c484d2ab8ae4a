"""LMRL-Gym's maze (Abdulhai et al., 2023), ported: the double-T maze, its texts, moves, rewards and step limit.

Written from reading `llm_rl_scripts/maze/env/` of github.com/abdulhaim/LMRL-Gym
(MIT): `env.py` (`MazeEnv`, the describe functions, `standard_reward`),
`mazes.py` (`double_t_maze`) and `maze_utils.py` (`setup_maze_env`: goal
(8, 6), 100 steps, the four moves). Their behaviour, which this module keeps:

* The grid is `MAZE` (1 = wall); positions are (row, column); the goal is
  `GOAL`. An episode starts at any open cell but the goal.
* Actions are exactly the texts of `ACTIONS` ("move up\\n", ...). A move into a
  wall leaves the agent where it is; any other text is an illegal action.
* Reward (`standard_reward`): 0 for the move that reaches the goal, -4 for an
  illegal action, -1 otherwise.
* Step limit: after `MAX_STEPS` steps that did not end the episode, the next
  action is not carried out: it gets "Failure\\n", reward -1 and the end. So
  an episode of legal moves that never arrives returns -101 (LMRL-Gym's
  normalisation minimum), and the best return from a start d moves away is
  -(d - 1); the mean of that over the 25 starts is -6.84 (their maximum).
* Reaching the goal replies "Success\\n" and ends the episode.
* Observations: the fully observed variant describes the goal, the current
  position and the walls ("The goal is at position 8, 6. Your current position
  is at position 1, 1 0. There are walls above you, below you.\\n"; numbers are
  spelled digit by digit with spaces, as theirs); the partially observed one
  the walls alone. Walls are listed right, left, above, below.
* What the agent sees (`MazeGame.history`, their text history): after a legal
  move, the history so far plus the action and the new observation, cut to
  its last `last_k` texts (LMRL-Gym's evaluation keeps 1 text, the current
  observation, in the fully observed maze and 40 in the partially observed
  one); after an illegal action, the new observation alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = [
    "ACTIONS",
    "FAILURE",
    "GOAL",
    "MAX_STEPS",
    "MAZE",
    "SUCCESS",
    "VARIANTS",
    "MazeGame",
    "Turn",
    "describe_walls",
    "distances_to_goal",
    "fully_observed",
    "mean_optimal_return",
    "optimal_return",
    "partially_observed",
    "start_positions",
]

MAZE = np.array([
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
    [1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1],
    [1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1],
    [1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1],
    [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
], np.uint8)
MAZE.setflags(write=False)
GOAL = (8, 6)
MAX_STEPS = 100

# Text -> (row, column) change, in LMRL-Gym's order.
ACTIONS: dict[str, tuple[int, int]] = {
    "move left\n": (0, -1),
    "move right\n": (0, 1),
    "move up\n": (-1, 0),
    "move down\n": (1, 0),
}
SUCCESS = "Success\n"
FAILURE = "Failure\n"
GOAL_REWARD, MOVE_REWARD, ILLEGAL_REWARD, TIMEOUT_REWARD = 0.0, -1.0, -4.0, -1.0

# How walls are named, in the order they are listed.
_SIDES = (("to your right", (0, 1)), ("to your left", (0, -1)), ("above you", (-1, 0)), ("below you", (1, 0)))


def _spell(n: int) -> str:
    """A coordinate digit by digit, as LMRL-Gym writes it: 10 -> "1 0"."""
    return " ".join(str(n))


def describe_walls(maze: np.ndarray, position: tuple[int, int]) -> str:
    """The sentence naming the walls next to `position`."""
    walls = [name for name, (dr, dc) in _SIDES if maze[position[0] + dr, position[1] + dc] == 1]
    if not walls:
        return "There are no walls near you."
    if len(walls) == 1:
        return f"There is a wall {walls[0]}."
    return f"There are walls {', '.join(walls)}."


def fully_observed(maze: np.ndarray, position: tuple[int, int], goal: tuple[int, int]) -> str:
    """The fully observed observation: goal, current position and walls."""
    return (f"The goal is at position {_spell(goal[0])}, {_spell(goal[1])}. "
            f"Your current position is at position {_spell(position[0])}, {_spell(position[1])}. "
            f"{describe_walls(maze, position)}\n")


def partially_observed(maze: np.ndarray, position: tuple[int, int], goal: tuple[int, int] | None = None) -> str:
    """The partially observed observation: the walls alone (`goal` is ignored)."""
    return f"{describe_walls(maze, position)}\n"


VARIANTS = {"fo": fully_observed, "po": partially_observed}


def start_positions(maze: np.ndarray = MAZE, goal: tuple[int, int] = GOAL) -> list[tuple[int, int]]:
    """Every open cell but the goal, row by row: the starts of LMRL-Gym's evaluation (25 in `MAZE`)."""
    return [tuple(int(x) for x in p) for p in np.argwhere(maze == 0) if tuple(p) != tuple(goal)]


def distances_to_goal(maze: np.ndarray = MAZE, goal: tuple[int, int] = GOAL) -> dict[tuple[int, int], int]:
    """Moves from each open cell to the goal (breadth-first search from the goal)."""
    dist = {tuple(goal): 0}
    frontier = [tuple(goal)]
    while frontier:
        nxt = []
        for r, c in frontier:
            for dr, dc in ACTIONS.values():
                cell = (r + dr, c + dc)
                if maze[cell] == 0 and cell not in dist:
                    dist[cell] = dist[(r, c)] + 1
                    nxt.append(cell)
        frontier = nxt
    return dist


@dataclasses.dataclass(frozen=True)
class Turn:
    """One action and what followed it.

    `context` is the text the agent acted on (its history window, joined);
    `observation` the reply (the next observation, `SUCCESS` or `FAILURE`);
    `position` where the agent is afterwards; `legal` whether `action` was one of `ACTIONS`.
    """

    context: str
    action: str
    reward: float
    observation: str
    position: tuple[int, int]
    legal: bool


class MazeGame:
    """One episode of the `variant` ("fo" or "po") maze from `start`.

    `history` is what the agent sees before its next action (see the module
    docstring; `context()` joins it); `step(action)` plays one action and
    returns its `Turn`; `turns`, `done`, `success` and `total_return` describe
    the episode so far.
    """

    def __init__(self, variant: str, start: tuple[int, int], *, last_k: int = 1, maze: np.ndarray = MAZE,
                 goal: tuple[int, int] = GOAL, max_steps: int = MAX_STEPS):
        if variant not in VARIANTS:
            raise ValueError(f"unknown maze variant {variant!r}; choose from {sorted(VARIANTS)}")
        start = (int(start[0]), int(start[1]))
        if maze[start] != 0 or start == tuple(goal):
            raise ValueError(f"start {start} must be an open cell other than the goal {goal}")
        if last_k < 1:
            raise ValueError(f"last_k must be >= 1, got {last_k}")
        self.variant, self.maze, self.goal = variant, maze, tuple(goal)
        self.max_steps, self.last_k = max_steps, last_k
        self.describe = VARIANTS[variant]
        self.start = self.position = start
        self.num_steps = 0  # steps taken that did not end the episode (LMRL-Gym's num_steps)
        self.history: list[str] = [self.describe(maze, start, self.goal)]
        self.turns: list[Turn] = []
        self.done = False

    def context(self) -> str:
        """The text the agent acts on next: its history window, joined."""
        return "".join(self.history)

    @property
    def success(self) -> bool:
        return bool(self.turns) and self.turns[-1].observation == SUCCESS

    @property
    def total_return(self) -> float:
        return float(sum(t.reward for t in self.turns))

    def step(self, action: str) -> Turn:
        """Plays `action` (see the module docstring for the order of the checks)."""
        if self.done:
            raise ValueError("the episode is over; no more actions")
        if not isinstance(action, str):
            raise ValueError(f"an action must be a str, got {type(action).__name__}")
        context = self.context()
        legal = action in ACTIONS
        if self.num_steps >= self.max_steps:
            return self._record(Turn(context, action, TIMEOUT_REWARD, FAILURE, self.position, legal), done=True)
        if legal:
            dr, dc = ACTIONS[action]
            cell = (self.position[0] + dr, self.position[1] + dc)
            if self.maze[cell] == 0:
                self.position = cell
        if self.position == self.goal:
            return self._record(Turn(context, action, GOAL_REWARD, SUCCESS, self.position, legal), done=True)
        self.num_steps += 1
        observation = self.describe(self.maze, self.position, self.goal)
        turn = Turn(context, action, MOVE_REWARD if legal else ILLEGAL_REWARD, observation, self.position, legal)
        self.history = (self.history + [action, observation])[-self.last_k:] if legal else [observation]
        return self._record(turn, done=False)

    def _record(self, turn: Turn, done: bool) -> Turn:
        self.turns.append(turn)
        self.done = done
        return turn


def optimal_return(start: tuple[int, int], maze: np.ndarray = MAZE, goal: tuple[int, int] = GOAL) -> float:
    """The best return from `start`: every move but the last costs 1."""
    return -float(distances_to_goal(maze, goal)[tuple(start)] - 1)


def mean_optimal_return(starts: Sequence[tuple[int, int]] | None = None) -> float:
    """The best return averaged over `starts` (default: all 25): LMRL-Gym's normalisation maximum, -6.84."""
    starts = start_positions() if starts is None else starts
    return float(np.mean([optimal_return(s) for s in starts]))
