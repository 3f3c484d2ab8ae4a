"""The lean train step (issue 21): the same losses and gradients as the full-vocabulary computation.

`train.loss_fn` packs the action states (`losses.pack_actions`), runs the
vocabulary-sized heads only there and reads the target Q̄ at the taken action
only (`heads.q_t` with the actions); `train.reference_loss_fn` runs every head at every
position (`ilql.apply`, the objective read by `losses.every_position`). Here they are compared on a batch
with ragged action counts: two-turn Wordle games (next(t) skips the feedback),
episodes cut by max_len mid-utterance, a non-terminal episode and a short one.
"""

import dataclasses

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from ilql_jax import losses, tokenizers, train
from ilql_jax.config import TrainConfig
from ilql_jax.loop import train_and_evaluate
from ilql_jax.data import episodes
from ilql_jax.models import gpt2, heads, ilql
from ilql_jax.models import trunk as trunk_lib

TOK = tokenizers.wordle_tokenizer()
MAX_LEN = 24
# n_embd 24: no activation width (d, 2d, 3d, 4d) equals V_pad = 128, so shapes tell the vocabulary apart.
TRUNK = gpt2.GPT2Config.tiny(vocab_size=TOK.vocab_size, n_layer=1, n_embd=24, n_positions=32)

_agent, _env = episodes.agent, episodes.env
GAMES = [
    # Two guesses (12 actions; the </a> of "crane" bootstraps from the state before "slate").
    episodes.Episode((_agent("crane", -1.0), _env("<b><y><b><b><g>"), _agent("slate", 0.0),
                      _env("<g><g><g><g><g>")), terminal=True),
    # Cut by MAX_LEN inside the fourth guess: not terminal, its last action bootstraps.
    episodes.Episode((_agent("crane", -1.0), _env("<b><b><b><b><b>"), _agent("pious", -1.0),
                      _env("<b><b><b><b><b>"), _agent("dwelt", -1.0), _env("<g><g><g><g><g>")), terminal=True),
    # One guess, won: 6 actions.
    episodes.Episode((_agent("slate", 0.0), _env("<g><g><g><g><g>")), terminal=True),
    # Non-terminal, ends after the agent: next of </a> is the final position, no done.
    episodes.Episode((_agent("crane", -1.0), _env("<b><y><b><b><g>"), _agent("bog", -1.0)), terminal=False),
    # Environment speaks first: the first action state is the </s> after it.
    episodes.Episode((_env("<b><b><b><b><b>"), _agent("ab", -1.0)), terminal=True),
]


def _batch():
    return {k: jnp.asarray(v) for k, v in episodes.episodes_to_arrays(GAMES, TOK, MAX_LEN).items()}


def _counts(batch):
    return np.asarray(batch["action_mask"]).sum(axis=1).astype(int)


def _fill(path, shape, rng):
    """Unit-scale random weights (see tests/test_sampler.py): every head and trunk matters, Q is O(1)."""
    name = jax.tree_util.keystr(path)
    if "['scale']" in name:
        return np.ones(shape)
    if "embedding" in name:
        return rng.normal(0, 0.25, shape)
    return rng.normal(0, 1 / np.sqrt(shape[0]) if len(shape) == 2 else 0.5, shape)


def _random(tree, seed):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(lambda p, x: jnp.asarray(_fill(p, x.shape, rng), x.dtype), tree)


def test_batch_is_ragged_multi_turn_and_truncated():
    """The batch really has what the exactness tests below claim to cover."""
    batch = _batch()
    counts = _counts(batch)
    assert len(set(counts.tolist())) >= 4, counts                     # ragged
    nxt, m = np.asarray(batch["next_idx"]), np.asarray(batch["action_mask"]) > 0
    t = np.arange(MAX_LEN)
    assert np.any(m & (nxt > t + 1))                                   # next(t) skips environment tokens
    assert np.asarray(batch["attention_mask"])[1].all()                 # row 1 is cut by MAX_LEN ...
    assert not np.asarray(batch["dones"])[1].any()                      # ... and so not terminal
    assert not np.asarray(batch["dones"])[3].any()                      # row 3: non-terminal episode


def test_pack_actions_on_the_worked_example():
    batch = _batch()
    packed = losses.pack_actions(batch, capacity=16)
    counts = _counts(batch)
    # Spec §1 worked example (row 0): action states 0..5 and 12..17; next(5) = 12; next(17) = 25 is cut to 23.
    assert np.asarray(packed.idx)[0, :12].tolist() == [0, 1, 2, 3, 4, 5, 12, 13, 14, 15, 16, 17]
    assert np.asarray(packed.next_k)[0, 5] == 12
    np.testing.assert_array_equal(np.asarray(packed.m_k).sum(axis=1), counts)
    assert not bool(packed.overflow)
    for b in range(len(GAMES)):
        n = counts[b]
        idx = np.asarray(packed.idx)[b, :n]
        np.testing.assert_array_equal(idx, np.flatnonzero(np.asarray(batch["action_mask"])[b]))
        np.testing.assert_array_equal(np.asarray(packed.a_k)[b, :n], np.asarray(batch["tokens"])[b, idx + 1])
        np.testing.assert_array_equal(np.asarray(packed.r_k)[b, :n], np.asarray(batch["rewards"])[b, idx])
        nxt = np.asarray(batch["next_idx"])[b, idx]
        np.testing.assert_array_equal(np.asarray(packed.next_k)[b, :n], nxt)
        np.testing.assert_array_equal(np.asarray(packed.done_next_k)[b, :n], np.asarray(batch["dones"])[b, nxt])
        assert np.all(np.asarray(packed.a_k)[b, n:] == 0)
    assert bool(losses.pack_actions(batch, capacity=int(counts.max()) - 1).overflow)


def test_gathered_target_q_equals_full_vocabulary_gather():
    """Q̄(h_t)[a_t] from the output columns of a_t alone = the full-vocabulary Q̄ gathered at a_t (1e-6)."""
    cfg = TRUNK
    params = _random(jax.eval_shape(lambda: heads.init_q_head(cfg, jax.random.key(0))), 3)
    hidden = jax.random.normal(jax.random.key(1), (3, 7, cfg.n_embd))
    # Every real id, the last real one included; none in the padded tail (vocab 35 → 128).
    a = jax.random.randint(jax.random.key(2), (3, 7), 0, cfg.vocab_size).at[0, 0].set(cfg.vocab_size - 1)
    full = heads.q_t(params, cfg, hidden)
    assert full.shape[-1] == cfg.padded_vocab_size > cfg.vocab_size
    want = jnp.take_along_axis(full, a[..., None], axis=-1)[..., 0]
    got = jax.jit(heads.q_t, static_argnums=1)(params, cfg, hidden, a)
    assert got.dtype == jnp.float32 and float(jnp.abs(want).max()) > 0.5
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vocab_major_q_head_equals_the_stored_head(dtype):
    """The decode step's transposed copy of a Q head (`heads.vocab_major`) gives `q_t`'s values, float32
    accumulated whatever the compute dtype, with the padded tail -inf (1e-6)."""
    cfg = dataclasses.replace(TRUNK, dtype=dtype)
    params = _random(jax.eval_shape(lambda: heads.init_q_head(cfg, jax.random.key(0))), 4)
    hidden = jax.random.normal(jax.random.key(1), (5, cfg.n_embd))
    want = heads.q_t(params, cfg, hidden[:, None])[:, 0]
    vocab_major = heads.vocab_major(params, cfg)
    assert vocab_major.out_t.dtype == jnp.dtype(dtype)  # cast once, not at every step
    got = jax.jit(heads.q_t, static_argnums=1)(vocab_major, cfg, hidden)
    assert got.dtype == jnp.float32 and got.shape == (5, cfg.padded_vocab_size)
    np.testing.assert_array_equal(np.isneginf(got), np.arange(cfg.padded_vocab_size)[None].repeat(5, 0) >= cfg.vocab_size)
    finite = np.isfinite(np.asarray(want))
    assert float(np.abs(np.asarray(want)[finite]).max()) > 0.5
    np.testing.assert_allclose(np.asarray(got)[finite], np.asarray(want)[finite], atol=1e-6, rtol=0)


@pytest.mark.parametrize("tail", [0.0, 1e30, -1e30])
def test_logsumexp_and_gather_matches_autodiff_of_the_plain_formula(tail):
    x = jax.random.normal(jax.random.key(0), (2, 5, 128)) * 3
    x = x.at[..., 35:].set(tail)  # the padded tail may hold anything; it must not count
    a = jax.random.randint(jax.random.key(1), (2, 5), 0, 35)
    g_lse, g_a = jax.random.normal(jax.random.key(2), (2, 2, 5))

    def plain(x):
        xm = jnp.where(jnp.arange(128) < 35, x, -jnp.inf)
        return jax.nn.logsumexp(xm, axis=-1), jnp.take_along_axis(x, a[..., None], axis=-1)[..., 0]

    def scalar(f):
        return lambda x: jnp.sum(g_lse * f(x)[0] + g_a * f(x)[1])

    fused = lambda x: losses.logsumexp_and_gather(x, a, 35)
    for got, want in zip(jax.jit(fused)(x), plain(x)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    g_got = jax.jit(jax.grad(scalar(fused)))(x)
    g_want = jax.grad(scalar(plain))(x)
    np.testing.assert_allclose(g_got, g_want, atol=1e-6)
    np.testing.assert_array_equal(g_got[..., 35:], 0.0)


def _loss_and_grads(loss_fn, cfg, params, target, batch, key):
    def f(p):
        return loss_fn(cfg, {**params, **p}, target, batch, key)

    (_, metrics), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(train.trained_params(cfg, params))
    return jax.device_get(metrics), jax.device_get(grads)


def _assert_same(ref, lean, what):
    (m_ref, g_ref), (m_lean, g_lean) = ref, lean
    assert set(m_ref) == set(m_lean)
    for k in m_ref:
        np.testing.assert_allclose(m_lean[k], m_ref[k], rtol=2e-6, atol=1e-6, err_msg=f"{what}: metric {k}")
    flat_ref = jax.tree_util.tree_flatten_with_path(g_ref)[0]
    flat_lean = jax.tree.leaves(g_lean)
    assert len(flat_ref) == len(flat_lean)
    nonzero = 0
    for (path, r), l in zip(flat_ref, flat_lean):
        scale = float(np.abs(r).max())
        nonzero += scale > 0
        np.testing.assert_allclose(l, r, atol=1e-5 * max(scale, 1e-3), rtol=0,
                                   err_msg=f"{what}: gradient {jax.tree_util.keystr(path)}")
    assert nonzero > len(flat_ref) // 2, f"{what}: most gradients are zero; the comparison shows nothing"


MODELS = {
    "separate": ilql.ModelConfig(trunk=TRUNK),
    "shared": ilql.ModelConfig(trunk=TRUNK, shared_policy=True, target_on_online_trunk=True),
    "frozen": ilql.ModelConfig(trunk=TRUNK, frozen_policy=True),
}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_packed_step_gives_the_full_losses_and_gradients(model):
    batch = _batch()
    tight = int(_counts(batch).max())
    base = train.StepConfig(model=MODELS[model], loss=losses.LossConfig(tau=0.7, alpha_cql=0.5, beta_awac=0.3))
    init = jax.eval_shape(lambda: train.init_state(base, jax.random.key(0)))
    params, target = _random(init.params, 1), _random(init.target_params, 2)
    ref = _loss_and_grads(train.reference_loss_fn, base, params, target, batch, None)
    assert ref[0]["n_actions"] == _counts(batch).sum()
    # Tight capacity (the longest row fills its slots exactly), a rounded one, and the whole row.
    for capacity in (tight, tight + 3, None):
        cfg = dataclasses.replace(base, action_capacity=capacity)
        _assert_same(ref, _loss_and_grads(train.loss_fn, cfg, params, target, batch, None), f"{model} K={capacity}")


def test_packed_step_with_dropout_draws_the_same_masks():
    model = ilql.ModelConfig(trunk=dataclasses.replace(TRUNK, dropout=0.2))
    cfg = train.StepConfig(model=model, action_capacity=16)
    init = jax.eval_shape(lambda: train.init_state(cfg, jax.random.key(0)))
    params, target = _random(init.params, 1), _random(init.target_params, 2)
    batch, key = _batch(), jax.random.key(5)
    ref = _loss_and_grads(train.reference_loss_fn, cfg, params, target, batch, key)
    _assert_same(ref, _loss_and_grads(train.loss_fn, cfg, params, target, batch, key), "dropout")
    no_drop = _loss_and_grads(train.loss_fn, cfg, params, target, batch, None)
    assert abs(no_drop[0]["loss"] - ref[0]["loss"]) > 1e-4  # dropout was on


def test_packed_bc_step_gives_the_full_loss_and_gradients():
    cfg = train.StepConfig(mode="bc", model=ilql.ModelConfig(trunk=TRUNK), action_capacity=16)
    params = {"policy": _random(jax.eval_shape(lambda: trunk_lib.init(TRUNK, jax.random.key(0))), 4)}
    batch = _batch()
    ref = _loss_and_grads(train.reference_loss_fn, cfg, params, {}, batch, None)
    _assert_same(ref, _loss_and_grads(train.loss_fn, cfg, params, {}, batch, None), "bc")


def test_a_row_over_capacity_poisons_the_loss_and_gradients():
    batch = _batch()
    cfg = train.StepConfig(model=MODELS["separate"], action_capacity=int(_counts(batch).max()) - 1)
    init = jax.eval_shape(lambda: train.init_state(cfg, jax.random.key(0)))
    params, target = _random(init.params, 1), _random(init.target_params, 2)
    metrics, grads = _loss_and_grads(train.loss_fn, cfg, params, target, batch, None)
    assert np.isnan(metrics["loss"])
    # Every leaf gets NaN where it gets any gradient (unused embedding rows keep an exact 0).
    assert all(np.isnan(g).any() for g in jax.tree.leaves(grads))


def test_with_action_capacity_fits_and_checks():
    masks = np.asarray(_batch()["action_mask"])
    most = int(_counts(_batch()).max())
    fitted = train.with_action_capacity(train.StepConfig(), {"train_data": masks, "eval_data": masks[:2]})
    assert fitted.action_capacity == min(-(-most // 8) * 8, MAX_LEN) >= most
    assert train.with_action_capacity(train.StepConfig(), {"x": masks[:, :4]}).action_capacity == 4  # at most T
    explicit = train.StepConfig(action_capacity=most)
    assert train.with_action_capacity(explicit, {"x": masks}) is explicit
    with pytest.raises(ValueError, match=r"eval_data row 0 has \d+ action positions, more than "
                                         r"step.action_capacity=3"):
        train.with_action_capacity(train.StepConfig(action_capacity=3), {"train_data": masks[:0], "eval_data": masks})
    with pytest.raises(ValueError, match="action_capacity"):
        train.StepConfig(action_capacity=0)


def test_the_loop_refuses_data_over_an_explicit_capacity_before_writing_anything(tmp_path):
    config = TrainConfig(step=train.StepConfig(model=MODELS["separate"], action_capacity=3), batch_size=2,
                         max_len=MAX_LEN, num_steps=1, progress=False)
    arrays = episodes.episodes_to_arrays(GAMES, TOK, MAX_LEN)
    with pytest.raises(ValueError, match=r"train_data row 0 has 12 action positions, more than "
                                         r"step.action_capacity=3"):
        train_and_evaluate(config, str(tmp_path / "run"), arrays)
    assert not (tmp_path / "run").exists()


def _shapes_in(jaxpr):
    """Every intermediate's shape in a closed jaxpr, sub-jaxprs (custom_vjp, remat, pjit) included."""
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            yield tuple(getattr(v.aval, "shape", ()))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _shapes_in(sub)


@pytest.mark.parametrize("mode", ["ilql", "bc"])
def test_the_train_step_forms_no_batch_by_length_by_vocabulary_tensor(mode):
    """The step's forward and backward never hold a [B, T, V_pad] array; the reference's do (so this check can fail)."""
    batch = _batch()
    cfg = train.StepConfig(mode=mode, model=MODELS["separate"], action_capacity=16)
    state = jax.eval_shape(lambda: train.init_state(cfg, jax.random.key(0)))
    b, t = batch["tokens"].shape
    full = (b, t, TRUNK.padded_vocab_size)

    def shapes(loss_fn):
        grad = jax.grad(lambda p, target: loss_fn(cfg, p, target, batch, None)[0])
        return set(_shapes_in(jax.make_jaxpr(grad)(state.params, state.target_params).jaxpr))

    assert full in shapes(train.reference_loss_fn)
    lean = shapes(train.loss_fn)
    assert full not in lean
    assert (b, 16, TRUNK.padded_vocab_size) in lean
