"""`diagnostics.advantage_slope`: the share of A that is k·log π_β, measured where it is known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilql_jax import diagnostics
from ilql_jax.models import gpt2, ilql

CFG = gpt2.GPT2Config.tiny(vocab_size=120, n_layer=1, n_embd=32, n_positions=16)
MODEL = ilql.ModelConfig(trunk=CFG, shared_policy=True, target_on_online_trunk=True)


def _q_head_as_scaled_lm_head(head, wte, scale):
    """Q(h) = scale · h·wteᵀ, i.e. scale × π_β's logits: fc = [I, −I], out = scale·[wteᵀ; −wteᵀ], no bias."""
    d = wte.shape[1]
    head = jax.tree.map(jnp.zeros_like, head)
    head["fc"]["kernel"].value = jnp.concatenate([jnp.eye(d), -jnp.eye(d)], axis=1)
    head["out"]["kernel"].value = scale * jnp.concatenate([wte.T, -wte.T], axis=0)
    return head


@pytest.mark.parametrize("scale", [0.0, 0.3, 2.0])
def test_slope_recovers_a_known_multiple_of_log_pi_beta(scale):
    online, target = ilql.init(MODEL, jax.random.key(0))
    wte = online["value"]["trunk"]["wte"]["embedding"].value
    target = {name: _q_head_as_scaled_lm_head(target[name], wte, scale) for name in ("q1", "q2")}
    tokens = jax.random.randint(jax.random.key(1), (3, 10), 0, CFG.vocab_size)
    mask = np.ones((3, 10), np.int32)
    positions = np.zeros((3, 10), bool)
    positions[:, 4:] = True
    k = diagnostics.advantage_slope(MODEL, online, target, tokens, mask, positions, top_k=20)
    # A = scale·logits − V = scale·log π_β + (scale·logsumexp − V): slope exactly `scale` at every position.
    assert k.shape == (18,)
    np.testing.assert_allclose(k, scale, atol=1e-4)


def test_slope_of_random_heads_matches_a_numpy_fit():
    online, target = ilql.init(MODEL, jax.random.key(2))
    tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, CFG.vocab_size)
    mask = np.ones((2, 8), np.int32)
    positions = np.ones((2, 8), bool)
    k = diagnostics.advantage_slope(MODEL, online, target, tokens, mask, positions, top_k=30)
    out = ilql.apply(MODEL, online, target, tokens, mask)
    log_pi = np.asarray(jax.nn.log_softmax(out.pi_logits_t[..., :CFG.vocab_size], -1))
    adv = np.asarray(out.target_q_t - out.v_t[..., None])[..., :CFG.vocab_size]
    expected = []
    for b in range(2):
        for t in range(8):
            top = np.argsort(-log_pi[b, t])[:30]
            expected.append(np.polyfit(log_pi[b, t, top], adv[b, t, top], 1)[0])
    np.testing.assert_allclose(k, expected, rtol=1e-3, atol=1e-5)


def test_sigma_is_zero_when_a_is_a_multiple_of_log_pi_beta_and_matches_numpy_otherwise():
    online, target = ilql.init(MODEL, jax.random.key(0))
    wte = online["value"]["trunk"]["wte"]["embedding"].value
    exact = {name: _q_head_as_scaled_lm_head(target[name], wte, 0.3) for name in ("q1", "q2")}
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, CFG.vocab_size)
    mask, positions = np.ones((2, 8), np.int32), np.ones((2, 8), bool)
    scale = diagnostics.advantage_scale(MODEL, online, exact, tokens, mask, positions, top_k=20)
    np.testing.assert_allclose(scale.k, 0.3, atol=1e-4)
    np.testing.assert_allclose(scale.sigma, 0.0, atol=1e-4)  # nothing left once k·log π_β is taken out
    # Random heads: σ is the π_β-weighted standard deviation of the fit's residual over the top-k ids.
    scale = diagnostics.advantage_scale(MODEL, online, target, tokens, mask, positions, top_k=30)
    out = ilql.apply(MODEL, online, target, tokens, mask)
    log_pi = np.asarray(jax.nn.log_softmax(out.pi_logits_t[..., :CFG.vocab_size], -1), np.float64)
    adv = np.asarray(out.target_q_t - out.v_t[..., None], np.float64)
    expected = []
    for b in range(2):
        for t in range(8):
            top = np.argsort(-log_pi[b, t])[:30]
            x, y = log_pi[b, t, top], adv[b, t, top]
            k, c = np.polyfit(x, y, 1)
            residual = y - k * x - c
            w = np.exp(x) / np.exp(x).sum()
            expected.append(np.sqrt(np.sum(w * (residual - np.sum(w * residual)) ** 2)))
    np.testing.assert_allclose(scale.sigma, expected, rtol=2e-3, atol=1e-5)


def test_suggested_betas_bracket_one_over_sigma_and_flag_the_sharpening():
    sigma = np.concatenate([np.full(95, 0.01), np.full(5, 0.25)])  # the upper 5%: where π_β hesitates
    hint = diagnostics.suggest_betas(diagnostics.AdvantageScale(k=np.full(100, 0.5), sigma=sigma))
    assert hint.k == 0.5 and hint.beta_sharpen == 2.0
    assert hint.sigma == pytest.approx(np.percentile(sigma, diagnostics.SIGMA_QUANTILE))
    assert hint.beta_values == pytest.approx(1 / hint.sigma)
    assert hint.grid[0] == 0.0 and len(hint.grid) == 4
    assert hint.grid[1] <= hint.beta_values <= hint.grid[2] <= hint.grid[3]  # powers of two around 1/σ
    assert all(np.log2(b) == round(np.log2(b)) for b in hint.grid[1:])
    flat = diagnostics.suggest_betas(diagnostics.AdvantageScale(k=np.zeros(3), sigma=np.zeros(3)))
    assert flat.grid == (0.0,) and flat.beta_values == flat.beta_sharpen == np.inf  # values that prefer nothing


def test_distinct_n_counts_unique_word_ngrams():
    assert diagnostics.distinct_n(["a b a b", "a b"], 2) == pytest.approx(2 / 4)  # (a b) (b a) of 4 bigrams
    assert diagnostics.distinct_n(["a", ""], 2) == 0.0
