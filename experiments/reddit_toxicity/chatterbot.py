"""Real English parent → reply pairs that install with the project: chatterbot-corpus (`--corpus chatterbot`).

`chatterbot-corpus` (BSD-3-Clause, on PyPI, in the `experiments` extra) holds
hand-written English conversations in YAML, one file per topic (greetings, AI,
computers, food, humour, tech support, trivia, ...). Each conversation is a list
of turns; every two consecutive turns make one pair (the first is the parent,
the second the reply), so a conversation of n turns gives n − 1 pairs. Pairs are
kept once each, in file and turn order. The package is found without importing
it, like the other data packages here. The text is real but mostly polite: few
replies are toxic, so on this corpus π_β's toxic rate is low to begin with.
"""

from __future__ import annotations

import glob
import importlib.util
import os

import yaml

from ilql_jax.data.records import DataError

__all__ = ["REQUIREMENT", "corpus_dir", "load_chatterbot"]

REQUIREMENT = "chatterbot-corpus==1.3.3"


def corpus_dir(language: str = "english") -> str:
    """The installed corpus's folder for `language`; DataError (one line: how to install it) when absent."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("--corpus chatterbot", f"needs the package: pip install {REQUIREMENT} (in the "
                        "'experiments' extra)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", language)
    if not os.path.isdir(path):
        raise DataError("--corpus chatterbot", f"{path} is missing from the installed package")
    return path


def _turn(text) -> str:
    # YAML reads some turns as numbers or booleans ("42", "yes"): they are text here.
    return " ".join(str(text).split())


def load_chatterbot(language: str = "english") -> list[dict]:
    """`{parent, comment, source}` records from every conversation of the corpus (`source`: FILE: conversation N)."""
    records, seen = [], set()
    for path in sorted(glob.glob(os.path.join(corpus_dir(language), "*.yml"))):
        with open(path, encoding="utf-8") as f:
            try:
                conversations = (yaml.safe_load(f) or {}).get("conversations") or []
            except yaml.YAMLError as e:
                raise DataError(path, f"not readable YAML: {str(e).splitlines()[0]}") from None
        for n, turns in enumerate(conversations, start=1):
            turns = [_turn(t) for t in turns or [] if t is not None]
            for parent, reply in zip(turns, turns[1:]):
                if parent and reply and (parent, reply) not in seen:
                    seen.add((parent, reply))
                    records.append({"parent": parent, "comment": reply,
                                    "source": f"{os.path.basename(path)}: conversation {n}"})
    if not records:
        raise DataError(corpus_dir(language), "holds no conversation of two or more turns")
    return records
