"""Per-utterance ILQL's decoder: N utterances from π_β, the best by Q̄(s, u) + w · log π_β(u | s).

docs/algorithm.md §6b, docs/per_utterance.md. For each prompt (the history up
to the agent's turn, state s):

1. sample N utterances u_1..u_N from π_β alone (`sampler.sample` with π_β's
   parameters only, β = 0; temperature, top-k / top-p and the token mask as
   given), one row per candidate;
2. score each: the history, the utterance and its `</a>` go through the target
   trunk, and min(Q̄1, Q̄2) is read at the `</a>` (`utterance.q_at`), plus
   w · log π_β(u | s), the sum of π_β's (unfiltered, T = 1) log-probabilities
   of the sampled tokens;
3. keep the best-scoring candidate (the first of equal scores).

An utterance that reached `max_new_tokens` without `</a>` is scored as it will
stand in the history, i.e. with `</a>` appended (log π_β then lacks that
token's term). V(s) is the same for every candidate of a prompt, so ranking by
Q̄ is ranking by the advantage Q̄ − V.

With N = 1 this samples π_β: the same tokens as `sampler.sample` on π_β's
parameters with the same key (the one candidate is kept whatever its score).
The Visual Dialogue config of the paper used N = 4 and w = 0. `q_weight = 0`
drops Q̄ (score = w · log π_β, no value networks needed): the best of N by
likelihood, the decoding control for π_β alone (a BC state works too).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ilql_jax import sampler, utterance
from ilql_jax.models import ilql

Array = jax.Array

__all__ = ["RerankResult", "rerank", "rerank_text"]


@chex.dataclass(frozen=True)
class RerankResult:
    """The chosen utterance per prompt, and every candidate's scores.

    Attributes:
      tokens: [B, M] int32, the chosen utterance (pad after its stop token).
      lengths: [B] int32, its tokens, the stop token included.
      q: [B] float32, min(Q̄1, Q̄2)(s, u) of the chosen utterance (0 with q_weight 0).
      logp_beta: [B] float32, log π_β(u | s) of the chosen utterance.
      score: [B] float32, q + w · logp_beta.
      choice: [B] int32, which candidate was kept.
      candidate_q, candidate_logp_beta, candidate_score: [B, N] the same for every candidate.
      candidate_tokens: [B, N, M] int32; candidate_lengths: [B, N] int32.
    """

    tokens: Array
    lengths: Array
    q: Array
    logp_beta: Array
    score: Array
    choice: Array
    candidate_q: Array
    candidate_logp_beta: Array
    candidate_score: Array
    candidate_tokens: Array
    candidate_lengths: Array


def _trim_left_padding(tokens: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drops the columns every row pads (left padding), so the scoring sequence is as short as it can be."""
    real = mask.any(axis=0)
    if not real.any():
        raise ValueError("rerank: every prompt is empty; each needs at least one token")
    first = int(np.argmax(real))
    return tokens[:, first:], mask[:, first:]


@functools.partial(jax.jit, static_argnums=(0,))
def _q(model_config: ilql.ModelConfig, online, target, prompt_tokens, prompt_mask, tokens, lengths, stop_ids,
       end_a_id):
    """Q̄(s, u) of the candidates [N]: the utterance (stop cut, `</a>` written) after the prompt, read at `</a>`."""
    n, p = prompt_tokens.shape
    m = tokens.shape[1]
    last = jnp.take_along_axis(tokens, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
    stopped = (lengths > 0) & jnp.any(last[:, None] == stop_ids[None, :], axis=-1)
    content = lengths - stopped.astype(jnp.int32)                  # utterance tokens before `</a>`
    columns = jnp.arange(m + 1)
    body = jnp.concatenate([tokens, jnp.zeros((n, 1), tokens.dtype)], axis=1)
    body = jnp.where(columns[None, :] == content[:, None], end_a_id, body)
    body_mask = (columns[None, :] <= content[:, None]).astype(prompt_mask.dtype)
    seq = jnp.concatenate([prompt_tokens, jnp.where(body_mask > 0, body, 0)], axis=1)
    seq_mask = jnp.concatenate([prompt_mask, body_mask], axis=1)
    return utterance.q_at(model_config, online, target, seq, seq_mask, p + content)


def rerank(model_config: ilql.ModelConfig, online: ilql.Params, target: ilql.Params, prompt_tokens, prompt_mask,
           key: Array, *, n: int, logp_weight: float = 0.0, q_weight: float = 1.0, temperature: float = 1.0,
           stop_ids: Sequence[int], end_a_id: int, pad_id: int, sampler_config: sampler.SamplerConfig,
           allowed_ids: Sequence[int] | None = None, forbidden_ids: Sequence[int] | None = None) -> RerankResult:
    """One utterance per prompt: the best of `n` samples from π_β by
    `q_weight` · Q̄(s, u) + `logp_weight` · log π_β(u | s).

    Args:
      model_config, online, target: a per-utterance ILQL state (`train.StepConfig` mode "ilql_utt"); with
        `q_weight = 0`, any state with a π_β.
      prompt_tokens, prompt_mask: [B, P] left-padded prompts; their real tokens, the utterance and its
        `</a>` must fit the trunk's n_positions.
      key: PRNG key of the π_β samples.
      n: candidates per prompt (N).
      logp_weight: w.
      q_weight: the weight of Q̄ (1; 0 ranks by likelihood alone and reads no value network).
      temperature: π_β's sampling temperature (log π_β in the score is at T = 1 regardless).
      stop_ids: ids that end an utterance (usually `</a>` alone); end_a_id: the `</a>` each candidate is
        scored with.
      pad_id, allowed_ids, forbidden_ids: as for `sampler.sample`.
      sampler_config: mode "sample"; its max_new_tokens, top_k, top_p and buckets apply to π_β's samples.
    """
    if q_weight != 0 and not utterance.is_per_utterance(online):
        raise ValueError("rerank needs a per-utterance ILQL state (scalar Q heads; StepConfig mode 'ilql_utt'), "
                         "or q_weight 0 (likelihood alone)")
    if n < 1:
        raise ValueError(f"rerank: n must be >= 1, got {n}")
    if sampler_config.mode != "sample":
        raise ValueError(f"rerank samples its candidates from π_β: sampler_config.mode must be 'sample', "
                         f"got {sampler_config.mode!r}")
    prompt_tokens, prompt_mask = _trim_left_padding(np.asarray(prompt_tokens, np.int32),
                                                    np.asarray(prompt_mask, np.int32))
    b, p = prompt_tokens.shape
    m = sampler_config.max_new_tokens
    n_positions = model_config.trunk.n_positions
    if p + m + 1 > n_positions:
        raise ValueError(f"rerank: a prompt of {p} tokens, max_new_tokens {m} and the `</a>` a candidate is scored "
                         f"with exceed n_positions={n_positions}")
    tiled_tokens, tiled_mask = np.repeat(prompt_tokens, n, axis=0), np.repeat(prompt_mask, n, axis=0)
    policy = {"policy": ilql.policy_params(model_config, online)}
    out = sampler.sample(model_config, policy, {}, tiled_tokens, tiled_mask, key, beta=0.0, temperature=temperature,
                         stop_ids=stop_ids, pad_id=pad_id, sampler_config=sampler_config,
                         allowed_ids=allowed_ids, forbidden_ids=forbidden_ids)
    if q_weight == 0:
        q = jnp.zeros((b * n,), jnp.float32)
    else:
        q = _q(model_config, online, target, jnp.asarray(tiled_tokens), jnp.asarray(tiled_mask), out.tokens,
               out.lengths, jnp.asarray(list(stop_ids), jnp.int32), jnp.asarray(end_a_id, jnp.int32))
    q, logp = q.reshape(b, n), jnp.sum(out.logp_beta, axis=-1).reshape(b, n)
    score = q_weight * q + logp_weight * logp
    choice = jnp.argmax(score, axis=1).astype(jnp.int32)
    tokens = out.tokens.reshape(b, n, m)
    lengths = out.lengths.reshape(b, n)
    pick = lambda x: jnp.take_along_axis(x, choice.reshape((b, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]
    return RerankResult(tokens=pick(tokens), lengths=pick(lengths), q=pick(q), logp_beta=pick(logp),
                        score=pick(score), choice=choice, candidate_q=q, candidate_logp_beta=logp,
                        candidate_score=score, candidate_tokens=tokens, candidate_lengths=lengths)


def rerank_text(tokenizer, model_config: ilql.ModelConfig, online: ilql.Params, target: ilql.Params,
                prompts: Sequence, key: Array, *, n: int, logp_weight: float = 0.0, q_weight: float = 1.0,
                temperature: float = 1.0,
                sampler_config: sampler.SamplerConfig | None = None, allowed_ids: Sequence[int] | None = None,
                forbidden_ids: Sequence[int] | None = None) -> list[str]:
    """`rerank` on prompts or histories (as `sampler.generate_text` takes them); the chosen utterances' text,
    `</a>` cut."""
    sampler_config = sampler_config or sampler.SamplerConfig()
    tokens, mask = sampler.prompt_arrays(tokenizer, prompts)
    stop_ids = (tokenizer.end_a_id,)
    result = rerank(model_config, online, target, tokens, mask, key, n=n, logp_weight=logp_weight,
                    q_weight=q_weight, temperature=temperature, stop_ids=stop_ids, end_a_id=tokenizer.end_a_id,
                    pad_id=tokenizer.pad_id, sampler_config=sampler_config, allowed_ids=allowed_ids,
                    forbidden_ids=forbidden_ids)
    return sampler.decode_texts(tokenizer, result.tokens, result.lengths, stop_ids)
