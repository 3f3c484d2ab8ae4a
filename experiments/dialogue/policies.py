"""Scripted questioners of mixed quality: ``policy(history, rng) -> utterance``.

Questions are free text: each attribute has three paraphrase templates
(`QUESTION_TEMPLATES`), guesses three (`GUESS_TEMPLATES`), chosen uniformly by
`rng`, so a learned policy must generate the words, not pick an id.

* `InfoGainPolicy` (the expert): among the items consistent with the dialogue
  so far, guesses when at most two remain, else asks the attribute whose answer
  splits them with the highest entropy (ties to the catalogue's column order).
* `RandomAttributePolicy`: a uniformly random attribute not yet asked (often
  one whose answer is already known); guesses once one item remains.
* `NoisyPolicy`: the expert's choice, but half of its questions come out as an
  unparseable paraphrase (`VAGUE_QUESTIONS`: vague or compound questions).
* `PrematureGuesser`: guesses a uniformly random consistent item at once.
* `ChecklistPolicy`: a habit: asks the attributes in one fixed order, the
  narrowest first (ascending split entropy over the whole catalogue), whatever
  the answers so far; guesses when one item remains or the list is done.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .catalogue import Catalogue
from .env import Turn, consistent_mask

__all__ = [
    "ChecklistPolicy",
    "GUESS_TEMPLATES",
    "InfoGainPolicy",
    "NoisyPolicy",
    "PrematureGuesser",
    "QUESTION_TEMPLATES",
    "RandomAttributePolicy",
    "VAGUE_QUESTIONS",
    "guess_text",
    "make_policies",
]

QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "animal": ("Is it an animal?", "Is it a living thing?", "Is it alive?"),
    "mammal": ("Is it a mammal?", "Would you call it a mammal?", "Is the thing a mammal?"),
    "bird": ("Is it a bird?", "Is it a kind of bird?", "Would you call it a bird?"),
    "insect": ("Is it an insect?", "Is it a bug?", "Is it a kind of insect?"),
    "aquatic": ("Does it live in water?", "Is it found in the water?", "Can it swim?"),
    "flies": ("Can it fly?", "Does it fly?", "Is it able to fly?"),
    "four_legs": ("Does it have four legs?", "Does it walk on four legs?", "Is it four legged?"),
    "fur": ("Does it have fur?", "Is it furry?", "Is it covered in fur?"),
    "pet": ("Is it a pet?", "Do people keep it as a pet?", "Could it be a pet?"),
    "farm": ("Is it found on a farm?", "Would you see it on a farm?", "Does it belong on a farm?"),
    "big": ("Is it big?", "Is it bigger than a person?", "Is it large?"),
    "small": ("Is it small?", "Does it fit in your hand?", "Is it tiny?"),
    "dangerous": ("Is it dangerous?", "Can it hurt you?", "Is it harmful?"),
    "carnivore": ("Does it eat meat?", "Is it a carnivore?", "Is it a meat eater?"),
    "electronic": ("Does it use electricity?", "Is it electronic?", "Does it need to be plugged in?"),
    "kitchen": ("Is it found in a kitchen?", "Would you find it in the kitchen?", "Is it a kitchen thing?"),
    "wooden": ("Is it made of wood?", "Is it wooden?", "Is it made from wood?"),
    "metal": ("Is it made of metal?", "Is it metal?", "Is it made from metal?"),
    "edible": ("Can you eat it?", "Is it food?", "Is it edible?"),
    "wheels": ("Does it have wheels?", "Does it roll on wheels?", "Is it on wheels?"),
    "sharp": ("Is it sharp?", "Is it pointy?", "Does it have a blade?"),
    "striped": ("Does it have stripes?", "Is it striped?", "Is it covered in stripes?"),
    "round": ("Is it round?", "Is it circular?", "Is it shaped like a circle?"),
}
GUESS_TEMPLATES = ("Is it {article} {item}?", "Are you thinking of {article} {item}?", "My guess is {article} {item}.")
# Questions the answerer cannot map to one attribute: vague, or about two at once.
VAGUE_QUESTIONS = (
    "Can you tell me more about it?", "What is it like?", "Is it nice?", "Would I like it?",
    "Is it common?", "What color is it?", "Is it old?", "Is it a big animal?", "Does it fly or swim?",
    "Is it a small pet?", "Is it useful?", "Where would I see it?",
)


def guess_text(item: str, rng: np.random.Generator) -> str:
    """A guess of `item` in one of the `GUESS_TEMPLATES` paraphrases."""
    article = "an" if item[0] in "aeiou" else "a"
    return GUESS_TEMPLATES[rng.integers(len(GUESS_TEMPLATES))].format(article=article, item=item)


def question_text(attribute: str, rng: np.random.Generator) -> str:
    """A question about `attribute` in one of its paraphrases."""
    templates = QUESTION_TEMPLATES[attribute]
    return templates[rng.integers(len(templates))]


def split_entropy(table: np.ndarray) -> np.ndarray:
    """Entropy (bits) of each attribute's yes/no split of the rows of a bool [n, A] table."""
    p = table.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.nan_to_num(h)


def _asked(history: Sequence[Turn]) -> set[str]:
    return {t.parse.what for t in history if t.parse.kind == "question"}


class InfoGainPolicy:
    """Greedy information gain (see the module docstring); deterministic but for the paraphrase."""

    def __init__(self, catalogue: Catalogue):
        self.catalogue = catalogue

    def choose(self, history: Sequence[Turn], rng: np.random.Generator) -> tuple[str, str | None]:
        """("guess", item) or ("question", attribute)."""
        candidates = np.flatnonzero(consistent_mask(history, self.catalogue))
        if len(candidates) == 0:  # only if replies contradict the catalogue
            candidates = np.arange(len(self.catalogue.names))
        if len(candidates) <= 2:
            return "guess", self.catalogue.names[candidates[0]]
        h = split_entropy(self.catalogue.table[candidates])
        if h.max() <= 0:
            return "guess", self.catalogue.names[rng.choice(candidates)]
        return "question", self.catalogue.attributes[int(np.argmax(h))]

    def __call__(self, history: Sequence[Turn], rng: np.random.Generator) -> str:
        kind, what = self.choose(history, rng)
        return guess_text(what, rng) if kind == "guess" else question_text(what, rng)


class RandomAttributePolicy:
    """A random unasked attribute; guesses when one item remains (or nothing is left to ask)."""

    def __init__(self, catalogue: Catalogue):
        self.catalogue = catalogue

    def __call__(self, history: Sequence[Turn], rng: np.random.Generator) -> str:
        candidates = np.flatnonzero(consistent_mask(history, self.catalogue))
        unasked = [a for a in self.catalogue.attributes if a not in _asked(history)]
        if len(candidates) == 1 or not unasked:
            return guess_text(self.catalogue.names[rng.choice(candidates)] if len(candidates) else
                              self.catalogue.names[0], rng)
        return question_text(unasked[rng.integers(len(unasked))], rng)


class NoisyPolicy:
    """The expert, but each question is unparseable with probability `p_vague`."""

    def __init__(self, catalogue: Catalogue, p_vague: float = 0.5):
        self.expert = InfoGainPolicy(catalogue)
        self.p_vague = p_vague

    def __call__(self, history: Sequence[Turn], rng: np.random.Generator) -> str:
        kind, what = self.expert.choose(history, rng)
        if kind == "question" and rng.random() < self.p_vague:
            return VAGUE_QUESTIONS[rng.integers(len(VAGUE_QUESTIONS))]
        return guess_text(what, rng) if kind == "guess" else question_text(what, rng)


class PrematureGuesser:
    """Guesses a uniformly random consistent item every turn."""

    def __init__(self, catalogue: Catalogue):
        self.catalogue = catalogue

    def __call__(self, history: Sequence[Turn], rng: np.random.Generator) -> str:
        candidates = np.flatnonzero(consistent_mask(history, self.catalogue))
        if len(candidates) == 0:
            candidates = np.arange(len(self.catalogue.names))
        return guess_text(self.catalogue.names[rng.choice(candidates)], rng)


class ChecklistPolicy:
    """Asks the unasked attribute first in `order` (default: ascending split entropy over the catalogue, the
    narrowest questions first); guesses a consistent item when one remains or every attribute was asked."""

    def __init__(self, catalogue: Catalogue, order: Sequence[str] | None = None):
        self.catalogue = catalogue
        if order is None:
            order = [catalogue.attributes[i] for i in np.argsort(split_entropy(catalogue.table), kind="stable")]
        self.order = tuple(order)

    def __call__(self, history: Sequence[Turn], rng: np.random.Generator) -> str:
        candidates = np.flatnonzero(consistent_mask(history, self.catalogue))
        unasked = [a for a in self.order if a not in _asked(history)]
        if len(candidates) <= 1 or not unasked:
            pool = candidates if len(candidates) else np.arange(len(self.catalogue.names))
            return guess_text(self.catalogue.names[rng.choice(pool)], rng)
        return question_text(unasked[0], rng)


def make_policies(catalogue: Catalogue) -> dict:
    """The scripted questioners by name."""
    return {
        "info_gain": InfoGainPolicy(catalogue),
        "random_attribute": RandomAttributePolicy(catalogue),
        "noisy": NoisyPolicy(catalogue),
        "premature": PrematureGuesser(catalogue),
        "checklist": ChecklistPolicy(catalogue),
    }
