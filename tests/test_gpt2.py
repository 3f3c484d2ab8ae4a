"""GPT-2 trunk: parity with transformers, KV-cache decoding, padding, logical axes."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ilql_jax.models import gpt2, hf_import
from ilql_jax.models import trunk as trunk_lib
from tests.hf_fixtures import random_hf_gpt2


@pytest.mark.parametrize("shape", [
        dict(vocab_size=300, n_embd=32, n_layer=2, n_head=4),             # tiny, padded 300 -> 384
        dict(vocab_size=50257, n_embd=768, n_layer=2, n_head=12),         # GPT-2 small shape, 2 layers
])
def test_logits_match_transformers(tmp_path, shape):
    hf_model = random_hf_gpt2(tmp_path, **shape, n_positions=64)
    config, params = hf_import.load_hf_gpt2(str(tmp_path), dropout=0.0)
    tokens = np.random.default_rng(0).integers(0, shape["vocab_size"], (2, 24))
    expected = np.asarray(hf_model(tokens).logits)
    _, logits = jax.jit(trunk_lib.forward, static_argnums=1)(params, config, jnp.asarray(tokens))
    v = shape["vocab_size"]
    assert logits.shape == (2, 24, config.padded_vocab_size)
    np.testing.assert_allclose(np.asarray(logits[..., :v]), expected, atol=1e-4, rtol=0)
    assert np.all(np.isneginf(np.asarray(logits[..., v:])))


def _ragged_batch(rng, vocab, lengths, width):
    """Left-padded prompts of the given real lengths."""
    tokens = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, width - n:] = rng.integers(1, vocab, n)
        mask[i, width - n:] = 1
    return tokens, mask


def test_prefill_then_decode_equals_full_forward():
    config = gpt2.GPT2Config.tiny(vocab_size=200)
    params = trunk_lib.init(config, jax.random.key(0))
    rng = np.random.default_rng(1)
    prompt, prompt_mask = _ragged_batch(rng, 200, [7, 3, 5], width=7)
    new = rng.integers(1, 200, (3, 6)).astype(np.int32)
    full_tokens = np.concatenate([prompt, new], axis=1)
    full_mask = np.concatenate([prompt_mask, np.ones_like(new)], axis=1)
    _, full_logits = trunk_lib.forward(params, config, jnp.asarray(full_tokens), jnp.asarray(full_mask))

    _, logits, cache = jax.jit(trunk_lib.prefill, static_argnums=(1, 4))(params, config, prompt, prompt_mask, 16)
    real = prompt_mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(full_logits[:, :7])[real], atol=1e-5)
    step = jax.jit(trunk_lib.decode_step, static_argnums=1)
    for i in range(new.shape[1]):
        _, logits_i, cache = step(params, config, cache, jnp.asarray(new[:, i]))
        np.testing.assert_allclose(np.asarray(logits_i)[:, :200], np.asarray(full_logits[:, 7 + i, :200]), atol=1e-5)
    assert int(cache.index) == 13


def test_left_padding_does_not_change_real_logits():
    config = gpt2.GPT2Config.tiny(vocab_size=200)
    params = trunk_lib.init(config, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(2).integers(1, 200, (1, 5)), jnp.int32)
    _, alone = trunk_lib.forward(params, config, tokens)
    padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), tokens], axis=1)
    mask = jnp.asarray([[0, 0, 0, 1, 1, 1, 1, 1]])
    _, with_pad = trunk_lib.forward(params, config, padded, mask)
    np.testing.assert_allclose(np.asarray(with_pad[0, 3:]), np.asarray(alone[0]), atol=1e-5)


def test_padded_vocab_is_masked_and_sized():
    config = gpt2.GPT2Config.tiny(vocab_size=35)
    assert config.padded_vocab_size == 128
    assert gpt2.GPT2Config(vocab_size=50257).padded_vocab_size == 50304
    params = trunk_lib.init(config, jax.random.key(0))
    _, logits = trunk_lib.forward(params, config, jnp.zeros((1, 4), jnp.int32))
    assert np.all(np.isneginf(np.asarray(logits[..., 35:])))
    assert np.all(np.isfinite(np.asarray(logits[..., :35])))


def test_every_parameter_has_logical_axes():
    config = gpt2.GPT2Config.tiny()
    params = trunk_lib.abstract_params(config)
    for path, var in nnx.to_flat_state(params):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == len(var.value.shape), path
    with nn.logical_axis_rules([("embed", "fsdp"), ("vocab", None), ("mlp", None), ("heads", None)]):
        specs = nnx.get_partition_spec(params)
    assert specs["wte"]["embedding"].value == jax.sharding.PartitionSpec(None, "fsdp")


def test_dropout_needs_a_key_and_is_deterministic_given_one():
    config = gpt2.GPT2Config.tiny(dropout=0.5)
    params = trunk_lib.init(config, jax.random.key(0))
    tokens = jnp.ones((1, 6), jnp.int32)
    _, a = trunk_lib.forward(params, config, tokens)
    _, b = trunk_lib.forward(params, config, tokens)
    _, c = trunk_lib.forward(params, config, tokens, dropout_key=jax.random.key(1))
    _, d = trunk_lib.forward(params, config, tokens, dropout_key=jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c, d)
    assert not np.allclose(a, c)


def test_remat_gives_the_same_gradients():
    config = gpt2.GPT2Config.tiny()
    params = trunk_lib.init(config, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 8)), jnp.int32)

    def loss(p, cfg):
        return trunk_lib.forward(p, cfg, tokens)[1][..., :256].mean()

    g1 = jax.grad(loss)(params, config)
    g2 = jax.grad(loss)(params, gpt2.GPT2Config.tiny(remat=True))
    chex.assert_trees_all_close(g1, g2, atol=1e-6)


def test_bfloat16_compute_keeps_float32_logits():
    config = gpt2.GPT2Config.tiny(dtype="bfloat16")
    params = trunk_lib.init(config, jax.random.key(0))
    hidden, logits = trunk_lib.forward(params, config, jnp.ones((1, 4), jnp.int32))
    assert hidden.dtype == jnp.float32 and logits.dtype == jnp.float32
    assert jax.tree.leaves(params)[0].dtype == jnp.float32


def test_config_errors():
    with pytest.raises(ValueError, match="n_head"):
        gpt2.GPT2Config(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="dtype"):
        gpt2.GPT2Config(dtype="float64x")
    config = gpt2.GPT2Config.tiny(n_positions=8)
    params = trunk_lib.init(config, jax.random.key(0))
    with pytest.raises(ValueError, match="n_positions"):
        trunk_lib.forward(params, config, jnp.ones((1, 9), jnp.int32))


@pytest.mark.parametrize("shape", [(5, 12), (2, 3, 12)])
def test_gelu_linear_equals_gelu_then_linear_values_and_gradients(shape):
    """The MLP's fused GELU + c_proj (GELU recomputed in the backward pass) against autodiff of the plain formula."""
    kh, kw, kb, kg = jax.random.split(jax.random.key(0), 4)
    h = 2 * jax.random.normal(kh, shape)
    w = jax.random.normal(kw, (12, 7)) / 3
    b = jax.random.normal(kb, (7,))
    cot = jax.random.normal(kg, shape[:-1] + (7,))
    plain = lambda h, w, b: jax.nn.gelu(h, approximate=True) @ w + b
    np.testing.assert_allclose(jax.jit(gpt2.gelu_linear)(h, w, b), plain(h, w, b), rtol=1e-6, atol=1e-6)
    got = jax.jit(jax.vjp(gpt2.gelu_linear, h, w, b)[1])(cot)
    want = jax.vjp(plain, h, w, b)[1](cot)
    for g, e, name in zip(got, want, ("h", "kernel", "bias")):
        assert g.shape == e.shape and g.dtype == e.dtype, name
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5, err_msg=name)
