"""The ask-to-identify game: a rule-based answerer, rewards, and dialogues as ILQL episodes (docs/algorithm.md §1, §7).

A hidden target is drawn from the catalogue. Each turn the agent says one free-text
utterance and the answerer replies:

* a **guess** ("Is it a dog?", "Are you thinking of an owl?", "My guess is a cat."
  naming a catalogue item) gets "yes" if it names the target, else "no";
* a **question** is mapped to one attribute by keyword patterns that cover
  paraphrases (`ATTRIBUTE_PATTERNS`: "Does it have fur?", "Is it furry?",
  "Is it hairy?" all ask `fur`) and gets "yes" or "no";
* anything else gets "I don't know": no attribute matches, or several do
  (a compound question such as "Is it a big animal?" cannot be answered yes/no
  about one attribute). Negations are not understood ("Is it not a bird?" asks
  `bird`).

The dialogue ends on a correct guess or after `MAX_TURNS` = 10 utterances
(questions and wrong guesses alike).

Rewards (`REWARDS`), per utterance, on the transition that emits its `</a>`:

* ``standard``: −1 per utterance, 0 for the correct guess, so the return lies in
  [−10, 0];
* ``yn``: standard, plus −`YN_PENALTY` (= −1, so −2 in all, the spec's figure)
  for a question whose answer already follows from earlier answers: the
  attribute has the same value for every item still consistent with the
  dialogue so far (consistent with every yes/no answer, wrong guesses removed);
* ``conservative``: standard, plus −`CONSERVATIVE_PENALTY` (= −1, −2 in all) for
  an utterance the answerer cannot parse ("I don't know").

Episode markup: the agent speaks first, each utterance is an agent segment with
its reward, each reply an environment segment::

    <a>Is it a mammal?</a>yes</s>Is it a dog?</a>yes</s></eod>
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

import numpy as np

from experiments.games import TurnGame
from ilql_jax.data.episodes import Episode, Segment, agent, env, prompt_tokens

from .catalogue import Catalogue

__all__ = [
    "ATTRIBUTE_PATTERNS",
    "CONSERVATIVE_PENALTY",
    "DONT_KNOW",
    "DialogueGame",
    "MAX_TURNS",
    "Parse",
    "REWARDS",
    "Turn",
    "YN_PENALTY",
    "answer",
    "consistent_mask",
    "game_over",
    "history_segments",
    "parse",
    "prompt_ids",
    "turn_rewards",
    "turns_to_episode",
]

MAX_TURNS = 10
REWARDS = ("standard", "yn", "conservative")
YN_PENALTY = 1.0
CONSERVATIVE_PENALTY = 1.0
YES, NO, DONT_KNOW = "yes", "no", "I don't know"

# One pattern per attribute, matched on the normalised question (lowercase,
# punctuation dropped). Each covers the questioners' templates and further
# paraphrases; a question must match exactly one.
ATTRIBUTE_PATTERNS: dict[str, str] = {
    "animal": r"\b(animal|alive|living (thing|creature)|creature)\b",
    "mammal": r"\bmammals?\b",
    "bird": r"\bbirds?\b",
    "insect": r"\b(insect|bug)s?\b",
    "aquatic": r"\bwater\b|\bswim(s|ming)?\b|\baquatic\b",
    "flies": r"\b(fly|flies|flying)\b",
    "four_legs": r"\b(four|4) legs\b|\bfour legged\b|\bquadruped\b",
    "fur": r"\b(fur|furry|hairy|fluffy)\b",
    "pet": r"\bpets?\b",
    "farm": r"\bfarms?\b",
    "big": r"\b(big|bigger|large|larger|huge)\b",
    "small": r"\b(small|smaller|tiny|little)\b|\bfits? in (your|a|my|the) (hand|pocket)\b",
    "dangerous": r"\b(dangerous|harmful|deadly)\b|\bhurt (you|people|someone)\b",
    "carnivore": r"\beats? meat\b|\bcarnivor\w*\b|\bmeat eater\b",
    "electronic": r"\b(electricity|electric|electronic|batteries|battery)\b|\bplugged in\b",
    "kitchen": r"\bkitchens?\b",
    "wooden": r"\b(wood|wooden)\b",
    "metal": r"\b(metal|metallic|steel|iron)\b",
    "edible": r"\b(edible|food)\b|\beat it\b|\bbe eaten\b",
    "wheels": r"\bwheels?\b",
    "sharp": r"\b(sharp|pointy|blade)\b",
    "striped": r"\b(stripes|striped|stripy)\b",
    "round": r"\b(round|circular|circle|spherical)\b",
}
_COMPILED = {a: re.compile(p) for a, p in ATTRIBUTE_PATTERNS.items()}
_GUESS = re.compile(r"^(is it|is that|it is|are you thinking of|my guess is|i guess|i think it is) (a|an|the) ([a-z]+)$")


def normalise(text: str) -> str:
    """Lowercase, apostrophes dropped, other punctuation as spaces, single spaces."""
    text = text.lower().replace("'", "")
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text).split())


@dataclasses.dataclass(frozen=True)
class Parse:
    """What the answerer made of an utterance: kind is "guess", "question" or "unknown"; `what` the item or attribute."""

    kind: str
    what: str | None = None


def parse(text: str, catalogue: Catalogue) -> Parse:
    """Maps an utterance to a guess of an item, a question about one attribute, or unknown (see the module docstring)."""
    norm = normalise(text)
    guess = _GUESS.match(norm)
    if guess and guess.group(3) in catalogue.index:
        return Parse("guess", guess.group(3))
    hits = [a for a in catalogue.attributes if a in _COMPILED and _COMPILED[a].search(norm)]
    if len(hits) == 1:
        return Parse("question", hits[0])
    return Parse("unknown")


def answer(p: Parse, target: str, catalogue: Catalogue) -> str:
    """The answerer's reply to a parsed utterance when the hidden item is `target`."""
    if p.kind == "guess":
        return YES if p.what == target else NO
    if p.kind == "question":
        return YES if catalogue.has(target, p.what) else NO
    return DONT_KNOW


@dataclasses.dataclass(frozen=True)
class Turn:
    """One utterance, its parse, the reply and its reward under each of `REWARDS`; `policy` names the speaker."""

    text: str
    parse: Parse
    reply: str
    rewards: dict
    policy: str = ""

    @property
    def won(self) -> bool:
        return self.parse.kind == "guess" and self.reply == YES


def consistent_mask(turns: Iterable[Turn], catalogue: Catalogue) -> np.ndarray:
    """bool [n_items]: the items consistent with every yes/no reply so far (wrong guesses removed)."""
    mask = np.ones(len(catalogue.names), np.bool_)
    for turn in turns:
        if turn.parse.kind == "question":
            column = catalogue.table[:, catalogue.attribute_index[turn.parse.what]]
            mask &= column == (turn.reply == YES)
        elif turn.parse.kind == "guess":
            item = np.zeros_like(mask)
            item[catalogue.index[turn.parse.what]] = True
            mask &= item if turn.reply == YES else ~item
    return mask


def turn_rewards(p: Parse, reply: str, history: Sequence[Turn], catalogue: Catalogue) -> dict[str, float]:
    """Reward of an utterance under each variant (see the module docstring), given the turns before it."""
    standard = 0.0 if (p.kind == "guess" and reply == YES) else -1.0
    yn = standard
    if p.kind == "question":
        values = catalogue.table[consistent_mask(history, catalogue), catalogue.attribute_index[p.what]]
        if values.size and (values.all() or not values.any()):  # the answer follows from earlier answers
            yn -= YN_PENALTY
    conservative = standard - (CONSERVATIVE_PENALTY if p.kind == "unknown" else 0.0)
    return {"standard": standard, "yn": yn, "conservative": conservative}


def game_over(turns: Sequence[Turn]) -> bool:
    """A dialogue ends on a correct guess or after `MAX_TURNS` utterances."""
    return len(turns) >= MAX_TURNS or any(t.won for t in turns)


def history_segments(turns: Iterable[Turn], reward: str = "standard") -> list[Segment]:
    """The turns as alternating agent (utterance, its `reward`-variant reward) / environment (reply) segments."""
    segments = []
    for turn in turns:
        segments.append(agent(turn.text, turn.rewards[reward]))
        segments.append(env(turn.reply))
    return segments


def turns_to_episode(turns: Sequence[Turn], reward: str = "standard") -> Episode:
    """The episode of a dialogue under reward variant `reward`; terminal iff the game is over."""
    if reward not in REWARDS:
        raise ValueError(f"unknown reward {reward!r}; choose from {REWARDS}")
    if not turns:
        raise ValueError("a dialogue with no turns has no episode")
    return Episode(tuple(history_segments(turns, reward)), terminal=game_over(turns))


def prompt_ids(turns: Sequence[Turn], tokenizer) -> list[int]:
    """Token ids for the agent's next utterance: ``<a>`` first, then e.g. ``<a>Is it big?</a>no</s>``."""
    return prompt_tokens(history_segments(turns), tokenizer)


class DialogueGame(TurnGame):
    """One dialogue about a hidden `target`; `step(text)` plays an utterance and returns its `Turn`."""

    over = staticmethod(game_over)
    finished = "the dialogue about {target!r} is over; no more turns"

    def __init__(self, target: str, catalogue: Catalogue):
        if target not in catalogue.index:
            raise ValueError(f"target {target!r} is not in the catalogue")
        self.target = target
        self.catalogue = catalogue
        self.turns: list[Turn] = []

    def total_return(self, reward: str = "standard") -> float:
        return float(sum(t.rewards[reward] for t in self.turns))

    def _play(self, text: str, policy: str) -> Turn:
        p = parse(text, self.catalogue)
        reply = answer(p, self.target, self.catalogue)
        return Turn(text, p, reply, turn_rewards(p, reply, self.turns, self.catalogue), policy)

    def episode(self, reward: str = "standard") -> Episode:
        return turns_to_episode(self.turns, reward)
