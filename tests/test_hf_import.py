"""Weight import/export through safetensors: round trip and clear errors."""

import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from ilql_jax.models import gpt2, hf_import
from ilql_jax.models import trunk as trunk_lib
from tests.hf_fixtures import random_hf_gpt2


@pytest.fixture
def checkpoint(tmp_path):
    d = tmp_path / "hf"
    random_hf_gpt2(d, vocab_size=300, n_embd=32, n_layer=2, n_head=4)
    return d


def _flat(params):
    return {k: np.asarray(v.value) for k, v in nnx.to_flat_state(params)}


def test_import_export_reimport_is_identical(checkpoint, tmp_path):
    config, params = hf_import.load_hf_gpt2(str(checkpoint))
    hf_import.export_hf_gpt2(params, config, str(tmp_path / "out"))
    config2, params2 = hf_import.load_hf_gpt2(str(tmp_path / "out"))
    assert config2 == config
    a, b = _flat(params), _flat(params2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
    # The exported file is byte-for-byte the same tensors as the original.
    orig = safetensors.numpy.load_file(str(checkpoint / "model.safetensors"))
    out = safetensors.numpy.load_file(str(tmp_path / "out" / "model.safetensors"))
    assert orig.keys() == out.keys()
    for k in orig:
        np.testing.assert_array_equal(orig[k], out[k], err_msg=k)


def test_export_of_random_params_loads_back(tmp_path):
    config = gpt2.GPT2Config.tiny(vocab_size=100)
    params = trunk_lib.init(config, jax.random.key(0))
    hf_import.export_hf_gpt2(params, config, str(tmp_path))
    config2, params2 = hf_import.load_hf_gpt2(str(tmp_path / "model.safetensors"), dropout=0.0)
    assert config2.n_embd == 64 and config2.vocab_size == 100
    for (k, v), (_, w) in zip(nnx.to_flat_state(params), nnx.to_flat_state(params2)):
        np.testing.assert_array_equal(np.asarray(v.value), np.asarray(w.value), err_msg=str(k))


def test_transformer_prefix_and_buffers_are_accepted(checkpoint):
    tensors = safetensors.numpy.load_file(str(checkpoint / "model.safetensors"))
    tensors = {"transformer." + k: v for k, v in tensors.items()}
    tensors["transformer.h.0.attn.bias"] = np.ones((1, 1, 4, 4), np.float32)  # causal-mask buffer
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"]
    config, plain = hf_import.load_hf_gpt2(str(checkpoint))
    prefixed = hf_import.params_from_hf(tensors, config)
    a, b = _flat(plain), _flat(prefixed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


def test_truncated_file_names_the_file(checkpoint):
    path = checkpoint / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        hf_import.load_hf_gpt2(str(checkpoint))


def test_missing_key_is_named(checkpoint):
    tensors = safetensors.numpy.load_file(str(checkpoint / "model.safetensors"))
    del tensors["h.1.mlp.c_fc.bias"]
    safetensors.numpy.save_file(tensors, str(checkpoint / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing key.*h\.1\.mlp\.c_fc\.bias"):
        hf_import.load_hf_gpt2(str(checkpoint))


def test_unknown_key_is_named(checkpoint):
    tensors = safetensors.numpy.load_file(str(checkpoint / "model.safetensors"))
    tensors["h.0.attn.rotary"] = np.zeros(3, np.float32)
    safetensors.numpy.save_file(tensors, str(checkpoint / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unknown key.*h\.0\.attn\.rotary"):
        hf_import.load_hf_gpt2(str(checkpoint))


def test_wrong_shape_is_named(checkpoint):
    tensors = safetensors.numpy.load_file(str(checkpoint / "model.safetensors"))
    tensors["h.0.attn.c_proj.weight"] = np.zeros((32, 31), np.float32)
    safetensors.numpy.save_file(tensors, str(checkpoint / "model.safetensors"))
    with pytest.raises(ValueError, match=r"h\.0\.attn\.c_proj\.weight has shape \(32, 31\), expected \(32, 32\)"):
        hf_import.load_hf_gpt2(str(checkpoint))


def test_missing_config_field_and_pickles_are_refused(checkpoint, tmp_path):
    cfg = json.loads((checkpoint / "config.json").read_text())
    del cfg["n_head"]
    (checkpoint / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="n_head"):
        hf_import.load_hf_gpt2(str(checkpoint))
    with pytest.raises(ValueError, match="pickle"):
        hf_import.read_safetensors(str(tmp_path / "pytorch_model.bin"))
    with pytest.raises(FileNotFoundError, match="no GPT-2 checkpoint"):
        hf_import.load_hf_gpt2(str(tmp_path / "nowhere"))
