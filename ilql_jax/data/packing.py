"""Turns seen through their own context windows, packed into rows of the token-level MDP (docs/algorithm.md §1).

`episodes.py` lays an episode out as one growing text: the agent acting at turn
k sees every earlier turn. Agents that see only a window of the interaction (the
current observation of a fully observed game, or the last few texts of a long
one, as LMRL-Gym's maze policies do) act on a context that is not a prefix of
the next one, so their turns cannot share one causal sequence. Here each turn is
its own *block* of tokens, ``prompt_tokens(context) + action + </a>``, and many
blocks are packed into one row: the attention mask holds a segment id per block
(1, 2, ... along the row; 0 on padding) and the trunks attend within a block only,
positions restarting at each block (`models.trunk.attention_layout`). Every block
therefore computes exactly what its context computes alone at decode time.

The arrays mean what `episodes.episode_to_arrays`' do, with these links:

* action states of a block run from its last context token (which emits the
  first action token) to the token before ``</a>``; ``next(t) = t + 1`` inside;
* the state that emits ``</a>`` carries the turn's reward, and its next state is
  the last context token of the chain's next turn: in the same row when that
  turn fits, else in a *bootstrap block* (the next turn's context alone, no
  action) that closes the row, so V is always read on a context the agent acts
  on; the chain's remaining turns continue in the next row;
* a terminal chain's last turn ends with ``</eod>`` (in its block), where
  ``dones`` is 1; a non-terminal chain ends with a bootstrap block of its
  ``next_context``.

Chains are packed greedily in order, several to a row when they fit. Worked
example (contexts ``<s>o1</s>``, ``<s>o2</s>``; one-token actions ``u``, ``d``;
rewards -1, 0; terminal; max_len 12)::

    segment  1    1    1   1    1     2    2    2   2    2    2     0
    token    <s>  o1  </s> u   </a>  <s>  o2  </s> d   </a> </eod> <pad>
    t        0    1    2   3   4     5    6    7   8   9    10    11
    action states 2, 3 and 7, 8; r(3) = -1, r(8) = 0; next(3) = 7, next(8) = 10; done(10) = 1.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterable, Sequence

import numpy as np

from ilql_jax.data.batch import Batch
from ilql_jax.data.episodes import ARRAY_DTYPES, Segment, TokenizerLike, _check_reward, _encode, prompt_tokens

__all__ = ["Chain", "Step", "chain_return", "chains_to_arrays", "step_tokens"]


@dataclasses.dataclass(frozen=True)
class Step:
    """One agent turn: what the agent saw (`context`, laid out by `episodes.prompt_tokens`), the
    utterance it produced (`action`) and the reward of that utterance."""

    context: tuple[Segment, ...]
    action: str
    reward: float

    def __post_init__(self):
        context = tuple(self.context)
        for i, seg in enumerate(context):
            if not isinstance(seg, Segment):
                raise ValueError(f"Step.context[{i}] must be a Segment, got {type(seg).__name__}")
        if not isinstance(self.action, str):
            raise ValueError(f"Step.action must be a str, got {type(self.action).__name__}")
        object.__setattr__(self, "context", context)
        object.__setattr__(self, "reward", _check_reward(self.reward, self.action))


@dataclasses.dataclass(frozen=True)
class Chain:
    """The turns of one episode in order. A terminal chain ends the episode; a non-terminal one
    bootstraps its last turn from V on `next_context` (the context the agent would act on next)."""

    steps: tuple[Step, ...]
    terminal: bool = True
    next_context: tuple[Segment, ...] | None = None

    def __post_init__(self):
        steps = tuple(self.steps)
        if not steps or not all(isinstance(s, Step) for s in steps):
            raise ValueError("Chain.steps must be a non-empty sequence of Step")
        if not self.terminal and self.next_context is None:
            raise ValueError("a non-terminal Chain needs next_context to bootstrap its last turn from")
        object.__setattr__(self, "steps", steps)
        if self.next_context is not None:
            object.__setattr__(self, "next_context", tuple(self.next_context))


def chain_return(chain: Chain) -> float:
    """Undiscounted return: the sum of the chain's rewards (what %BC ranks by)."""
    return float(sum(step.reward for step in chain.steps))


def step_tokens(step: Step, tokenizer: TokenizerLike) -> tuple[list[int], int]:
    """A turn's block without `</eod>`: context ids, action ids, `</a>`; and the context's length (ILQL's
    markup layout: packed rows are built for tokenizers without a chat template)."""
    context = prompt_tokens(step.context, tokenizer)
    markup = {int(getattr(tokenizer, n)): n for n in ("s_id", "end_s_id", "a_id", "end_a_id", "eod_id")}
    return context + _encode(tokenizer, step.action, markup, "markup") + [int(tokenizer.end_a_id)], len(context)


class _Row:
    """One row being filled: token ids, segment ids and the per-state arrays."""

    def __init__(self, max_len: int, pad_id: int):
        self.tokens = np.full(max_len, pad_id, np.int32)
        self.segments = np.zeros(max_len, np.int32)
        self.action_mask = np.zeros(max_len, np.float32)
        self.rewards = np.zeros(max_len, np.float32)
        self.next_idx = np.arange(max_len, dtype=np.int32)  # non-action states point at themselves (masked)
        self.dones = np.zeros(max_len, np.float32)
        self.length = 0
        self.n_segments = 0
        self.pending: int | None = None  # the state emitting </a> of the last turn, awaiting its next state

    def add_block(self, ids: Sequence[int]) -> int:
        """Appends a block as a new segment; returns its first position."""
        start = self.length
        self.n_segments += 1
        self.tokens[start:start + len(ids)] = ids
        self.segments[start:start + len(ids)] = self.n_segments
        self.length += len(ids)
        return start

    def link(self, next_state: int) -> None:
        if self.pending is not None:
            self.next_idx[self.pending] = next_state
            self.pending = None

    def arrays(self) -> dict[str, np.ndarray]:
        return Batch(tokens=self.tokens, attention_mask=self.segments, action_mask=self.action_mask,
                     rewards=self.rewards, next_idx=self.next_idx, dones=self.dones)._asdict()


def chains_to_arrays(chains: Iterable[Chain], tokenizer: TokenizerLike, max_len: int) -> dict[str, np.ndarray]:
    """The packed `[N, max_len]` arrays of `chains` (see the module docstring), keys as `episodes.ARRAY_DTYPES`.

    Raises ValueError naming the chain and turn when a turn's block with what
    must follow it in its row (`</eod>` or the next turn's context) exceeds
    `max_len`, or when a text tokenises to markup.
    """
    if isinstance(max_len, (bool, np.bool_)) or not isinstance(max_len, numbers.Integral) or max_len < 2:
        raise ValueError(f"max_len must be an int >= 2, got {max_len!r}")
    pad_id, eod_id = int(tokenizer.pad_id), int(tokenizer.eod_id)
    rows: list[dict[str, np.ndarray]] = []
    row = _Row(max_len, pad_id)
    n_chains = 0
    for c, chain in enumerate(chains):
        if not isinstance(chain, Chain):
            raise ValueError(f"chain {c}: expected a Chain, got {type(chain).__name__}")
        n_chains += 1
        try:
            blocks = [step_tokens(step, tokenizer) for step in chain.steps]
            # What may close a row after turn k: the next turn's context (a bootstrap block), or </eod>.
            contexts = [ids[:n] for ids, n in blocks[1:]]
            contexts.append([eod_id] if chain.terminal else prompt_tokens(chain.next_context, tokenizer))
        except ValueError as e:
            raise ValueError(f"chain {c}: {e}") from e
        for k, ((ids, n_context), step) in enumerate(zip(blocks, chain.steps)):
            last = k == len(blocks) - 1
            tail = 1 if (last and chain.terminal) else len(contexts[k])
            if len(ids) + tail > max_len:
                raise ValueError(f"chain {c}, turn {k}: its block ({len(ids)} tokens) and the {tail} that must "
                                 f"follow it in its row exceed max_len={max_len}")
            if row.length + len(ids) + tail > max_len:
                if row.pending is not None:  # room for it was kept when the previous turn went in
                    row.link(row.add_block(contexts[k - 1]) + len(contexts[k - 1]) - 1)
                rows.append(row.arrays())
                row = _Row(max_len, pad_id)
            start = row.add_block(ids)
            row.link(start + n_context - 1)
            first, close = start + n_context - 1, start + len(ids) - 2  # states emitting the first token, </a>
            row.action_mask[first:close + 1] = 1.0
            row.next_idx[first:close] = np.arange(first + 1, close + 1)
            row.rewards[close] = step.reward
            row.pending = close
            if last and chain.terminal:
                eod = row.length
                row.tokens[eod], row.segments[eod] = eod_id, row.n_segments
                row.length += 1
                row.dones[eod] = 1.0
                row.link(eod)
            elif last:
                row.link(row.add_block(contexts[k]) + len(contexts[k]) - 1)
    if n_chains == 0:
        raise ValueError("chains_to_arrays got no chains (empty list)")
    if row.length:
        rows.append(row.arrays())
    return {key: np.stack([r[key] for r in rows]).astype(dtype, copy=False) for key, dtype in ARRAY_DTYPES.items()}
