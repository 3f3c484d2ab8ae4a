"""Per-utterance ILQL: one action per agent utterance (docs/algorithm.md §6b, docs/per_utterance.md).

The authors' utterance-level IQL (`PerUtteranceIQL` in their code), read off
the same token arrays as token-level ILQL (`data/episodes.py`). In those
arrays utterance k is the run of action states from the state before it to
the state that emits its `</a>`; per-utterance ILQL takes the run as one
transition:

    s_k     the state before the utterance: the one that emits its first token
            (`<a>` at the start, the `</s>` closing the environment's turn, or the previous `</a>`)
    u_k     the whole utterance, `</a>` included
    Q(s_k, u_k)   a scalar, read at the hidden state of u_k's `</a>` (the trunk has read all of u_k)
    r_k     the utterance's reward (r_t of the transition that emits `</a>`)
    s_{k+1} next(t) of that transition: the state before the next agent utterance, or the last position
    done    dones[s_{k+1}]

Every utterance transition is indexed by the token position t of the state
that emits its `</a>` (its "close"), so all arrays keep the token layout's
`[B, T]` shapes and the token-level loss functions apply unchanged:

    y_k = r_k + γ (1 − done_{k+1}) · sg(V(s_{k+1}))                          `losses.td_target`
    L_Q = Σ_k [(y_k − Q1(s_k, u_k))² + (y_k − Q2(s_k, u_k))²] / K            `losses.q_loss`
    L_V = Σ_k |τ − 1(x_k < 0)| x_k² / K,  x_k = sg(min(Q̄1, Q̄2)(s_k, u_k)) − V(s_k)   `losses.expectile_v_loss`
    L   = L_Q + L_V + L_BC

K is the number of utterances, γ the discount per utterance (not per token),
and there is no CQL term (no vocabulary to push down). L_BC is π_β's token NLL
on every agent token, as in the BC baseline. Rewards are used as given (the
authors' code casts them to integers, truncating fractional rewards; not here).

Networks: the token-level layout (`models/ilql.py`), with the Q heads
d → 2d → 1 instead of d → 2d → |vocab|:

    online {"value": {"trunk", "v", "q1", "q2"}, "policy"}     target {"trunk", "q1", "q2"}

Decoding: `ilql_jax.reranking` (N utterances from π_β, the best by
Q̄(s, u) + w · log π_β(u | s)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import chex
import jax
import jax.numpy as jnp

from ilql_jax import losses, roles
from ilql_jax.data.batch import Batch
from ilql_jax.models import heads, ilql
from ilql_jax.models import trunk as trunk_lib

Array = chex.Array
Params = ilql.Params

__all__ = [
    "UtteranceOutputs",
    "UtteranceTransitions",
    "apply",
    "init",
    "is_per_utterance",
    "loss_fn",
    "q_at",
    "transitions",
    "utterance_loss",
]


# ---------------------------------------------------------------------------
# The utterance-level MDP, read off the token arrays.
# ---------------------------------------------------------------------------


@chex.dataclass(frozen=True)
class UtteranceTransitions:
    """One transition per utterance, at the token position t of the state that emits its `</a>`.

    Attributes (all ``[B, T]``; entries at ``c_t = 0`` are in range and unused):
        c_t: float32, 1 at the close position of each utterance whose `</a>` was kept.
        start_idx: int32 s(t), the state before the utterance (V(s_k) is read there).
        end_idx: int32 t + 1, the utterance's `</a>` (Q(s_k, u_k) is read there).
        r_t: float32 the utterance's reward.
        next_idx: int32 s_{k+1} (the token arrays' next(t)).
        done_next: float32 dones[s_{k+1}].
    """

    c_t: Array
    start_idx: Array
    end_idx: Array
    r_t: Array
    next_idx: Array
    done_next: Array


def transitions(batch: Batch | Mapping[str, Array], end_a_id: int) -> UtteranceTransitions:
    """The utterance transitions of a token-array batch (a `Batch` or a mapping of its fields).

    A close is an action state whose action is `</a>` (``m_t = 1``, ``tokens[t + 1] = end_a_id``). An
    utterance starts at an action state whose predecessor is not one (the environment spoke in between,
    or t = 0) or is a close (two agent segments in a row). s(t) is the latest start at or before t.
    An utterance cut by `max_len` before its `</a>` has no close, so no transition; its start state
    is still the previous close's next state, whose V is bootstrapped from.
    """
    batch = Batch.of(batch)
    tokens, m_t, r_t, next_idx, dones = batch.tokens, batch.action_mask, batch.rewards, batch.next_idx, batch.dones
    chex.assert_rank(tokens, 2)
    chex.assert_equal_shape([tokens, m_t, r_t, next_idx, dones])
    t = tokens.shape[1]
    act = m_t > 0
    close = act & (losses.next_actions(tokens) == end_a_id)
    before = lambda x: jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
    start = act & (~before(act) | before(close))
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), tokens.shape)
    start_idx = jax.lax.cummax(jnp.where(start, positions, 0), axis=1)
    next_idx = next_idx.astype(jnp.int32)
    return UtteranceTransitions(
        c_t=close.astype(jnp.float32),
        start_idx=start_idx,
        end_idx=jnp.minimum(positions + 1, t - 1),
        r_t=jnp.where(close, r_t, 0.0).astype(jnp.float32),
        next_idx=next_idx,
        done_next=losses.gather_next(dones, next_idx).astype(jnp.float32),
    )


def utterance_loss(q1_t: Array, q2_t: Array, target_q_t: Array, v_t: Array, tr: UtteranceTransitions,
                   cfg: losses.LossConfig) -> tuple[Array, dict[str, Array]]:
    """L_Q + L_V on the utterance transitions (the module docstring's equations).

    Args:
        q1_t, q2_t: the online scalar Q heads at every position, ``[B, T]`` (read at `tr.end_idx`).
        target_q_t: ``min(Q̄1, Q̄2)`` at every position, ``[B, T]``; stop-gradiented.
        v_t: online V at every position, ``[B, T]`` (read at `tr.start_idx` and `tr.next_idx`).
        tr: `transitions(batch, end_a_id)`.
        cfg: γ (per utterance) and τ; α_cql and β_awac are not read.

    Returns:
        ``(loss, info)``: `losses.q_loss`'s and `losses.expectile_v_loss`'s metrics, and
        ``n_utterances``.
    """
    chex.assert_rank([q1_t, q2_t, target_q_t, v_t], 2)
    chex.assert_equal_shape([q1_t, q2_t, target_q_t, v_t, tr.c_t])
    q1_u = losses.gather_next(q1_t, tr.end_idx)
    q2_u = losses.gather_next(q2_t, tr.end_idx)
    target_q_u = jax.lax.stop_gradient(losses.gather_next(target_q_t, tr.end_idx).astype(jnp.float32))
    v_s = losses.gather_next(v_t, tr.start_idx)
    y_k = losses.td_target(tr.r_t, losses.gather_next(v_t, tr.next_idx), tr.done_next, cfg.gamma)
    l_q, q_info = losses.q_loss(q1_u, q2_u, y_k, tr.c_t)
    l_v, v_info = losses.expectile_v_loss(target_q_u, v_s, tr.c_t, cfg.tau)
    info = {**q_info, **v_info, "target_q_mean": losses.masked_mean(target_q_u, tr.c_t),
            "n_utterances": jnp.sum(tr.c_t)}
    return l_q + l_v, info


# ---------------------------------------------------------------------------
# Networks.
# ---------------------------------------------------------------------------


def init(config: ilql.ModelConfig, key: jax.Array, trunk: trunk_lib.Params | None = None,
         policy: trunk_lib.Params | None = None) -> tuple[Params, Params]:
    """Online and target parameters: `ilql.init`'s trunks, π_β and V, with scalar Q heads (d → 2d → 1).

    The Q heads have the V head's shape; the target's start as copies of the online ones. (Under jit the
    vocabulary-wide heads `ilql.init` also draws are dead code and never allocated.)
    """
    online, target = ilql.init(config, key, trunk, policy)
    k_q1, k_q2 = jax.random.split(jax.random.fold_in(key, 1))
    cfg = config.trunk
    q1 = heads.init_v_head(cfg, k_q1, config.head_init)
    q2 = heads.init_v_head(cfg, k_q2, config.head_init)
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # distinct buffers, so donation never aliases
    online = {**online, roles.VALUE: {**roles.value(online), roles.Q1: q1, roles.Q2: q2}}
    return online, {**target, roles.Q1: copy(q1), roles.Q2: copy(q2)}


def is_per_utterance(online: Params) -> bool:
    """Whether `online` holds scalar Q heads (a per-utterance state) rather than vocabulary-wide ones."""
    try:
        kernel = roles.q_heads(roles.value(online))[0]["out"]["kernel"]
    except (KeyError, TypeError):  # a BC state (π_β alone), or not a parameter tree
        return False
    return kernel.shape[-1] == 1


def _scalar_head(params, cfg: trunk_lib.TrunkConfig, hidden: Array) -> Array:
    """A d → 2d → 1 head (V, or a scalar Q) at every position: [B, T, D] → [B, T] float32."""
    return heads.v_t(params, cfg, hidden)


@dataclasses.dataclass(frozen=True)
class UtteranceOutputs:
    """The value networks at every position (the loss reads them at the utterances' states and ends), and
    π_β's logits at the slots."""

    q1_t: jax.Array          # [B, T] online Q1 head on h_t
    q2_t: jax.Array
    target_q_t: jax.Array    # [B, T] min(Q̄1, Q̄2) on the target trunk's h̄_t, no gradient
    v_t: jax.Array           # [B, T] online V
    pi_logits_k: jax.Array | None  # [B, K, V_pad] π_β at the slots; None when frozen


def apply(config: ilql.ModelConfig, online: Params, target: Params, tokens: jax.Array,
          attention_mask: jax.Array, packed: losses.PackedActions | None = None,
          dropout_key: jax.Array | None = None) -> UtteranceOutputs:
    """The value trunk with V and the scalar Q heads, the target trunk with the target Q heads, and π_β's
    LM head, on the token level's trunk runs (`ilql.hiddens`: the same trunks, dropout draws and frozen target).

    The scalar heads are one 2d-wide MLP per position, so they run at every position (cheaper than gathering
    first). π_β's LM head runs at the action states `packed.idx`, its padded vocabulary tail left as computed
    for the loss's fused logsumexp (as `ilql.apply`); without `packed`, at every position, the tail -inf.
    """
    cfg = config.trunk
    hidden, target_hidden, h_policy = ilql.hiddens(config, online, target, tokens, attention_mask, dropout_key)
    target_q1, target_q2 = roles.q_heads(target)
    target_q_t = jnp.minimum(_scalar_head(target_q1, cfg, target_hidden), _scalar_head(target_q2, cfg, target_hidden))
    q1, q2 = roles.q_heads(roles.value(online))
    if h_policy is not None and packed is not None:
        h_policy = losses.gather_packed(h_policy, packed.idx)
    return UtteranceOutputs(
        q1_t=_scalar_head(q1, cfg, hidden),
        q2_t=_scalar_head(q2, cfg, hidden),
        target_q_t=jax.lax.stop_gradient(target_q_t),
        v_t=_scalar_head(roles.v_head(online), cfg, hidden),
        pi_logits_k=None if h_policy is None else trunk_lib.lm_logits(ilql.lm_head_params(config, online), cfg,
                                                                      h_policy, mask_padded=packed is None),
    )


def q_at(config: ilql.ModelConfig, online: Params, target: Params, tokens: jax.Array, attention_mask: jax.Array,
         end_idx: jax.Array) -> jax.Array:
    """min(Q̄1, Q̄2)(s, u) of each row's utterance, read at its `</a>` position `end_idx` [N]: → [N] float32.

    `tokens` [N, W] hold the history and the utterance with its `</a>` (left padding allowed). The
    target networks, as in the authors' reranking.
    """
    chex.assert_rank([tokens, end_idx], [2, 1])
    cfg = config.trunk
    params = roles.value_trunk(online) if config.target_on_online_trunk else roles.target_trunk(target)
    hidden, _ = trunk_lib.forward(params, cfg, tokens, attention_mask, with_logits=False)
    h_end = jnp.take_along_axis(hidden, end_idx[:, None, None].astype(jnp.int32), axis=1)  # [N, 1, D]
    q1, q2 = roles.q_heads(target)
    q = jnp.minimum(_scalar_head(q1, cfg, h_end), _scalar_head(q2, cfg, h_end))
    return q[:, 0]


# ---------------------------------------------------------------------------
# The train step's loss.
# ---------------------------------------------------------------------------


def loss_fn(step_config, params: Params, target_params: Params, batch: Batch,
            dropout_key: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L = L_Q + L_V + L_BC of one batch, and its metrics (`train.StepConfig` mode "ilql_utt").

    L_BC runs π_β's LM head only at the agent tokens, packed as in the BC baseline
    (`losses.pack_actions`, `step_config.action_capacity`); with a frozen π_β it is 0.
    """
    packed = losses.pack_actions(batch, step_config.action_capacity)
    out = apply(step_config.model, params, target_params, batch.tokens, batch.attention_mask, packed, dropout_key)
    tr = transitions(batch, step_config.end_a_id)
    l_value, info = utterance_loss(out.q1_t, out.q2_t, out.target_q_t, out.v_t, tr, step_config.loss_config)
    if out.pi_logits_k is None:
        l_bc = jnp.zeros((), jnp.float32)
        bc_info = {"bc_loss": l_bc, "bc_nll": l_bc, "n_actions": jnp.sum(packed.m_k)}
    else:
        l_bc, bc_info = losses.bc_only_loss(out.pi_logits_k, packed, step_config.model.trunk.vocab_size,
                                            step_config.loss.bc_normaliser)
        bc_info = {k: v for k, v in bc_info.items() if k != "loss"}
    loss = l_value + l_bc
    metrics = {"loss": loss, **info, **bc_info}
    return loss, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
