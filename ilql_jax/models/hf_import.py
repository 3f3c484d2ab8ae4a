"""Hugging Face GPT-2 weights ⇄ our parameters, through safetensors only.

The file layout is the one `transformers` writes for `GPT2LMHeadModel`
(`model.safetensors`, PyTorch layout): `wte.weight`, `h.{i}.attn.c_attn.weight`,
... optionally under a `transformer.` prefix. GPT-2's `Conv1D` stores its
weight as [in, out], which is already Flax's kernel layout, so unlike
nanoGPT's `nn.Linear` port nothing is transposed; `TRANSPOSED` says so
explicitly and every tensor's shape is asserted against ours.

No pickle: `pytorch_model.bin` files are refused.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx

from ilql_jax import files
from ilql_jax.hub import is_hub_id
from ilql_jax.models import gpt2

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

# Buffers that PyTorch checkpoints carry but that hold no learned weight.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# Conv1D weights are [in, out] like Flax kernels: no transpose needed.
TRANSPOSED: frozenset[str] = frozenset()


def key_map(config: gpt2.GPT2Config) -> dict[str, tuple[str, ...]]:
    """Hugging Face key → path of our parameter (as `nnx.State` keys)."""
    m: dict[str, tuple[str, ...]] = {
            "wte.weight": ("wte", "embedding"),
            "wpe.weight": ("wpe", "embedding"),
            "ln_f.weight": ("ln_f", "scale"),
            "ln_f.bias": ("ln_f", "bias"),
    }
    for i in range(config.n_layer):
        for ln in ("ln_1", "ln_2"):
            m[f"h.{i}.{ln}.weight"] = ("h", i, ln, "scale")
            m[f"h.{i}.{ln}.bias"] = ("h", i, ln, "bias")
        for mod, sub in (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj")):
            m[f"h.{i}.{mod}.{sub}.weight"] = ("h", i, mod, sub, "kernel")
            m[f"h.{i}.{mod}.{sub}.bias"] = ("h", i, mod, sub, "bias")
    return m


def config_from_hf(hf: dict[str, Any], **overrides) -> gpt2.GPT2Config:
    """Our config from a Hugging Face GPT-2 `config.json` dict."""
    try:
        fields = dict(vocab_size=hf["vocab_size"], n_positions=hf["n_positions"], n_embd=hf["n_embd"],
                                    n_layer=hf["n_layer"], n_head=hf["n_head"],
                                    layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
                                    dropout=hf.get("resid_pdrop", 0.1))
    except KeyError as e:
        raise ValueError(f"GPT-2 config.json is missing the field {e.args[0]!r}") from None
    return gpt2.GPT2Config(**{**fields, **overrides})


def config_to_hf(config: gpt2.GPT2Config) -> dict[str, Any]:
    return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
            "vocab_size": config.vocab_size, "n_positions": config.n_positions, "n_ctx": config.n_positions,
            "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
            "layer_norm_epsilon": config.layer_norm_epsilon, "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout, "attn_pdrop": config.dropout, "tie_word_embeddings": True,
    }


def resolve(path_or_hub_id: str) -> str:
    """A local directory (or its `model.safetensors`); a hub id only when the user names one."""
    if os.path.isfile(path_or_hub_id):
        return os.path.dirname(os.path.abspath(path_or_hub_id))
    if os.path.isdir(path_or_hub_id):
        return path_or_hub_id
    if not is_hub_id(path_or_hub_id):
        raise FileNotFoundError(f"no GPT-2 checkpoint at {path_or_hub_id!r} (not a file or directory)")
    try:  # A hub id such as "gpt2": needs network, which the user asked for by naming it.
        from huggingface_hub import snapshot_download
        return snapshot_download(path_or_hub_id, allow_patterns=[WEIGHTS_NAME, CONFIG_NAME])
    except Exception as e:  # noqa: BLE001 - re-raised with the id and the cause
        raise FileNotFoundError(f"{path_or_hub_id!r} is neither a local path nor a reachable hub model: {e}") from e


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file, with a clear error for a damaged one."""
    if path.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")):
        raise ValueError(f"{path}: pickle-based weight files are not loaded; convert them to safetensors")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        with safetensors.safe_open(path, framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several error types
        raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e


def read_config(path_or_hub_id: str, **config_overrides) -> tuple[str, gpt2.GPT2Config]:
    """(the checkpoint's directory, our config from its `config.json`); reads no weights."""
    directory = resolve(path_or_hub_id)
    cfg_path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"no {CONFIG_NAME} beside the weights in {directory}")
    with open(cfg_path) as f:
        try:
            return directory, config_from_hf(json.load(f), **config_overrides)
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: invalid JSON: {e}") from e


def load_hf_gpt2(path_or_hub_id: str, *, shardings: Any = None, **config_overrides) -> tuple[gpt2.GPT2Config, nnx.State]:
    """Loads a Hugging Face GPT-2 checkpoint into our config and parameters.

    Args:
        path_or_hub_id: a directory holding `model.safetensors` and `config.json`,
            the weights file itself, or a hub id such as "gpt2" (network needed).
        shardings: where the parameters go (a tree like `gpt2.abstract_params`'
            of `jax.sharding.Sharding`s, e.g. `sharding.trunk_shardings(...)`).
            Each device then receives only its own slices, read straight from
            the file; no device (nor host) holds a whole tensor it does not
            keep. None: numpy arrays on the host.
        **config_overrides: e.g. `dtype="bfloat16"`, `dropout=0.0`, `remat=True`.
    """
    directory, config = read_config(path_or_hub_id, **config_overrides)
    weights = os.path.join(directory, WEIGHTS_NAME)
    if shardings is None:
        return config, params_from_hf(read_safetensors(weights), config, source=directory)
    return config, _sharded_params(weights, config, shardings, source=directory)


def _check_keys(keys: set[str], config: gpt2.GPT2Config, source: str) -> None:
    kmap = key_map(config)
    unknown = sorted(keys - set(kmap))
    missing = sorted(set(kmap) - keys)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) in GPT-2 checkpoint: {', '.join(unknown[:5])}")
    if missing:
        raise ValueError(f"{source}: missing key(s) in GPT-2 checkpoint: {', '.join(missing[:5])}")


def _expected_shape(hf_key: str, stored: tuple[int, ...], ours: tuple[int, ...], config: gpt2.GPT2Config,
                    source: str) -> None:
    """Raises unless a stored tensor fits our parameter (wte: stored unpadded, ours padded to 128s)."""
    if hf_key == "wte.weight":
        if stored != (config.vocab_size, config.n_embd):
            raise ValueError(f"{source}: {hf_key} has shape {stored}, expected {(config.vocab_size, config.n_embd)}")
    elif stored != ours:
        raise ValueError(f"{source}: {hf_key} has shape {stored}, expected {ours}")


def params_from_hf(tensors: dict[str, np.ndarray], config: gpt2.GPT2Config, source: str = "<tensors>") -> nnx.State:
    """Maps Hugging Face GPT-2 tensors onto our parameter tree, asserting every shape."""
    tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    lm_head = tensors.pop("lm_head.weight", None)
    tensors = {k: v for k, v in tensors.items() if not k.endswith(_IGNORED_SUFFIXES)}
    _check_keys(set(tensors), config, source)
    if lm_head is not None and not np.array_equal(lm_head, tensors["wte.weight"]):
        raise ValueError(f"{source}: lm_head.weight differs from wte.weight; only tied GPT-2 heads are supported")

    params = gpt2.abstract_params(config)
    flat = dict(nnx.to_flat_state(params))
    for hf_key, path in key_map(config).items():
        value = tensors[hf_key]
        value = value.T if hf_key in TRANSPOSED else value
        expected = flat[path].value.shape
        _expected_shape(hf_key, value.shape, expected, config, source)
        if hf_key == "wte.weight":  # stored unpadded; our embedding is padded to a multiple of 128
            value = np.pad(value, ((0, expected[0] - value.shape[0]), (0, 0)))
        flat[path] = flat[path].replace(np.asarray(value, dtype=config.param_dtype))
    return nnx.from_flat_state(flat)


def _sharded_params(path: str, config: gpt2.GPT2Config, shardings: Any, source: str) -> nnx.State:
    """`params_from_hf` of the file at `path`, each tensor placed by `jax.make_array_from_callback`:
    every device's slice is read from the (memory-mapped) file on its own."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file at {path}")
    flat = dict(nnx.to_flat_state(gpt2.abstract_params(config)))
    flat_shardings = dict(nnx.to_flat_state(shardings))
    try:
        f = safetensors.safe_open(path, framework="numpy")
    except Exception as e:  # noqa: BLE001 - safetensors raises several error types
        raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    with f:
        names = {k.removeprefix("transformer."): k for k in f.keys()}
        lm_head = names.pop("lm_head.weight", None)
        names = {k: v for k, v in names.items() if not k.endswith(_IGNORED_SUFFIXES)}
        _check_keys(set(names), config, source)
        if lm_head is not None and not _tied(f, lm_head, names["wte.weight"]):
            raise ValueError(f"{source}: lm_head.weight differs from wte.weight; only tied GPT-2 heads are supported")
        for hf_key, param_path in key_map(config).items():
            if hf_key in TRANSPOSED:  # none for GPT-2; a transposed read would need its own slicing
                raise NotImplementedError(f"sharded loading of transposed tensor {hf_key}")
            tensor = f.get_slice(names[hf_key])
            expected = flat[param_path].value.shape
            _expected_shape(hf_key, tuple(tensor.get_shape()), expected, config, source)
            rows = config.vocab_size if hf_key == "wte.weight" else expected[0]
            array = jax.make_array_from_callback(
                    expected, flat_shardings[param_path].value,
                    lambda index, t=tensor, rows=rows, shape=expected: _read_slice(t, index, rows, shape, config.param_dtype))
            flat[param_path] = flat[param_path].replace(array)
    return nnx.from_flat_state(flat)


def _read_slice(tensor, index: tuple[slice, ...], rows: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """`index` of a stored tensor whose first axis is zero-padded from `rows` to `shape[0]` entries."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    first = range(*index[0].indices(shape[0]))
    stored = tensor[(slice(first.start, min(first.stop, rows)),) + index[1:]] if first.start < rows else None
    out = np.zeros([len(range(*s.indices(n))) for s, n in zip(index, shape)], jnp.dtype(dtype))
    if stored is not None:
        out[:stored.shape[0]] = stored
    return out


def _tied(f, lm_head: str, wte: str, chunk: int = 8192) -> bool:
    """Whether two [V, d] tensors of an open file are equal, read `chunk` rows at a time."""
    a, b = f.get_slice(lm_head), f.get_slice(wte)
    if tuple(a.get_shape()) != tuple(b.get_shape()):
        return False
    return all(np.array_equal(a[i:i + chunk], b[i:i + chunk]) for i in range(0, a.get_shape()[0], chunk))


def params_to_hf(params: nnx.State, config: gpt2.GPT2Config) -> dict[str, np.ndarray]:
    """Our parameters as Hugging Face GPT-2 tensors (PyTorch layout, unpadded vocabulary)."""
    flat = dict(nnx.to_flat_state(params))
    out = {}
    for hf_key, path in key_map(config).items():
        value = np.asarray(flat[path].value, dtype=np.float32)
        if hf_key == "wte.weight":
            value = value[: config.vocab_size]
        out[hf_key] = np.ascontiguousarray(value.T if hf_key in TRANSPOSED else value)
    return out


def export_hf_gpt2(params: nnx.State, config: gpt2.GPT2Config, directory: str) -> None:
    """Writes `model.safetensors` and `config.json` that `transformers` loads as GPT2LMHeadModel."""
    # Each file atomically, config.json (which readers look for first) last.
    files.atomic_write_bytes(os.path.join(directory, WEIGHTS_NAME),
                             safetensors.numpy.save(params_to_hf(params, config), metadata={"format": "pt"}))
    files.atomic_write_text(os.path.join(directory, CONFIG_NAME), json.dumps(config_to_hf(config), indent=2))
