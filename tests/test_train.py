"""The ILQL train step: Polyak exactness, gradient routing, determinism, and a tabular check."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilql_jax import losses, tokenizers, train
from ilql_jax.data import episodes
from ilql_jax.models import gpt2, ilql
from ilql_jax.state import OptimConfig

TOK = tokenizers.wordle_tokenizer()


def _trunk(**kw):
    return gpt2.GPT2Config.tiny(vocab_size=TOK.vocab_size, n_layer=1, n_embd=32, n_positions=32, **kw)


def _batch(eps, max_len=16):
    return {k: jnp.asarray(v) for k, v in episodes.episodes_to_arrays(eps, TOK, max_len).items()}


WORDLE = episodes.Episode((episodes.agent("crane", -1.0), episodes.env("<b><y><b><b><g>"),
                           episodes.agent("slate", 0.0), episodes.env("<g><g><g><g><g>")), terminal=True)


def test_polyak_moves_target_by_alpha_only_on_real_optimizer_steps():
    cfg = train.StepConfig(model=ilql.ModelConfig(trunk=_trunk()), optim=OptimConfig(learning_rate=1e-2, grad_accum=2),
                           polyak_alpha=0.25)
    step = train.make_train_step(cfg, donate=False)
    batch = _batch([WORDLE] * 2, max_len=32)
    s0 = train.init_state(cfg, jax.random.key(0))

    s1, _ = step(s0, batch)  # accumulation micro-step: nothing moves
    chex.assert_trees_all_equal(s1.params, s0.params)
    chex.assert_trees_all_equal(s1.target_params, s0.target_params)

    s2, _ = step(s1, batch)  # real optimizer step: θ̄' = θ̄ + α (θ' − θ̄)
    theta = ilql.target_tracked(cfg.model, s2.params)
    expected = jax.tree.map(lambda t, o: o + 0.25 * (t - o), theta, s1.target_params)
    chex.assert_trees_all_close(s2.target_params, expected, atol=1e-7, rtol=1e-6)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), s2.target_params, s1.target_params)
    assert all(m > 0 for m in jax.tree.leaves(moved)), "some target leaf did not move"
    assert set(s2.target_params) == {"trunk", "q1", "q2"}


@pytest.mark.parametrize("alpha", [0.25, 1.0])
def test_target_moves_every_k_optimizer_steps_only(alpha):
    """With target_update_every=3 (and 2 micro-steps per optimizer step) the target moves by exactly
    α·(θ − θ̄) after optimizer steps 3 and 6, and not at all on the other micro-steps; α = 1 is a hard copy."""
    cfg = train.StepConfig(model=ilql.ModelConfig(trunk=_trunk()), optim=OptimConfig(learning_rate=1e-2, grad_accum=2),
                           polyak_alpha=alpha, target_update_every=3)
    step = train.make_train_step(cfg, donate=False)
    batch = _batch([WORDLE] * 2, max_len=32)
    state = train.init_state(cfg, jax.random.key(0))
    for micro in range(1, 13):
        before = state.target_params
        state, _ = step(state, batch)
        if micro % 6:
            chex.assert_trees_all_equal(state.target_params, before)
            continue
        theta = ilql.target_tracked(cfg.model, state.params)
        chex.assert_trees_all_close(state.target_params, jax.tree.map(lambda t, o: o + alpha * (t - o), theta, before),
                                    atol=1e-7, rtol=1e-6)
        if alpha == 1.0:
            chex.assert_trees_all_equal(state.target_params, theta)
        assert min(float(jnp.max(jnp.abs(a - b))) for a, b in
                   zip(jax.tree.leaves(state.target_params), jax.tree.leaves(before))) > 0


def _loss_terms(cfg, params, target, batch):
    return train.loss_fn(cfg, params, target, batch, None)[1]


def test_gradients_route_as_the_spec_says():
    cfg = train.StepConfig(model=ilql.ModelConfig(trunk=_trunk()))
    state = train.init_state(cfg, jax.random.key(1))
    batch = _batch([WORDLE] * 2, max_len=32)
    nonzero = lambda tree: any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(tree))

    # L_BC reaches only π_β.
    g_bc = jax.grad(lambda p: _loss_terms(cfg, p, state.target_params, batch)["bc_loss"])(state.params)
    assert nonzero(g_bc["policy"])
    assert not nonzero(g_bc["value"])
    # The value losses never reach π_β.
    value_loss = lambda p: sum(_loss_terms(cfg, p, state.target_params, batch)[k] for k in ("q_loss", "v_loss", "cql_loss"))
    g_val = jax.grad(value_loss)(state.params)
    assert nonzero(g_val["value"]) and not nonzero(g_val["policy"])
    # No gradient into the target networks (Q̄ is a stop-gradient target).
    g_tgt = jax.grad(lambda t: _loss_terms(cfg, state.params, t, batch)["loss"])(state.target_params)
    assert not nonzero(g_tgt)
    # The V loss does not reach the Q heads, and the Q loss reaches V only through nothing (sg on y).
    g_v = jax.grad(lambda p: _loss_terms(cfg, p, state.target_params, batch)["v_loss"])(state.params)
    assert not nonzero(g_v["value"]["q1"]) and not nonzero(g_v["value"]["q2"])
    g_q = jax.grad(lambda p: _loss_terms(cfg, p, state.target_params, batch)["q_loss"])(state.params)
    assert not nonzero(g_q["value"]["v"])


def test_shared_policy_puts_bc_on_the_value_trunk():
    cfg = train.StepConfig(model=ilql.ModelConfig(trunk=_trunk(), shared_policy=True, target_on_online_trunk=True))
    state = train.init_state(cfg, jax.random.key(1))
    assert "policy" not in state.params and "trunk" not in state.target_params
    batch = _batch([WORDLE], max_len=32)
    g = jax.grad(lambda p: _loss_terms(cfg, p, state.target_params, batch)["bc_loss"])(state.params)
    assert float(jnp.abs(g["value"]["trunk"]["wte"]["embedding"]).max()) > 0


def test_same_seed_gives_bitwise_identical_metrics():
    cfg = train.StepConfig(model=ilql.ModelConfig(trunk=_trunk(dropout=0.1)))
    step = train.make_train_step(cfg)
    batch = _batch([WORDLE] * 2, max_len=32)

    def run(seed):
        state, out = train.init_state(cfg, jax.random.key(seed)), []
        for _ in range(20):
            state, m = step(state, batch)
            out.append(jax.device_get(m))
        return out

    a, b, c = run(0), run(0), run(1)
    for ma, mb in zip(a, b):
        for k in ma:
            np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)
    assert any(not np.array_equal(ma["loss"], mc["loss"]) for ma, mc in zip(a, c))


def test_remat_step_equals_the_plain_step():
    """Rematerialised blocks (also in the target trunk and π_β, which run inside jax.grad
    without being differentiated) give the plain step's state, dropout included."""
    batch = _batch([WORDLE] * 2, max_len=32)
    states = []
    for remat in (False, True):
        cfg = train.StepConfig(model=ilql.ModelConfig(trunk=_trunk(remat=remat, dropout=0.1)))
        state = train.init_state(cfg, jax.random.key(4))
        state, metrics = train.make_train_step(cfg)(state, batch)
        states.append((state, metrics))
    chex.assert_trees_all_close(states[1][1], states[0][1], atol=1e-6)
    chex.assert_trees_all_close(states[1][0].params, states[0][0].params, atol=1e-6)


def test_bc_mode_trains_only_the_policy():
    cfg = train.StepConfig(mode="bc", model=ilql.ModelConfig(trunk=_trunk()), optim=OptimConfig(learning_rate=3e-3))
    state = train.init_state(cfg, jax.random.key(0))
    assert set(state.params) == {"policy"} and state.target_params == {}
    step = train.make_train_step(cfg)
    batch = _batch([WORDLE] * 2, max_len=32)
    first = None
    for _ in range(30):
        state, m = step(state, batch)
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < 0.5 * first


def test_frozen_policy_stays_where_it_started_while_the_values_learn():
    model = ilql.ModelConfig(trunk=_trunk(), frozen_policy=True)
    # Weight decay would move a frozen π_β too if only its zero gradient kept it still.
    cfg = train.StepConfig(model=model, optim=OptimConfig(learning_rate=1e-2, weight_decay=0.1))
    s0 = train.init_state(cfg, jax.random.key(0))
    # The optimizer holds no moments for it.
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(s0.opt_state)[0]]
    assert paths and not any("'policy'" in p for p in paths)
    step = train.make_train_step(cfg, donate=False)
    s1, m = step(s0, _batch([WORDLE] * 2, max_len=32))
    chex.assert_trees_all_equal(s1.params["policy"], s0.params["policy"])
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), s1.params["value"], s0.params["value"])
    assert all(d > 0 for d in jax.tree.leaves(moved["q1"])) and max(jax.tree.leaves(moved["trunk"])) > 0
    assert float(m["bc_loss"]) == 0.0
    with pytest.raises(ValueError, match="frozen_policy"):
        ilql.ModelConfig(trunk=_trunk(), shared_policy=True, frozen_policy=True)


def test_step_config_errors():
    with pytest.raises(ValueError, match="mode"):
        train.StepConfig(mode="ppo")
    with pytest.raises(ValueError, match="polyak_alpha"):
        train.StepConfig(polyak_alpha=0.0)
    with pytest.raises(ValueError, match="target_update_every"):
        train.StepConfig(target_update_every=0)
    with pytest.raises(ValueError, match="schedule"):
        OptimConfig(schedule="linear")


# --- Tabular check ---------------------------------------------------------------------------------
#
# A two-step MDP: the agent says one letter ("a" good, "b" bad), the environment answers "c", the agent
# says one more letter, and the episode ends. r = 0 for "a", −1 for "b" at each step; γ = 1, so returns
# are in {0, −1, −2}. The behaviour policy says "a" with probability 0.8 at each step, independently; the
# data hold exactly those frequencies (16 aa, 4 ab, 4 ba, 1 bb per 25 episodes).
#
# V at the start state (position 0, "<a>"):
#   τ = 0.5 → the behaviour value, E[return] = −0.2 − 0.2 = −0.4;
#   τ = 0.9 → the 0.9-expectile compounded over two steps: per step e = −0.1·0.2/(0.9·0.8 + 0.1·0.2) ≈ −0.027,
#             so V(start) ≈ −0.054, within 0.1 of the best in-support return 0.


def _tabular_episodes():
    ep = lambda x, y: episodes.Episode((episodes.agent(x, 0.0 if x == "a" else -1.0), episodes.env("c"),
                                         episodes.agent(y, 0.0 if y == "a" else -1.0)), terminal=True)
    return [ep("a", "a")] * 16 + [ep("a", "b")] * 4 + [ep("b", "a")] * 4 + [ep("b", "b")]


@pytest.mark.parametrize("tau, expected", [(0.9, 0.0), (0.5, -0.4)])
def test_tabular_values(tau, expected):
    cfg = train.StepConfig(
        model=ilql.ModelConfig(trunk=_trunk()),
        loss=losses.LossConfig(gamma=1.0, tau=tau, alpha_cql=0.0),
        optim=OptimConfig(learning_rate=3e-3),
        polyak_alpha=0.05,
    )
    batch = _batch(_tabular_episodes(), max_len=8)
    assert np.asarray(batch["action_mask"])[0].tolist()[:6] == [1, 1, 0, 0, 1, 1]
    step = train.make_train_step(cfg)
    state = train.init_state(cfg, jax.random.key(0))
    for _ in range(600):
        state, _ = step(state, batch)
    out = ilql.apply(cfg.model, state.params, state.target_params, batch["tokens"], batch["attention_mask"])
    v_start = float(out.v_t[0, 0])
    assert abs(v_start - expected) < 0.1, (tau, v_start)
