"""The maze's offline data: episodes of scripted play (`policies`), their packed ILQL rows, statistics and files.

Each episode draws a start uniformly among the 25 open cells other than the
goal and one `Mixture` (`experiments.mixtures`), whose opening policy plays the
first k turns and its continuation the rest. `MIXTURES["default"]` is mostly
aimless play: a random walker (`RANDOM_SHARE` of the episodes) and a noisy
expert who makes the optimal move half the time (the rest), weighted so that
the data's mean return is LMRL-Gym's data average, -83, within a return or so.
(LMRL-Gym's maze data set is not in their repository, nor the script that made
it: the mixture is ours, fitted to the one number of it they publish; see
docs/results/maze.md.) Generation is deterministic from the seed, and the same
seed gives the same moves in both variants.

The agent's context at each turn is its history window (`env.MazeGame.history`,
the last `last_k` texts joined), laid out as one environment segment, so a
turn's packed block is ``<s>window</s>action</a>`` (`ilql_jax.data.packing`).
A JSONL file holds one episode per line::

    {"start": [1, 1], "mixture": "random", "policies": ["random", ...],
     "actions": ["move right\\n", ...], "rewards": [-1.0, ...], "success": false}
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence

import numpy as np
from etils import epath

from experiments.mixtures import Mixture, mixture_weights
from ilql_jax import files
from ilql_jax.data.episodes import env
from ilql_jax.data.packing import Chain, Step

from .env import MazeGame, start_positions
from .policies import make_policies

__all__ = ["MIXTURES", "RANDOM_SHARE", "Logged", "episode_chain", "episode_stats", "generate", "save_episodes"]

# The share of random walkers that puts the default data's mean return at LMRL-Gym's -83.
RANDOM_SHARE = 0.96
MIXTURES: dict[str, tuple[Mixture, ...]] = {
    "default": (Mixture("random", RANDOM_SHARE, "random", "random"),
                Mixture("noisy", 1.0 - RANDOM_SHARE, "noisy", "noisy")),
    # Wander first, then head for the goal: every episode arrives, most late.
    "wander": (Mixture("random>optimal", 1.0, "random", "optimal", (0, 60)),),
}


@dataclasses.dataclass(frozen=True)
class Logged:
    """A finished episode with who played it: the mixture's name and each turn's policy."""

    game: MazeGame
    mixture: str
    policies: tuple[str, ...]


def generate(variant: str, n: int, seed: int, mixtures: Sequence[Mixture] = MIXTURES["default"], *,
             last_k: int = 1, noise: float = 0.5) -> list[Logged]:
    """`n` finished episodes of `variant` played by `mixtures`, deterministic from `seed`."""
    policies = make_policies(noise)
    weights = mixture_weights(mixtures, policies)
    starts = start_positions()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        mix = mixtures[rng.choice(len(mixtures), p=weights)]
        start = starts[rng.integers(len(starts))]
        n_opening = rng.integers(mix.switch[0], mix.switch[1] + 1)
        game = MazeGame(variant, start, last_k=last_k)
        names = []
        while not game.done:
            name = mix.policy(len(game.turns), n_opening)
            game.step(policies[name](game, rng))
            names.append(name)
        out.append(Logged(game, mix.name, tuple(names)))
    return out


def episode_chain(game: MazeGame, timeout: str = "truncate") -> Chain:
    """The episode's turns, each seen through its own context window.

    An episode that reached the goal is terminal. One that ran out of steps is,
    with `timeout="terminal"`, terminal too, as LMRL-Gym's data marks it; with
    "truncate" its last action (refused, -1, the agent stays put) bootstraps from
    V on the context it was refused on, as a move into a wall would. The step
    count is in no observation, so the end of time is not something the agent can
    see coming: as a terminal transition it looks like an exit that costs 1, and
    an expectile near 1 learns to prefer wandering (docs/results/maze.md).
    """
    if not game.done:
        raise ValueError("an unfinished episode has no chain")
    if timeout not in ("truncate", "terminal"):
        raise ValueError(f"timeout must be 'truncate' or 'terminal', got {timeout!r}")
    steps = tuple(Step((env(t.context),), t.action, t.reward) for t in game.turns)
    if game.success or timeout == "terminal":
        return Chain(steps, terminal=True)
    return Chain(steps, terminal=False, next_context=(env(game.turns[-1].context),))


def episode_stats(games: Sequence[MazeGame]) -> dict[str, float]:
    """Mean return and its standard error, success rate, mean number of actions, share of illegal actions."""
    if not games:
        raise ValueError("no episodes")
    returns = np.array([g.total_return for g in games], np.float64)
    n = len(returns)
    n_actions = sum(len(g.turns) for g in games)
    return {
        "mean_return": float(returns.mean()),
        "stderr": float(returns.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        "success_rate": float(np.mean([g.success for g in games])),
        "mean_actions": n_actions / n,
        "illegal_rate": sum(not t.legal for g in games for t in g.turns) / n_actions,
        "n_episodes": n,
    }


def _record(logged: Logged) -> dict:
    g = logged.game
    return {"start": list(g.start), "mixture": logged.mixture, "policies": list(logged.policies),
            "actions": [t.action for t in g.turns], "rewards": [t.reward for t in g.turns], "success": g.success}


def save_episodes(path: str | epath.PathLike, episodes: Iterable[Logged]) -> None:
    """One JSON object per episode (see the module docstring); a shared file: process 0 writes it."""
    files.write_text(path, "".join(json.dumps(_record(e)) + "\n" for e in episodes))
