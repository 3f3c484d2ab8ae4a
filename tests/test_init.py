"""Initialisation schemes: the heads' (`heads.HEAD_INITS`) and the GPT-2 trunk's (docs/algorithm.md §2)."""

import jax
import numpy as np
import pytest

from ilql_jax.models import gpt2, heads, ilql
from ilql_jax.models import trunk as trunk_lib

CFG = gpt2.GPT2Config.tiny(n_embd=96, n_head=4, n_layer=3, vocab_size=300)


def _heads(init):
    online, _ = ilql.init(ilql.ModelConfig(trunk=CFG, head_init=init), jax.random.key(0))
    return {name: online["value"][name] for name in ("v", "q1", "q2")}


def _layers(head):
    """(fan_in, kernel, bias) of each linear layer of a head, as numpy."""
    return [(layer["kernel"].value.shape[0], np.asarray(layer["kernel"].value), np.asarray(layer["bias"].value))
            for layer in (head["fc"], head["out"])]


def test_pytorch_heads_are_uniform_within_one_over_root_fan_in():
    for name, head in _heads("pytorch").items():
        for fan_in, kernel, bias in _layers(head):
            bound = fan_in ** -0.5
            for what, w in (("kernel", kernel), ("bias", bias)):
                assert np.abs(w).max() <= bound, (name, what)
                # U(±b): mean |w| = b/2 and var = b²/3 (the 1-wide V output's single bias: bounds only).
                if w.size >= 100:
                    assert abs(np.abs(w).mean() / bound - 0.5) < 0.1, (name, what, np.abs(w).mean() / bound)
            assert abs(kernel.var() / (bound ** 2 / 3) - 1) < (0.05 if kernel.size > 4000 else 0.3), (name, kernel.var())


def test_flax_heads_are_lecun_normal_with_zero_bias():
    for name, head in _heads("flax").items():
        for fan_in, kernel, bias in _layers(head):
            np.testing.assert_array_equal(bias, 0)
            if kernel.size > 4000:
                assert abs(kernel.std() * fan_in ** 0.5 - 1) < 0.05, (name, kernel.std())


def test_pytorch_heads_start_smaller_than_flax_heads():
    # The measured cause of issue 18: Flax's default starts |Q| ~3x larger on the same hidden states.
    h = jax.random.normal(jax.random.key(1), (4, 8, CFG.n_embd))
    q = {init: np.abs(np.asarray(heads.q_t(_heads(init)["q1"], CFG, h)[..., :CFG.vocab_size])).mean()
         for init in heads.HEAD_INITS}
    assert q["flax"] > 2 * q["pytorch"], q


def test_unknown_head_init_is_refused():
    with pytest.raises(ValueError, match="head_init"):
        ilql.ModelConfig(trunk=CFG, head_init="xavier")


def test_trunk_follows_hugging_face_gpt2_init():
    params = trunk_lib.init(CFG, jax.random.key(0))
    wte = np.asarray(params["wte"]["embedding"].value)
    assert abs(wte[:CFG.vocab_size].std() - 0.02) < 0.001
    np.testing.assert_array_equal(wte[CFG.vocab_size:], 0)  # padded rows
    assert abs(np.asarray(params["wpe"]["embedding"].value).std() - 0.02) < 0.001
    residual = 0.02 / (2 * CFG.n_layer) ** 0.5
    for block in params["h"].values():
        assert abs(np.asarray(block["attn"]["c_attn"]["kernel"].value).std() - 0.02) < 0.001
        assert abs(np.asarray(block["mlp"]["c_fc"]["kernel"].value).std() - 0.02) < 0.001
        for proj in (block["attn"]["c_proj"], block["mlp"]["c_proj"]):
            assert abs(np.asarray(proj["kernel"].value).std() / residual - 1) < 0.05
            np.testing.assert_array_equal(proj["bias"].value, 0)
        np.testing.assert_array_equal(block["ln_1"]["scale"].value, 1)
        np.testing.assert_array_equal(block["ln_1"]["bias"].value, 0)
