"""What value-guided decoding does to π_β: how much of β·A is a sharpening of π_β itself.

The CQL term trains each Q head as the logits of a softmax over the data's actions
(docs/algorithm.md §3), so Q, and A = min(Q̄1, Q̄2) − V with it, grows a component k·log π_β.
Decoding then samples from

    π_β · exp(β·A) = π_β^(1 + β·k) · exp(β·(A − k·log π_β)),

i.e. it lowers π_β's temperature to 1 / (1 + β·k) before the values' own
preferences act. When β·k is not small (k ≳ 1/β) the generations lose diversity
for a reason that has nothing to do with the reward. `advantage_slope` measures k;
`advantage_scale` also measures σ, the spread of the values' own preferences
A − k·log π_β among π_β's likely tokens, and `suggest_betas` turns both into a
range of β worth sweeping (docs/cli.md, "Choosing β").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ilql_jax.models import ilql
from ilql_jax.models import trunk as trunk_lib

__all__ = ["AdvantageScale", "BetaSuggestion", "advantage_scale", "advantage_slope", "distinct_n", "perplexity",
           "suggest_betas"]


@functools.partial(jax.jit, static_argnums=(0, 5))
def _fit(model_config: ilql.ModelConfig, online, target, tokens, attention_mask, top_k: int):
    """Per position: the least-squares slope k of A on log π_β over π_β's `top_k` ids, and the π_β-weighted
    standard deviation σ of what the fit leaves, A − k·log π_β (up to a constant)."""
    cfg = model_config.trunk
    online, target = ilql.materialize(model_config, online, target)  # whole trunks, as decoding reads them
    out = ilql.apply(model_config, online, target, tokens, attention_mask)
    pi_logits = out.pi_logits_t
    if pi_logits is None:  # a frozen π_β: apply() skips it, since training does not need it
        _, pi_logits = trunk_lib.forward(ilql.policy_params(model_config, online), cfg, tokens, attention_mask)
    v = cfg.vocab_size
    log_pi = jax.nn.log_softmax(pi_logits[..., :v].astype(jnp.float32), axis=-1)
    adv = (out.target_q_t - out.v_t[..., None])[..., :v].astype(jnp.float32)
    x, ids = jax.lax.top_k(log_pi, top_k)
    y = jnp.take_along_axis(adv, ids, axis=-1)
    x, y = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    k = jnp.sum(x * y, -1) / jnp.maximum(jnp.sum(x * x, -1), 1e-12)
    residual = y - k[..., None] * x
    w = jax.nn.softmax(x, axis=-1)  # π_β renormalised over its top_k: the tokens decoding actually meets
    mean = jnp.sum(w * residual, -1, keepdims=True)
    sigma = jnp.sqrt(jnp.sum(w * (residual - mean) ** 2, -1))
    return k, sigma


class AdvantageScale(NamedTuple):
    """Per selected position: `k`, the slope of A on log π_β, and `sigma`, the spread of A − k·log π_β."""

    k: np.ndarray      # [n] float32
    sigma: np.ndarray  # [n] float32


def advantage_scale(model_config: ilql.ModelConfig, online: ilql.Params, target: ilql.Params, tokens,
                    attention_mask, positions, *, top_k: int = 50) -> AdvantageScale:
    """k and σ at every position where `positions` [B, T] is true (e.g. the states that chose agent tokens).

    Fits A(h_t, a) ≈ k·log π_β(a | h_t) + c over π_β's `top_k` most likely ids a (least squares); σ is the
    π_β-weighted standard deviation of the residual, the part of A that is the values' own preference
    rather than a sharpening of π_β. Decoding at β multiplies a token's odds by exp(β·(A − k·log π_β))
    on top of π_β^(1 + β·k): β·σ ≈ 1 is where the values start to reorder π_β's likely tokens.
    """
    tokens, attention_mask, positions = (np.asarray(a) for a in (tokens, attention_mask, positions))
    chex.assert_rank([tokens, attention_mask, positions], 2)
    chex.assert_equal_shape([tokens, attention_mask, positions])
    top_k = min(top_k, model_config.trunk.vocab_size)
    k, sigma = _fit(model_config, online, target, tokens, attention_mask, top_k)
    keep = positions.astype(bool)
    return AdvantageScale(np.asarray(k)[keep], np.asarray(sigma)[keep])


def advantage_slope(model_config: ilql.ModelConfig, online: ilql.Params, target: ilql.Params, tokens, attention_mask,
                    positions, *, top_k: int = 50) -> np.ndarray:
    """The least-squares slope k of A(h_t, a) on log π_β(a | h_t) over π_β's `top_k` most likely ids, at every
    position where `positions` [B, T] is true (e.g. the states that chose a generated reply's tokens).

    Returns the slopes as a flat float array; their median summarises a model: decoding at β acts on π_β
    like a temperature of 1 / (1 + β·k) (see the module docstring).
    """
    return advantage_scale(model_config, online, target, tokens, attention_mask, positions, top_k=top_k).k


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: unique word n-grams over all word n-grams of the texts (0 when there are none)."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


# `suggest_betas` reads σ at this quantile of the agent positions: most agent tokens follow from the ones before
# (π_β puts nearly all its mass on one token, and A's spread there changes nothing); the states where π_β
# hesitates between continuations, where β acts, are the upper few percent.
SIGMA_QUANTILE = 95


class BetaSuggestion(NamedTuple):
    """What `suggest_betas` derives from an `AdvantageScale` (see its docstring)."""

    k: float             # median slope of A on log π_β
    sigma: float         # SIGMA_QUANTILE-th percentile of σ
    beta_values: float   # 1 / sigma: where the values start to reorder π_β's likely tokens
    beta_sharpen: float  # 1 / k: where decoding halves π_β's temperature (inf when k <= 0)
    grid: tuple[float, ...]  # a β sweep bracketing beta_values, 0 (π_β) first


@functools.partial(jax.jit, static_argnums=(1,))
def _next_token_logp(params, config: trunk_lib.TrunkConfig, tokens, attention_mask):
    """log p(tokens[:, t+1] | tokens[:, :t+1]) for every t, in float32 over the real (unpadded) vocabulary."""
    _, logits = trunk_lib.forward(params, config, tokens, attention_mask)
    logp = jax.nn.log_softmax(logits[..., :config.vocab_size].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]


def perplexity(params, config: trunk_lib.TrunkConfig, prompts: Sequence[Sequence[int]],
               replies: Sequence[Sequence[int]], *, pad_id: int = 0, batch_size: int = 32) -> float:
    """exp(−Σ log p(reply tokens | prompt) / number of reply tokens): the perplexity of the replies under a
    language model (e.g. the untouched pretrained model: is what was sampled still fluent text?), token-weighted
    over all replies. Batches have one shape (one compilation); empty replies add nothing."""
    if len(prompts) != len(replies):
        raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
    n_tokens = sum(map(len, replies))
    if not n_tokens:
        return float("nan")
    width = -(-max(len(p) + len(r) for p, r in zip(prompts, replies)) // 16) * 16
    total = 0.0
    for start in range(0, len(prompts), batch_size):
        tokens = np.full((batch_size, width), pad_id, np.int32)
        mask, scored = np.zeros_like(tokens), np.zeros((batch_size, width - 1), bool)
        for i, (p, r) in enumerate(zip(prompts[start:start + batch_size], replies[start:start + batch_size])):
            tokens[i, :len(p) + len(r)], mask[i, :len(p) + len(r)] = [*p, *r], 1
            scored[i, len(p) - 1:len(p) + len(r) - 1] = True  # the positions that predict the reply's tokens
        logp = np.asarray(_next_token_logp(params, config, jnp.asarray(tokens), jnp.asarray(mask)))
        total += float(logp[scored].sum())
    return math.exp(-total / n_tokens)


def _nice(x: float) -> float:
    """x rounded to the nearest power of two (β grids are read on a log scale)."""
    return float(2.0 ** round(math.log2(x)))


def suggest_betas(scale: AdvantageScale) -> BetaSuggestion:
    """A β range worth sweeping, from the advantage's scale at the agent positions of some episodes.

    Decoding samples π_β^(1 + β·k) · exp(β·(A − k·log π_β)) (module docstring). Where π_β hesitates, the
    values' own preferences have spread σ, and β·σ ≈ 1 multiplies a one-σ better token's odds by e: so
    β ≈ 1/σ is where steering starts, and by ~8/σ it has usually done what it can (the odds move by e^8).
    The grid is 0 (π_β) and powers of two at ½, 2 and 8 times 1/σ. Separately, β ≈ 1/k is where decoding
    halves π_β's temperature as well, which costs diversity whatever the values say. A heuristic for where
    to look, not an answer: `ilql-jax sweep` measures reward, KL and distinct-2 at each β.
    """
    k = float(np.median(scale.k)) if len(scale.k) else 0.0
    sigma = float(np.percentile(scale.sigma, SIGMA_QUANTILE)) if len(scale.sigma) else 0.0
    beta_values = 1.0 / sigma if sigma > 0 else math.inf
    beta_sharpen = 1.0 / k if k > 0 else math.inf
    grid = (0.0,) if not math.isfinite(beta_values) else \
        (0.0, *sorted({_nice(beta_values * f) for f in (0.5, 2.0, 8.0)}))
    return BetaSuggestion(k, sigma, beta_values, beta_sharpen, grid)
