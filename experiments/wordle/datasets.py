"""Offline Wordle data of mixed quality, its JSONL files, and policy evaluation.

Games mix the scripted policies *within* a game (docs/algorithm.md §7). Each mix is a
tuple of `Mixture`s, chosen with `--mixture`:

* "default" (`DEFAULT_MIXTURES`): a player with a habit opens 70% of the games
  with the word list's poorest word ("known"), the expert's opener ("share")
  opens 20% and a random word the rest; every later guess is the expert's
  (80%), a random consistent word's (15%) or a random word's (5%), whoever
  opened (`DEFAULT_CONTINUATIONS`). The expert's opener is the better one in
  this data, but filtering games by return does not find it: a game's return
  is mostly the luck of the answer, and "known" stays the most common opener
  of the top 10, 20 and 30% of games. Values average that luck away per state.
  No player repeats itself here: greedy cloning turns even a 5% share of
  repeated guesses into a fifth or more of its own (README, Wordle).
* "repeats" (`REPEAT_MIXTURES`, the earlier default): expert openings with
  poor continuations, poor openings with expert continuations, a small share
  played by the expert start to finish, and a player who repeats earlier
  guesses, which greedy cloning collapses into.
* "habit" (`HABIT_MIXTURES`) opens half the games with the habit's word; its
  continuations differ by opener, though: the expert's opener is mostly
  followed by poor play, so in this data the habit's games return more and a
  value function is right not to prefer the expert's opener (README, Wordle).
* "opener" (`OPENER_MIXTURES`) follows both openers with the same
  continuations, a tenth of them repeats.
* "lmrl" (`LMRL_MIXTURES`): LMRL-Gym's data player, a random consistent word
  or a random word at every guess (`policies.SmartOrRandomPolicy`); what
  `python -m experiments.wordle --data lmrl` trains on.

Generation is deterministic from a seed. A JSONL file holds one game per line::

    {"answer": "slate", "guesses": ["crane", "slate"],
     "feedbacks": ["bbgbg", "ggggg"], "rewards": [-1.0, 0.0],
     "policies": ["expert", "random_consistent"]}

with ``null`` feedback for an invalid guess. `load_games` replays every game
against the word list and rejects a line whose record disagrees with the rules.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from etils import epath

from experiments.mixtures import Mixture, play_mixtures
from ilql_jax import files
from ilql_jax.data.episodes import Episode

from .env import MAX_GUESSES, Turn, WordleGame
from .policies import make_policies

__all__ = [
    "DEFAULT_CONTINUATIONS",
    "DEFAULT_MIXTURES",
    "HABIT_MIXTURES",
    "LMRL_MIXTURES",
    "MIXTURES",
    "OPENER_CONTINUATIONS",
    "OPENER_MIXTURES",
    "REPEAT_MIXTURES",
    "Mixture",
    "evaluate_policy",
    "game_stats",
    "games_to_episodes",
    "generate_games",
    "load_games",
    "play_game",
    "save_games",
]

Policy = Callable[[Sequence[Turn], np.random.Generator], str]


# Pure expert games are 5% of the data: most good openings end badly and most
# good endings follow poor openings.
REPEAT_MIXTURES: tuple[Mixture, ...] = (
    Mixture("expert>random_consistent", 0.20, "expert", "random_consistent", (1, 2)),
    Mixture("expert>random", 0.10, "expert", "random", (1, 2)),
    Mixture("expert>repeat", 0.10, "expert", "repeat", (1, 2)),
    Mixture("random>expert", 0.15, "random", "expert", (1, 3)),
    Mixture("repeat>expert", 0.10, "repeat", "expert", (2, 3)),
    Mixture("random_consistent", 0.20, "random_consistent", "random_consistent"),
    Mixture("repeat", 0.05, "repeat", "repeat"),
    Mixture("random", 0.05, "random", "random"),
    Mixture("expert", 0.05, "expert", "expert"),
)

# Half the games open with the habit's poor word (`HabitPolicy`, "known" in
# the default list), a fifth with the expert's opener, the rest at random.
HABIT_MIXTURES: tuple[Mixture, ...] = (
    Mixture("expert>random_consistent", 0.05, "expert", "random_consistent", (1, 2)),
    Mixture("expert>random", 0.05, "expert", "random", (1, 2)),
    Mixture("expert>repeat", 0.05, "expert", "repeat", (1, 2)),
    Mixture("habit", 0.20, "habit", "habit"),
    Mixture("habit>expert", 0.15, "habit", "expert", (1, 1)),
    Mixture("habit>repeat", 0.10, "habit", "repeat", (1, 2)),
    Mixture("habit>random", 0.05, "habit", "random", (1, 2)),
    Mixture("random>expert", 0.10, "random", "expert", (1, 3)),
    Mixture("random_consistent", 0.10, "random_consistent", "random_consistent"),
    Mixture("repeat", 0.05, "repeat", "repeat"),
    Mixture("random", 0.05, "random", "random"),
    Mixture("expert", 0.05, "expert", "expert"),
)


# What plays every guess after the opening one in `OPENER_MIXTURES`, whoever opened.
OPENER_CONTINUATIONS: dict[str, float] = {"random_consistent": 0.45, "expert": 0.35, "repeat": 0.10, "random": 0.10}


def _one_opening_guess(opening: str, weight: float,
                       continuations: dict[str, float] = OPENER_CONTINUATIONS) -> list[Mixture]:
    """`opening` plays the first guess, then `continuations`' policies in their shares."""
    return [Mixture(f"{opening}>{c}", weight * w, opening, c) for c, w in continuations.items()]


# The habit's opener on half the games, the expert's on a quarter, each followed
# by the same continuations: the openers' returns differ only by the opener.
OPENER_MIXTURES: tuple[Mixture, ...] = (
    *_one_opening_guess("habit", 0.50),
    *_one_opening_guess("expert", 0.25),
    Mixture("random>expert", 0.10, "random", "expert", (1, 2)),
    Mixture("random_consistent", 0.10, "random_consistent", "random_consistent"),
    Mixture("random", 0.05, "random", "random"),
)

# What plays every guess after the first in the default mix, whoever opened.
DEFAULT_CONTINUATIONS: dict[str, float] = {"expert": 0.8, "random_consistent": 0.15, "random": 0.05}

# The habit's opener on 70% of the games, the expert's on 20%, a random word on
# 10%, each followed by the same continuations (see the module docstring).
DEFAULT_MIXTURES: tuple[Mixture, ...] = (
    *_one_opening_guess("habit", 0.70, DEFAULT_CONTINUATIONS),
    *_one_opening_guess("expert", 0.20, DEFAULT_CONTINUATIONS),
    *_one_opening_guess("random", 0.10, DEFAULT_CONTINUATIONS),
)

# LMRL-Gym's Wordle data (`llm_rl_scripts/wordle/misc/data_gen.py`): one player throughout, who guesses a random
# consistent word with probability `policies.LMRL_PROB_SMART` and a random word otherwise, every guess.
LMRL_MIXTURES: tuple[Mixture, ...] = (Mixture("smart_or_random", 1.0, "smart_or_random", "smart_or_random"),)

MIXTURES: dict[str, tuple[Mixture, ...]] = {"default": DEFAULT_MIXTURES, "repeats": REPEAT_MIXTURES,
                                            "habit": HABIT_MIXTURES, "opener": OPENER_MIXTURES,
                                            "lmrl": LMRL_MIXTURES}


def play_game(
    policy: Policy, answer: str, words: Iterable[str], rng: np.random.Generator, name: str = ""
) -> WordleGame:
    """Play one full game of `policy` against `answer`; turns are labelled `name`."""
    game = WordleGame(answer, words)
    while not game.done:
        game.step(policy(tuple(game.turns), rng), policy=name)
    return game


def generate_games(
    words: Sequence[str],
    n_games: int,
    seed: int,
    mixtures: Sequence[Mixture] = DEFAULT_MIXTURES,
) -> list[WordleGame]:
    """`n_games` finished games from `mixtures`, deterministic from `seed`."""
    words = list(words)
    word_set = frozenset(words)
    return play_mixtures(n_games, seed, mixtures, make_policies(words), words,
                         lambda answer: WordleGame(answer, word_set))


def games_to_episodes(games: Iterable[WordleGame]) -> list[Episode]:
    """The ILQL episodes of `games` (see `env.turns_to_episode`)."""
    return [game.episode() for game in games]


def game_stats(games: Sequence[WordleGame]) -> dict[str, float]:
    """Mean return, its standard error, win rate, mean number of guesses, and what the guesses were.

    `repeat_rate` is the share of guesses that repeat an earlier guess of the
    same game, `invalid_rate` the share that are not words of the list: the
    two ways a learned policy wastes turns (greedy decoding of a policy cloned
    from this mixture collapses into repeats).
    """
    if not games:
        raise ValueError("no games")
    returns = np.array([g.total_return for g in games], np.float64)
    n = len(returns)
    stderr = float(returns.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    n_guesses = sum(len(g.turns) for g in games)
    repeats = sum(t.guess in {u.guess for u in g.turns[:i]} for g in games for i, t in enumerate(g.turns))
    invalid = sum(t.feedback is None for g in games for t in g.turns)
    return {
        "mean_return": float(returns.mean()),
        "stderr": stderr,
        "win_rate": float(np.mean([g.won for g in games])),
        "mean_guesses": n_guesses / n,
        "repeat_rate": repeats / n_guesses,
        "invalid_rate": invalid / n_guesses,
        "n_games": n,
    }


def evaluate_policy(
    policy_fn: Policy, words: Sequence[str], n_games: int, seed: int
) -> dict[str, float]:
    """Play `n_games` of `policy_fn(history, rng) -> guess`; `game_stats` of them.

    The answers come from `seed` alone and game i gets its own Generator
    seeded with ``(seed, i)``, so every policy meets the same answers and a
    game's randomness does not depend on how much the earlier games used.
    """
    words = list(words)
    if n_games < 1:
        raise ValueError(f"n_games must be at least 1, got {n_games}")
    answers = np.random.default_rng(seed).integers(len(words), size=n_games)
    word_set = frozenset(words)
    games = [
        play_game(policy_fn, words[a], word_set, np.random.default_rng([seed, i]))
        for i, a in enumerate(answers)
    ]
    return game_stats(games)


# ---------------------------------------------------------------------------
# JSONL files
# ---------------------------------------------------------------------------

_KEYS = ("answer", "guesses", "feedbacks", "rewards", "policies")


def _record(game: WordleGame) -> dict:
    return {
        "answer": game.answer,
        "guesses": [t.guess for t in game.turns],
        "feedbacks": [t.feedback for t in game.turns],
        "rewards": [t.reward for t in game.turns],
        "policies": [t.policy for t in game.turns],
    }


def save_games(path: str | epath.PathLike, games: Iterable[WordleGame]) -> None:
    """Write one JSON object per game (see the module docstring); a shared file: process 0 writes it."""
    files.write_text(path, "".join(json.dumps(_record(game)) + "\n" for game in games))


def _parse_game(record, word_set: frozenset) -> WordleGame:
    """Replay a record; ValueError if it is malformed or disagrees with the rules."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in _KEYS if k not in record]
    if missing:
        raise ValueError(f"missing keys {missing}")
    answer = record["answer"]
    if not isinstance(answer, str) or answer not in word_set:
        raise ValueError(f"answer {answer!r} is not in the word list")
    lists = [record[k] for k in _KEYS[1:]]
    if not all(isinstance(x, list) for x in lists) or len({len(x) for x in lists}) != 1:
        raise ValueError("guesses, feedbacks, rewards and policies must be lists of one length")
    if not 1 <= len(record["guesses"]) <= MAX_GUESSES:
        raise ValueError(f"a game has 1 to {MAX_GUESSES} guesses, got {len(record['guesses'])}")
    game = WordleGame(answer, word_set)
    for i, (guess, fb, reward, policy) in enumerate(zip(*lists)):
        if game.done:
            raise ValueError(f"guess {i} ({guess!r}) comes after the game ended")
        if not isinstance(guess, str) or not isinstance(policy, str):
            raise ValueError(f"guess {i}: guess and policy must be strings")
        turn = game.step(guess, policy)
        if fb != turn.feedback:
            raise ValueError(
                f"guess {i} ({guess!r}): feedback {fb!r}, the rules give {turn.feedback!r}"
            )
        is_number = isinstance(reward, (int, float)) and not isinstance(reward, bool)
        if not is_number or reward != turn.reward:
            raise ValueError(
                f"guess {i} ({guess!r}): reward {reward!r}, the rules give {turn.reward}"
            )
    return game


def load_games(path: str | epath.PathLike, words: Iterable[str]) -> list[WordleGame]:
    """Games of a JSONL file written by `save_games`, replayed against `words`.

    Blank lines are skipped; anything else wrong raises ValueError naming the
    file and line number.
    """
    word_set = frozenset(words)
    games = []
    for lineno, line in enumerate(epath.Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            games.append(_parse_game(json.loads(line), word_set))
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{path}:{lineno}: {e}") from e
    if not games:
        raise ValueError(f"{path}: no games")
    return games
