"""GGUF files (llama.cpp's format) → our Llama trunk: config, parameters born sharded, tokenizer metadata.

A GGUF file holds metadata (`general.architecture`, `<arch>.block_count`,
`tokenizer.ggml.*`, `tokenizer.chat_template`, ...) and tensors named
`token_embd.weight`, `blk.N.attn_q.weight`, ... each stored as one of ggml's
types: plain floats (F32, F16, BF16) or blocks of quantised values (Q8_0,
Q4_1, the K-quants, ...). It is read with `gguf` (ggml's own Python reader,
which memory-maps the file); every type `gguf.quants` can dequantise is
accepted, anything else is refused up front with the tensor and type named.

The import is `hf_import`'s: each GGUF tensor is named by the Hugging Face key
it came from (`_HF_NAMES`), so `hf_import.params_from_hf` maps it onto our
parameter tree, asserts every shape and, with shardings, hands each device
only its own slices. A tensor here is a lazy `_GGUFTensor`: indexing it
dequantises just the rows asked for (ggml's blocks run along a row, so rows
are independent), so a device's shard of rows costs only its rows; devices
that each keep some columns of every row share one dequantisation of the
whole tensor (`_LastWhole`), and the host never holds more than that one
tensor in float32.

Two things llama.cpp's converter (`convert_hf_to_gguf.py`) changes, undone here:

* architecture "llama": the rows of the q and k projections (and of their
  biases) are permuted per head from Hugging Face's rotate-half RoPE layout
  to ggml's interleaved pairs (`LlamaModel.permute`; k with the KV head count).
  "qwen2" is written unpermuted (it uses ggml's NeoX RoPE), so nothing is undone.
* tied embeddings: there is no `output.weight`; its absence means the LM head
  is the embedding.

Architectures: "llama" (Llama 2/3, TinyLlama, SmolLM2, Mistral without sliding
window) and "qwen2"; mixture-of-experts files (`<arch>.expert_count` > 0), RoPE
frequency tables (`rope_freqs.weight`, Llama 3.1's scaling) and RoPE scalings
other than linear are refused, each in one line naming the file.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from ilql_jax.models import hf_import, llama

__all__ = ["ARCHITECTURES", "GGUFFile", "config_from_gguf", "dequantisable_types", "hf_config", "is_gguf",
           "load_gguf", "open_gguf", "read_config", "tensors"]

ARCHITECTURES = ("llama", "qwen2")
MAGIC = b"GGUF"

# GGUF tensor name → Hugging Face key (`{i}`: the block). llama.cpp's own table is gguf.TENSOR_NAMES; these are
# the ones a Llama-architecture trunk has.
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias", "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


class GGUFError(ValueError):
    """A GGUF file this importer cannot read or does not support: one line naming the file."""


def is_gguf(path: str) -> bool:
    """Whether `path` names a GGUF file: a `.gguf` name, or a file that starts with the GGUF magic."""
    if str(path).endswith(".gguf"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


@functools.cache
def dequantisable_types() -> frozenset:
    """The ggml tensor types `gguf.quants.dequantize` handles in the installed `gguf` (0.19.0: F32, F16, BF16,
    Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K…Q6_K, the IQ and TQ types, MXFP4, NVFP4), found by dequantising one block."""
    import gguf

    ok = set()
    for qtype in gguf.GGMLQuantizationType:
        if qtype not in gguf.GGML_QUANT_SIZES:
            continue
        _, type_size = gguf.GGML_QUANT_SIZES[qtype]
        try:
            gguf.quants.dequantize(np.zeros((1, type_size), np.uint8), qtype)
        except (NotImplementedError, ValueError, TypeError):
            continue
        ok.add(qtype)
    return frozenset(ok)


class GGUFFile:
    """An open GGUF file: its metadata (decoded on demand) and tensors, every tensor's type already checked."""

    def __init__(self, path: str):
        import gguf

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no GGUF file at {self.path}")
        try:
            self.reader = gguf.GGUFReader(self.path)
        except Exception as e:  # noqa: BLE001 - the reader raises ValueError, IndexError, struct errors...
            raise GGUFError(f"{self.path}: not a readable GGUF file (truncated or corrupt?): "
                            f"{type(e).__name__}: {e}") from None
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.architecture = self.get("general.architecture")
        if self.architecture not in ARCHITECTURES:
            raise GGUFError(f"{self.path}: architecture {self.architecture!r} is not supported "
                            f"(GGUF imports: {', '.join(ARCHITECTURES)})")
        supported = dequantisable_types()
        for t in self.reader.tensors:
            if t.tensor_type not in supported:
                raise GGUFError(f"{self.path}: tensor {t.name} is stored as {t.tensor_type.name}, which gguf "
                                f"{_gguf_version()} cannot dequantise (supported: "
                                f"{', '.join(sorted(q.name for q in supported))})")

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value as Python (str, int, float, bool or a list of them); `default` when absent."""
        field = self.reader.fields.get(key)
        if field is None:
            return default
        try:
            return field.contents()
        except Exception as e:  # noqa: BLE001 - a damaged field
            raise GGUFError(f"{self.path}: metadata {key} is unreadable (corrupt file?): {e}") from None

    def arch(self, key: str, default: Any = None) -> Any:
        """`<architecture>.<key>`, e.g. `arch("block_count")` reads `llama.block_count`."""
        return self.get(f"{self.architecture}.{key}", default)

    def require(self, key: str) -> Any:
        value = self.arch(key)
        if value is None:
            raise GGUFError(f"{self.path}: metadata {self.architecture}.{key} is missing")
        return value

    def stored_shape(self, name: str) -> tuple[int, ...]:
        """A tensor's logical shape in NumPy / PyTorch order (ggml lists dimensions fastest first)."""
        return tuple(int(n) for n in reversed(self.tensors[name].shape.tolist()))


def _gguf_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("gguf")
    except metadata.PackageNotFoundError:
        return "(unknown version)"


def open_gguf(path: str) -> GGUFFile:
    """Opens and checks a GGUF file (architecture, every tensor's type); reads no tensor data."""
    return GGUFFile(path)


def hf_config(gf: GGUFFile) -> dict[str, Any]:
    """The `config.json` a Hugging Face `LlamaForCausalLM` / `Qwen2ForCausalLM` of this file would have."""
    arch, path = gf.architecture, gf.path
    if gf.arch("expert_count", 0):
        raise GGUFError(f"{path}: a mixture-of-experts {arch} ({gf.arch('expert_count')} experts) is not supported")
    if "rope_freqs.weight" in gf.tensors:
        raise GGUFError(f"{path}: rope_freqs.weight (RoPE frequency factors, e.g. Llama 3.1's scaling) is not "
                        "supported")
    if "token_embd.weight" not in gf.tensors:
        raise GGUFError(f"{path}: no token_embd.weight tensor")
    hidden, heads = int(gf.require("embedding_length")), int(gf.require("attention.head_count"))
    head_dim = int(gf.arch("attention.key_length", hidden // heads))
    rope_dim = gf.arch("rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != head_dim:
        raise GGUFError(f"{path}: {arch}.rope.dimension_count={rope_dim} differs from the head width {head_dim} "
                        "(partial rotary embeddings are not supported)")
    if int(gf.arch("attention.value_length", head_dim)) != head_dim:
        raise GGUFError(f"{path}: {arch}.attention.value_length differs from key_length (not supported)")
    if gf.arch("attention.sliding_window"):
        raise GGUFError(f"{path}: sliding-window attention ({arch}.attention.sliding_window) is not supported")
    config = {
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"], "model_type": arch,
        "vocab_size": gf.stored_shape("token_embd.weight")[0], "hidden_size": hidden,
        "intermediate_size": int(gf.require("feed_forward_length")),
        "num_hidden_layers": int(gf.require("block_count")), "num_attention_heads": heads,
        "num_key_value_heads": int(gf.arch("attention.head_count_kv", heads)), "head_dim": head_dim,
        "max_position_embeddings": int(gf.require("context_length")), "hidden_act": "silu",
        # As stored (float32), as transformers' GGUF loader reads it.
        "rms_norm_eps": float(gf.require("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(gf.arch("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in gf.tensors, "rope_scaling": None,
    }
    scaling = gf.arch("rope.scaling.type", "none")
    if scaling == "linear":
        config["rope_scaling"] = {"rope_type": "linear", "factor": float(gf.require("rope.scaling.factor"))}
    elif scaling != "none":
        raise GGUFError(f"{path}: RoPE scaling {scaling!r} is not supported (linear only)")
    if arch == "llama":
        bias = "blk.0.attn_q.bias" in gf.tensors
        config.update(attention_bias=bias, mlp_bias=False)
    else:
        config.update(use_sliding_window=False)
    return config


def config_from_gguf(gf: GGUFFile, **overrides) -> llama.LlamaConfig:
    """Our trunk config for the file (through `hf_config`, so a GGUF and its Hugging Face original agree)."""
    try:
        return hf_import.config_from_hf(hf_config(gf), **overrides)
    except GGUFError:
        raise
    except ValueError as e:
        raise GGUFError(f"{gf.path}: {e}") from None


def read_config(path: str, **overrides) -> llama.LlamaConfig:
    """Our trunk config from a GGUF file's metadata; reads no tensor data."""
    return config_from_gguf(open_gguf(path), **overrides)


def _hf_name(name: str) -> str | None:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}"
    return None


def unpermute_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Hugging Face row r of a q or k projection is GGUF row `unpermute_rows(...)[r]`.

    llama.cpp writes `w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2)` (each head's two rotate-half halves
    interleaved into pairs); reading rows in this order undoes it.
    """
    if n_rows % (2 * n_head):
        raise ValueError(f"{n_rows} rows do not split into {n_head} heads of pairs")
    return np.arange(n_rows).reshape(n_head, n_rows // n_head // 2, 2).swapaxes(1, 2).reshape(-1)


class _LastWhole:
    """The one tensor, of a load, most recently dequantised whole: devices that each keep some of its columns
    (every row) share one dequantisation, and the host never holds more than this one tensor in float32."""

    def __init__(self):
        self.name, self.value = None, None


class _GGUFTensor:
    """One GGUF tensor in Hugging Face layout, dequantised to float32 only where indexed.

    `shape` is the Hugging Face shape ([out, in] for a linear weight); `rows`, when given, is the order in which
    the file's rows are read (the q/k un-permutation); `last`, shared by the tensors of one load, keeps the
    latest tensor read whole.
    """

    def __init__(self, gf: GGUFFile, name: str, rows: np.ndarray | None = None, last: _LastWhole | None = None):
        self._tensor, self._path, self.name = gf.tensors[name], gf.path, name
        self.shape = gf.stored_shape(name)
        self._rows = rows
        self._last = last

    def _dequantise(self, data) -> np.ndarray:
        import gguf

        try:
            return np.asarray(gguf.quants.dequantize(np.asarray(data), self._tensor.tensor_type), np.float32)
        except Exception as e:  # noqa: BLE001 - a short or damaged data block
            raise GGUFError(f"{self._path}: tensor {self.name} ({self._tensor.tensor_type.name}) cannot be "
                            f"dequantised (corrupt file?): {e}") from None

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if len(self.shape) == 1:  # norms and biases: small, and a BF16 vector is stored as bytes
            values = self._dequantise(self._tensor.data)
            return values[self._rows][index] if self._rows is not None else values[index]
        rows = np.arange(self.shape[0])[index[0]]
        if self._last is not None and rows.size == self.shape[0] and np.array_equal(rows, np.arange(rows.size)):
            if self._last.name != self.name:  # every row: dequantise once, for every device that asks
                self._last.name, self._last.value = None, None  # release the previous tensor first
                self._last.value, self._last.name = self._read(rows), self.name
            return self._last.value[(slice(None),) + index[1:]]
        return self._read(rows)[(slice(None),) + index[1:]]

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """The Hugging Face rows `rows`, dequantised: [len(rows), cols]."""
        if self._rows is not None:
            rows = self._rows[rows]
        data = self._tensor.data  # memory-mapped [rows, bytes per row] (quantised) or [rows, cols]
        if rows.size and np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size)):
            block = data[rows[0]:rows[0] + rows.size]  # contiguous: a view of the map, no copy until dequantised
        else:
            block = data[rows]
        return self._dequantise(block).reshape(rows.size, self.shape[1])


def _expected_shapes(config: llama.LlamaConfig, stored_vocab: int) -> dict[str, tuple[int, ...]]:
    """Every Hugging Face key of `config`'s trunk → its shape in Hugging Face layout."""
    d, q, kv, f = config.n_embd, config.n_head * config.head_dim, config.n_kv_head * config.head_dim, \
        config.intermediate_size
    shapes = {"model.embed_tokens.weight": (stored_vocab, d), "model.norm.weight": (d,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (stored_vocab, d)
    for i in range(config.n_layer):
        pre = f"model.layers.{i}"
        shapes.update({f"{pre}.input_layernorm.weight": (d,), f"{pre}.post_attention_layernorm.weight": (d,),
                       f"{pre}.self_attn.q_proj.weight": (q, d), f"{pre}.self_attn.k_proj.weight": (kv, d),
                       f"{pre}.self_attn.v_proj.weight": (kv, d), f"{pre}.self_attn.o_proj.weight": (d, q),
                       f"{pre}.mlp.gate_proj.weight": (f, d), f"{pre}.mlp.up_proj.weight": (f, d),
                       f"{pre}.mlp.down_proj.weight": (d, f)})
        if config.qkv_bias:
            shapes.update({f"{pre}.self_attn.q_proj.bias": (q,), f"{pre}.self_attn.k_proj.bias": (kv,),
                           f"{pre}.self_attn.v_proj.bias": (kv,)})
        if config.o_bias:
            shapes[f"{pre}.self_attn.o_proj.bias"] = (d,)
    return shapes


def tensors(gf: GGUFFile, config: llama.LlamaConfig) -> dict[str, _GGUFTensor]:
    """Hugging Face key → lazily dequantised GGUF tensor, un-permuted where llama.cpp permuted it.

    Every name, and every shape against `config`, is checked here, before any data is read.
    """
    stored_vocab = gf.stored_shape("token_embd.weight")[0]
    expected = _expected_shapes(config, stored_vocab)
    out, last = {}, _LastWhole()
    for name in gf.tensors:
        key = _hf_name(name)
        if key is None or key not in expected:
            raise GGUFError(f"{gf.path}: unexpected tensor {name} for a {gf.architecture} of this shape")
        shape = gf.stored_shape(name)
        if shape != expected[key]:
            raise GGUFError(f"{gf.path}: {name} has shape {shape}, expected {expected[key]} ({key})")
        rows = None
        if gf.architecture == "llama" and (".attn_q." in name or ".attn_k." in name):
            rows = unpermute_rows(shape[0], config.n_head if ".attn_q." in name else config.n_kv_head)
        out[key] = _GGUFTensor(gf, name, rows, last)
    missing = sorted(set(expected) - set(out))
    if missing:
        raise GGUFError(f"{gf.path}: missing tensor(s) for {', '.join(missing[:3])}")
    return out


def load_gguf(path: str, *, shardings: Any = None, **config_overrides) -> tuple[llama.LlamaConfig, Any]:
    """Loads a GGUF file into our config and parameters (float32 unless `param_dtype` says otherwise).

    Args:
        path: the `.gguf` file.
        shardings: where the parameters go (as for `hf_import.load_hf`): each device then receives only its own
            slices, dequantised from the memory-mapped file row by row. None: numpy arrays on the host.
        **config_overrides: as for `hf_import.load_hf` (e.g. `dtype`, `dropout`, a larger `vocab_size`).
    """
    gf = open_gguf(path)
    stored = config_from_gguf(gf)
    config = config_from_gguf(gf, **config_overrides)
    if config.vocab_size < stored.vocab_size:
        raise GGUFError(f"{gf.path}: vocab_size={config.vocab_size} is smaller than the file's {stored.vocab_size}")
    named = tensors(gf, config)
    return config, hf_import.params_from_hf(named, config, source=gf.path, stored_vocab=stored.vocab_size,
                                            shardings=shardings)


# --- tokenizer ------------------------------------------------------------------------------------------------

# llama.cpp's pre-tokenizer names (`tokenizer.ggml.pre`, see its llama-vocab.cpp) → what the original
# tokenizer.json splits text with before byte-level BPE. "smollm" (and its siblings) = every digit on its own, then
# GPT-2's regex: llama.cpp's regexes "\p{N}" and GPT-2's; the `tokenizers` library's Digits(individual_digits) is
# the same split (Rust's char::is_numeric is \p{N}).
_GPT2_DIGITS = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
_GPT2 = ("gpt2", "mpt", "olmo", "jais", "default")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
_REGEX_PRE = {"qwen2": _QWEN2_REGEX, "llama3": _LLAMA3_REGEX, "llama-bpe": _LLAMA3_REGEX}
PRE_TOKENIZERS = _GPT2_DIGITS + _GPT2 + tuple(_REGEX_PRE)

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
_CONTROL, _USER_DEFINED = 3, 4


def _pre_tokenizer(gf: GGUFFile):
    from tokenizers import Regex, pre_tokenizers

    pre = gf.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
    if pre in _GPT2_DIGITS:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in _GPT2:
        return byte_level
    if pre in _REGEX_PRE:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_REGEX_PRE[pre]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    raise GGUFError(f"{gf.path}: tokenizer.ggml.pre {pre!r} is not supported (one of {', '.join(PRE_TOKENIZERS)})")


def tokenizer(gf: GGUFFile):
    """The file's tokenizer as a `tokenizers.Tokenizer`, and its special tokens.

    Byte-level BPE (`tokenizer.ggml.model` "gpt2", what llama.cpp writes for SmolLM, Llama 3, Qwen2) from
    `tokenizer.ggml.tokens` and `.merges`; tokens of type control become special tokens, user-defined ones
    added tokens (matched before BPE, as llama.cpp does); the pre-tokenizer follows `tokenizer.ggml.pre`.

    Returns `(tokenizer, info)`, info holding `bos_token`, `eos_token`, `pad_token`, `unk_token` (strings or
    None) and `chat_template` (the template text or None).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models

    kind = gf.get("tokenizer.ggml.model")
    if kind is None:
        raise GGUFError(f"{gf.path}: no tokenizer in the metadata (tokenizer.ggml.model missing)")
    if kind != "gpt2":
        raise GGUFError(f"{gf.path}: tokenizer.ggml.model {kind!r} is not supported (byte-level BPE, 'gpt2', only)")
    tokens, merges = gf.get("tokenizer.ggml.tokens"), gf.get("tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise GGUFError(f"{gf.path}: tokenizer.ggml.tokens or .merges is missing")
    types = gf.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise GGUFError(f"{gf.path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep:
            raise GGUFError(f"{gf.path}: tokenizer.ggml.merges holds {merge!r}, not 'left right'")
        pairs.append((left, right))
    tok = Tokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(gf)
    tok.decoder = decoders.ByteLevel()
    # Already in the vocabulary, so adding keeps their ids; matched whole before the pre-tokenizer.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, types) if k == _CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, k in zip(tokens, types) if k == _USER_DEFINED])

    def token(key):
        i = gf.get(f"tokenizer.ggml.{key}")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    info = {"bos_token": token("bos_token_id"), "eos_token": token("eos_token_id"),
            "pad_token": token("padding_token_id"), "unk_token": token("unknown_token_id"),
            "chat_template": gf.get("tokenizer.chat_template")}
    return tok, info
