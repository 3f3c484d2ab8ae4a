"""Writes random Hugging Face GPT-2 checkpoints (PyTorch layout safetensors) for tests."""

import os

import jax
import numpy as np
import safetensors.numpy


def flax_gpt2_to_pt(params) -> dict[str, np.ndarray]:
    """transformers' Flax GPT-2 params → the PyTorch-layout tensors `model.safetensors` holds.

    Flax's Conv1D kernel is [out, in]; PyTorch's Conv1D weight is [in, out].
    `ascontiguousarray` matters: safetensors.numpy writes a transposed view's raw buffer.
    """
    out = {}

    def rec(prefix, tree):
        for k, v in tree.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                rec(name, v)
            elif k == "kernel":
                out[name.removesuffix(".kernel") + ".weight"] = np.ascontiguousarray(np.asarray(v).T)
            elif k in ("scale", "embedding"):
                out[name.rsplit(".", 1)[0] + ".weight"] = np.asarray(v)
            else:
                out[name] = np.asarray(v)

    rec("", dict(params["transformer"]))
    return out


def random_hf_gpt2(directory, *, vocab_size, n_embd, n_layer, n_head, n_positions=64, seed=0):
    """A FlaxGPT2LMHeadModel with random weights (biases and norms perturbed too), saved to `directory`."""
    from transformers import FlaxGPT2LMHeadModel, GPT2Config

    hf_config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                                                  n_head=n_head)
    model = FlaxGPT2LMHeadModel(hf_config, seed=seed)
    leaves, treedef = jax.tree.flatten(model.params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    # Zero biases and unit norms would hide a swapped bias/scale: perturb every leaf.
    model.params = jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    os.makedirs(directory, exist_ok=True)
    safetensors.numpy.save_file(flax_gpt2_to_pt(model.params), os.path.join(directory, "model.safetensors"))
    hf_config.to_json_file(os.path.join(directory, "config.json"))
    return model


def random_hf_llama(directory, config, *, seed=0, tokenizer_texts=None):
    """A random Llama-architecture checkpoint (every parameter perturbed) written by our exporter, with a
    byte-level BPE `tokenizer.json` fitted to `tokenizer_texts` when given (no markup: the import adds it).

    With a tokenizer, the model's vocabulary is the tokenizer's size, as Llama 3's is, so ILQL's markup ids
    become new rows. Returns (config, params) as written.
    """
    import dataclasses

    import tokenizers as hf_tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from ilql_jax.models import hf_import
    from ilql_jax.models import trunk as trunk_lib

    os.makedirs(directory, exist_ok=True)
    if tokenizer_texts is not None:
        tok = hf_tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(tokenizer_texts, trainers.BpeTrainer(
            vocab_size=config.vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
        tok.save(os.path.join(directory, "tokenizer.json"))
        config = dataclasses.replace(config, vocab_size=tok.get_vocab_size())
    params = trunk_lib.init(config, jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    params = jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    hf_import.export_hf(params, config, str(directory))
    return config, params
