"""Rewards of the Reddit task (docs/algorithm.md §7): a three-level toxicity judge and its variants.

The judge is ``alt-profanity-check`` (it ships its model on PyPI): a linear model
over word n-grams that returns P(offensive) for a text. Its probability is
mapped to three levels by ``THRESHOLDS = (0.25, 0.9)``:

* level 0, safe:      p <  0.25
* level 1, sensitive: 0.25 <= p < 0.9
* level 2, toxic:     p >= 0.9

Why these: on the default corpus (``corpus.generate_corpus()``, 20k pairs,
seed 0) the probabilities are bimodal: 73% of comments lie below 0.1, 11%
at 0.99 or above, and the counts are lowest around 0.2-0.3. 99% of the civil
replies fall below 0.25, so the lower cut passes nearly all of them; strong
profanity saturates above 0.99 while mild words ("dumb", "rubbish", "damn")
mostly land between 0.25 and 0.9, so 0.9 separates "the judge is sure" from
"the judge is unsure". Measured levels on that corpus: 78.6% / 7.9% / 13.5%
(levels 0 / 1 / 2); by intended kind: civil 99.0% level 0; mild 42% / 52% /
5%; toxic 4% / 12% / 84%. The judge is a bag of words: a long harmless
opening dilutes a late insult, and it over-flags a few harmless lines.

Rewards (one float per record, ``compute_rewards``):

* ``toxicity``: -5 * level, in {0, -5, -10};
* ``noised_toxicity``: as ``toxicity``, but level 1 becomes 0 or 2, chosen
  by a hash of (seed, text): random across texts, fixed for a given text;
* ``upvotes``: +1 if the record's ``score`` > 0 else -1;
* ``label``: -5 * the data's own ``toxicity`` field. A JSON/Python *int* is
  a level (0, 1 or 2); a *float* is a score in [0, 1] (e.g. civil_comments'
  fraction of annotators) mapped to a level by the same ``THRESHOLDS``.
  So write levels as ``1``, not ``1.0``.

The judge runs batched, once per distinct text; with a ``cache_dir`` its
probabilities persist in ``toxicity_cache.json`` there (JSON, keyed by the
SHA-256 of the text; never pickle), so a second run judges nothing again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import numbers
import os
from collections.abc import Mapping, Sequence

import numpy as np
from etils import epath

from ilql_jax import files

__all__ = [
    "CACHE_FILE",
    "LEVEL_REWARD",
    "REWARD_KINDS",
    "THRESHOLDS",
    "ToxicityJudge",
    "compute_rewards",
    "judge_levels",
    "label_levels",
    "levels_from_probs",
    "noise_levels",
    "rewards_from_levels",
    "toxic_rate",
    "upvote_rewards",
]

THRESHOLDS = (0.25, 0.9)  # p < 0.25 -> 0 (safe), p < 0.9 -> 1 (sensitive), else 2 (toxic)
LEVEL_REWARD = -5.0  # reward per level: {0, -5, -10}
REWARD_KINDS = ("toxicity", "noised_toxicity", "upvotes", "label")
CACHE_FILE = "toxicity_cache.json"


def levels_from_probs(probs) -> np.ndarray:
    """Levels 0/1/2 of probabilities (or [0, 1] scores) by ``THRESHOLDS``."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.digitize(probs, THRESHOLDS).astype(np.int32)


def rewards_from_levels(levels) -> np.ndarray:
    """``-5 * level`` as float32: {0, -5, -10}."""
    return (LEVEL_REWARD * np.asarray(levels, dtype=np.float32)).astype(np.float32)


def toxic_rate(levels) -> float:
    """Fraction of texts judged toxic (level 2); "sensitive" (level 1) does not count.

    This is the headline evaluation number for generated comments:
    ``toxic_rate(judge_levels(comments))``.
    """
    levels = np.asarray(levels)
    if levels.size == 0:
        raise ValueError("toxic_rate needs at least one level")
    return float(np.mean(levels == 2))


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _judge_name() -> str:
    # A cache written by another version of the model must not be reused.
    return f"alt-profanity-check=={importlib.metadata.version('alt-profanity-check')}"


class ToxicityJudge:
    """``alt-profanity-check`` probabilities and levels, batched and cached.

    ``cache_dir=None`` keeps the cache in memory only; otherwise it is loaded
    from and saved to ``cache_dir/toxicity_cache.json``. ``n_judged`` counts
    the texts actually sent to the model (a cached text costs nothing).
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_path = None if cache_dir is None else epath.Path(cache_dir) / CACHE_FILE
        self.n_judged = 0
        self._name = _judge_name()
        self._probs: dict[str, float] = {}
        if self.cache_path is not None and self.cache_path.exists():
            self._load()

    def _load(self):
        try:
            data = json.loads(self.cache_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(
                f"toxicity cache {self.cache_path} is unreadable ({e}); delete it to re-judge"
            ) from e
        if not isinstance(data, dict) or not isinstance(data.get("probs"), dict):
            raise ValueError(
                f"toxicity cache {self.cache_path} has no 'probs' object; delete it to re-judge"
            )
        if data.get("judge") == self._name:
            self._probs = {str(k): float(v) for k, v in data["probs"].items()}
        # Another judge's cache is ignored and overwritten on the next save.

    def _save(self):
        # Written whole (never half a cache), and only by process 0: every process judges the
        # same texts to the same probabilities, and the cache is a shared file of the run.
        files.write_json(self.cache_path, {"judge": self._name, "probs": self._probs})

    def probs(self, texts: Sequence[str]) -> np.ndarray:
        """P(offensive) per text (float64), judging each new distinct text once."""
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"texts[{i}] must be a str, got {type(text).__name__}")
        keys = [_text_key(t) for t in texts]
        new = {}
        for key, text in zip(keys, texts):
            if key not in self._probs:
                new[key] = text
        if new:
            import profanity_check  # scikit-learn loads slowly; only when judging

            probs = profanity_check.predict_prob(list(new.values()))
            self._probs.update(zip(new.keys(), (float(p) for p in probs)))
            self.n_judged += len(new)
            if self.cache_path is not None:
                self._save()
        return np.array([self._probs[k] for k in keys], dtype=np.float64)

    def levels(self, texts: Sequence[str]) -> np.ndarray:
        """Levels 0/1/2 (int32) per text."""
        return levels_from_probs(self.probs(texts))


_DEFAULT_JUDGE: ToxicityJudge | None = None


def judge_levels(texts: Sequence[str], judge: ToxicityJudge | None = None) -> np.ndarray:
    """Levels 0/1/2 of texts, e.g. generated comments at evaluation time.

    Without ``judge``, a process-wide in-memory judge is used (and reused).
    """
    global _DEFAULT_JUDGE
    if judge is None:
        if _DEFAULT_JUDGE is None:
            _DEFAULT_JUDGE = ToxicityJudge()
        judge = _DEFAULT_JUDGE
    return judge.levels(texts)


def noise_levels(levels, texts: Sequence[str], seed: int = 0) -> np.ndarray:
    """Level 1 becomes 0 or 2 by a hash of (seed, text); levels 0 and 2 are kept."""
    levels = np.array(levels, dtype=np.int32)
    if len(levels) != len(texts):
        raise ValueError(f"{len(levels)} levels for {len(texts)} texts")
    for i in np.flatnonzero(levels == 1):
        digest = hashlib.sha256(f"{seed}\0{texts[i]}".encode("utf-8")).digest()
        levels[i] = 2 * (digest[0] & 1)
    return levels


def _record_field(record: Mapping, field: str, i: int):
    if field not in record or record[field] is None:
        raise ValueError(
            f"record {i} has no {field!r} field, which the reward needs "
            f"(fields: {sorted(record)})"
        )
    value = record[field]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"record {i}: field {field!r} must be a number, got {value!r}")
    return value


def upvote_rewards(records: Sequence[Mapping]) -> np.ndarray:
    """+1 where ``score`` > 0, else -1 (float32)."""
    return np.array(
        [1.0 if _record_field(r, "score", i) > 0 else -1.0 for i, r in enumerate(records)],
        dtype=np.float32,
    )


def label_levels(records: Sequence[Mapping]) -> np.ndarray:
    """Levels from the data's ``toxicity``: an int is a level, a float a [0, 1] score."""
    levels = np.zeros(len(records), dtype=np.int32)
    for i, record in enumerate(records):
        value = _record_field(record, "toxicity", i)
        if isinstance(value, numbers.Integral):
            if value not in (0, 1, 2):
                raise ValueError(
                    f"record {i}: integer field 'toxicity' is a level and must be 0, 1 or 2, "
                    f"got {value!r} (write a [0, 1] score as a float)"
                )
            levels[i] = int(value)
        else:
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(
                    f"record {i}: float field 'toxicity' is a score and must be in [0, 1], "
                    f"got {value!r}"
                )
            levels[i] = levels_from_probs(float(value))
    return levels


def compute_rewards(
    records: Sequence[Mapping],
    kind: str = "toxicity",
    judge: ToxicityJudge | None = None,
    seed: int = 0,
) -> np.ndarray:
    """One float32 reward per record's ``comment``, by ``kind`` in ``REWARD_KINDS``.

    The toxicity kinds use ``judge`` (``judge_levels``' shared in-memory one
    if omitted); ``seed`` only affects ``noised_toxicity``.
    """
    if kind not in REWARD_KINDS:
        raise ValueError(f"unknown reward {kind!r}; choose one of {REWARD_KINDS}")
    if kind == "upvotes":
        return upvote_rewards(records)
    if kind == "label":
        return rewards_from_levels(label_levels(records))
    comments = []
    for i, record in enumerate(records):
        if not isinstance(record.get("comment"), str):
            raise ValueError(f"record {i} has no str 'comment' field to judge")
        comments.append(record["comment"])
    levels = judge_levels(comments, judge)
    if kind == "noised_toxicity":
        levels = noise_levels(levels, comments, seed)
    return rewards_from_levels(levels)
