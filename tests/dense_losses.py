"""The ILQL objective written out densely, as docs/algorithm.md §3 states it: the hand-computed reference
for `ilql_jax.losses` (rlax's habit).

Every head is read over the whole (possibly padded) vocabulary at every position, each term is its own
masked mean, and nothing is shared with the library but the batch layout, so a change to a term of
`losses.ilql_loss` shows here as a difference (tests/test_losses.py::test_objective_equals_the_dense_reference).
"""

import jax
import jax.numpy as jnp


def _masked_mean(x_t, m_t, n=None):
    m_t = m_t.astype(jnp.float32)
    x_t = jnp.where(m_t > 0, x_t.astype(jnp.float32), 0.0)
    return jnp.sum(m_t * x_t) / jnp.maximum(jnp.sum(m_t) if n is None else n, 1.0)


def _nll(x_t, a_t, vocab_size):
    """logsumexp over the real vocabulary minus the value at a_t, float32 [B, T]."""
    x_t = x_t.astype(jnp.float32)
    x_t = jnp.where(jnp.arange(x_t.shape[-1]) < vocab_size, x_t, -jnp.inf)
    return jax.nn.logsumexp(x_t, axis=-1) - jnp.take_along_axis(x_t, a_t[..., None], axis=-1)[..., 0]


def ilql_loss(q1_t, q2_t, target_q1_t, target_q2_t, v_t, pi_logits_t, batch, cfg):
    """L = L_Q + L_V + α_cql · L_CQL + L_BC over [B, T] heads (pi_logits_t None: no L_BC), and its metrics."""
    m_t = batch["action_mask"].astype(jnp.float32)
    tokens, next_idx = batch["tokens"], batch["next_idx"]
    a_t = jnp.where(m_t > 0, jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1), 0)
    at = lambda x: jnp.take_along_axis(x, a_t[..., None], axis=-1)[..., 0].astype(jnp.float32)
    v_t = v_t.astype(jnp.float32)
    v_next = jax.lax.stop_gradient(jnp.take_along_axis(v_t, next_idx, axis=1))
    done_next = jnp.take_along_axis(batch["dones"].astype(jnp.float32), next_idx, axis=1)
    y_t = batch["rewards"].astype(jnp.float32) + cfg.gamma * (1.0 - done_next) * v_next
    q1_a, q2_a = at(q1_t), at(q2_t)
    l_q = _masked_mean(jnp.square(y_t - q1_a) + jnp.square(y_t - q2_a), m_t)
    q_bar = jax.lax.stop_gradient(jnp.minimum(at(target_q1_t), at(target_q2_t)))
    u_t = q_bar - v_t
    l_v = _masked_mean(jnp.abs(cfg.tau - (u_t < 0).astype(jnp.float32)) * jnp.square(u_t), m_t)
    cql_q1 = _masked_mean(_nll(q1_t, a_t, cfg.vocab_size), m_t)
    cql_q2 = _masked_mean(_nll(q2_t, a_t, cfg.vocab_size), m_t)
    if pi_logits_t is None:
        l_bc = bc_nll = jnp.zeros((), jnp.float32)
    else:
        nll_t = _nll(pi_logits_t, a_t, cfg.vocab_size)
        n = (jnp.sum(batch["attention_mask"][:, 1:].astype(jnp.float32)) if cfg.bc_normaliser == "non_pad"
             else None)
        w_t = jnp.exp(cfg.beta_awac * jax.lax.stop_gradient(u_t))
        l_bc, bc_nll = _masked_mean(w_t * nll_t, m_t, n), _masked_mean(nll_t, m_t)
    loss = l_q + l_v + cfg.alpha_cql * (cql_q1 + cql_q2) + l_bc
    return loss, {
        "loss": loss, "q_loss": l_q, "v_loss": l_v, "cql_loss": cql_q1 + cql_q2, "cql_q1": cql_q1,
        "cql_q2": cql_q2, "bc_loss": l_bc, "bc_nll": bc_nll, "q_mean": _masked_mean(0.5 * (q1_a + q2_a), m_t),
        "y_mean": _masked_mean(y_t, m_t), "v_mean": _masked_mean(v_t, m_t), "adv_mean": _masked_mean(u_t, m_t),
        "adv_pos_frac": _masked_mean((u_t > 0).astype(jnp.float32), m_t),
        "target_q_mean": _masked_mean(q_bar, m_t), "n_actions": jnp.sum(m_t),
    }
