"""Reward standardisation: one affine map r ↦ (r − shift) / scale of every agent reward, fitted on training data.

trlx z-scores the rewards of its offline data; the authors' code uses them as
given. The scale matters because the losses are not scale-free (docs/algorithm.md §3):
dividing every reward by s divides the fixed-point Q, V and A = Q − V by s,
so L_Q and L_V shrink by s² while the CQL term, a cross-entropy of Q used as
logits, does not. Standardising therefore changes the balance that α_cql sets
(CQL weighs as if α_cql were multiplied by ~s², and flattens Q's logits), and
the sampler's β·A: to steer as much as β did on the raw rewards, use β·s.

The modes (`REWARD_NORMS`):
  "none"    rewards as given.
  "scale"   r / std(r): changes no preference between actions, whatever the task.
  "zscore"  (r − mean(r)) / std(r), as trlx. The shift is harmless when every episode
            has one utterance (as in Reddit comments or a graph walk with its reward at the end;
            with γ < 1 it shifts Q by γ^k · mean for k tokens to the end, a small length
            preference), but with several utterances per episode it adds −mean/std per
            utterance, i.e. it rewards longer or shorter episodes: use "scale" there.

Statistics run over the agent segments' rewards (one per utterance). Fit on the
training episodes and apply the same `RewardNorm` to held-out ones; record it
(`dataclasses.asdict`) beside the run so returns can be mapped back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from ilql_jax.data.episodes import Episode, Segment

__all__ = ["REWARD_NORMS", "RewardNorm", "fit_reward_norm"]

REWARD_NORMS = ("none", "scale", "zscore")


@dataclasses.dataclass(frozen=True)
class RewardNorm:
    """r ↦ (r − shift) / scale on every agent reward.

    Attributes:
      mode: one of `REWARD_NORMS`, as fitted.
      shift: subtracted first (the mean for "zscore", else 0).
      scale: divided by next (the standard deviation for "scale" and "zscore", else 1).
    """

    mode: str = "none"
    shift: float = 0.0
    scale: float = 1.0

    def __post_init__(self):
        if self.mode not in REWARD_NORMS:
            raise ValueError(f"reward normalisation must be one of {REWARD_NORMS}, got {self.mode!r}")
        if not self.scale > 0:
            raise ValueError(f"RewardNorm.scale must be > 0, got {self.scale}")

    def reward(self, r: float) -> float:
        return (r - self.shift) / self.scale

    def apply(self, episodes: Iterable[Episode]) -> list[Episode]:
        """The episodes with every agent reward mapped; environment segments and terminal flags kept."""
        return [dataclasses.replace(ep, segments=tuple(
                    Segment(s.text, True, self.reward(s.reward)) if s.is_agent else s for s in ep.segments))
                for ep in episodes]


def fit_reward_norm(episodes: Sequence[Episode], mode: str) -> RewardNorm:
    """The `mode` map fitted on the agent rewards of `episodes` (see the module docstring).

    Raises ValueError for an unknown mode, for data without agent rewards, and
    (for "scale" and "zscore") for constant rewards, which carry no scale.
    """
    if mode not in REWARD_NORMS:
        raise ValueError(f"reward normalisation must be one of {REWARD_NORMS}, got {mode!r}")
    if mode == "none":
        return RewardNorm()
    rewards = np.array([s.reward for ep in episodes for s in ep.segments if s.is_agent], np.float64)
    if rewards.size == 0:
        raise ValueError("reward normalisation: the episodes hold no agent segment, so no reward to fit")
    std = float(rewards.std())
    if not std > 0:
        raise ValueError(f"reward normalisation {mode!r}: every reward is {rewards[0]:g}; a constant has no scale")
    return RewardNorm(mode, float(rewards.mean()) if mode == "zscore" else 0.0, std)
