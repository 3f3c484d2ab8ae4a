"""The value-guided sampler (docs/algorithm.md §5).

Per step, with KV caches for π_β, the value trunk and the target trunk::

    l  = logits_πβ / T, then top-k / top-p filtering of l        (π_β only)
    A  = min(Q̄1, Q̄2)(h_t, ·) − V(h_t), clipped from above at adv_clip
    l' = l + β · A;   a ~ softmax(l')   (or argmax, beam search, best of n)

At T = 1 with no filtering this samples π(a|h) ∝ π_β(a|h) · exp(β A(h, a)).
That is the default `order="spec"`; published ports differ, so the order is
configurable (`ORDERS`). Target Q heads read the target trunk's hidden state
(the value trunk's when `target_on_online_trunk`), V the value trunk's; π_β's
logits come from its own trunk (the value trunk's LM head when `shared_policy`).
Sampling inverts the CDF of softmax(l') at one uniform per row and step
(`inverse_cdf`; the uniforms are drawn once, before the loop).

Decoding is one jitted function: prefill the (left-padded) prompts on each
trunk, then one `lax.while_loop` over a `DecodeState` pytree holding the KV
caches, which stops when every row has emitted a stop id (`</a>`) or after
`max_new_tokens`. β, T and adv_clip are traced scalars, so a β sweep compiles
once; prompts are left-padded to a length bucket, so a compilation serves every
prompt length up to its bucket. Each generation reports the KL estimate
Σ_t (log π(a_t) − log π_β(a_t)) of §5.

A state that trained part of its trunks (models/partial.py) decodes with
whole trunks (`ilql.materialize`: frozen part plus trained part, LoRA
adapters merged into the kernels, once per call), and the frozen bottom
blocks they share run once per step, with one KV cache ("bottom"); each
trunk's own blocks run from its output (`shared_layers`).

Entry points: `sample` (arrays in, `SampleResult` out) and `generate_text`
(prompts or histories in, strings out). `init_state` / `step_state` /
`finish` are the loop's pieces, for step-by-step use (e.g. benchmarks).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ilql_jax import roles, utterance
from ilql_jax.configs import DECODE_MODES as MODES, ORDERS, SamplerConfig  # noqa: F401  (the config's home)
from ilql_jax.data import episodes
from ilql_jax.models import heads, ilql
from ilql_jax.models import partial as partial_lib
from ilql_jax.models import trunk as trunk_lib

Array = jax.Array

# Stop ids are padded to this many slots (with -1, which no token equals), so
# changing the stop set does not change shapes, hence does not recompile.
MAX_STOP_IDS = 8
# `inverse_cdf` searches the CDF in blocks of this many ids (the padded
# vocabulary is a multiple of it, so no padding is needed there).
CDF_BLOCK = 128

__all__ = [
    "MODES",
    "ORDERS",
    "SamplerConfig",
    "Knobs",
    "make_knobs",
    "token_mask",
    "inner_markup_ids",
    "DecodeState",
    "SampleResult",
    "top_k_filter",
    "top_p_filter",
    "advantage",
    "perturb_logits",
    "inverse_cdf",
    "init_state",
    "step_state",
    "finish",
    "decoding_target",
    "shared_layers",
    "bucket_length",
    "sample",
    "generate_text",
    "prompt_arrays",
    "decode_texts",
    "trace_count",
]


@chex.dataclass(frozen=True)
class Knobs:
    """Traced decoding scalars (changing them never recompiles)."""

    beta: Array         # [] float32, inference β (not β_awac)
    temperature: Array  # [] float32, > 0
    adv_clip: Array     # [] float32, +inf for no clipping
    stop_ids: Array     # [MAX_STOP_IDS] int32, padded with -1
    pad_id: Array       # [] int32, never sampled; emitted after a row stops
    allowed: Array      # [V_pad] bool (or [1]: all), the token mask: ids that may be emitted


def make_knobs(*, beta: float, temperature: float = 1.0, adv_clip: float | None = None,
               stop_ids: Sequence[int], pad_id: int, allowed: Any = None) -> Knobs:
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0 (use mode='greedy' for argmax), got {temperature}")
    stop_ids = [int(i) for i in stop_ids]
    if len(stop_ids) > MAX_STOP_IDS:
        raise ValueError(f"at most {MAX_STOP_IDS} stop ids, got {len(stop_ids)}")
    return Knobs(
        beta=jnp.asarray(beta, jnp.float32),
        temperature=jnp.asarray(temperature, jnp.float32),
        adv_clip=jnp.asarray(jnp.inf if adv_clip is None else adv_clip, jnp.float32),
        stop_ids=jnp.asarray(stop_ids + [-1] * (MAX_STOP_IDS - len(stop_ids)), jnp.int32),
        pad_id=jnp.asarray(pad_id, jnp.int32),
        allowed=jnp.ones((1,), bool) if allowed is None else jnp.asarray(allowed, bool))


def inner_markup_ids(tokenizer) -> list[int]:
    """The markup ids no utterance contains, `<s> </s> <a> </eod>` (not `</a>`, which ends it): pass them as
    `forbidden_ids` when decoded text goes back into a history, whose layout refuses markup inside a segment.
    For a chat tokenizer (one with a `layout`): its special tokens but the stop (e.g. `<|im_start|>`)."""
    layout = getattr(tokenizer, "layout", None)
    if layout is not None:
        return [i for i, _ in layout.reserved if i != layout.stop_id]
    return [tokenizer.s_id, tokenizer.end_s_id, tokenizer.a_id, tokenizer.eod_id]


def token_mask(trunk: trunk_lib.TrunkConfig, *, allowed_ids: Sequence[int] | None = None,
               forbidden_ids: Sequence[int] | None = None, stop_ids: Sequence[int] = ()) -> np.ndarray:
    """The [V_pad] bool mask of ids decoding may emit: `allowed_ids` (all when None) plus the stop
    ids, minus `forbidden_ids`. A traced argument: changing it never recompiles."""
    def checked(ids, name):
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < trunk.vocab_size]
        if bad:
            raise ValueError(f"{name} holds ids {bad[:5]} outside the vocabulary [0, {trunk.vocab_size})")
        return ids

    mask = np.zeros(trunk.padded_vocab_size, bool)
    if allowed_ids is None:
        mask[:trunk.vocab_size] = True
    else:
        mask[checked(allowed_ids, "allowed_ids") + [i for i in stop_ids if i >= 0]] = True
    if forbidden_ids is not None:
        mask[checked(forbidden_ids, "forbidden_ids")] = False
    return mask


@chex.dataclass
class DecodeState:
    """The `while_loop` carry. N = batch × width rows, M = max_new_tokens.

    The hidden states are those that choose the *next* token (the last prompt
    position after prefill, then the last fed token).
    """

    step: Array        # [] int32, tokens generated so far
    caches: dict       # trunk name ("value", "policy", "target"; "bottom": shared blocks) -> trunk.KVCache
    h_policy: Array    # [N, D] π_β trunk hidden; its LM head gives π_β's logits at the next step
    h_value: Array     # [N, D] value trunk hidden (V; Q̄ too when target_on_online_trunk)
    h_target: Array    # [N, D] target trunk hidden (Q̄)
    done: Array        # [N] bool, the row has emitted a stop id
    length: Array      # [N] int32, tokens generated, stop token included
    score: Array       # [N] float32, Σ log π(a_t) under softmax(l')
    tokens: Array      # [N, M] int32, pad after the stop
    logp: Array        # [N, M] log π(a_t) under softmax(l'); 0 after the stop
    logp_beta: Array   # [N, M] log π_β(a_t) at T = 1, unfiltered but for pad (`step_state`); 0 after the stop
    adv: Array         # [N, M] A(h_t, a_t), unclipped; 0 after the stop
    logits: Any        # [N, M, V_pad] l' per step when debugging, else None
    uniforms: Array    # [N, M] float32 U[0, 1): row n's draw at step t is `inverse_cdf` at uniforms[n, t]


@chex.dataclass(frozen=True)
class SampleResult:
    """One generation per prompt (the best beam / best of n for those modes)."""

    tokens: Array     # [B, M] int32, pad after the stop token
    lengths: Array    # [B] int32, generated tokens including the stop token
    logp: Array       # [B, M] log π(a_t) under the final perturbed distribution
    logp_beta: Array  # [B, M] log π_β(a_t) at T = 1, normalised without pad (never sampled), else unfiltered
    adv: Array        # [B, M] A(h_t, a_t) = min(Q̄1, Q̄2) − V at the chosen token, unclipped
    kl: Array         # [B] Σ_t (logp − logp_beta), the KL estimate of §5
    score: Array      # [B] Σ_t logp
    logits: Any       # [B, M, V_pad] l' per step (debug), else None


# --- the perturbed distribution (§5 steps 1-3) ------------------------------


def _scatter_last(shape, indices: Array, values: Array) -> Array:
    return jnp.put_along_axis(jnp.zeros(shape, values.dtype), indices, values, axis=-1, inplace=False)


def top_k_filter(logits: Array, k: int) -> Array:
    """Keeps exactly the k largest logits (ties broken by lower index); the rest -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    _, idx = jax.lax.top_k(logits, k)
    keep = _scatter_last(logits.shape, idx, jnp.ones(idx.shape, bool))
    return jnp.where(keep, logits, -jnp.inf)


def top_p_filter(logits: Array, p: float) -> Array:
    """Keeps the smallest set of most likely tokens whose probability sums to ≥ p."""
    if p >= 1.0:
        return logits
    order = jnp.argsort(-logits, axis=-1, stable=True)
    probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
    # A token is kept when the tokens ranked above it sum to less than p: the
    # first token always, and the one that crosses p.
    keep_sorted = jnp.cumsum(probs, axis=-1) - probs < p
    keep = _scatter_last(logits.shape, order, keep_sorted)
    return jnp.where(keep, logits, -jnp.inf)


def advantage(model_config: ilql.ModelConfig, online: ilql.Params, target: ilql.Params,
              h_value: Array, h_target: Array) -> Array:
    """A(h, ·) = min(Q̄1, Q̄2)(h_target) − V(h_value): [N, D] hiddens → [N, V_pad], -inf on padded vocab.

    The Q̄ heads in `target` may be stored or `heads.VocabMajorQ` (`decoding_target`).
    """
    if roles.is_bc(online):  # π_β alone: no advantage to add
        return jnp.zeros((h_value.shape[0], model_config.trunk.padded_vocab_size), jnp.float32)
    cfg = model_config.trunk
    q1, q2 = (heads.q_t(q, cfg, h_target) for q in roles.q_heads(target))
    v = heads.v_t(roles.v_head(online), cfg, h_value[:, None])[:, 0]
    return jnp.minimum(q1, q2) - v[:, None]


def perturb_logits(pi_logits: Array, adv: Array, valid: Array, *, beta: Array, temperature: Array,
                   adv_clip: Array, order: str = "spec", top_k: int = 0, top_p: float = 1.0) -> Array:
    """l' of docs/algorithm.md §5: π_β logits steered by β·min(A, adv_clip), filtered and tempered.

    `valid` [V_pad] marks the ids that may be sampled (real vocabulary, not
    pad); the others are -inf in l'. See `ORDERS` for `order`.
    """
    l = jnp.where(valid, pi_logits, -jnp.inf)
    # Zero (not -inf) A on invalid ids: β·(−inf) is NaN at β = 0, and l is -inf there anyway.
    shift = beta * jnp.where(valid, jnp.minimum(adv, adv_clip), 0.0)
    filt = lambda x: top_p_filter(top_k_filter(x, top_k), top_p)
    if order == "spec":
        return filt(l / temperature) + shift
    if order == "adv_first":
        return filt((l + shift) / temperature)
    if order == "temperature_last":
        return (filt(l) + shift) / temperature
    raise ValueError(f"unknown order {order!r}; expected one of {ORDERS}")


def inverse_cdf(logits: Array, u: Array) -> tuple[Array, Array]:
    """The id whose CDF interval under softmax(logits) holds u, per row (inverse transform sampling).

    With u ~ U[0, 1) this draws a ~ softmax(logits) (docs/algorithm.md §5 step 4),
    exactly up to float32 rounding of the CDF, from one uniform per row instead
    of one per vocabulary entry (the Gumbel trick of `jax.random.categorical`,
    a V-wide threefry draw per row and step). The CDF is searched in two
    levels, blocks of `CDF_BLOCK` ids and then ids within the chosen block, so
    no cumulative sum runs over the whole vocabulary: at V_pad = 50304 that is
    ~10× cheaper than one `jnp.cumsum` (XLA:CPU lowers it to a windowed
    reduction) and ~50× cheaper than the Gumbel draw. An id with zero mass
    (-inf logit: filtered, pad, padded vocabulary) has the same CDF as the id
    before it, so it is never the first one above u·Z.

    Args:
      logits: [N, V] float32, at least one finite entry per row.
      u: [N] float32 in [0, 1).

    Returns:
      (ids [N] int32, log Z [N] = logsumexp(logits)), the normaliser being a by-product.
    """
    chex.assert_rank(logits, 2)
    chex.assert_shape(u, logits.shape[:1])
    n, v = logits.shape
    logits = jnp.pad(logits, ((0, 0), (0, -v % CDF_BLOCK)), constant_values=-jnp.inf)
    top = jnp.max(logits, axis=-1)
    mass = jnp.exp(logits - top[:, None]).reshape(n, -1, CDF_BLOCK)  # unnormalised probabilities
    block_cdf = jnp.cumsum(jnp.sum(mass, axis=-1), axis=-1)          # [N, V / CDF_BLOCK]
    total = block_cdf[:, -1]
    # u·Z can round up to Z, above every CDF entry; one ulp below Z keeps the
    # draw on the last id with mass.
    target = jnp.minimum(u * total, jnp.nextafter(total, 0.0))
    block = jnp.sum(block_cdf <= target[:, None], axis=-1, dtype=jnp.int32)
    below = jnp.where(block > 0, jnp.take_along_axis(block_cdf, jnp.maximum(block - 1, 0)[:, None], axis=-1)[:, 0],
                      0.0)
    inner_cdf = jnp.cumsum(jnp.take_along_axis(mass, block[:, None, None], axis=1)[:, 0], axis=-1)
    # The block's own running sum can round differently from its step in
    # block_cdf; the same clamp keeps the draw on an id with mass.
    rest = jnp.minimum(target - below, jnp.nextafter(inner_cdf[:, -1], 0.0))
    ids = block * CDF_BLOCK + jnp.sum(inner_cdf <= rest[:, None], axis=-1, dtype=jnp.int32)
    return ids, top + jnp.log(total)


# --- the decoding loop --------------------------------------------------------


def _trunks(model_config: ilql.ModelConfig, online, target) -> dict[str, trunk_lib.Params]:
    """The trunks that decoding runs: the value trunk, and π_β's and the target's unless shared.

    A BC state decodes π_β alone.
    """
    if roles.is_bc(online):
        return {"policy": roles.policy(online)}
    trunks = {"value": roles.value_trunk(online)}
    if not model_config.shared_policy:
        trunks["policy"] = ilql.policy_params(model_config, online)
    if not model_config.target_on_online_trunk:
        trunks["target"] = roles.target_trunk(target)
    return trunks


def _heads_inputs(model_config: ilql.ModelConfig, hiddens: dict) -> tuple[Array, Array, Array]:
    """(π_β hidden, value hidden, target hidden) from each trunk's last hidden state.

    Only hidden states are carried between steps, not π_β's [N, V_pad] logits:
    the LM head runs at the start of the step that uses it, which keeps the
    `while_loop` carry small (no per-step copy of a vocabulary-wide buffer).
    """
    if "value" not in hiddens:  # π_β alone: the hiddens only feed a zero advantage
        h_policy = hiddens["policy"]
        return h_policy, h_policy, h_policy
    h_value = hiddens["value"]
    h_policy = h_value if model_config.shared_policy else hiddens["policy"]
    h_target = h_value if model_config.target_on_online_trunk else hiddens["target"]
    return h_policy, h_value, h_target


def shared_layers(model_config: ilql.ModelConfig, online) -> int:
    """How many bottom blocks decoding runs once for every trunk: a partially trained state's frozen
    bottom (`partial.bottom_layers`), when it has several trunks; else 0."""
    if not roles.has_frozen(online) or roles.is_bc(online):
        return 0
    return partial_lib.bottom_layers(model_config)


def _feed(trunks: dict, shared: int, run) -> tuple[dict, dict]:
    """(hiddens, caches) of every trunk, `run(params, **blocks)` feeding one: the `shared` bottom blocks once
    (their cache "bottom"), then each trunk's own from their output; every block in each trunk when 0."""
    hiddens, caches, blocks = {}, {}, {}
    if shared:
        x, _, caches["bottom"] = run(next(iter(trunks.values())), "bottom", stop=shared, final=False)
        blocks = dict(start=shared, residual=x)
    for name, params in trunks.items():
        hiddens[name], _, caches[name] = run(params, name, **blocks)
    return hiddens, caches


def init_state(model_config: ilql.ModelConfig, sampler_config: SamplerConfig, online, target,
               prompt_tokens: Array, prompt_mask: Array, key: Array, *, shared: int = 0) -> DecodeState:
    """Prefills every trunk on the left-padded prompts (tiled by the mode's width); the first `shared`
    blocks, identical in every trunk (`shared_layers`), once."""
    cfg, sc = model_config.trunk, sampler_config
    m, w = sc.max_new_tokens, sc.width
    # Rows b·w .. b·w + w − 1 hold prompt b's beams / samples.
    prompt_tokens = jnp.repeat(prompt_tokens, w, axis=0)
    prompt_mask = jnp.repeat(prompt_mask, w, axis=0)
    n, p = prompt_tokens.shape
    # No LM head here: only the last hidden state is kept (π_β's logits come from it in the step).
    hiddens, caches = _feed(_trunks(model_config, online, target), shared,
                            lambda params, name, **blocks: trunk_lib.prefill(params, cfg, prompt_tokens, prompt_mask,
                                                                             cache_len=p + m, with_logits=False,
                                                                             **blocks))
    hiddens = {name: hidden[:, -1] for name, hidden in hiddens.items()}
    h_policy, h_value, h_target = _heads_inputs(model_config, hiddens)
    # Beam search starts from one live beam per prompt, so the first step does
    # not pick the same token w times.
    score = jnp.where(jnp.arange(n) % w == 0, 0.0, -jnp.inf) if sc.mode == "beam" else jnp.zeros(n)
    zeros = jnp.zeros((n, m), jnp.float32)
    return DecodeState(
        step=jnp.zeros((), jnp.int32), caches=caches, h_policy=h_policy, h_value=h_value,
        h_target=h_target, done=jnp.zeros(n, bool), length=jnp.zeros(n, jnp.int32),
        score=score.astype(jnp.float32), tokens=jnp.zeros((n, m), jnp.int32), logp=zeros, logp_beta=zeros,
        adv=zeros, logits=jnp.zeros((n, m, cfg.padded_vocab_size), jnp.float32) if sc.debug else None,
        # All draws at once: one threefry call per generation, none inside the loop.
        uniforms=jax.random.uniform(key, (n, m), jnp.float32))


def _beam_choice(logp_all: Array, state: DecodeState, pad_id: Array, width: int) -> tuple[Array, Array, Array]:
    """Beam search's pick: (source row [N], token [N], new score [N]).

    A finished beam has one continuation, pad at log-prob 0, so it keeps its
    score and is never duplicated.
    """
    n, v = logp_all.shape
    ids = jnp.arange(v)
    finished = jnp.where(ids == pad_id, 0.0, -jnp.inf)
    cand = state.score[:, None] + jnp.where(state.done[:, None], finished, logp_all)
    score, flat = jax.lax.top_k(cand.reshape(n // width, width * v), width)
    rows = (jnp.arange(n // width)[:, None] * width + flat // v).reshape(n)
    return rows, (flat % v).reshape(n), score.reshape(n)


def _gather_rows(tree, rows: Array):
    # KVCache.index is a scalar shared by all rows; everything else has rows first.
    return jax.tree.map(lambda x: x[rows] if x.ndim else x, tree)


# The DecodeState fields that beam search reorders with its beams (not step, nor the
# uniforms: beam search draws nothing).
_ROW_FIELDS = ("caches", "h_policy", "h_value", "h_target", "done", "length", "score", "tokens", "logp",
               "logp_beta", "adv", "logits")


def step_state(model_config: ilql.ModelConfig, sampler_config: SamplerConfig, online, target,
               knobs: Knobs, state: DecodeState, *, shared: int = 0) -> DecodeState:
    """Chooses one token per row (§5 steps 1-4) and feeds it to every trunk (the first `shared` blocks once,
    as `init_state`)."""
    cfg, sc = model_config.trunk, sampler_config
    ids = jnp.arange(cfg.padded_vocab_size)
    valid = (ids < cfg.vocab_size) & (ids != knobs.pad_id) & knobs.allowed
    pi_logits = trunk_lib.lm_logits(ilql.policy_params(model_config, online), cfg, state.h_policy)
    adv = advantage(model_config, online, target, state.h_value, state.h_target)
    logits = perturb_logits(pi_logits, adv, valid, beta=knobs.beta, temperature=knobs.temperature,
                            adv_clip=knobs.adv_clip, order=sc.order, top_k=sc.top_k, top_p=sc.top_p)
    # Log-normalisers rather than full log-softmaxes: only the chosen token's log-prob is kept.
    if sc.mode in ("sample", "best_of_n"):
        token, logz = inverse_cdf(logits, state.uniforms[:, state.step])
    else:
        logz = jax.nn.logsumexp(logits, axis=-1)
    if sc.mode == "beam":
        rows, token, score = _beam_choice(logits - logz[:, None], state, knobs.pad_id, sc.width)
        state = state.replace(**{f: _gather_rows(getattr(state, f), rows) for f in _ROW_FIELDS})
        pi_logits, adv, logits, logz = pi_logits[rows], adv[rows], logits[rows], logz[rows]
    elif sc.mode == "greedy":
        token = jnp.argmax(logits, axis=-1)
    live = ~state.done
    # Finished rows emit pad; it is never sampled (invalid above), so π_β, whose log-prob the KL
    # estimate reads, is normalised without it too, as the official sampler does (docs/fidelity.md).
    pi_beta = jnp.where(ids == knobs.pad_id, -jnp.inf, pi_logits)
    token = jnp.where(live, token, knobs.pad_id).astype(jnp.int32)
    at = lambda x, z=0.0: jnp.where(live, jnp.take_along_axis(x, token[:, None], axis=-1)[:, 0] - z, 0.0)
    logp = at(logits, logz)
    if sc.mode != "beam":
        score = state.score + logp
    t = state.step
    done = state.done | jnp.any(token[:, None] == knobs.stop_ids[None, :], axis=-1)
    # After the last step this decode is wasted (1 of M); it keeps the loop body uniform.
    hiddens, caches = _feed(_trunks(model_config, online, target), shared,
                            lambda params, name, **blocks: trunk_lib.decode_step(params, cfg, state.caches[name], token,
                                                                                 with_logits=False, **blocks))
    h_policy, h_value, h_target = _heads_inputs(model_config, hiddens)
    return DecodeState(
        step=t + 1, caches=caches, h_policy=h_policy, h_value=h_value, h_target=h_target, done=done,
        length=state.length + live.astype(jnp.int32), score=score,
        tokens=state.tokens.at[:, t].set(token),
        logp=state.logp.at[:, t].set(logp),
        logp_beta=state.logp_beta.at[:, t].set(at(pi_logits, jax.nn.logsumexp(pi_beta, axis=-1))),
        adv=state.adv.at[:, t].set(at(adv)),
        logits=None if state.logits is None else state.logits.at[:, t].set(logits),
        uniforms=state.uniforms)


def finish(sampler_config: SamplerConfig, state: DecodeState) -> SampleResult:
    """One result per prompt: the best beam (by score), the best of n (by Σ_t A), or the only row."""
    sc = sampler_config
    result = SampleResult(
        tokens=state.tokens, lengths=state.length, logp=state.logp, logp_beta=state.logp_beta,
        adv=state.adv, kl=jnp.sum(state.logp - state.logp_beta, axis=-1), score=state.score,
        logits=state.logits)
    if sc.width == 1:
        return result
    w = sc.width
    merit = state.score if sc.mode == "beam" else jnp.sum(state.adv, axis=-1)
    best = jnp.argmax(merit.reshape(-1, w), axis=-1)
    return _gather_rows(result, jnp.arange(best.shape[0]) * w + best)


def decoding_target(model_config: ilql.ModelConfig, target: ilql.Params) -> ilql.Params:
    """The target params with the Q̄ heads as `heads.VocabMajorQ` (one transposed copy of each output
    kernel), the layout a decode step reads fastest; `step_state` takes either."""
    if not target or not roles.has_q_heads(target):  # a BC state: no Q̄ heads
        return target
    q1, q2 = (heads.vocab_major(q, model_config.trunk) for q in roles.q_heads(target))
    return {**target, roles.Q1: q1, roles.Q2: q2}


_TRACES = 0


def trace_count() -> int:
    """How many times the jitted sampler has been traced, i.e. compiled (jit cache misses)."""
    return _TRACES


@functools.partial(jax.jit, static_argnums=(0, 1))
def _sample_jit(model_config, sampler_config, online, target, prompt_tokens, prompt_mask, key, knobs):
    global _TRACES
    _TRACES += 1  # runs only while tracing
    m = sampler_config.max_new_tokens
    # Partial training: whole plain trunks (frozen part + trained part, adapters merged) once per call.
    shared = shared_layers(model_config, online)
    online, target = ilql.materialize(model_config, online, target)
    if sampler_config.vocab_major_q:
        target = decoding_target(model_config, target)
    state = init_state(model_config, sampler_config, online, target, prompt_tokens, prompt_mask, key, shared=shared)
    state = jax.lax.while_loop(
        lambda s: (s.step < m) & ~jnp.all(s.done),
        lambda s: step_state(model_config, sampler_config, online, target, knobs, s, shared=shared),
        state)
    return finish(sampler_config, state)


def bucket_length(sampler_config: SamplerConfig, trunk: trunk_lib.TrunkConfig, length: int) -> int:
    """The padded prompt length: the first bucket ≥ `length` that leaves room for M new tokens."""
    room = trunk.n_positions - sampler_config.max_new_tokens
    if length > room:
        raise ValueError(f"prompt length {length} + max_new_tokens {sampler_config.max_new_tokens} "
                         f"exceeds n_positions={trunk.n_positions}")
    fits = [b for b in sampler_config.prompt_buckets if length <= b <= room]
    return fits[0] if fits else length


def sample(model_config: ilql.ModelConfig, online: ilql.Params, target: ilql.Params,
           prompt_tokens, prompt_mask, key: Array, *, beta: float, temperature: float = 1.0,
           adv_clip: float | None = None, stop_ids: Sequence[int], pad_id: int,
           sampler_config: SamplerConfig, allowed_ids: Sequence[int] | None = None,
           forbidden_ids: Sequence[int] | None = None) -> SampleResult:
    """Generates up to `max_new_tokens` per prompt with the value-guided sampler (docs/algorithm.md §5).

    Args:
      prompt_tokens, prompt_mask: [B, P] left-padded prompts (each row needs a
        real token); they are left-padded further to the next bucket.
      key: PRNG key (unused by "greedy" and "beam").
      beta: inference β; 0 with T = 1 and no filtering samples π_β.
      temperature: T > 0.
      adv_clip: A is clipped from above at this value (None: no clipping).
      stop_ids: a row stops after emitting one of these (e.g. `</a>`).
      pad_id: never sampled; fills `tokens` after a row's stop.
      allowed_ids, forbidden_ids: the token mask, in every mode: only `allowed_ids` (and the stop
        ids) may be emitted, never `forbidden_ids` (e.g. markup inside a reply). Masked ids get
        -inf in l' before filtering, so top-k / top-p choose among the allowed ones.
    """
    if utterance.is_per_utterance(online):  # no token-level advantage to add
        raise ValueError("these parameters have scalar Q heads (per-utterance ILQL): decode them with "
                         "ilql_jax.rerank, or pass π_β alone ({'policy': ...}) to sample from it")
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    prompt_mask = jnp.asarray(prompt_mask, jnp.int32)
    chex.assert_rank(prompt_tokens, 2)
    chex.assert_equal_shape([prompt_tokens, prompt_mask])
    extra = bucket_length(sampler_config, model_config.trunk, prompt_tokens.shape[1]) - prompt_tokens.shape[1]
    prompt_tokens = jnp.pad(prompt_tokens, ((0, 0), (extra, 0)), constant_values=pad_id)
    prompt_mask = jnp.pad(prompt_mask, ((0, 0), (extra, 0)))
    allowed = token_mask(model_config.trunk, allowed_ids=allowed_ids, forbidden_ids=forbidden_ids,
                         stop_ids=stop_ids)
    knobs = make_knobs(beta=beta, temperature=temperature, adv_clip=adv_clip, stop_ids=stop_ids, pad_id=pad_id,
                       allowed=allowed)
    return _sample_jit(model_config, sampler_config, online, target, prompt_tokens, prompt_mask, key, knobs)


def _is_ids(prompt) -> bool:
    # An empty prompt is an empty history (the agent speaks first: `<a>`), not zero ids.
    return len(prompt) > 0 and all(isinstance(x, (numbers.Integral, np.integer)) for x in prompt)


def generate_text(tokenizer, model_config: ilql.ModelConfig, online: ilql.Params, target: ilql.Params,
                  prompts: Sequence, key: Array, *, sampler_config: SamplerConfig | None = None,
                  beta: float = 1.0, temperature: float = 1.0, adv_clip: float | None = None,
                  stop_ids: Sequence[int] | None = None, allowed_ids: Sequence[int] | None = None,
                  forbidden_ids: Sequence[int] | None = None) -> list[str]:
    """Text of the agent's next utterance for each prompt (docs/algorithm.md §5 step 4).

    Args:
      prompts: token id lists, or histories (sequences of `episodes.Segment`)
        laid out with `episodes.prompt_tokens`, exactly as in training.
      stop_ids: default `</a>`.
      allowed_ids, forbidden_ids: the token mask (see `sample`).

    Returns the generated text cut before the first stop id (docs/algorithm.md §5 step 4 strips it). Everything
    else the model emitted is kept: markup emitted mid-reply comes back verbatim ("b<s>a", not "ba"),
    so an evaluation sees it (forbid it with `forbidden_ids` instead).
    """
    sampler_config = sampler_config or SamplerConfig()
    tokens, mask = prompt_arrays(tokenizer, prompts)
    stop_ids = tuple(stop_ids or (tokenizer.end_a_id,))
    result = sample(model_config, online, target, tokens, mask, key, beta=beta, temperature=temperature,
                    adv_clip=adv_clip, stop_ids=stop_ids, pad_id=tokenizer.pad_id, sampler_config=sampler_config,
                    allowed_ids=allowed_ids, forbidden_ids=forbidden_ids)
    return decode_texts(tokenizer, result.tokens, result.lengths, stop_ids)


def prompt_arrays(tokenizer, prompts: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded `(tokens, mask)` [B, P] int32 of token id lists or histories (as `generate_text` takes)."""
    ids = [list(p) if _is_ids(p) else episodes.prompt_tokens(p, tokenizer) for p in prompts]
    if not ids or min(map(len, ids)) == 0:
        raise ValueError("need at least one prompt, each with at least one token")
    width = max(map(len, ids))
    tokens = np.full((len(ids), width), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(ids), width), np.int32)
    for row, prompt in enumerate(ids):
        tokens[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return tokens, mask


def decode_texts(tokenizer, tokens, lengths, stop_ids: Sequence[int]) -> list[str]:
    """The text of each generated row [B, M] (its first `lengths` tokens), a final stop id cut."""
    texts = []
    for row, length in zip(np.asarray(tokens), np.asarray(lengths)):
        row = [int(i) for i in row[:length]]
        # Only a final stop id ends a row, so it is the last one (pad is never emitted before it).
        if row and row[-1] in stop_ids:
            row = row[:-1]
        texts.append(tokenizer.decode(row))
    return texts
