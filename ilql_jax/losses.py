"""The ILQL objective as pure functions (docs/algorithm.md §3).

Conventions (rlax style):

* Arrays are batched ``[B, T]`` (per-position scalars) or ``[B, T, V]``
  (per-position vectors over the vocabulary). ``t`` indexes the *state*
  ``h_t``; the action taken there is ``a_t = tokens[t + 1]`` (docs/algorithm.md §1),
  exactly like LM logits.
* The losses read the action states only, packed into K slots per row
  (``pack_actions``; ``[B, K]`` and ``[B, K, V]``, suffix ``_k``); ``every_position``
  is the same layout with K = T and slot k = position k. ``m_k`` is the slots'
  action mask. Every loss is a masked mean ``Σ_k m_k ℓ_k / N`` with
  ``N = max(Σ_k m_k, 1)``. Masked slots are removed with ``jnp.where`` (not a
  multiply), and actions there are 0, so finite garbage -- or an out-of-range
  token id -- there never reaches a loss value or gradient.
* Each vocabulary-wide term takes the two reads of its logits that
  ``logsumexp_and_gather`` makes: ``logsumexp_a x[a]`` and ``x[a_t]``.
* ``v_next`` / ``done_next`` are ``V`` and ``done`` read at ``next(t)``
  (``gather_next``); environment tokens are skipped, not discounted.
* Everything is computed in float32 whatever the input dtype.
* Targets are wrapped in an explicit ``jax.lax.stop_gradient``.
* Each loss returns ``(loss, info)`` with float32 scalar entries.

The vocabulary may be padded (e.g. 50257 -> 50304 so it divides mesh axes);
``vocab_size`` is the real size and entries ``>= vocab_size`` of the last axis
are left out of every ``logsumexp``.
"""

from __future__ import annotations

import functools
import numbers
from typing import Mapping, Optional

import chex
import jax
import jax.numpy as jnp

from ilql_jax.configs import BC_NORMALISERS, LossConfig  # noqa: F401  (the config's home)
from ilql_jax.data.batch import Batch
from ilql_jax.models.layers import mask_padded_vocab

Array = chex.Array

__all__ = [
    "LossConfig",
    "PackedActions",
    "bc_loss",
    "bc_only_loss",
    "cql_loss",
    "every_position",
    "expectile_v_loss",
    "gather_actions",
    "gather_next",
    "gather_packed",
    "ilql_loss",
    "logsumexp_and_gather",
    "masked_mean",
    "next_actions",
    "pack_actions",
    "q_loss",
    "td_target",
]


# ---------------------------------------------------------------------------
# Indexing helpers (docs/algorithm.md §1).
# ---------------------------------------------------------------------------


def next_actions(tokens: Array) -> Array:
    """Actions ``a_t = tokens[t + 1]`` (docs/algorithm.md §1: state ``h_t`` emits ``x_{t+1}``).

    Args:
        tokens: int token ids, shape ``[B, T]``.

    Returns:
        ``[B, T]`` int array: ``tokens`` shifted left by one; the last slot (which
        has no next token and is never an action) is filled with 0.
    """
    chex.assert_rank(tokens, 2)
    chex.assert_type(tokens, int)
    pad = jnp.zeros_like(tokens[:, :1])
    return jnp.concatenate([tokens[:, 1:], pad], axis=1)


def gather_actions(x_t: Array, a_t: Array) -> Array:
    """Reads ``x_t[b, t, a_t[b, t]]``: Q(h_t)[a_t] or logits(h_t)[a_t].

    Args:
        x_t: per-state vectors over the (possibly padded) vocabulary, ``[B, T, V]``.
        a_t: int actions, ``[B, T]``.

    Returns:
        ``[B, T]`` array in the dtype of ``x_t``. An out-of-range action yields NaN
        (JAX's ``fill`` gather mode), which the losses mask out at ``m_t = 0`` and
        which surfaces as a NaN loss at a real action (a data bug).
    """
    chex.assert_rank([x_t, a_t], [3, 2])
    chex.assert_type(a_t, int)
    chex.assert_equal_shape_prefix([x_t, a_t], 2)
    return jnp.take_along_axis(x_t, a_t[..., None], axis=-1)[..., 0]


def gather_next(v_t: Array, next_idx: Array) -> Array:
    """Reads ``v_t[b, next_idx[b, t]]``: a per-state scalar at ``next(t)``.

    Used for ``V(h_next(t))`` and ``done_next(t) = dones[next(t)]``.

    Args:
        v_t: per-state scalars, ``[B, T]``.
        next_idx: int index of the next state, ``[B, T]`` (docs/algorithm.md §1).

    Returns:
        ``[B, T]`` array in the dtype of ``v_t``.
    """
    chex.assert_rank([v_t, next_idx], 2)
    chex.assert_type(next_idx, int)
    chex.assert_equal_shape([v_t, next_idx])
    return jnp.take_along_axis(v_t, next_idx, axis=1)


def masked_mean(x_t: Array, m_t: Array, n: Optional[Array] = None) -> Array:
    """``Σ_t m_t x_t / max(N, 1)`` in float32, ``N = Σ_t m_t`` unless given; ``x_t`` at ``m_t = 0`` is ignored."""
    chex.assert_equal_shape([x_t, m_t])
    m_t = m_t.astype(jnp.float32)
    x_t = jnp.where(m_t > 0, x_t.astype(jnp.float32), 0.0)
    return jnp.sum(m_t * x_t) / (_num_actions(m_t) if n is None else jnp.maximum(n, 1.0))


def non_pad_targets(attention_mask: Array) -> Array:
    """``Σ_t attention_mask[t + 1]``, the tokens a causal LM predicts in a batch: the official code's
    BC/AWAC normaliser (``bc_normaliser="non_pad"``, docs/fidelity.md), float32 ``[]``."""
    chex.assert_rank(attention_mask, 2)
    return jnp.sum(attention_mask[:, 1:].astype(jnp.float32))


def _num_actions(m_t: Array) -> Array:
    """N = max(Σ m_t, 1) (docs/algorithm.md §3)."""
    return jnp.maximum(jnp.sum(m_t.astype(jnp.float32)), 1.0)


def _safe_actions(a_t: Array, m_t: Array) -> Array:
    """Replaces actions at ``m_t = 0`` by 0, so an out-of-range id at a masked
    position cannot produce a NaN whose (masked) gradient would still be NaN."""
    return jnp.where(m_t > 0, a_t, jnp.zeros_like(a_t))


# ---------------------------------------------------------------------------
# Action slots: where the losses read.
#
# Every term of docs/algorithm.md §3 reads the vocabulary-sized outputs at action
# states only (m_t = 1), and the target Q̄ at one entry per action. The train
# step packs each row's action positions into K static slots (`pack_actions`),
# so the model runs the Q heads and π_β's LM head on [B, K] positions instead
# of [B, T] (see `models/ilql.apply` with the slots), and the losses take those
# packed tensors. K is a static capacity per row: shapes stay static (one
# compilation), rows keep their batch index (so a batch sharded over rows stays
# sharded the same way), and a row with fewer actions fills its tail slots with
# masked padding. A row with more than K actions cannot be represented: the
# loss is then NaN (see `ilql_loss`), never silently computed on a subset.
# ---------------------------------------------------------------------------


@chex.dataclass(frozen=True)
class PackedActions:
    """A batch's action states packed into K slots per row (docs/algorithm.md §1).

    Slot k of row b holds the k-th action state of row b in order; slots past
    the row's action count hold padding (``m_k = 0``).

    Attributes:
        idx: ``[B, K]`` int32 state position t of each slot (some non-action
            position in padding slots; always inside the row).
        m_k: ``[B, K]`` float32 action mask of the slots.
        a_k: ``[B, K]`` int32 action ``a_t = tokens[t + 1]`` (0 in padding slots).
        r_k: ``[B, K]`` float32 reward ``r_t``.
        next_k: ``[B, K]`` int32 ``next(t)``.
        done_next_k: ``[B, K]`` float32 ``done(next(t))``.
        overflow: ``[]`` bool, some row has more than K actions.
        n_non_pad: ``[]`` float32 ``non_pad_targets`` of the batch (the official BC normaliser).
    """

    idx: Array
    m_k: Array
    a_k: Array
    r_k: Array
    next_k: Array
    done_next_k: Array
    overflow: Array
    n_non_pad: Array


def gather_packed(x_t: Array, idx: Array) -> Array:
    """Reads ``x_t`` at packed positions along axis 1: ``[B, T, ...]`` → ``[B, K, ...]``."""
    chex.assert_rank(idx, 2)
    chex.assert_type(idx, int)
    index = idx.reshape(idx.shape + (1,) * (x_t.ndim - 2))
    return jnp.take_along_axis(x_t, index, axis=1)


def pack_actions(batch: Batch | Mapping[str, Array], capacity: Optional[int] = None) -> PackedActions:
    """Packs the action states of a ``[B, T]`` batch into ``K = min(capacity, T)`` slots per row.

    Args:
        batch: a ``[B, T]`` `Batch` (or a mapping of its fields).
        capacity: slots per row; ``None`` means T (always enough).

    Returns:
        ``PackedActions``. Positions are kept in order (a stable sort of each
        row's mask), so slot k of row b is the k-th action of row b.
    """
    batch = Batch.of(batch)
    tokens, m_t, r_t, next_idx, dones = batch.tokens, batch.action_mask, batch.rewards, batch.next_idx, batch.dones
    chex.assert_rank(tokens, 2)
    chex.assert_equal_shape([tokens, m_t, r_t, next_idx, dones])
    t = tokens.shape[1]
    if capacity is not None and capacity < 1:
        raise ValueError(f"pack_actions: capacity must be >= 1 or None, got {capacity}")
    k = t if capacity is None else min(int(capacity), t)
    real = m_t > 0
    # Action positions first, in order; the remaining (non-action) positions fill the tail.
    idx = jnp.argsort(jnp.where(real, 0, 1), axis=1, stable=True)[:, :k].astype(jnp.int32)
    count = jnp.sum(real, axis=1)
    m_k = (jnp.arange(k)[None, :] < count[:, None]).astype(jnp.float32)
    a_k = _safe_actions(gather_packed(next_actions(tokens), idx), m_k)
    next_k = gather_packed(next_idx, idx)
    return PackedActions(
        idx=idx,
        m_k=m_k,
        a_k=a_k,
        r_k=gather_packed(r_t, idx).astype(jnp.float32),
        next_k=next_k,
        done_next_k=jnp.take_along_axis(dones, next_k, axis=1).astype(jnp.float32),
        overflow=jnp.any(count > k),
        n_non_pad=non_pad_targets(batch.attention_mask),
    )


def every_position(batch: Batch | Mapping[str, Array]) -> PackedActions:
    """The slots of ``pack_actions`` with K = T and slot k = position k, so that
    ``[B, T]``-shaped outputs (every head at every position, ``models/ilql.apply``)
    are the losses' slot tensors as they are.

    Args:
        batch: as for ``pack_actions``.
    """
    batch = Batch.of(batch)
    tokens, m_t, next_idx = batch.tokens, batch.action_mask, batch.next_idx
    chex.assert_rank(tokens, 2)
    chex.assert_equal_shape([tokens, m_t, next_idx])
    b, t = tokens.shape
    return PackedActions(
        idx=jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
        m_k=m_t.astype(jnp.float32),
        a_k=_safe_actions(next_actions(tokens), m_t),
        r_k=batch.rewards.astype(jnp.float32),
        next_k=next_idx,
        done_next_k=gather_next(batch.dones, next_idx).astype(jnp.float32),
        overflow=jnp.zeros((), bool),
        n_non_pad=non_pad_targets(batch.attention_mask),
    )


# ---------------------------------------------------------------------------
# The two reads of a vocabulary-wide output.
# ---------------------------------------------------------------------------


def _masked_f32(x: Array, vocab_size: Optional[int]) -> Array:
    """``x`` in float32 with its padded vocabulary tail -inf (``None``: nothing is padded)."""
    if vocab_size is None:
        return x.astype(jnp.float32)
    if not 0 < vocab_size <= x.shape[-1]:
        raise ValueError(
            f"vocab_size={vocab_size} must be in (0, {x.shape[-1]}] (last axis of the "
            "Q / logits tensor)."
        )
    return mask_padded_vocab(x.astype(jnp.float32), vocab_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def logsumexp_and_gather(x_t: Array, a_t: Array, vocab_size: Optional[int] = None) -> tuple[Array, Array]:
    """``(logsumexp_a x_t[a], x_t[a_t])`` over the real vocabulary, float32 ``[...]`` each.

    The two reads every vocabulary-wide loss term makes of its logits: CQL's
    and BC's ``logsumexp − x[a_t]`` (docs/algorithm.md §3) and L_Q's ``Q(h_t)[a_t]``.
    Fused: the padded vocabulary tail (entries ``>= vocab_size``) is masked
    inside the reductions rather than in a masked copy, and the backward pass
    forms the logits' cotangent ``g_lse · softmax(x) + g_a · onehot(a_t)`` in one
    elementwise pass, so beyond ``x_t`` itself (the matmul's output, kept for
    the backward) the only vocabulary-sized tensor is that cotangent. Padded
    entries get a zero cotangent.

    Args:
        x_t: ``[..., V_pad]`` logits (any float dtype; the padded tail may hold anything finite).
        a_t: ``[...]`` int actions in ``[0, vocab_size)``; out of range gives NaN, as ``gather_actions``.
        vocab_size: real vocabulary size (``None``: no padding).
    """
    return _logsumexp_and_gather_fwd(x_t, a_t, vocab_size)[0]


def _logsumexp_and_gather_fwd(x_t, a_t, vocab_size):
    chex.assert_equal_shape_prefix([x_t, a_t], a_t.ndim)
    chex.assert_rank(x_t, a_t.ndim + 1)
    chex.assert_type(a_t, int)
    lse = jax.nn.logsumexp(_masked_f32(x_t, vocab_size), axis=-1)
    x_a = jnp.take_along_axis(x_t, a_t[..., None], axis=-1)[..., 0].astype(jnp.float32)
    return (lse, x_a), (x_t, a_t, lse)


def _logsumexp_and_gather_bwd(vocab_size, residuals, cotangents):
    x_t, a_t, lse = residuals
    g_lse, g_a = cotangents
    probs = jnp.exp(_masked_f32(x_t, vocab_size) - lse[..., None])
    onehot = jnp.arange(x_t.shape[-1]) == a_t[..., None]
    dx = g_lse[..., None] * probs + jnp.where(onehot, g_a[..., None], 0.0)
    return dx.astype(x_t.dtype), None


logsumexp_and_gather.defvjp(_logsumexp_and_gather_fwd, _logsumexp_and_gather_bwd)


# ---------------------------------------------------------------------------
# Loss terms (docs/algorithm.md §3).
# ---------------------------------------------------------------------------


def td_target(
    r_t: Array, v_next: Array, done_next: Array, gamma: float
) -> Array:
    """One-step TD target (docs/algorithm.md §3):

        y_t = r_t + γ (1 - done_next(t)) · sg(V(h_next(t)))

    ``v_next`` is the *online* V read at ``next(t)`` (there is no target V);
    it is stop-gradiented here. A sequence cut by ``max_len`` has
    ``done_next = 0`` and bootstraps from V of its last kept state.

    Args:
        r_t: rewards, ``[B, T]``.
        v_next: ``V(h_next(t))``, ``[B, T]``.
        done_next: ``done(next(t))`` in {0, 1}, ``[B, T]``.
        gamma: discount γ.

    Returns:
        float32 ``[B, T]`` targets carrying no gradient.
    """
    chex.assert_rank([r_t, v_next, done_next], 2)
    chex.assert_equal_shape([r_t, v_next, done_next])
    r_t = r_t.astype(jnp.float32)
    v_next = jax.lax.stop_gradient(v_next.astype(jnp.float32))
    not_done = 1.0 - done_next.astype(jnp.float32)
    return r_t + gamma * not_done * v_next


def q_loss(
    q1_a: Array, q2_a: Array, y_t: Array, m_t: Array
) -> tuple[Array, dict[str, Array]]:
    """Double-Q regression to the TD target (docs/algorithm.md §3):

        L_Q = Σ_t m_t [(y_t - Q1(h_t)[a_t])² + (y_t - Q2(h_t)[a_t])²] / N

    This is the *full* squared error (not ``0.5 (x - y)²``) summed over both
    heads, as in the authors' code, so α_cql values from their configs
    transfer 1:1. ``y_t`` is stop-gradiented.

    Args:
        q1_a: online Q1 gathered at ``a_t``, ``[B, T]``.
        q2_a: online Q2 gathered at ``a_t``, ``[B, T]``.
        y_t: TD targets (``td_target``), ``[B, T]``.
        m_t: action mask, ``[B, T]``.

    Returns:
        ``(loss, info)`` with info keys ``q_loss``, ``q_mean`` (masked mean of
        Q1 and Q2 at ``a_t``) and ``y_mean`` (masked mean TD target).
    """
    chex.assert_rank([q1_a, q2_a, y_t, m_t], 2)
    chex.assert_equal_shape([q1_a, q2_a, y_t, m_t])
    q1_a = q1_a.astype(jnp.float32)
    q2_a = q2_a.astype(jnp.float32)
    y_t = jax.lax.stop_gradient(y_t.astype(jnp.float32))
    per_t = jnp.square(y_t - q1_a) + jnp.square(y_t - q2_a)
    loss = masked_mean(per_t, m_t)
    info = {
        "q_loss": loss,
        "q_mean": masked_mean(0.5 * (q1_a + q2_a), m_t),
        "y_mean": masked_mean(y_t, m_t),
    }
    return loss, info


def expectile_v_loss(
    q_target_a: Array, v_t: Array, m_t: Array, tau: float
) -> tuple[Array, dict[str, Array]]:
    """Expectile regression of V towards the target Q (docs/algorithm.md §3):

        u_t = sg(Q̄(h_t)[a_t]) - V(h_t)
        L_V = Σ_t m_t |τ - 1(u_t < 0)| · u_t² / N

    The weight is τ when ``u ≥ 0`` (V below Q̄) and 1 - τ when ``u < 0``, so
    τ > 0.5 pushes V towards the upper expectile of Q̄ over in-data actions.

    Args:
        q_target_a: ``min(Q̄1, Q̄2)`` gathered at ``a_t``, ``[B, T]``;
            stop-gradiented here.
        v_t: online ``V(h_t)``, ``[B, T]``.
        m_t: action mask, ``[B, T]``.
        tau: expectile τ in (0, 1).

    Returns:
        ``(loss, info)`` with info keys ``v_loss``, ``v_mean`` (masked),
        ``adv_mean`` (masked mean of ``u``) and ``adv_pos_frac`` (fraction of
        actions with ``u > 0``).
    """
    chex.assert_rank([q_target_a, v_t, m_t], 2)
    chex.assert_equal_shape([q_target_a, v_t, m_t])
    q_target_a = jax.lax.stop_gradient(q_target_a.astype(jnp.float32))
    v_t = v_t.astype(jnp.float32)
    u_t = q_target_a - v_t
    weight = jnp.abs(tau - (u_t < 0).astype(jnp.float32))
    loss = masked_mean(weight * jnp.square(u_t), m_t)
    info = {
        "v_loss": loss,
        "v_mean": masked_mean(v_t, m_t),
        "adv_mean": masked_mean(u_t, m_t),
        "adv_pos_frac": masked_mean((u_t > 0).astype(jnp.float32), m_t),
    }
    return loss, info


def cql_loss(
    lse1: Array, q1_a: Array, lse2: Array, q2_a: Array, m_t: Array
) -> tuple[Array, dict[str, Array]]:
    """CQL regulariser on both online Q heads (docs/algorithm.md §3):

        L_CQL = Σ_t m_t Σ_i [logsumexp_a Q_i(h_t)[a] - Q_i(h_t)[a_t]] / N

    i.e. the cross-entropy of ``Q_i(h_t, ·)`` used as logits against the data
    action, summed over the two heads, from each head's two reads
    (``logsumexp_and_gather``, whose logsumexp runs over the real vocabulary only).

    Args:
        lse1: ``logsumexp_a Q1(h_t)[a]``, ``[B, T]``.
        q1_a: ``Q1(h_t)[a_t]``, ``[B, T]``.
        lse2: ``logsumexp_a Q2(h_t)[a]``, ``[B, T]``.
        q2_a: ``Q2(h_t)[a_t]``, ``[B, T]``.
        m_t: action mask, ``[B, T]``.

    Returns:
        ``(loss, info)`` with info keys ``cql_loss``, ``cql_q1``, ``cql_q2``
        (the per-head terms).
    """
    chex.assert_rank([lse1, q1_a, lse2, q2_a, m_t], 2)
    chex.assert_equal_shape([lse1, q1_a, lse2, q2_a, m_t])
    cql_q1 = masked_mean(lse1.astype(jnp.float32) - q1_a.astype(jnp.float32), m_t)
    cql_q2 = masked_mean(lse2.astype(jnp.float32) - q2_a.astype(jnp.float32), m_t)
    loss = cql_q1 + cql_q2
    return loss, {"cql_loss": loss, "cql_q1": cql_q1, "cql_q2": cql_q2}


def bc_loss(
    lse_t: Array,
    logit_a: Array,
    m_t: Array,
    adv_t: Optional[Array] = None,
    beta_awac: float = 0.0,
    n: Optional[Array] = None,
) -> tuple[Array, dict[str, Array]]:
    """Behaviour cloning of π_β on agent tokens (docs/algorithm.md §3, ``L_BC``):

        L_BC = Σ_t m_t w_t [logsumexp_a l_t[a] - l_t[a_t]] / N,
        w_t  = exp(β_awac · sg(adv_t))     (AWAC; w_t = 1 when adv_t is None)

    from π_β's logits' two reads (``logsumexp_and_gather``, over the real
    vocabulary only). N is the number of agent tokens unless ``n`` is given
    (``non_pad_targets`` for the official normaliser, ``LossConfig.bc_normaliser``).

    With ``β_awac = 0`` (every published config) this is the plain token NLL.
    The weighted sum is normalised by N (not by Σ w), and weights are not
    clipped. ``β_awac`` is the *training* AWAC temperature, distinct from the
    sampler's β.

    Args:
        lse_t: ``logsumexp_a l_t[a]`` of π_β's logits, ``[B, T]``.
        logit_a: ``l_t[a_t]``, ``[B, T]``.
        m_t: action mask, ``[B, T]``.
        adv_t: advantages ``Q̄(h_t)[a_t] - V(h_t)``, ``[B, T]``; stop-gradiented.
            Required when ``beta_awac != 0``.
        beta_awac: AWAC temperature β_awac.
        n: the normaliser N, ``[]`` (None: ``Σ_t m_t``).

    Returns:
        ``(loss, info)`` with info keys ``bc_loss`` (weighted, over N) and
        ``bc_nll`` (unweighted NLL per agent token).
    """
    chex.assert_rank([lse_t, logit_a, m_t], 2)
    chex.assert_equal_shape([lse_t, logit_a, m_t])
    nll_t = lse_t.astype(jnp.float32) - logit_a.astype(jnp.float32)
    nll = masked_mean(nll_t, m_t)
    if adv_t is None:
        if isinstance(beta_awac, numbers.Number) and beta_awac != 0:
            raise ValueError("bc_loss: beta_awac != 0 needs adv_t.")
        loss = nll if n is None else masked_mean(nll_t, m_t, n)
    else:
        chex.assert_equal_shape([adv_t, m_t])
        adv_t = jax.lax.stop_gradient(adv_t.astype(jnp.float32))
        w_t = jnp.exp(beta_awac * adv_t)
        loss = masked_mean(w_t * nll_t, m_t, n)
    return loss, {"bc_loss": loss, "bc_nll": nll}


# ---------------------------------------------------------------------------
# Composition.
# ---------------------------------------------------------------------------


def _poison_if(loss: Array, overflow: Array) -> Array:
    """NaN loss, and NaN gradients, when some row's actions did not fit the packing capacity."""
    return loss * jnp.where(overflow, jnp.nan, 1.0)


def _bc_normaliser(packed: PackedActions, normaliser: str) -> Optional[Array]:
    """L_BC's N for ``LossConfig.bc_normaliser``: None (the agent tokens) or ``non_pad_targets``."""
    return packed.n_non_pad if normaliser == "non_pad" else None


def ilql_loss(
    q1_k: Array,
    q2_k: Array,
    target_q_a: Array,
    v_k: Array,
    v_next_k: Array,
    pi_logits_k: Optional[Array],
    packed: PackedActions,
    cfg: LossConfig,
) -> tuple[Array, dict[str, Array]]:
    """The ILQL objective (docs/algorithm.md §3), read at the action slots:

        L = L_Q + L_V + α_cql · L_CQL + L_BC

    with ``a_t = tokens[t + 1]``, ``Q̄ = sg(min(Q̄1, Q̄2))[a_t]`` from the target
    heads, ``y_t = r_t + γ (1 - done_next) sg(V(h_next(t)))`` from the *online*
    V (no target V). The advantage reported in the metrics (and used for AWAC
    weights) is ``Q̄[a_t] - V(h_t)``. No gradient reaches the target or ``V``
    through ``y_t``; L_BC reaches only ``pi_logits_k``. Each vocabulary-wide
    output is read twice, fused (``logsumexp_and_gather``): L_Q and L_CQL share
    the online heads' reads.

    Args:
        q1_k: online Q1 at the slots, ``[B, K, V_pad]`` (padded tail as computed).
        q2_k: online Q2, same shape.
        target_q_a: ``min(Q̄1, Q̄2)(h_t)[a_t]`` at the slots, ``[B, K]``; stop-gradiented here.
        v_k: online ``V(h_t)`` at the slots, ``[B, K]``.
        v_next_k: online ``V(h_next(t))``, ``[B, K]``; stop-gradiented (by ``td_target``).
        pi_logits_k: π_β logits at the slots ``[B, K, V_pad]``, or ``None`` (value-only,
            e.g. a frozen π_β; then ``bc_loss`` and ``bc_nll`` are reported as 0).
        packed: the slots' actions, rewards, dones and mask: ``pack_actions`` (what
            the train step runs) or ``every_position``.
        cfg: a ``LossConfig``.

    Returns:
        ``(loss, metrics)``; metrics are float32 scalars: ``loss``, ``q_loss``,
        ``v_loss``, ``cql_loss``, ``bc_loss``, ``q_mean``, ``v_mean``,
        ``adv_mean``, ``adv_pos_frac``, ``bc_nll``, ``n_actions``, plus
        ``y_mean``, ``target_q_mean``, ``cql_q1``, ``cql_q2``. When
        ``packed.overflow`` (a row had more actions than slots) the loss, and
        so every gradient, is NaN.
    """
    m_k, a_k = packed.m_k, packed.a_k
    chex.assert_rank([q1_k, q2_k, target_q_a, v_k, v_next_k], [3, 3, 2, 2, 2])
    chex.assert_equal_shape([q1_k, q2_k])
    chex.assert_equal_shape([target_q_a, v_k, v_next_k, m_k, a_k, packed.r_k, packed.done_next_k])
    chex.assert_equal_shape_prefix([q1_k, m_k], 2)

    y_k = td_target(packed.r_k, v_next_k, packed.done_next_k, cfg.gamma)

    lse1, q1_a = logsumexp_and_gather(q1_k, a_k, cfg.vocab_size)
    lse2, q2_a = logsumexp_and_gather(q2_k, a_k, cfg.vocab_size)
    l_q, q_info = q_loss(q1_a, q2_a, y_k, m_k)

    q_target_a = jax.lax.stop_gradient(target_q_a.astype(jnp.float32))
    l_v, v_info = expectile_v_loss(q_target_a, v_k, m_k, cfg.tau)

    l_cql, cql_info = cql_loss(lse1, q1_a, lse2, q2_a, m_k)

    if pi_logits_k is None:
        l_bc = jnp.zeros((), jnp.float32)
        bc_info = {"bc_loss": l_bc, "bc_nll": l_bc}
    else:
        chex.assert_equal_shape_prefix([pi_logits_k, m_k], 2)
        lse_pi, pi_a = logsumexp_and_gather(pi_logits_k, a_k, cfg.vocab_size)
        adv_k = q_target_a - v_k.astype(jnp.float32) if cfg.beta_awac != 0 else None
        l_bc, bc_info = bc_loss(lse_pi, pi_a, m_k, adv_k, cfg.beta_awac, _bc_normaliser(packed, cfg.bc_normaliser))

    loss = _poison_if(l_q + l_v + cfg.alpha_cql * l_cql + l_bc, packed.overflow)
    metrics = {
        "loss": loss,
        **q_info,
        **v_info,
        **cql_info,
        **bc_info,
        "target_q_mean": masked_mean(q_target_a, m_k),
        "n_actions": jnp.sum(m_k),
    }
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    return loss, metrics


def bc_only_loss(
    pi_logits_k: Array, packed: PackedActions, vocab_size: Optional[int] = None, normaliser: str = "agent"
) -> tuple[Array, dict[str, Array]]:
    """Loss of the BC baseline: ``ilql_loss``'s L_BC alone, π_β's token NLL on agent tokens
    (docs/algorithm.md §3, §6).

    Args:
        pi_logits_k: π_β logits at the slots, ``[B, K, V_pad]``.
        packed: the slots, as for ``ilql_loss``.
        vocab_size: real vocabulary size (``None``: no padding).
        normaliser: ``LossConfig.bc_normaliser``.

    Returns:
        ``(loss, metrics)`` with float32 scalars ``loss``, ``bc_loss``,
        ``bc_nll`` and ``n_actions``; NaN loss when ``packed.overflow``.
    """
    chex.assert_rank(pi_logits_k, 3)
    chex.assert_equal_shape_prefix([pi_logits_k, packed.m_k], 2)
    lse, x_a = logsumexp_and_gather(pi_logits_k, packed.a_k, vocab_size)
    l_bc, info = bc_loss(lse, x_a, packed.m_k, n=_bc_normaliser(packed, normaliser))
    loss = _poison_if(l_bc, packed.overflow)
    return loss, {"loss": loss, **info, "n_actions": jnp.sum(packed.m_k)}
