"""Episodes of text with rewards, and their token-level MDP arrays (docs/algorithm.md §1).

An episode is a sequence of segments, each spoken either by the environment
(prompt, parent comment, game feedback) or by the agent (an utterance with a
scalar reward), plus a ``terminal`` flag. ``episode_to_arrays`` lays it out as
one token sequence with markup (or, for a pretrained chat model's tokenizer,
through its chat template: ``ilql_jax.data.layout``, docs/pretrained.md, where
the template's end-of-turn token plays ``</a>``'s role) and builds, per
position ``t``, everything the losses need (docs/algorithm.md §1, §3):

* ``tokens[t]`` is ``x_t``; hidden state ``h_t`` predicts ``x_{t+1}``, so the
  *action* taken at state ``t`` is ``x_{t+1}`` (as with LM logits);
* ``action_mask[t]`` (``m_t``) is 1 iff ``x_{t+1}`` is an agent token
  (including the utterance's closing ``</a>``);
* ``rewards[t]`` (``r_t``) is the utterance reward on the transition that
  emits ``</a>`` and 0 elsewhere;
* ``next_idx[t]`` (``next(t)``) is ``t + 1`` inside an utterance; the
  ``</a>`` transition skips the environment's reply and lands on the state
  that emits the next agent utterance (or the final position);
* ``dones[t]`` is 1 only at the final position of a terminal episode; the loss
  reads ``done_next(t) = dones[next_idx[t]]``.

Worked example (docs/algorithm.md §1, Wordle; guess ``crane``, then ``slate`` wins)::

    0:<a> 1-5:c r a n e 6:</a> 7-11:<b><y><b><b><g> 12:</s>
    13-17:s l a t e 18:</a> 19-23:<g>x5 24:</s> 25:</eod>
    action states 0..5 and 12..17; r(5) = -1, r(17) = 0;
    next(5) = 12, next(17) = 25; done(25) = 1.

(The spec's feedback ``b y b b g`` is not what ``crane`` gets against ``slate``
— that is ``b b g b g`` — but the layout, indices and rewards are the same.)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from ilql_jax.data import layout as layout_lib
from ilql_jax.data.batch import DTYPES, Batch

__all__ = [
    "ARRAY_DTYPES",
    "Episode",
    "Segment",
    "TokenizerLike",
    "Utterance",
    "agent",
    "env",
    "episode_return",
    "episode_to_arrays",
    "episode_tokens",
    "episodes_to_arrays",
    "prompt_tokens",
]

# Keys and dtypes of the arrays built by ``episode_to_arrays``: the fields of `batch.Batch`.
ARRAY_DTYPES: Mapping[str, np.dtype] = DTYPES._asdict()


class TokenizerLike(Protocol):
    """What the data pipeline needs from a tokenizer (see ``ilql_jax.tokenizers``).

    ``encode`` must add no markup of its own; the markup ids are special tokens
    so that tokenising each segment separately and inserting them equals
    tokenising the joined string (docs/algorithm.md §1).
    """

    s_id: int  # <s>
    end_s_id: int  # </s>
    a_id: int  # <a>
    end_a_id: int  # </a>
    eod_id: int  # </eod>
    pad_id: int

    def encode(self, text: str) -> list[int]: ...


# ---------------------------------------------------------------------------
# Segments and episodes
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Segment:
    """One turn of an episode (docs/algorithm.md §1).

    Agent segments carry a finite scalar reward; environment segments carry
    none (``reward is None``).
    """

    text: str
    is_agent: bool
    reward: float | None = None

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise ValueError(f"Segment.text must be a str, got {type(self.text).__name__}")
        if not isinstance(self.is_agent, (bool, np.bool_)):
            raise ValueError(
                f"Segment.is_agent must be a bool, got {type(self.is_agent).__name__}"
            )
        object.__setattr__(self, "is_agent", bool(self.is_agent))
        if not self.is_agent:
            if self.reward is not None:
                raise ValueError(
                    f"environment segment {self.text!r} must have reward None, "
                    f"got {self.reward!r} (only agent segments carry rewards)"
                )
            return
        object.__setattr__(self, "reward", _check_reward(self.reward, self.text))


def _check_reward(reward, text: str) -> float:
    """An agent reward as a finite Python float, or a ValueError naming the segment."""
    # bool is an Integral; a True/False reward is almost surely a bug upstream.
    if reward is None or isinstance(reward, (bool, np.bool_)) or not isinstance(
        reward, numbers.Real
    ):
        raise ValueError(
            f"agent segment {text!r} must carry a real-valued reward, got {reward!r}"
        )
    reward = float(reward)
    if not math.isfinite(reward):
        raise ValueError(f"agent segment {text!r} has a non-finite reward {reward!r}")
    return reward


def env(text: str) -> Segment:
    """An environment segment (no reward)."""
    return Segment(text, is_agent=False, reward=None)


def agent(text: str, reward: float) -> Segment:
    """An agent segment (an utterance) with its reward."""
    return Segment(text, is_agent=True, reward=reward)


@dataclasses.dataclass(frozen=True)
class Episode:
    """A non-empty sequence of segments and whether the episode ended there.

    ``terminal=False`` means the interaction continued beyond the logged text:
    no ``</eod>`` is appended and the last state bootstraps (docs/algorithm.md §1).
    """

    segments: tuple[Segment, ...]
    terminal: bool = True

    def __post_init__(self):
        segments = self.segments
        if isinstance(segments, (str, Segment)) or not isinstance(segments, Iterable):
            raise ValueError(
                f"Episode.segments must be a sequence of Segment, got {type(segments).__name__}"
            )
        segments = tuple(segments)
        if not segments:
            raise ValueError("empty episode: an Episode needs at least one segment")
        for i, seg in enumerate(segments):
            if not isinstance(seg, Segment):
                raise ValueError(
                    f"Episode.segments[{i}] must be a Segment, got {type(seg).__name__}"
                )
        if not isinstance(self.terminal, (bool, np.bool_)):
            raise ValueError(
                f"Episode.terminal must be a bool, got {type(self.terminal).__name__}"
            )
        object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "terminal", bool(self.terminal))

    @property
    def total_return(self) -> float:
        """Undiscounted sum of the agent rewards (what %BC ranks by)."""
        return episode_return(self)


def episode_return(episode: Episode) -> float:
    """Undiscounted return: the sum of the episode's agent rewards."""
    return float(sum(seg.reward for seg in episode.segments if seg.is_agent))


# ---------------------------------------------------------------------------
# Token layout
# ---------------------------------------------------------------------------


class Utterance(NamedTuple):
    """Token positions of one agent segment in the full (uncut) sequence.

    ``start`` is the position of its first token (of its stop token, ``</a>``,
    when the text is empty), ``end`` the position of its stop token. The states
    that emit it are ``start - 1 .. end - 1`` (docs/algorithm.md §1).
    """

    start: int
    end: int
    reward: float


def _encode(tokenizer, text: str, reserved: Mapping[int, str], kind: str) -> list[int]:
    """Content ids of one segment; a reserved id (markup, a chat template's special token) inside content would
    break alignment."""
    ids = [int(i) for i in tokenizer.encode(text)]
    for i in ids:
        if i in reserved:
            # e.g. a comment containing the literal string "</a>": it would end the
            # utterance early at decode time and shift every index here.
            what = "markup token" if kind == "markup" else "chat template's special token"
            raise ValueError(
                f"segment text {text!r} tokenises to the {what} {reserved[i]} (id {i}); "
                f"escape or strip {'markup' if kind == 'markup' else 'special-token'} strings from the data"
            )
    return ids


def _layout(
    segments: Sequence[Segment], terminal: bool, tokenizer: TokenizerLike
) -> tuple[list[int], list[Utterance]]:
    """Token ids of the segments in the tokenizer's layout, and where each agent utterance sits (docs/algorithm.md §1).

    ILQL's markup (``layout.markup_layout``): ``<a>`` opens the text when the first
    segment is the agent's (and when there are no segments yet, i.e. the agent
    speaks first), else ``<s>``; each environment segment is followed by
    ``</s>``, each agent segment by ``</a>``; a terminal episode ends with
    ``</eod>``. A chat tokenizer's layout puts its template's pieces around
    each segment instead (``ilql_jax.data.layout``).
    """
    lay = layout_lib.layout_of(tokenizer)
    reserved = lay.reserved_ids
    agent_first = not segments or segments[0].is_agent
    if agent_first and lay.agent_first is None:
        raise ValueError("this chat template cannot start with an assistant message: the first turn must be the "
                         "environment's")
    tokens = list(lay.agent_first if agent_first else lay.env_first)
    utterances: list[Utterance] = []
    for seg in segments:
        content = _encode(tokenizer, seg.text, reserved, lay.kind)
        if seg.is_agent:
            tokens.extend(lay.agent_open)
            start = len(tokens)
            tokens.extend(content)
            tokens.append(lay.stop_id)
            utterances.append(Utterance(start, len(tokens) - 1, seg.reward))
            tokens.extend(lay.agent_after)
        else:
            tokens.extend(lay.env_open)
            tokens.extend(content)
            tokens.extend(lay.env_close)
    if terminal:
        tokens.extend(lay.terminal)
    return tokens, utterances


def episode_tokens(episode: Episode, tokenizer: TokenizerLike) -> list[int]:
    """The full, uncut token ids of an episode with markup (docs/algorithm.md §1)."""
    return _layout(episode.segments, episode.terminal, tokenizer)[0]


def prompt_tokens(history: Sequence[Segment], tokenizer: TokenizerLike) -> list[int]:
    """Ids of the interaction so far, ready for the agent's next utterance.

    The same layout as training (``episode_tokens`` of a non-terminal episode),
    so decode sees the ids that training saw: e.g. ``<s>parent</s>`` for a
    Reddit prompt, ``<a>`` for a Wordle game with no guesses yet, and
    ``<a>crane</a><b><y><b><b><g></s>`` after the first guess. A chat layout
    adds the template's generation prompt (``<|im_start|>assistant\\n``).
    """
    history = tuple(history)
    for i, seg in enumerate(history):
        if not isinstance(seg, Segment):
            raise ValueError(f"history[{i}] must be a Segment, got {type(seg).__name__}")
    return _layout(history, False, tokenizer)[0] + list(layout_lib.layout_of(tokenizer).agent_open)


# ---------------------------------------------------------------------------
# Token-level MDP arrays
# ---------------------------------------------------------------------------


def episode_to_arrays(
    episode: Episode, tokenizer: TokenizerLike, max_len: int
) -> dict[str, np.ndarray]:
    """Token-level MDP arrays of one episode, each of length ``max_len`` (docs/algorithm.md §1).

    Returns the fields of `batch.Batch` by name, for the L kept tokens:
    ``attention_mask`` is 1 on them; ``action_mask`` also needs t + 1 < L;
    ``next_idx`` of the ``</a>`` transition is the state that emits the next
    agent utterance, else L - 1; ``dones`` is 1 only at position L - 1 of a
    terminal episode that was not cut.

    Truncation: the first ``max_len`` tokens are kept (L = min(len, max_len)).
    A cut episode is not terminal (no done anywhere); a transition whose next
    state was cut bootstraps from the last kept position L - 1; an utterance
    cut before its ``</a>`` gets no reward. Masks come from the positions of
    real actions only, so padding is never unmasked (the reference code's
    off-by-one on non-terminal padded sequences is not ported).
    """
    if not isinstance(episode, Episode):
        raise ValueError(f"expected an Episode, got {type(episode).__name__}")
    if isinstance(max_len, (bool, np.bool_)) or not isinstance(max_len, numbers.Integral):
        raise ValueError(f"max_len must be an int, got {max_len!r}")
    max_len = int(max_len)
    if max_len < 2:
        # One token holds no transition: a state needs a following action token.
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    for seg in episode.segments:
        if seg.is_agent:  # re-check: frozen dataclasses can still be bypassed
            _check_reward(seg.reward, seg.text)
    pad_id = layout_lib.token_id(tokenizer, "pad_id")

    full_tokens, utterances = _layout(episode.segments, episode.terminal, tokenizer)
    n_kept = min(len(full_tokens), max_len)  # L
    last = n_kept - 1
    truncated = len(full_tokens) > max_len

    tokens = np.full(max_len, pad_id, np.int32)
    tokens[:n_kept] = full_tokens[:n_kept]
    attention_mask = np.zeros(max_len, np.int32)
    attention_mask[:n_kept] = 1
    action_mask = np.zeros(max_len, np.float32)
    rewards = np.zeros(max_len, np.float32)
    # Non-action states point at themselves: always in range, and masked out.
    next_idx = np.arange(max_len, dtype=np.int32)
    dones = np.zeros(max_len, np.float32)

    for k, utt in enumerate(utterances):
        # State t emits token t + 1; only actions whose token was kept count.
        for t in range(utt.start - 1, min(utt.end, last)):
            action_mask[t] = 1.0
            next_idx[t] = t + 1
        if utt.end > last:
            continue  # </a> was cut: no reward, the last transition bootstraps at t + 1
        t_close = utt.end - 1
        rewards[t_close] = utt.reward
        # Skip the environment's reply (not discounted): land on the state that
        # emits the next utterance's first token, else on the final position;
        # clip to the last kept position when the cut removed it.
        if k + 1 < len(utterances):
            target = utterances[k + 1].start - 1
        else:
            target = len(full_tokens) - 1
        next_idx[t_close] = min(target, last)

    if episode.terminal and not truncated:
        dones[last] = 1.0

    return Batch(tokens=tokens, attention_mask=attention_mask, action_mask=action_mask, rewards=rewards,
                 next_idx=next_idx, dones=dones)._asdict()


def episodes_to_arrays(
    episodes: Iterable[Episode], tokenizer: TokenizerLike, max_len: int
) -> dict[str, np.ndarray]:
    """``episode_to_arrays`` for each episode, stacked to ``[N, max_len]``."""
    episodes = list(episodes)
    if not episodes:
        raise ValueError("episodes_to_arrays got no episodes (empty list)")
    rows = []
    for i, episode in enumerate(episodes):
        try:
            rows.append(episode_to_arrays(episode, tokenizer, max_len))
        except ValueError as e:
            raise ValueError(f"episode {i}: {e}") from e
    return {key: np.stack([row[key] for row in rows]) for key in ARRAY_DTYPES}
