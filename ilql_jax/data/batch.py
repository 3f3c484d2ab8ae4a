"""The batch: the token-level MDP arrays the train step reads (docs/algorithm.md §1, §3), declared once.

`Batch` is a NamedTuple, so it is a JAX pytree (jit, `jax.tree`, the batch
sharding apply to it) while this module, like the rest of `data/`, needs only
numpy. Every field is ``[B, T]`` (or ``[N, T]`` for a whole data set): B rows of
T = `max_len` positions. The data pipeline (`episodes.episodes_to_arrays`,
`packing.chains_to_arrays`) writes these fields as a plain ``name -> array``
dict, the format users build and edit; `Batch.of` reads either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

import numpy as np

if TYPE_CHECKING:  # annotations only: data/ runs without JAX
    import jax

Array: TypeAlias = "jax.Array | np.ndarray"

__all__ = ["Batch", "DTYPES"]


class Batch(NamedTuple):
    """One batch of rows; every field is ``[B, T]``, in its `DTYPES` dtype.

    Position ``t`` of a row is state ``t``: its hidden state predicts ``x_{t+1}``, the action taken there.

    Fields:
      tokens: x_t, padded with the tokenizer's pad id.
      attention_mask: 1 on tokens, 0 on padding; packed rows hold each block's id 1, 2, ... instead.
      action_mask: m_t = 1 iff x_{t+1} is an agent token (``</a>`` included).
      rewards: r_t, the utterance's reward at the state that emits its ``</a>``, 0 elsewhere.
      next_idx: next(t), t + 1 inside an utterance; after ``</a>``, the state that emits the next agent
        utterance (the environment's reply is skipped); t itself where m_t = 0 (masked).
      dones: 1 at the final state of a terminal episode; the loss reads ``done_next(t) = dones[next(t)]``.
    """

    tokens: Array
    attention_mask: Array
    action_mask: Array
    rewards: Array
    next_idx: Array
    dones: Array

    @classmethod
    def of(cls, batch: Batch | Mapping[str, Any]) -> Batch:
        """`batch` as a `Batch`: itself, or the fields of a mapping (other keys ignored)."""
        if isinstance(batch, cls):
            return batch
        missing = [f for f in cls._fields if f not in batch]
        if missing:
            raise KeyError(f"batch has no field {missing[0]!r}; has {sorted(batch)}")
        return cls(**{f: batch[f] for f in cls._fields})


# The canonical dtype of each field (ids int32; masks, rewards and dones float32).
DTYPES = Batch(tokens=np.dtype(np.int32), attention_mask=np.dtype(np.int32), action_mask=np.dtype(np.float32),
               rewards=np.dtype(np.float32), next_idx=np.dtype(np.int32), dones=np.dtype(np.float32))
