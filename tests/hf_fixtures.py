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
