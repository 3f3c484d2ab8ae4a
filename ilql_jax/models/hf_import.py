"""Hugging Face checkpoints (GPT-2, Llama, Qwen2) ⇄ our trunk parameters, through safetensors only.

A checkpoint directory holds `config.json` and either `model.safetensors` or
shards `model-0000x-of-0000y.safetensors` listed by
`model.safetensors.index.json` (PyTorch layout, as `transformers` writes them).
`config.json`'s `model_type` picks the trunk: "gpt2" → `GPT2Config`,
"llama" / "qwen2" → `LlamaConfig`.

Each architecture is a key map: Hugging Face key → (path of our parameter,
whether it is stored transposed, which of our axes is the vocabulary).
GPT-2's `Conv1D` stores its weight as [in, out], which is already Flax's
kernel layout, so nothing is transposed there; Llama's `nn.Linear` weights
are [out, in] and are. Every tensor's shape is asserted against ours, and
each names the file and key when it does not fit.

The vocabulary: ours is padded to a multiple of 128 (padded rows zero) and
may be larger than the checkpoint's when ILQL's markup tokens were added as
new ids (`import_vocab_size`). New rows (between the checkpoint's and ours)
start as the mean of the checkpoint's rows for Llama-architecture trunks (the
embedding and, untied, the LM head), the rule `transformers`'
`resize_token_embeddings` uses for the mean of its draws, so a markup token
starts as an "average" token instead of an outlier; GPT-2's stay zero, as
they always have (tied head: logit 0).

No pickle: `pytorch_model.bin` files are refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx

from ilql_jax import files
from ilql_jax.hub import is_hub_id
from ilql_jax.models import gpt2, llama, trunk as trunk_lib

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"

# Buffers that PyTorch checkpoints carry but that hold no learned weight.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
# Conv1D weights are [in, out] like Flax kernels: no transpose needed.
TRANSPOSED: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class Entry:
    """Where one Hugging Face tensor goes: our parameter's path, whether the file holds it transposed
    ([out, in] vs our [in, out]), and which of our axes (if any) is the padded vocabulary."""

    path: tuple
    transposed: bool = False
    vocab_axis: int | None = None


def _arch(config) -> str:
    return "Llama" if isinstance(config, llama.LlamaConfig) else "GPT-2"


# --- GPT-2 --------------------------------------------------------------------


def key_map(config: gpt2.GPT2Config) -> dict[str, tuple[str, ...]]:
    """Hugging Face GPT-2 key → path of our parameter (as `nnx.State` keys)."""
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


def _gpt2_config_from_hf(hf: dict[str, Any], **overrides) -> gpt2.GPT2Config:
    try:
        fields = dict(vocab_size=hf["vocab_size"], n_positions=hf["n_positions"], n_embd=hf["n_embd"],
                                    n_layer=hf["n_layer"], n_head=hf["n_head"],
                                    layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
                                    dropout=hf.get("resid_pdrop", 0.1))
    except KeyError as e:
        raise ValueError(f"GPT-2 config.json is missing the field {e.args[0]!r}") from None
    return gpt2.GPT2Config(**{**fields, **overrides})


def _gpt2_config_to_hf(config: gpt2.GPT2Config) -> dict[str, Any]:
    return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
            "vocab_size": config.vocab_size, "n_positions": config.n_positions, "n_ctx": config.n_positions,
            "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
            "layer_norm_epsilon": config.layer_norm_epsilon, "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout, "attn_pdrop": config.dropout, "tie_word_embeddings": True,
    }


# --- Llama / Qwen2 --------------------------------------------------------------


def llama_key_map(config: llama.LlamaConfig) -> dict[str, Entry]:
    """Hugging Face `LlamaForCausalLM` / `Qwen2ForCausalLM` key → `Entry`."""
    m = {"model.embed_tokens.weight": Entry(("embed_tokens", "embedding"), vocab_axis=0),
         "model.norm.weight": Entry(("norm", "weight"))}
    for i in range(config.n_layer):
        pre = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            m[f"{pre}.self_attn.{proj}.weight"] = Entry(("layers", i, "self_attn", proj, "kernel"), transposed=True)
            if (config.o_bias if proj == "o_proj" else config.qkv_bias):
                m[f"{pre}.self_attn.{proj}.bias"] = Entry(("layers", i, "self_attn", proj, "bias"))
        for proj in ("gate_proj", "up_proj", "down_proj"):
            m[f"{pre}.mlp.{proj}.weight"] = Entry(("layers", i, "mlp", proj, "kernel"), transposed=True)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            m[f"{pre}.{norm}.weight"] = Entry(("layers", i, norm, "weight"))
    if not config.tie_word_embeddings:
        m["lm_head.weight"] = Entry(("lm_head", "kernel"), transposed=True, vocab_axis=1)
    return m


def _llama_config_from_hf(hf: dict[str, Any], **overrides) -> llama.LlamaConfig:
    model_type = hf.get("model_type", "llama")
    try:
        hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
        fields = dict(vocab_size=hf["vocab_size"], n_positions=hf["max_position_embeddings"], n_embd=hidden,
                      n_layer=hf["num_hidden_layers"], n_head=heads,
                      n_kv_head=hf.get("num_key_value_heads") or heads,
                      head_dim=hf.get("head_dim") or hidden // heads, intermediate_size=hf["intermediate_size"],
                      rms_norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(hf.get("rope_theta", 10000.0)),
                      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                      dropout=float(hf.get("attention_dropout", 0.0)), hf_model_type=model_type)
    except KeyError as e:
        raise ValueError(f"{model_type} config.json is missing the field {e.args[0]!r}") from None
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{model_type} config.json: hidden_act {hf['hidden_act']!r} is not supported (silu only)")
    if model_type == "qwen2":
        fields.update(qkv_bias=True, o_bias=False)
        if hf.get("use_sliding_window"):
            raise ValueError("qwen2 config.json: use_sliding_window is not supported (full attention only)")
    else:
        fields.update(qkv_bias=bool(hf.get("attention_bias", False)), o_bias=bool(hf.get("attention_bias", False)))
        if hf.get("mlp_bias"):
            raise ValueError("llama config.json: mlp_bias is not supported")
    scaling = hf.get("rope_scaling")
    if scaling:
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type not in llama.ROPE_TYPES:
            raise ValueError(f"{model_type} config.json: rope_scaling type {rope_type!r} is not supported "
                             f"(one of {llama.ROPE_TYPES})")
        fields.update(rope_type=rope_type, rope_factor=float(scaling.get("factor", 1.0)))
        if rope_type == "llama3":
            try:
                fields.update(rope_low_freq_factor=float(scaling["low_freq_factor"]),
                              rope_high_freq_factor=float(scaling["high_freq_factor"]),
                              rope_original_max_position=int(scaling["original_max_position_embeddings"]))
            except KeyError as e:
                raise ValueError(f"{model_type} config.json: rope_scaling (llama3) is missing {e.args[0]!r}") from None
    return llama.LlamaConfig(**{**fields, **overrides})


def _llama_config_to_hf(config: llama.LlamaConfig) -> dict[str, Any]:
    qwen = config.hf_model_type == "qwen2"
    if qwen and (config.o_bias or not config.qkv_bias):
        raise ValueError("a qwen2 checkpoint has q/k/v biases and no o_proj bias; this trunk differs")
    if not qwen and config.qkv_bias != config.o_bias:
        raise ValueError("Llama's attention_bias puts biases on q, k, v and o alike; this trunk differs "
                         "(use hf_model_type='qwen2' for q/k/v biases alone)")
    rope_scaling = None
    if config.rope_type == "linear":
        rope_scaling = {"rope_type": "linear", "factor": config.rope_factor}
    elif config.rope_type == "llama3":
        rope_scaling = {"rope_type": "llama3", "factor": config.rope_factor,
                        "low_freq_factor": config.rope_low_freq_factor,
                        "high_freq_factor": config.rope_high_freq_factor,
                        "original_max_position_embeddings": config.rope_original_max_position}
    out = {"architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"], "model_type": config.hf_model_type,
           "vocab_size": config.vocab_size, "max_position_embeddings": config.n_positions,
           "hidden_size": config.n_embd, "intermediate_size": config.intermediate_size,
           "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
           "num_key_value_heads": config.n_kv_head, "head_dim": config.head_dim, "hidden_act": "silu",
           "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta, "rope_scaling": rope_scaling,
           "tie_word_embeddings": config.tie_word_embeddings, "attention_dropout": config.dropout,
           "torch_dtype": "float32"}
    if not qwen:
        out.update(attention_bias=config.qkv_bias, mlp_bias=False)
    return out


# --- dispatch ---------------------------------------------------------------------


def entries(config) -> dict[str, Entry]:
    """Every Hugging Face key of `config`'s architecture → its `Entry`."""
    if isinstance(config, llama.LlamaConfig):
        return llama_key_map(config)
    return {k: Entry(p, transposed=k in TRANSPOSED, vocab_axis=0 if k == "wte.weight" else None)
            for k, p in key_map(config).items()}


def config_from_hf(hf: dict[str, Any], **overrides):
    """Our trunk config from a Hugging Face `config.json` dict (by its `model_type`)."""
    model_type = hf.get("model_type", "gpt2" if "n_embd" in hf else None)
    if model_type == "gpt2":
        return _gpt2_config_from_hf(hf, **overrides)
    if model_type in llama.HF_MODEL_TYPES:
        return _llama_config_from_hf(hf, **overrides)
    raise ValueError(f"config.json: model_type {model_type!r} is not supported (gpt2, {', '.join(llama.HF_MODEL_TYPES)})")


def config_to_hf(config) -> dict[str, Any]:
    """The `config.json` dict `transformers` reads for our trunk config."""
    if isinstance(config, llama.LlamaConfig):
        return _llama_config_to_hf(config)
    return _gpt2_config_to_hf(config)


def _new_row_fill(config) -> bool:
    """Whether ids the checkpoint lacks start as the mean row (Llama) rather than zero (GPT-2, as always)."""
    return isinstance(config, llama.LlamaConfig)


_GPT2_SHAPE = ("n_positions", "n_embd", "n_layer", "n_head", "padded_vocab_size", "layer_norm_epsilon")


def import_overrides(config) -> dict[str, Any]:
    """What a checkpoint imported to start a trunk shaped as `config` takes from `config` beyond its numerics:
    a Llama checkpoint's vocabulary grows to config's (new rows: the mean row); GPT-2's stays its own (ids up to
    the padded size read zero rows)."""
    return {"vocab_size": config.vocab_size} if _new_row_fill(config) else {}


def matching_fields(config) -> tuple[str, ...]:
    """The fields a checkpoint's config (read with `import_overrides`) must share with `config` to start it."""
    return tuple(f.name for f in dataclasses.fields(config)) if _new_row_fill(config) else _GPT2_SHAPE


def for_tokenizer(config, tokenizer_vocab_size: int):
    """`config` with the vocabulary a tokenizer of `tokenizer_vocab_size` ids (markup included) needs: a Llama
    trunk's grows to every id of either (`import_vocab_size`: new embedding rows); GPT-2's is the tokenizer's,
    within the embedding's padding. ValueError when the tokenizer has more ids than the embedding."""
    if _new_row_fill(config):
        config = dataclasses.replace(config, vocab_size=import_vocab_size(config, tokenizer_vocab_size))
    if tokenizer_vocab_size > config.padded_vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer_vocab_size} ids, the model's embedding "
                         f"{config.padded_vocab_size}")
    return config if _new_row_fill(config) else dataclasses.replace(config, vocab_size=tokenizer_vocab_size)


def export_names(config) -> tuple[str, str]:
    """(the values manifest's key for the trunk's `config.json`, the tokenizer class `transformers` loads): GPT-2's
    as earlier releases wrote them."""
    if isinstance(config, gpt2.GPT2Config):
        return "gpt2_config", "GPT2TokenizerFast"
    return "hf_config", "PreTrainedTokenizerFast"


# --- files ---------------------------------------------------------------------


def resolve(path_or_hub_id: str) -> str:
    """A local directory (or its `model.safetensors`); a hub id only when the user names one."""
    if os.path.isfile(path_or_hub_id):
        return os.path.dirname(os.path.abspath(path_or_hub_id))
    if os.path.isdir(path_or_hub_id):
        return path_or_hub_id
    if not is_hub_id(path_or_hub_id):
        raise FileNotFoundError(f"no GPT-2 checkpoint (nor other Hugging Face model directory) at {path_or_hub_id!r} "
                                "(not a file or directory)")
    try:  # A hub id such as "gpt2": needs network, which the user asked for by naming it.
        from huggingface_hub import snapshot_download
        return snapshot_download(path_or_hub_id, allow_patterns=[WEIGHTS_NAME, INDEX_NAME, "model-*.safetensors",
                                                                 CONFIG_NAME, "tokenizer.json"])
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


def weight_files(directory: str) -> dict[str, str]:
    """Tensor name → the safetensors file holding it: `model.safetensors`, or the shards its index lists."""
    index = os.path.join(directory, INDEX_NAME)
    single = os.path.join(directory, WEIGHTS_NAME)
    if os.path.isfile(single) or not os.path.isfile(index):
        if not os.path.isfile(single):
            raise FileNotFoundError(f"no weights file at {single} (nor a sharded {INDEX_NAME})")
        return {"": single}  # one file: its keys are read from it
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index}: not a safetensors index (needs a 'weight_map' object): {e}") from None
    out = {}
    for name, file in weight_map.items():
        path = os.path.join(directory, file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{index}: {name} is in {file}, which is missing")
        out[name] = path
    return out


def read_all(directory: str) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint directory (one file or all shards), as numpy."""
    out = {}
    for path in dict.fromkeys(weight_files(directory).values()):
        out.update(read_safetensors(path))
    return out


@contextlib.contextmanager
def _open_slices(directory: str) -> Iterator[dict[str, Any]]:
    """Tensor name → a lazily read safetensors slice, over one file or every shard."""
    with contextlib.ExitStack() as stack:
        handles = {}
        for path in dict.fromkeys(weight_files(directory).values()):
            try:
                handles[path] = stack.enter_context(safetensors.safe_open(path, framework="numpy"))
            except Exception as e:  # noqa: BLE001 - safetensors raises several error types
                raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
        yield {k: _Slice(f, k) for f in handles.values() for k in f.keys()}


class _Slice:
    """A tensor of an open safetensors file, read only where indexed."""

    def __init__(self, handle, name: str):
        self._slice = handle.get_slice(name)
        self.shape = tuple(self._slice.get_shape())

    def __getitem__(self, index):
        return self._slice[index]


def read_config(path_or_hub_id: str, **config_overrides) -> tuple[str, Any]:
    """(the checkpoint's directory, our trunk config from its `config.json`); reads no weights."""
    directory = resolve(path_or_hub_id)
    return directory, config_from_hf(_read_hf_config(directory), **config_overrides)


def _read_hf_config(directory: str) -> dict[str, Any]:
    cfg_path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"no {CONFIG_NAME} beside the weights in {directory}")
    with open(cfg_path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: invalid JSON: {e}") from e


def import_vocab_size(config, tokenizer_vocab_size: int) -> int:
    """The vocabulary a trunk imported from a checkpoint with `config` needs for a tokenizer with
    `tokenizer_vocab_size` ids (markup included): every id of either (a tokenizer may have fewer ids than the
    checkpoint's padded embedding, as Qwen2's, or more, as Llama 3's with ILQL's markup)."""
    return max(config.vocab_size, tokenizer_vocab_size)


def load_hf(path_or_hub_id: str, *, shardings: Any = None, **config_overrides) -> tuple[Any, nnx.State]:
    """Loads a Hugging Face checkpoint (GPT-2, Llama or Qwen2) into our config and parameters.

    Args:
        path_or_hub_id: a directory holding `config.json` and `model.safetensors` (or sharded
            safetensors with their index), the weights file itself, or a hub id (network needed).
        shardings: where the parameters go (a tree like `abstract_params`' of
            `jax.sharding.Sharding`s, e.g. `train.trunk_shardings(...)`).
            Each device then receives only its own slices, read straight from
            the files; no device (nor host) holds a whole tensor it does not
            keep. None: numpy arrays on the host.
        **config_overrides: e.g. `dtype="bfloat16"`, `dropout=0.0`, `remat=True`, or a larger
            `vocab_size` (ids added for markup; see the module docstring for their rows).
    """
    directory = resolve(path_or_hub_id)
    hf = _read_hf_config(directory)
    config = config_from_hf(hf, **config_overrides)
    stored_vocab = config_from_hf(hf).vocab_size
    if config.vocab_size < stored_vocab:
        raise ValueError(f"{directory}: vocab_size={config.vocab_size} is smaller than the checkpoint's {stored_vocab}")
    if shardings is None:
        return config, params_from_hf(read_all(directory), config, source=directory, stored_vocab=stored_vocab)
    with _open_slices(directory) as tensors:
        return config, _params(tensors, config, directory, stored_vocab, dict(nnx.to_flat_state(shardings)))


def load_hf_gpt2(path_or_hub_id: str, *, shardings: Any = None, **config_overrides) -> tuple[Any, nnx.State]:
    """A Hugging Face checkpoint as our config and parameters: `load_hf` under the name earlier releases
    used (it loads Llama and Qwen2 checkpoints as well as GPT-2)."""
    return load_hf(path_or_hub_id, shardings=shardings, **config_overrides)


def _check_keys(keys: set[str], config, source: str) -> None:
    kmap = entries(config)
    unknown = sorted(keys - set(kmap))
    missing = sorted(set(kmap) - keys)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) in {_arch(config)} checkpoint: {', '.join(unknown[:5])}")
    if missing:
        raise ValueError(f"{source}: missing key(s) in {_arch(config)} checkpoint: {', '.join(missing[:5])}")


def _canonical(tensors: dict[str, Any], config, source: str) -> dict[str, Any]:
    """The tensors our key map names: prefixes stripped, buffers dropped, a tied LM head checked and dropped."""
    if isinstance(config, gpt2.GPT2Config):
        tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
        embedding = "wte.weight"
    else:
        embedding = "model.embed_tokens.weight"
    tied = isinstance(config, gpt2.GPT2Config) or config.tie_word_embeddings
    tensors = {k: v for k, v in tensors.items() if not k.endswith(_IGNORED_SUFFIXES)}
    lm_head = tensors.pop("lm_head.weight", None) if tied else None
    _check_keys(set(tensors), config, source)
    if lm_head is not None and not _equal(lm_head, tensors[embedding]):
        raise ValueError(f"{source}: lm_head.weight differs from {embedding}; only tied {_arch(config)} heads "
                         "are supported" if isinstance(config, gpt2.GPT2Config) else
                         f"{source}: lm_head.weight differs from {embedding}, but config.json ties them")
    return tensors


def _equal(a, b, chunk: int = 8192) -> bool:
    """Whether two [V, d] tensors (arrays or file slices) are equal, read `chunk` rows at a time."""
    if tuple(a.shape) != tuple(b.shape):
        return False
    n = a.shape[0]  # file slices do not clamp an end past the last row
    return all(np.array_equal(a[i:min(i + chunk, n)], b[i:min(i + chunk, n)]) for i in range(0, n, chunk))


def _stored_shape(e: Entry, ours: tuple[int, ...], stored_vocab: int) -> tuple[int, ...]:
    shape = list(ours)
    if e.vocab_axis is not None:
        shape[e.vocab_axis] = stored_vocab
    return tuple(reversed(shape)) if e.transposed else tuple(shape)


def _mean_row(tensor, chunk: int = 8192) -> np.ndarray:
    """The mean of a stored [V, d] tensor's rows, in float64, read `chunk` rows at a time."""
    total, n = np.zeros(tensor.shape[1], np.float64), tensor.shape[0]
    for i in range(0, n, chunk):
        total += np.asarray(tensor[i:min(i + chunk, n)], np.float64).sum(0)
    return total / tensor.shape[0]


def _block(tensor, index: tuple, shape: tuple[int, ...], e: Entry, stored_vocab: int, vocab_size: int,
           fill: np.ndarray | None, dtype) -> np.ndarray:
    """Our parameter's slice `index` (of our full `shape`), read from the stored `tensor` (an array or a file
    slice): transposed back when stored transposed; along the vocabulary axis, rows < stored_vocab from the
    file, rows up to vocab_size from `fill` (the mean row; zero when None), the padding zero."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    ranges = [range(*s.indices(n)) for s, n in zip(index, shape)]
    out = np.zeros([len(r) for r in ranges], dtype)

    def read(idx):
        return np.asarray(tensor[idx[::-1]]).T if e.transposed else np.asarray(tensor[idx])

    if e.vocab_axis is None:
        out[...] = read(index)
        return out
    ax, r = e.vocab_axis, ranges[e.vocab_axis]
    stop = min(r.stop, stored_vocab)
    if r.start < stop:
        sub, sel = list(index), [slice(None)] * len(shape)
        sub[ax], sel[ax] = slice(r.start, stop), slice(0, stop - r.start)
        out[tuple(sel)] = read(tuple(sub))
    lo, hi = max(r.start, stored_vocab), min(r.stop, vocab_size)
    if fill is not None and lo < hi:
        sel = [slice(None)] * len(shape)
        sel[ax] = slice(lo - r.start, hi - r.start)
        vec = fill[index[1 - ax]]
        out[tuple(sel)] = vec[None, :] if ax == 0 else vec[:, None]
    return out


def _params(tensors: dict[str, Any], config, source: str, stored_vocab: int, flat_shardings: dict | None) -> nnx.State:
    """Our parameter tree from named stored tensors (arrays, or file slices read per device with shardings)."""
    tensors = _canonical(tensors, config, source)
    flat = dict(nnx.to_flat_state(trunk_lib.abstract_params(config)))
    dtype = jnp.dtype(config.param_dtype)
    for hf_key, e in entries(config).items():
        tensor = tensors[hf_key]
        shape = flat[e.path].value.shape
        expected = _stored_shape(e, shape, stored_vocab)
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{source}: {hf_key} has shape {tuple(tensor.shape)}, expected {expected}")
        fill = None
        if e.vocab_axis is not None and config.vocab_size > stored_vocab and _new_row_fill(config):
            fill = _mean_row(tensor)
        if flat_shardings is None:
            value = _block(tensor, (), shape, e, stored_vocab, config.vocab_size, fill, dtype)
        else:
            value = jax.make_array_from_callback(
                    shape, flat_shardings[e.path].value,
                    lambda index, t=tensor, s=shape, e=e, f=fill: _block(t, index, s, e, stored_vocab,
                                                                         config.vocab_size, f, dtype))
        flat[e.path] = flat[e.path].replace(value)
    return nnx.from_flat_state(flat)


def params_from_hf(tensors: dict[str, Any], config, source: str = "<tensors>",
                   stored_vocab: int | None = None, shardings: Any = None) -> nnx.State:
    """Maps Hugging Face tensors onto our parameter tree, asserting every shape.

    `tensors`: arrays, or anything with a `shape` that NumPy-style indexing reads (e.g. `gguf_import`'s
    lazily dequantised tensors). `stored_vocab`: the checkpoint's vocabulary, when `config.vocab_size` is
    larger (added ids); default equal. `shardings`: as for `load_hf` (each device reads only its slices).
    """
    flat_shardings = None if shardings is None else dict(nnx.to_flat_state(shardings))
    return _params(tensors, config, source, config.vocab_size if stored_vocab is None else stored_vocab,
                   flat_shardings)


def params_to_hf(params: nnx.State, config) -> dict[str, np.ndarray]:
    """Our parameters as Hugging Face tensors (PyTorch layout, float32, vocabulary unpadded to `vocab_size`)."""
    flat = dict(nnx.to_flat_state(params))
    out = {}
    for hf_key, e in entries(config).items():
        value = np.asarray(flat[e.path].value, dtype=np.float32)
        if e.vocab_axis is not None:
            value = np.take(value, np.arange(config.vocab_size), axis=e.vocab_axis)
        out[hf_key] = np.ascontiguousarray(value.T if e.transposed else value)
    return out


def export_hf(params: nnx.State, config, directory: str) -> None:
    """Writes `model.safetensors` and `config.json` that `transformers` loads (GPT2LMHeadModel,
    LlamaForCausalLM or Qwen2ForCausalLM, as `config` says)."""
    # Each file atomically, config.json (which readers look for first) last.
    files.atomic_write_bytes(os.path.join(directory, WEIGHTS_NAME),
                             safetensors.numpy.save(params_to_hf(params, config), metadata={"format": "pt"}))
    files.atomic_write_text(os.path.join(directory, CONFIG_NAME), json.dumps(config_to_hf(config), indent=2))



def export_hf_gpt2(params: nnx.State, config, directory: str) -> None:
    """Our trunk's weights as a directory `transformers` loads: `export_hf` under the name earlier releases
    used (it writes Llama and Qwen2 trunks as well as GPT-2)."""
    export_hf(params, config, directory)
