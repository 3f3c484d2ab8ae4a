"""Offline dialogues of mixed quality, their JSONL files, and evaluation statistics.

As in Wordle, dialogues mix the scripted questioners *within* a dialogue
(`DEFAULT_MIXTURES`): a good opening with a poor ending, a poor opening with a
good ending, and a few expert dialogues start to finish, so the data hold good
pieces that multi-step RL can stitch together. Generation is deterministic
from a seed. A JSONL file holds one dialogue per line::

    {"target": "dog", "utterances": ["Is it an animal?", "Is it a dog?"],
     "replies": ["yes", "yes"], "policies": ["info_gain", "premature"]}

`load_dialogues` replays each line against the answerer and rejects one whose
replies disagree, naming the file and line. Rewards are recomputed, never read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence

import numpy as np
from etils import epath

from experiments.mixtures import Mixture, play_mixtures
from ilql_jax import files
from ilql_jax.data.episodes import Episode

from .catalogue import Catalogue
from .env import MAX_TURNS, REWARDS, DialogueGame, Turn
from .policies import make_policies

__all__ = [
    "DEFAULT_MIXTURES",
    "HABIT_MIXTURES",
    "MIXTURES",
    "Mixture",
    "dialogue_stats",
    "dialogues_to_episodes",
    "evaluate_policy",
    "eval_targets",
    "generate_dialogues",
    "load_dialogues",
    "save_dialogues",
]


# Pure expert dialogues are 10% of the data.
DEFAULT_MIXTURES: tuple[Mixture, ...] = (
    Mixture("info_gain", 0.10, "info_gain", "info_gain"),
    Mixture("info_gain>premature", 0.15, "info_gain", "premature", (1, 4)),
    Mixture("info_gain>random_attribute", 0.10, "info_gain", "random_attribute", (1, 4)),
    Mixture("random_attribute>info_gain", 0.15, "random_attribute", "info_gain", (1, 4)),
    Mixture("noisy>info_gain", 0.10, "noisy", "info_gain", (2, 5)),
    Mixture("random_attribute>premature", 0.10, "random_attribute", "premature", (2, 5)),
    Mixture("random_attribute", 0.10, "random_attribute", "random_attribute"),
    Mixture("noisy", 0.15, "noisy", "noisy"),
    Mixture("premature", 0.05, "premature", "premature"),
)


# The expert's choice is not the data's most frequent one: a habitual checklist (narrowest questions first)
# opens 43% of the dialogues and says 46% of their utterances, the expert 20% and 22% (the small catalogue,
# seed 0). The most likely utterance under π_β is then mostly the habit's, and only values tell the better,
# rarer questions apart.
HABIT_MIXTURES: tuple[Mixture, ...] = (
    Mixture("checklist", 0.30, "checklist", "checklist"),
    Mixture("checklist>info_gain", 0.15, "checklist", "info_gain", (1, 4)),
    Mixture("info_gain>checklist", 0.10, "info_gain", "checklist", (1, 3)),
    Mixture("info_gain", 0.10, "info_gain", "info_gain"),
    Mixture("random_attribute>info_gain", 0.10, "random_attribute", "info_gain", (1, 4)),
    Mixture("noisy", 0.10, "noisy", "noisy"),
    Mixture("random_attribute", 0.10, "random_attribute", "random_attribute"),
    Mixture("premature", 0.05, "premature", "premature"),
)
# By name, for `DialogueConfig.data_mix`.
MIXTURES = {"expert": DEFAULT_MIXTURES, "habit": HABIT_MIXTURES}


def generate_dialogues(catalogue: Catalogue, n: int, seed: int,
                       mixtures: Sequence[Mixture] = DEFAULT_MIXTURES) -> list[DialogueGame]:
    """`n` finished dialogues from `mixtures`, with uniformly random targets; deterministic from `seed`."""
    return play_mixtures(n, seed, mixtures, make_policies(catalogue), catalogue.names,
                         lambda target: DialogueGame(target, catalogue))


def dialogues_to_episodes(games: Iterable[DialogueGame], reward: str = "standard") -> list[Episode]:
    """The ILQL episodes of `games` under reward variant `reward`."""
    return [game.episode(reward) for game in games]


def dialogue_stats(games: Sequence[DialogueGame]) -> dict[str, float]:
    """Mean return ± s.e. under each reward variant, success rate, mean number of turns."""
    if not games:
        raise ValueError("no dialogues")
    n = len(games)
    stats = {}
    for reward in REWARDS:
        returns = np.array([g.total_return(reward) for g in games], np.float64)
        suffix = "" if reward == "standard" else f"_{reward}"
        stats[f"mean_return{suffix}"] = float(returns.mean())
        stats[f"stderr{suffix}"] = float(returns.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    stats["success_rate"] = float(np.mean([g.won for g in games]))
    stats["mean_turns"] = float(np.mean([len(g.turns) for g in games]))
    stats["unparsed_rate"] = float(np.mean([t.parse.kind == "unknown" for g in games for t in g.turns]))
    stats["n_dialogues"] = n
    return stats


def eval_targets(catalogue: Catalogue, n: int, seed: int) -> list[str]:
    """The hidden targets of the `n` evaluation dialogues (the same for every method)."""
    return [catalogue.names[i] for i in np.random.default_rng(seed).integers(len(catalogue.names), size=n)]


def evaluate_policy(policy, catalogue: Catalogue, n: int, seed: int) -> dict[str, float]:
    """`dialogue_stats` of `n` dialogues of `policy(history, rng)`; dialogue i gets rng ``(seed, i)``."""
    games = []
    for i, target in enumerate(eval_targets(catalogue, n, seed)):
        rng = np.random.default_rng([seed, i])
        game = DialogueGame(target, catalogue)
        while not game.done:
            game.step(policy(tuple(game.turns), rng))
        games.append(game)
    return dialogue_stats(games)


def save_dialogues(path: str | epath.PathLike, games: Iterable[DialogueGame]) -> None:
    """One JSON object per dialogue (see the module docstring); a shared file: process 0 writes it."""
    files.write_text(path, "".join(
            json.dumps({"target": g.target, "utterances": [t.text for t in g.turns],
                        "replies": [t.reply for t in g.turns], "policies": [t.policy for t in g.turns]}) + "\n"
            for g in games))


def _replay(record, catalogue: Catalogue) -> DialogueGame:
    if not isinstance(record, dict) or not {"target", "utterances", "replies", "policies"} <= set(record):
        raise ValueError("expected an object with target, utterances, replies and policies")
    if record["target"] not in catalogue.index:
        raise ValueError(f"target {record['target']!r} is not in the catalogue")
    lists = [record[k] for k in ("utterances", "replies", "policies")]
    if not all(isinstance(x, list) for x in lists) or len({len(x) for x in lists}) != 1:
        raise ValueError("utterances, replies and policies must be lists of one length")
    if not 1 <= len(lists[0]) <= MAX_TURNS:
        raise ValueError(f"a dialogue has 1 to {MAX_TURNS} turns, got {len(lists[0])}")
    game = DialogueGame(record["target"], catalogue)
    for i, (text, reply, policy) in enumerate(zip(*lists)):
        if game.done:
            raise ValueError(f"turn {i} ({text!r}) comes after the dialogue ended")
        turn: Turn = game.step(text, str(policy))
        if reply != turn.reply:
            raise ValueError(f"turn {i} ({text!r}): reply {reply!r}, the answerer gives {turn.reply!r}")
    return game


def load_dialogues(path: str | epath.PathLike, catalogue: Catalogue) -> list[DialogueGame]:
    """Dialogues of a JSONL file written by `save_dialogues`, replayed; ValueError naming file and line."""
    games = []
    for lineno, line in enumerate(epath.Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            games.append(_replay(json.loads(line), catalogue))
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from e
    if not games:
        raise ValueError(f"{path}: no dialogues")
    return games
