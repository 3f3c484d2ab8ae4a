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
    adv = np.asarray(jnp.minimum(out.target_q1_t, out.target_q2_t) - out.v_t[..., None])[..., :CFG.vocab_size]
    expected = []
    for b in range(2):
        for t in range(8):
            top = np.argsort(-log_pi[b, t])[:30]
            expected.append(np.polyfit(log_pi[b, t, top], adv[b, t, top], 1)[0])
    np.testing.assert_allclose(k, expected, rtol=1e-3, atol=1e-5)
