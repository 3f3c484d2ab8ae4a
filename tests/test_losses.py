"""Tests for ilql_jax.losses (docs/algorithm.md §3, §8).

Expected values are written out by hand as numbers (logs of small integers
where a logsumexp is involved), never by re-calling the loss formula; the
objective as a whole is also checked against its dense hand-written form
(tests/dense_losses.py).

Most examples are laid out densely, ``[B, T]`` and ``[B, T, V]``; the adapters
below feed them to the library the way `train.reference_loss_fn` does
(`losses.every_position`, each vocabulary-wide head read by
`losses.logsumexp_and_gather`), so the library's own terms are what is tested.
"""

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest

from ilql_jax import losses
from tests import dense_losses

LN2, LN3 = math.log(2.0), math.log(3.0)


def ilql_every(q1_t, q2_t, target_q1_t, target_q2_t, v_t, pi_logits_t, batch, cfg):
    """`losses.ilql_loss` with every head at every position (as `train.reference_loss_fn` calls it)."""
    every = losses.every_position(batch)
    target_q_a = jnp.minimum(losses.gather_actions(target_q1_t, every.a_k),
                             losses.gather_actions(target_q2_t, every.a_k))
    return losses.ilql_loss(q1_t, q2_t, target_q_a, v_t, losses.gather_next(v_t, every.next_k), pi_logits_t,
                            every, cfg)


def bc_only_every(pi_logits_t, batch, vocab_size=None, normaliser="agent"):
    return losses.bc_only_loss(pi_logits_t, losses.every_position(batch), vocab_size, normaliser)


def _reads(x_t, a_t, m_t, vocab_size):
    """`losses.logsumexp_and_gather` of dense logits, actions at masked positions replaced by 0 (as in the slots)."""
    return losses.logsumexp_and_gather(x_t, jnp.where(m_t > 0, a_t, 0), vocab_size)


def cql_dense(q1_t, q2_t, a_t, m_t, vocab_size=None):
    return losses.cql_loss(*_reads(q1_t, a_t, m_t, vocab_size), *_reads(q2_t, a_t, m_t, vocab_size), m_t)


def bc_dense(logits_t, a_t, m_t, vocab_size=None, adv_t=None, beta_awac=0.0, n=None):
    return losses.bc_loss(*_reads(logits_t, a_t, m_t, vocab_size), m_t, adv_t, beta_awac, n)


def f32(x):
    return jnp.asarray(x, jnp.float32)


def i32(x):
    return jnp.asarray(x, jnp.int32)


# ---------------------------------------------------------------------------
# A 4-token, vocab-3 episode used by the composed-loss tests.
#
#   tokens     0  1  2  0        a_t = tokens[t+1] = [1, 2, 0, 0]
#   m_t        1  1  0  0        states 0, 1 emit agent tokens
#   next_idx   1  3  2  3        state 1 emits </a>; its next state is 3
#   rewards    0 -1  0  0
#   dones      0  0  0  1        done_next = dones[next_idx] = [0, 1, 0, 1]
#   v_t       .5  2  7  4
#
# gamma = 0.5:  y_0 = 0 + 0.5 * 1 * v_1 = 1.0;  y_1 = -1 + 0.5 * 0 * v_3 = -1.
# ---------------------------------------------------------------------------

GARBAGE = 37.0  # finite junk at masked positions


def composed_example():
    batch = {
        "tokens": i32([[0, 1, 2, 0]]),
        "attention_mask": i32([[1, 1, 1, 1]]),
        "action_mask": f32([[1, 1, 0, 0]]),
        "rewards": f32([[0, -1, 0, 0]]),
        "next_idx": i32([[1, 3, 2, 3]]),
        "dones": f32([[0, 0, 0, 1]]),
    }
    g = GARBAGE
    # Online heads: rows constant, so Q_i[a_t] is the constant and each CQL
    # term is logsumexp([c, c, c]) - c = ln 3.
    q1 = f32([[[1, 1, 1], [0, 0, 0], [g, -g, g], [g, g, -g]]])
    q2 = f32([[[2, 2, 2], [-2, -2, -2], [-g, g, g], [g, -g, g]]])
    # Targets at a_0 = 1: min(1.5, 2.5) = 1.5; at a_1 = 2: min(0, 4) = 0.
    tq1 = f32([[[9, 1.5, 9], [5, 5, 0], [g, g, g], [g, g, g]]])
    tq2 = f32([[[0, 2.5, 0], [5, 5, 4], [-g, g, -g], [g, -g, g]]])
    v = f32([[0.5, 2.0, 7.0, 4.0]])
    # pi_beta: row 0 uniform -> NLL ln 3; row 1 [0, 0, ln 2] at a=2 -> ln 4 - ln 2 = ln 2.
    pi = f32([[[0, 0, 0], [0, 0, LN2], [g, -g, g], [-g, g, g]]])
    return q1, q2, tq1, tq2, v, pi, batch


# Hand-computed pieces of the composed example (tau = 0.7, alpha_cql = 0.1):
#   L_Q   = [(1-1)^2 + (1-2)^2 + (-1-0)^2 + (-1+2)^2] / 2 = (0+1+1+1)/2 = 1.5
#   u     = [1.5 - 0.5, 0 - 2] = [1, -2];  L_V = (0.7*1 + 0.3*4)/2 = 0.95
#   L_CQL = 4 * ln 3 / 2 = 2 ln 3
#   L_BC  = (ln 3 + ln 2) / 2
EXPECTED_Q = 1.5
EXPECTED_V = 0.95
EXPECTED_CQL = 2.0 * LN3
EXPECTED_BC = (LN3 + LN2) / 2.0
ALPHA = 0.1
EXPECTED_TOTAL = EXPECTED_Q + EXPECTED_V + ALPHA * EXPECTED_CQL + EXPECTED_BC
CFG = losses.LossConfig(gamma=0.5, tau=0.7, alpha_cql=ALPHA, vocab_size=3)


class LossValuesTest(chex.TestCase):
    """Hand-computed values, with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_next_actions_and_gathers(self):
        a = self.variant(losses.next_actions)(i32([[4, 1, 2, 0], [3, 3, 1, 2]]))
        np.testing.assert_array_equal(a, [[1, 2, 0, 0], [3, 1, 2, 0]])
        x = f32([[[0, 1, 2], [3, 4, 5]]])
        np.testing.assert_array_equal(
            self.variant(losses.gather_actions)(x, i32([[2, 0]])), [[2, 3]]
        )
        v = f32([[10, 20, 30, 40]])
        np.testing.assert_array_equal(
            self.variant(losses.gather_next)(v, i32([[1, 3, 2, 3]])),
            [[20, 40, 30, 40]],
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_td_target_done_vs_not_done(self):
        fn = self.variant(lambda r, v, d: losses.td_target(r, v, d, gamma=0.9))
        # not done: 0 + 0.9 * 2 = 1.8;  done: -1 + 0 = -1 (v_next = 3 ignored).
        y = fn(f32([[0, -1]]), f32([[2, 3]]), f32([[0, 1]]))
        np.testing.assert_allclose(y, [[1.8, -1.0]], rtol=1e-6)
        # Truncated (not terminal): bootstrap -1 + 0.9 * 3 = 1.7.
        y = fn(f32([[-1]]), f32([[3]]), f32([[0]]))
        np.testing.assert_allclose(y, [[1.7]], rtol=1e-6)
        assert y.dtype == jnp.float32

    @chex.variants(with_jit=True, without_jit=True)
    def test_q_loss(self):
        # Errors at real positions: Q1 (1-1)^2=0, (0-2)^2=4; Q2 (1-0)^2=1, (0-1)^2=1.
        # Sum 6 over N = 2 -> 3.0 (full squared error, not 0.5x).
        q1 = f32([[1, 2, 99]])
        q2 = f32([[0, 1, -99]])
        y = f32([[1, 0, 9]])
        m = f32([[1, 1, 0]])
        loss, info = self.variant(losses.q_loss)(q1, q2, y, m)
        np.testing.assert_allclose(loss, 3.0, rtol=1e-6)
        np.testing.assert_allclose(info["q_loss"], 3.0, rtol=1e-6)
        np.testing.assert_allclose(info["q_mean"], (1 + 2 + 0 + 1) / 4, rtol=1e-6)
        np.testing.assert_allclose(info["y_mean"], 0.5, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_expectile_v_loss(self):
        fn = self.variant(lambda q, v, m: losses.expectile_v_loss(q, v, m, tau=0.7))
        # u = [2-1, 0-2, 3-3] = [1, -2, 0]; weights [0.7, 0.3, 0.7].
        # (0.7*1 + 0.3*4 + 0.7*0) / 3 = 1.9 / 3.
        loss, info = fn(
            f32([[2, 0, 3, 100]]), f32([[1, 2, 3, -50]]), f32([[1, 1, 1, 0]])
        )
        np.testing.assert_allclose(loss, 1.9 / 3.0, rtol=1e-6)
        np.testing.assert_allclose(info["v_mean"], 2.0, rtol=1e-6)
        np.testing.assert_allclose(info["adv_mean"], -1.0 / 3.0, rtol=1e-6)
        np.testing.assert_allclose(info["adv_pos_frac"], 1.0 / 3.0, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_expectile_weight_direction(self):
        fn = self.variant(lambda q, v, m: losses.expectile_v_loss(q, v, m, tau=0.7))
        m = f32([[1]])
        # u = +2 >= 0 (V below Q): weight tau = 0.7 -> 0.7 * 4 = 2.8.
        loss_pos, _ = fn(f32([[3]]), f32([[1]]), m)
        np.testing.assert_allclose(loss_pos, 2.8, rtol=1e-6)
        # u = -2 < 0 (V above Q): weight 1 - tau = 0.3 -> 0.3 * 4 = 1.2.
        loss_neg, _ = fn(f32([[1]]), f32([[3]]), m)
        np.testing.assert_allclose(loss_neg, 1.2, rtol=1e-6)
        # tau = 0.5 is symmetric: 0.5 * 4 = 2.0 either way.
        sym = self.variant(lambda q, v, m: losses.expectile_v_loss(q, v, m, tau=0.5))
        np.testing.assert_allclose(sym(f32([[3]]), f32([[1]]), m)[0], 2.0, rtol=1e-6)
        np.testing.assert_allclose(sym(f32([[1]]), f32([[3]]), m)[0], 2.0, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_cql_loss(self):
        g = GARBAGE
        # a_t = [1, 2, 0(masked)], m_t = [1, 1, 0], vocab 3.
        # Q1 row 0 [0,0,0]     at 1: ln 3 - 0           = ln 3
        # Q1 row 1 [ln4,0,0]   at 2: ln(4+1+1) - 0      = ln 6
        # Q2 row 0 [0,ln2,ln3] at 2: ... a_0 is 1: ln 6 - ln 2 = ln 3
        # Q2 row 1 [5,5,5]     at 2: 5 + ln 3 - 5       = ln 3
        # Sum = ln 3 + ln 6 + ln 3 + ln 3 = ln 162; / N=2.
        q1 = f32([[[0, 0, 0], [math.log(4.0), 0, 0], [g, -g, g]]])
        q2 = f32([[[0, LN2, LN3], [5, 5, 5], [-g, g, -g]]])
        a = i32([[1, 2, 0]])
        m = f32([[1, 1, 0]])
        fn = self.variant(lambda q1, q2, a, m: cql_dense(q1, q2, a, m, 3))
        loss, info = fn(q1, q2, a, m)
        np.testing.assert_allclose(loss, math.log(162.0) / 2.0, rtol=1e-6)
        np.testing.assert_allclose(info["cql_q1"], (LN3 + math.log(6.0)) / 2, rtol=1e-6)
        np.testing.assert_allclose(info["cql_q2"], (LN3 + LN3) / 2, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_bc_loss(self):
        g = GARBAGE
        # Row 0 [0,0,0] at 1: ln 3.  Row 1 [0,0,ln5] at 2: ln(1+1+5) - ln 5 = ln 1.4.
        logits = f32([[[0, 0, 0], [0, 0, math.log(5.0)], [g, g, -g]]])
        a = i32([[1, 2, 0]])
        m = f32([[1, 1, 0]])
        fn = self.variant(lambda l, a, m: bc_dense(l, a, m, 3))
        loss, info = fn(logits, a, m)
        np.testing.assert_allclose(loss, (LN3 + math.log(1.4)) / 2, rtol=1e-6)
        np.testing.assert_allclose(info["bc_nll"], (LN3 + math.log(1.4)) / 2, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_bc_loss_awac_weights(self):
        logits = f32([[[0, 0, 0], [0, 0, math.log(5.0)], [0, 0, 0]]])
        a = i32([[1, 2, 0]])
        m = f32([[1, 1, 0]])
        # beta_awac = 1, adv = [ln 2, 0, junk] -> weights [2, 1]:
        # (2 ln 3 + 1 ln 1.4) / 2; unweighted NLL unchanged.
        adv = f32([[LN2, 0.0, 80.0]])
        fn = self.variant(
            lambda l, a, m, adv: bc_dense(l, a, m, 3, adv_t=adv, beta_awac=1.0)
        )
        loss, info = fn(logits, a, m, adv)
        np.testing.assert_allclose(loss, (2 * LN3 + math.log(1.4)) / 2, rtol=1e-6)
        np.testing.assert_allclose(info["bc_nll"], (LN3 + math.log(1.4)) / 2, rtol=1e-6)
        # beta_awac = 0 with an advantage given: plain BC.
        fn0 = self.variant(
            lambda l, a, m, adv: bc_dense(l, a, m, 3, adv_t=adv, beta_awac=0.0)
        )
        np.testing.assert_allclose(
            fn0(logits, a, m, adv)[0], (LN3 + math.log(1.4)) / 2, rtol=1e-6
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_ilql_loss_composed(self):
        q1, q2, tq1, tq2, v, pi, batch = composed_example()
        fn = self.variant(lambda *args: ilql_every(*args, cfg=CFG))
        loss, metrics = fn(q1, q2, tq1, tq2, v, pi, batch)
        np.testing.assert_allclose(loss, EXPECTED_TOTAL, rtol=1e-6)
        expected = {
            "loss": EXPECTED_TOTAL,
            "q_loss": EXPECTED_Q,
            "v_loss": EXPECTED_V,
            "cql_loss": EXPECTED_CQL,
            "bc_loss": EXPECTED_BC,
            "bc_nll": EXPECTED_BC,
            "q_mean": (1 + 2 + 0 - 2) / 4,  # online Q1, Q2 at a_t
            "v_mean": (0.5 + 2.0) / 2,
            "adv_mean": (1 - 2) / 2,
            "adv_pos_frac": 0.5,
            "n_actions": 2.0,
            "y_mean": (1.0 - 1.0) / 2,
            "target_q_mean": (1.5 + 0.0) / 2,
        }
        for k, want in expected.items():
            np.testing.assert_allclose(metrics[k], want, rtol=1e-6, atol=1e-7, err_msg=k)
        for k, val in metrics.items():
            assert val.shape == () and val.dtype == jnp.float32, k

    @chex.variants(with_jit=True, without_jit=True)
    def test_ilql_loss_truncated_bootstraps(self):
        # Same example but not terminal: y_1 = -1 + 0.5 * v_3 = -1 + 2 = 1.
        # L_Q = [(1-1)^2 + (1-2)^2 + (1-0)^2 + (1+2)^2] / 2 = (0+1+1+9)/2 = 5.5.
        q1, q2, tq1, tq2, v, pi, batch = composed_example()
        batch = dict(batch, dones=f32([[0, 0, 0, 0]]))
        fn = self.variant(lambda *args: ilql_every(*args, cfg=CFG))
        _, metrics = fn(q1, q2, tq1, tq2, v, pi, batch)
        np.testing.assert_allclose(metrics["q_loss"], 5.5, rtol=1e-6)
        np.testing.assert_allclose(metrics["y_mean"], 1.0, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_ilql_loss_value_only_and_bc_only(self):
        q1, q2, tq1, tq2, v, pi, batch = composed_example()
        fn = self.variant(
            lambda q1, q2, tq1, tq2, v, b: ilql_every(
                q1, q2, tq1, tq2, v, None, b, CFG
            )
        )
        loss, metrics = fn(q1, q2, tq1, tq2, v, batch)
        np.testing.assert_allclose(
            loss, EXPECTED_Q + EXPECTED_V + ALPHA * EXPECTED_CQL, rtol=1e-6
        )
        assert float(metrics["bc_loss"]) == 0.0
        bc = self.variant(lambda p, b: bc_only_every(p, b, 3))
        loss, metrics = bc(pi, batch)
        np.testing.assert_allclose(loss, EXPECTED_BC, rtol=1e-6)
        assert float(metrics["n_actions"]) == 2.0


# ---------------------------------------------------------------------------
# Padded vocabulary.
# ---------------------------------------------------------------------------


def _pad_vocab(x, n_pad, value):
    pad = jnp.full(x.shape[:-1] + (n_pad,), value, x.dtype)
    return jnp.concatenate([x, pad], axis=-1)


@pytest.mark.parametrize("value", [1e30, -1e30, 0.0, 88.0])
def test_padded_vocab_does_not_change_cql_or_bc(value):
    q1, q2, tq1, tq2, v, pi, batch = composed_example()
    a = losses.next_actions(batch["tokens"])
    m = batch["action_mask"]
    ref_cql, _ = cql_dense(q1, q2, a, m, vocab_size=3)
    ref_bc, _ = bc_dense(pi, a, m, vocab_size=3)
    pq1, pq2, ppi = (_pad_vocab(x, 5, value) for x in (q1, q2, pi))
    cql, _ = jax.jit(cql_dense, static_argnums=4)(pq1, pq2, a, m, 3)
    bc, _ = jax.jit(bc_dense, static_argnums=3)(ppi, a, m, 3)
    np.testing.assert_allclose(cql, ref_cql, rtol=1e-6)
    np.testing.assert_allclose(bc, ref_bc, rtol=1e-6)
    np.testing.assert_allclose(cql, EXPECTED_CQL, rtol=1e-6)
    # Whole objective too, with all four Q tensors and the logits padded.
    ptq1, ptq2 = (_pad_vocab(x, 5, value) for x in (tq1, tq2))
    loss, _ = ilql_every(pq1, pq2, ptq1, ptq2, v, ppi, batch, CFG)
    np.testing.assert_allclose(loss, EXPECTED_TOTAL, rtol=1e-6)


def test_padded_vocab_gets_no_gradient():
    q1, q2, _, _, _, pi, batch = composed_example()
    a = losses.next_actions(batch["tokens"])
    m = batch["action_mask"]
    pq1, pq2 = _pad_vocab(q1, 5, 1e30), _pad_vocab(q2, 5, 1e30)
    g = jax.grad(lambda q: cql_dense(q, pq2, a, m, 3)[0])(pq1)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[..., 3:], 0.0)
    gp = jax.grad(lambda p: bc_dense(p, a, m, 3)[0])(_pad_vocab(pi, 5, 1e30))
    assert np.all(np.isfinite(gp))
    np.testing.assert_array_equal(gp[..., 3:], 0.0)


def test_vocab_size_larger_than_axis_raises():
    q1, q2, *_, batch = composed_example()
    a = losses.next_actions(batch["tokens"])
    with pytest.raises(ValueError, match="vocab_size"):
        cql_dense(q1, q2, a, batch["action_mask"], vocab_size=4)


# ---------------------------------------------------------------------------
# Masked positions.
# ---------------------------------------------------------------------------


def test_masked_positions_never_change_any_loss():
    q1, q2, tq1, tq2, v, pi, batch = composed_example()
    ref_loss, ref_metrics = ilql_every(q1, q2, tq1, tq2, v, pi, batch, CFG)

    rng = np.random.default_rng(0)
    m = np.asarray(batch["action_mask"])
    masked = (m == 0)[..., None]

    def junk(x, scale=1e3):
        noise = rng.uniform(-scale, scale, size=x.shape).astype(np.float32)
        return jnp.where(masked if x.ndim == 3 else masked[..., 0], noise, x)

    # Position 2 is neither an action state nor anyone's next state; position
    # 3 is next(1) but with done = 1, so its V is multiplied by 0.
    batch2 = dict(
        batch,
        rewards=junk(batch["rewards"]),
        # a_2 = tokens[3]: a masked action; ids stay in range.
        tokens=i32([[0, 1, 2, 2]]),
        # next(2), next(3) are never read at real actions.
        next_idx=i32([[1, 3, 0, 1]]),
    )
    v2 = f32([[0.5, 2.0, -333.0, 1e4]])
    args = (junk(q1), junk(q2), junk(tq1), junk(tq2), v2, junk(pi), batch2)
    loss, metrics = ilql_every(*args, CFG)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for k in ref_metrics:
        np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-6, atol=1e-7, err_msg=k)
    # Jitted and with an out-of-range action id at a masked state.
    batch3 = dict(batch2, tokens=i32([[0, 1, 2, 999]]))
    loss3, _ = jax.jit(ilql_every, static_argnums=7)(*args[:-1], batch3, CFG)
    np.testing.assert_allclose(loss3, ref_loss, rtol=1e-6)
    grads = jax.grad(
        lambda *a: ilql_every(*a, batch3, CFG)[0], argnums=(0, 1, 2, 3, 4, 5)
    )(*args[:-1])
    for g in grads:
        assert np.all(np.isfinite(g))


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, m: losses.q_loss(x, 2 * x, 0.5 * x, m)[0],
        lambda x, m: losses.expectile_v_loss(x, -x, m, 0.7)[0],
    ],
)
def test_masked_positions_scalar_losses(fn):
    m = f32([[1, 0, 1, 0]])
    x = f32([[1.0, 2.0, -3.0, 4.0]])
    x_junk = f32([[1.0, 1e4, -3.0, -7e3]])
    np.testing.assert_allclose(fn(x_junk, m), fn(x, m), rtol=1e-6)


def test_no_actions_gives_zero_loss():
    q1, q2, tq1, tq2, v, pi, batch = composed_example()
    batch = dict(batch, action_mask=f32([[0, 0, 0, 0]]))
    loss, metrics = ilql_every(q1, q2, tq1, tq2, v, pi, batch, CFG)
    assert float(loss) == 0.0
    assert float(metrics["n_actions"]) == 0.0


# ---------------------------------------------------------------------------
# Gradients.
# ---------------------------------------------------------------------------


def test_no_gradient_into_v_through_td_target():
    r, done = f32([[0.0, -1.0]]), f32([[0.0, 0.0]])
    q1, q2, m = f32([[1.0, 2.0]]), f32([[0.0, 3.0]]), f32([[1.0, 1.0]])

    def loss_of_v_next(v_next):
        y = losses.td_target(r, v_next, done, 0.99)
        return losses.q_loss(q1, q2, y, m)[0]

    g = jax.grad(loss_of_v_next)(f32([[5.0, -2.0]]))
    np.testing.assert_array_equal(g, 0.0)
    # ... while Q itself does get a gradient.
    gq = jax.grad(lambda q: losses.q_loss(q, q2, f32([[1.0, 1.0]]), m)[0])(q1)
    assert np.any(gq != 0)


def test_no_gradient_into_target_q_from_expectile_loss():
    qt, v, m = f32([[2.0, 0.0]]), f32([[1.0, 2.0]]), f32([[1.0, 1.0]])
    g_qt, g_v = jax.grad(
        lambda qt, v: losses.expectile_v_loss(qt, v, m, 0.7)[0], argnums=(0, 1)
    )(qt, v)
    np.testing.assert_array_equal(g_qt, 0.0)
    # dL/dV = -2 w u / N: u = [1, -2], w = [0.7, 0.3], N = 2 -> [-0.7, 0.6].
    np.testing.assert_allclose(g_v, [[-0.7, 0.6]], rtol=1e-6)


def test_no_gradient_into_targets_from_ilql_loss():
    q1, q2, tq1, tq2, v, pi, batch = composed_example()
    cfg = losses.LossConfig(gamma=0.5, tau=0.7, alpha_cql=0.1, beta_awac=0.5, vocab_size=3)

    def total(q1, q2, tq1, tq2, v, pi):
        return ilql_every(q1, q2, tq1, tq2, v, pi, batch, cfg)[0]

    grads = jax.grad(total, argnums=(0, 1, 2, 3, 4, 5))(q1, q2, tq1, tq2, v, pi)
    g_q1, g_q2, g_tq1, g_tq2, g_v, g_pi = grads
    np.testing.assert_array_equal(g_tq1, 0.0)
    np.testing.assert_array_equal(g_tq2, 0.0)
    # V gets gradient only from L_V at action states: none at state 3, which
    # is read only as next(1) inside the (stop-gradiented) TD target.
    assert float(g_v[0, 3]) == 0.0 and float(g_v[0, 2]) == 0.0
    assert np.all(np.asarray(g_v[0, :2]) != 0.0)
    # Online heads and pi_beta are trained; masked rows get nothing.
    for g in (g_q1, g_q2, g_pi):
        assert np.any(np.asarray(g[0, :2]) != 0.0)
        np.testing.assert_array_equal(g[0, 2:], 0.0)
    # Every gradient is finite.
    for g in grads:
        assert np.all(np.isfinite(g))


def test_ilql_v_gradient_is_only_the_expectile_gradient():
    q1, q2, tq1, tq2, v, pi, batch = composed_example()
    g_v = jax.grad(lambda v: ilql_every(q1, q2, tq1, tq2, v, pi, batch, CFG)[0])(v)
    # u = [1, -2], w = [0.7, 0.3], N = 2: dL_V/dV = -2 w u / N = [-0.7, 1.2 / 2].
    np.testing.assert_allclose(g_v, [[-0.7, 0.6, 0.0, 0.0]], rtol=1e-6, atol=1e-7)


def test_no_gradient_into_awac_advantage():
    logits = f32([[[0, 0, 0], [0, 1, 2]]])
    a, m = i32([[1, 2]]), f32([[1, 1]])
    adv = f32([[0.3, -0.2]])
    g = jax.grad(lambda adv: bc_dense(logits, a, m, 3, adv, 1.0)[0])(adv)
    np.testing.assert_array_equal(g, 0.0)


# ---------------------------------------------------------------------------
# CQL == cross-entropy of Q as logits.
# ---------------------------------------------------------------------------


class CqlCrossEntropyTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_cql_equals_optax_cross_entropy(self):
        k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
        b, t, v = 3, 7, 11
        q1 = 3.0 * jax.random.normal(k1, (b, t, v))
        q2 = 3.0 * jax.random.normal(k2, (b, t, v))
        a = jax.random.randint(k3, (b, t), 0, v)
        m = (jax.random.uniform(k4, (b, t)) < 0.6).astype(jnp.float32)
        loss, _ = self.variant(lambda *x: cql_dense(*x, v))(q1, q2, a, m)
        ce = optax.softmax_cross_entropy_with_integer_labels(
            q1, a
        ) + optax.softmax_cross_entropy_with_integer_labels(q2, a)
        want = jnp.sum(ce * m) / jnp.maximum(jnp.sum(m), 1.0)
        np.testing.assert_allclose(loss, want, rtol=1e-5)
        # With a padded vocab (filled with huge values) too.
        pq1 = _pad_vocab(q1, 5, 1e30)
        pq2 = _pad_vocab(q2, 5, 1e30)
        ploss, _ = self.variant(lambda *x: cql_dense(*x, v))(pq1, pq2, a, m)
        np.testing.assert_allclose(ploss, want, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_bf16_inputs_computed_in_float32(self):
        q = jnp.zeros((1, 2, 3), jnp.bfloat16)
        a, m = i32([[1, 2]]), f32([[1, 1]])
        loss, info = self.variant(lambda *x: cql_dense(*x, 3))(q, q, a, m)
        assert loss.dtype == jnp.float32
        np.testing.assert_allclose(loss, 2 * LN3, rtol=1e-6)


# ---------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------


def test_loss_config_validation_and_hashable():
    cfg = losses.LossConfig()
    assert (cfg.gamma, cfg.tau, cfg.beta_awac) == (0.99, 0.7, 0.0)
    hash(cfg)
    with pytest.raises(ValueError):
        losses.LossConfig(tau=1.0)
    with pytest.raises(ValueError):
        losses.LossConfig(gamma=1.5)
    with pytest.raises(ValueError):
        losses.LossConfig(alpha_cql=-1.0)
    q1, *_, batch = composed_example()
    a = losses.next_actions(batch["tokens"])
    with pytest.raises(ValueError, match="adv_t"):
        bc_dense(q1, a, batch["action_mask"], 3, None, 1.0)
    with pytest.raises(ValueError, match="bc_normaliser"):
        losses.LossConfig(bc_normaliser="all")


def _two_agent_shares():
    """Two rows with different agent shares: row 0 has 2 agent targets of 3 predicted tokens, row 1 (padded
    after 3 tokens) 1 of 2. π_β's NLL at the agent targets: ln 3, ln 2 (row 0), ln(7/5) (row 1)."""
    g = GARBAGE
    batch = {
        "tokens": i32([[0, 1, 2, 0], [0, 2, 0, 0]]),
        "attention_mask": i32([[1, 1, 1, 1], [1, 1, 1, 0]]),
        "action_mask": f32([[1, 1, 0, 0], [0, 1, 0, 0]]),
        "rewards": f32([[0, -1, 0, 0], [0, 0, 0, 0]]),
        "next_idx": i32([[1, 2, 3, 3], [1, 2, 3, 3]]),
        "dones": f32([[0, 0, 0, 1], [0, 0, 1, 0]]),
    }
    pi = f32([[[0, 0, 0], [0, 0, LN2], [g, -g, g], [-g, g, g]],
              [[g, -g, g], [math.log(5.0), 0, 0], [-g, g, g], [g, g, -g]]])
    return pi, batch


@pytest.mark.parametrize("normaliser, n", [("agent", 3.0), ("non_pad", 5.0)])
def test_bc_normaliser_on_rows_with_different_agent_shares(normaliser, n):
    """L_BC = Σ (agent NLL) / N: N = 3 agent tokens ("agent", ours) or N = 3 + 2 predicted non-pad tokens
    ("non_pad", the official awac_loss), on the reference and the packed (trained) paths alike; ``bc_nll``
    stays the per-agent-token NLL."""
    pi, batch = _two_agent_shares()
    nll_sum = LN3 + LN2 + math.log(1.4)
    cfg = losses.LossConfig(gamma=0.5, vocab_size=3, bc_normaliser=normaliser)
    zeros_q, zeros_v = jnp.zeros(pi.shape), jnp.zeros(pi.shape[:2])
    packed = losses.pack_actions(batch, capacity=2)
    pi_k = losses.gather_packed(pi, packed.idx)
    zk_q, zk = jnp.zeros(pi_k.shape), jnp.zeros(pi_k.shape[:2])
    no_bc = ilql_every(zeros_q, zeros_q, zeros_q, zeros_q, zeros_v, None, batch, cfg)[0]
    no_bc_k = losses.ilql_loss(zk_q, zk_q, zk, zk, zk, None, packed, cfg)[0]
    runs = {
        "ilql_loss every position": (ilql_every(zeros_q, zeros_q, zeros_q, zeros_q, zeros_v, pi, batch, cfg), no_bc),
        "ilql_loss packed": (losses.ilql_loss(zk_q, zk_q, zk, zk, zk, pi_k, packed, cfg), no_bc_k),
        "bc_only_loss every position": (bc_only_every(pi, batch, 3, normaliser), 0.0),
        "bc_only_loss packed": (losses.bc_only_loss(pi_k, packed, 3, normaliser), 0.0),
        "dense reference": (dense_losses.ilql_loss(zeros_q, zeros_q, zeros_q, zeros_q, zeros_v, pi, batch, cfg),
                            dense_losses.ilql_loss(zeros_q, zeros_q, zeros_q, zeros_q, zeros_v, None, batch, cfg)[0]),
    }
    for name, ((loss, metrics), rest) in runs.items():
        np.testing.assert_allclose(metrics["bc_loss"], nll_sum / n, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(loss - rest, nll_sum / n, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(metrics["bc_nll"], nll_sum / 3, rtol=1e-6, err_msg=name)
    # With AWAC weights (adv = 0 - 0 here, so w = 1) the same normaliser applies.
    awac = dataclasses.replace(cfg, beta_awac=1.0)
    _, metrics = losses.ilql_loss(zk_q, zk_q, zk, zk, zk, pi_k, packed, awac)
    np.testing.assert_allclose(metrics["bc_loss"], nll_sum / n, rtol=1e-6)


# ---------------------------------------------------------------------------
# The objective against its dense hand-written form (tests/dense_losses.py).
# ---------------------------------------------------------------------------


def _random_example(seed, b=3, t=9, vocab=7, padded=10):
    k = iter(jax.random.split(jax.random.PRNGKey(seed), 11))
    heads = [3.0 * jax.random.normal(next(k), (b, t, padded)) for _ in range(5)]  # q1, q2, tq1, tq2, pi
    m = (jax.random.uniform(next(k), (b, t)) < 0.6).astype(jnp.float32).at[:, -1].set(0.0)
    attention = (jnp.arange(t)[None, :] < jnp.array([[t], [t - 2], [t - 3]])[:b]).astype(jnp.int32)
    batch = {
        "tokens": jax.random.randint(next(k), (b, t), 0, vocab),
        "attention_mask": attention,
        "action_mask": m * attention,
        "rewards": jax.random.normal(next(k), (b, t)),
        # next(t) >= t: the next agent state or a later position.
        "next_idx": jnp.minimum(jnp.arange(t)[None, :] + jax.random.randint(next(k), (b, t), 1, 3), t - 1),
        "dones": (jax.random.uniform(next(k), (b, t)) < 0.2).astype(jnp.float32),
    }
    v = jax.random.normal(next(k), (b, t))
    return heads, v, batch


@pytest.mark.parametrize("cfg", [
    losses.LossConfig(gamma=0.9, tau=0.7, alpha_cql=0.3, vocab_size=7),
    losses.LossConfig(gamma=0.5, tau=0.6, alpha_cql=0.0, beta_awac=0.5, vocab_size=7, bc_normaliser="non_pad"),
], ids=["default", "awac-non-pad"])
def test_objective_equals_the_dense_reference(cfg):
    """`losses.ilql_loss` (at every position, and packed as the train step runs it) gives the dense formula's
    loss and metrics, and, at every position, its gradients; π_β absent (value-only) too."""
    (q1, q2, tq1, tq2, pi), v, batch = _random_example(0)
    for policy in (pi, None):
        want_loss, want = dense_losses.ilql_loss(q1, q2, tq1, tq2, v, policy, batch, cfg)
        packed = losses.pack_actions(batch, capacity=8)
        at = lambda x: losses.gather_packed(x, packed.idx)
        target_k = jnp.minimum(losses.gather_actions(at(tq1), packed.a_k), losses.gather_actions(at(tq2), packed.a_k))
        runs = {
            "every position": jax.jit(ilql_every, static_argnums=7)(q1, q2, tq1, tq2, v, policy, batch, cfg),
            "packed": losses.ilql_loss(at(q1), at(q2), target_k, at(v), jnp.take_along_axis(v, packed.next_k, axis=1),
                                       None if policy is None else at(policy), packed, cfg),
        }
        for name, (loss, metrics) in runs.items():
            assert sorted(metrics) == sorted(want), name
            np.testing.assert_allclose(loss, want_loss, rtol=1e-5, err_msg=name)
            for key in want:
                np.testing.assert_allclose(metrics[key], want[key], rtol=1e-5, atol=1e-6, err_msg=f"{name}: {key}")
    args = (q1, q2, tq1, tq2, v, pi)
    got = jax.grad(lambda *a: ilql_every(*a, batch, cfg)[0], argnums=(0, 1, 4, 5))(*args)
    want = jax.grad(lambda *a: dense_losses.ilql_loss(*a, batch, cfg)[0], argnums=(0, 1, 4, 5))(*args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert any(np.any(np.asarray(g) != 0) for g in got)


if __name__ == "__main__":
    absltest.main()
