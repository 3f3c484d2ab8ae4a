"""bfloat16 compute keeps the values exact: the heads accumulate and return float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ilql_jax.models import gpt2, heads

CONFIG = gpt2.GPT2Config.tiny(dtype="bfloat16")


def _head_with_large_values(init, key, offset: float) -> nnx.State:
    """A head whose outputs sit near `offset` (|Q| ≈ 10, where a bfloat16 step is 0.0625)."""
    params = init(CONFIG, key)
    bias = params["out"]["bias"]
    bias.value = bias.value + offset + 0.37 * jax.random.normal(jax.random.fold_in(key, 1), bias.value.shape)
    return params


def _reference(params: nnx.State, hidden: jax.Array) -> np.ndarray:
    """The same bfloat16 input, weights and hidden activation; the output matmul and bias in float64."""
    fc = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: nnx.Linear(
        CONFIG.n_embd, 2 * CONFIG.n_embd, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))), params["fc"])
    x = jax.nn.relu(fc(hidden.astype(jnp.bfloat16)))
    assert x.dtype == jnp.bfloat16  # the hidden activation is bfloat16, as in the head
    kernel = np.asarray(params["out"]["kernel"].value.astype(jnp.bfloat16), np.float64)
    return np.asarray(x, np.float64) @ kernel + np.asarray(params["out"]["bias"].value, np.float64)


@pytest.mark.parametrize("head", ["q", "v", "q_at"])
def test_bfloat16_heads_return_float32_accumulated_values(head):
    key = jax.random.key(0)
    hidden = 3.0 * jax.random.normal(jax.random.key(1), (2, 5, CONFIG.n_embd), jnp.float32)
    if head == "v":
        params = _head_with_large_values(heads.init_v_head, key, -10.0)
        out = heads.v_t(params, CONFIG, hidden)[..., None]
        reference = _reference(params, hidden)
    else:
        params = _head_with_large_values(heads.init_q_head, key, -10.0)
        reference = _reference(params, hidden)[..., :CONFIG.vocab_size]
        if head == "q":
            out = heads.q_t(params, CONFIG, hidden)[..., :CONFIG.vocab_size]
        else:  # the target Q̄ at the taken actions only
            a_t = jax.random.randint(jax.random.key(2), hidden.shape[:2], 0, CONFIG.vocab_size)
            out = heads.q_t(params, CONFIG, hidden, a_t)[..., None]
            reference = np.take_along_axis(reference, np.asarray(a_t)[..., None], axis=-1)
    assert out.dtype == jnp.float32
    assert 8 < np.abs(reference).mean() < 12  # the |Q| ≈ 10 regime the bfloat16 step would spoil
    np.testing.assert_allclose(np.asarray(out, np.float64), reference, rtol=0, atol=1e-3)
    # Rounding the output to bfloat16 (what the heads did before) misses by a step of 2^-7 |Q|.
    rounded = np.asarray(jnp.asarray(reference, jnp.float32).astype(jnp.bfloat16), np.float64)
    assert np.abs(rounded - reference).max() > 1e-2
